"""A food-delivery order log for trying ``rekindle benchmark ranking --interactions`` without a real one.

Shaped like the small real log the ranking benchmark is judged on (about 600 ordering customers, 100
restaurants, 7,000 orders over four months, string ids): the orders (``checkout_completed``) of the synthetic
marketplace at a custom scale, one row per order with user_id, merchant_id, event_time (ISO-8601 UTC), and the
restaurant's category, lat and lng.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from ml.synthetic.marketplace import generate_marketplace

ORDER_LOG_COLUMNS = ["user_id", "merchant_id", "event_time", "category", "lat", "lng"]
# About 80% of the generated users order in the window, so this many give about 600 customers.
GENERATED_USERS = 750
MERCHANTS = 100
DAYS = 120
END_DATE = dt.date(2025, 6, 1)


def order_log(seed: int = 0) -> pd.DataFrame:
    """The stand-in log, sorted by time; ids are strings that do not parse as numbers (``c0042``, ``r007``)."""
    market = generate_marketplace(
        seed=seed, days=DAYS, end_date=END_DATE, n_users=GENERATED_USERS, n_merchants=MERCHANTS
    )
    orders = market.events[market.events["event_type"] == "checkout_completed"]
    merchants = market.merchants.set_index("merchant_id")[["category", "lat", "lng"]]
    log = orders[["user_id", "merchant_id", "event_time"]].join(merchants, on="merchant_id")
    return (
        log.assign(
            user_id="c" + log["user_id"].astype(str).str.zfill(4),
            merchant_id="r" + log["merchant_id"].astype(str).str.zfill(3),
            event_time=pd.to_datetime(log["event_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .sort_values(["event_time", "user_id", "merchant_id"], kind="mergesort")
        .reset_index(drop=True)[ORDER_LOG_COLUMNS]
    )


def write_order_log(path: Path, seed: int = 0) -> pd.DataFrame:
    """Write :func:`order_log` to ``path`` (Parquet for .parquet, else CSV) and return it."""
    log = order_log(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        log.to_parquet(path, index=False)
    else:
        log.to_csv(path, index=False)
    return log
