"""The dashboard's reads: the API's read layer (``ml.serving.queries.Warehouse``: published lists, offers, user
profiles, the catalogue of merchants and their co-order neighbours) plus the SQL only the dashboard runs, here.

Every read is parameterised; CSV downloads go through ``ml.crm.export.export_segment``, the writer behind
``rekindle export``, so a download and an export of the same segment and filters are the same bytes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pandas as pd
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ml.crm import segments
from ml.crm.export import export_segment
from ml.pipeline import DBT_TASK_GROUP
from ml.serving.queries import Warehouse

# Every session of the dashboard is read-only, whatever the role it logs in as can do.
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"

# Every visit reads this (it is the caches' key), so not a DISTINCT over every published row (a scan of about a
# million rows per publication at full scale): a loose index scan, one primary-key probe per run date.
RUN_DATES_SQL = """
WITH RECURSIVE published AS (
    SELECT max(run_date) AS run_date FROM crm.recommendations
    UNION ALL
    SELECT (SELECT max(r.run_date) FROM crm.recommendations r WHERE r.run_date < p.run_date)
    FROM published p WHERE p.run_date IS NOT NULL
)
SELECT run_date FROM published WHERE run_date IS NOT NULL ORDER BY run_date DESC"""
USER_ORDERS_SQL = """
SELECT ordered_at, merchant_id, merchant_name, category, order_total::float8 AS order_total
FROM marts.orders WHERE user_id = %(user_id)s
ORDER BY ordered_at DESC, order_id LIMIT %(limit)s"""
PROSPECTS_SQL = """
SELECT user_id, score, rank, platform, home_zone FROM crm.high_affinity_prospects
WHERE run_date = %(run_date)s AND recommended_merchant_id = %(merchant_id)s
ORDER BY score DESC, user_id"""
SUPERFANS_SQL = """
SELECT fan_rank, user_id, order_count, total_spent::float8 AS total_spent, score, platform, home_zone
FROM crm.merchant_superfans
WHERE run_date = %(run_date)s AND recommended_merchant_id = %(merchant_id)s
ORDER BY fan_rank"""
# Both directions: customers of the merchant sent elsewhere, and other merchants' customers sent to it.
CROSS_SELL_SQL = """
SELECT 'its customers are recommended' AS direction, recommended_merchant_id AS partner_id,
       recommended_merchant_name AS partner_name, recommended_category AS partner_category, count(*) AS users
FROM crm.cross_sell_targets WHERE run_date = %(run_date)s AND ordered_merchant_id = %(merchant_id)s
GROUP BY 1, 2, 3, 4
UNION ALL
SELECT 'recommended to customers of', ordered_merchant_id, ordered_merchant_name, ordered_category, count(*)
FROM crm.cross_sell_targets WHERE run_date = %(run_date)s AND recommended_merchant_id = %(merchant_id)s
GROUP BY 1, 2, 3, 4
ORDER BY direction, users DESC, partner_id"""
EXPERIMENT_RESULTS_SQL = "SELECT * FROM crm.experiment_results ORDER BY campaign_date DESC, campaign_id, arm"
# The serving A/B test: an impression tracked by the API carries its variant; a user converts with a
# checkout_completed at or after their first impression.
SERVING_AB_SQL = """
WITH exposed AS (
    SELECT user_id, min(properties ->> 'variant') AS variant, min(event_time) AS first_seen,
           count(DISTINCT properties ->> 'variant') AS variants
    FROM raw.events WHERE properties ? 'variant' GROUP BY user_id
)
SELECT x.variant, count(*) AS users,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM raw.events o
           WHERE o.user_id = x.user_id AND o.event_type = 'checkout_completed' AND o.event_time >= x.first_seen
       )) AS converted_users
FROM exposed x WHERE x.variants = 1
GROUP BY x.variant ORDER BY x.variant"""
# The dbt build's tasks (one per model, "dbt_build.<node>") as one step, their seconds added up.
PIPELINE_STEPS_SQL = """
SELECT run_date, step, count(*) AS tasks, max(finished_at) AS finished_at, sum(seconds) AS seconds,
       (array_agg(summary))[1] AS summary
FROM (
    SELECT run_date, CASE WHEN starts_with(step, %(task_group)s || '.') THEN %(task_group)s ELSE step END AS step,
           finished_at, seconds, summary
    FROM ops.pipeline_steps
    WHERE run_date IN (SELECT DISTINCT run_date FROM ops.pipeline_steps ORDER BY run_date DESC LIMIT %(run_dates)s)
) AS steps
GROUP BY run_date, step
ORDER BY run_date DESC, finished_at"""
QUARANTINE_SQL = """
SELECT table_name, reason, count(*) AS rows, max(quarantined_at) AS last_quarantined_at
FROM raw.quarantine GROUP BY 1, 2 ORDER BY rows DESC, table_name, reason"""
FRESHNESS_SQL = """
SELECT 'raw.events' AS source, max(event_time) AS latest_record, max(loaded_at) AS last_loaded, count(*) AS rows
FROM raw.events
UNION ALL SELECT 'raw.campaign_exposures', max(sent_at), max(loaded_at), count(*) FROM raw.campaign_exposures
UNION ALL SELECT 'raw.users', max(signup_at), max(loaded_at), count(*) FROM raw.users
UNION ALL SELECT 'raw.merchants', max(opened_at), max(loaded_at), count(*) FROM raw.merchants
UNION ALL SELECT 'marts.orders', max(ordered_at), NULL, count(*) FROM marts.orders"""
EXPORT_FILTER_VALUES_SQL = """
SELECT array_agg(DISTINCT platform) FILTER (WHERE platform IS NOT NULL) AS platforms,
       array_agg(DISTINCT home_zone) FILTER (WHERE home_zone IS NOT NULL) AS zones
FROM {table} WHERE run_date = %(run_date)s"""
# A scored lifecycle segment's members have no platform or zone of their own: the marts' (as its export filters).
MEMBER_FILTER_VALUES_SQL = """
SELECT array_agg(DISTINCT f.platform) FILTER (WHERE f.platform IS NOT NULL) AS platforms,
       array_agg(DISTINCT f.home_zone) FILTER (WHERE f.home_zone IS NOT NULL) AS zones
FROM crm.segment_members m JOIN marts.user_features f USING (user_id)
WHERE m.run_date = %(run_date)s AND m.segment = %(segment)s"""
LIFECYCLE_SEGMENTS_SQL = "SELECT DISTINCT lifecycle_segment FROM marts.user_segments ORDER BY 1"


def read_only_url(url: str) -> str:
    return make_conninfo(url, options=READ_ONLY_OPTIONS)


@dataclass(frozen=True)
class ExportFilters:
    """The filters of ``rekindle export`` (ml/cli/crm.py), None = not filtered."""

    min_score: float | None = None
    platform: str | None = None
    zone: str | None = None
    lifecycle_segment: str | None = None


class DashboardWarehouse(Warehouse):
    """The API's reads and the dashboard's own, on one read-only connection per thread. The dashboard opens one as
    its role (crm, marts) and one as the warehouse URL's user for the pipeline's records: ``serving_ab``,
    ``pipeline_steps``, ``quarantine_by_reason``, ``freshness`` and ``last_erasure`` read ``raw`` and ``ops``."""

    def __init__(self, url: str):
        super().__init__(read_only_url(url))

    def frame(self, query: str, params: dict | None = None) -> pd.DataFrame:
        cursor = self.connection().execute(query, params)
        return pd.DataFrame(cursor.fetchall(), columns=[column.name for column in cursor.description])

    def run_dates(self) -> list[date]:
        """Published run dates, the newest first; none before the first publication."""
        if self._one("SELECT to_regclass('crm.recommendations') AS published")["published"] is None:
            return []
        return [row["run_date"] for row in self._all(RUN_DATES_SQL)]

    def last_erasure(self) -> datetime | None:
        """When a user was last erased (``rekindle forget``, ``DELETE /v1/users/{user_id}``); None before any."""
        if self._one("SELECT to_regclass('ops.erased_users') AS tombstones")["tombstones"] is None:
            return None
        return self._one("SELECT max(erased_at) AS erased_at FROM ops.erased_users")["erased_at"]

    def user_orders(self, user_id: str, limit: int = 20) -> pd.DataFrame:
        return self.frame(USER_ORDERS_SQL, {"user_id": user_id, "limit": limit})

    def prospects(self, run_date: date, merchant_id: str) -> pd.DataFrame:
        return self.frame(PROSPECTS_SQL, {"run_date": run_date, "merchant_id": merchant_id})

    def superfans(self, run_date: date, merchant_id: str) -> pd.DataFrame:
        return self.frame(SUPERFANS_SQL, {"run_date": run_date, "merchant_id": merchant_id})

    def cross_sell_partners(self, run_date: date, merchant_id: str) -> pd.DataFrame:
        return self.frame(CROSS_SELL_SQL, {"run_date": run_date, "merchant_id": merchant_id})

    def experiment_results(self) -> pd.DataFrame:
        return self.frame(EXPERIMENT_RESULTS_SQL)

    def serving_ab(self) -> pd.DataFrame:
        return self.frame(SERVING_AB_SQL)

    def pipeline_steps(self, run_dates: int) -> pd.DataFrame:
        return self.frame(PIPELINE_STEPS_SQL, {"run_dates": run_dates, "task_group": DBT_TASK_GROUP})

    def quarantine_by_reason(self) -> pd.DataFrame:
        return self.frame(QUARANTINE_SQL)

    def freshness(self) -> pd.DataFrame:
        return self.frame(FRESHNESS_SQL)

    def export_filter_values(self, segment: str, run_date: date) -> dict[str, list[str]]:
        """The platforms and zones in run_date's rows of a segment table (or of a scored lifecycle segment's
        members), and every lifecycle segment."""
        if segment in segments.SEGMENTS:
            query = sql.SQL(EXPORT_FILTER_VALUES_SQL).format(table=sql.Identifier("crm", segment))
        else:
            query = sql.SQL(MEMBER_FILTER_VALUES_SQL)
        row = self.connection().execute(query, {"run_date": run_date, "segment": segment}).fetchone()
        lifecycle = [r["lifecycle_segment"] for r in self._all(LIFECYCLE_SEGMENTS_SQL)]
        return {
            "platform": sorted(row["platforms"] or []),
            "zone": sorted(row["zones"] or []),
            "lifecycle_segment": lifecycle,
        }

    def segment_export(self, segment: str, run_date: date, filters: ExportFilters) -> tuple[str, bytes]:
        """The file name and bytes ``rekindle export`` writes for this segment, run date and filters."""
        with tempfile.TemporaryDirectory(prefix="rekindle-dashboard-") as folder:
            path = export_segment(
                self.connection(),
                segment,
                run_date,
                Path(folder),
                filters.min_score,
                filters.platform,
                filters.zone,
                filters.lifecycle_segment,
            )
            return path.name, path.read_bytes()
