"""Crashes and outages: the daily run killed (SIGKILL, the way a lost worker dies) at its boundaries and the
warehouse stopped in the middle of a step; each time, running the interrupted step again and the rest of the day
(what Airflow does for a task whose worker died) leaves every crm table, the export files and the MLflow aliases
exactly as one uninterrupted run of the same day on an identical warehouse.

The day runs through the pipeline's own step functions (the DAG's tasks without Airflow, the scoring shards one
after another), killed after every step up to train_ranker and at a point inside each later one: in
train_offer_model after its model version is registered and before the gate aliases it, in the scoring after its
first shard is staged, and in publish_segments after the crm rows and one export file were written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import psycopg
import pytest
from conftest import new_database
from published_state import assert_same_crm_tables, assert_same_exports, crm_tables, export_files

from ml.pipeline import tasks, tracking
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace
from ml.warehouse import postgres

RUN_DATE = date(2026, 11, 1)
STEPS = (
    "prepare_warehouse",
    "load_events",
    "check_raw_quality",
    "build_marts",
    "check_mart_quality",
    "train_ranker",
    "train_offer_model",
    "score_all_shards",
    "publish_segments",
)

# Runs steps of the day in a process of its own that SIGKILLs itself at the kill point (if any): "after:<step>" once
# the step returned, "offer_registered" when the offer model's gate is about to run (its version is registered, without an
# alias yet), "shard_staged" when the first scoring shard is staged, "publish_committed" when publish_segments has
# written the crm rows and one export file.
DAY_UNTIL_KILLED = """
import os, signal, sys
from datetime import date

from ml import runtime
from ml.settings import Settings

settings = Settings.from_env()
runtime.configure(settings)
from ml.crm import export
from ml.pipeline import tasks, tracking

run_date, kill_point, steps = date.fromisoformat(sys.argv[1]), sys.argv[2], sys.argv[3:]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if kill_point == "offer_registered":
    real_gate = tracking.gate
    tracking.gate = lambda name, *args: die() if name == settings.offer_model_name else real_gate(name, *args)
if kill_point == "shard_staged":
    real_score_shard = tasks.score_shard
    tasks.score_shard = lambda *args: (real_score_shard(*args), die())
if kill_point == "publish_committed":
    real_write = export.write_csv
    export.write_csv = lambda *args: (real_write(*args), die())
for step in steps:
    getattr(tasks, step)(settings, run_date)
    if kill_point == f"after:{step}":
        die()
"""


def _steps_in_a_process_of_their_own(settings: Settings, steps, kill_point: str = "never"):
    environment = {**os.environ, "REKINDLE_HOME": str(settings.home)}
    if settings.warehouse_url:
        environment["REKINDLE_WAREHOUSE_URL"] = settings.warehouse_url
    return subprocess.run(
        [sys.executable, "-c", DAY_UNTIL_KILLED, RUN_DATE.isoformat(), kill_point, *steps],
        env=environment,
        capture_output=True,
        text=True,
    )


def _world(tmp_path_factory, server_url: str | None, name: str) -> Settings:
    """A fresh home with the smallest marketplace that trains both models in its drop folder, on a new database of
    the session's server (``server_url``) or, without one, on an embedded server of its own."""
    home = tmp_path_factory.mktemp(name) / "home"
    url = None
    if server_url:
        url = new_database(server_url, f"faults_{name}")
    settings = Settings.from_env(environ={}, home=home, warehouse_url=url)
    world = generate_marketplace(seed=7, days=30, end_date=RUN_DATE, n_users=700, n_merchants=90)
    world.write(settings.input_dir, ids="uuid")
    return settings


def _run_steps(settings: Settings, steps) -> None:
    for step in steps:
        getattr(tasks, step)(settings, RUN_DATE)


def _aliases(settings: Settings) -> dict[str, dict[str, str]]:
    from mlflow import MlflowClient

    tracking.configure(settings, postgres.start(settings))
    client = MlflowClient()
    return {
        name: {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
        for name in (settings.ranker_model_name, settings.offer_model_name)
    }


def _published(settings: Settings) -> dict:
    return {
        "crm": crm_tables(postgres.start(settings)),
        "exports": export_files(settings.exports_dir),
        "aliases": _aliases(settings),
    }


def _assert_same_day(actual: dict, expected: dict) -> None:
    assert_same_crm_tables(actual["crm"], expected["crm"])
    assert_same_exports(actual["exports"], expected["exports"])
    assert actual["aliases"] == expected["aliases"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, postgres_server_url) -> dict:
    settings = _world(tmp_path_factory, postgres_server_url, "uninterrupted")
    _run_steps(settings, STEPS)
    published = _published(settings)
    assert published["aliases"] == {
        settings.ranker_model_name: {"champion": "1", "challenger": "1"},
        settings.offer_model_name: {"champion": "1", "challenger": "1"},
    }
    assert {"segment_members", "recommendations", "inactive_user_offers"} <= set(published["crm"])
    assert all(len(published["crm"][table]) > 0 for table in ("segment_members", "inactive_user_offers"))
    assert len(published["exports"]) > 5
    return published


# Each kill point, in the order the day reaches them, with the step Airflow runs first afterwards: the killed one
# (its worker died before reporting it finished). The kills inside train_offer_model and the scoring stand for the
# ones after them: the suite pays for every kill point with a process and a step run again.
KILL_POINTS = (
    ("after:prepare_warehouse", "prepare_warehouse"),
    ("after:load_events", "load_events"),
    ("after:check_raw_quality", "check_raw_quality"),
    ("after:build_marts", "build_marts"),
    ("after:check_mart_quality", "check_mart_quality"),
    ("after:train_ranker", "train_ranker"),
    ("offer_registered", "train_offer_model"),
    ("shard_staged", "score_all_shards"),
    ("publish_committed", "publish_segments"),
)


def test_a_day_killed_at_every_boundary_and_resumed_publishes_what_an_uninterrupted_day_does(
    uninterrupted, tmp_path_factory, postgres_server_url
):
    """One warehouse killed again and again: each worker resumes with the task the previous one died in and runs
    on until its own kill point; after the last, the day finishes. Every resumption starts from the state a kill
    left, so a step that could not repeat itself over its own output would show in the end state."""
    settings = _world(tmp_path_factory, postgres_server_url, "killed")
    resume_at = STEPS[0]
    for kill_point, killed_step in KILL_POINTS:
        killed = _steps_in_a_process_of_their_own(settings, STEPS[STEPS.index(resume_at) :], kill_point)
        assert killed.returncode == -9, f"{kill_point}: " + killed.stdout[-2000:] + killed.stderr[-3000:]
        resume_at = killed_step

    _run_steps(settings, STEPS[STEPS.index(resume_at) :])

    _assert_same_day(_published(settings), uninterrupted)


def test_export_files_left_half_written_by_a_killed_run_are_removed_when_the_day_is_exported_again(
    tmp_path, warehouse_url
):
    """write_csv writes beside the final name and renames: a process killed mid-copy leaves its hidden partial file,
    which the next export of the same file clears (a partial of a live process is another export in progress)."""
    from psycopg import sql

    from ml.crm import export

    path = tmp_path / "lapsed_2026-11-01.csv"
    killed_mid_copy = (
        "import os, signal, sys; from pathlib import Path; path = Path(sys.argv[1]); "
        "path.with_name(f'.{path.name}.{os.getpid()}.partial').write_text('user_id,segment\\nu-1,la'); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert subprocess.run([sys.executable, "-c", killed_mid_copy, str(path)]).returncode == -9
    in_progress = tmp_path / f".{path.name}.{os.getppid()}.partial"  # a live writer: pytest's parent
    in_progress.write_text("user_id\n")
    [left_behind] = [p for p in tmp_path.iterdir() if p != in_progress]
    assert left_behind.read_text() == "user_id,segment\nu-1,la"

    with psycopg.connect(warehouse_url) as conn:
        export.write_csv(conn, sql.SQL("SELECT 'u-1' AS user_id, 'lapsed' AS segment"), path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, in_progress.name])
    assert path.read_text() == "user_id,segment\nu-1,lapsed\n"


def test_a_warehouse_stopped_in_the_middle_of_publishing_fails_the_step_clearly_and_a_retry_publishes_the_day(
    uninterrupted, tmp_path_factory, monkeypatch
):
    from ml.crm import publish

    settings = _world(tmp_path_factory, None, "outage")
    try:
        _run_steps(settings, STEPS[:-1])
        real_replace_run = publish.replace_run

        def replace_run_after_the_server_stopped(*args, **kwargs):
            postgres.stop(settings)
            return real_replace_run(*args, **kwargs)

        monkeypatch.setattr(publish, "replace_run", replace_run_after_the_server_stopped)
        with pytest.raises(tasks.WarehouseUnavailableError, match="publish_segments for 2026-11-01 lost the warehouse"):
            tasks.publish_segments(settings, RUN_DATE)
        assert not (settings.warehouse_dir / "postmaster.pid").exists()

        # Airflow's retry, a new task process: it starts the server again.
        retried = _steps_in_a_process_of_their_own(settings, ["publish_segments"])
        assert retried.returncode == 0, retried.stderr[-3000:]

        _assert_same_day(_published(settings), uninterrupted)
    finally:
        postgres.stop(settings)


def test_the_fit_key_follows_recipe_and_rows_not_the_order_a_mart_returns_them_in():
    import pandas as pd

    merchants = pd.DataFrame(
        {"category": ["pizza", "sushi", "thai"], "lat": [25.1, 25.2, 25.3]}, index=["m1", "m2", "m3"]
    )
    key = tracking.fit_key(("ranker", 50), merchants)
    assert tracking.fit_key(("ranker", 50), merchants.iloc[[2, 0, 1]]) == key
    assert tracking.fit_key(("ranker", 2), merchants) != key
    assert tracking.fit_key(("ranker", 50), merchants.assign(lat=[25.1, 25.2, 25.4])) != key
    assert tracking.fit_key(("ranker", 50), merchants.rename(index={"m3": "m4"})) != key
