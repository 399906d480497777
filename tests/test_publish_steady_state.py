"""Publishing day after day on one warehouse, through ``tasks.publish_segments`` on the embedded Postgres:
the planner knows the day just written (no nested loop rescans crm.recommendations' day on day 2), and rows
older than ``crm_retention_days`` leave every crm table.

The marts are built by hand at demo scale (5,000 users x 10 recommendations: a day's 50,000 rows); only
the model registry is stood in for, by a deterministic recommender and offers.
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import ArithmeticRecommender, hand_built_marts_sql
from psycopg import sql

from ml.crm import publish, segments
from ml.pipeline import tasks, tracking
from ml.recommend.modes import MODES

DAY = date(2026, 11, 1)
USERS = 5000
MERCHANTS = 400

MARTS_SQL = hand_built_marts_sql(USERS, MERCHANTS, opted_in="u % 5 <> 1")
CRM_TABLES = (
    "crm.recommendations",
    "crm.segment_members",
    "crm.inactive_user_offers",
    *(f"crm.{name}" for name in segments.SEGMENTS),
)


def _offers(conn: psycopg.Connection) -> pd.DataFrame:
    users = pd.DataFrame(
        conn.execute(
            "SELECT user_id, lifecycle_segment FROM marts.user_segments "
            "WHERE lifecycle_segment IN ('at_risk', 'lapsed', 'dormant', 'churned')"
        ).fetchall(),
        columns=["user_id", "segment"],
    )
    arm = np.array(["personalised", "non_personalised", "holdout"])[users["user_id"].astype(int) % 3]
    return users.assign(
        arm=arm,
        event_type=np.where(arm == "holdout", "none", "free_delivery"),
        reward_size=np.where(arm == "holdout", 0.0, 10.0),
        expected_uplift=0.01,
        expected_cost=1.0,
        is_holdout=arm == "holdout",
        explored=False,
        propensity=1.0,
    )


@pytest.fixture
def publishing(settings, monkeypatch):
    """The marts and the crm tables, statistics from publishing alone (no autovacuum on crm), a stand-in registry."""
    with psycopg.connect(settings.warehouse_url) as conn:
        conn.execute(MARTS_SQL)
        segments.ensure_tables(conn)  # every crm table
        for table in CRM_TABLES:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    # A plan gone back to nested loops over a day's recommendations runs for many minutes: fail fast instead.
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=30s")
    monkeypatch.setattr(tracking, "configure", lambda settings, url: None)
    monkeypatch.setattr(tracking, "alias_version", lambda name, alias: "1")
    monkeypatch.setattr(tasks, "_todays_offers", lambda settings, conn, run_date: (_offers(conn), "1"))
    return settings


def _publish(settings, run_date: date) -> dict:
    champion = type(
        "Champion",
        (),
        {"recommender": ArithmeticRecommender(MERCHANTS, 37, 53, shift=run_date.toordinal() % MERCHANTS)},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracking, "load_alias", lambda name: champion)
        tasks.score_all_shards(settings, run_date)
        return tasks.publish_segments(settings, run_date)


def _rows_per_day(url: str) -> dict[str, dict[date, int]]:
    with psycopg.connect(url) as conn:
        return {
            table: dict(conn.execute(f"SELECT run_date, count(*) FROM {table} GROUP BY run_date").fetchall())
            for table in CRM_TABLES
        }


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _recommendation_scans(plan: dict) -> list[dict]:
    return [node for node in _plan_nodes(plan) if node.get("Relation Name") == "recommendations"]


def _executed_plans(url: str, run_date: date, settings) -> dict[str, dict]:
    """EXPLAIN ANALYZE of each segment's INSERT for run_date, rolled back."""
    params = segments._params(run_date, settings)
    plans = {}
    with psycopg.connect(url) as conn:
        for name, segment in segments.SEGMENTS.items():
            with conn.transaction(force_rollback=True):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE run_date = %s").format(sql.Identifier("crm", name)), (run_date,)
                )
                plans[name] = conn.execute(
                    sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(segments._insert_sql(segment)),
                    {**params, "segment": name, "mode": segment.mode},
                ).fetchone()[0][0]["Plan"]
    return plans


def test_the_second_day_is_planned_with_statistics_that_know_it(publishing):
    url = publishing.warehouse_url
    second = DAY + timedelta(days=1)
    _publish(publishing, DAY)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE crm.recommendations")  # as autovacuum after day 1: statistics that know day 1 only

    summary = _publish(publishing, second)

    with psycopg.connect(url) as conn:
        days_in_statistics = dict(
            conn.execute(
                "SELECT schemaname || '.' || tablename, most_common_vals::text::date[] FROM pg_stats "
                "WHERE schemaname = 'crm' AND attname = 'run_date'"
            ).fetchall()
        )
        reltuples = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'crm.recommendations'::regclass"
        ).fetchone()[0]
    assert all(summary["crm_segments"].values())
    assert {table: sorted(days_in_statistics.get(table) or []) for table in CRM_TABLES} == {
        table: [DAY, second] for table in CRM_TABLES
    }
    # two days, each with a winback and a discovery list per user
    assert reltuples == pytest.approx(2 * len(MODES) * USERS * publishing.top_n, rel=0.05)
    plans = _executed_plans(url, second, publishing)
    assert {name for name, plan in plans.items() if _recommendation_scans(plan)} == set(segments.SEGMENTS) - {
        "merchant_superfans"  # reads the orders only
    }
    for name, plan in plans.items():
        for scan in _recommendation_scans(plan):
            assert scan["Actual Rows"] / 2 <= scan["Plan Rows"] <= 2 * scan["Actual Rows"], (name, scan["Node Type"])
            # Read the day at most once: nested loops that rescan it per row took minutes per segment. A
            # nested loop looking each user's list up by the primary key reads a few rows per loop and is fine.
            assert scan["Actual Rows"] * scan["Actual Loops"] <= USERS * publishing.top_n, (name, scan["Node Type"])


def test_publishing_refreshes_statistics_from_a_sample_of_fixed_size(publishing):
    """ANALYZE samples 300 rows per unit of statistics target from as many pages. With Postgres' default target a
    crm table below 30,000 pages was read whole every day, so publishing grew with the days retained."""
    _publish(publishing, DAY)

    with psycopg.connect(publishing.warehouse_url) as conn:
        user_histograms = dict(
            conn.execute(
                "SELECT schemaname || '.' || tablename, cardinality(histogram_bounds::text::text[]) FROM pg_stats "
                "WHERE schemaname = 'crm' AND attname = 'user_id'"
            ).fetchall()
        )
    # thousands of users a table: the histogram has as many buckets as the target allows
    assert user_histograms["crm.recommendations"] == publish.ANALYZE_STATISTICS_TARGET + 1
    assert set(user_histograms) >= {"crm.recommendations", "crm.segment_members", "crm.high_affinity_prospects"}
    assert max(user_histograms.values()) <= publish.ANALYZE_STATISTICS_TARGET + 1


def test_rows_older_than_the_retention_leave_every_crm_table(publishing):
    url = publishing.warehouse_url
    settings = dataclasses.replace(publishing, crm_retention_days=90)
    kept, last = DAY + timedelta(days=10), DAY + timedelta(days=100)
    _publish(settings, DAY)
    _publish(settings, kept)
    first_day = {table: days[DAY] for table, days in _rows_per_day(url).items()}

    summary = _publish(settings, last)

    assert all(first_day.values())
    assert summary["expired_rows"] == first_day  # crm.experiment_results has no run_date: kept
    assert {table: sorted(days) for table, days in _rows_per_day(url).items()} == {
        table: [kept, last] for table in CRM_TABLES
    }


def test_publishing_a_day_again_replaces_its_rows(publishing):
    url = publishing.warehouse_url
    first = _publish(publishing, DAY)
    rows = _rows_per_day(url)

    again = _publish(publishing, DAY)

    assert _rows_per_day(url) == rows
    assert again["crm_segments"] == first["crm_segments"]
    assert set(again["expired_rows"].values()) == {0}
