"""CSV exports of what was published to ``crm``: the one CSV writer, used by the daily publish and ``rekindle export``.

A day's files are ``{segment}_{run_date}.csv`` in the exports folder: one per CRM segment table
(``crm.high_affinity_prospects`` ...) and one per scored lifecycle segment (``crm.segment_members``). An ad-hoc
export with filters carries them in its name (``{segment}_{run_date}_min-score-0.9_platform-ios.csv``), so it
never replaces the day's full file.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import psycopg
from psycopg import sql

from ml.crm import segments
from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS
from ml.settings import Settings
from ml.warehouse.marts import MARKETABLE_USERS_SQL

# The seed's export format: these, then export_date (the run_date), then the segment's own fields.
LEADING_FIELDS = ("user_id", "segment", "recommended_merchant_id", "recommended_merchant_name", "score")
# The scored lifecycle segments' files (crm.segment_members).
MEMBER_FIELDS = ("user_id", "segment", "rank", "merchant_id", "merchant_name", "score", "run_date", "model_version")


# What can be exported: a CRM segment table, or a scored lifecycle segment's members (crm.segment_members).
EXPORTABLE_SEGMENTS = (*segments.SEGMENTS, *LIFECYCLE_SEGMENTS)


class UnknownSegmentError(ValueError):
    def __init__(self, segment: str):
        super().__init__(
            f"unknown segment {segment!r}; valid segments: {', '.join(segments.SEGMENTS)}, or a scored lifecycle "
            f"segment ({', '.join(LIFECYCLE_SEGMENTS)}: crm.segment_members)"
        )


def export_path(exports_dir: Path, segment: str, run_date: date, **filters) -> Path:
    """``{segment}_{run_date}.csv``, the day's full export; each filter given (not None) adds
    ``_{name}-{value}`` (``min_score=0.9`` -> ``_min-score-0.9``), so a filtered file has a name of its own."""
    tags = "".join(f"_{name.replace('_', '-')}-{_slug(value)}" for name, value in filters.items() if value is not None)
    return exports_dir / f"{segment}_{run_date.isoformat()}{tags}.csv"


def _slug(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "blank"


def write_csv(conn: psycopg.Connection, query: sql.Composable, path: Path) -> Path:
    """Stream ``query``'s rows as CSV with a header into ``path``: written beside its final name and renamed
    into place, so a reader never sees half a file and an export run again replaces it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_partials_of_dead_writers(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    copy_sql = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query)
    try:
        with partial.open("wb") as out, conn.cursor() as cur:
            with cur.copy(copy_sql) as copy:
                for chunk in copy:
                    out.write(chunk)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _remove_partials_of_dead_writers(path: Path) -> None:
    """A writer killed mid-copy (SIGKILL skips ``finally``) leaves its partial file behind; one whose process
    still runs is another export of the same file in progress."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name[len(path.name) + 2 : -len(".partial")]
        if pid.isdigit() and not _running(int(pid)):
            partial.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def export_segment(
    conn: psycopg.Connection,
    segment: str,
    run_date: date,
    exports_dir: Path,
    min_score: float | None = None,
    platform: str | None = None,
    zone: str | None = None,
    lifecycle_segment: str | None = None,
) -> Path:
    """Write run_date's rows of one segment for the users marketing may reach as of now
    (``marts.MARKETABLE_USERS_SQL``): a CRM segment table (``crm.high_affinity_prospects`` ...) or a scored lifecycle
    segment's members (``crm.segment_members``: ``lapsed``, ``dormant``). Optionally only score >= min_score (the
    tables' scores, 0-1), the user's platform / zone (a segment table's own columns; for members,
    ``marts.user_features``) and the user's lifecycle segment in the latest marts build. With filters the file name
    carries them (see ``export_path``)."""
    if segment not in EXPORTABLE_SEGMENTS:
        raise UnknownSegmentError(segment)
    if min_score is not None and segment not in segments.SEGMENTS:
        raise ValueError(
            f"--min-score filters the segment tables' scores (0-1); {segment}'s members carry the ranker's own "
            "scores, which have no fixed scale"
        )
    path = export_path(
        exports_dir,
        segment,
        run_date,
        min_score=min_score,
        platform=platform,
        zone=zone,
        lifecycle_segment=lifecycle_segment,
    )
    # COPY takes no bind parameters: values are quoted client-side as literals.
    filters = [
        sql.SQL("run_date = {}").format(sql.Literal(run_date)),
        sql.SQL("user_id IN ({})").format(sql.SQL(MARKETABLE_USERS_SQL)),
    ]
    if min_score is not None:
        filters.append(sql.SQL("score >= {}").format(sql.Literal(min_score)))
    if lifecycle_segment is not None:
        filters.append(
            sql.SQL("user_id IN (SELECT user_id FROM marts.user_segments WHERE lifecycle_segment = {})").format(
                sql.Literal(lifecycle_segment)
            )
        )
    if segment in segments.SEGMENTS:
        query = _segment_sql(segments.SEGMENTS[segment], filters, platform, zone)
    else:
        query = _members_sql(segment, filters, platform, zone)
    return write_csv(conn, query, path)


def _segment_sql(
    segment: segments.Segment, filters: list[sql.Composable], platform: str | None, zone: str | None
) -> sql.Composed:
    columns = [
        *(sql.Identifier(name) for name in LEADING_FIELDS),
        sql.SQL("run_date AS export_date"),
        *(sql.Identifier(name) for name in segment.field_names),
    ]
    own = [
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value))
        for column, value in (("platform", platform), ("home_zone", zone))
        if value is not None
    ]
    return sql.SQL(
        "SELECT {columns} FROM {table} WHERE {filters} ORDER BY user_id, score DESC, recommended_merchant_id"
    ).format(
        columns=sql.SQL(", ").join(columns),
        table=sql.Identifier("crm", segment.name),
        filters=sql.SQL(" AND ").join([*filters, *own]),
    )


def _members_sql(segment: str, filters: list[sql.Composable], platform: str | None, zone: str | None) -> sql.Composed:
    own = [sql.SQL("segment = {}").format(sql.Literal(segment))] + [
        sql.SQL("user_id IN (SELECT user_id FROM marts.user_features WHERE {} = {})").format(
            sql.Identifier(column), sql.Literal(value)
        )
        for column, value in (("platform", platform), ("home_zone", zone))
        if value is not None
    ]
    return sql.SQL("SELECT {columns} FROM crm.segment_members WHERE {filters} ORDER BY user_id, rank").format(
        columns=sql.SQL(", ").join(map(sql.Identifier, MEMBER_FIELDS)),
        filters=sql.SQL(" AND ").join([*filters, *own]),
    )


def export_scored_segments(conn: psycopg.Connection, run_date: date, exports_dir: Path) -> dict[str, Path]:
    """One file per lifecycle segment published to ``crm.segment_members`` on run_date, of the users marketing
    may reach as of now."""
    names = [
        name
        for (name,) in conn.execute(
            "SELECT DISTINCT segment FROM crm.segment_members WHERE run_date = %s ORDER BY segment", (run_date,)
        )
    ]
    return {name: export_segment(conn, name, run_date, exports_dir) for name in names}


def export_all(conn: psycopg.Connection, run_date: date, settings: Settings) -> dict[str, Path]:
    """The day's files in ``settings.exports_dir``: every scored lifecycle segment with members, and every CRM
    segment table, empty ones included (a header only)."""
    paths = export_scored_segments(conn, run_date, settings.exports_dir)
    paths.update({name: export_segment(conn, name, run_date, settings.exports_dir) for name in segments.SEGMENTS})
    return paths


def is_published(conn: psycopg.Connection, run_date: date) -> bool:
    """Whether ``crm.recommendations`` holds run_date's publication (publishing deletes those past the retention)."""
    query = "SELECT EXISTS (SELECT 1 FROM crm.recommendations WHERE run_date = %s)"
    return conn.execute(query, (run_date,)).fetchone()[0]


def latest_run_date(conn: psycopg.Connection) -> date | None:
    """The newest run_date published to ``crm.recommendations`` (every segment is refreshed with it)."""
    if conn.execute("SELECT to_regclass('crm.recommendations')").fetchone()[0] is None:
        return None
    return conn.execute("SELECT max(run_date) FROM crm.recommendations").fetchone()[0]
