"""Erasure: ``forget_users`` removes users from every place the project writes them, in one command.

Where a user's rows live, and how each place is cleaned:

* the warehouse: every base table of ``ERASABLE_SCHEMAS`` with a user id column (found through
  information_schema, so a table added later is covered without a change here) loses the users' rows, and
  ``raw.quarantine`` the records naming them; dbt's views follow ``raw``. All in one transaction, together with the
  tombstones (``ops.erased_users``) that keep ingest from loading them again, and the audit rows;
* the CSV exports: every file with a user id column is rewritten without the users' rows (``exports``);
* the running API: every worker drops the users' cached answers and session events (``ml.serving.channel``);
* the registered ranker: its pickled recommender holds per-user rows (interaction matrix, ALS user factors, the
  ranker's history), so each aliased version is refitted without them and registered under the same aliases, and
  every other version that holds them is deleted with its artifacts (``models``).

The audit (``ops.erasure_audit``) records per request and place how many rows went, never the ids.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from ml.crm import publish
from ml.privacy import exports, models, tombstones
from ml.privacy.columns import USER_ID_COLUMN_PATTERN
from ml.serving import channel
from ml.settings import Settings
from ml.warehouse import postgres
from ml.warehouse.contract import ID_MAX_LENGTH

log = logging.getLogger(__name__)

# The schemas the pipeline writes users into (mlflow holds models, not rows; see ``models``).
ERASABLE_SCHEMAS = ("raw", "staging", "intermediate", "marts", "crm", "ops")
# raw.quarantine keeps the refused rows as they came, as JSON: their user is the record's user_id.
QUARANTINE = "raw.quarantine"


@dataclass
class ErasureReport:
    """What one request removed: rows per place (``schema.table``, ``exports/<file>``, ``mlflow:<model> ...``)."""

    request_id: str
    users: int
    erased_at: datetime
    rows_removed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows_removed.values())

    def as_dict(self) -> dict:
        return {
            "request_id": self.request_id,
            "users": self.users,
            "erased_at": self.erased_at.isoformat(),
            "rows_removed": dict(self.rows_removed),
            "total_rows": self.total_rows,
            "seconds": round(self.seconds, 2),
        }


def clean_user_ids(user_ids) -> list[str]:
    """The ids as the warehouse holds them (trimmed text), each once; a clear error for an id that cannot be one."""
    cleaned = []
    for position, value in enumerate(user_ids, start=1):
        text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else None
        if not text:
            raise ValueError(f"user id #{position} is empty or not text: a user id is a non-empty string")
        if len(text) > ID_MAX_LENGTH:
            raise ValueError(f"user id #{position} is longer than {ID_MAX_LENGTH} characters: no user has it")
        cleaned.append(text)
    if not cleaned:
        raise ValueError("no user id given: name at least one user to forget")
    return list(dict.fromkeys(cleaned))


def forget_users(settings: Settings, user_ids, request_id: str | None = None) -> ErasureReport:
    """Remove ``user_ids`` from the warehouse, the exports and the registered ranker, tombstone them and audit it.

    Idempotent: forgetting a user again removes nothing more (and re-registers nothing when no model holds them).
    ``request_id`` names the request in the audit (a new UUID when None).
    """
    ids = clean_user_ids(user_ids)
    request_id = (request_id or uuid.uuid4().hex).strip()
    if not request_id:
        raise ValueError("request_id is empty: give the erasure request's id, or None for a generated one")
    started = time.perf_counter()
    report = ErasureReport(request_id=request_id, users=len(ids), erased_at=datetime.now(UTC))
    salt = tombstones.erasure_salt(settings)
    url = postgres.start(settings)
    with psycopg.connect(url) as conn:
        tombstones.ensure_tables(conn)
        with conn.transaction():
            tombstones.hold_erasure_lock(conn)
            if conn.execute("SELECT to_regclass('ops.scored_shards')").fetchone()[0] is not None:
                publish.uncount_staged(conn, ids)
            report.rows_removed.update(delete_rows(conn, ids))
            conn.cursor().executemany(
                "INSERT INTO ops.erased_users (user_hash, request_id, erased_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (user_hash) DO NOTHING",
                [(tombstones.user_hash(salt, user_id), request_id, report.erased_at) for user_id in ids],
            )
            _audit(conn, report, report.rows_removed)
            # Running API workers drop the users' cached answers and sessions when this commits.
            channel.notify_forgotten(conn, ids)
    # Files and models after the commit: the tombstones are in place, so a run loading meanwhile cannot bring the
    # users back, and a failure here leaves a request that can simply be run again.
    file_rows = exports.remove_users(settings.exports_dir, set(ids))
    model_rows = models.remove_users(settings, url, ids, request_id)
    report.rows_removed.update(file_rows)
    report.rows_removed.update(model_rows)
    with psycopg.connect(url) as conn:
        _audit(conn, report, {**file_rows, **model_rows})
    report.seconds = time.perf_counter() - started
    log.info(
        "erasure request %s: %d user(s), %d row(s) removed from %d place(s) in %.1fs",
        request_id,
        report.users,
        report.total_rows,
        sum(1 for rows in report.rows_removed.values() if rows),
        report.seconds,
    )
    return report


def user_id_columns(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(schema, table, column) of every base table of ``ERASABLE_SCHEMAS`` with a user id column."""
    return conn.execute(
        """SELECT c.table_schema::text, c.table_name::text, c.column_name::text
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = ANY(%s) AND t.table_type = 'BASE TABLE' AND c.column_name ~ %s
           ORDER BY 1, 2, 3""",
        (list(ERASABLE_SCHEMAS), USER_ID_COLUMN_PATTERN),
    ).fetchall()


def delete_rows(conn: psycopg.Connection, user_ids: list[str]) -> dict[str, int]:
    """Delete the users' rows from every table with a user id column and their quarantined records; call inside
    a transaction. Rows deleted per ``schema.table`` (every table looked at, 0 included)."""
    removed: dict[str, int] = {}
    for schema, table, column in user_id_columns(conn):
        name = f"{schema}.{table}"
        # A user id column of another type (an integer surrogate) cannot hold a text id: compare as text.
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {}::text = ANY(%s)").format(
                sql.Identifier(schema, table), sql.Identifier(column)
            ),
            (user_ids,),
        ).rowcount
        removed[name] = removed.get(name, 0) + deleted
    if conn.execute("SELECT to_regclass(%s)", (QUARANTINE,)).fetchone()[0] is not None:
        removed[QUARANTINE] = removed.get(QUARANTINE, 0) + (
            conn.execute("DELETE FROM raw.quarantine WHERE btrim(record ->> 'user_id') = ANY(%s)", (user_ids,)).rowcount
        )
    return removed


def _audit(conn: psycopg.Connection, report: ErasureReport, rows_removed: dict[str, int]) -> None:
    """One audit row per place; a request run again adds to its rows."""
    conn.cursor().executemany(
        """INSERT INTO ops.erasure_audit (request_id, erased_at, users, location, rows_removed)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (request_id, location) DO UPDATE
           SET rows_removed = ops.erasure_audit.rows_removed + EXCLUDED.rows_removed, erased_at = EXCLUDED.erased_at""",
        [
            (report.request_id, report.erased_at, report.users, location, rows)
            for location, rows in rows_removed.items()
        ],
    )
