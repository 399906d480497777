"""``rekindle benchmark ...``: model quality on public data, daily cost, growth."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("ranking", "offers", "synthetic", "daily", "growth", "campaign", "serve", "shards", "dashboard")


def cmd_benchmark(args: argparse.Namespace) -> int:
    return args.benchmark_run(args)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("benchmark", help="model quality on real public data")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    for name in BENCHMARKS:
        mod = importlib.import_module(f"ml.benchmarks.{name}")
        bench_parser = bench_sub.add_parser(
            name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None
        )
        mod.add_arguments(bench_parser)
        bench_parser.set_defaults(func=cmd_benchmark, benchmark_run=mod.run)
