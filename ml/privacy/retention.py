"""Retention: raw events older than ``raw_retention_days`` are deleted by the daily load (``tasks.load_events``);
crm rows older than ``crm_retention_days`` by the daily publish (``ml.crm.publish.drop_expired``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import psycopg


def raw_events_cutoff(run_date: date, retention_days: int) -> datetime:
    """Events before this instant (run_date 00:00 UTC minus ``retention_days``, at least 1: ``Settings``) are past
    retention."""
    return datetime.combine(run_date - timedelta(days=retention_days), time.min, tzinfo=UTC)


# dbt's incremental staging keeps its own copy of each raw event (stg_events_classified); it goes with the raw row.
STAGED_EVENTS = "staging.stg_events_classified"


def purge_raw_events(conn: psycopg.Connection, run_date: date, retention_days: int) -> int:
    """Delete ``raw.events`` older than the cutoff, and their staged copies; returns the raw rows deleted. The
    BRIN index on event_time (the index on event_date in staging) finds them without reading the newer blocks."""
    if conn.execute("SELECT to_regclass('raw.events')").fetchone()[0] is None:
        return 0
    cutoff = raw_events_cutoff(run_date, retention_days)
    with conn.transaction():
        deleted = conn.execute("DELETE FROM raw.events WHERE event_time < %s", (cutoff,)).rowcount
        if _staged_by_day(conn):
            conn.execute(f"DELETE FROM {STAGED_EVENTS} WHERE event_date < %s", (cutoff.date(),))
    return deleted


def _staged_by_day(conn: psycopg.Connection) -> bool:
    """Whether the staged copy exists with its event_date (a warehouse built before incremental staging has no
    such column; its next dbt build re-classifies every day anyway)."""
    schema, table = STAGED_EVENTS.split(".")
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = 'event_date')",
        (schema, table),
    ).fetchone()[0]
