"""docker-compose.yml deploys the topology of ``rekindle ui --executor celery --workers 2``: the same services, the
same Airflow commands, and the Airflow settings the CLI derives from the warehouse URL (hosts are compose services
instead of localhost)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from ml.pipeline.cluster import WORKER_CONCURRENCY, CeleryStack, airflow_command, topology
from ml.pipeline.tracking import tracking_uri
from ml.settings import PROJECT_ROOT, Settings
from ml.warehouse import postgres

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
COMPOSE_WORKERS = 2
# Services of the compose file that `rekindle ui --executor celery` has no process for: the one-off migration, and
# the API and dashboard, which have commands of their own.
COMPOSE_ONLY_SERVICES = {"airflow-init", "serve", "dashboard"}
# Settings whose URL names a host: in compose that host is the service, on localhost it is the loopback address.
SERVICE_URLS = {
    "AIRFLOW__CELERY__BROKER_URL": "redis",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "airflow-api-server",
    "REKINDLE_MLFLOW_TRACKING_URI": "mlflow",
}
# The API server listens on every interface of its container; on localhost only on the loopback address.
LISTEN_HOST = "AIRFLOW__API__HOST"
DAGS_FOLDER = "AIRFLOW__CORE__DAGS_FOLDER"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def airflow_services(compose: dict) -> list[str]:
    return [name for name in compose["services"] if name.startswith("airflow-")]


def repository_mount(service: dict) -> PurePosixPath:
    """Where the service mounts the repository (``./``)."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source in ("./", "."):
            return PurePosixPath(target)
    raise AssertionError(f"no mount of the repository in {service['volumes']}")


def test_services_are_the_cli_topology(compose):
    assert set(compose["services"]) == set(topology(COMPOSE_WORKERS)) | COMPOSE_ONLY_SERVICES


def test_airflow_services_run_the_cli_commands(compose):
    long_running = [name for name in topology(COMPOSE_WORKERS) if name.startswith("airflow-")]
    for name in long_running:
        assert compose["services"][name]["command"] == airflow_command(name), name
        if name.startswith("airflow-worker-"):
            concurrency = compose["services"][name]["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
            assert concurrency == str(WORKER_CONCURRENCY), name


def test_airflow_environment_is_the_celery_stacks(compose, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("AIRFLOW__", "REKINDLE_")):
            monkeypatch.delenv(name)
    services = compose["services"]
    warehouse_url = services["airflow-scheduler"]["environment"]["REKINDLE_WAREHOUSE_URL"]
    stack = CeleryStack(
        Settings.from_env(environ={}), warehouse_url, airflow_port=8080, mlflow_port=5000, redis_port=6379, workers=2
    )
    expected = stack.overrides()
    assert expected["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    for name in airflow_services(compose):
        environment = services[name]["environment"]
        assert set(expected) <= set(environment), f"{name} lacks {sorted(set(expected) - set(environment))}"
        for key, value in expected.items():
            actual = environment[key]
            if key in SERVICE_URLS:
                url, cli_url = urlsplit(actual), urlsplit(value)
                assert url.hostname == SERVICE_URLS[key], (name, key, actual)
                assert (url.scheme, url.port, url.path) == (cli_url.scheme, cli_url.port, cli_url.path), (name, key)
            elif key == LISTEN_HOST:
                assert actual == "0.0.0.0", name
            elif key == DAGS_FOLDER:
                in_repository = Path(value).relative_to(PROJECT_ROOT).as_posix()
                assert PurePosixPath(actual) == repository_mount(services[name]) / in_repository, name
            else:
                # The executor, the metadata database and the Celery result backend (schema `airflow` of the
                # warehouse), the API's port and base URL, the warehouse: exactly what the CLI sets.
                assert actual == value, (name, key)


def test_mlflow_server_stores_the_artifacts_on_the_warehouse_backend(compose):
    services = compose["services"]
    warehouse_url = services["airflow-scheduler"]["environment"]["REKINDLE_WAREHOUSE_URL"]
    words = shlex.split(services["mlflow"]["command"][-1])
    server = words[words.index("server") + 1 :]
    options = dict(zip(server, server[1:]))
    assert options["--backend-store-uri"] == tracking_uri(warehouse_url)
    assert "--serve-artifacts" in server and "--artifacts-destination" in server
    tracking = urlsplit(services["airflow-scheduler"]["environment"]["REKINDLE_MLFLOW_TRACKING_URI"])
    assert options["--port"] == str(tracking.port)
    # The tasks' Host header must pass the server's DNS-rebinding check.
    assert tracking.netloc in options["--allowed-hosts"].split(",")


def test_the_warehouse_compares_text_as_the_embedded_one_does(compose):
    initdb = compose["services"]["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    assert initdb.split() == ["--locale-provider=builtin", f"--builtin-locale={postgres.BUILTIN_LOCALE}"]


def test_references_name_what_the_file_defines(compose):
    services = compose["services"]
    volumes = set(compose["volumes"])
    for name, service in services.items():
        assert set(service.get("depends_on", ())) <= set(services), name
        for volume in service.get("volumes", ()):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, (name, source)


def test_docker_compose_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker with the compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "--file", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
