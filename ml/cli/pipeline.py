"""``rekindle run | ui``: the daily DAG in-process, or under Airflow's own scheduler with its UI and MLflow's."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from ml import runtime
from ml.cli.options import UsageError, ensure_free_port, iso_date, port, positive_int, settings_from, today
from ml.settings import Settings, redact
from ml.warehouse import postgres

# Where `rekindle ui` checks its ports are free: a process listening on one, here or on every address, holds it.
LOCALHOST = "127.0.0.1"

DAG_ID = "reengagement_daily"


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    run_date = args.date or today()
    log_path = settings.home / "logs" / f"{DAG_ID}_{run_date}.log"
    from ml.pipeline.airflow import FIRST_RUN_DATE, RunInProgress, in_process_run_lock
    from ml.pipeline.tasks import check_run_date

    if run_date < FIRST_RUN_DATE.date():
        raise UsageError(f"--date {run_date} is before {FIRST_RUN_DATE:%Y-%m-%d}, the first day the DAG runs")
    try:
        check_run_date(settings, run_date, today())
    except ValueError as exc:
        raise UsageError(f"--date: {exc}") from None
    try:
        with in_process_run_lock(settings.airflow_home, DAG_ID, run_date):
            return _run_locked(args, settings, run_date, log_path)
    except RunInProgress as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        print(
            f"\nrekindle run {run_date}: interrupted. The steps that ended keep their output; `rekindle run --date "
            f"{run_date}` runs the day again (each step replaces its own output). The full log: {log_path}",
            file=sys.stderr,
        )
        return 130


def _run_locked(args: argparse.Namespace, settings: Settings, run_date: date, log_path: Path) -> int:
    from ml.pipeline.airflow import logs_to_file, refuse_while_the_scheduler_runs, run_dag_in_process
    from ml.pipeline.cluster import existing_metadata_url
    from ml.pipeline.summary import key_figure, print_summary

    print(f"rekindle run {run_date}: the full log (Airflow, dbt, the warehouse) goes to {log_path}", flush=True)
    started = time.perf_counter()
    with logs_to_file(log_path, key_figure, verbose=args.verbose) as view:
        url = postgres.start(settings)
        runtime.configure(settings, url)
        settings = Settings.from_env()
        view.say(f"warehouse: {redact(url)}")
        if _nothing_to_load(settings, url):
            raise UsageError(
                f"nothing to run on: the drop folder {settings.input_dir} has no event files and raw.events is "
                "empty. Generate demo data first (`rekindle generate`, or `make run`), or drop CSV / Parquet / "
                "JSON-lines files there."
            )
        _migrate_airflow_db(view.say, output=None)
        refuse_while_the_scheduler_runs(DAG_ID, existing_metadata_url(url))
        view.say(f"running DAG {DAG_ID} for {run_date} in-process ...")
        state, tasks = run_dag_in_process(DAG_ID, run_date)
    print_summary(settings, run_date, state, tasks, time.perf_counter() - started)
    if state != "success":
        print(f"\nthe run {state}: see {log_path}", file=sys.stderr)
    return 0 if state == "success" else 1


def _nothing_to_load(settings: Settings, url: str) -> bool:
    """True on a first run with an empty drop folder: the raw gate would fail on zero events."""
    from ml.warehouse.ingest import discover_files, has_events

    if settings.input_dir.is_dir() and discover_files(settings.input_dir):
        return False
    return not has_events(url)


def _migrate_airflow_db(say: Callable[[str], None] = print, output: int | None = subprocess.DEVNULL) -> None:
    """Create Airflow's metadata database on the first run; ``output=None``: its output goes where ours goes."""
    marker = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    if marker.exists():
        return
    say("initialising the Airflow metadata database (first run only) ...")
    sys.stdout.flush()
    sys.stderr.flush()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=output)


def cmd_ui(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    ensure_free_port(LOCALHOST, args.airflow_port, "--airflow-port")
    ensure_free_port(LOCALHOST, args.mlflow_port, "--mlflow-port")
    if args.executor == "celery":
        return _ui_celery(settings, args)
    from ml.pipeline.airflow import serve_uis

    url = postgres.start(settings)
    runtime.configure(settings, url)
    _migrate_airflow_db()
    return serve_uis(Settings.from_env(), url, args.airflow_port, args.mlflow_port)


def _ui_celery(settings: Settings, args: argparse.Namespace) -> int:
    import shutil

    from ml.pipeline import cluster

    if shutil.which("redis-server") is None:
        print(cluster.REDIS_INSTALL_HINT, file=sys.stderr)
        return 2
    ensure_free_port(LOCALHOST, args.redis_port, "--redis-port")
    url = postgres.start(settings)
    runtime.configure(settings, url)
    stack = cluster.CeleryStack(
        Settings.from_env(), url, args.airflow_port, args.mlflow_port, args.redis_port, args.workers
    )
    return cluster.serve_celery(stack)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the daily DAG in-process and print a summary")
    run.add_argument("--date", type=iso_date, default=None, help="run date YYYY-MM-DD (default: today, UTC)")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="Airflow UI and MLflow UI on localhost against the same warehouse")
    ui.add_argument("--airflow-port", type=port, default=8080)
    ui.add_argument("--mlflow-port", type=port, default=5000)
    ui.add_argument(
        "--executor",
        choices=("local", "celery"),
        default="local",
        help="local: `airflow standalone` (LocalExecutor, SQLite metadata); celery: CeleryExecutor with a Redis "
        "broker, the metadata in the warehouse, an MLflow server for the artifacts and --workers workers",
    )
    ui.add_argument("--workers", type=positive_int, default=2, help="Celery workers (with --executor celery)")
    ui.add_argument("--redis-port", type=port, default=6379, help="Redis broker port (with --executor celery)")
    ui.set_defaults(func=cmd_ui)
