"""Benchmarks: `python bench/run.py` (full, ~6-8 min plus filling the (h)/(i) stores;
`--quick` keeps those small) or `--smoke` (seconds). See RESULTS.md."""
