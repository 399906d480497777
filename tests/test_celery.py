"""The daily DAG on Airflow's CeleryExecutor (``rekindle ui --executor celery``): a Redis broker, the metadata in the
warehouse's Postgres, an MLflow server holding the artifacts, two Celery workers. One run, triggered through
Airflow's REST API as its UI triggers it, has a worker SIGKILLed while it runs a scoring shard (and a ``rekindle run``
of the same day meanwhile is refused); the scheduler notices the task's lost heartbeat and retries it on the other worker, the run succeeds, and every crm table and
export file equals the in-process run's (``dag.test()``) for the same data and date.

Needs ``redis-server`` (``.ci/run`` installs it with apt-get); skips only when it is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def _airflow_api(stack: CeleryStack, method: str, path: str, body: dict | None = None, token: str = ""):
    """One call of Airflow's REST API, as the UI makes it; returns the decoded JSON answer."""
    request = urllib.request.Request(
        f"http://localhost:{stack.airflow_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def _trigger_as_the_ui_does(stack: CeleryStack) -> None:
    """Log in as admin, wait for the dag-processor to have parsed the DAG, unpause it and trigger RUN_ID."""
    passwords = stack.settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    credentials = {"username": "admin", "password": json.loads(passwords.read_text())["admin"]}
    token = _airflow_api(stack, "POST", "/auth/token", credentials)["access_token"]
    deadline = time.monotonic() + 300
    while True:
        try:
            _airflow_api(stack, "GET", f"/api/v2/dags/{DAG_ID}", token=token)
            break
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(2)
    _airflow_api(stack, "PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, token)
    _airflow_api(
        stack,
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"dag_run_id": RUN_ID, "logical_date": f"{RUN_DATE}T00:00:00Z"},
        token,
    )


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
    # The drop folder and the exports outside the home, as shared locations every worker reaches.
    shared = tmp_path / "shared"
    monkeypatch.setenv("REKINDLE_INPUT_PATH", str(shared / "incoming"))
    monkeypatch.setenv("REKINDLE_EXPORTS_PATH", str(shared / "exports"))
    settings = Settings.from_env(home=tmp_path / "celery", warehouse_url=url)
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
        _trigger_as_the_ui_does(stack)
        # Meanwhile someone runs the same DAG in-process on the same warehouse: refused, the scheduler's run untouched.
        second = subprocess.Popen(
            [sys.executable, "-m", "ml.cli", "run", "--date", str(RUN_DATE)],
            env={**os.environ, "REKINDLE_HOME": str(tmp_path / "in-process-home"), "REKINDLE_WAREHOUSE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        workers = {name: p for name, p in processes.items() if name.startswith("airflow-worker-")}

        killed, shard = _kill_worker_running_a_shard(url, workers)
        state = _wait_for_run(url)
        _, refusal = second.communicate(timeout=300)
        # The retry could only run on the other worker.
        assert workers[killed].poll() is not None
    finally:
        stop_process_groups(list(processes.values()), STOP_GRACE_SECONDS)

    instances = {(task_id, map_index): (state, tries) for task_id, map_index, state, tries, _ in _task_instances(url)}
    assert state == "success", (instances, f"logs: {log_dir}")
    assert second.returncode == 2, refusal
    assert f"the Airflow scheduler of `rekindle ui --executor celery` is running {DAG_ID} for {RUN_DATE}" in refusal
    shards = sorted(map_index for task_id, map_index in instances if task_id == "score_shard")
    assert shards == list(range(settings.score_shards))
    assert instances[("score_shard", shard)] == ("success", 2), f"{killed} died running shard {shard}"
    assert_same_crm_tables(crm_tables(url), expected_tables)
    assert_same_exports(export_files(shared / "exports"), expected_exports)
    assert not (settings.home / "exports").exists()
    # The models went through the MLflow server, which stores their artifacts: no task read another's files.
    with psycopg.connect(url) as conn:
        locations = dict(conn.execute("SELECT name, artifact_location FROM mlflow.experiments").fetchall())
    assert locations[settings.ranker_model_name].startswith("mlflow-artifacts:")
    assert locations[settings.offer_model_name].startswith("mlflow-artifacts:")
