"""The synthetic marketplace: reproducible, well-formed, and carrying the behaviour its ground truth claims."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from ml.synthetic.marketplace import CATEGORIES, Marketplace, generate_marketplace
from ml.synthetic.world import (
    DAYPARTS,
    EVENT_TYPES,
    REWARD_SIZES,
    SECONDS_PER_DAY,
    baseline_reactivation_probability,
    daypart_at,
    distance_km,
    habitual_dayparts,
    simulate_days,
    true_reactivation_probability,
)

END_DATE = dt.date(2025, 3, 1)
DAYS = 30
WINDOW_START = pd.Timestamp(END_DATE - dt.timedelta(days=DAYS), tz="UTC")
WINDOW_END = pd.Timestamp(END_DATE, tz="UTC")
REACTIVATION_WINDOW = pd.Timedelta(days=14)

EXPECTED_COLUMNS = {
    "users": ["user_id", "signup_at", "platform", "home_zone", "marketing_opt_in"],
    "merchants": ["merchant_id", "merchant_name", "category", "zone", "lat", "lng", "price_level", "opened_at"],
    "events": [
        "event_id",
        "user_id",
        "event_type",
        "event_time",
        "merchant_id",
        "merchant_name",
        "order_total",
        "platform",
        "zone",
        "properties",
    ],
    "campaign_exposures": ["campaign_id", "user_id", "sent_at", "event_type", "reward_size", "assignment"],
}
MERCHANT_EVENTS = {"checkout_completed", "merchant_page_viewed", "product_page_viewed", "reward_redeemed"}


def small_marketplace(seed: int = 7) -> Marketplace:
    return generate_marketplace(seed=seed, days=DAYS, end_date=END_DATE, n_users=400, n_merchants=60)


@pytest.fixture(scope="module")
def market() -> Marketplace:
    return small_marketplace()


@pytest.fixture(scope="module")
def large_market() -> Marketplace:
    """Big enough for campaign effects to stand out from sampling noise."""
    return generate_marketplace(seed=11, days=DAYS, end_date=END_DATE, n_users=4_000, n_merchants=150)


def orders(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["event_type"] == "checkout_completed"]


def reactivated(exposures: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Per exposure row: did the user order within 14 days of the send?"""
    joined = exposures.reset_index(names="exposure").merge(
        orders(events)[["user_id", "event_time"]],
        on="user_id",
        how="left",
    )
    after_send = joined["event_time"] - joined["sent_at"]
    in_window = (after_send >= pd.Timedelta(0)) & (after_send < REACTIVATION_WINDOW)
    return in_window.groupby(joined["exposure"]).any().reindex(exposures.index, fill_value=False)


# --------------------------------------------------------------------------- reproducibility and shape


def test_same_seed_gives_identical_tables_and_another_seed_does_not(market):
    again = small_marketplace(seed=7)
    other = small_marketplace(seed=8)
    for table in ("users", "merchants", "events", "campaign_exposures", "user_truth", "offer_truth"):
        pd.testing.assert_frame_equal(getattr(market, table), getattr(again, table))
    assert not market.events["event_id"].isin(other.events["event_id"]).any()
    assert len(market.events) != len(other.events) or not market.events["user_id"].equals(other.events["user_id"])


def test_tables_have_exactly_the_contract_columns_and_types(market):
    for table, columns in EXPECTED_COLUMNS.items():
        assert list(getattr(market, table).columns) == columns, table
    for table, column in [
        ("users", "signup_at"),
        ("merchants", "opened_at"),
        ("events", "event_time"),
        ("campaign_exposures", "sent_at"),
    ]:
        dtype = getattr(market, table)[column].dtype
        assert isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC", (table, column)
    events = market.events
    assert events["user_id"].dtype == np.int64
    assert events["merchant_id"].dtype == "Int64"
    assert events["order_total"].dtype == np.float64
    assert market.users["user_id"].tolist() == list(range(1, 401))
    assert market.users["marketing_opt_in"].dtype == bool
    assert set(market.users["platform"]) <= {"ios", "android", "web"}
    assert set(market.merchants["category"]) <= set(CATEGORIES)
    assert market.merchants["price_level"].between(1, 4).all()
    assert market.merchants["lat"].between(25.0, 25.6).all() and market.merchants["lng"].between(51.2, 51.8).all()
    assert market.merchants["merchant_name"].is_unique


def test_event_ids_are_unique(market):
    assert market.events["event_id"].is_unique


def test_every_event_falls_inside_the_window_and_nothing_in_the_future(market):
    times = market.events["event_time"]
    assert times.min() >= WINDOW_START
    assert times.max() < WINDOW_END
    assert market.campaign_exposures["sent_at"].lt(WINDOW_END).all()


def test_merchant_fields_order_totals_and_properties_follow_the_event_type(market):
    events = market.events
    about_merchant = events["event_type"].isin(MERCHANT_EVENTS)
    assert events.loc[about_merchant, "merchant_id"].notna().all()
    assert events.loc[~about_merchant, "merchant_id"].isna().all()
    names = market.merchants.set_index("merchant_id")["merchant_name"]
    with_merchant = events[about_merchant]
    assert (with_merchant["merchant_name"].to_numpy() == names.loc[with_merchant["merchant_id"]].to_numpy()).all()
    is_order = events["event_type"] == "checkout_completed"
    assert (events.loc[is_order, "order_total"] > 0).all()
    assert events.loc[~is_order, "order_total"].isna().all()
    assert all(isinstance(json.loads(text), dict) for text in events["properties"])
    users = market.users.set_index("user_id")
    assert (events["zone"].to_numpy() == users.loc[events["user_id"], "home_zone"].to_numpy()).all()
    assert (events["platform"].to_numpy() == users.loc[events["user_id"], "platform"].to_numpy()).all()


# --------------------------------------------------------------------------- behaviour


def test_every_order_follows_a_view_of_the_same_merchant_minutes_before(market):
    checkouts = orders(market.events)[["event_id", "user_id", "merchant_id", "event_time"]]
    views = market.events[market.events["event_type"] == "merchant_page_viewed"]
    views = views[["user_id", "merchant_id", "event_time"]]
    pairs = checkouts.merge(views, on=["user_id", "merchant_id"], suffixes=("", "_view"))
    gap = pairs["event_time"] - pairs["event_time_view"]
    preceded = pairs.loc[(gap > pd.Timedelta(0)) & (gap < pd.Timedelta(minutes=30)), "event_id"]
    assert set(checkouts["event_id"]) == set(preceded)


def test_no_order_before_the_merchant_opened_or_the_user_signed_up(market):
    placed = orders(market.events)
    opened = market.merchants.set_index("merchant_id")["opened_at"].loc[placed["merchant_id"]].to_numpy()
    signed_up = market.users.set_index("user_id")["signup_at"].loc[placed["user_id"]].to_numpy()
    assert (placed["event_time"].to_numpy() > opened).all()
    assert (
        market.events["event_time"].to_numpy()
        > market.users.set_index("user_id")["signup_at"].loc[market.events["user_id"]].to_numpy()
    ).all()
    assert (placed["event_time"].to_numpy() > signed_up).all()
    assert market.merchants["opened_at"].between(WINDOW_START, WINDOW_END).any(), "some merchants open mid-window"


def test_users_fall_into_every_recency_band(market):
    last_order = orders(market.events).groupby("user_id")["event_time"].max()
    days_before_end = (WINDOW_END - last_order).dt.days
    bands = pd.cut(days_before_end, [-1, 6, 13, 29], labels=["0-6", "7-13", "14-29"]).value_counts()
    assert (bands >= 10).all(), bands.to_dict()
    never_in_window = ~market.users["user_id"].isin(last_order.index)
    signed_up_long_ago = market.users["signup_at"] < WINDOW_START - pd.Timedelta(days=30)
    assert (never_in_window & signed_up_long_ago).sum() >= 10


def test_users_mostly_reorder_from_merchants_they_already_used(market):
    placed = orders(market.events)
    repeat_share = placed.duplicated(["user_id", "merchant_id"]).sum() / len(placed)
    assert repeat_share > 0.3


def test_tastes_are_distributions_and_drive_what_users_order(large_market):
    truth = large_market.user_truth
    taste = truth[[f"taste_{category}" for category in CATEGORIES]].to_numpy()
    np.testing.assert_allclose(taste.sum(axis=1), 1.0)
    assert (truth["favourite_category"].to_numpy() == np.array(CATEGORIES)[taste.argmax(axis=1)]).all()
    category = large_market.merchants.set_index("merchant_id")["category"]
    placed = orders(large_market.events)
    ordered_category = category.loc[placed["merchant_id"]].to_numpy()
    favourite = truth.set_index("user_id")["favourite_category"].loc[placed["user_id"]].to_numpy()
    assert (ordered_category == favourite).mean() > 0.5


# --------------------------------------------------------------------------- context: distance and day-part


def test_the_next_order_chances_are_those_the_world_draws_its_orders_from():
    simulators = []
    with_observer = generate_marketplace(
        seed=7,
        days=DAYS,
        end_date=END_DATE,
        n_users=400,
        n_merchants=60,
        order_observer=lambda simulator, users, order_s, day_start_s: simulators.append(simulator),
    )
    # Watching does not change the world.
    assert with_observer.events.equals(small_marketplace().events)
    simulator = simulators[-1]
    state = simulator.state
    has_regulars = np.flatnonzero(state.regular_counts.sum(axis=1) > 0)
    users = np.concatenate([has_regulars[:3], np.flatnonzero(state.regular_counts.sum(axis=1) == 0)[:1]])
    day_start_s = (DAYS - 1) * SECONDS_PER_DAY
    chances = simulator.chooser.next_order_probabilities(users, day_start_s, state)
    assert np.allclose(chances.sum(axis=1), 1.0)

    draws = 20_000
    rng = np.random.default_rng(0)
    repeated = np.repeat(users, draws)
    chosen = simulator.chooser.choose(
        repeated, habitual_dayparts(simulator.population.daypart[repeated], rng), day_start_s, state, rng
    )
    observed = np.stack([np.bincount(chosen[repeated == user], minlength=chances.shape[1]) / draws for user in users])
    assert np.abs(observed - chances).max() < 0.015
    # A regular is the likeliest next merchant of a user with regulars; a user without any only explores.
    assert all(chances[i].argmax() in state.regulars[user] for i, user in enumerate(users[:3]))


def test_the_truth_holds_home_locations_and_day_part_profiles(market):
    assert market.user_truth[["home_lat", "home_lng"]].notna().all().all()
    truth = market.merchant_truth
    assert truth["merchant_id"].tolist() == market.merchants["merchant_id"].tolist()
    profile = truth[[f"daypart_{daypart}" for daypart in DAYPARTS]].to_numpy()
    np.testing.assert_allclose(profile.sum(axis=1), 1.0)
    assert (profile > 0).all()


def test_users_order_closer_to_home_than_the_open_merchants_around_them(large_market):
    placed = orders(large_market.events)
    homes = large_market.user_truth.set_index("user_id").loc[placed["user_id"], ["home_lat", "home_lng"]].to_numpy()
    merchants = large_market.merchants.set_index("merchant_id")
    chosen = merchants.loc[placed["merchant_id"], ["lat", "lng"]].to_numpy()
    ordered_km = distance_km(homes[:, 0], homes[:, 1], chosen[:, 0], chosen[:, 1]).mean()
    # Every order against every merchant open at its time: the distance a context-blind choice would travel.
    km_to_all = distance_km(
        homes[:, 0, None], homes[:, 1, None], merchants["lat"].to_numpy()[None, :], merchants["lng"].to_numpy()[None, :]
    )
    is_open = merchants["opened_at"].to_numpy()[None, :] <= placed["event_time"].to_numpy()[:, None]
    open_km = (km_to_all * is_open).sum() / is_open.sum()
    assert ordered_km < 0.7 * open_km


def test_merchants_take_their_orders_in_the_day_parts_of_their_profile(large_market):
    placed = orders(large_market.events)
    time_of_day_s = (placed["event_time"] - placed["event_time"].dt.normalize()).dt.total_seconds().to_numpy()
    share = pd.crosstab(placed["merchant_id"], daypart_at(time_of_day_s), normalize="index")
    share.columns = [DAYPARTS[code] for code in share.columns]
    profile = large_market.merchant_truth.set_index("merchant_id").loc[share.index]
    leaning = profile[[f"daypart_{daypart}" for daypart in DAYPARTS]].to_numpy().argmax(axis=1)
    lunch_merchants, late_merchants = share[leaning == 0], share[leaning == 2]
    assert len(lunch_merchants) >= 5 and len(late_merchants) >= 5
    assert late_merchants["late"].mean() > lunch_merchants["late"].mean() + 0.1
    assert lunch_merchants["lunch"].mean() > late_merchants["lunch"].mean() + 0.1


def test_campaigns_are_randomised_and_holdout_gets_no_offer(market):
    exposures = market.campaign_exposures
    assert 2 <= exposures["campaign_id"].nunique() <= 3
    holdout = exposures[exposures["assignment"] == "holdout"]
    treated = exposures[exposures["assignment"] == "treatment"]
    assert (holdout["event_type"] == "none").all() and (holdout["reward_size"] == 0).all()
    assert set(treated["event_type"]) <= set(EVENT_TYPES) and set(treated["reward_size"]) <= set(REWARD_SIZES)
    assert 0.05 < len(holdout) / len(exposures) < 0.3
    assert set(exposures["assignment"]) == {"treatment", "holdout"}
    assert not exposures.duplicated(["campaign_id", "user_id"]).any()


def test_campaigns_start_after_two_weeks_of_history_so_their_features_are_informative(market):
    first_sent = market.campaign_exposures["sent_at"].min()
    assert first_sent >= WINDOW_START + pd.Timedelta(days=14)
    assert market.campaign_exposures["sent_at"].max() < WINDOW_END


def test_campaigns_target_users_without_an_order_in_the_previous_week(market):
    exposures = market.campaign_exposures
    joined = exposures.reset_index(names="exposure").merge(
        orders(market.events)[["user_id", "event_time"]],
        on="user_id",
    )
    before_send = joined["sent_at"] - joined["event_time"]
    recent = (before_send > pd.Timedelta(0)) & (before_send <= pd.Timedelta(days=7))
    assert not recent.any()


def test_campaign_orders_are_in_the_event_stream_with_their_campaign(market):
    events = market.events
    props = events["properties"].map(json.loads)
    campaign_id = props.map(lambda p: p.get("campaign_id"))
    campaign_events = events[campaign_id.notna()].assign(campaign_id=campaign_id[campaign_id.notna()])
    assert set(campaign_events["event_type"]) == {"campaign_opened", "checkout_completed", "reward_redeemed"}
    exposures = market.campaign_exposures
    matched = campaign_events.merge(exposures, on=["campaign_id", "user_id"], suffixes=("", "_exposure"))
    assert len(matched) == len(campaign_events), "every campaign event belongs to an exposure"
    assert (matched["assignment"] == "treatment").all()
    assert (matched["event_time"] >= matched["sent_at"]).all()
    assert (matched["event_time"] < matched["sent_at"] + REACTIVATION_WINDOW).all()
    redeemed = matched[matched["event_type"] == "reward_redeemed"]
    assert (redeemed["properties"].map(lambda text: json.loads(text)["reward_size"]) == redeemed["reward_size"]).all()
    assert len(redeemed) == (matched["event_type"] == "checkout_completed").sum() > 0


def test_treated_users_reactivate_more_than_holdout(large_market):
    exposures = large_market.campaign_exposures
    rate = reactivated(exposures, large_market.events).groupby(exposures["assignment"]).mean()
    assert rate["treatment"] > rate["holdout"] + 0.02, rate.to_dict()


# --------------------------------------------------------------------------- ground truth


def test_orders_per_reactivation_matches_what_returning_users_order_in_the_window(large_market):
    """The truth's window value of a comeback (first order plus follow-on organic orders) against the
    generated data: orders in the window of exposed users who came back."""
    exposures = large_market.campaign_exposures
    observed = exposures[exposures["sent_at"] + REACTIVATION_WINDOW <= WINDOW_END]
    joined = observed.merge(orders(large_market.events)[["user_id", "event_time"]], on="user_id")
    in_window = joined[
        (joined["event_time"] >= joined["sent_at"]) & (joined["event_time"] < joined["sent_at"] + REACTIVATION_WINDOW)
    ]
    per_return = in_window.groupby(["campaign_id", "user_id"]).size()
    truth = large_market.offer_truth.groupby("user_id")["orders_per_reactivation"].first()
    predicted = truth.loc[per_return.index.get_level_values("user_id")].to_numpy()
    assert (truth >= 1).all()
    assert per_return.mean() == pytest.approx(predicted.mean(), rel=0.15)
    assert per_return.mean() > 1.3, "follow-on orders are a large part of a comeback's value"


def test_offer_truth_has_every_arm_and_exactly_one_best_per_user(market):
    offers = market.offer_truth
    arms = offers.groupby("user_id").size()
    assert (arms == 1 + len(EVENT_TYPES) * len(REWARD_SIZES)).all() and len(arms) == len(market.users)
    assert (offers.groupby("user_id")["is_best"].sum() == 1).all()
    best = offers[offers["is_best"]]
    assert (
        best["expected_incremental_margin"].to_numpy()
        == offers.groupby("user_id")["expected_incremental_margin"].max().loc[best["user_id"]].to_numpy()
    ).all()
    assert ((best["event_type"] == "none") == (best["expected_incremental_margin"] <= 0)).all()
    assert best["event_type"].nunique() > 2, "the best offer depends on the user"


def test_offer_truth_margin_follows_its_formula(market):
    offers = market.offer_truth
    p_none = offers[offers["event_type"] == "none"].set_index("user_id")["p_reactivate"]
    p_none = p_none.loc[offers["user_id"]].to_numpy()
    expected = (
        0.30 * offers["expected_order_value"] * offers["orders_per_reactivation"] * (offers["p_reactivate"] - p_none)
        - offers["reward_size"] * offers["p_reactivate"]
    )
    np.testing.assert_allclose(offers["expected_incremental_margin"], expected)
    assert offers["p_reactivate"].between(0, 1).all()


def test_response_model_has_diminishing_returns_and_unresponsive_users(market):
    truth = market.user_truth
    for event_type in EVENT_TYPES:
        sizes = (0.0, 5.0, 10.0, 20.0)
        p = np.column_stack([true_reactivation_probability(truth, event_type, size) for size in sizes])
        np.testing.assert_allclose(p[:, 0], baseline_reactivation_probability(truth))
        steps = np.diff(p, axis=1) / np.array([5.0, 5.0, 10.0])
        assert (steps >= 0).all()
        assert (steps[:, 1] <= steps[:, 0] + 1e-12).all() and (steps[:, 2] <= steps[:, 1] + 1e-12).all()
    unresponsive = truth["deal_responsiveness"] == 0
    assert unresponsive.any()
    p_any = true_reactivation_probability(truth[unresponsive], "percent_discount", 20.0)
    np.testing.assert_allclose(p_any, baseline_reactivation_probability(truth[unresponsive]))


def test_marketplace_round_trips_through_parquet(market, tmp_path):
    market.write(tmp_path)
    assert (tmp_path / "ground_truth" / "offer_truth.parquet").is_file()
    again = Marketplace.read(tmp_path)
    for table in ("users", "merchants", "events", "campaign_exposures", "user_truth", "merchant_truth", "offer_truth"):
        pd.testing.assert_frame_equal(getattr(again, table), getattr(market, table))


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        generate_marketplace(scale="huge")


# --------------------------------------------------------------------------- continuing the world


def offers_for_inactive_users(market: Marketplace) -> pd.DataFrame:
    """Each inactive user's strongest offer (largest true lift); every other user held out."""
    truth = market.user_truth
    inactive = truth.loc[truth["days_since_last_order"] >= 7, "user_id"]
    arms = market.offer_truth
    arms = arms[arms["user_id"].isin(inactive) & (arms["event_type"] != "none")]
    strongest = arms.loc[arms.groupby("user_id")["p_reactivate"].idxmax()].reset_index(drop=True)
    return strongest.assign(
        campaign_id="sim-1",
        assignment=np.where(strongest.index % 2 == 0, "treatment", "holdout"),
    )[["campaign_id", "user_id", "event_type", "reward_size", "assignment"]]


def test_simulate_days_continues_the_world_inside_its_window(market):
    start, days = END_DATE, 5
    offers = offers_for_inactive_users(market).head(50)
    events, exposures = simulate_days(market, start, days, offers, seed=3)
    assert list(events.columns) == EXPECTED_COLUMNS["events"]
    assert list(exposures.columns) == EXPECTED_COLUMNS["campaign_exposures"]
    assert events["event_time"].min() >= pd.Timestamp(start, tz="UTC")
    assert events["event_time"].max() < pd.Timestamp(start + dt.timedelta(days=days), tz="UTC")
    assert events["event_id"].is_unique and not events["event_id"].isin(market.events["event_id"]).any()
    assert len(orders(events)) > 0
    assert exposures["user_id"].tolist() == offers["user_id"].tolist()
    holdout = exposures["assignment"] == "holdout"
    assert (exposures.loc[holdout, "event_type"] == "none").all()
    assert (exposures.loc[holdout, "reward_size"] == 0).all()
    offered = offers[(offers["assignment"] == "treatment").to_numpy()]
    assert exposures.loc[~holdout, "event_type"].tolist() == offered["event_type"].tolist()
    again, _ = simulate_days(market, start, days, offers, seed=3)
    pd.testing.assert_frame_equal(events, again)


def test_simulated_offers_lift_reactivation_as_the_truth_says(large_market):
    offers = offers_for_inactive_users(large_market)
    events, exposures = simulate_days(large_market, END_DATE, 15, offers, seed=5)
    observed = reactivated(exposures, events).groupby(exposures["assignment"]).mean()

    truth = large_market.user_truth.set_index("user_id").loc[offers["user_id"]].reset_index()
    p_offer = true_reactivation_probability(truth, offers["event_type"].to_numpy(), offers["reward_size"].to_numpy())
    p_none = baseline_reactivation_probability(truth)
    treated = (offers["assignment"] == "treatment").to_numpy()
    true_lift = p_offer[treated].mean() - p_none[~treated].mean()

    observed_lift = observed["treatment"] - observed["holdout"]
    assert true_lift > 0.05
    assert observed_lift > 0.5 * true_lift
    assert observed["holdout"] == pytest.approx(p_none[~treated].mean(), abs=0.05)
    assert observed["treatment"] == pytest.approx(p_offer[treated].mean(), abs=0.05)
