"""Least privilege: one login role per reader of the warehouse, each allowed only what it needs.

| role | setting | may |
|---|---|---|
| CRM | ``crm_reader_role`` | SELECT on ``crm`` (``ml.crm.segments.ensure_reader_role``) |
| dashboard | ``dashboard_role`` | SELECT on ``crm`` and ``marts`` |
| API | ``api_role`` | SELECT on ``crm`` and ``marts``; INSERT into ``raw.events`` and ``raw.quarantine`` (``ml.serving.role``) |
| pipeline | the warehouse URL's user | owns every schema: ingest, dbt, training, publishing, erasure |

The daily publish creates them (``ensure_roles``, idempotent: every run starts each role from nothing and grants
exactly this), and so does ``rekindle roles``.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ml.crm.segments import _ensure_login_role, ensure_reader_role, read_grants
from ml.serving.role import ensure_api_role
from ml.settings import Settings

DASHBOARD_SCHEMAS = ("crm", "marts")


def ensure_roles(conn: psycopg.Connection, settings: Settings) -> dict[str, str]:
    """Create or reset the CRM, dashboard and API roles; needs CREATEROLE and ownership of the schemas. Returns
    each reader's role name, and the pipeline's (the connection's user)."""
    ensure_reader_role(conn, settings)
    ensure_dashboard_role(conn, settings)
    ensure_api_role(conn, settings)
    return {
        "crm": settings.crm_reader_role,
        "dashboard": settings.dashboard_role,
        "api": settings.api_role,
        "pipeline": conn.info.user,
    }


def ensure_dashboard_role(conn: psycopg.Connection, settings: Settings) -> None:
    """The dashboard's login role: reads every table in ``crm`` and ``marts`` (also later ones: dbt re-creates the
    marts on every build, as the role running this) and nothing else."""
    role = sql.Identifier(settings.dashboard_role)
    _ensure_login_role(conn, settings.dashboard_role, settings.dashboard_role_password)
    statements = [
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), role),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(role),
    ]
    statements += [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(s)) for s in DASHBOARD_SCHEMAS]
    statements += read_grants(role, DASHBOARD_SCHEMAS)
    for statement in statements:
        conn.execute(statement)
