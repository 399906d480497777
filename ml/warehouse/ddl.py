"""The tables the Python side owns, created from ``ml/warehouse/schema/<schema>.sql`` (dbt owns the rest).

Every file is idempotent (``CREATE ... IF NOT EXISTS``): ``ensure`` can run before every write.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import psycopg

SCHEMAS = ("raw", "ops", "crm")


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
