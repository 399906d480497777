"""Sharded scoring on the embedded Postgres with a real @champion ranker: score_shard stages one user hash bucket
each, publish_segments swaps all of them into crm. Four shards publish exactly what one shard does and what
scoring every user at once does; a shard scored again replaces its staged rows; a missing or stale shard stops
publishing with a clear error and leaves crm as it was."""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import new_database
from published_state import assert_same_crm_tables, assert_same_exports, crm_tables, export_files

from ml.crm import publish
from ml.pipeline import tasks, tracking
from ml.pipeline.airflow import ProgressView
from ml.pipeline.summary import key_figure
from ml.privacy import consent
from ml.recommend.modes import MODES
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace
from ml.warehouse import marts

RUN_DATE = date(2026, 11, 1)


def test_a_users_shard_depends_on_its_id_and_the_shard_count_only():
    ids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(4000)]

    shards = publish.shard_of(ids, 4)

    assert set(shards.tolist()) == {0, 1, 2, 3}
    assert np.bincount(shards).min() > 0.2 * len(ids)  # about a quarter each
    np.testing.assert_array_equal(publish.shard_of(ids[::-1], 4), shards[::-1])
    np.testing.assert_array_equal(publish.shard_of(ids[:10], 4), shards[:10])
    assert publish.shard_of([42], 4).tolist() == publish.shard_of(["42"], 4).tolist()
    assert set(publish.shard_of(ids, 1).tolist()) == {0}
    with pytest.raises(ValueError, match="shard_count must be at least 1, got 0"):
        publish.shard_of(ids, 0)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, postgres_server_url) -> Settings:
    """A small marketplace's marts and its @champion ranker (no offer model: offers are decided when publishing),
    four scoring shards, a few users opted out of personalisation."""
    url = new_database(postgres_server_url, "shards")
    settings = Settings.from_env(
        environ={}, home=tmp_path_factory.mktemp("shards") / "home", warehouse_url=url, score_shards=4
    )
    generate_marketplace(seed=7, days=30, end_date=RUN_DATE, n_users=700, n_merchants=90).write(
        settings.input_dir, ids="uuid"
    )
    for step in (tasks.prepare_warehouse, tasks.load_events, tasks.build_marts):
        step(settings, RUN_DATE)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE marts.user_features SET personalisation_opt_out = true WHERE user_id IN "
            "(SELECT user_id FROM marts.user_features WHERE order_count > 0 ORDER BY user_id LIMIT 20)"
        )
    tasks.train_ranker(settings, RUN_DATE)
    return settings


def _published(settings: Settings) -> dict:
    return {"crm": crm_tables(settings.warehouse_url), "exports": export_files(settings.exports_dir)}


def _assert_same_publication(actual: dict, expected: dict) -> None:
    assert_same_crm_tables(actual["crm"], expected["crm"])
    assert_same_exports(actual["exports"], expected["exports"])


def _score_and_publish(settings: Settings) -> dict:
    tasks.score_all_shards(settings, RUN_DATE)
    tasks.publish_segments(settings, RUN_DATE)
    return _published(settings)


def _staged_users_per_shard(settings: Settings) -> dict[int, set[str]]:
    with psycopg.connect(settings.warehouse_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT shard, user_id FROM ops.staged_recommendations WHERE run_date = %s AND shard_count = %s",
            (RUN_DATE, settings.score_shards),
        ).fetchall()
    users: dict[int, set[str]] = {}
    for shard, user_id in rows:
        users.setdefault(shard, set()).add(user_id)
    return users


def _staged_rows(settings: Settings) -> int:
    with psycopg.connect(settings.warehouse_url) as conn:
        return conn.execute("SELECT count(*) FROM ops.staged_recommendations").fetchone()[0]


def _recommendations_scored_at_once(settings: Settings) -> pd.DataFrame:
    """What publishing did before scoring was sharded and before both modes were scored in one pass: every
    lifecycle member in one call to the champion per mode."""
    tracking.configure(settings, settings.warehouse_url)
    champion = tracking.load_alias(settings.ranker_model_name).recommender
    with psycopg.connect(settings.warehouse_url) as conn:
        members = marts.load_lifecycle_members(conn)["user_id"].tolist()
        recommender = consent.NonPersonalisedFor(champion, marts.load_personalisation_opt_outs(conn))
        per_mode = [recommender.recommend(members, n=settings.top_n, mode=mode).assign(mode=mode) for mode in MODES]
        names = marts.load_merchant_names(conn)
    recommendations = pd.concat(per_mode, ignore_index=True).merge(names, on="merchant_id", how="left")
    return recommendations[publish.RECOMMENDATION_COLUMNS]


def test_four_shards_publish_exactly_what_one_shard_and_scoring_everyone_at_once_publish(ranked):
    four = ranked
    with psycopg.connect(four.warehouse_url) as conn:
        members = set(marts.load_lifecycle_members(conn)["user_id"])

    scored = tasks.score_all_shards(four, RUN_DATE)

    # Every member in exactly one shard, each shard the users of its hash bucket.
    staged = _staged_users_per_shard(four)
    assert sorted(staged) == [0, 1, 2, 3]
    assert sum(len(users) for users in staged.values()) == len(members) == sum(s["users"] for s in scored)
    assert set().union(*staged.values()) == members
    for shard, users in staged.items():
        assert set(publish.shard_of(sorted(users), 4).tolist()) == {shard}

    tasks.publish_segments(four, RUN_DATE)
    sharded = _published(four)

    assert _staged_rows(four) == 0, "publishing clears the day's staged shards"
    published = sharded["crm"]["recommendations"].drop(columns=["run_date", "model_version"])
    at_once = _recommendations_scored_at_once(four)
    assert len(published) == len(at_once) > 0
    key = ["user_id", "mode", "rank"]
    pd.testing.assert_frame_equal(
        published.sort_values(key).reset_index(drop=True),
        at_once[published.columns].sort_values(key).reset_index(drop=True).astype({"rank": "int64"}),
        check_exact=True,
    )
    assert set(sharded["crm"]["recommendations"]["model_version"]) == {"1"}
    assert len(sharded["crm"]["segment_members"]) > 0

    one = replace(four, score_shards=1)
    [single] = tasks.score_all_shards(one, RUN_DATE)
    tasks.publish_segments(one, RUN_DATE)

    assert single["users"] == len(members)
    _assert_same_publication(_published(one), sharded)


def test_a_shard_scored_again_replaces_its_staged_rows_and_publishing_again_changes_nothing(ranked):
    before = _score_and_publish(ranked)
    tasks.score_all_shards(ranked, RUN_DATE)
    staged_rows = _staged_rows(ranked)

    again = tasks.score_shard(ranked, RUN_DATE, 2)

    assert again["users"] == len(_staged_users_per_shard(ranked)[2])
    assert _staged_rows(ranked) == staged_rows
    tasks.publish_segments(ranked, RUN_DATE)
    _assert_same_publication(_published(ranked), before)
    tasks.score_all_shards(ranked, RUN_DATE)
    tasks.publish_segments(ranked, RUN_DATE)
    _assert_same_publication(_published(ranked), before)


def test_publishing_with_a_shard_missing_or_stale_fails_naming_it_and_leaves_crm_as_it_was(ranked):
    before = _score_and_publish(ranked)
    for shard in (0, 1, 3):
        tasks.score_shard(ranked, RUN_DATE, shard)

    with pytest.raises(publish.ShardsNotReadyError, match=r"shards \[2\] of 4 for 2026-11-01 are not scored"):
        tasks.publish_segments(ranked, RUN_DATE)
    _assert_same_publication(_published(ranked), before)

    tasks.score_shard(ranked, RUN_DATE, 2)
    with psycopg.connect(ranked.warehouse_url) as conn:  # as if shard 1 was scored before v1 was champion
        conn.execute("UPDATE ops.scored_shards SET model_version = '0' WHERE shard = 1")
    with pytest.raises(publish.ShardsNotReadyError, match=r"@champion v1: shard 1 by v0; run score_shard"):
        tasks.publish_segments(ranked, RUN_DATE)
    _assert_same_publication(_published(ranked), before)

    tasks.score_shard(ranked, RUN_DATE, 1)
    with psycopg.connect(ranked.warehouse_url) as conn:  # the marts rebuilt with one user fewer after scoring
        members = conn.execute("SELECT count(*) FROM marts.user_segments").fetchone()[0]
        conn.execute("CREATE TABLE marts.left_user AS SELECT * FROM marts.user_segments ORDER BY user_id LIMIT 1")
        conn.execute("DELETE FROM marts.user_segments WHERE user_id IN (SELECT user_id FROM marts.left_user)")
    try:
        with pytest.raises(
            publish.ShardsNotReadyError, match=f"scored {members} users but the marts now have {members - 1}"
        ):
            tasks.publish_segments(ranked, RUN_DATE)
    finally:
        with psycopg.connect(ranked.warehouse_url) as conn:
            conn.execute("INSERT INTO marts.user_segments SELECT * FROM marts.left_user")
            conn.execute("DROP TABLE marts.left_user")
    _assert_same_publication(_published(ranked), before)

    tasks.publish_segments(ranked, RUN_DATE)
    _assert_same_publication(_published(ranked), before)


def test_a_shard_outside_the_configured_count_is_refused(ranked):
    with pytest.raises(ValueError, match=r"shard 4 is not one of 0..3 \(REKINDLE_SCORE_SHARDS=4\)"):
        tasks.score_shard(ranked, RUN_DATE, 4)


def test_run_shows_each_mapped_shard_as_a_line_of_its_own():
    def line(at: str, text: str) -> str:
        return f"2026-11-01T00:00:{at}Z [info     ] {text} loc=x.py:1"

    console = io.StringIO()
    view = ProgressView(console, key_figure)
    for shard, (start, end) in enumerate([("00", "02"), ("02", "05")]):
        for text in [
            f"[DAG TEST] starting task_id=score_shard map_index={shard} [airflow.sdk]",
            f"score_shard[{shard}] finished in 1.0s: {{'shard': {shard}, 'shards': 2, 'model_version': '3', "
            f"'users': {1000 + shard}, 'recommendations': 20000, 'peak_rss_mb': 1.0}} [ml.pipeline.tasks]",
            "Task instance state updated [airflow.api] new_state=success rows_affected=1",
            f"[DAG TEST] end task task_id=score_shard map_index={shard} [airflow.sdk]",
        ]:
            view.feed(line(end if text.startswith("[DAG TEST] end") else start, text))

    assert console.getvalue().splitlines() == [
        "  score_shard[0]                 success     2.0s  1,000 users scored (shard 1 of 2), model v3",
        "  score_shard[1]                 success     3.0s  1,001 users scored (shard 2 of 2), model v3",
    ]
