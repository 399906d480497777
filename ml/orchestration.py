"""Airflow from Python: run a DAG in-process (``dag.test``) or serve the Airflow and MLflow UIs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone

from ml.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise LookupError(f"no DAG {dag_id!r} in {PROJECT_ROOT / 'dags'}")
    return dag


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    state: str
    seconds: float | None


def _state(value) -> str:
    return str(getattr(value, "value", value))


def run_dag_in_process(dag_id: str, run_date: date, conf: dict | None = None) -> tuple[str, list[TaskOutcome]]:
    """Run every task of the DAG for ``run_date`` in this process; returns the run state and each task's outcome."""
    dag = load_dag(dag_id)
    logical_date = datetime(run_date.year, run_date.month, run_date.day, tzinfo=timezone.utc)
    dag_run = dag.test(logical_date=logical_date, run_conf=conf)
    outcomes = []
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0)):
        seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        outcomes.append(TaskOutcome(ti.task_id, _state(ti.state), seconds))
    return _state(dag_run.state), outcomes


def serve_uis(settings: Settings, warehouse_url: str, airflow_port: int, mlflow_port: int) -> int:
    """``airflow standalone`` plus ``mlflow ui`` on localhost until Ctrl-C."""
    from ml.registry import configure, tracking_uri

    configure(settings, warehouse_url)
    env = dict(os.environ, AIRFLOW__API__PORT=str(airflow_port), AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True")
    airflow = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env)
    mlflow_ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", tracking_uri(warehouse_url),
         "--default-artifact-root", settings.mlflow_artifacts_dir.as_uri()],
        env=env,
    )
    password_file = settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    print(
        f"Airflow UI: http://localhost:{airflow_port}  (user 'admin'; password printed by Airflow below and kept in "
        f"{password_file})\nMLflow UI:  http://localhost:{mlflow_port}\nCtrl-C stops both.",
        flush=True,
    )
    try:
        return airflow.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (mlflow_ui, airflow):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (mlflow_ui, airflow):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
