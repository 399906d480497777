"""`rekindle benchmark shards` on a small trained warehouse: every shard count scores in processes of its own and
publishes the same crm.recommendations; a warehouse without the day's marts or an @champion ranker is refused
with what to run first."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import psycopg
import pytest
from conftest import new_database

from ml.benchmarks import shards
from ml.cli.options import UsageError
from ml.pipeline import tasks
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace

RUN_DATE = date(2026, 11, 1)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, postgres_server_url) -> Settings:
    """A small marketplace's marts for RUN_DATE and its @champion ranker (no offer model)."""
    url = new_database(postgres_server_url, "shards_benchmark")
    settings = Settings.from_env(
        environ={}, home=tmp_path_factory.mktemp("shards_benchmark") / "home", warehouse_url=url
    )
    generate_marketplace(seed=11, days=30, end_date=RUN_DATE, n_users=400, n_merchants=60).write(settings.input_dir)
    for step in (tasks.prepare_warehouse, tasks.load_events, tasks.build_marts, tasks.train_ranker):
        step(settings, RUN_DATE)
    return settings


def test_each_shard_count_scores_in_its_own_processes_and_publishes_the_same_recommendations(ranked):
    result = shards.benchmark_shards(ranked, RUN_DATE, [1, 2], parallel=2)

    assert [r.shards for r in result.rounds] == [1, 2]
    with psycopg.connect(ranked.warehouse_url) as conn:
        members = conn.execute("SELECT count(*) FROM marts.user_segments").fetchone()[0]
        published = conn.execute("SELECT count(*) FROM crm.recommendations WHERE run_date = %s", (RUN_DATE,)).fetchone()
    for r in result.rounds:
        assert len(r.shard_seconds) == len(r.shard_peak_mb) == len(r.shard_users) == r.shards
        assert sum(r.shard_users) == members
        assert r.scoring_seconds >= max(r.shard_seconds) > 0
        assert min(r.shard_peak_mb) > 0 and r.publish_seconds > 0 and r.publish_peak_mb > 0
        assert r.published_rows == published[0] > 0
    assert result.rounds[1].shard_users != [members, 0]  # both buckets hold users
    assert result.model_load_seconds > 0 and result.model_mb > 0
    assert result.identical_output

    table = shards.format_benchmark(result).splitlines()
    assert table[0].split()[:3] == ["shards", "scoring", "wall"]
    assert [line.split()[0] for line in table[2:4]] == ["1", "2"]
    assert table[2].split()[2] == "1.00"  # one shard is the baseline of the speed-up
    assert table[-1].startswith(f"crm.recommendations for {RUN_DATE}: identical at 1, 2 shards ({published[0]:,} rows")

    # The checksum covers the scores: one score changed in crm is a different publication.
    with psycopg.connect(ranked.warehouse_url) as conn:
        conn.execute(
            "UPDATE crm.recommendations SET score = score + 1e-9 WHERE (user_id, mode, rank) IN "
            "(SELECT user_id, mode, rank FROM crm.recommendations WHERE run_date = %s LIMIT 1)",
            (RUN_DATE,),
        )
    changed = replace(result.rounds[1], published_md5=shards.published_checksum(ranked, RUN_DATE)[1])
    assert changed.published_md5 != result.rounds[0].published_md5
    differs = replace(result, rounds=[result.rounds[0], changed])
    assert not differs.identical_output
    assert "DIFFERS between shard counts" in shards.format_benchmark(differs).splitlines()[-1]


def test_a_warehouse_without_the_days_marts_or_a_champion_ranker_is_refused_saying_what_to_run(ranked, settings):
    with pytest.raises(UsageError, match=r"has no marts: run `rekindle run --date 2026-11-01` first"):
        shards.benchmark_shards(settings, RUN_DATE, [1], parallel=1)

    untrained = replace(ranked, ranker_model_name="rekindle-ranker-never-trained")
    with pytest.raises(
        UsageError,
        match=r"no rekindle-ranker-never-trained has the alias @champion: run `rekindle run --date 2026-11-01` first",
    ):
        shards.benchmark_shards(untrained, RUN_DATE, [1], parallel=1)

    next_day = RUN_DATE + timedelta(days=1)
    with pytest.raises(
        UsageError,
        match=r"marts in .* were last built for 2026-11-01, not 2026-11-02: run `rekindle run --date 2026-11-02` first",
    ):
        shards.benchmark_shards(ranked, next_day, [1], parallel=1)
