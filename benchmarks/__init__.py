"""Benchmarks for MatrixOS (not tests: run them by hand, e.g. ``python -m benchmarks.tpch``)."""
