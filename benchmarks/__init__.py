"""Benchmark scripts, run by hand from the repository root as ``python -m benchmarks.<name>``."""
