"""The command line: first-run guidance, one clear line for a bad argument, `rekindle ui` stopping on Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psutil  # Airflow depends on it
import pytest

from ml import cli
from ml.cli.options import UsageError
from ml.cli.pipeline import DAG_ID
from ml.cli.privacy import ids_in_file
from ml.pipeline.airflow import ProgressView, TaskOutcome, in_process_run_lock, tasks_span_seconds
from ml.pipeline.summary import key_figure, render
from ml.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[1]


def test_run_with_nothing_to_load_says_how_to_get_data_instead_of_failing_a_gate(settings, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)

    assert cli.main(["run", "--date", "2026-11-01"]) == 2

    err = capsys.readouterr().err
    assert "rekindle generate" in err
    assert str(settings.input_dir) in err


def test_help_says_what_rekindle_is_lists_the_commands_and_where_to_go_next(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert cli.DESCRIPTION in " ".join(out.split())
    assert "{generate,ingest,warehouse,run,ui,export,simulate,readout,benchmark,serve,forget,roles,dashboard}" in out
    assert "rekindle COMMAND --help" in out

    # A command's own --help opens with the line the list gives it.
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "run the daily DAG in-process and print a summary" in capsys.readouterr().out.split("options:")[0]


def test_simulate_before_anything_is_published_says_to_run_first(settings, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)

    assert cli.main(["simulate"]) == 2

    assert capsys.readouterr().err.strip() == (
        "rekindle simulate: error: nothing published to crm yet: run `rekindle run` first"
    )


# A port nothing listens on; the password must never be printed.
UNREACHABLE = "postgresql://u:secret@127.0.0.1:1/rekindle"


def _cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no REKINDLE_ or AIRFLOW variables from this test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REKINDLE_", "AIRFLOW"))}
    return {**env, "REKINDLE_HOME": str(home), **extra}


@pytest.mark.parametrize(
    ("argv", "env", "bad_value"),
    [
        (["run", "--date", "2026-13-01"], {}, "2026-13-01"),
        (["run", "--date", "1999-12-31"], {}, "--date 1999-12-31 is before 2000-01-01, the first day the DAG runs"),
        (["run", "--date", "2999-01-01"], {}, "--date: run date 2999-01-01 is after today"),
        (["benchmark", "daily", "--end-date", "2999-01-01"], {}, "--end-date: run date 2999-01-01 is after today"),
        (["generate", "--days", "-3"], {}, "-3"),
        (["generate", "--end-date", "2026-02-30"], {}, "2026-02-30"),
        (["export", "nosuch"], {}, "nosuch"),
        (["export", "lapsed", "--min-score", "high"], {}, "high"),
        (["readout", "--date", "x"], {}, "'x'"),
        (["simulate", "--days", "-1"], {}, "-1"),
        (["benchmark", "serve"], {}, "no API keys: set REKINDLE_API_KEYS or run `rekindle serve` once"),
        (["benchmark", "serve"], {"REKINDLE_API_KEYS": "read:k1"}, "none with the write scope"),
        (["ingest", "/no/such/path"], {}, "/no/such/path"),
        (["benchmark", "daily", "--days", "0"], {}, "'0'"),
        (["benchmark", "growth", "--users", "5500,abc"], {}, "'abc' is not a whole number"),
        (["benchmark", "ranking", "--movielens", "ml", "--candidates", "0"], {}, "'0' is not at least 1"),
        (["benchmark", "synthetic", "--mmr-lambdas", "0.9,2"], {}, "'2' is not between 0 and 1"),
        (["benchmark", "offers", "--hillstrom", "/no/such.csv"], {}, "/no/such.csv does not exist"),
        (["benchmark", "offers", "--hillstrom", str(REPOSITORY / "requirements.lock")], {}, "no column recency"),
        (["benchmark", "offers", "--hillstrom", str(REPOSITORY / "README.md")], {}, "is not a CSV file"),
        (["ui", "--airflow-port", "99999"], {}, "99999"),
        (["dashboard", "--port", "99999"], {}, "99999"),
        (["export", "lapsed_personalised", "--lifecycle-segment", "sleepy"], {}, "sleepy"),
        (["nosuch"], {}, "nosuch"),
        (
            ["export", "lapsed"],
            {"REKINDLE_WAREHOUSE_URL": UNREACHABLE},
            "cannot reach the warehouse (postgresql://u:***@",
        ),
        (["readout"], {"REKINDLE_WAREHOUSE_URL": UNREACHABLE}, "cannot reach the warehouse (postgresql://u:***@"),
        (["run"], {"REKINDLE_SEED": "forty-two"}, "forty-two"),
        (["serve"], {"REKINDLE_SERVING_STRATEGIES": "champion:0.5,popular:0.5"}, "unknown strategy 'popular'"),
        (["dashboard"], {"REKINDLE_SERVING_STRATEGIES": "champion:0.5,cosine:0.3"}, "must add up to 1"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_bad_argument_gets_one_clear_line_and_a_non_zero_exit(argv, env, bad_value, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ml.cli", *argv],
        env=_cli_env(tmp_path / "home", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert bad_value in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_rekindle_run_says_in_one_line_that_it_cannot_reach_the_warehouse(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ml.cli", "run"],
        env=_cli_env(tmp_path / "home", REKINDLE_WAREHOUSE_URL=UNREACHABLE),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert result.stderr.startswith(
        "rekindle run: error: cannot reach the warehouse (postgresql://u:***@127.0.0.1:1/rekindle): connection failed"
    )
    assert len(result.stderr.splitlines()) == 1 and "secret" not in result.stderr + result.stdout


def test_a_path_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    a_file = tmp_path / "incoming"
    a_file.write_text("a file where the drop folder should be")
    result = subprocess.run(
        [sys.executable, "-m", "ml.cli", "generate", "--scale", "demo", "--days", "7"],
        env=_cli_env(tmp_path / "home", REKINDLE_INPUT_PATH=str(a_file)),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert result.stderr == f"rekindle generate: error: File exists: {a_file}\n"


def test_a_second_rekindle_run_on_one_home_is_refused_while_the_first_runs(tmp_path):
    home = tmp_path / "home"
    airflow_home = Settings.from_env(environ={}, home=home).airflow_home
    run = [sys.executable, "-m", "ml.cli", "run", "--date", "2026-11-02"]

    with in_process_run_lock(airflow_home, DAG_ID, date(2026, 11, 1)):
        result = subprocess.run(run, env=_cli_env(home), capture_output=True, text=True, timeout=120)

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"another `rekindle run` of {DAG_ID} is in progress on this home (process {os.getpid()}, date 2026-11-01, "
        in result.stderr
    )
    # Refused before it touched anything: no log of its own, no warehouse.
    assert not (home / "logs").exists() and not (home / "warehouse").exists()
    # The lock goes with the run that held it.
    with in_process_run_lock(airflow_home, DAG_ID, date(2026, 11, 2)):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> dict[int, float]:
    """Every live process below ``pid`` by pid, with its start time (so a reused pid is not mistaken for it)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    tree = {}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree[child.pid] = child.create_time()
    return tree


def _still_running(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True  # any HTTP status: the server is up
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["serve"], "--port"),
        (["serve", "--workers", "2"], "--port"),
        (["dashboard"], "--port"),
        (["ui"], "--airflow-port"),
        (["ui"], "--mlflow-port"),
    ],
    ids=["serve", "serve-workers", "dashboard", "ui-airflow", "ui-mlflow"],
)
def test_a_server_whose_port_is_taken_says_so_in_one_line_before_starting_anything(command, flag, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ml.cli", *command, flag, str(taken_port)],
            env=_cli_env(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"rekindle {command[0]}: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use; "
        f"choose another with {flag}"
    )
    assert done.stdout == ""
    assert not (tmp_path / "home" / "warehouse").exists()  # nothing started


def test_ui_on_celery_without_redis_says_how_to_install_it(tmp_path):
    no_redis = tmp_path / "bin"
    no_redis.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "ml.cli", "ui", "--executor", "celery"],
        env=_cli_env(tmp_path / "home", PATH=str(no_redis)),
        capture_output=True,
        text=True,
    )

    assert done.returncode == 2, done.stderr
    assert "apt-get install redis-server" in done.stderr
    assert not (tmp_path / "home" / "warehouse").exists()  # nothing started


@pytest.mark.parametrize(
    "executor",
    [
        "local",
        pytest.param(
            "celery",
            marks=pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get)"),
        ),
    ],
)
def test_ctrl_c_on_ui_stops_every_process_it_started_within_10_seconds(executor, settings, tmp_path):
    airflow_port, mlflow_port = _free_port(), _free_port()
    celery = (
        ["--executor", "celery", "--workers", "2", "--redis-port", str(_free_port())] if executor == "celery" else []
    )
    output = tmp_path / "ui.out"
    with open(output, "wb") as out:
        # Its own session, as a shell gives a foreground job: Ctrl-C is SIGINT to that whole process group.
        ui = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ml.cli",
                "ui",
                "--airflow-port",
                str(airflow_port),
                "--mlflow-port",
                str(mlflow_port),
                *celery,
            ],
            env=_cli_env(settings.home, REKINDLE_WAREHOUSE_URL=settings.warehouse_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: dict[int, float] = {}
    try:
        # Airflow's first start (metadata database, four services) takes a minute or more on a busy machine.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and ui.poll() is None:
            seen.update(_tree(ui.pid))
            if _answers(f"http://127.0.0.1:{airflow_port}/api/v2/monitor/health"):
                break
            time.sleep(1)
        assert ui.poll() is None, output.read_text()[-3000:]
        seen.update(_tree(ui.pid))
        assert len(seen) >= 3, f"Airflow and MLflow did not start: {output.read_text()[-3000:]}"
        if executor == "celery":  # Redis, MLflow, api-server, scheduler, dag-processor, triggerer, two workers
            commands = [psutil.Process(pid).cmdline() for pid in seen if _still_running(pid, seen[pid])]
            workers = {c[c.index("--celery-hostname") + 1] for c in commands if "--celery-hostname" in c}
            assert workers == {"worker-1@%h", "worker-2@%h"}, commands
            assert any(c[0].startswith("redis-server") for c in commands), commands

        os.killpg(ui.pid, signal.SIGINT)
        stop_deadline = time.monotonic() + 10
        with contextlib.suppress(subprocess.TimeoutExpired):
            ui.wait(timeout=10)
        while time.monotonic() < stop_deadline and any(_still_running(p, t) for p, t in seen.items()):
            time.sleep(0.2)

        assert ui.poll() is not None, "rekindle ui still running 10 s after Ctrl-C"
        left = {pid: psutil.Process(pid).cmdline() for pid, t in seen.items() if _still_running(pid, t)}
        assert not left, f"still running 10 s after Ctrl-C: {left}"
    finally:
        for pid, started in [(ui.pid, None), *seen.items()]:
            if started is None or _still_running(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        ui.wait()


def test_run_shows_each_task_as_it_ends_with_its_state_seconds_and_key_figure():
    def line(at: str, text: str) -> str:
        return f"2026-11-01T00:00:{at}Z [info     ] {text} loc=x.py:1"

    console = io.StringIO()
    view = ProgressView(console, key_figure)
    for text in [
        line("00", "[DAG TEST] starting task_id=load_events map_index=-1 [airflow.sdk]"),
        line(
            "02",
            "load_events finished in 2.0s: {'files': 2, 'tables': [{'table': 'events', 'rows_loaded': 1500, "
            "'rows_quarantined': 3}], 'peak_rss_mb': 1.0} [ml.pipeline.tasks]",
        ),
        line("02", "Task instance state updated [airflow.api] new_state=success rows_affected=1"),
        line("03", "[DAG TEST] end task task_id=load_events map_index=-1 [airflow.sdk]"),
        line("03", "[DAG TEST] starting task_id=dbt_build.stg_users_model_build map_index=-1 [airflow.sdk]"),
        line("03", "Task instance state updated [airflow.api] new_state=success rows_affected=1"),
        line("04", "[DAG TEST] end task task_id=dbt_build.stg_users_model_build map_index=-1 [airflow.sdk]"),
        line("04", "[DAG TEST] starting task_id=dbt_build.relationships_x_test map_index=-1 [airflow.sdk]"),
        line("04", "Task instance state updated [airflow.api] new_state=failed rows_affected=1"),
        line("05", "[DAG TEST] end task task_id=dbt_build.relationships_x_test map_index=-1 [airflow.sdk]"),
        line("05", "[DAG TEST] starting task_id=train_ranker map_index=-1 [airflow.sdk]"),
        line("09", "Task instance state updated [airflow.api] new_state=upstream_failed rows_affected=1"),
        line("09", "[DAG TEST] end task task_id=train_ranker map_index=-1 [airflow.sdk]"),
    ]:
        view.feed(text)
    view.close_group()

    load, dbt, ranker = (line.split() for line in console.getvalue().splitlines())
    assert load[:3] == ["load_events", "success", "3.0s"]
    assert " ".join(load[3:]) == "1,500 rows loaded from 2 files, 3 quarantined"
    assert dbt[:3] == ["dbt_build", "(2", "tasks)"] and "1 success, 1 failed" in " ".join(dbt)
    assert ranker == ["train_ranker", "upstream_failed", "4.0s"]


def test_a_failed_task_shows_what_it_raised_where_its_key_figure_would_be():
    def line(at: str, text: str) -> str:
        return f"2026-11-01T00:00:{at}Z [info     ] {text} loc=x.py:1"

    raised = "ValueError: the models are judged on the 7 days before 2026-11-01 (REKINDLE_EVAL_TEST_DAYS) ..."
    console = io.StringIO()
    view = ProgressView(console, key_figure)
    for text in [
        line("00", "[DAG TEST] starting task_id=train_ranker map_index=-1 [airflow.sdk]"),
        "Traceback (most recent call last):",
        '  File "/work/ml/pipeline/tasks.py", line 260, in train_ranker',
        "    raise ValueError(nothing_to_judge_on(orders, run_date, settings.eval_test_days, split.cut))",
        raised,
        line("01", "Task instance state updated [airflow.api] new_state=failed rows_affected=1"),
        line("01", "[DAG TEST] end task task_id=train_ranker map_index=-1 [airflow.sdk]"),
        line("01", "[DAG TEST] starting task_id=train_offer_model map_index=-1 [airflow.sdk]"),
        line("02", "Task instance state updated [airflow.api] new_state=success rows_affected=1"),
        line("02", "[DAG TEST] end task task_id=train_offer_model map_index=-1 [airflow.sdk]"),
    ]:
        view.feed(text)

    ranker, offers = console.getvalue().splitlines()
    assert ranker.split()[:3] == ["train_ranker", "failed", "1.0s"] and ranker.endswith(raised)
    assert offers.split() == ["train_offer_model", "success", "1.0s"]


def test_the_dag_runs_span_is_its_first_task_start_to_its_last_task_end():
    at = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    tasks = [
        TaskOutcome("prepare_warehouse", "success", 4.0, at, at + timedelta(seconds=4)),
        TaskOutcome("score_shard", "success", 10.0, at + timedelta(seconds=150), at + timedelta(seconds=160)),
        TaskOutcome("publish_segments", "success", 12.0, at + timedelta(seconds=160), at + timedelta(seconds=172)),
        TaskOutcome("score_shard", "upstream_failed", None),
    ]
    assert tasks_span_seconds(tasks) == 172.0
    assert tasks_span_seconds([TaskOutcome("load_events", "upstream_failed", None)]) is None


def test_the_tasks_table_shows_a_task_group_as_one_row():
    tasks = [
        TaskOutcome("load_events", "success", 2.0),
        *(TaskOutcome(f"dbt_build.model_{i}_model_build", "success", 1.5) for i in range(20)),
        TaskOutcome("train_ranker", "failed", 3.0),
    ]
    table = render({}, tasks).splitlines()
    assert len(table) == 2 + 3 + 1  # title, header and rule, three rows
    assert table[-2].split() == ["dbt_build", "(20", "tasks)", "success", "30.0"]


def test_the_ground_truth_table_says_when_it_was_judged_on_a_sample():
    metrics = {
        "policy_value": 2.0,
        "best_uniform_value": 1.5,
        "hindsight_best_uniform_value": 1.8,
        "random_value": 0.5,
        "no_offer_value": 0.0,
        "uplift_at_30": 1.2,
        "qini": 0.01,
        "test_rows": 300.0,
        "truth_policy_value": 2.2,
        "truth_oracle_value": 5.0,
        "truth_observable_oracle_value": 3.0,
        "truth_best_uniform_value": 2.0,
        "truth_random_value": 0.1,
        "truth_best_offer_share": 0.3,
        "truth_observable_oracle_best_offer_share": 0.35,
        "truth_best_event_type_share": 0.4,
        "truth_regret_qar": 3.0,
    }
    step = {"metrics": metrics, "best_uniform_arm": "cashback:5", "version": "2", "champion_version": "1", "gate": "g"}

    def heading(extra: dict) -> str:
        text = render({"train_offer_model": {**step, "metrics": {**metrics, **extra}}}, [])
        return next(line for line in text.splitlines() if line.startswith("Ground truth"))

    assert "a seeded sample of 6,000 of today's 31,000 inactive users" in heading(
        {"truth_users": 6000.0, "inactive_users": 31000.0}
    )
    assert "on today's inactive users" in heading({"truth_users": 4000.0, "inactive_users": 4000.0})
    assert "on today's inactive users" in heading({})  # a summary from before the sample


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("u-1\nu-2\n", ["u-1", "u-2"]),
        # Saved from a spreadsheet on Windows: a byte-order mark, CRLF line ends, blank and padded lines.
        ("\ufeffu-1\r\n\r\n  u-2  \r\n", ["u-1", "u-2"]),
        # A CRM export or any CSV with a user_id column: that column, not whole lines.
        ("\ufeffsegment,User_ID,score\r\nlapsed,u-1,0.5\r\nlapsed,,0.4\r\nlapsed,u-2,0.3\r\n", ["u-1", "u-2"]),
        ("user_id\nu-1\n", ["u-1"]),
    ],
)
def test_forget_reads_the_ids_of_a_file_as_they_are_kept(tmp_path, text, ids):
    path = tmp_path / "ids.txt"
    path.write_bytes(text.encode())
    assert ids_in_file(path) == ids


def test_forget_refuses_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("Jürgen\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        ids_in_file(path)


def test_generate_never_writes_a_second_world_over_the_first(tmp_path):
    home = tmp_path / "home"
    drop = home / "data" / "incoming"

    def generate(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ml.cli", "generate", "--days", "2", *extra]
        return subprocess.run(command, env=_cli_env(home), capture_output=True, text=True, timeout=300)

    assert generate("--end-date", "2026-11-01").returncode == 0
    first = (drop / "events.parquet").read_bytes()
    assert generate("--end-date", "2026-11-01").returncode == 0  # the same world again: the same bytes
    assert (drop / "events.parquet").read_bytes() == first

    # A world shifted by a day has other event ids for the same users: loaded beside the first, it would mix them.
    refused = generate("--end-date", "2026-11-02")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a synthetic world (demo, seed 42, 2 days to 2026-11-01, integer ids)" in refused.stderr
    kept = generate("--end-date", "2026-11-02", "--keep-existing")
    assert kept.returncode == 0 and "kept it" in kept.stdout
    assert (drop / "events.parquet").read_bytes() == first

    # A folder whose world was written without its parameters counts as another world.
    (drop / "ground_truth" / "world.json").unlink()
    assert "written before its parameters were recorded" in generate("--end-date", "2026-11-01").stderr
