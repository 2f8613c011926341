"""Benchmarks: figures printed by `python -m tests.benchmarks.run`, never collected by pytest."""
