"""The API's least-privilege login role: reads ``crm`` and ``marts``, inserts into ``raw.events`` and
``raw.quarantine``, nothing else (the pattern of ``ml.crm.segments.ensure_reader_role``)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ml.crm.segments import _ensure_login_role, read_grants
from ml.settings import Settings
from ml.warehouse import ddl
from ml.warehouse.postgres import login_url

READ_SCHEMAS = ("crm", "marts")


def ensure_api_role(conn: psycopg.Connection, settings: Settings) -> None:
    """Create or reset the role and its grants; idempotent. Needs CREATEROLE and ownership of the schemas.

    marts tables are re-created by every dbt build: the default privileges of the role running this (the
    pipeline's owner, who runs dbt) make them readable again as they are created."""
    ddl.ensure(conn, "raw")
    ddl.ensure(conn, "crm")
    role = sql.Identifier(settings.api_role)
    _ensure_login_role(conn, settings.api_role, settings.api_role_password)
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS marts"),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), role),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(role),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA raw FROM {}").format(role),
        sql.SQL("REVOKE ALL ON SCHEMA raw FROM {}").format(role),
        sql.SQL("GRANT USAGE ON SCHEMA raw TO {}").format(role),
        sql.SQL("GRANT INSERT ON raw.events, raw.quarantine TO {}").format(role),
        # INSERT ... ON CONFLICT (key) names the key columns, RETURNING reads event_id: those columns only.
        sql.SQL("GRANT SELECT (event_id) ON raw.events TO {}").format(role),
        sql.SQL("GRANT SELECT (table_name, source_file, row_number) ON raw.quarantine TO {}").format(role),
        sql.SQL("GRANT USAGE ON SEQUENCE raw.quarantine_quarantine_id_seq TO {}").format(role),
    ]
    statements += read_grants(role, READ_SCHEMAS)
    for statement in statements:
        conn.execute(statement)


def api_role_url(owner_url: str, settings: Settings) -> str:
    """The warehouse's connection string with the API role as the user."""
    return login_url(owner_url, settings.api_role, settings.api_role_password)
