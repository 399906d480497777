"""Growth: one day of the reengagement_daily DAG at several marketplace sizes (users; merchants stay the
full scale's), each in its own process and warehouse. Prints seconds and peak resident memory per task per
size, and how much each task grew from the second-largest size to the largest beside how much the users did.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ml.benchmarks.daily import text_table
from ml.cli.options import comma_separated, iso_date, non_negative_int, positive_int
from ml.pipeline import DBT_TASK_GROUP
from ml.settings import PROJECT_ROOT, Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users",
        type=comma_separated(positive_int),
        default=[5_500, 55_000, 550_000],
        help="comma-separated user counts, smallest first",
    )
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument("--window-days", type=positive_int, default=45)
    parser.add_argument("--end-date", type=iso_date, help="the run date (default: today, UTC)")
    parser.add_argument("--home", type=Path, help="parent of each size's state (default: .rekindle/benchmarks)")


def run(args: argparse.Namespace) -> int:
    parent = (args.home or Settings.from_env().home / "benchmarks").resolve()
    results: dict[int, dict] = {}
    for users in args.users:
        print(f"{users:,} users ...", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable,
                "-m",
                "ml.cli",
                "benchmark",
                "daily",
                "--days",
                "1",
                "--scale",
                "full",
                "--users",
                str(users),
                "--seed",
                str(args.seed),
                "--window-days",
                str(args.window_days),
                "--home",
                str(parent / f"growth-{users}"),
                "--json",
                out.name,
            ]
            if args.end_date:
                command += ["--end-date", args.end_date.isoformat()]
            finished = subprocess.run(command, cwd=PROJECT_ROOT)
            day = json.loads(Path(out.name).read_text() or "[]")
        if finished.returncode != 0 or not day:
            print(
                f"error: the run at {users:,} users failed (log under {parent / f'growth-{users}' / 'logs'})",
                file=sys.stderr,
            )
            return 1
        results[users] = day[0]
    print()
    print(format_growth(results))
    return 0


def format_growth(results: dict[int, dict]) -> str:
    """Seconds and peak MB per task (rows) per size (columns), and the growth between the two largest sizes."""
    sizes = sorted(results)
    tasks = list(dict.fromkeys(task for size in sizes for task in results[size]["task_seconds"]))
    header = ["task"] + [f"{size:,} users s / MB" for size in sizes]
    if len(sizes) > 1:
        header.append(f"x{sizes[-1] / sizes[-2]:g} users: time x")
    rows = []
    for task in tasks + ["whole DAG"]:
        seconds = [
            results[size]["seconds"] if task == "whole DAG" else results[size]["task_seconds"].get(task, float("nan"))
            for size in sizes
        ]
        peaks = [results[size]["task_peak_mb"].get(task, float("nan")) for size in sizes]
        row = [task] + [f"{s:.1f} / {p:,.0f}" for s, p in zip(seconds, peaks)]
        if len(sizes) > 1:
            row.append(f"{seconds[-1] / seconds[-2]:.1f}" if seconds[-2] > 0 else "–")
        rows.append(row)
    return (
        text_table(header, rows)
        + f"\n({DBT_TASK_GROUP} sums its tasks; peak MB is the process's resident memory during the task)"
    )
