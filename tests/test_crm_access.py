"""The CRM reader role, connecting as it to the real embedded Postgres: reads crm, nothing else, writes nothing.

Roles are cluster-wide and every test database lives on the same server, so these tests also show that
``ensure_reader_role`` can be called again, and from another database.
"""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from conftest import new_database
from psycopg import errors

from ml.crm import segments
from ml.settings import Settings

OTHER_SCHEMAS = ("raw", "staging", "intermediate", "marts", "mlflow", "ops")
READER = Settings().crm_reader_role


def _build_warehouse(url: str, settings: Settings) -> str:
    """crm tables with a row, and one table with a row in each of the schemas the reader must not see."""
    with psycopg.connect(url) as conn:
        for schema in OTHER_SCHEMAS:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.secrets AS SELECT 1 AS id")
        conn.execute("CREATE TABLE public.secrets AS SELECT 1 AS id")
        segments.ensure_tables(conn)
        conn.execute(
            "INSERT INTO crm.recommendations VALUES ('2026-11-01', 1, 'winback', 1, 10, 'Pizza Place', 0.9, NULL, '1')"
        )
        segments.ensure_reader_role(conn, settings)
    return url


@pytest.fixture(scope="module")
def probed_warehouse(postgres_server_url) -> str:
    """One database for the many probes that only read, or try (and fail) to change it."""
    url = new_database(postgres_server_url, "crm_access")
    return _build_warehouse(url, Settings.from_env(environ={}))


def _as_reader(url: str, role: str = READER) -> psycopg.Connection:
    return psycopg.connect(url, user=role, autocommit=True)


def test_reader_can_select_every_crm_table(probed_warehouse):
    with _as_reader(probed_warehouse) as reader:
        assert reader.execute("SELECT user_id, merchant_name FROM crm.recommendations").fetchall() == [
            ("1", "Pizza Place")
        ]
        for table in ["segment_members", *segments.SEGMENTS]:
            assert reader.execute(f"SELECT count(*) FROM crm.{table}").fetchone() == (0,)


@pytest.mark.parametrize("schema", [*OTHER_SCHEMAS, "public"])
def test_reader_cannot_read_outside_crm(probed_warehouse, schema):
    with _as_reader(probed_warehouse) as reader, pytest.raises(errors.InsufficientPrivilege):
        reader.execute(f"SELECT * FROM {schema}.secrets")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO crm.recommendations VALUES ('2026-11-02', 2, 'winback', 1, 10, 'Pizza Place', 0.5, NULL, '1')",
        "UPDATE crm.recommendations SET score = 0",
        "DELETE FROM crm.recommendations",
        "TRUNCATE crm.lapsed_personalised",
        "CREATE TABLE crm.mine (id int)",
        "CREATE TABLE public.mine (id int)",
        "DROP TABLE crm.recommendations",
    ],
)
def test_reader_cannot_change_anything(probed_warehouse, statement):
    with _as_reader(probed_warehouse) as reader, pytest.raises(errors.InsufficientPrivilege):
        reader.execute(statement)


def test_reader_can_select_crm_tables_created_later(warehouse_url, settings):
    _build_warehouse(warehouse_url, settings)
    with psycopg.connect(warehouse_url) as owner:
        owner.execute("CREATE TABLE crm.added_later AS SELECT 7 AS user_id")

    with _as_reader(warehouse_url) as reader:
        assert reader.execute("SELECT user_id FROM crm.added_later").fetchall() == [(7,)]


def test_role_is_a_plain_login_role_and_setup_is_idempotent(warehouse_url, settings, postgres_server_url):
    _build_warehouse(warehouse_url, settings)
    other_database = new_database(postgres_server_url, "crm_access_other")

    for url in (warehouse_url, other_database, warehouse_url):
        with psycopg.connect(url) as conn:
            segments.ensure_reader_role(conn, settings)

    with psycopg.connect(warehouse_url) as conn:
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            (READER,),
        ).fetchall()
    assert attributes == [(True, False, False, False, False, False)]
    with _as_reader(warehouse_url) as reader:
        assert reader.execute("SELECT count(*) FROM crm.recommendations").fetchone() == (1,)


def test_password_is_set_when_configured_and_removed_when_empty(warehouse_url, settings):
    with_password = dataclasses.replace(
        settings, crm_reader_role="rekindle_crm_reader_pw", crm_reader_password="s3cret"
    )

    def password_hash(conn: psycopg.Connection):
        return conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (with_password.crm_reader_role,)
        ).fetchone()[0]

    with psycopg.connect(warehouse_url) as conn:
        segments.ensure_reader_role(conn, with_password)
        assert password_hash(conn).startswith("SCRAM-SHA-256$")
        segments.ensure_reader_role(conn, dataclasses.replace(with_password, crm_reader_password=""))
        assert password_hash(conn) is None
