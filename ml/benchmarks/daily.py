"""Daily operation in steady state: the reengagement_daily DAG for the last N days, in order, on one warehouse.

A synthetic window is generated once; the history before the first run date is in the drop folder from
the start and each later day's events and campaign exposures arrive as their own files before the next
day's run, as a daily export would. Prints seconds per task per day (all dbt tasks summed into one row),
each task's peak resident memory, and the last day against day 2: no task may grow with the number of
days already published, also read off a least-squares line through days 2 to N. Below the tasks, what each
day's input was (the orders the ranker read, the rounds its boosters trained, the exposures the offer model
learnt from: they follow the window's data, not the days published) and a machine probe, a
fixed seeded LightGBM fit timed before each day: if the probe slows down, the machine did; and the share of the
machine's CPU time spent waiting on I/O during the day's run (from /proc/stat), which a short CPU probe misses,
and the CPU seconds the whole machine was busy during it (more work, or the same work on a slower CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml.cli.options import UsageError, iso_date, non_negative_int, positive_int
from ml.pipeline import DBT_TASK_GROUP
from ml.settings import PROJECT_ROOT, Settings
from ml.synthetic.marketplace import SCALES, TABLE_FILES

DAG_ID = "reengagement_daily"
# Tables whose rows arrive day by day, with the column that dates them.
DAILY_TABLES = {"events": "event_time", "campaign_exposures": "sent_at"}
STEADY_STATE_LIMIT = 1.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=positive_int, default=14, help="run dates, ending with --end-date")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--users", type=positive_int, help="users instead of the scale's (merchants stay the scale's)")
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument(
        "--window-days", type=positive_int, default=45, help="days of synthetic history, ending with --end-date"
    )
    parser.add_argument("--end-date", type=iso_date, help="the last run date (default: today, UTC)")
    parser.add_argument(
        "--home", type=Path, help="state for the benchmark, wiped first (default: .rekindle/benchmarks/daily-<scale>)"
    )
    parser.add_argument("--json", type=Path, help="also write the per-day results to this file")
    # Internal: each day runs in its own process, as each scheduled run does (see _run_day_in_process).
    parser.add_argument("--one-day", type=iso_date, help=argparse.SUPPRESS)


@dataclass
class DayRun:
    run_date: dt.date
    state: str
    seconds: float
    task_seconds: dict[str, float] = field(default_factory=dict)
    task_peak_mb: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, float] = field(default_factory=dict)


# The inputs a day's table shows: (step, its summary's key) -> the row's label.
INPUT_ROWS = {
    ("train_ranker", "orders"): "orders the ranker read",
    ("train_ranker", "boosting_rounds"): "rounds the ranker's boosters trained",
    ("train_offer_model", "training_exposures"): "exposures the offer model read",
}
PROBE_ROW = "machine probe (s)"
IOWAIT_ROW = "I/O wait (% of CPU time)"
BUSY_ROW = "CPU busy, whole machine (s)"
ROW_FORMATS = {PROBE_ROW: ".2f", IOWAIT_ROW: ".1f", BUSY_ROW: ".1f"}  # the inputs' counts: ",.0f"


def run(args: argparse.Namespace) -> int:
    if args.one_day:
        return _run_one_day(args)
    from ml.pipeline.tasks import check_run_date

    end = args.end_date or dt.datetime.now(dt.UTC).date()
    try:
        check_run_date(Settings.from_env(), end, dt.datetime.now(dt.UTC).date())
    except ValueError as exc:
        raise UsageError(f"--end-date: {exc}") from None
    label = f"{args.scale}" if args.users is None else f"{args.users}-users"
    home = (args.home or Settings.from_env().home / "benchmarks" / f"daily-{label}").resolve()
    settings = _fresh_home(home, args.seed, args.scale)
    _start(settings)
    run_dates = [end - dt.timedelta(days=args.days - 1 - i) for i in range(args.days)]
    daily_files = _stage_window(settings, args, run_dates[0], end)

    days: list[DayRun] = []
    try:
        for number, run_date in enumerate(run_dates, start=1):
            for path in daily_files.get(run_date - dt.timedelta(days=1), []):
                shutil.move(path, settings.input_dir / path.name)
            print(f"day {number}/{len(run_dates)} {run_date}:", flush=True)
            days.append(_run_day_in_process(settings, run_date))
            print(
                f"day {number}/{len(run_dates)} {run_date}: {days[-1].state} in {days[-1].seconds:.1f}s\n", flush=True
            )
            if days[-1].state != "success":
                print(
                    f"error: the run for {run_date} ended {days[-1].state}; log in {settings.home / 'logs'}",
                    file=sys.stderr,
                )
                break
    except KeyboardInterrupt:
        print(f"interrupted after {len(days)} of {len(run_dates)} days", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(day) for day in days], default=str, indent=1))
    print()
    print(format_days(days))
    print()
    print(
        f"home {home}; users {args.users or SCALES[args.scale][0]:,}, merchants {SCALES[args.scale][1]:,}, "
        f"{args.window_days}-day window ending {end}"
    )
    return 0 if all(day.state == "success" for day in days) and len(days) == len(run_dates) else 1


def _run_day_in_process(settings: Settings, run_date: dt.date) -> DayRun:
    """One day in a fresh process, as `rekindle run` or a scheduled run would be: state that a library keeps
    in a long-lived process (dbt's adapters, caches) must not be billed to the later days."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ml.cli",
                "benchmark",
                "daily",
                "--one-day",
                run_date.isoformat(),
                "--home",
                str(settings.home),
                "--json",
                out.name,
            ],
            cwd=PROJECT_ROOT,
        )
        results = json.loads(Path(out.name).read_text() or "[]")
    if not results:
        return DayRun(run_date, "crashed", float("nan"))
    day = results[0]
    return DayRun(**{**day, "run_date": dt.date.fromisoformat(day["run_date"])})


def _run_one_day(args: argparse.Namespace) -> int:
    """The child side of _run_day_in_process: the parent has set up the home and the environment."""
    from ml import runtime
    from ml.warehouse import postgres

    settings = Settings.from_env(home=args.home)
    url = postgres.start(settings)
    runtime.configure(settings, url)
    day = _run_day(settings, url, args.one_day)
    args.json.write_text(json.dumps([dataclasses.asdict(day)], default=str))
    return 0 if day.state == "success" else 1


def _run_day(settings: Settings, url: str, run_date: dt.date) -> DayRun:
    """One in-process DAG run, its full log in a file; seconds per task and each step's peak memory."""
    from ml.pipeline.airflow import logs_to_file, run_dag_in_process
    from ml.pipeline.tasks import step_summaries

    probe = machine_probe_seconds()
    cpu_before = cpu_times()
    started = time.perf_counter()
    with logs_to_file(settings.home / "logs" / f"{DAG_ID}_{run_date}.log"):
        state, tasks = run_dag_in_process(DAG_ID, run_date)
    day = DayRun(run_date, state, time.perf_counter() - started)
    day.inputs[PROBE_ROW] = probe
    cpu_after = cpu_times()
    if cpu_before and cpu_after:
        spent = [after - before for before, after in zip(cpu_before, cpu_after)]
        day.inputs[IOWAIT_ROW] = 100.0 * spent[4] / max(sum(spent), 1)
        # Every CPU second of the run's processes, Postgres' and anything else's: if it grows while the probe
        # holds, more work was done; if the run slows while it holds, the run waited.
        user, nice, system, _idle, _iowait, irq, softirq = spent[:7]
        day.inputs[BUSY_ROW] = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    for task in tasks:
        name = DBT_TASK_GROUP if task.task_id.startswith(f"{DBT_TASK_GROUP}.") else task.task_id
        day.task_seconds[name] = day.task_seconds.get(name, 0.0) + (task.seconds or 0.0)
    for step in step_summaries(Settings.from_env(home=settings.home, warehouse_url=url), run_date):
        # A mapped task's instances (score_shard[0], score_shard[1], ...) as their task: the largest peak. The dbt
        # build's tasks record their seconds only.
        name = step["step"].partition("[")[0]
        if "peak_rss_mb" in step["summary"]:
            peak = step["summary"]["peak_rss_mb"]
            day.task_peak_mb[name] = max(day.task_peak_mb.get(name, peak), peak)
        for (input_step, key), label in INPUT_ROWS.items():
            if name == input_step and key in step["summary"]:
                day.inputs[label] = step["summary"][key]
    return day


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far by state (user, nice, system, idle, iowait, ...), from /proc/stat's first
    line; None where there is no /proc/stat."""
    try:
        return [int(ticks) for ticks in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return None


def machine_probe_seconds() -> float:
    """Seconds for a fixed, seeded piece of work like the pipeline's own (a two-thread LightGBM fit on 200,000
    rows): the same work every day, so a change in its time is the machine's, not the code's."""
    import lightgbm
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200_000, 20))
    y = X[:, 0] - 0.5 * X[:, 1] ** 2 + rng.normal(size=len(X))
    params = {"objective": "regression", "num_threads": 2, "num_leaves": 31, "seed": 0, "verbosity": -1}
    started = time.perf_counter()
    lightgbm.train(params, lightgbm.Dataset(X, y), num_boost_round=60)
    return time.perf_counter() - started


def _fresh_home(home: Path, seed: int, scale: str) -> Settings:
    from ml import runtime
    from ml.warehouse import postgres

    settings = Settings.from_env(home=home, seed=seed, scale=scale, warehouse_url="")
    if home.exists():
        postgres.stop(settings)
        shutil.rmtree(home)
    # The benchmark's own Airflow metadata too: the in-process DAG runs must start from nothing.
    os.environ.update(runtime.airflow_environment(settings))
    os.environ["REKINDLE_SEED"], os.environ["REKINDLE_SCALE"] = str(seed), scale
    os.environ.pop("REKINDLE_WAREHOUSE_URL", None)
    return settings


def _start(settings: Settings) -> str:
    from ml import runtime
    from ml.warehouse import postgres

    url = postgres.start(settings)
    runtime.configure(settings, url)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL, cwd=PROJECT_ROOT
    )
    return url


def _stage_window(
    settings: Settings, args: argparse.Namespace, first: dt.date, end: dt.date
) -> dict[dt.date, list[Path]]:
    """Generate the window; put the history before ``first`` in the drop folder and return the later days'
    files (staged beside it) by the day their rows happened."""
    from ml.synthetic.marketplace import generate_marketplace

    print(f"generating {args.window_days} days ending {end} ({args.scale}, seed {args.seed}) ...", flush=True)
    market = generate_marketplace(args.scale, seed=args.seed, days=args.window_days, end_date=end, n_users=args.users)
    market.write(settings.input_dir)
    staged = settings.data_dir / "later_days"
    staged.mkdir(parents=True)
    first_ts = pd.Timestamp(first, tz="UTC")
    daily: dict[dt.date, list[Path]] = {}
    for table, time_column in DAILY_TABLES.items():
        path = settings.input_dir / TABLE_FILES[table]
        rows = pd.read_parquet(path)
        times = pd.to_datetime(rows[time_column], utc=True)
        rows[times < first_ts].to_parquet(path, index=False)
        later = rows[times >= first_ts]
        for day, day_rows in later.groupby(times[times >= first_ts].dt.date):
            day_path = staged / f"{table}_{day.isoformat()}.parquet"
            day_rows.to_parquet(day_path, index=False)
            daily.setdefault(day, []).append(day_path)
    return daily


def format_days(days: list[DayRun]) -> str:
    """Seconds per task (rows) per day (columns), each task's largest peak memory, last day / day 2, and the same
    ratio read off a least-squares line through days 2 to N: one day's time is one noisy sample (a five-second
    task varies by a second on identical input here), the line is the growth."""
    tasks = list(dict.fromkeys(name for day in days for name in day.task_seconds))
    last = len(days)
    header = ["task"] + [f"day {i}" for i in range(1, last + 1)] + ["peak MB", f"day {last} / day 2", "fitted line"]
    rows = []
    for task in tasks + ["whole DAG"]:
        seconds = [day.seconds if task == "whole DAG" else day.task_seconds.get(task, float("nan")) for day in days]
        peak = max((day.task_peak_mb.get(task, float("nan")) for day in days), default=float("nan"))
        fitted = fitted_line(seconds)
        rows.append(
            [task]
            + [f"{s:.1f}" for s in seconds]
            + [
                f"{peak:,.0f}",
                _growth(seconds[1], seconds[-1]) if last > 1 else "",
                _growth(*fitted) if fitted else "",
            ]
        )
    for label in dict.fromkeys(label for day in days for label in day.inputs):
        values = [day.inputs.get(label, float("nan")) for day in days]
        shown = [format(v, ROW_FORMATS.get(label, ",.0f")) for v in values]
        rows.append([label] + shown + ["", f"{_last_over_day_two(values):.2f}", ""])
    return text_table(header, rows) + (
        f"\n(! = more than {STEADY_STATE_LIMIT}x day 2 and over a second slower; fitted line: the least-squares line "
        f"through days 2 to {last}, its day {last} over its day 2; dbt_build sums its tasks; "
        f"{PROBE_ROW}: a fixed LightGBM fit timed before each day, the machine's speed; {IOWAIT_ROW}: during "
        f"the day's run; {BUSY_ROW}: CPU seconds, all processes, during the day's run)"
    )


def fitted_line(values: list[float]) -> tuple[float, float] | None:
    """The least-squares line through days 2 to N of ``values`` (day 1 builds everything from nothing), at day 2
    and at day N; None with fewer than three such days or a missing one."""
    later = np.asarray(values[1:], dtype=float)
    if len(later) < 3 or np.isnan(later).any():
        return None
    slope, intercept = np.polyfit(np.arange(len(later)), later, 1)
    return intercept, intercept + slope * (len(later) - 1)


def _growth(day_two: float, last_day: float) -> str:
    """``last_day`` / ``day_two``, flagged when over the limit and over a second more."""
    ratio = last_day / day_two if day_two > 0 else float("nan")
    return f"{ratio:.2f}" + (" !" if ratio > STEADY_STATE_LIMIT and last_day - day_two > 1.0 else "")


def _last_over_day_two(values: list[float]) -> float:
    return values[-1] / values[1] if len(values) > 1 and values[1] > 0 else float("nan")


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header] + rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
