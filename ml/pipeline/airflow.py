"""Airflow from Python: run a DAG in-process (``dag.test``) or serve the Airflow and MLflow UIs."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

from ml.runtime import PROGRESS_LOGGER
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
    logical_date = datetime(run_date.year, run_date.month, run_date.day, tzinfo=UTC)
    dag_run = dag.test(logical_date=logical_date, run_conf=conf)
    outcomes = []
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0)):
        seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        outcomes.append(TaskOutcome(ti.task_id, _state(ti.state), seconds))
    return _state(dag_run.state), outcomes


_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_PROGRESS = re.compile(r"\]\s+(.*?)\s+\[" + re.escape(PROGRESS_LOGGER) + r"\]")


class ProgressView:
    """Turns the DAG's full log into a short view: each task as it ends, with its seconds (a task group's
    tasks, such as the dbt models and tests, as one line), and the lines the steps log to
    ``PROGRESS_LOGGER`` (rows per second, users scored of total)."""

    def __init__(self, console: TextIO):
        self.console = console
        self.started: dict[str, float] = {}
        self.group: tuple[str, int, float] | None = None  # name, tasks ended, seconds

    def feed(self, line: str) -> None:
        if match := _TASK_START.search(line):
            task_id = match.group(1)
            if self.group and not task_id.startswith(self.group[0] + "."):
                self.close_group()
            self.started[task_id] = time.perf_counter()
        elif match := _TASK_END.search(line):
            task_id = match.group(1)
            seconds = time.perf_counter() - self.started.pop(task_id, time.perf_counter())
            if "." in task_id:
                name = task_id.split(".", 1)[0]
                tasks, total = self.group[1:] if self.group and self.group[0] == name else (0, 0.0)
                self.group = (name, tasks + 1, total + seconds)
            else:
                self._write(f"  {task_id:<40} {seconds:7.1f}s")
        elif match := _PROGRESS.search(line):
            self._write(f"    {match.group(1)}")

    def close_group(self) -> None:
        if self.group:
            name, tasks, seconds = self.group
            self.group = None
            self._write(f"  {f'{name} ({tasks} tasks)':<40} {seconds:7.1f}s")

    def _write(self, text: str) -> None:
        self.console.write(text + "\n")
        self.console.flush()


@contextmanager
def logs_to_file(path: Path) -> Iterator[ProgressView]:
    """Send everything this process prints (Airflow, dbt, our loggers) to ``path``; show a ProgressView on
    the terminal meanwhile. Redirects the file descriptors, so output of libraries that hold on to the
    original streams is captured too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    view = ProgressView(console)
    done = threading.Event()
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        follower = threading.Thread(target=_follow, args=(path, log.tell(), view, done), daemon=True)
        follower.start()
        try:
            yield view
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            done.set()
            follower.join()
            view.close_group()
            console.close()


def _follow(path: Path, offset: int, view: ProgressView, done: threading.Event) -> None:
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        pending = ""
        while True:
            finished = done.is_set()
            chunk = log.read()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                view.feed(line)
            if finished and not chunk:
                return
            if not chunk:
                time.sleep(0.2)


def serve_uis(settings: Settings, warehouse_url: str, airflow_port: int, mlflow_port: int) -> int:
    """``airflow standalone`` plus ``mlflow ui`` on localhost until Ctrl-C."""
    from ml.pipeline.tracking import configure, tracking_uri

    configure(settings, warehouse_url)
    env = dict(os.environ, AIRFLOW__API__PORT=str(airflow_port), AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True")
    airflow = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env)
    mlflow_ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--backend-store-uri",
            tracking_uri(warehouse_url),
            "--default-artifact-root",
            settings.mlflow_artifacts_dir.as_uri(),
        ],
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
