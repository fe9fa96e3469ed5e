"""Packaged latency profiles and the default estimator fitted on them (data only; see README.md)."""
