"""dbt's marts.user_segments and Python's LifecycleRule are one rule: on the same raw data, with the same
(non-default) thresholds from Settings, they put every user in the same lifecycle segment at the run date.

The data set is seeded and clean (dbt's staging rejects nothing), with users on every threshold's boundary:
last orders exactly N days before the run date, at 00:00:01 and 23:59:59 UTC, and sign-ups on the new-user
boundary with zero, one and two orders.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import new_database

from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS, LifecycleRule
from ml.settings import Settings
from ml.warehouse.dbt_runner import run_dbt

RAW_SCHEMA = Path(__file__).resolve().parents[1] / "ml" / "warehouse" / "schema" / "raw.sql"
RUN_DATE = dt.date(2025, 6, 1)
AT = pd.Timestamp(RUN_DATE, tz="UTC")
# Not the defaults, so agreement means both read the same settings rather than equal constants.
THRESHOLDS = {
    "new_user_days": 10,
    "active_max_days": 4,
    "at_risk_max_days": 11,
    "lapsed_max_days": 25,
    "dormant_max_days": 50,
}
MERCHANTS = (1, 2, 3)


def _raw_data(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users (user_id, signup_at) and orders (event_id, user_id, merchant_id, event_time, order_total)."""
    rng = np.random.default_rng(seed)
    users, orders = [], []

    def order(user: int, at: pd.Timestamp) -> None:
        orders.append((f"o{len(orders)}", user, int(rng.choice(MERCHANTS)), at, round(float(rng.uniform(10, 90)), 2)))

    boundaries = sorted({d + k for d in THRESHOLDS.values() for k in (-1, 0, 1)})
    user = 0
    # Last order exactly d days before the run date, early and late in that day (UTC).
    for days in boundaries:
        for clock in ("00:00:01", "23:59:59"):
            user += 1
            users.append((user, AT - pd.Timedelta(days=200)))
            order(user, AT - pd.Timedelta(days=days + 30))
            order(user, AT - pd.Timedelta(days=days) + pd.Timedelta(clock))
    # Sign-ups around the new-user boundary with 0, 1 and 2 orders; never-ordered users of every age.
    for days in boundaries:
        for n_orders in (0, 1, 2):
            user += 1
            signup = AT - pd.Timedelta(days=days) + pd.Timedelta("08:00:00")
            users.append((user, signup))
            for k in range(n_orders):
                order(user, min(signup + pd.Timedelta(hours=2 + 20 * k), AT - pd.Timedelta(seconds=1)))
    # And a random crowd.
    for _ in range(150):
        user += 1
        signup = AT - pd.Timedelta(seconds=int(rng.integers(1, 120 * 86400)))
        users.append((user, signup))
        for _ in range(rng.poisson(2.0)):
            order(user, signup + (AT - signup) * float(rng.uniform(0.01, 0.999)))
    # User ids as the warehouse holds them: text.
    users = pd.DataFrame(users, columns=["user_id", "signup_at"]).astype({"user_id": str})
    orders = pd.DataFrame(orders, columns=["event_id", "user_id", "merchant_id", "event_time", "order_total"])
    return users, orders.astype({"user_id": str})


def _load_raw(url: str, users: pd.DataFrame, orders: pd.DataFrame) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_SCHEMA.read_text())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw.users (user_id, signup_at, platform, home_zone, marketing_opt_in, source_file)"
                " VALUES (%s, %s, 'ios', 'West Bay', true, 'test')",
                [(u, s.to_pydatetime()) for u, s in zip(users["user_id"], users["signup_at"])],
            )
            cur.executemany(
                "INSERT INTO raw.merchants (merchant_id, merchant_name, category, zone, lat, lng, price_level,"
                " opened_at, source_file) VALUES (%s, %s, 'burgers', 'West Bay', 25.3, 51.5, 2, %s, 'test')",
                [(m, f"Merchant {m}", dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) for m in MERCHANTS],
            )
            cur.executemany(
                "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, merchant_name,"
                " order_total, platform, zone, properties, source_file, loaded_at)"
                " VALUES (%s, %s, 'checkout_completed', %s, %s, NULL, %s, 'ios', 'West Bay', NULL, 'test', %s)",
                [
                    (e, u, t.to_pydatetime(), int(m), total, (t + pd.Timedelta(minutes=1)).to_pydatetime())
                    for e, u, m, t, total in orders[
                        ["event_id", "user_id", "merchant_id", "event_time", "order_total"]
                    ].itertuples(index=False)
                ],
            )


@pytest.fixture(scope="module")
def segmented(postgres_server_url, tmp_path_factory):
    url = new_database(postgres_server_url, "test_lifecycle")
    settings = Settings.from_env(
        environ={}, home=tmp_path_factory.mktemp("lifecycle_home"), warehouse_url=url, **THRESHOLDS
    )
    users, orders = _raw_data(seed=12)
    _load_raw(url, users, orders)
    run_dbt(settings, url, ["run"], RUN_DATE, select="+user_segments")
    with psycopg.connect(url) as conn:
        marts = dict(conn.execute("SELECT user_id, lifecycle_segment FROM marts.user_segments").fetchall())
    return settings, users, orders, marts


def test_dbt_and_lifecycle_rule_put_every_user_in_the_same_segment(segmented):
    settings, users, orders, marts = segmented
    python = LifecycleRule.from_settings(settings).segments(orders, users.set_index("user_id")["signup_at"], AT)
    assert set(marts) == set(python.index)
    disagreements = {u: (marts[u], python[u]) for u in python.index if marts[u] != python[u]}
    assert not disagreements, f"user: (dbt, LifecycleRule): {disagreements}"
    # The data reach every segment, so the agreement covers every branch of the rule.
    assert set(python) == set(LIFECYCLE_SEGMENTS)


def test_the_rule_has_no_thresholds_of_its_own(segmented):
    settings, users, orders, _ = segmented
    default = LifecycleRule.from_settings(Settings())
    chosen = LifecycleRule.from_settings(settings)
    assert chosen != default
    assert {k: getattr(chosen, k) for k in THRESHOLDS} == THRESHOLDS
    with pytest.raises(TypeError):
        LifecycleRule()  # no separate defaults: always built from the settings
