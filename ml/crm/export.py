"""CSV exports of the CRM segment tables (``{segment}_{run_date}.csv``) and ``rekindle export``."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import psycopg
from psycopg import sql

from ml.crm import segments
from ml.settings import Settings
from ml.warehouse.marts import MARKETABLE_USERS_SQL

# The seed's export format: these, then export_date (the run_date), then the segment's own fields.
LEADING_FIELDS = ("user_id", "segment", "recommended_merchant_id", "recommended_merchant_name", "score")


class UnknownSegmentError(ValueError):
    def __init__(self, segment: str):
        super().__init__(f"unknown segment {segment!r}; valid segments: {', '.join(segments.SEGMENTS)}")


def export_path(exports_dir: Path, segment: str, run_date: date) -> Path:
    return exports_dir / f"{segment}_{run_date.isoformat()}.csv"


def export_segment(
    conn: psycopg.Connection,
    segment: str,
    run_date: date,
    exports_dir: Path,
    min_score: float | None = None,
    platform: str | None = None,
    zone: str | None = None,
) -> Path:
    """Write run_date's rows of one segment for the users marketing may reach as of now
    (``marts.MARKETABLE_USERS_SQL``), optionally only score >= min_score and the user's platform / zone.

    The file is written beside its final name and renamed into place, so a reader never sees half of it.
    """
    if segment not in segments.SEGMENTS:
        raise UnknownSegmentError(segment)
    exports_dir.mkdir(parents=True, exist_ok=True)
    path = export_path(exports_dir, segment, run_date)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out, conn.cursor() as cur:
            with cur.copy(_copy_sql(segments.SEGMENTS[segment], run_date, min_score, platform, zone)) as copy:
                for chunk in copy:
                    out.write(chunk)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _copy_sql(
    segment: segments.Segment,
    run_date: date,
    min_score: float | None,
    platform: str | None,
    zone: str | None,
) -> sql.Composed:
    columns = [
        *(sql.Identifier(name) for name in LEADING_FIELDS),
        sql.SQL("run_date AS export_date"),
        *(sql.Identifier(name) for name in segment.field_names),
    ]
    # COPY takes no bind parameters: values are quoted client-side as literals.
    filters = [
        sql.SQL("run_date = {}").format(sql.Literal(run_date)),
        sql.SQL("user_id IN ({})").format(sql.SQL(MARKETABLE_USERS_SQL)),
    ]
    if min_score is not None:
        filters.append(sql.SQL("score >= {}").format(sql.Literal(min_score)))
    if platform is not None:
        filters.append(sql.SQL("platform = {}").format(sql.Literal(platform)))
    if zone is not None:
        filters.append(sql.SQL("home_zone = {}").format(sql.Literal(zone)))
    return sql.SQL(
        "COPY (SELECT {columns} FROM {table} WHERE {filters} ORDER BY user_id, score DESC, recommended_merchant_id) "
        "TO STDOUT WITH (FORMAT csv, HEADER)"
    ).format(
        columns=sql.SQL(", ").join(columns),
        table=sql.Identifier("crm", segment.name),
        filters=sql.SQL(" AND ").join(filters),
    )


def export_all(conn: psycopg.Connection, run_date: date, settings: Settings) -> dict[str, Path]:
    """One file per segment table, empty segments included (a header only), in ``settings.exports_dir``."""
    return {name: export_segment(conn, name, run_date, settings.exports_dir) for name in segments.SEGMENTS}


def latest_run_date(conn: psycopg.Connection) -> date | None:
    """The newest run_date published to ``crm.recommendations`` (every segment is refreshed with it)."""
    if conn.execute("SELECT to_regclass('crm.recommendations')").fetchone()[0] is None:
        return None
    return conn.execute("SELECT max(run_date) FROM crm.recommendations").fetchone()[0]
