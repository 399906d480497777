"""Retention: raw events older than ``raw_retention_days`` are deleted by the daily load (``tasks.load_events``);
crm rows older than ``crm_retention_days`` by the daily publish (``ml.crm.publish.drop_expired``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import psycopg


def raw_events_cutoff(run_date: date, retention_days: int) -> datetime:
    """Events before this instant (run_date 00:00 UTC minus ``retention_days``) are past retention."""
    if retention_days < 1:
        raise ValueError(f"raw_retention_days must be at least 1, got {retention_days}")
    return datetime.combine(run_date - timedelta(days=retention_days), time.min, tzinfo=UTC)


def purge_raw_events(conn: psycopg.Connection, run_date: date, retention_days: int) -> int:
    """Delete ``raw.events`` older than the cutoff; returns the rows deleted. The BRIN index on event_time finds
    them without reading the newer blocks."""
    if conn.execute("SELECT to_regclass('raw.events')").fetchone()[0] is None:
        return 0
    return conn.execute(
        "DELETE FROM raw.events WHERE event_time < %s", (raw_events_cutoff(run_date, retention_days),)
    ).rowcount
