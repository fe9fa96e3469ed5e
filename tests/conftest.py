"""Test-session setup shared by every test module."""

import os
import shutil

# Without a GPU, Triton kernels can only run in Triton's CPU interpreter, and Triton reads this
# variable when a kernel module is imported: set it before any test imports one.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
