"""Airflow on its CeleryExecutor on localhost (``rekindle ui --executor celery``): a Redis broker, the metadata
database in the warehouse's Postgres, an MLflow tracking server that serves the artifacts, and Airflow's
api-server, scheduler, dag-processor, triggerer and N Celery workers, each a process group of its own."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from ml.pipeline.airflow import STOP_GRACE_SECONDS, stop_process_groups, supervise
from ml.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

# Airflow's metadata tables live in this schema of the warehouse database (as in docker-compose.yml).
AIRFLOW_SCHEMA = "airflow"
# The long-running Airflow components besides the workers, by their ``airflow`` sub-command.
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Task processes per Celery worker on localhost (a daily task may take a few GB at full scale).
WORKER_CONCURRENCY = 2
REDIS_INSTALL_HINT = (
    "redis-server is not on PATH: the CeleryExecutor needs Redis as its broker. Install it with "
    "`sudo apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS), or leave out "
    "`--executor celery` to run Airflow's LocalExecutor."
)


def topology(workers: int) -> list[str]:
    """The services of the Celery deployment, named as in docker-compose.yml: what ``rekindle ui --executor
    celery --workers N`` starts (the warehouse's Postgres is the embedded server or REKINDLE_WAREHOUSE_URL)."""
    return [
        "postgres",
        "redis",
        "mlflow",
        *(f"airflow-{component}" for component in AIRFLOW_COMPONENTS),
        *(f"airflow-worker-{number}" for number in range(1, workers + 1)),
    ]


def airflow_command(service: str) -> list[str]:
    """The ``airflow`` arguments a service of ``topology`` runs (docker-compose.yml runs the same)."""
    if service.startswith("airflow-worker-"):
        return ["airflow", "celery", "worker", "--celery-hostname", f"{service.removeprefix('airflow-')}@%h"]
    component = service.removeprefix("airflow-")
    if component not in AIRFLOW_COMPONENTS:
        raise ValueError(f"{service!r} is not an Airflow service")
    return ["airflow", component]


def metadata_url(warehouse_url: str) -> str:
    """Airflow's SQLAlchemy URL (psycopg2, the driver Airflow supports) for its schema of the warehouse."""
    base = warehouse_url.replace("postgres://", "postgresql://", 1).replace(
        "postgresql://", "postgresql+psycopg2://", 1
    )
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={AIRFLOW_SCHEMA}')}"


def existing_metadata_url(warehouse_url: str) -> str | None:
    """``metadata_url``, if a Celery stack ever created its tables in the warehouse; else None."""
    with psycopg.connect(warehouse_url) as conn:
        (table,) = conn.execute("SELECT to_regclass(%s)", (f"{AIRFLOW_SCHEMA}.dag_run",)).fetchone()
    return metadata_url(warehouse_url) if table is not None else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class CeleryStack:
    """Where the stack listens; ``environment`` is what every Airflow process of it (and its tasks) runs with."""

    settings: Settings
    warehouse_url: str
    airflow_port: int
    mlflow_port: int
    redis_port: int
    workers: int

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def environment(self) -> dict[str, str]:
        """This stack's own Airflow home (logs, the api-server's passwords, Cosmos's cache), then ``overrides``."""
        from ml.runtime import airflow_environment

        own_home = {**airflow_environment(self.settings), "REKINDLE_HOME": str(self.settings.home)}
        return {**os.environ, **own_home, **self.overrides()}

    def overrides(self) -> dict[str, str]:
        """What the Celery deployment sets (docker-compose.yml sets the same, with its own hosts)."""
        metadata = metadata_url(self.warehouse_url)
        return dict(
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata,
            # The api-server's async engine: psycopg 3 (already installed) instead of asyncpg.
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=metadata.replace("+psycopg2://", "+psycopg_async://", 1),
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + metadata.replace("postgresql+psycopg2://", "postgresql://", 1),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.airflow_port),
            AIRFLOW__API__BASE_URL=f"http://localhost:{self.airflow_port}",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://localhost:{self.airflow_port}/execution/",
            AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
            # Tasks log and load models through the MLflow server, which stores the artifacts: no task reads a
            # file another task (maybe on another worker) wrote.
            REKINDLE_MLFLOW_TRACKING_URI=self.mlflow_url,
            REKINDLE_WAREHOUSE_URL=self.warehouse_url,
        )

    def mlflow_command(self) -> list[str]:
        from ml.pipeline.tracking import artifact_root, tracking_uri

        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.mlflow_port),
            "--backend-store-uri",
            tracking_uri(self.warehouse_url),
            "--serve-artifacts",
            "--artifacts-destination",
            artifact_root(self.settings),
            "--workers",
            "1",
        ]

    def redis_command(self) -> list[str]:
        redis_dir = self.settings.home / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        return [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.redis_port),
            "--dir",
            str(redis_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]

    def commands(self) -> dict[str, list[str]]:
        """Every process of ``topology`` but Postgres, in start order."""
        commands = {"redis": self.redis_command(), "mlflow": self.mlflow_command()}
        for service in topology(self.workers)[3:]:
            commands[service] = [sys.executable, "-m", *airflow_command(service)]
            if service.startswith("airflow-worker-"):
                # One machine: the api-server reads task logs from the shared log folder, and the workers' log
                # servers would all want the same port.
                commands[service] += ["--skip-serve-logs", "--concurrency", str(WORKER_CONCURRENCY)]
        return commands


def migrate_metadata(stack: CeleryStack, output) -> None:
    """Create (or upgrade) Airflow's metadata tables in their schema of the warehouse; create MLflow's schema."""
    import psycopg

    from ml.pipeline.tracking import MLFLOW_SCHEMA

    with psycopg.connect(stack.warehouse_url, autocommit=True) as conn:
        for schema in (AIRFLOW_SCHEMA, MLFLOW_SCHEMA):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=stack.environment(),
        check=True,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def start_stack(stack: CeleryStack, log_dir: Path) -> dict[str, subprocess.Popen]:
    """Start every process of the stack (each in its own session, its output in ``log_dir/<service>.log``) after
    migrating the metadata database; returns them by service. Stop them with ``stop_process_groups``."""
    if shutil.which("redis-server") is None:
        raise FileNotFoundError(REDIS_INSTALL_HINT)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "airflow-db-migrate.log", "ab") as output:
        migrate_metadata(stack, output)
    env = stack.environment()
    processes: dict[str, subprocess.Popen] = {}
    try:
        for service, command in stack.commands().items():
            with open(log_dir / f"{service}.log", "ab") as output:
                processes[service] = subprocess.Popen(
                    command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
                )
    except BaseException:
        stop_process_groups(list(processes.values()), STOP_GRACE_SECONDS)
        raise
    return processes


def serve_celery(stack: CeleryStack) -> int:
    """``start_stack`` until Ctrl-C (SIGINT) or SIGTERM, or until a process of it exits; then stop them all."""
    log_dir = stack.settings.home / "logs" / "celery"
    print(f"starting Redis, MLflow and Airflow with {stack.workers} Celery workers (logs: {log_dir}) ...", flush=True)
    password_file = stack.settings.airflow_home / "simple_auth_manager_passwords.json.generated"
    return supervise(
        lambda processes: processes.update(start_stack(stack, log_dir)),
        f"Airflow UI: http://localhost:{stack.airflow_port}  (CeleryExecutor, {stack.workers} workers; user "
        f"'admin', password in {password_file})\nMLflow UI:  {stack.mlflow_url}\n"
        f"Redis:      redis://127.0.0.1:{stack.redis_port}/0\nCtrl-C stops them all; each one's log is in {log_dir}.",
    )


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")
