"""A planted change of taste shows in the next daily run: in marts.user_features (real dbt build on the embedded
Postgres) and in the discovery recommendations of the production ranker fitted on those marts.

The world (run_date 2025-06-01): burgers and sushi merchants, background users who each order one category
(a fifth of them switch category halfway, so recency carries signal), and three planted users with the same
burgers history 50-95 days before run_date:

  DRIFTED       then five sushi orders in the last 20 days (within taste_recent_days = 28)
  STEADY        then five burgers orders in the last 20 days
  HISTORY_ONLY  nothing since: the drifted user without the planted recent orders
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import new_database

from ml.pipeline.tasks import load_market_context
from ml.recommend.merchant import ranker_spec
from ml.recommend.modes import DISCOVERY
from ml.settings import Settings
from ml.warehouse import marts
from ml.warehouse.dbt_runner import run_dbt

RAW_SCHEMA = Path(__file__).resolve().parents[1] / "ml" / "warehouse" / "schema" / "raw.sql"

RUN_DATE = dt.date(2025, 6, 1)
CUTOFF = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
OLD_TASTE, NEW_TASTE = "burgers", "sushi"
MERCHANTS_PER_CATEGORY = 12
BACKGROUND_USERS_PER_CATEGORY = 80
HISTORY_DAYS = 120
DRIFTED, STEADY, HISTORY_ONLY = "planted-drifted", "planted-steady", "planted-history-only"
HISTORY_AGES_DAYS = range(50, 100, 5)  # ten burgers orders, 50..95 days before run_date
RECENT_AGES_DAYS = (2, 5, 9, 14, 20)
TOP = 5


def merchant_id(category: str, number: int) -> str:
    return f"{category}-{number}"


def category_of(merchant: str) -> str:
    return merchant.rsplit("-", 1)[0]


def background_orders(rng: np.random.Generator) -> list[tuple[str, str, float]]:
    """(user_id, merchant_id, age in days) for users who order one category every few days; a fifth switch
    category halfway through. Popularity within a category is skewed, as on a real marketplace."""
    popularity = 1.0 / np.sqrt(np.arange(1, MERCHANTS_PER_CATEGORY + 1))
    popularity /= popularity.sum()
    orders = []
    for category_index, first_taste in enumerate((OLD_TASTE, NEW_TASTE)):
        for number in range(BACKGROUND_USERS_PER_CATEGORY):
            user = f"bg-{first_taste}-{number}"
            switches = number % 10 == 0
            age = float(rng.uniform(0, 6))
            while age < HISTORY_DAYS:
                taste = first_taste
                if switches and age < HISTORY_DAYS / 2:
                    taste = (OLD_TASTE, NEW_TASTE)[1 - category_index]
                merchant = merchant_id(taste, int(rng.choice(MERCHANTS_PER_CATEGORY, p=popularity)))
                orders.append((user, merchant, age))
                age += float(rng.uniform(2, 8))
    return orders


def planted_orders() -> list[tuple[str, str, float]]:
    """The three planted users; their burgers history uses the four most popular burgers merchants, the drifted
    user's recent sushi orders two sushi merchants."""
    orders = []
    for user in (DRIFTED, STEADY, HISTORY_ONLY):
        orders += [(user, merchant_id(OLD_TASTE, 3 * (i % 4)), age) for i, age in enumerate(HISTORY_AGES_DAYS)]
    orders += [(DRIFTED, merchant_id(NEW_TASTE, 3 * (i % 2)), age) for i, age in enumerate(RECENT_AGES_DAYS)]
    orders += [(STEADY, merchant_id(OLD_TASTE, 3 * (i % 4)), age) for i, age in enumerate(RECENT_AGES_DAYS)]
    return orders


def load_world(url: str, orders: list[tuple[str, str, float]]) -> None:
    users = sorted({user for user, _, _ in orders})
    start = CUTOFF - dt.timedelta(days=HISTORY_DAYS + 30)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_SCHEMA.read_text())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw.users (user_id, signup_at, platform, home_zone, marketing_opt_in, source_file)"
                " VALUES (%s, %s, 'ios', 'West Bay', true, 'test')",
                [(user, start) for user in users],
            )
            cur.executemany(
                "INSERT INTO raw.merchants (merchant_id, merchant_name, category, zone, lat, lng, price_level,"
                " opened_at, source_file) VALUES (%s, %s, %s, 'West Bay', 25.3, 51.5, 2, %s, 'test')",
                [
                    (merchant_id(category, number), f"{category} place {number}", category, start)
                    for category in (OLD_TASTE, NEW_TASTE)
                    for number in range(MERCHANTS_PER_CATEGORY)
                ],
            )
            cur.executemany(
                "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, merchant_name,"
                " order_total, platform, zone, properties, source_file, loaded_at)"
                " VALUES (%s, %s, 'checkout_completed', %s, %s, NULL, 40, 'ios', 'West Bay', NULL, 'test', %s)",
                [
                    (f"order-{n}", user, CUTOFF - dt.timedelta(days=age), merchant, CUTOFF)
                    for n, (user, merchant, age) in enumerate(orders)
                ],
            )


@pytest.fixture(scope="module")
def built_world(postgres_server_url, tmp_path_factory):
    """The world loaded into a fresh database and built by dbt as of RUN_DATE."""
    url = new_database(postgres_server_url, "test_taste_drift")
    settings = Settings.from_env(environ={}, home=tmp_path_factory.mktemp("taste_home"), warehouse_url=url)
    load_world(url, background_orders(np.random.default_rng(7)) + planted_orders())
    result = run_dbt(settings, url, ["build"], RUN_DATE)
    assert result.success, [(n.name, n.status, n.message) for n in result.nodes if n.status not in ("success", "pass")]
    return settings, url


def user_features(url: str) -> dict[str, dict]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT user_id, favourite_category, recent_favourite_category, category_divergence, taste_drift"
            " FROM marts.user_features WHERE user_id = ANY(%s)",
            [[DRIFTED, STEADY, HISTORY_ONLY]],
        )
        names = [d.name for d in cur.description]
        return {str(row[0]): dict(zip(names, row)) for row in cur.fetchall()}


def test_planted_taste_change_shows_in_user_features(built_world):
    settings, url = built_world
    features = user_features(url)

    drifted = features[DRIFTED]
    assert drifted["taste_drift"] is True
    assert float(drifted["category_divergence"]) == 1.0  # only sushi recently, only burgers before
    assert float(drifted["category_divergence"]) >= settings.taste_drift_threshold
    assert drifted["recent_favourite_category"] == NEW_TASTE
    assert drifted["favourite_category"] == OLD_TASTE  # ten burgers orders still outnumber five sushi ones

    steady = features[STEADY]
    assert steady["taste_drift"] is False
    assert float(steady["category_divergence"]) == 0.0
    assert steady["recent_favourite_category"] == OLD_TASTE

    history_only = features[HISTORY_ONLY]
    assert history_only["taste_drift"] is False
    assert history_only["category_divergence"] is None  # no recent orders to compare
    assert history_only["recent_favourite_category"] == OLD_TASTE


def test_next_run_recommends_the_new_taste(built_world):
    settings, url = built_world
    with psycopg.connect(url) as conn:
        orders = marts.load_orders(conn)
        context = load_market_context(conn)
    recommender = ranker_spec(settings).recommender().fit(orders, CUTOFF, context)

    top = recommender.recommend([DRIFTED, HISTORY_ONLY], TOP, mode=DISCOVERY)
    categories = {
        user: top.loc[top["user_id"].astype(str) == user, "merchant_id"].astype(str).map(category_of).tolist()
        for user in (DRIFTED, HISTORY_ONLY)
    }
    for user, listed in categories.items():
        assert len(listed) == TOP, (user, listed)
    assert categories[DRIFTED].count(NEW_TASTE) > categories[DRIFTED].count(OLD_TASTE), categories
    assert categories[HISTORY_ONLY].count(NEW_TASTE) < categories[HISTORY_ONLY].count(OLD_TASTE), categories


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("taste_drift_threshold", 1.5),
        ("taste_recent_days", 0),
        ("taste_half_life_days", 0.0),
        ("taste_drift_min_recent_orders", 0),
    ],
)
def test_taste_settings_out_of_range_are_refused(setting, value):
    with pytest.raises(ValueError, match=f"REKINDLE_{setting.upper()}"):
        Settings.from_env(environ={f"REKINDLE_{setting.upper()}": str(value)})
