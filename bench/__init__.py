"""Benchmarks for sortednet: every number is a ratio (or time) measured side by side in one run.

Run them all with `python -m bench.run_all` (`make bench`); `--quick` only checks that the scripts run.
"""
