"""Benchmarks and load tools for recgen (not part of the installed server)."""
