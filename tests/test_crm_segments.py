"""CRM segment tables on a hand-made marketplace whose members are known, on the real embedded Postgres.

Each user's raw scores are chosen so the normalised score (a fraction of the user's best) is a round
number; user 3 has popularity-sized scores and user 4 negative ones, as a LambdaRank model can give.
"""

from __future__ import annotations

import dataclasses
from datetime import date

import psycopg
import pytest
from psycopg.rows import dict_row

from ml.crm import segments
from ml.recommend.modes import DISCOVERY, MODES, WINBACK

RUN_DATE = date(2026, 11, 1)
NEXT_DATE = date(2026, 11, 2)

# The columns ml/crm/segments.py reads, with the types dbt gives them (marts/user_features.sql,
# merchant_features.sql, user_merchant_orders.sql).
MARTS_SQL = """
CREATE SCHEMA marts;
CREATE TABLE marts.user_features (
    user_id text, platform text, home_zone text, tenure_days integer, order_count bigint,
    order_value numeric(14, 2), days_since_last_order integer, marketing_opt_in boolean NOT NULL DEFAULT true
);
CREATE TABLE marts.merchant_features (merchant_id text, merchant_name text, category text, zone text);
CREATE TABLE marts.user_merchant_orders (
    user_id text, merchant_id text, merchant_name text, category text, order_count bigint,
    order_value numeric(14, 2), last_order_at timestamptz
);
"""
MERCHANTS = [
    (10, "Pizza Place", "pizza", "west"),
    (11, "Pizza Two", "pizza", "east"),
    (20, "Sushi Bar", "sushi", "west"),
    (21, "Sushi Two", "sushi", "east"),
    (30, "Burger Joint", "burgers", "west"),
]
# user_id, platform, home_zone, tenure_days, order_count, order_value, days_since_last_order (all opted in to
# marketing; tests/test_marketing_opt_in.py has users who are not)
USERS = [
    (1, "ios", "west", 200, 5, 150, 20),  # lapsed; ordered pizza 10 (x4) and sushi 20 (x1)
    (2, "android", "east", 90, 3, 90, 2),  # active; ordered pizza 10 (x3), only viewed sushi 20
    (3, "web", "west", 3, 0, 0, None),  # never ordered
    (4, "ios", "east", 30, 1, 25, 14),  # exactly crm_lapsed_days; one order, at burgers 30
    (5, "web", "east", 60, 3, 60, 5),  # ordered pizza 10 (x3, less than user 2 spent); no recommendations
]
# user_id, merchant_id, order_count, order_value, last_order_at (user 2 only viewed sushi 20: no row)
ORDERED = [
    (1, 10, 4, 120, "2026-10-10"),
    (1, 20, 1, 30, "2026-10-12"),
    (2, 10, 3, 90, "2026-10-30"),
    (4, 30, 1, 25, "2026-10-18"),
    (5, 10, 3, 60, "2026-10-27"),
]
# user_id: [(merchant_id, raw score)] best first; the normalised scores are in the comments
RECOMMENDED = {
    1: [(20, 10.0), (11, 8.0), (21, 4.0), (30, 2.0)],  # 1, 0.8, 0.4, 0.2
    2: [(20, 5.0), (11, 4.0), (30, 2.5), (21, 1.0)],  # 1, 0.8, 0.5, 0.2
    3: [(10, 100.0), (20, 60.0), (30, 50.0), (11, 10.0)],  # 1, 0.6, 0.5, 0.1
    4: [(10, 1.0), (30, 0.5), (20, -0.5), (21, -1.0)],  # from -1 to 1: 1, 0.75, 0.25, 0
}
EXPECTED = {
    # not ordered there and normalised score above 0.5 (0.5 itself is not above)
    "high_affinity_prospects": {(1, 11), (2, 20), (2, 11), (3, 10), (3, 20), (4, 10)},
    # 14+ days since the last order (user 3 never ordered), top 2
    "lapsed_personalised": {(1, 20), (1, 11), (4, 10), (4, 30)},
    # users who ordered, best 2 recommendations in categories they never ordered
    "category_explorers": {(1, 30), (2, 20), (2, 30), (4, 10), (4, 20)},
    # two customers with the most orders per merchant; user 2 beats user 5 on money spent
    "merchant_superfans": {(1, 10), (2, 10), (1, 20), (4, 30)},
    # A = most-ordered merchant; B above the threshold in another category than A
    "cross_sell_targets": {(1, 20), (2, 20), (4, 10)},
    # fewer than 2 orders, top 2
    "new_user_onboarding": {(3, 10), (3, 20), (4, 10), (4, 30)},
}


@pytest.fixture
def crm_settings(settings):
    return dataclasses.replace(settings, crm_top_k=2, crm_superfans_per_merchant=2)


@pytest.fixture
def marketplace(warehouse_url) -> str:
    with psycopg.connect(warehouse_url) as conn:
        conn.execute(MARTS_SQL)
        segments.ensure_tables(conn)
        _insert(conn, "marts.merchant_features", MERCHANTS)
        _insert(conn, "marts.user_features", USERS)
        merchants = {merchant_id: (name, category) for merchant_id, name, category, _ in MERCHANTS}
        _insert(
            conn,
            "marts.user_merchant_orders",
            [(user, merchant, *merchants[merchant], *rest) for user, merchant, *rest in ORDERED],
        )
        _insert_recommendations(conn, RUN_DATE, RECOMMENDED)
    return warehouse_url


def _insert(conn: psycopg.Connection, table: str, rows: list[tuple]) -> None:
    placeholders = ", ".join(["%s"] * len(rows[0]))
    conn.cursor().executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)


def _insert_recommendations(
    conn: psycopg.Connection, run_date: date, recommended: dict, modes: tuple[str, ...] = tuple(MODES)
) -> None:
    names = {merchant_id: name for merchant_id, name, _, _ in MERCHANTS}
    _insert(
        conn,
        "crm.recommendations",
        [
            (run_date, user_id, mode, rank, merchant_id, names[merchant_id], score, None, "3")
            for mode in modes
            for user_id, merchants in recommended.items()
            for rank, (merchant_id, score) in enumerate(merchants, start=1)
        ],
    )


def _refresh(url: str, run_date: date, settings) -> dict[str, int]:
    with psycopg.connect(url) as conn, conn.transaction():
        return segments.refresh_segments(conn, run_date, settings)


def _rows(url: str, segment: str, run_date: date = RUN_DATE) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            f"SELECT * FROM crm.{segment} WHERE run_date = %s ORDER BY user_id, recommended_merchant_id", (run_date,)
        ).fetchall()


def _members(url: str, segment: str, run_date: date = RUN_DATE) -> set[tuple[str, str]]:
    return {(row["user_id"], row["recommended_merchant_id"]) for row in _rows(url, segment, run_date)}


def _text_ids(pairs: set[tuple[int, int]]) -> set[tuple[str, str]]:
    """(user, merchant) pairs of this world's integer ids as the warehouse holds them: their decimal text."""
    return {(str(user_id), str(merchant_id)) for user_id, merchant_id in pairs}


def test_each_segment_has_exactly_the_expected_members(marketplace, crm_settings):
    counts = _refresh(marketplace, RUN_DATE, crm_settings)

    assert {segment: _members(marketplace, segment) for segment in segments.SEGMENTS} == {
        segment: _text_ids(members) for segment, members in EXPECTED.items()
    }
    assert counts == {segment: len(members) for segment, members in EXPECTED.items()}


def test_each_segment_reads_its_own_mode(marketplace, crm_settings):
    """Win-back segments take the winback list (favourites included), the prospecting ones the discovery list."""
    with psycopg.connect(marketplace) as conn:
        conn.execute("DELETE FROM crm.recommendations WHERE mode = %s AND user_id = '1'", (WINBACK,))
        # User 1 (lapsed) gets their favourite pizza 10 first in winback; discovery keeps RECOMMENDED.
        _insert_recommendations(conn, RUN_DATE, {1: [(10, 9.0), (20, 6.0), (11, 3.0)]}, modes=(WINBACK,))
    _refresh(marketplace, RUN_DATE, crm_settings)

    by_mode = {name: segment.mode for name, segment in segments.SEGMENTS.items()}
    assert by_mode == {
        "high_affinity_prospects": DISCOVERY,
        "lapsed_personalised": WINBACK,
        "category_explorers": DISCOVERY,
        "merchant_superfans": None,
        "cross_sell_targets": DISCOVERY,
        "new_user_onboarding": WINBACK,
    }
    user_1 = {segment: {m for u, m in _members(marketplace, segment) if str(u) == "1"} for segment in by_mode}
    assert {str(m) for m in user_1["lapsed_personalised"]} == {"10", "20"}
    assert {str(m) for m in user_1["high_affinity_prospects"]} == {"11"}
    assert {str(m) for m in user_1["category_explorers"]} == {"30"}


def test_rows_carry_the_export_fields_and_the_normalised_score(marketplace, crm_settings):
    _refresh(marketplace, RUN_DATE, crm_settings)

    prospect = next(r for r in _rows(marketplace, "high_affinity_prospects") if r["user_id"] == "1")
    assert prospect == {
        "run_date": RUN_DATE,
        "segment": "high_affinity_prospects",
        "user_id": "1",
        "recommended_merchant_id": "11",
        "recommended_merchant_name": "Pizza Two",
        "score": 0.8,
        "platform": "ios",
        "home_zone": "west",
        "rank": 2,
    }
    lapsed = {r["recommended_merchant_id"]: r for r in _rows(marketplace, "lapsed_personalised") if r["user_id"] == "4"}
    assert {merchant: row["score"] for merchant, row in lapsed.items()} == {"10": 1.0, "30": 0.75}
    assert lapsed["30"]["days_since_last_order"] == 14 and lapsed["30"]["rank"] == 2
    assert {r["category"] for r in _rows(marketplace, "category_explorers") if r["user_id"] == "2"} == {
        "sushi",
        "burgers",
    }
    onboarding = [r for r in _rows(marketplace, "new_user_onboarding") if r["user_id"] == "3"]
    assert [(r["order_count"], r["tenure_days"], r["rank"]) for r in onboarding] == [(0, 3, 1), (0, 3, 2)]


def test_superfans_have_order_count_total_spent_and_a_rank_per_merchant(marketplace, crm_settings):
    _refresh(marketplace, RUN_DATE, crm_settings)

    fans = {
        (r["recommended_merchant_id"], r["user_id"]): (
            r["fan_rank"],
            r["order_count"],
            float(r["total_spent"]),
            r["score"],
        )
        for r in _rows(marketplace, "merchant_superfans")
    }
    assert fans == {
        ("10", "1"): (1, 4, 120.0, 1.0),
        ("10", "2"): (2, 3, 90.0, 0.75),  # ties user 5 on orders (3) but spent more
        ("20", "1"): (1, 1, 30.0, 1.0),
        ("30", "4"): (1, 1, 25.0, 1.0),
    }


def test_cross_sell_names_the_most_ordered_merchant_and_both_categories(marketplace, crm_settings):
    _refresh(marketplace, RUN_DATE, crm_settings)

    targets = {
        r["user_id"]: (
            r["ordered_merchant_id"],
            r["ordered_merchant_name"],
            r["ordered_category"],
            r["recommended_merchant_id"],
            r["recommended_category"],
        )
        for r in _rows(marketplace, "cross_sell_targets")
    }
    assert targets == {
        "1": ("10", "Pizza Place", "pizza", "20", "sushi"),
        "2": ("10", "Pizza Place", "pizza", "20", "sushi"),
        "4": ("30", "Burger Joint", "burgers", "10", "pizza"),
    }


def test_thresholds_come_from_settings(marketplace, crm_settings):
    stricter = dataclasses.replace(
        crm_settings, crm_affinity_threshold=0.7, crm_lapsed_days=15, crm_new_user_max_orders=1
    )
    _refresh(marketplace, RUN_DATE, stricter)

    assert _members(marketplace, "high_affinity_prospects") == _text_ids({(1, 11), (2, 20), (2, 11), (3, 10), (4, 10)})
    assert _members(marketplace, "lapsed_personalised") == _text_ids({(1, 20), (1, 11)})
    assert _members(marketplace, "new_user_onboarding") == _text_ids({(3, 10), (3, 20)})


def test_refreshing_again_replaces_the_rows_without_duplicates(marketplace, crm_settings):
    first = _refresh(marketplace, RUN_DATE, crm_settings)
    before = {segment: _rows(marketplace, segment) for segment in segments.SEGMENTS}

    again = _refresh(marketplace, RUN_DATE, crm_settings)

    assert again == first
    assert {segment: _rows(marketplace, segment) for segment in segments.SEGMENTS} == before


def test_a_new_run_date_leaves_earlier_dates_untouched(marketplace, crm_settings):
    _refresh(marketplace, RUN_DATE, crm_settings)
    before = {segment: _rows(marketplace, segment) for segment in segments.SEGMENTS}
    with psycopg.connect(marketplace) as conn:
        _insert_recommendations(conn, NEXT_DATE, {3: [(10, 2), (20, 1)]})

    counts = _refresh(marketplace, NEXT_DATE, crm_settings)

    assert {segment: _rows(marketplace, segment) for segment in segments.SEGMENTS} == before
    assert _members(marketplace, "new_user_onboarding", NEXT_DATE) == _text_ids({(3, 10), (3, 20)})
    assert counts["new_user_onboarding"] == 2


def test_a_failed_refresh_rolls_back_with_the_callers_transaction(marketplace, crm_settings):
    _refresh(marketplace, RUN_DATE, crm_settings)
    before = _rows(marketplace, "lapsed_personalised")

    with pytest.raises(RuntimeError), psycopg.connect(marketplace) as conn, conn.transaction():
        segments.refresh_segments(conn, RUN_DATE, dataclasses.replace(crm_settings, crm_top_k=1))
        raise RuntimeError("publishing failed after the refresh")

    assert _rows(marketplace, "lapsed_personalised") == before


def test_segment_queries_never_nest_loops_and_leave_the_callers_setting_alone(marketplace, crm_settings):
    """At 550,000 users ANALYZE's sample put a day's users at a seventh of the truth, and a nested loop over a
    million recommendations ran for hours. Every plan the refresh runs is read here, through auto_explain: on
    these few rows a planner left free would nest loops everywhere."""
    plans: list[str] = []
    with psycopg.connect(marketplace) as conn:
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_level = notice",
            "SET client_min_messages = notice",
        ):
            conn.execute(setting)
        with conn.transaction():
            segments.refresh_segments(conn, RUN_DATE, crm_settings)
            after = conn.execute("SHOW enable_nestloop").fetchone()[0]
    inserts = [plan for plan in plans if 'INSERT INTO "crm".' in plan]
    assert len(inserts) == len(segments.SEGMENTS)
    assert [plan for plan in inserts if "Nested Loop" in plan] == []
    assert after == "on"
