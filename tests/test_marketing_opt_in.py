"""Marketing reaches only users who opted in (marts.user_features.marketing_opt_in): publishing through
``tasks.publish_segments`` on the embedded Postgres leaves no other user in the offers, the scored segment
members, the six CRM segment tables or any CSV export, and removes nothing else. crm.recommendations, the
source of the in-app recommendations (not marketing), keeps everyone.

The marts are built by hand; the model registry is stood in for by a deterministic recommender and an offer
model under which every offer pays, so the real offer path (load_inactive_users, decide_offers) runs.
"""

from __future__ import annotations

import csv
from datetime import date, timedelta

import pandas as pd
import psycopg
import pytest
from conftest import ArithmeticRecommender, hand_built_marts_sql

from ml.crm import export, segments
from ml.experiments import readout
from ml.experiments.assignment import ARMS, campaign_id_for
from ml.offers.response import CONTROL
from ml.pipeline import tasks, tracking

DAY = date(2026, 11, 1)
USERS = 240
MERCHANTS = 40
# Every third user did not opt in.
MARTS_SQL = hand_built_marts_sql(USERS, MERCHANTS, opted_in="u % 3 <> 0")
# User ids are text in the warehouse; this world's are the decimal text of 1..USERS.
OPTED_OUT = {str(u) for u in range(1, USERS + 1) if u % 3 == 0}
OPTED_IN = {str(u) for u in range(1, USERS + 1)} - OPTED_OUT
MARKETING_TABLES = ("crm.inactive_user_offers", "crm.segment_members", *(f"crm.{name}" for name in segments.SEGMENTS))
USER_ID = 2  # the user_id's position in every marketing table's rows


class OfferModel:
    """Every user would come back more often with free delivery, at a cost far below the budget."""

    reward_size_ = {"free_delivery:5": 5.0}

    def gain_and_cost(self, users: pd.DataFrame, objective: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        def frame(none: float, offer: float) -> pd.DataFrame:
            return pd.DataFrame({CONTROL: none, "free_delivery:5": offer}, index=users.index)

        return frame(0.1, 0.2), frame(0.0, 1.0), frame(0.0, 1.0)


@pytest.fixture
def world(settings, monkeypatch):
    with psycopg.connect(settings.warehouse_url) as conn:
        conn.execute(MARTS_SQL)
    champion = type("Champion", (), {"recommender": ArithmeticRecommender(MERCHANTS, 7, 3), "model": OfferModel()})
    monkeypatch.setattr(tracking, "configure", lambda settings, url: None)
    monkeypatch.setattr(tracking, "alias_version", lambda name, alias: "1")
    monkeypatch.setattr(tracking, "load_alias", lambda name: champion)
    return settings


def _users(url: str, table: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {u for (u,) in conn.execute(f"SELECT DISTINCT user_id FROM {table} WHERE run_date = %s", (DAY,))}


def _without_published_at(table: str, rows: set[tuple]) -> set[tuple]:
    return {row[:-1] for row in rows} if table == "crm.segment_members" else rows


def _rows(url: str, table: str) -> set[tuple]:
    with psycopg.connect(url) as conn:
        return set(conn.execute(f"SELECT * FROM {table} WHERE run_date = %s", (DAY,)).fetchall())


def _marts_users(url: str, where: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {
            u
            for (u,) in conn.execute(
                f"SELECT user_id FROM marts.user_segments JOIN marts.user_features USING (user_id) WHERE {where}"
            )
        }


def _csv_users(settings) -> dict[str, set[str]]:
    files = sorted(settings.exports_dir.glob(f"*_{DAY.isoformat()}.csv"))
    users = {}
    for path in files:
        with path.open(newline="") as f:
            users[path.name] = {row["user_id"] for row in csv.DictReader(f)}
    return users


def test_no_marketing_output_holds_a_user_who_did_not_opt_in(world):
    url = world.warehouse_url

    tasks.score_all_shards(world, DAY)
    summary = tasks.publish_segments(world, DAY)

    for table in MARKETING_TABLES:
        users = _users(url, table)
        assert not users & OPTED_OUT, table
        assert users & OPTED_IN, table
    assert _users(url, "crm.inactive_user_offers") == _marts_users(
        url, "marketing_opt_in AND lifecycle_segment IN ('at_risk', 'lapsed', 'dormant', 'churned')"
    )
    assert _users(url, "crm.segment_members") == _marts_users(
        url, "marketing_opt_in AND lifecycle_segment IN ('lapsed', 'dormant')"
    )
    exported = _csv_users(world)
    assert set(exported) == {f"{name}_{DAY.isoformat()}.csv" for name in (*world.score_segments, *segments.SEGMENTS)}
    for name, users in exported.items():
        assert not users & OPTED_OUT, name
        assert users & OPTED_IN, name
    assert summary["offers"]["users_per_arm"].keys() == set(ARMS)
    # In-app recommendations are not marketing: every user keeps theirs.
    assert _users(url, "crm.recommendations") == OPTED_IN | OPTED_OUT


def test_the_rule_removes_the_opted_out_users_rows_and_nothing_else(world):
    """Everyone else keeps the same rows, offers and experiment arms included: the arms are drawn after the
    opted-out users are left out, by a hash per user, so leaving them out shifts no one's arm."""
    url = world.warehouse_url
    tasks.score_all_shards(world, DAY)
    tasks.publish_segments(world, DAY)
    published = {table: _rows(url, table) for table in MARKETING_TABLES}
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE marts.user_features SET marketing_opt_in = true")

    tasks.score_all_shards(world, DAY)
    tasks.publish_segments(world, DAY)

    for table in MARKETING_TABLES:
        opted_in_rows = {row for row in _rows(url, table) if row[USER_ID] not in OPTED_OUT}
        assert _without_published_at(table, opted_in_rows) == _without_published_at(table, published[table]), table


def test_the_readout_counts_the_offered_users_in_their_arms(world):
    url = world.warehouse_url
    tasks.score_all_shards(world, DAY)
    tasks.publish_segments(world, DAY)
    offered = _users(url, "crm.inactive_user_offers")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE marts.orders (user_id text, ordered_at timestamptz, order_total numeric(12, 2))")
        conn.execute("CREATE TABLE marts.reward_redemptions (campaign_id text, user_id text, redeemed_at timestamptz)")
        conn.execute(
            "INSERT INTO marts.orders SELECT user_id, %s, 30 FROM crm.inactive_user_offers WHERE user_id::int %% 2 = 0",
            (readout.campaign_start(DAY) + timedelta(days=1),),
        )

        results = readout.readout(conn, campaign_id_for(DAY), world.reactivation_window_days, world.order_margin_rate)

    assert set(results["arm"]) == set(ARMS)
    assert results["users"].sum() == len(offered)
    assert results["re_engaged_users"].sum() == len({u for u in offered if int(u) % 2 == 0})


def test_exports_read_consent_when_written(world):
    """A user who opts out after the day was published is left out of that day's files written from then on."""
    url = world.warehouse_url
    tasks.score_all_shards(world, DAY)
    tasks.publish_segments(world, DAY)
    lapsed = _users(url, "crm.lapsed_personalised")
    leaving = min(lapsed)
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE marts.user_features SET marketing_opt_in = false WHERE user_id = %s", (leaving,))
        export.export_all(conn, DAY, world)

    exported = _csv_users(world)
    assert exported[f"lapsed_personalised_{DAY.isoformat()}.csv"] == lapsed - {leaving}
    assert all(leaving not in users for users in exported.values())
