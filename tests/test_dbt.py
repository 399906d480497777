"""The dbt project on a real embedded Postgres, with a small hand-made raw data set whose right answers are known.

run_date 2025-03-01 (cutoff 2025-03-01 00:00 UTC). Users and their expected lifecycle segment:

  1 active   last order 2025-02-23 (6 days: the active boundary); a duplicate and an unknown-type row
  2 at_risk  last order 2025-02-20 (9 days); a negative-total checkout on 02-25 must not count
  3 lapsed   last order 2025-02-10 (19 days); a future-dated checkout on 03-03 must not count
  4 dormant  last order 2025-01-10 (50 days)
  5 churned  last order 2024-12-05 (86 days); app sessions before and after campaign c1, opens c1's message
  6 new      signed up 02-25, one order
  7 lapsed   never ordered, signed up 02-01 (28 days); views a merchant that opens after run_date
  8 new      never ordered, signed up 02-27
  9 at_risk  signed up 02-20 but two orders (not new), last 02-22 (7 days: first at_risk day)
 10 -        signs up after run_date: invisible

Users 4 (no) and 8 (no answer) did not opt in to marketing; the others did.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import stat
from pathlib import Path

import psycopg
import pytest
from conftest import new_database

from ml.settings import Settings
from ml.warehouse import marts, postgres
from ml.warehouse.dbt_runner import (
    DbtError,
    connection_params,
    dbt_vars,
    run_dbt,
    skip_dbt_stack_walks,
    write_profile,
)

RAW_SCHEMA = Path(__file__).resolve().parents[1] / "ml" / "warehouse" / "schema" / "raw.sql"
RUN_DATE = dt.date(2025, 3, 1)
EARLY_RUN_DATE = dt.date(2025, 2, 15)
UTC = dt.UTC


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


USERS = [
    # user_id, signup_at, platform, home_zone
    (1, "2024-10-01 08:00", "ios", "West Bay"),
    (2, "2024-10-01 08:00", "android", "Al Sadd"),
    (3, "2024-10-01 08:00", "ios", "Lusail"),
    (4, "2024-09-01 08:00", "web", "Al Sadd"),
    (5, "2024-09-01 08:00", "android", "West Bay"),
    (6, "2025-02-25 08:00", "ios", "Lusail"),
    (7, "2025-02-01 08:00", "android", "West Bay"),
    (8, "2025-02-27 08:00", "ios", "Al Sadd"),
    (9, "2025-02-20 08:00", "web", "Lusail"),
    (10, "2025-03-05 08:00", "ios", "West Bay"),
]
MARKETING_OPT_IN = {4: False, 8: None}  # everyone else True

MERCHANTS = [
    # merchant_id, name, category, zone, price_level, opened_at
    (1, "Burger Hub", "burgers", "West Bay", 2, "2024-01-01 00:00"),
    (2, "Sushi Go", "sushi", "Al Sadd", 3, "2024-01-01 00:00"),
    (3, "Late Cafe", "coffee", "Lusail", 1, "2025-03-10 00:00"),  # opens after run_date
]

# event_id, user_id, event_type, event_time (UTC), merchant_id, order_total, properties, loaded_at
EVENTS = [
    # user 1: active (last order 6 days before run_date), a re-sent duplicate, an unknown event type
    ("e1a", 1, "checkout_completed", "2025-02-23 12:00", 1, 50, None, "2025-02-24 00:00"),
    ("e1b", 1, "checkout_completed", "2025-02-10 12:00", 2, 50, None, "2025-02-11 00:00"),
    ("e1b-dup", 1, "checkout_completed", "2025-02-10 12:00", 2, 50, None, "2025-02-12 00:00"),
    ("e1v", 1, "merchant_page_viewed", "2025-02-22 11:00", 1, None, None, "2025-02-23 00:00"),
    ("e1x", 1, "page_scrolled", "2025-02-24 10:00", None, None, None, "2025-02-25 00:00"),
    # user 2: at_risk; a negative-total checkout would make them active if it counted
    ("e2a", 2, "checkout_completed", "2025-02-01 12:00", 2, 40, None, "2025-02-02 00:00"),
    ("e2b", 2, "checkout_completed", "2025-02-20 09:00", 1, 40, None, "2025-02-21 00:00"),
    ("e2neg", 2, "checkout_completed", "2025-02-25 12:00", 1, -5, None, "2025-02-26 00:00"),
    # user 3: lapsed; reactivated by campaign c1 and redeemed it; a future-dated checkout
    ("e3a", 3, "checkout_completed", "2025-01-20 12:00", 2, 30, None, "2025-01-21 00:00"),
    ("e3b", 3, "checkout_completed", "2025-01-25 12:00", 2, 35, None, "2025-01-26 00:00"),
    ("e3c", 3, "checkout_completed", "2025-02-10 18:00", 1, 60, None, "2025-02-11 00:00"),
    ("e3r", 3, "reward_redeemed", "2025-02-10 18:05", None, None, {"campaign_id": "c1"}, "2025-02-11 00:00"),
    ("e3future", 3, "checkout_completed", "2025-03-03 12:00", 1, 20, None, "2025-03-04 00:00"),
    # user 4: dormant
    ("e4a", 4, "checkout_completed", "2025-01-10 12:00", 2, 80, None, "2025-01-11 00:00"),
    # user 5: churned; redeems some other campaign
    ("e5a", 5, "checkout_completed", "2024-12-05 12:00", 1, 25, None, "2024-12-06 00:00"),
    ("e5r", 5, "reward_redeemed", "2025-02-07 12:00", None, None, {"campaign_id": "c-other"}, "2025-02-08 00:00"),
    # ... and opens the app 11 days before c1, opens c1's message, and opens the app again later
    ("e5o1", 5, "app_opened", "2025-01-25 12:00", None, None, None, "2025-01-26 00:00"),
    ("e5c", 5, "campaign_opened", "2025-02-05 15:00", None, None, {"campaign_id": "c1"}, "2025-02-06 00:00"),
    ("e5o2", 5, "app_opened", "2025-02-20 12:00", None, None, None, "2025-02-21 00:00"),
    # user 6: new with one order
    ("e6a", 6, "checkout_completed", "2025-02-26 12:00", 1, 45, None, "2025-02-27 00:00"),
    # user 7: never ordered; a view of a merchant that is not open yet (unknown_merchant)
    ("e7o", 7, "app_opened", "2025-02-10 12:00", None, None, None, "2025-02-11 00:00"),
    ("e7v", 7, "merchant_page_viewed", "2025-02-20 12:00", 3, None, None, "2025-02-21 00:00"),
    # user 9: two orders right after sign-up
    ("e9a", 9, "checkout_completed", "2025-02-21 12:00", 2, 20, None, "2025-02-22 00:00"),
    ("e9b", 9, "checkout_completed", "2025-02-22 12:00", 2, 22, None, "2025-02-23 00:00"),
    # user 10 signs up after run_date; user 99 does not exist
    ("e10a", 10, "app_opened", "2025-03-06 12:00", None, None, None, "2025-03-07 00:00"),
    ("e99", 99, "app_opened", "2025-02-15 12:00", None, None, None, "2025-02-16 00:00"),
]

EXPOSURES = [
    # campaign_id, user_id, sent_at, event_type, reward_size, assignment
    ("c1", 3, "2025-02-05 10:00", "free_delivery", 10, "treatment"),
    ("c1", 4, "2025-02-05 10:00", "none", 0, "holdout"),
    ("c1", 5, "2025-02-05 10:00", "percent_discount", 15, "treatment"),
    ("c2", 2, "2025-02-20 10:00", "cashback", 10, "treatment"),  # window still open on run_date
    ("c3", 1, "2025-03-02 10:00", "double_points", 5, "treatment"),  # sent after run_date
]

EXPECTED_SEGMENTS = {
    "1": "active",
    "2": "at_risk",
    "3": "lapsed",
    "4": "dormant",
    "5": "churned",
    "6": "new",
    "7": "lapsed",
    "8": "new",
    "9": "at_risk",
}

EXPECTED_EARLY_SEGMENTS = {  # as of 2025-02-15: users 6, 8, 9 have not signed up yet
    "1": "active",  # 02-10 order, 5 days
    "2": "lapsed",  # 02-01 order, 14 days (the 02-20 one is in the future)
    "3": "active",  # 02-10 order, 5 days
    "4": "dormant",  # 36 days
    "5": "churned",  # 72 days
    "7": "new",  # signed up 14 days before, never ordered
}


# --------------------------------------------------------------------------------------------
# helpers


def load_raw(url: str, events=EVENTS, exposures=EXPOSURES) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_SCHEMA.read_text())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw.users (user_id, signup_at, platform, home_zone, marketing_opt_in, source_file)"
                " VALUES (%s, %s, %s, %s, %s, 'test')",
                [(u, ts(s), p, z, MARKETING_OPT_IN.get(u, True)) for u, s, p, z in USERS],
            )
            cur.executemany(
                "INSERT INTO raw.merchants (merchant_id, merchant_name, category, zone, lat, lng, price_level, opened_at, source_file)"
                " VALUES (%s, %s, %s, %s, 25.3, 51.5, %s, %s, 'test')",
                [(m, n, c, z, p, ts(o)) for m, n, c, z, p, o in MERCHANTS],
            )
            cur.executemany(
                "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, merchant_name,"
                " order_total, platform, zone, properties, source_file, loaded_at)"
                " VALUES (%s, %s, %s, %s, %s, NULL, %s, 'ios', 'West Bay', %s, 'test', %s)",
                [
                    (e, u, t, ts(at), m, total, None if props is None else json.dumps(props), ts(loaded))
                    for e, u, t, at, m, total, props, loaded in events
                ],
            )
            cur.executemany(
                "INSERT INTO raw.campaign_exposures (campaign_id, user_id, sent_at, event_type, reward_size, assignment, source_file)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'test')",
                [(c, u, ts(s), t, r, a) for c, u, s, t, r, a in exposures],
            )


def query(url: str, sql: str, params=None) -> list[dict]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def by_key(rows: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


def assert_all_passed(result) -> None:
    bad = {s: n for s, n in result.counts.items() if s not in {"success", "pass"}}
    assert not bad, (
        f"unexpected dbt statuses {bad}: {[(n.name, n.status, n.message) for n in result.nodes if n.status not in ('success', 'pass')]}"
    )
    assert result.counts.get("pass", 0) > 40  # the data tests really ran
    assert result.counts.get("success", 0) >= 10  # and so did the models


# --------------------------------------------------------------------------------------------
# one build of the hand-made data set, shared by the assertions below


@pytest.fixture(scope="module")
def built(postgres_server_url, tmp_path_factory):
    url = new_database(postgres_server_url, "test_dbt")
    settings = Settings.from_env(environ={}, home=tmp_path_factory.mktemp("dbt_home"), warehouse_url=url)
    load_raw(url)
    result = run_dbt(settings, url, ["build"], RUN_DATE)
    print(f"\ndbt build of the hand-made data set: {result.elapsed_seconds:.1f}s, {result.counts}")
    return settings, url, result


def test_build_passes_every_test(built):
    settings, url, result = built
    assert result.success
    assert_all_passed(result)
    names = {n.name for n in result.nodes}
    for model in [
        "stg_events",
        "stg_events_rejected",
        "int_orders",
        "int_user_merchant_interactions",
        "user_features",
        "merchant_features",
        "user_segments",
        "campaign_history",
        "orders",
        "user_merchant_orders",
        "reward_redemptions",
    ]:
        assert model in names
    # artifacts and logs stay under settings.home, never in the repo
    assert (Path(settings.home) / "dbt" / "target" / "manifest.json").exists()
    assert (Path(settings.home) / "dbt" / "logs" / "dbt.log").exists()


def test_schemas_are_used_verbatim(built):
    _, url, _ = built
    rows = query(
        url,
        "SELECT table_schema, table_name, table_type FROM information_schema.tables"
        " WHERE table_schema IN ('staging', 'intermediate', 'marts')",
    )
    found = {(r["table_schema"], r["table_name"]): r["table_type"] for r in rows}
    assert found[("staging", "stg_events")] == "VIEW"
    assert found[("staging", "stg_users")] == "VIEW"
    assert found[("staging", "stg_events_rejected")] == "VIEW"
    assert found[("intermediate", "int_orders")] == "BASE TABLE"
    for mart in [
        "user_features",
        "merchant_features",
        "user_segments",
        "campaign_history",
        "orders",
        "user_merchant_orders",
        "reward_redemptions",
    ]:
        assert found[("marts", mart)] == "BASE TABLE"


def test_user_and_merchant_ids_are_text_in_every_layer(built):
    _, url, _ = built
    id_columns = query(
        url,
        "SELECT table_schema || '.' || table_name || '.' || column_name AS id_column, data_type"
        " FROM information_schema.columns WHERE table_schema IN ('staging', 'intermediate', 'marts')"
        " AND column_name ~ '(^|_)(user|merchant)_id$'",
    )
    found = {r["id_column"]: r["data_type"] for r in id_columns}
    assert {"staging.stg_users.user_id", "marts.orders.merchant_id", "marts.user_segments.user_id"} <= set(found)
    assert set(found.values()) == {"text"}, found


def test_lifecycle_segments(built):
    _, url, _ = built
    rows = query(url, "SELECT * FROM marts.user_segments")
    assert {r["user_id"]: r["lifecycle_segment"] for r in rows} == EXPECTED_SEGMENTS
    seg = by_key(rows, "user_id")
    assert all(r["run_date"] == RUN_DATE for r in rows)
    assert seg["1"]["days_since_last_order"] == 6
    assert seg["2"]["days_since_last_order"] == 9
    assert seg["9"]["days_since_last_order"] == 7
    assert seg["7"]["days_since_last_order"] is None and seg["7"]["days_inactive"] == 28
    for r in rows:
        assert r["value_tier"] in {"high", "medium", "low"}
        assert 3 <= r["rfm_score"] <= 15
    assert seg["8"]["value_tier"] == "low" and seg["8"]["rfm_score"] == 3  # never ordered


def test_staging_drops_duplicates_and_bad_rows_with_reasons(built):
    _, url, _ = built
    clean = {r["event_id"] for r in query(url, "SELECT event_id FROM staging.stg_events")}
    rejected = {
        r["event_id"]: r["reason"] for r in query(url, "SELECT event_id, reason FROM staging.stg_events_rejected")
    }
    assert rejected == {
        "e1b-dup": "duplicate_event",
        "e1x": "unknown_event_type",
        "e2neg": "negative_order_total",
        "e3future": "after_run_date",
        "e7v": "unknown_merchant",
        "e10a": "after_run_date",
        "e99": "unknown_user",
    }
    assert "e1b" in clean  # the first copy is kept
    assert clean.isdisjoint(rejected)
    assert clean | set(rejected) == {e[0] for e in EVENTS}  # nothing disappears silently
    max_time = query(url, "SELECT max(event_time) AS m FROM staging.stg_events")[0]["m"]
    assert max_time < dt.datetime(2025, 3, 1, tzinfo=UTC)
    users = {r["user_id"] for r in query(url, "SELECT user_id FROM staging.stg_users")}
    assert users == set(EXPECTED_SEGMENTS)  # user 10 signed up after run_date
    merchants = {r["merchant_id"] for r in query(url, "SELECT merchant_id FROM staging.stg_merchants")}
    assert merchants == {"1", "2"}


def test_int_orders(built):
    _, url, _ = built
    orders = by_key(query(url, "SELECT * FROM intermediate.int_orders"), "order_id")
    assert set(orders) == {"e1a", "e1b", "e2a", "e2b", "e3a", "e3b", "e3c", "e4a", "e5a", "e6a", "e9a", "e9b"}
    assert orders["e3c"]["category"] == "burgers" and orders["e3a"]["category"] == "sushi"
    assert orders["e3c"]["local_hour"] == 21 and orders["e3c"]["day_part"] == "dinner"  # 18:00 UTC = 21:00 Doha
    assert orders["e3b"]["is_weekend"] and not orders["e3a"]["is_weekend"]  # Saturday vs Monday


def test_orders_mart_holds_each_valid_checkout_once(built):
    _, url, _ = built
    orders = by_key(query(url, "SELECT * FROM marts.orders"), "order_id")
    # the same orders as int_orders: staging's duplicates and invalid checkouts are not there
    assert set(orders) == {"e1a", "e1b", "e2a", "e2b", "e3a", "e3b", "e3c", "e4a", "e5a", "e6a", "e9a", "e9b"}
    assert orders["e3c"]["category"] == "burgers"
    rejected = {r["event_id"] for r in query(url, "SELECT event_id FROM staging.stg_events_rejected")}
    assert not rejected & set(orders)


def test_user_merchant_orders_are_the_interactions_with_orders(built):
    _, url, _ = built
    ordered = query(
        url, "SELECT user_id, merchant_id, order_count, order_value, category FROM marts.user_merchant_orders"
    )
    interactions = query(
        url,
        "SELECT i.user_id, i.merchant_id, i.order_count, i.order_value, m.category"
        " FROM intermediate.int_user_merchant_interactions i JOIN staging.stg_merchants m USING (merchant_id)"
        " WHERE i.order_count > 0",  # page views alone do not make a pair
    )
    assert ordered and sorted(ordered, key=str) == sorted(interactions, key=str)


def test_interactions_strength(built):
    _, url, _ = built
    rows = by_key(query(url, "SELECT * FROM intermediate.int_user_merchant_interactions"), "user_id", "merchant_id")
    assert set(rows) == {
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
        ("3", "1"),
        ("3", "2"),
        ("4", "2"),
        ("5", "1"),
        ("6", "1"),
        ("9", "2"),
    }
    recent, older = rows[("1", "1")], rows[("1", "2")]
    assert recent["order_count"] == 1 and older["order_count"] == 1  # duplicate removed
    assert recent["view_count"] == 1 and recent["last_view_at"] == ts("2025-02-22 11:00")
    assert recent["days_since_last_order"] == 6 and older["days_since_last_order"] == 19
    assert recent["strength"] > older["strength"] > 0  # same basket, more recent -> stronger
    # the formula, for a pair with two orders and no views
    cutoff = dt.datetime(2025, 3, 1, tzinfo=UTC)
    expected = sum(
        0.5 ** (((cutoff - ts(at)).total_seconds() / 86400) / 14) * (1 + math.log(1 + total))
        for at, total in [("2025-01-20 12:00", 30), ("2025-01-25 12:00", 35)]
    )
    assert rows[("3", "2")]["strength"] == pytest.approx(expected, rel=1e-6)
    assert rows[("3", "2")]["order_value"] == 65
    # a view adds a weaker signal than an order
    assert recent["view_signal"] > 0 and recent["strength"] == pytest.approx(
        recent["order_signal"] + 0.25 * recent["view_signal"]
    )


def test_user_features(built):
    _, url, _ = built
    f = by_key(query(url, "SELECT * FROM marts.user_features"), "user_id")
    assert set(f) == set(EXPECTED_SEGMENTS)
    u1 = f["1"]
    assert (u1["order_count"], float(u1["order_value"]), u1["distinct_merchants"]) == (2, 100.0, 2)
    assert (u1["orders_last_7d"], u1["orders_prev_7d"], float(u1["order_trend"])) == (1, 0, 1.0)
    assert u1["view_count_30d"] == 1 and u1["days_since_last_order"] == 6
    u3 = f["3"]
    assert u3["favourite_category"] == "sushi" and float(u3["favourite_category_share"]) == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert float(u3["afternoon_order_share"]) == pytest.approx(2 / 3, abs=1e-4)  # 12:00 UTC = 15:00 Doha
    assert float(u3["dinner_order_share"]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(u3["weekend_order_share"]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(u3["avg_order_value"]) == pytest.approx(125 / 3, abs=0.01)
    assert float(u3["avg_price_level"]) == pytest.approx(8 / 3, abs=1e-4)  # merchants 2, 2 and 1 (levels 3, 3, 2)
    # engagement as of run_date: sessions in [02-15, 03-01), offers received (holdouts get none), opens, redemptions
    u5 = f["5"]
    assert (u5["sessions_14d"], u5["days_since_session"]) == (1, 9)
    assert (u5["offers_received"], u5["campaign_opens"], u5["offers_redeemed"]) == (1, 1, 1)
    assert (f["3"]["offers_received"], f["3"]["offers_redeemed"], f["4"]["offers_received"]) == (1, 1, 0)
    assert (f["7"]["sessions_14d"], f["7"]["days_since_session"]) == (0, 19)  # the 02-10 session is older than 14 days
    assert f["1"]["offers_received"] == 0  # c3 is sent after run_date
    u8 = f["8"]
    assert u8["sessions_14d"] == 0 and u8["days_since_session"] is None and u8["avg_price_level"] is None
    assert u8["order_count"] == 0 and u8["days_since_last_order"] is None and u8["avg_order_value"] is None
    assert (u8["recency_score"], u8["frequency_score"], u8["monetary_score"]) == (1, 1, 1)
    # no answer is no consent
    assert {u: row["marketing_opt_in"] for u, row in f.items()} == {u: u not in ("4", "8") for u in EXPECTED_SEGMENTS}
    assert f["6"]["tenure_days"] == 4
    # 1-5 quintile scores follow the last order date among the 7 users who ordered (5 = most recent)
    ordered = sorted((r for r in f.values() if r["order_count"]), key=lambda r: r["last_order_at"])
    assert [r["recency_score"] for r in ordered] == [1, 1, 2, 3, 4, 5, 5]


def test_merchant_features(built):
    _, url, _ = built
    m = by_key(query(url, "SELECT * FROM marts.merchant_features"), "merchant_id")
    assert set(m) == {"1", "2"}  # merchant 3 opens after run_date
    # merchant 1: orders e1a, e2b, e3c, e5a, e6a (5 customers, none repeat); merchant 2: e1b, e2a, e3a, e3b, e4a, e9a, e9b
    assert (m["1"]["order_count"], m["1"]["distinct_customers"], float(m["1"]["repeat_customer_share"])) == (5, 5, 0.0)
    assert (m["2"]["order_count"], m["2"]["distinct_customers"]) == (7, 5)
    assert float(m["2"]["repeat_customer_share"]) == pytest.approx(2 / 5)
    assert m["2"]["popularity_rank"] == 1 and m["1"]["popularity_rank"] == 2
    assert m["1"]["orders_last_7d"] == 2  # e1a (02-23), e6a (02-26)
    assert m["1"]["category"] == "burgers" and m["1"]["age_days"] == (RUN_DATE - dt.date(2024, 1, 1)).days


def test_campaign_history(built):
    _, url, _ = built
    rows = by_key(query(url, "SELECT * FROM marts.campaign_history"), "campaign_id", "user_id")
    assert set(rows) == {("c1", "3"), ("c1", "4"), ("c1", "5"), ("c2", "2")}  # c3 is sent after run_date

    u3 = rows[("c1", "3")]  # reactivated by the campaign and redeemed it
    assert (u3["order_count_before"], float(u3["order_value_before"]), float(u3["avg_order_value_before"])) == (
        2,
        65.0,
        32.5,
    )
    assert u3["recency_days"] == 11 and u3["tenure_days"] == 127
    assert float(u3["avg_price_level_before"]) == 3.0  # the 02-10 order at a level-2 merchant comes after sending
    assert u3["favourite_category_before"] == "sushi" and u3["platform"] == "ios" and u3["home_zone"] == "Lusail"
    assert u3["reactivated"] and u3["orders_in_window"] == 1 and float(u3["order_value_in_window"]) == 60.0
    assert u3["redeemed"] and u3["outcome_observed"] and not u3["is_holdout"]

    u4 = rows[("c1", "4")]  # holdout, stayed away
    assert u4["is_holdout"] and u4["assignment"] == "holdout" and u4["event_type"] == "none"
    assert u4["recency_days"] == 26 and u4["order_count_before"] == 1
    assert not u4["reactivated"] and u4["orders_in_window"] == 0 and not u4["redeemed"]

    u5 = rows[("c1", "5")]  # redeemed another campaign only
    assert u5["recency_days"] == 62 and not u5["reactivated"] and not u5["redeemed"]
    # engagement strictly before sent_at: the 01-25 session only; c1 itself, its opening and the later
    # session and redemption are not features of this exposure
    assert (u5["sessions_14d"], u5["days_since_session"]) == (1, 11)
    assert (u5["offers_received"], u5["campaign_opens"], u5["offers_redeemed"]) == (0, 0, 0)

    u2 = rows[("c2", "2")]  # the 09:00 order is before the 10:00 send: a feature, not an outcome
    assert u2["order_count_before"] == 2 and u2["recency_days"] == 0
    assert not u2["reactivated"] and not u2["outcome_observed"]  # window ends 03-06, after run_date


def test_the_offer_model_learns_from_observed_exposures_sent_in_its_training_window(built):
    _, url, _ = built
    with psycopg.connect(url) as conn:
        # c1 (sent 2025-02-05) is observed; c2's window is still open on run_date, so it is never training data
        history = marts.load_history(conn, dt.date(2025, 2, 5))
        assert set(zip(history["campaign_id"], history["user_id"])) == {("c1", "3"), ("c1", "4"), ("c1", "5")}
        assert marts.load_history(conn, dt.date(2025, 2, 6)).empty


def test_no_look_ahead_with_an_earlier_run_date(settings):
    url = settings.warehouse_url
    load_raw(url)
    result = run_dbt(settings, url, ["build"], EARLY_RUN_DATE)
    assert_all_passed(result)

    segments = {r["user_id"]: r["lifecycle_segment"] for r in query(url, "SELECT * FROM marts.user_segments")}
    assert segments == EXPECTED_EARLY_SEGMENTS
    assert {r["run_date"] for r in query(url, "SELECT run_date FROM marts.user_segments")} == {EARLY_RUN_DATE}

    cutoff = dt.datetime(2025, 2, 15, tzinfo=UTC)
    assert query(url, "SELECT max(event_time) AS m FROM staging.stg_events")[0]["m"] < cutoff
    assert query(url, "SELECT max(ordered_at) AS m FROM intermediate.int_orders")[0]["m"] < cutoff
    later = {
        r["event_id"]
        for r in query(url, "SELECT event_id FROM staging.stg_events_rejected WHERE reason = 'after_run_date'")
    }
    assert later == {e[0] for e in EVENTS if ts(e[3]) >= cutoff}

    f = by_key(query(url, "SELECT * FROM marts.user_features"), "user_id")
    assert f["1"]["order_count"] == 1 and f["2"]["order_count"] == 1  # 02-23 / 02-20 orders not visible yet
    assert f["1"]["view_count_30d"] == 0
    m = by_key(query(url, "SELECT * FROM marts.merchant_features"), "merchant_id")
    assert m["1"]["order_count"] == 2  # e3c (02-10), e5a (12-05)

    rows = by_key(query(url, "SELECT * FROM marts.campaign_history"), "campaign_id", "user_id")
    assert set(rows) == {("c1", "3"), ("c1", "4"), ("c1", "5")}  # c2 is sent 02-20
    assert not any(r["outcome_observed"] for r in rows.values())  # windows end 02-19 > 02-15
    assert rows[("c1", "3")]["reactivated"]


def test_failing_dbt_test_raises_dbt_error_naming_it(settings):
    url = settings.warehouse_url
    load_raw(url, events=EVENTS[:3], exposures=[("c9", 1, "2025-02-05 10:00", "cashback", 10, "bogus")])
    with pytest.raises(DbtError) as info:
        run_dbt(settings, url, ["build"], RUN_DATE)
    err = info.value
    failing = {n.name for n in err.failures}
    assert any(n.startswith("accepted_values_stg_campaign_exposures_assignment") for n in failing), failing
    assert "accepted_values_stg_campaign_exposures_assignment" in str(err)
    assert all(n.status == "fail" for n in err.failures)
    # the rest of the project still built: only campaign_history (downstream of the failing test) is skipped
    assert err.result is not None and err.result.counts.get("skipped", 0) >= 1
    assert "campaign_history" in {n.name for n in err.result.by_status("skipped")}


def test_run_dbt_with_select_and_test_command(built):
    settings, url, _ = built
    result = run_dbt(settings, url, ["test"], RUN_DATE, select="user_segments")
    assert result.counts.get("pass", 0) >= 5 and set(result.counts) == {"pass"}
    result = run_dbt(settings, url, ["run"], RUN_DATE, select="user_features user_segments")
    assert result.counts == {"success": 2}


# --------------------------------------------------------------------------------------------
# profile and vars (no database needed)


def test_write_profile_for_a_unix_socket_url(tmp_path):
    settings = Settings.from_env(environ={}, home=tmp_path)
    directory = write_profile(settings, "postgresql://postgres:@/test_1_0?host=/tmp/some dir/sock")
    assert directory == settings.dbt_profiles_dir
    path = directory / "profiles.yml"
    profile = json.loads("".join(line for line in path.read_text().splitlines() if not line.startswith("#")))
    target = profile["rekindle"]["outputs"]["dev"]
    assert profile["rekindle"]["target"] == "dev"
    assert target == {
        **target,
        "type": "postgres",
        "host": "/tmp/some dir/sock",
        "port": 5432,
        "user": "postgres",
        "password": "",
        "dbname": "test_1_0",
        "threads": 2,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_connection_params_of_a_tcp_url():
    params = connection_params("postgresql://etl%40corp:s%3Acret@db.example.com:6543/warehouse?sslmode=require")
    assert params == {
        "host": "db.example.com",
        "port": 6543,
        "user": "etl@corp",
        "password": "s:cret",
        "dbname": "warehouse",
        "sslmode": "require",
    }


def test_dbt_vars_come_from_settings(tmp_path):
    settings = Settings.from_env(
        environ={"REKINDLE_ACTIVE_MAX_DAYS": "3", "REKINDLE_REACTIVATION_WINDOW_DAYS": "7"}, home=tmp_path
    )
    v = dbt_vars(settings, dt.date(2025, 3, 1))
    assert v["run_date"] == "2025-03-01"
    assert v["active_max_days"] == 3 and v["reactivation_window_days"] == 7
    assert (v["new_user_days"], v["at_risk_max_days"], v["lapsed_max_days"], v["dormant_max_days"]) == (14, 13, 29, 59)
    assert v["recency_half_life_days"] == 14


def test_profile_keeps_jinja_like_passwords_literal(tmp_path):
    from dbt.clients.jinja import get_rendered

    settings = Settings.from_env(environ={}, home=tmp_path)
    write_profile(settings, "postgresql://etl:p%7B%7Bw%7D%7D@db:5432/w")
    text = (settings.dbt_profiles_dir / "profiles.yml").read_text()
    raw = json.loads("".join(line for line in text.splitlines() if not line.startswith("#")))
    assert get_rendered(raw["rekindle"]["outputs"]["dev"]["password"], {}) == "p{{w}}"


def _flag_source_named_here() -> str:
    from dbt_common.behavior_flags import BehaviorFlagRendered

    flag = {"name": "rekindle_test_flag", "default": False, "description": "a flag declared by this test"}
    return BehaviorFlagRendered(flag, user_overrides={})._behavior_change_event.flag_source


def test_behaviour_flags_name_their_module_without_walking_the_stack(monkeypatch):
    """Every dbt invocation registers an adapter with ~30 behaviour flags; dbt-common's default source lookup calls
    ``inspect.stack()`` for each, which under Airflow or pytest took most of a model task's time."""
    import inspect

    skip_dbt_stack_walks()
    monkeypatch.setattr(inspect, "stack", lambda *args, **kwargs: pytest.fail("inspect.stack() was called"))

    assert _flag_source_named_here() == __name__


# --------------------------------------------------------------------------------------------
# incremental staging: each build re-classifies only the event days that can have changed

STAGING = "stg_users stg_merchants stg_events_classified stg_events stg_events_rejected"


def classified(url: str) -> dict[str, tuple]:
    """event_id -> (reason, the row version's transaction id): a row a build did not rewrite keeps its xmin."""
    rows = query(url, "SELECT event_id, reason, xmin::text AS version FROM staging.stg_events_classified")
    return {r["event_id"]: (r["reason"], r["version"]) for r in rows}


def reasons(rows: dict[str, tuple]) -> dict[str, str | None]:
    return {event_id: reason for event_id, (reason, _) in rows.items()}


def rebuild_in_full(settings: Settings, run_date: dt.date) -> dict[str, str | None]:
    assert_staging_built(run_dbt(settings, settings.warehouse_url, ["run", "--full-refresh"], run_date, STAGING))
    return reasons(classified(settings.warehouse_url))


def assert_staging_built(result) -> None:
    assert result.success and result.counts == {"success": 5}, result.counts


@pytest.fixture
def own_server(tmp_path):
    """Settings on an embedded server of the test's own: transaction ids are server-wide, and a writing transaction
    left open by another test would hold back the snapshot xmin a build records (making it re-read more days)."""
    embedded = Settings.from_env(environ={}, home=tmp_path / "home")
    yield dataclasses.replace(embedded, warehouse_url=postgres.start(embedded))
    postgres.stop(embedded)


def test_incremental_staging_reclassifies_only_the_days_that_changed_and_matches_a_full_rebuild(own_server):
    settings = own_server
    url = settings.warehouse_url
    first_day = [e for e in EVENTS if e[0] not in {"e6a", "e9a", "e9b"}]
    load_raw(url, events=first_day)
    assert_staging_built(run_dbt(settings, url, ["run"], RUN_DATE, STAGING))
    before = classified(url)
    assert before["e99"][0] == "unknown_user" and before["e3future"][0] == "after_run_date"

    # The next day brings: new orders (02-21, 02-22, 02-26), a copy of 02-10's order re-sent under another id,
    # and user 99's sign-up, which makes their 02-15 event valid.
    late = [
        ("e1b-late", 1, "checkout_completed", "2025-02-10 12:00", 2, 50, None),
        *[e[:7] for e in EVENTS if e[0] in {"e6a", "e9a", "e9b"}],
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO raw.users (user_id, signup_at, platform, home_zone, marketing_opt_in, source_file)"
            " VALUES ('99', '2025-01-01', 'ios', 'Lusail', true, 'test')"
        )
        conn.cursor().executemany(
            "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total,"
            " properties, source_file) VALUES (%s, %s, %s, %s, %s, %s, %s, 'test')",  # loaded_at: now()
            [(e, u, t, ts(at), m, total, props) for e, u, t, at, m, total, props in late],
        )
    assert_staging_built(run_dbt(settings, url, ["run"], RUN_DATE + dt.timedelta(days=1), STAGING))
    after = classified(url)
    assert after["e1b-late"][0] == "duplicate_event" and after["e1b"][0] is None
    assert after["e99"][0] is None and after["e9a"][0] is None
    # The days to re-classify: those with new rows, with unknown_user (02-15) or unknown_merchant (02-20) rows,
    # and those on or after the first build's run date (after_run_date).
    stale_days = {"02-10", "02-21", "02-22", "02-26", "02-15", "02-20", "03-03", "03-06"}
    day = {e[0]: e[3][5:10] for e in EVENTS}
    untouched = {e for e in before if day[e] not in stale_days}
    rewritten = sorted(e for e in untouched if after[e][1] != before[e][1])
    assert untouched and not rewritten, f"rows of unchanged days were rewritten: {rewritten}"
    kept = sorted(e for e in before if day[e] in stale_days and after[e][1] == before[e][1])
    assert not kept, f"rows of stale days were not re-classified: {kept}"
    assert reasons(after) == rebuild_in_full(settings, RUN_DATE + dt.timedelta(days=1))

    # A backfill of an earlier day moves the cutoff back: what is on or after it becomes after_run_date again.
    assert_staging_built(run_dbt(settings, url, ["run"], EARLY_RUN_DATE, STAGING))
    backfilled = reasons(classified(url))
    assert backfilled["e9a"] == "after_run_date"
    assert backfilled == rebuild_in_full(settings, EARLY_RUN_DATE)

    # Another fingerprint (the model or the contract's rules changed): every day is classified again.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("COMMENT ON TABLE staging.stg_events_classified IS 'rekindle:another version'")
    versions = classified(url)
    assert_staging_built(run_dbt(settings, url, ["run"], EARLY_RUN_DATE, STAGING))
    again = classified(url)
    assert reasons(again) == reasons(versions)
    assert all(again[e][1] != versions[e][1] for e in again)

    # The data tests on staging's events check the rows the latest build wrote (`__latest_build_only__`), so a
    # bad row left by an earlier build is not read again, and one the latest build wrote still fails the build.
    staged = (
        "UPDATE staging.stg_events_classified SET order_total = -1, classified_through_xid = {} WHERE event_id = 'e2a'"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(staged.format("classified_through_xid - 1"))
    assert run_dbt(settings, url, ["test"], EARLY_RUN_DATE, "stg_events").success
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(staged.format("(SELECT max(classified_through_xid) FROM staging.stg_events_classified)"))
    with pytest.raises(DbtError, match="not_negative_stg_events_order_total"):
        run_dbt(settings, url, ["test"], EARLY_RUN_DATE, "stg_events")


def test_every_table_dbt_builds_has_planner_statistics_at_once(built):
    _, url, _ = built
    tables = query(
        url,
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN ('staging', 'intermediate', 'marts') AND table_type = 'BASE TABLE'",
    )
    assert {("staging", "stg_events_classified"), ("marts", "user_features")} <= {
        (t["table_schema"], t["table_name"]) for t in tables
    }
    # pg_stats has a table's rows only once ANALYZE ran (autovacuum's can lag by minutes; the post-hook's is in
    # the build itself).
    analysed = query(
        url,
        "SELECT DISTINCT schemaname, tablename FROM pg_stats WHERE schemaname IN ('staging', 'intermediate', 'marts')",
    )
    missing = {(t["table_schema"], t["table_name"]) for t in tables} - {
        (a["schemaname"], a["tablename"]) for a in analysed
    }
    assert not missing
