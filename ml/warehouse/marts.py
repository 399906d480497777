"""Reads of the warehouse's marts for the Python side: each function returns one frame."""

from __future__ import annotations

import pandas as pd
import psycopg

from ml.offers.response import ENGAGEMENT_FEATURES, INACTIVE_SEGMENTS, USER_FEATURES

# crm.recommendations keeps every user: it feeds the in-app recommendations, which are not marketing.
MARKETABLE_USERS_SQL = "SELECT user_id FROM marts.user_features WHERE marketing_opt_in"


def load_history(conn: psycopg.Connection) -> pd.DataFrame:
    """Exposures whose whole outcome window is observed, with features as of sending."""
    columns = [
        "campaign_id",
        "user_id",
        "event_type",
        "reward_size",
        *[c for c in USER_FEATURES],
        "reactivated",
        "order_value_in_window",
        "redeemed",
    ]
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM marts.campaign_history WHERE outcome_observed ORDER BY campaign_id, user_id"
    ).fetchall()
    history = pd.DataFrame(rows, columns=columns)
    for column in (
        "reward_size",
        "order_value_before",
        "avg_order_value_before",
        "avg_price_level_before",
        "order_value_in_window",
    ):
        history[column] = history[column].astype(float)
    history["reactivated"] = history["reactivated"].astype(bool)
    return history


def load_inactive_users(conn: psycopg.Connection) -> pd.DataFrame:
    """Today's inactive users whom marketing may reach, with the same features the model was trained on (as of
    run_date). Users who did not opt in are left out here, before any experiment arm is drawn: they get no row
    in crm.inactive_user_offers, and the arms (a hash per user) stay balanced."""
    rows = conn.execute(
        f"""SELECT s.user_id, s.lifecycle_segment, f.days_since_last_order, f.order_count, f.order_value,
                  f.avg_order_value, f.avg_price_level, f.tenure_days, f.platform, f.home_zone, f.favourite_category,
                  {", ".join(f"f.{column}" for column in ENGAGEMENT_FEATURES)}
           FROM marts.user_segments s JOIN marts.user_features f USING (user_id)
           WHERE s.lifecycle_segment = ANY(%s) AND s.user_id IN ({MARKETABLE_USERS_SQL}) ORDER BY s.user_id""",
        (list(INACTIVE_SEGMENTS),),
    ).fetchall()
    users = pd.DataFrame(rows, columns=["user_id", "segment", *USER_FEATURES])
    for column in ("order_value_before", "avg_order_value_before", "avg_price_level_before"):
        users[column] = users[column].astype(float)
    return users
