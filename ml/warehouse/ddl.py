"""The tables the Python side owns, created from ``ml/warehouse/schema/<schema>.sql`` (dbt owns the rest).

Every file is idempotent (``CREATE ... IF NOT EXISTS``): ``ensure`` can run before every write. It also upgrades
a warehouse made when user and merchant ids were ``bigint``: their columns become ``text`` in place.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SCHEMAS = ("raw", "ops", "crm")
# A column holding a user's or a merchant's id: user_id, merchant_id, recommended_merchant_id, ... (a regex).
ID_COLUMN_PATTERN = r"(^|_)(user|merchant)_id$"


@cache
def schema_sql(schema: str) -> str:
    """The DDL of one schema, from its file."""
    if schema not in SCHEMAS:
        raise ValueError(f"no DDL for schema {schema!r}; known: {', '.join(SCHEMAS)}")
    return resources.files("ml.warehouse").joinpath(f"schema/{schema}.sql").read_text()


def ensure(conn: psycopg.Connection, *schemas: str) -> None:
    """Create the tables of ``schemas`` (every schema the Python side owns when none is given) if missing."""
    for schema in schemas or SCHEMAS:
        conn.execute(schema_sql(schema))
        ids_to_text(conn, schema)


def ids_to_text(conn: psycopg.Connection, schema: str) -> None:
    """Turn the integer id columns of ``schema``'s tables into text, keeping their values (42 becomes "42").

    Once done, it only costs one catalog query. Views on a converted table (dbt's staging views on ``raw``) would
    block the change; they are dropped, and the next ``dbt build`` creates them again.
    """
    tables = conn.execute(
        """SELECT c.oid::regclass::text, array_agg(a.attname::text ORDER BY a.attnum)
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.attname ~ %s
             AND a.atttypid IN ('bigint'::regtype, 'integer'::regtype, 'smallint'::regtype)
           GROUP BY c.oid""",
        (schema, ID_COLUMN_PATTERN),
    ).fetchall()
    for table, columns in tables:
        views = conn.execute(
            """SELECT DISTINCT v.oid::regclass::text, v.relkind = 'm'
               FROM pg_depend d
               JOIN pg_rewrite r ON r.oid = d.objid
               JOIN pg_class v ON v.oid = r.ev_class
               WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %s::regclass AND v.oid <> d.refobjid""",
            (table,),
        ).fetchall()
        for view, materialized in views:
            log.warning("dropping view %s: it reads %s, whose id columns become text (dbt recreates it)", view, table)
            drop = "DROP MATERIALIZED VIEW IF EXISTS {} CASCADE" if materialized else "DROP VIEW IF EXISTS {} CASCADE"
            conn.execute(sql.SQL(drop).format(sql.SQL(view)))
        log.warning("converting the id columns %s of %s from integers to text", ", ".join(columns), table)
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(
                sql.SQL(table),
                sql.SQL(", ").join(
                    sql.SQL("ALTER COLUMN {column} TYPE text USING {column}::text").format(column=sql.Identifier(c))
                    for c in columns
                ),
            )
        )
