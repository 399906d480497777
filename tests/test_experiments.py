"""Arm assignment, proportion statistics and the campaign readout on the real warehouse."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import new_database, publish_offers

from ml.cli import main as rekindle
from ml.experiments import assignment, readout, statistics
from ml.experiments.assignment import ARMS, HOLDOUT, NON_PERSONALISED, PERSONALISED
from ml.settings import Settings
from ml.synthetic import campaign_replay
from ml.synthetic.marketplace import generate_marketplace
from ml.synthetic.world import simulate_days
from ml.warehouse import ingest
from ml.warehouse.dbt_runner import run_dbt

# --------------------------------------------------------------------------- assignment


def test_assignment_is_a_stable_hash_with_the_requested_shares():
    users = range(1, 20_001)
    arms = assignment.assign_arms("winback-2026-01-01", users)
    assert arms.equals(assignment.assign_arms("winback-2026-01-01", reversed(users)).sort_index())
    # Pinned, because changing the hash would silently reshuffle running experiments:
    # `printf 'winback-2026-01-01:4' | sha256sum` starts 18495aaf8be7c8a8: top 53 bits / 2^53 = 0.0949, a holdout.
    assert assignment.hash_unit("winback-2026-01-01", 4) == pytest.approx(0.0948692968921981)
    assert assignment.assign_arms("winback-2026-01-01", [1, 2, 3, 4, 5]).tolist() == [
        "non_personalised",
        "personalised",
        "personalised",
        "holdout",
        "personalised",
    ]
    shares = arms.value_counts(normalize=True)
    # n = 20,000: the standard error of the 10% share is 0.2 points, of the 45% shares 0.35 points.
    assert shares[HOLDOUT] == pytest.approx(0.10, abs=0.01)
    assert shares[PERSONALISED] == pytest.approx(0.45, abs=0.015)
    assert shares[NON_PERSONALISED] == pytest.approx(0.45, abs=0.015)


def test_each_campaign_draws_its_own_holdout():
    users = range(1, 20_001)
    first = assignment.assign_arms("winback-2026-01-01", users).eq(HOLDOUT)
    second = assignment.assign_arms("winback-2026-01-02", users).eq(HOLDOUT)
    # Independent draws: about 10% of one day's holdout is in the next day's.
    assert (first & second).sum() / first.sum() == pytest.approx(0.10, abs=0.03)


def test_assignment_rejects_shares_above_one():
    with pytest.raises(ValueError):
        assignment.assign_arms("c", [1], holdout_share=0.6, personalised_share=0.5)


# --------------------------------------------------------------------------- statistics


def test_statistics_match_a_hand_computed_case():
    # 120 of 1,000 against 100 of 1,000; z(0.975) = 1.959964.
    # z-test: pooled p = 220 / 2000 = 0.11, SE = sqrt(0.11 * 0.89 * (2 / 1000)) = 0.0139929,
    #   z = 0.02 / 0.0139929 = 1.42930, p = 2 * (1 - Phi(1.42930)) = 0.15292.
    test = statistics.two_proportion_z_test(120, 1000, 100, 1000)
    assert test.z == pytest.approx(1.42930, abs=1e-5)
    assert test.p_value == pytest.approx(0.15292, abs=1e-5)
    # Wald: SE = sqrt(0.12 * 0.88 / 1000 + 0.10 * 0.90 / 1000) = 0.0139857, half width 0.027412.
    wald = statistics.wald_difference_ci(120, 1000, 100, 1000)
    assert (wald.low, wald.high) == pytest.approx((-0.007412, 0.047412), abs=1e-6)
    # Wilson: 120/1000 -> (0.101299, 0.141609); 100/1000 -> (0.082909, 0.120152).
    # Newcombe: 0.02 - sqrt((0.12 - 0.101299)^2 + (0.120152 - 0.10)^2) = -0.007492,
    #           0.02 + sqrt((0.141609 - 0.12)^2 + (0.10 - 0.082909)^2) = 0.047551.
    wilson = statistics.wilson_interval(120, 1000)
    assert (wilson.low, wilson.high) == pytest.approx((0.101299, 0.141609), abs=1e-6)
    newcombe = statistics.newcombe_difference_ci(120, 1000, 100, 1000)
    assert (newcombe.low, newcombe.high) == pytest.approx((-0.007492, 0.047551), abs=1e-6)
    # Relative lift 0.12 / 0.10 - 1 = 0.2; delta method on log 1.2 = 0.182322 with
    # SE = sqrt(0.88 / 120 + 0.90 / 100) = 0.127802: exp(0.182322 -+ 0.250488) - 1 = (-0.065894, 0.541581).
    comparison = statistics.compare_proportions(120, 1000, 100, 1000)
    assert comparison.absolute_lift == pytest.approx(0.02)
    assert comparison.relative_lift == pytest.approx(0.2)
    assert (comparison.relative_ci.low, comparison.relative_ci.high) == pytest.approx((-0.065894, 0.541581), abs=1e-6)
    assert comparison.absolute_ci == newcombe
    assert comparison.p_value == test.p_value
    assert statistics.meets_seed_criterion(comparison) is True
    assert statistics.seed_criterion_significant(comparison) is False


def test_statistics_at_the_edges():
    assert statistics.two_proportion_z_test(0, 50, 0, 80) == statistics.ZTest(0.0, 1.0)
    nobody = statistics.compare_proportions(5, 50, 0, 80)
    assert math.isnan(nobody.relative_lift) and math.isnan(nobody.relative_ci.low)
    assert statistics.meets_seed_criterion(nobody) is None
    assert -1.0 <= nobody.absolute_ci.low < 0.1 < nobody.absolute_ci.high <= 1.0


# --------------------------------------------------------------------------- readout


CAMPAIGN_DATE = date(2025, 3, 10)
CAMPAIGN = assignment.campaign_id_for(CAMPAIGN_DATE)
START = datetime(2025, 3, 10, tzinfo=UTC)
END = START + timedelta(days=14)


def hand_made_offers() -> pd.DataFrame:
    arms = {
        **dict.fromkeys(range(1, 11), PERSONALISED),
        **dict.fromkeys(range(11, 21), NON_PERSONALISED),
        **dict.fromkeys(range(21, 26), HOLDOUT),
    }
    offers = pd.DataFrame({"user_id": list(arms), "arm": list(arms.values())})
    offers["event_type"] = offers["arm"].map(
        {PERSONALISED: "cashback", NON_PERSONALISED: "free_delivery", HOLDOUT: "none"}
    )
    offers["reward_size"] = offers["arm"].map({PERSONALISED: 5.0, NON_PERSONALISED: 10.0, HOLDOUT: 0.0})
    offers.loc[offers["user_id"].between(6, 10), "reward_size"] = 8.0  # personalised rewards differ by user
    this_campaign = offers.assign(run_date=CAMPAIGN_DATE, campaign_id=CAMPAIGN)
    # The next day's campaign puts user 1 in its holdout; it must not leak into this readout.
    next_day = CAMPAIGN_DATE + timedelta(days=1)
    next_campaign = pd.DataFrame(
        {
            "run_date": [next_day],
            "campaign_id": [assignment.campaign_id_for(next_day)],
            "user_id": [1],
            "arm": [HOLDOUT],
            "event_type": ["none"],
            "reward_size": [0.0],
        }
    )
    return pd.concat([this_campaign, next_campaign], ignore_index=True)


NEXT_CAMPAIGN = assignment.campaign_id_for(CAMPAIGN_DATE + timedelta(days=1))
MARGIN_RATE = 0.25  # not the default 0.30: the readout must use the rate it is given


def hand_made_events() -> pd.DataFrame:
    second = timedelta(seconds=1)
    redeemed = "reward_redeemed"
    rows = [
        # personalised: users 1-4 come back (revenue 80 + 40 + 20 + 10 = 150)
        (1, "checkout_completed", START + timedelta(days=1), 50.0),
        (1, "checkout_completed", START + timedelta(days=2), 30.0),
        (2, "checkout_completed", START, 40.0),  # the window includes its first instant
        (3, "checkout_completed", START + timedelta(days=5), 20.0),
        (4, "checkout_completed", END - second, 10.0),
        (5, "checkout_completed", END, 99.0),  # ... and excludes its end
        (6, "checkout_completed", START - timedelta(hours=1), 99.0),  # before the campaign
        (7, "app_opened", START + timedelta(days=1), None),  # not an order
        # non-personalised: users 11 and 12 (25 + 35)
        (11, "checkout_completed", START + timedelta(days=3), 25.0),
        (12, "checkout_completed", START + timedelta(days=4), 35.0),
        # holdout: user 21 (12)
        (21, "checkout_completed", START + timedelta(days=6), 12.0),
        (99, "checkout_completed", START + timedelta(days=1), 99.0),  # not in the campaign
    ]
    redemptions = [
        # personalised: users 1, 2 and 6 are paid 5 + 5 + 8 = 18 QAR
        (1, redeemed, START + timedelta(days=1), CAMPAIGN),
        (1, redeemed, START + timedelta(days=2), CAMPAIGN),  # a second redemption: one offer is paid once
        (2, redeemed, START, CAMPAIGN),  # the window includes its first instant
        (3, redeemed, START + timedelta(days=5), NEXT_CAMPAIGN),  # another campaign's reward (user 3 re-engaged)
        (4, redeemed, END, CAMPAIGN),  # ... and excludes its end
        (6, redeemed, START + timedelta(days=2), CAMPAIGN),  # paid though user 6 placed no order in the window
        (7, redeemed, START + timedelta(days=2), None),  # no campaign
        # non-personalised: users 11 and 12 are paid 10 + 10 = 20 QAR
        (11, redeemed, START + timedelta(days=3), CAMPAIGN),
        (12, redeemed, START + timedelta(days=4), CAMPAIGN),
        (13, redeemed, START - timedelta(hours=1), CAMPAIGN),  # before the window
    ]
    events = pd.DataFrame(rows, columns=["user_id", "event_type", "event_time", "order_total"])
    events["properties"] = None
    events = pd.concat(
        [
            events,
            pd.DataFrame(
                {
                    "user_id": [user for user, *_ in redemptions],
                    "event_type": [event_type for _, event_type, _, _ in redemptions],
                    "event_time": [at for _, _, at, _ in redemptions],
                    "properties": [
                        json.dumps({"campaign_id": campaign} if campaign else {}) for *_, campaign in redemptions
                    ],
                }
            ),
        ],
        ignore_index=True,
    )
    events["event_id"] = [f"e{number}" for number in range(len(events))]
    events["merchant_id"] = np.where(events["event_type"].isin(["checkout_completed", redeemed]), 1, None)
    return events


def hand_made_users_and_merchants() -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame({"user_id": [*range(1, 26), 99]})
    users = users.assign(
        signup_at=datetime(2025, 1, 1, tzinfo=UTC), platform="ios", home_zone="West Bay", marketing_opt_in=True
    )
    merchants = pd.DataFrame(
        {
            "merchant_id": [1],
            "merchant_name": ["Pizza Place"],
            "category": ["pizza"],
            "zone": ["West Bay"],
            "lat": [25.3],
            "lng": [51.5],
            "price_level": [2],
            "opened_at": [datetime(2025, 1, 1, tzinfo=UTC)],
        }
    )
    return users, merchants


def build_readout_marts(settings, url: str, run_date: date) -> None:
    """What the daily DAG does before the readout: the marts as of ``run_date``, here only those the readout
    reads (marts.orders, marts.reward_redemptions)."""
    run_dbt(settings, url, ["run"], run_date, select="+orders +reward_redemptions")


@pytest.fixture(scope="module")
def campaign_url(postgres_server_url, tmp_path_factory) -> str:
    """Users, a merchant, the hand-made events (loaded twice: the second file re-sends user 1's first order
    under another event_id) and offers; the marts built as of the day the window closes. Readouts only read it."""
    url = new_database(postgres_server_url, "test_readout")
    users, merchants = hand_made_users_and_merchants()
    with psycopg.connect(url) as conn:
        ingest.ensure_raw_schema(conn)
        ingest.load_frame(conn, "users", users, "users")
        ingest.load_frame(conn, "merchants", merchants, "merchants")
        publish_offers(conn, hand_made_offers())
        ingest.load_frame(conn, "events", hand_made_events(), "hand_made")
        ingest.load_frame(conn, "events", resent_events(), "resent")
    home = tmp_path_factory.mktemp("readout_home")
    build_readout_marts(Settings.from_env(environ={}, home=home, warehouse_url=url), url, END.date())
    return url


def resent_events() -> pd.DataFrame:
    """User 1's first order again, re-sent by the app under a new event_id (and e0 itself, a no-op)."""
    events = hand_made_events()
    first = events[events["event_id"] == "e0"]
    return pd.concat([first, first.assign(event_id="e0-resent")], ignore_index=True)


@pytest.fixture
def campaign_conn(campaign_url):
    with psycopg.connect(campaign_url) as conn:
        yield conn


def test_readout_counts_orders_in_the_window_per_arm(campaign_conn):
    results = readout.readout(campaign_conn, CAMPAIGN, 14, MARGIN_RATE).set_index("arm")

    assert results["users"].to_dict() == {PERSONALISED: 10, NON_PERSONALISED: 10, HOLDOUT: 5}
    assert results["re_engaged_users"].to_dict() == {PERSONALISED: 4, NON_PERSONALISED: 2, HOLDOUT: 1}
    assert results["re_engagement_rate"].to_dict() == {PERSONALISED: 0.4, NON_PERSONALISED: 0.2, HOLDOUT: 0.2}
    assert results["revenue_per_user"].to_dict() == {PERSONALISED: 15.0, NON_PERSONALISED: 6.0, HOLDOUT: 2.4}
    assert (results["window_start"] == START).all() and (results["window_end"] == END).all()

    personalised = results.loc[PERSONALISED]
    expected = statistics.compare_proportions(4, 10, 2, 10)
    assert personalised["abs_lift_vs_non_personalised"] == pytest.approx(0.2)
    assert personalised["rel_lift_vs_non_personalised"] == pytest.approx(1.0)
    assert personalised["rel_lift_vs_non_personalised_ci_low"] == expected.relative_ci.low
    assert personalised["abs_lift_vs_non_personalised_ci_high"] == expected.absolute_ci.high
    assert personalised["p_value_vs_non_personalised"] == statistics.two_proportion_z_test(4, 10, 2, 10).p_value
    assert personalised["p_value_vs_holdout"] == statistics.two_proportion_z_test(4, 10, 1, 5).p_value
    # An arm is not compared with itself.
    assert math.isnan(results.loc[HOLDOUT, "abs_lift_vs_holdout"])
    # +100% clears the 15% bar, but 10 users per arm cannot show it significantly.
    assert results["meets_seed_criterion"].all()
    assert not results["seed_criterion_significant"].any()


def test_readout_prices_the_rewards_redeemed_in_the_window(campaign_conn):
    results = readout.readout(campaign_conn, CAMPAIGN, 14, MARGIN_RATE).set_index("arm")

    # A reward is paid when its campaign's reward_redeemed falls in the window, once per user, at the size offered:
    # personalised users 1 (5, redeemed twice), 2 (5) and 6 (8; no order) = 18; not user 3 (re-engaged, but
    # redeemed another campaign's reward) nor 4 (at the window's end). Non-personalised 11 + 12 = 20 (not 13,
    # before the window). The holdout is offered nothing.
    assert results["redeemed_users"].to_dict() == {PERSONALISED: 3, NON_PERSONALISED: 2, HOLDOUT: 0}
    assert results["reward_cost"].to_dict() == {PERSONALISED: 18.0, NON_PERSONALISED: 20.0, HOLDOUT: 0.0}
    assert results["reward_cost_per_user"].to_dict() == {PERSONALISED: 1.8, NON_PERSONALISED: 2.0, HOLDOUT: 0.0}
    # Against the holdout's 1 in 5: personalised 4 - 10 x 0.2 = 2 more reactivations, at 18 / 2 = 9 QAR each;
    # non-personalised 2 - 10 x 0.2 = 0, so no cost per incremental reactivation (nor for the holdout itself).
    assert results["incremental_reactivations"].to_dict() == {PERSONALISED: 2.0, NON_PERSONALISED: 0.0, HOLDOUT: 0.0}
    assert results.at[PERSONALISED, "cost_per_incremental_reactivation"] == pytest.approx(9.0)
    assert results[["cost_per_incremental_reactivation"]].drop(PERSONALISED).isna().all().all()
    # Net incremental margin at 25%: personalised 0.25 x (150 - 10 x 12 / 5) - 18 = 31.5 - 18 = 13.5 (1.35 per user);
    # non-personalised 0.25 x (60 - 24) - 20 = -11 (-1.1 per user); the holdout 0.
    assert results["net_incremental_margin"].to_dict() == pytest.approx(
        {PERSONALISED: 13.5, NON_PERSONALISED: -11.0, HOLDOUT: 0.0}
    )
    assert results["net_incremental_margin_per_user"].to_dict() == pytest.approx(
        {PERSONALISED: 1.35, NON_PERSONALISED: -1.1, HOLDOUT: 0.0}
    )
    # 1.8 QAR per user against 2.0: personalised spent no more.
    assert results["personalised_cost_within_non_personalised"].all()
    assert (results["order_margin_rate"] == MARGIN_RATE).all()


def test_the_economics_of_arms_built_by_hand():
    counts = pd.DataFrame(
        {
            "arm": [PERSONALISED, NON_PERSONALISED, HOLDOUT],
            "users": [200, 100, 40],
            "re_engaged_users": [50, 20, 6],
            "revenue": [4_000.0, 1_500.0, 400.0],
            "redeemed_users": [30, 20, 0],
            "reward_cost": [450.0, 200.0, 0.0],
        }
    )
    results = readout.arm_results(counts, margin_rate=0.3).set_index("arm")

    # holdout: 6 / 40 = 0.15 re-engaged, 400 / 40 = 10 QAR per user
    # personalised: 50 - 200 x 0.15 = 20 more, 450 / 20 = 22.5 QAR each; 0.3 x (4000 - 2000) - 450 = 150
    # non-personalised: 20 - 100 x 0.15 = 5 more, 200 / 5 = 40 QAR each; 0.3 x (1500 - 1000) - 200 = -50
    assert results["incremental_reactivations"].to_dict() == {PERSONALISED: 20.0, NON_PERSONALISED: 5.0, HOLDOUT: 0.0}
    assert results["cost_per_incremental_reactivation"].to_dict() == pytest.approx(
        {PERSONALISED: 22.5, NON_PERSONALISED: 40.0, HOLDOUT: math.nan}, nan_ok=True
    )
    assert results["net_incremental_margin"].to_dict() == pytest.approx(
        {PERSONALISED: 150.0, NON_PERSONALISED: -50.0, HOLDOUT: 0.0}
    )
    assert results["net_incremental_margin_per_user"].to_dict() == pytest.approx(
        {PERSONALISED: 0.75, NON_PERSONALISED: -0.5, HOLDOUT: 0.0}
    )
    # 450 / 200 = 2.25 QAR per user against 200 / 100 = 2.0: personalised spent more, and the verdict says so.
    assert not results["personalised_cost_within_non_personalised"].any()
    sentence = readout.verdict(results.reset_index())
    assert "2.25 QAR per user" in sentence and "personalised spent more" in sentence
    # At equal spend (200 per 100 users = 400 per 200) it spent no more.
    equal = readout.arm_results(counts.assign(reward_cost=[400.0, 200.0, 0.0]), margin_rate=0.3)
    assert equal["personalised_cost_within_non_personalised"].all()
    assert "personalised spent no more" in readout.verdict(equal)
    # Fewer re-engaged than the holdout rate predicts: no cost per incremental reactivation.
    fewer = readout.arm_results(counts.assign(re_engaged_users=[29, 20, 6]), margin_rate=0.3).set_index("arm")
    assert math.isnan(fewer.at[PERSONALISED, "cost_per_incremental_reactivation"])
    assert fewer.at[PERSONALISED, "incremental_reactivations"] == pytest.approx(-1.0)
    # Without a holdout nothing is incremental, but the reward cost is still known.
    no_holdout = readout.arm_results(counts.iloc[:2], margin_rate=0.3).set_index("arm")
    assert no_holdout.at[PERSONALISED, "reward_cost_per_user"] == 2.25
    assert no_holdout[["incremental_reactivations", "net_incremental_margin"]].isna().all().all()


def test_a_duplicate_checkout_counts_once_in_the_revenue(campaign_conn):
    raw_revenue = campaign_conn.execute(
        "SELECT sum(order_total) FROM raw.events WHERE user_id = '1' AND event_type = 'checkout_completed'"
    ).fetchone()[0]
    assert raw_revenue == 130  # 50 + 30, and the re-sent 50: what reading raw.events would have counted

    results = readout.readout(campaign_conn, CAMPAIGN, 14, MARGIN_RATE).set_index("arm")

    # personalised: users 1-4, revenue 80 + 40 + 20 + 10 = 150 (not 200), 15.0 per user (not 20.0)
    assert results.at[PERSONALISED, "revenue"] == 150.0
    assert results.at[PERSONALISED, "revenue_per_user"] == 15.0
    assert results.at[PERSONALISED, "re_engaged_users"] == 4


def test_readout_of_an_unknown_campaign_is_empty(campaign_conn):
    assert readout.readout(campaign_conn, "winback-1999-01-01", 14, MARGIN_RATE).empty


def test_write_results_replaces_the_campaign_rows(campaign_conn):
    results = readout.readout(campaign_conn, CAMPAIGN, 14, MARGIN_RATE)
    readout.write_results(campaign_conn, results)
    readout.write_results(campaign_conn, results)
    stored = campaign_conn.execute(
        "SELECT arm, re_engaged_users, abs_lift_vs_holdout, meets_seed_criterion FROM crm.experiment_results "
        "WHERE campaign_id = %s ORDER BY arm",
        (CAMPAIGN,),
    ).fetchall()
    assert stored == [
        (HOLDOUT, 1, None, True),
        (NON_PERSONALISED, 2, pytest.approx(0.0), True),
        (PERSONALISED, 4, pytest.approx(0.2), True),
    ]
    economics = campaign_conn.execute(
        "SELECT arm, redeemed_users, reward_cost, reward_cost_per_user, cost_per_incremental_reactivation, "
        "net_incremental_margin, net_incremental_margin_per_user, personalised_cost_within_non_personalised, "
        "order_margin_rate FROM crm.experiment_results WHERE campaign_id = %s ORDER BY arm",
        (CAMPAIGN,),
    ).fetchall()
    assert economics == [
        (HOLDOUT, 0, 0.0, 0.0, None, 0.0, 0.0, True, MARGIN_RATE),
        (NON_PERSONALISED, 2, 20.0, 2.0, None, pytest.approx(-11.0), pytest.approx(-1.1), True, MARGIN_RATE),
        (PERSONALISED, 3, 18.0, 1.8, pytest.approx(9.0), pytest.approx(13.5), pytest.approx(1.35), True, MARGIN_RATE),
    ]


def test_a_warehouse_from_before_the_economics_gains_their_columns(campaign_conn):
    """Day 2: crm.experiment_results exists without the cost columns; the DDL adds them and keeps the rows."""
    from ml.warehouse import ddl

    with campaign_conn.transaction(force_rollback=True):
        campaign_conn.execute("DROP TABLE IF EXISTS crm.experiment_results")
        campaign_conn.execute(
            "CREATE TABLE crm.experiment_results (campaign_id text NOT NULL, arm text NOT NULL, users bigint, "
            "PRIMARY KEY (campaign_id, arm))"
        )
        campaign_conn.execute("INSERT INTO crm.experiment_results VALUES ('old', 'holdout', 7)")
        ddl.ensure(campaign_conn, "crm")
        ddl.ensure(campaign_conn, "crm")  # and again: nothing left to add
        columns = {
            name
            for (name,) in campaign_conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'crm' AND table_name = 'experiment_results'"
            )
        }
        assert set(readout.ECONOMICS_COLUMNS) | {"personalised_cost_within_non_personalised", "order_margin_rate"} <= (
            columns
        )
        assert campaign_conn.execute("SELECT users, reward_cost FROM crm.experiment_results").fetchall() == [(7, None)]


def test_run_readout_stores_logs_and_judges_the_campaign(campaign_conn, campaign_url, settings):
    import mlflow

    summary = readout.run_readout(dataclasses.replace(settings, warehouse_url=campaign_url), CAMPAIGN_DATE)

    assert json.loads(json.dumps(summary, allow_nan=False)) == summary  # what Airflow's XCom stores
    assert summary["campaign_id"] == CAMPAIGN and summary["window_complete"]
    # settings.order_margin_rate is 0.30: 0.3 x (150 - 24) - 18 = 19.8 for personalised, 0.3 x 36 - 20 = -9.2
    assert settings.order_margin_rate == 0.3 and summary["order_margin_rate"] == 0.3
    assert summary["arms"][PERSONALISED] == {
        "users": 10,
        "re_engaged_users": 4,
        "re_engagement_rate": 0.4,
        "revenue_per_user": 15.0,
        "redeemed_users": 3,
        "reward_cost": 18.0,
        "reward_cost_per_user": 1.8,
        "incremental_reactivations": 2.0,
        "cost_per_incremental_reactivation": 9.0,
        "net_incremental_margin": 19.8,
        "net_incremental_margin_per_user": 1.98,
    }
    assert summary["arms"][NON_PERSONALISED]["cost_per_incremental_reactivation"] is None
    assert summary["arms"][NON_PERSONALISED]["net_incremental_margin"] == -9.2
    assert summary["meets_seed_criterion"] is True and summary["seed_criterion_significant"] is False
    assert summary["personalised_cost_within_non_personalised"] is True
    assert "not significantly" in summary["verdict"]
    assert "1.80 QAR per user" in summary["verdict"] and "2.00" in summary["verdict"]
    assert "personalised spent no more" in summary["verdict"]
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["personalised.re_engagement_rate"] == 0.4
    assert run.data.metrics["personalised.reward_cost"] == 18.0
    assert run.data.metrics["personalised.cost_per_incremental_reactivation"] == 9.0
    assert run.data.metrics["non_personalised.net_incremental_margin"] == pytest.approx(-9.2)
    assert "non_personalised.cost_per_incremental_reactivation" not in run.data.metrics
    assert run.data.tags["personalised_cost_within_non_personalised"] == "True"
    assert run.data.params["order_margin_rate"] == "0.3"
    assert run.data.params["campaign_id"] == CAMPAIGN
    count = campaign_conn.execute("SELECT count(*) FROM crm.experiment_results WHERE campaign_id = %s", (CAMPAIGN,))
    assert count.fetchone()[0] == 3


def test_the_readout_command_without_a_campaign_names_the_latest_published_one(
    campaign_url, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("REKINDLE_HOME", str(tmp_path))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", campaign_url)

    assert rekindle(["readout", "--date", "2025-01-01"]) == 1

    out = capsys.readouterr().out
    assert "winback-2025-01-01: no published offers for this campaign" in out
    next_date = CAMPAIGN_DATE + timedelta(days=1)
    assert (
        f"the latest published campaign is {NEXT_CAMPAIGN}: rekindle readout --date {next_date} reads it out "
        f"(its window closed on {next_date + timedelta(days=14)})"
    ) in out


def test_run_readout_without_a_campaign_says_so(settings):
    summary = readout.run_readout(settings, date(2025, 1, 1))
    assert summary == {"campaign_id": "winback-2025-01-01", "status": "no published offers for this campaign"}


def test_the_dag_reads_out_the_campaign_whose_window_just_closed():
    assert readout.campaign_date_due(date(2025, 3, 24), 14) == CAMPAIGN_DATE


# --------------------------------------------------------------------------- against the simulated truth


def simulated_campaign(end_date: date, seed: int):
    """A generated world and a three-arm campaign on its inactive users at ``end_date``: personalised
    users get their truly best offer (often none), non-personalised free delivery for 10 QAR."""
    marketplace = generate_marketplace(n_users=6_000, n_merchants=80, seed=seed, end_date=end_date)
    truth = marketplace.user_truth
    inactive = truth.loc[truth["days_since_last_order"] >= 7, "user_id"]
    campaign_id = assignment.campaign_id_for(end_date)
    arms = assignment.assign_arms(campaign_id, inactive)
    best = marketplace.offer_truth[marketplace.offer_truth["is_best"]].set_index("user_id").reindex(arms.index)
    personalised, non_personalised = arms.eq(PERSONALISED).to_numpy(), arms.eq(NON_PERSONALISED).to_numpy()
    offers = pd.DataFrame(
        {
            "run_date": end_date,
            "campaign_id": campaign_id,
            "user_id": arms.index,
            "arm": arms.to_numpy(),
            "event_type": np.where(
                personalised, best["event_type"], np.where(non_personalised, "free_delivery", "none")
            ),
            "reward_size": np.where(personalised, best["reward_size"], np.where(non_personalised, 10.0, 0.0)),
        }
    )
    return marketplace, offers


def test_measured_lift_covers_the_true_lift(settings):
    end_date = date(2025, 6, 1)
    marketplace, offers = simulated_campaign(end_date, seed=11)
    sent = campaign_replay.simulation_offers(offers)
    events, _ = simulate_days(marketplace, end_date, 14, sent, seed=11)
    true_rates = campaign_replay.true_re_engagement_by_arm(
        offers, campaign_replay.true_response_probability(marketplace, sent, end_date)
    )

    url = settings.warehouse_url
    with psycopg.connect(url) as conn:
        ingest.ensure_raw_schema(conn)
        ingest.load_frame(conn, "users", marketplace.users, "users")
        ingest.load_frame(conn, "merchants", marketplace.merchants, "merchants")
        publish_offers(conn, offers)
        loaded = ingest.load_frame(conn, "events", events, "simulated")
        assert loaded.rows_quarantined == 0
    build_readout_marts(settings, url, end_date + timedelta(days=14))
    with psycopg.connect(url) as conn:
        results = readout.readout(conn, assignment.campaign_id_for(end_date), 14, MARGIN_RATE).set_index("arm")

    for arm, baseline in ((PERSONALISED, HOLDOUT), (NON_PERSONALISED, HOLDOUT), (PERSONALISED, NON_PERSONALISED)):
        row = results.loc[arm]
        true_absolute = true_rates[arm] - true_rates[baseline]
        true_relative = true_rates[arm] / true_rates[baseline] - 1.0
        assert row[f"abs_lift_vs_{baseline}_ci_low"] <= true_absolute <= row[f"abs_lift_vs_{baseline}_ci_high"]
        assert row[f"rel_lift_vs_{baseline}_ci_low"] <= true_relative <= row[f"rel_lift_vs_{baseline}_ci_high"]
    for arm, rate in true_rates.items():
        wilson = statistics.wilson_interval(int(results.at[arm, "re_engaged_users"]), int(results.at[arm, "users"]))
        assert wilson.low <= rate <= wilson.high
    # The world pays each treated responder's reward with a reward_redeemed event carrying its size: the readout's
    # realised cost is what those events add up to, per arm.
    redemptions = events[events["event_type"].eq("reward_redeemed")]
    paid = redemptions["properties"].map(lambda text: json.loads(text)["reward_size"])
    arm_of = offers.set_index("user_id")["arm"]
    true_cost = paid.groupby(redemptions["user_id"].map(arm_of)).sum()
    assert true_cost[NON_PERSONALISED] > 0
    for arm in ARMS:
        assert results.at[arm, "reward_cost"] == pytest.approx(true_cost.get(arm, 0.0)), arm
    assert (
        results.at[NON_PERSONALISED, "redeemed_users"] == redemptions["user_id"].map(arm_of).eq(NON_PERSONALISED).sum()
    )
    # Offers move people in this world: free delivery beats doing nothing, clearly.
    assert results.at[NON_PERSONALISED, "p_value_vs_holdout"] < 0.05
