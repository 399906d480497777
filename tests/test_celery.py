"""The daily DAG on Airflow's CeleryExecutor (``rekindle ui --executor celery``): a Redis broker, the metadata in the
warehouse's Postgres, an MLflow server holding the artifacts, two Celery workers. One run, triggered as the Airflow
CLI triggers it, has a worker SIGKILLed while it runs a scoring shard; the scheduler notices the task's lost
heartbeat and retries it on the other worker, the run succeeds, and every crm table and export file equals the
in-process run's (``dag.test()``) for the same data and date.

Needs ``redis-server`` (``.ci/run`` installs it with apt-get); skips only when it is absent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import date

import psycopg
import pytest
from conftest import new_database
from published_state import assert_same_crm_tables, assert_same_exports, crm_tables, export_files

from ml.pipeline.airflow import STOP_GRACE_SECONDS, _descendants, run_dag_in_process, stop_process_groups
from ml.pipeline.cluster import CeleryStack, free_port, start_stack, wait_for_port
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)"
)

RUN_DATE = date(2026, 11, 1)
DAG_ID = "reengagement_daily"
RUN_ID = "celery-test"
RUN_TIMEOUT_SECONDS = 1500


def _world(settings: Settings) -> None:
    market = generate_marketplace(seed=7, days=30, end_date=RUN_DATE, n_users=700, n_merchants=90)
    market.write(settings.input_dir, ids="uuid")


def _airflow(stack: CeleryStack, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=stack.environment(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _task_instances(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT task_id, map_index, state, try_number, pid FROM airflow.task_instance "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
            (DAG_ID, RUN_ID),
        ).fetchall()


def _run_state(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state FROM airflow.dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, RUN_ID)
        ).fetchone()
    return row[0] if row else None


def _kill_worker_running_a_shard(url: str, workers: dict) -> tuple[str, int]:
    """Wait for a score_shard task to run, SIGKILL the whole Celery worker (its process group: the worker, its
    pool and the task) that runs it; returns the worker's service name and the shard."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for task_id, shard, state, _, pid in _task_instances(url):
            if task_id != "score_shard" or state != "running" or pid is None:
                continue
            for service, worker in workers.items():
                if pid in _descendants(worker.pid):
                    stop_process_groups([worker], grace_seconds=0)
                    return service, shard
        assert _run_state(url) not in ("success", "failed"), "the run ended before a shard could be caught running"
        time.sleep(0.2)
    raise TimeoutError("no score_shard task ran")


def _wait_for_run(url: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = _run_state(url)
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise TimeoutError(f"{RUN_ID} still running after {RUN_TIMEOUT_SECONDS} s: {_task_instances(url)}")


@pytest.fixture
def in_process_day(tmp_path, warehouse_url, airflow_db, monkeypatch):
    """The same day run by ``dag.test()`` on its own warehouse: what the Celery run must publish."""
    settings = Settings.from_env(environ={}, home=tmp_path / "in-process", warehouse_url=warehouse_url)
    _world(settings)
    with monkeypatch.context() as env:
        env.setenv("REKINDLE_HOME", str(settings.home))
        env.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
        state, tasks = run_dag_in_process(DAG_ID, RUN_DATE)
    assert state == "success", {t.task_id: t.state for t in tasks}
    return crm_tables(warehouse_url), export_files(settings.exports_dir)


def test_celery_run_survives_a_killed_worker_and_publishes_the_in_process_rows(
    in_process_day, tmp_path, postgres_server_url, monkeypatch
):
    expected_tables, expected_exports = in_process_day
    url = new_database(postgres_server_url)
    settings = Settings.from_env(environ={}, home=tmp_path / "celery", warehouse_url=url)
    _world(settings)
    # Only the triggered run (no scheduled one); a task whose worker died is noticed after 20 s without a heartbeat
    # and retried a few seconds later (the DAG's retries, with a short first delay).
    monkeypatch.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "20")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL", "5")
    monkeypatch.setenv("REKINDLE_TASK_RETRY_DELAY_SECONDS", "2")
    stack = CeleryStack(settings, url, free_port(), free_port(), free_port(), workers=2)
    log_dir = settings.home / "logs" / "celery"
    processes = start_stack(stack, log_dir)
    try:
        wait_for_port(stack.airflow_port, timeout=180)
        _airflow(stack, "dags", "reserialize")
        _airflow(stack, "dags", "unpause", DAG_ID)
        _airflow(stack, "dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--logical-date", f"{RUN_DATE}T00:00:00+00:00")
        workers = {name: p for name, p in processes.items() if name.startswith("airflow-worker-")}

        killed, shard = _kill_worker_running_a_shard(url, workers)
        state = _wait_for_run(url)
        # The retry could only run on the other worker.
        assert workers[killed].poll() is not None
    finally:
        stop_process_groups(list(processes.values()), STOP_GRACE_SECONDS)

    instances = {(task_id, map_index): (state, tries) for task_id, map_index, state, tries, _ in _task_instances(url)}
    assert state == "success", (instances, f"logs: {log_dir}")
    shards = sorted(map_index for task_id, map_index in instances if task_id == "score_shard")
    assert shards == list(range(settings.score_shards))
    assert instances[("score_shard", shard)] == ("success", 2), f"{killed} died running shard {shard}"
    assert_same_crm_tables(crm_tables(url), expected_tables)
    assert_same_exports(export_files(settings.exports_dir), expected_exports)
