"""Closing the loop with the pipeline's own step functions (no Airflow needed): a day's published campaign is
played out in the synthetic world, flows back into raw, and trains the next day's offer model; backfilling the
first day afterwards reproduces its segments without look-ahead."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pandas as pd
import psycopg
from conftest import run_daily_steps

from ml.experiments.assignment import campaign_id_for
from ml.pipeline import tasks
from ml.synthetic import campaign_replay
from ml.synthetic.marketplace import generate_marketplace

DAY_ONE = date(2026, 9, 1)


def _offers(url: str, run_date: date) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id, segment, arm FROM crm.inactive_user_offers WHERE run_date = %s ORDER BY user_id",
            (run_date,),
        ).fetchall()
    return pd.DataFrame(rows, columns=["user_id", "segment", "arm"])


def test_campaign_outcomes_train_the_next_offer_model_and_backfill_reproduces_the_day(settings):
    url = settings.warehouse_url
    generate_marketplace(seed=3, days=30, end_date=DAY_ONE, n_users=400, n_merchants=50).write(settings.input_dir)

    first = run_daily_steps(settings, DAY_ONE)
    offers_day_one = _offers(url, DAY_ONE)
    assert not offers_day_one.empty
    train_rows_day_one = first["train_offer_model"]["metrics"]["test_rows"]

    simulated = campaign_replay.simulate_campaign(settings, days=settings.reactivation_window_days, seed=5)
    assert simulated["campaign_ids"] == [campaign_id_for(DAY_ONE)]

    day_two = DAY_ONE + timedelta(days=settings.reactivation_window_days + 1)
    second = run_daily_steps(settings, day_two)

    with psycopg.connect(url) as conn:
        [(exposures, observed)] = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE outcome_observed) FROM marts.campaign_history WHERE campaign_id = %s",
            (campaign_id_for(DAY_ONE),),
        ).fetchall()
        # Each exposure carries the probability its offer was chosen, as published, for the model's weights.
        [(mismatched, lowest_propensity)] = conn.execute(
            """SELECT count(*) FILTER (WHERE h.propensity IS DISTINCT FROM o.propensity), min(h.propensity)
               FROM marts.campaign_history h
               JOIN crm.inactive_user_offers o ON o.campaign_id = h.campaign_id AND o.user_id = h.user_id
               WHERE h.campaign_id = %s""",
            (campaign_id_for(DAY_ONE),),
        ).fetchall()
    assert exposures == len(offers_day_one) and observed == exposures
    assert mismatched == 0 and lowest_propensity < 1
    # The day-one campaign's users are now part of the offer model's held-out and training data.
    assert second["train_offer_model"]["metrics"]["test_rows"] > train_rows_day_one
    trained_on = second["train_offer_model"]["training_exposures"]
    assert trained_on >= first["train_offer_model"]["training_exposures"] + observed  # and the world's own

    # Backfill day one after day two: same members, same segments, same arms — nothing from later days leaks in.
    run_daily_steps(settings, DAY_ONE)
    assert _offers(url, DAY_ONE).equals(offers_day_one)

    # Above REKINDLE_OFFER_TRAINING_MAX_EXPOSURES the model learns from a sample of about that many.
    capped = tasks.train_offer_model(replace(settings, offer_training_max_exposures=trained_on // 2), day_two)
    assert 0.3 * trained_on < capped["training_exposures"] < 0.7 * trained_on
