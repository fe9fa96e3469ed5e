"""``python -m model_runtime.latency_estimator``: see :mod:`model_runtime.latency_estimator.cli`."""

import sys

from model_runtime.latency_estimator.cli import main

sys.exit(main())
