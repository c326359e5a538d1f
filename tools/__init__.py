"""Operator tools, run from a checkout and not installed: benchmarks, chaos, evaluation, load test."""
