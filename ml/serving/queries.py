"""The read layer of the API (and the dashboard): every SQL the server runs against ``crm.*``, ``marts.*`` and
``raw.*``, parameterised, in one place.

Two kinds of reads:

* per request, by primary key (a user's published list, offer, features, merchants): cheap index look-ups whose
  answers the response cache (``ml/serving/cache.py``) keeps;
* per publication, once (:func:`load_catalogue`): the merchants, their zone popularity and day-part profile and
  the item-item co-order neighbours. A new run_date in ``crm.recommendations`` loads a new catalogue.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd
import psycopg
import scipy.sparse as sp
import yaml
from psycopg.rows import dict_row

from ml.recommend.cosine import cosine_similarity, keep_top_per_row
from ml.settings import PROJECT_ROOT

# Neighbours kept per merchant for /similar and for lifting a viewed merchant's neighbours.
NEIGHBOURS = 50
RECENT_ORDERS = 5

# The day-parts of dbt's int_orders.sql (local hour -> day-part; every other hour is late_night), in the
# marketplace's local time (dbt var local_utc_offset_hours, read from the dbt project below).
DAY_PART_HOURS = {
    "breakfast": range(6, 11),
    "lunch": range(11, 15),
    "afternoon": range(15, 18),
    "dinner": range(18, 22),
}
LATE_NIGHT = "late_night"
DAY_PARTS = (*DAY_PART_HOURS, LATE_NIGHT)


def local_utc_offset_hours() -> int:
    project = yaml.safe_load((PROJECT_ROOT / "dbt" / "dbt_project.yml").read_text())
    return int(project["vars"]["local_utc_offset_hours"])


def day_part_of_hour(local_hour: int) -> str:
    return next((part for part, hours in DAY_PART_HOURS.items() if local_hour in hours), LATE_NIGHT)


def day_part_at(moment: datetime, offset_hours: int) -> str:
    return day_part_of_hour((moment.hour + offset_hours) % 24)


LATEST_RUN_DATE_SQL = "SELECT max(run_date) FROM crm.recommendations"
OFFER_SQL = """
SELECT campaign_id, segment, arm, event_type, reward_size::float8 AS reward_size, expected_uplift, is_holdout,
       model_version
FROM crm.inactive_user_offers WHERE run_date = %(run_date)s AND user_id = %(user_id)s"""
USER_SQL = """
SELECT f.user_id, s.lifecycle_segment, s.value_tier, f.home_zone, f.platform, f.marketing_opt_in,
       f.personalisation_opt_out, f.order_count,
       f.days_since_last_order, f.favourite_category, f.recent_favourite_category, f.taste_drift
FROM marts.user_features f LEFT JOIN marts.user_segments s USING (user_id)
WHERE f.user_id = %(user_id)s"""
# What a recommendation needs of one user, in one round trip: the user's row (USER_SQL), both modes' published
# lists and the merchants they ordered from.
USER_CONTEXT_SQL = f"""
SELECT
    (SELECT row_to_json(u) FROM ({USER_SQL}) u) AS user,
    (SELECT json_agg(json_build_object('mode', mode, 'merchant_id', merchant_id, 'score', score, 'reason', reason,
                                       'model_version', model_version) ORDER BY mode, rank)
     FROM crm.recommendations WHERE run_date = %(run_date)s AND user_id = %(user_id)s) AS published,
    (SELECT json_agg(json_build_object('merchant_id', merchant_id, 'merchant_name', merchant_name))
     FROM marts.user_merchant_orders WHERE user_id = %(user_id)s) AS ordered"""
USER_MERCHANTS_SQL = """
SELECT merchant_id, merchant_name, category, order_count, last_order_at
FROM marts.user_merchant_orders WHERE user_id = %(user_id)s
ORDER BY last_order_at DESC, merchant_id"""
MERCHANTS_SQL = """
SELECT merchant_id, merchant_name, category, zone, coalesce(order_count, 0) AS order_count
FROM marts.merchant_features ORDER BY merchant_id"""
CO_ORDERS_SQL = "SELECT user_id, merchant_id FROM marts.user_merchant_orders"
MERCHANT_HOURS_SQL = """
SELECT merchant_id, extract(hour from ordered_at at time zone 'UTC' + make_interval(hours => %(offset)s))::int,
       count(*)
FROM marts.orders GROUP BY 1, 2"""
INSERT_EVENTS_SQL = """
INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, merchant_name, order_total,
                        platform, zone, properties, source_file)
SELECT e.*, %(source_file)s FROM unnest(
    %(event_id)s::text[], %(user_id)s::text[], %(event_type)s::text[], %(event_time)s::timestamptz[],
    %(merchant_id)s::text[], %(merchant_name)s::text[], %(order_total)s::numeric[], %(platform)s::text[],
    %(zone)s::text[], %(properties)s::jsonb[]
) AS e
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id"""
QUARANTINE_SQL = """
INSERT INTO raw.quarantine (table_name, source_file, row_number, reason, record)
SELECT 'events', %(source_file)s, r.row_number, r.reason, r.record
FROM unnest(%(row_number)s::bigint[], %(reason)s::text[], %(record)s::jsonb[]) AS r (row_number, reason, record)
ON CONFLICT (table_name, source_file, row_number) DO NOTHING"""
NOTIFY_SQL = "SELECT pg_notify(%(channel)s, %(payload)s)"


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    category: str | None
    zone: str | None


@dataclass
class Catalogue:
    """What the API needs of one publication besides per-user rows: loaded once per run_date."""

    run_date: date
    merchants: dict[str, Merchant]
    popular_by_zone: dict[str | None, list[tuple[str, float]]]  # None: the whole marketplace
    day_part_share: dict[str, dict[str, float]]  # merchant -> day-part -> share of its orders
    neighbours: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def popular(self, zone: str | None) -> list[tuple[str, float]]:
        return self.popular_by_zone.get(zone) or self.popular_by_zone[None]


class Warehouse:
    """One autocommit connection per thread (FastAPI runs sync routes on a thread pool)."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
            self._local.conn = conn
        return conn

    def _all(self, query: str, params: dict | None = None) -> list[dict]:
        try:
            return self.connection().execute(query, params).fetchall()
        except psycopg.OperationalError:
            # A dropped connection (a server restart): reconnect once.
            self._local.conn = None
            return self.connection().execute(query, params).fetchall()

    def _one(self, query: str, params: dict | None = None) -> dict | None:
        rows = self._all(query, params)
        return rows[0] if rows else None

    def latest_run_date(self) -> date | None:
        row = self._one(LATEST_RUN_DATE_SQL)
        return row["max"] if row else None

    def offer(self, run_date: date, user_id: str) -> dict | None:
        return self._one(OFFER_SQL, {"run_date": run_date, "user_id": user_id})

    def user(self, user_id: str) -> dict | None:
        return self._one(USER_SQL, {"user_id": user_id})

    def user_context(self, run_date: date, user_id: str) -> tuple[dict | None, list[dict], list[dict]]:
        """The user's row (None when unknown), run_date's published rows of both modes, the merchants ordered from."""
        row = self._one(USER_CONTEXT_SQL, {"run_date": run_date, "user_id": user_id})
        return row["user"], row["published"] or [], row["ordered"] or []

    def user_merchants(self, user_id: str) -> list[dict]:
        """The merchants the user ordered from, the most recent first."""
        return self._all(USER_MERCHANTS_SQL, {"user_id": user_id})

    def load_events(
        self,
        good: pd.DataFrame,
        quarantined: list[tuple[int, str, str]],
        source_file: str,
        notifications: Callable[[set[str]], Iterable[tuple[str, str]]],
    ) -> set[str]:
        """In one transaction: insert validated event rows (``ml.warehouse.ingest.validate``'s typed frame) whose
        event_id is new, quarantine the rejected ones ((row_number, reason, record as JSON text)) and send the
        ``notifications`` of the new event_ids as (channel, payload) pairs, which listeners hear on commit.
        Returns the new event_ids."""
        conn = self.connection()
        with conn.transaction():
            if quarantined:
                row_numbers, reasons, records = zip(*quarantined)
                conn.execute(
                    QUARANTINE_SQL,
                    {
                        "source_file": source_file,
                        "row_number": list(row_numbers),
                        "reason": list(reasons),
                        "record": list(records),
                    },
                )
            inserted = set()
            if not good.empty:
                params = {column: _column_values(good[column]) for column in INSERT_COLUMNS}
                params["source_file"] = source_file
                inserted = {row["event_id"] for row in conn.execute(INSERT_EVENTS_SQL, params).fetchall()}
            for channel, payload in notifications(inserted):
                conn.execute(NOTIFY_SQL, {"channel": channel, "payload": payload})
        return inserted

    def load_catalogue(self, run_date: date) -> Catalogue:
        return load_catalogue(self.connection(), run_date)


INSERT_COLUMNS = (
    "event_id",
    "user_id",
    "event_type",
    "event_time",
    "merchant_id",
    "merchant_name",
    "order_total",
    "platform",
    "zone",
    "properties",
)


def _column_values(column: pd.Series) -> list:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return [value.to_pydatetime() if not pd.isna(value) else None for value in column]
    return column.to_numpy(dtype=object, na_value=None).tolist()


def load_catalogue(conn: psycopg.Connection, run_date: date) -> Catalogue:
    """Merchants, popularity per zone (customers in the marts' order history), day-part profiles and co-order
    cosine neighbours (``ml.recommend.cosine``: co-orders / sqrt(customers_A x customers_B)) of the marts."""
    rows = conn.execute(MERCHANTS_SQL).fetchall()
    merchants = {
        r["merchant_id"]: Merchant(r["merchant_id"], r["merchant_name"], r["category"], r["zone"]) for r in rows
    }
    pairs = pd.DataFrame(conn.execute(CO_ORDERS_SQL).fetchall(), columns=["user_id", "merchant_id"])
    pairs = pairs[pairs["merchant_id"].isin(merchants)]
    customers = pairs["merchant_id"].value_counts()
    popular_by_zone: dict[str | None, list[tuple[str, float]]] = defaultdict(list)
    for merchant_id in sorted(merchants, key=lambda m: (-customers.get(m, 0), m)):
        count = float(customers.get(merchant_id, 0))
        popular_by_zone[None].append((merchant_id, count))
        popular_by_zone[merchants[merchant_id].zone].append((merchant_id, count))
    hours = conn.execute(MERCHANT_HOURS_SQL, {"offset": local_utc_offset_hours()}).fetchall()
    counts: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(DAY_PARTS, 0.0))
    for row in hours:
        counts[row["merchant_id"]][day_part_of_hour(row["extract"])] += row["count"]
    day_part_share = {
        m: {p: c / max(sum(parts.values()), 1.0) for p, c in parts.items()} for m, parts in counts.items()
    }
    return Catalogue(
        run_date=run_date,
        merchants=merchants,
        popular_by_zone=dict(popular_by_zone),
        day_part_share=day_part_share,
        neighbours=_co_order_neighbours(pairs),
    )


def _co_order_neighbours(pairs: pd.DataFrame) -> dict[str, list[tuple[str, float]]]:
    if pairs.empty:
        return {}
    users, user_index = np.unique(pairs["user_id"].to_numpy(), return_inverse=True)
    items, item_index = np.unique(pairs["merchant_id"].to_numpy(), return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (user_index, item_index)), shape=(len(users), len(items))
    )
    similarity = keep_top_per_row(cosine_similarity(matrix), NEIGHBOURS).tocsr()
    neighbours = {}
    for row, merchant_id in enumerate(items):
        start, end = similarity.indptr[row], similarity.indptr[row + 1]
        order = np.argsort(-similarity.data[start:end], kind="stable")
        neighbours[merchant_id] = [
            (items[similarity.indices[start + i]], float(similarity.data[start + i])) for i in order
        ]
    return neighbours
