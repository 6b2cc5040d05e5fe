"""Benchmarks of the kernel suite, all on one harness (harness.py) and one set of formulas (metrics.py)."""
