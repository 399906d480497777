"""Benchmarks on public data sets: ``rekindle benchmark ranking|offers``."""
