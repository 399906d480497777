"""Benchmarks on public data sets: ``rekindle benchmark ranking|offers``."""

import sys


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the benchmark's tables."""
    print(message, file=sys.stderr, flush=True)
