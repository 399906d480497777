"""Sharded scoring: score_shard at 1, 2, 4 ... shards on the current warehouse, then publish_segments.

Needs run date D's marts and an @champion ranker in the warehouse (`rekindle run --date D` makes both). For each
shard count n, the n score_shard tasks run as separate processes, at most --parallel at a time, as Celery
workers run them; publish_segments then swaps the n shards into crm. Prints the wall seconds of scoring, each
shard's seconds and peak resident memory (as ops.pipeline_steps records them), the publish seconds, and checks
that crm.recommendations for D is the same at every shard count. The day is published again at each count, with
the same rows.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from multiprocessing.context import SpawnContext

import psycopg

from ml.benchmarks.daily import text_table
from ml.cli.options import UsageError, iso_date, positive_int
from ml.settings import Settings, redact


def shard_counts(text: str) -> list[int]:
    counts = [positive_int(value.strip()) for value in text.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r} names a shard count twice")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=iso_date, required=True, help="the run date whose marts and ranker to score")
    parser.add_argument(
        "--shards", type=shard_counts, default=[1, 2, 4], help="comma-separated shard counts (default: 1,2,4)"
    )
    parser.add_argument(
        "--parallel",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="shard processes at a time, like Celery worker slots (default: the CPU count)",
    )


@dataclass(frozen=True)
class ShardRound:
    """One shard count: scoring every shard (in parallel processes) and publishing them."""

    shards: int
    scoring_seconds: float  # wall clock, the first shard process started to the last one finished
    shard_seconds: list[float]
    shard_peak_mb: list[float]
    shard_users: list[int]
    publish_seconds: float
    publish_peak_mb: float
    published_rows: int
    published_md5: str


@dataclass(frozen=True)
class ShardsBenchmark:
    run_date: date
    parallel: int
    rounds: list[ShardRound]
    model_load_seconds: float
    model_mb: float

    @property
    def identical_output(self) -> bool:
        return len({(r.published_rows, r.published_md5) for r in self.rounds}) == 1


def run(args: argparse.Namespace) -> int:
    result = benchmark_shards(Settings.from_env(), args.date, args.shards, args.parallel)
    print()
    print(format_benchmark(result))
    return 0 if result.identical_output else 1


def benchmark_shards(settings: Settings, run_date: date, counts: list[int], parallel: int) -> ShardsBenchmark:
    from ml.warehouse import postgres

    # Every process gets the live URL: none of them starts (or races to start) the embedded server.
    settings = replace(settings, warehouse_url=postgres.start(settings))
    _check_ready(settings, run_date)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        model_load_seconds, model_mb = pool.submit(_load_champion, settings).result()
    print(f"{run_date}: @champion loads in {model_load_seconds:.1f}s and takes {model_mb:,.0f} MB", flush=True)
    rounds = []
    for count in counts:
        print(f"{count} shard{'s' if count > 1 else ''}: scoring ...", flush=True)
        rounds.append(_score_and_publish(replace(settings, score_shards=count), run_date, parallel, spawn))
        done = rounds[-1]
        print(
            f"{count} shard{'s' if count > 1 else ''}: scored in {done.scoring_seconds:.1f}s, "
            f"published in {done.publish_seconds:.1f}s",
            flush=True,
        )
    return ShardsBenchmark(run_date, parallel, rounds, model_load_seconds, model_mb)


def _check_ready(settings: Settings, run_date: date) -> None:
    from ml.pipeline import tracking
    from ml.warehouse import ddl

    first = f"run `rekindle run --date {run_date}` first"
    with psycopg.connect(settings.warehouse_url) as conn:
        ddl.ensure(conn, "ops")
        has_marts = conn.execute("SELECT to_regclass('marts.user_segments') IS NOT NULL").fetchone()[0]
        # The marts hold one day: the one whose dbt build (or the DAG's check after it) ran last.
        built_for = conn.execute(
            """SELECT run_date FROM ops.pipeline_steps WHERE step IN ('build_marts', 'check_mart_quality')
               ORDER BY finished_at DESC LIMIT 1"""
        ).fetchone()
    where = redact(settings.warehouse_url)
    if not has_marts or built_for is None:
        raise UsageError(f"the warehouse {where} has no marts: {first}")
    if built_for[0] != run_date:
        raise UsageError(f"the marts in {where} were last built for {built_for[0]}, not {run_date}: {first}")
    tracking.configure(settings, settings.warehouse_url)
    if tracking.alias_version(settings.ranker_model_name, tracking.CHAMPION) is None:
        raise UsageError(f"no {settings.ranker_model_name} has the alias @{tracking.CHAMPION}: {first}")


def _load_champion(settings: Settings) -> tuple[float, float]:
    """In a fresh process, as every shard does first: seconds to load the @champion ranker and the memory it adds."""
    from ml.pipeline import tasks, tracking

    tracking.configure(settings, settings.warehouse_url)
    with tasks.PeakMemory() as before:
        pass
    started = time.perf_counter()
    with tasks.PeakMemory() as loading:
        tracking.load_alias(settings.ranker_model_name)
    return time.perf_counter() - started, loading.peak_mb - before.peak_mb


def _score_and_publish(settings: Settings, run_date: date, parallel: int, spawn: SpawnContext) -> ShardRound:
    from ml.pipeline import tasks

    count = settings.score_shards
    started = time.perf_counter()
    # One fresh process per shard, as a Celery worker slot runs each task instance.
    with ProcessPoolExecutor(min(parallel, count), mp_context=spawn, max_tasks_per_child=1) as pool:
        scored = [
            future.result()
            for future in [pool.submit(tasks.score_shard, settings, run_date, shard) for shard in range(count)]
        ]
    scoring_seconds = time.perf_counter() - started
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        published = pool.submit(tasks.publish_segments, settings, run_date).result()
    seconds = _step_seconds(settings, run_date)
    rows, md5 = published_checksum(settings, run_date)
    return ShardRound(
        shards=count,
        scoring_seconds=scoring_seconds,
        shard_seconds=[seconds[f"score_shard[{shard}]"] for shard in range(count)],
        shard_peak_mb=[summary["peak_rss_mb"] for summary in scored],
        shard_users=[summary["users"] for summary in scored],
        publish_seconds=seconds["publish_segments"],
        publish_peak_mb=published["peak_rss_mb"],
        published_rows=rows,
        published_md5=md5,
    )


def _step_seconds(settings: Settings, run_date: date) -> dict[str, float]:
    """Seconds per step of run_date as recorded_step wrote them (each step's latest run)."""
    with psycopg.connect(settings.warehouse_url) as conn:
        return dict(
            conn.execute("SELECT step, seconds FROM ops.pipeline_steps WHERE run_date = %s", (run_date,)).fetchall()
        )


def published_checksum(settings: Settings, run_date: date) -> tuple[int, str]:
    """Rows and an md5 of run_date's crm.recommendations, every column, in key order."""
    with psycopg.connect(settings.warehouse_url) as conn:
        return conn.execute(
            """SELECT count(*), coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r.user_id, r.mode, r.rank)), '')
               FROM crm.recommendations AS r WHERE r.run_date = %s""",
            (run_date,),
        ).fetchone()


def format_benchmark(result: ShardsBenchmark) -> str:
    """One row per shard count; the first count is the baseline of the speed-up."""
    header = [
        "shards",
        "scoring wall s",
        "speed-up",
        "sum of shards s",
        "slowest shard s",
        "max shard peak MB",
        "users per shard",
        "publish s",
        "publish peak MB",
    ]
    baseline = result.rounds[0].scoring_seconds
    rows = [
        [
            str(r.shards),
            f"{r.scoring_seconds:.1f}",
            f"{baseline / r.scoring_seconds:.2f}",
            f"{sum(r.shard_seconds):.1f}",
            f"{max(r.shard_seconds):.1f}",
            f"{max(r.shard_peak_mb):,.0f}",
            f"{min(r.shard_users):,}-{max(r.shard_users):,}" if r.shards > 1 else f"{r.shard_users[0]:,}",
            f"{r.publish_seconds:.1f}",
            f"{r.publish_peak_mb:,.0f}",
        ]
        for r in result.rounds
    ]
    counts = ", ".join(str(r.shards) for r in result.rounds)
    first = result.rounds[0]
    check = (
        f"crm.recommendations for {result.run_date}: identical at {counts} shards "
        f"({first.published_rows:,} rows, md5 {first.published_md5})"
        if result.identical_output
        else f"crm.recommendations for {result.run_date} DIFFERS between shard counts: "
        + "; ".join(f"{r.shards}: {r.published_rows:,} rows, md5 {r.published_md5}" for r in result.rounds)
    )
    return "\n".join(
        [
            text_table(header, rows),
            f"(at most {result.parallel} shard processes at a time on {os.cpu_count()} CPUs; speed-up against "
            f"{first.shards} shard{'s' if first.shards > 1 else ''}; the @champion loads in "
            f"{result.model_load_seconds:.1f}s and takes {result.model_mb:,.0f} MB in each shard process)",
            check,
        ]
    )
