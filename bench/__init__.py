"""Benchmarks: `python bench/run.py` (full, ~6-8 min) or `--smoke` (seconds). See RESULTS.md."""
