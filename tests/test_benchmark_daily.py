"""Daily operation: the DAG day after day on one warehouse (`rekindle benchmark daily`), and the short
progress view `rekindle run` prints while the full log goes to a file."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys

import psycopg
import pytest

from ml.benchmarks.daily import PROBE_ROW, DayRun, fitted_line, format_days
from ml.pipeline.airflow import ProgressView
from ml.settings import PROJECT_ROOT

END = dt.date(2026, 11, 1)


def _line(kind: str, task_id: str) -> str:
    return (
        f"2026-11-01T00:00:00Z [info     ] [DAG TEST] {kind} task_id={task_id} map_index=-1 [airflow.sdk] loc=dag.py:1"
    )


def test_progress_view_shows_tasks_groups_and_progress_lines_only():
    console = io.StringIO()
    view = ProgressView(console)
    for line in [
        _line("starting", "load_events"),
        "2026-11-01T00:00:00Z [info     ] loaded 10,000 events (150,000 rows/s) [rekindle.progress] loc=ingest.py:1",
        "2026-11-01T00:00:00Z [info     ] Inlets: [...] [cosmos.operators.base] loc=local.py:901",
        _line("end task", "load_events"),
        _line("starting", "dbt_build.stg_events.run"),
        _line("end task", "dbt_build.stg_events.run"),
        _line("starting", "dbt_build.stg_events.test"),
        _line("end task", "dbt_build.stg_events.test"),
        _line("starting", "check_mart_quality"),
        _line("end task", "check_mart_quality"),
    ]:
        view.feed(line)
    lines = console.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["loaded", "load_events", "dbt_build", "check_mart_quality"]
    assert "(2 tasks)" in lines[2]
    assert not any("Inlets" in line for line in lines)


def test_format_days_compares_the_last_day_with_day_two_and_flags_growth():
    days = [
        DayRun(END, "success", 30.0, {"load_events": 9.0, "publish_segments": 5.0}, {"publish_segments": 900.0}),
        DayRun(
            END + dt.timedelta(days=1),
            "success",
            20.0,
            {"load_events": 4.0, "publish_segments": 5.0},
            inputs={"orders the ranker read": 100_000, PROBE_ROW: 2.0},
        ),
        DayRun(
            END + dt.timedelta(days=2),
            "success",
            26.0,
            {"load_events": 4.1, "publish_segments": 11.0},
            inputs={"orders the ranker read": 150_000, PROBE_ROW: 2.5},
        ),
    ]
    rows = {line.split()[0]: line for line in format_days(days).splitlines()}
    assert rows["load_events"].split()[-1] == "1.02"
    assert rows["publish_segments"].split()[-1] == "!" and "2.20" in rows["publish_segments"]
    assert "900" in rows["publish_segments"]
    assert "1.30 !" in rows["whole"]
    # inputs and the machine probe: shown with their growth, never flagged (they are not the code's cost)
    assert rows["orders"].split()[-3:] == ["100,000", "150,000", "1.50"]
    assert rows["machine"].split()[-3:] == ["2.00", "2.50", "1.25"]


def test_the_fitted_line_tells_growth_from_one_noisy_last_day():
    """A task that grows a little every day is flagged on its line; one whose last day alone is slow, on identical
    days before it, is flagged on that day but not on its line."""
    growing = [10.0] + [5.0 + 0.2 * day for day in range(13)]
    noisy_last_day = [10.0] + [5.0, 6.0, 4.5, 5.5] * 3 + [7.0]
    assert fitted_line(growing) == pytest.approx((5.0, 7.4))
    start, end = fitted_line(noisy_last_day)
    assert end / start < 1.2
    days = [
        DayRun(END + dt.timedelta(days=i), "success", 60.0, {"growing": growing[i], "noisy": noisy_last_day[i]})
        for i in range(14)
    ]
    rows = {line.split()[0]: line.split() for line in format_days(days).splitlines()}
    assert rows["growing"][-4:] == ["1.48", "!", "1.48", "!"]
    assert rows["noisy"][-3:] == ["1.40", "!", f"{end / start:.2f}"]
    assert fitted_line([10.0, 5.0, 6.0]) is None, "two later days are no line"


def test_daily_benchmark_runs_consecutive_days_on_one_warehouse(tmp_path):
    """Two run dates on one warehouse through the real DAG; day 2 loads only its own day's new files."""
    home = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REKINDLE_", "AIRFLOW"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.cli",
            "benchmark",
            "daily",
            "--days",
            "2",
            "--users",
            "400",
            "--window-days",
            "30",
            "--end-date",
            END.isoformat(),
            "--home",
            str(home),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout
        assert "day 2/2 2026-11-01: success" in out
        table = {
            line.split()[0]: line.split()
            for line in out.splitlines()
            if line.startswith(("publish_segments", "load_events"))
        }
        assert set(table) == {"publish_segments", "load_events"}
        inputs = {
            line.split()[0]: line.split()
            for line in out.splitlines()
            if line.startswith(("orders", "rounds", "machine", "I/O", "CPU"))
        }
        assert int(inputs["orders"][-2].replace(",", "")) > int(inputs["orders"][-3].replace(",", "")) > 0
        assert float(inputs["machine"][-2]) > 0 and float(inputs["machine"][-3]) > 0
        assert 0 <= float(inputs["I/O"][-2]) < 100
        assert float(inputs["CPU"][-2]) > 0 and float(inputs["CPU"][-3]) > 0
        assert int(inputs["rounds"][-2].replace(",", "")) > 0 and int(inputs["rounds"][-3].replace(",", "")) > 0
        assert "DAG TEST" not in out, "the full Airflow log belongs in the log file, not on the terminal"
        assert (home / "logs" / "reengagement_daily_2026-11-01.log").stat().st_size > 0
        url = subprocess.run(
            [sys.executable, "-m", "ml.cli", "warehouse", "url"],
            cwd=PROJECT_ROOT,
            env={**env, "REKINDLE_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with psycopg.connect(url) as conn:
            published = dict(
                conn.execute(
                    "SELECT run_date, count(DISTINCT user_id) FROM crm.recommendations GROUP BY 1 ORDER BY 1"
                ).fetchall()
            )
            assert list(published) == [END - dt.timedelta(days=1), END]
            assert published[END] >= published[END - dt.timedelta(days=1)] > 0
            loaded, distinct = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM raw.events").fetchone()
            assert loaded == distinct
            latest = conn.execute("SELECT max(event_time) FROM raw.events").fetchone()[0]
            assert latest.date() == END - dt.timedelta(days=1)
    finally:
        subprocess.run(
            [sys.executable, "-m", "ml.cli", "warehouse", "stop"],
            cwd=PROJECT_ROOT,
            env={**env, "REKINDLE_HOME": str(home)},
            capture_output=True,
        )


def test_format_growth_reports_each_size_and_the_growth_between_the_two_largest():
    from ml.benchmarks.growth import format_growth

    def day(scale: float) -> dict:
        return {
            "seconds": 100.0 * scale,
            "task_seconds": {"load_events": 10.0 * scale, "train_ranker": 50.0 * scale},
            "task_peak_mb": {"load_events": 500.0 * scale, "train_ranker": 900.0 * scale},
        }

    table = format_growth({5_500: day(0.2), 55_000: day(1.0), 550_000: day(11.0)})
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert "550,000 users" in table.splitlines()[0]
    assert rows["train_ranker"].split()[-1] == "11.0"
    assert "550.0 / 9,900" in rows["train_ranker"]
    assert rows["whole"].split()[-1] == "11.0"
