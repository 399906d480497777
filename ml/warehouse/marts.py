"""The one place Python reads dbt-built tables: each function reads ``marts.*`` and returns a frame.

Python reads only marts (never raw, staging or intermediate models), so every rule staging applies (typing,
validity, deduplication) holds for everything the models and the CRM see. Data flows one way: warehouse ->
models (ml.recommend, ml.offers) -> crm; this module imports none of them, the column lists they share with
the marts are defined here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import psycopg

# crm.recommendations keeps every user: it feeds the in-app recommendations, which are not marketing.
MARKETABLE_USERS_SQL = "SELECT user_id FROM marts.user_features WHERE marketing_opt_in"

ENGAGEMENT_FEATURES = ["sessions_14d", "days_since_session", "offers_received", "campaign_opens", "offers_redeemed"]
# The user features of marts.campaign_history (as of sending), each with the marts.user_features column of the
# same meaning as of run_date: the offer model learns on the first and scores today's users on the second.
USER_FEATURE_COLUMNS = {
    "recency_days": "days_since_last_order",
    "order_count_before": "order_count",
    "order_value_before": "order_value",
    "avg_order_value_before": "avg_order_value",
    "avg_price_level_before": "avg_price_level",
    "tenure_days": "tenure_days",
    "platform": "platform",
    "home_zone": "home_zone",
    "favourite_category_before": "favourite_category",
    **{column: column for column in ENGAGEMENT_FEATURES},
}
USER_FEATURES = list(USER_FEATURE_COLUMNS)
_MONEY_FEATURES = ("order_value_before", "avg_order_value_before", "avg_price_level_before")
MERCHANT_COLUMNS = ["merchant_id", "merchant_name", "category", "zone", "lat", "lng", "price_level", "opened_at"]
USER_PROFILE_COLUMNS = ["user_id", "home_zone", "signup_at"]


def load_personalisation_opt_outs(conn: psycopg.Connection) -> list[str]:
    """The users who opted out of personalisation (``marts.user_features.personalisation_opt_out``)."""
    return [u for (u,) in conn.execute("SELECT user_id FROM marts.user_features WHERE personalisation_opt_out")]


def load_orders(conn: psycopg.Connection) -> pd.DataFrame:
    """Every completed order before the marts' run_date, each once (``marts.orders``), as the recommenders
    take them: user_id, merchant_id, event_time (UTC), order_total."""
    rows = conn.execute("SELECT user_id, merchant_id, ordered_at, order_total FROM marts.orders").fetchall()
    orders = pd.DataFrame(rows, columns=["user_id", "merchant_id", "event_time", "order_total"])
    orders["event_time"] = pd.to_datetime(orders["event_time"], utc=True)
    orders["order_total"] = orders["order_total"].astype(float)
    return orders


def load_merchants(conn: psycopg.Connection) -> pd.DataFrame:
    """The merchants open before run_date (``MERCHANT_COLUMNS``), indexed by merchant_id."""
    rows = conn.execute(f"SELECT {', '.join(MERCHANT_COLUMNS)} FROM marts.merchant_features").fetchall()
    return pd.DataFrame(rows, columns=MERCHANT_COLUMNS).set_index("merchant_id")


def load_user_profiles(conn: psycopg.Connection) -> pd.DataFrame:
    """Every user's home zone and sign-up time, indexed by user_id."""
    rows = conn.execute(f"SELECT {', '.join(USER_PROFILE_COLUMNS)} FROM marts.user_features").fetchall()
    return pd.DataFrame(rows, columns=USER_PROFILE_COLUMNS).set_index("user_id")


def load_merchant_names(conn: psycopg.Connection) -> pd.DataFrame:
    rows = conn.execute("SELECT merchant_id, merchant_name FROM marts.merchant_features").fetchall()
    return pd.DataFrame(rows, columns=["merchant_id", "merchant_name"])


def load_lifecycle_members(conn: psycopg.Connection) -> pd.DataFrame:
    """Every user with their lifecycle segment (user_id, segment), by user_id."""
    rows = conn.execute(
        "SELECT user_id, lifecycle_segment AS segment FROM marts.user_segments ORDER BY user_id"
    ).fetchall()
    return pd.DataFrame(rows, columns=["user_id", "segment"])


def users_per_segment(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT lifecycle_segment, count(*) FROM marts.user_segments GROUP BY 1 ORDER BY 1").fetchall()
    return dict(rows)


def load_history(conn: psycopg.Connection, sent_since: dt.date) -> pd.DataFrame:
    """Exposures sent on or after ``sent_since`` whose whole outcome window is observed, with features as of
    sending."""
    columns = [
        "campaign_id",
        "user_id",
        "event_type",
        "reward_size",
        *USER_FEATURES,
        "reactivated",
        "order_value_in_window",
        "redeemed",
        "propensity",
    ]
    rows = conn.execute(
        f"""SELECT {", ".join(columns)} FROM marts.campaign_history
            WHERE outcome_observed AND sent_at >= %s ORDER BY campaign_id, user_id""",
        (dt.datetime.combine(sent_since, dt.time(), dt.UTC),),
    ).fetchall()
    history = pd.DataFrame(rows, columns=columns)
    for column in ("reward_size", *_MONEY_FEATURES, "order_value_in_window", "propensity"):
        history[column] = history[column].astype(float)
    history["reactivated"] = history["reactivated"].astype(bool)
    return history


def load_inactive_users(conn: psycopg.Connection, segments: Sequence[str]) -> pd.DataFrame:
    """Today's users in the lifecycle ``segments`` whom marketing may reach, with the features the offer model
    was trained on (``USER_FEATURES``, as of run_date). Users who did not opt in are left out here, before any
    experiment arm is drawn: they get no row in crm.inactive_user_offers, and the arms (a hash per user) stay
    balanced."""
    features = ", ".join(f"f.{USER_FEATURE_COLUMNS[name]}" for name in USER_FEATURES)
    rows = conn.execute(
        f"""SELECT s.user_id, s.lifecycle_segment, {features}
           FROM marts.user_segments s JOIN marts.user_features f USING (user_id)
           WHERE s.lifecycle_segment = ANY(%s) AND s.user_id IN ({MARKETABLE_USERS_SQL}) ORDER BY s.user_id""",
        (list(segments),),
    ).fetchall()
    users = pd.DataFrame(rows, columns=["user_id", "segment", *USER_FEATURES])
    for column in _MONEY_FEATURES:
        users[column] = users[column].astype(float)
    return users


def order_revenue(conn: psycopg.Connection, user_ids: Sequence[str], start: dt.datetime, end: dt.datetime) -> pd.Series:
    """Revenue (QAR) per user of ``user_ids`` who ordered in ``[start, end)``, indexed by user_id; users with no
    order there are absent. Each order counts once: ``marts.orders`` is deduplicated by staging."""
    rows = conn.execute(
        """SELECT user_id, sum(order_total) FROM marts.orders
           WHERE user_id = ANY(%s) AND ordered_at >= %s AND ordered_at < %s
           GROUP BY user_id""",
        ([str(user_id) for user_id in user_ids], start, end),
    ).fetchall()
    return pd.Series(
        [float(revenue) for _, revenue in rows], index=[user_id for user_id, _ in rows], name="revenue", dtype=float
    )


def redeemed_users(conn: psycopg.Connection, campaign_id: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    """The users who redeemed a reward of ``campaign_id`` in ``[start, end)`` (``marts.reward_redemptions``, the
    definition ``marts.campaign_history``'s redeemed flag uses), each once: a reward is paid once per offer."""
    rows = conn.execute(
        """SELECT DISTINCT user_id FROM marts.reward_redemptions
           WHERE campaign_id = %s AND redeemed_at >= %s AND redeemed_at < %s ORDER BY user_id""",
        (campaign_id, start, end),
    ).fetchall()
    return [user_id for (user_id,) in rows]
