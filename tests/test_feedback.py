"""Closing the loop: the latest published campaign played out in the synthetic world and fed back to raw."""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import publish_offers

from ml.cli import experiments as experiments_cli
from ml.experiments import assignment, readout
from ml.experiments.assignment import HOLDOUT, NON_PERSONALISED, PERSONALISED
from ml.synthetic import campaign_replay
from ml.synthetic.marketplace import generate_marketplace
from ml.warehouse import ddl, ingest
from ml.warehouse.dbt_runner import run_dbt

RUN_DATE = date(2025, 4, 1)
CAMPAIGN = assignment.campaign_id_for(RUN_DATE)


def published_offers(user_ids: pd.Series, run_date: date) -> pd.DataFrame:
    """Arms by hash; personalised users alternate between cashback and no offer at all."""
    campaign_id = assignment.campaign_id_for(run_date)
    arms = assignment.assign_arms(campaign_id, user_ids)
    personalised = arms.eq(PERSONALISED).to_numpy()
    alternate = np.arange(len(arms)) % 2 == 0
    event_type = np.where(
        personalised,
        np.where(alternate, "cashback", "none"),
        np.where(arms.eq(NON_PERSONALISED), "free_delivery", "none"),
    )
    reward_size = np.select([event_type == "cashback", event_type == "free_delivery"], [8.0, 10.0], 0.0)
    return pd.DataFrame(
        {
            "run_date": run_date,
            "campaign_id": campaign_id,
            "user_id": arms.index,
            "arm": arms.to_numpy(),
            "event_type": event_type,
            "reward_size": reward_size,
            "is_holdout": arms.eq(HOLDOUT).to_numpy(),
        }
    )


@pytest.fixture
def published_campaign(settings) -> pd.DataFrame:
    """A generated world in the drop folder and two days of published offers; returns the latest day's."""
    marketplace = generate_marketplace(n_users=1_500, n_merchants=60, seed=5, end_date=RUN_DATE)
    marketplace.write(settings.input_dir)
    inactive = marketplace.user_truth.loc[marketplace.user_truth["days_since_last_order"] >= 7, "user_id"]
    earlier = published_offers(inactive.iloc[:50], date(2025, 3, 31))
    latest = published_offers(inactive, RUN_DATE)
    with psycopg.connect(settings.warehouse_url) as conn:
        publish_offers(conn, pd.concat([earlier, latest]))
    return latest


def test_simulated_exposures_match_the_published_offers(settings, published_campaign):
    result = campaign_replay.simulate_campaign(settings, days=14, seed=3)

    assert result["campaign_ids"] == [CAMPAIGN] and result["start"] == "2025-04-01"
    assert sorted(path.split("/")[-1] for path in result["files"].values()) == [
        "campaign_exposures_sim_2025-04-01_14d.parquet",
        "events_sim_2025-04-01_14d.parquet",
    ]
    exposures = pd.read_parquet(result["files"]["campaign_exposures"])
    offers = published_campaign.set_index("user_id")
    assert (exposures["campaign_id"] == CAMPAIGN).all()
    assert sorted(exposures["user_id"]) == sorted(offers.index)
    arm = offers["arm"].reindex(exposures["user_id"]).to_numpy()
    assert (exposures["assignment"].eq("holdout").to_numpy() == (arm == HOLDOUT)).all()
    # Treated users carry their offer; a personalised "none" goes out as no reward.
    sent = offers.reindex(exposures["user_id"])
    treated = exposures["assignment"].eq("treatment").to_numpy()
    assert (exposures["event_type"].to_numpy()[treated] == sent["event_type"].to_numpy()[treated]).all()
    assert (exposures["reward_size"].to_numpy()[treated] == sent["reward_size"].to_numpy()[treated]).all()
    assert exposures.loc[~treated, "event_type"].eq("none").all()

    events = pd.read_parquet(result["files"]["events"])
    start = pd.Timestamp(RUN_DATE, tz="UTC")
    assert len(events) == result["events"] > 0
    assert events["event_time"].min() >= start
    assert events["event_time"].max() < start + pd.Timedelta(days=14)

    assert result["users_per_arm"] == published_campaign["arm"].value_counts().to_dict()
    rates = result["true_re_engagement"]
    assert set(rates) == {PERSONALISED, NON_PERSONALISED, HOLDOUT}
    assert rates[NON_PERSONALISED] > rates[HOLDOUT]
    assert readout.load_campaign_truth(settings, CAMPAIGN)["true_re_engagement"] == rates


def test_the_next_load_brings_the_campaign_into_raw(settings, published_campaign):
    result = campaign_replay.simulate_campaign(settings, days=14, seed=3)

    loaded = ingest.ingest_path(settings.warehouse_url, result["files"]["campaign_exposures"])
    loaded += ingest.ingest_path(settings.warehouse_url, result["files"]["events"])

    assert [r.rows_quarantined for r in loaded] == [0, 0]
    with psycopg.connect(settings.warehouse_url) as conn:
        exposures = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE assignment = 'holdout') FROM raw.campaign_exposures "
            "WHERE campaign_id = %s",
            (CAMPAIGN,),
        ).fetchone()
        orders = conn.execute(
            "SELECT count(*) FROM raw.events WHERE event_type = 'checkout_completed' AND event_time >= %s",
            (pd.Timestamp(RUN_DATE, tz="UTC"),),
        ).fetchone()[0]
    assert exposures == (len(published_campaign), int(published_campaign["is_holdout"].sum()))
    assert orders == result["orders"] > 0


def test_simulating_again_writes_the_same_files(settings, published_campaign):
    first = campaign_replay.simulate_campaign(settings, days=3, seed=3)
    events = pd.read_parquet(first["files"]["events"])
    second = campaign_replay.simulate_campaign(settings, days=3, seed=3)
    # Same event ids, so re-ingesting a re-simulation loads nothing twice.
    pd.testing.assert_frame_equal(pd.read_parquet(second["files"]["events"]), events)


def test_a_campaign_simulated_again_otherwise_replaces_the_files_not_yet_loaded(settings, published_campaign):
    first = campaign_replay.simulate_campaign(settings, days=3, seed=3)
    second = campaign_replay.simulate_campaign(settings, days=5, seed=4)

    assert not any(Path(path).exists() for path in first["files"].values())
    assert sorted(path.name for path in settings.input_dir.glob("*_sim_*")) == sorted(
        Path(path).name for path in second["files"].values()
    )


def test_a_loaded_simulation_is_not_followed_by_a_second_outcome(settings, published_campaign):
    first = campaign_replay.simulate_campaign(settings, days=3, seed=3)
    ingest.ingest_path(settings.warehouse_url, settings.input_dir)

    for seed, days in [(4, 3), (3, 5)]:
        with pytest.raises(ValueError, match="already simulated \\(seed 3, 3 days\\).*--seed 3 --days 3"):
            campaign_replay.simulate_campaign(settings, days=days, seed=seed)
    assert all(Path(path).exists() for path in first["files"].values())
    assert readout.load_campaign_truth(settings, CAMPAIGN)["seed"] == 3
    # The same simulation again rewrites the same events, which the next load skips as duplicates.
    campaign_replay.simulate_campaign(settings, days=3, seed=3)
    reloaded = ingest.ingest_path(settings.warehouse_url, settings.input_dir)
    assert [result.rows_loaded for result in reloaded if result.table == "events"] == [0]


def test_the_command_reports_the_truth(settings, published_campaign, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    parser = argparse.ArgumentParser()
    experiments_cli.add_simulate_arguments(parser)

    assert experiments_cli.cmd_simulate(parser.parse_args(["--days", "2", "--seed", "1"])) == 0
    output = capsys.readouterr().out
    assert CAMPAIGN in output and "true re-engagement" in output


def test_the_command_explains_when_nothing_is_published(settings, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    with psycopg.connect(settings.warehouse_url) as conn:
        ddl.ensure(conn, "crm")
    parser = argparse.ArgumentParser()
    experiments_cli.add_simulate_arguments(parser)

    assert experiments_cli.cmd_simulate(parser.parse_args([])) == 2
    assert "run the daily pipeline first" in capsys.readouterr().err


def test_the_readout_command_prints_the_truth_beside_the_measurement(settings, published_campaign, monkeypatch, capsys):
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    result = campaign_replay.simulate_campaign(settings, days=14, seed=3)
    # What the daily run on the day the window closes does before the readout: load, then build the marts.
    ingest.ingest_path(settings.warehouse_url, settings.input_dir)
    run_dbt(
        settings, settings.warehouse_url, ["run"], RUN_DATE + timedelta(days=14), select="+orders +reward_redemptions"
    )
    parser = argparse.ArgumentParser()
    experiments_cli.add_readout_arguments(parser)

    assert experiments_cli.cmd_readout(parser.parse_args(["--date", RUN_DATE.isoformat()])) == 0
    output = capsys.readouterr().out
    for arm, rate in result["true_re_engagement"].items():
        assert f"{rate:.2%}" in next(line for line in output.splitlines() if line.startswith(arm + " "))
    assert "relative to non-personalised" in output
    assert "net incr. margin" in output and "QAR per user in the personalised arm" in output
