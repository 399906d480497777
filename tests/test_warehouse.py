"""The embedded warehouse's lifecycle and the settings object it is configured by."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ml.settings import Settings, redact
from ml.warehouse import postgres


def test_embedded_warehouse_starts_once_serves_the_project_database_stops_and_starts_again(tmp_path):
    settings = Settings.from_env(environ={}, home=tmp_path / "home")
    url = postgres.start(settings)
    try:
        assert postgres.start(settings) == url  # already running: same server, same database
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (postgres.DATABASE,)
            # Text ids compare byte-wise (the builtin provider), in code point order.
            locale = "SELECT datlocprovider, datlocale FROM pg_database WHERE datname = current_database()"
            assert conn.execute(locale).fetchone() == ("b", postgres.BUILTIN_LOCALE)
            assert conn.execute(
                "SELECT array_agg(v ORDER BY v) FROM unnest(ARRAY['b', 'é', 'B', 'a']) v"
            ).fetchone() == (["B", "a", "b", "é"],)
            assert conn.execute("SELECT upper('é')").fetchone() == ("É",)
        assert (settings.warehouse_dir / "PG_VERSION").exists()
        # Stopped under this process (an operator, a crash): the next start in the same process brings it back.
        assert postgres.stop(settings) is True
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url).close()
        url = postgres.start(settings)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (postgres.DATABASE,)
    finally:
        assert postgres.stop(settings) is True
    assert postgres.stop(settings) is False


def test_an_external_warehouse_url_is_used_as_given_and_never_stopped():
    settings = Settings.from_env(environ={"REKINDLE_WAREHOUSE_URL": "postgresql://u:secret@db.example/rekindle"})
    assert postgres.start(settings) == "postgresql://u:secret@db.example/rekindle"
    with pytest.raises(RuntimeError, match="external Postgres"):
        postgres.stop(settings)


def test_settings_come_from_prefixed_environment_variables_with_clear_errors():
    settings = Settings.from_env(
        environ={
            "REKINDLE_SEED": "7",
            "REKINDLE_CAMPAIGN_BUDGET": "500.5",
            "REKINDLE_SCORE_SEGMENTS": "lapsed, churned",
            "REKINDLE_HOME": "/tmp/somewhere",
        }
    )
    assert (settings.seed, settings.campaign_budget, settings.score_segments) == (7, 500.5, ("lapsed", "churned"))
    assert settings.home == Path("/tmp/somewhere") and settings.input_dir == Path("/tmp/somewhere/data/incoming")
    with pytest.raises(ValueError, match="REKINDLE_SEED='many' is not a valid int"):
        Settings.from_env(environ={"REKINDLE_SEED": "many"})


def test_passwords_are_redacted_for_printing():
    assert redact("postgresql://crm:hunter2@db:5432/rekindle") == "postgresql://crm:***@db:5432/rekindle"
    assert postgres.sqlalchemy_url("postgresql://u@/db?host=/tmp/s") == "postgresql+psycopg://u@/db?host=/tmp/s"
