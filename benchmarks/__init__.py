"""Benchmarks: never part of the test suite, run by hand (see docs/benchmarks.md)."""
