"""Offer model: uplift learners, metrics on hand-computed cases, the policy's budget and holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ml.experiments.assignment import hash_unit
from ml.offers.arms import NO_OFFER, arm_label, arm_labels
from ml.offers.evaluation import (
    ipw_policy_value,
    observed_uplift,
    qini_coefficient,
    qini_curve,
    qini_plot,
    random_policy_value,
    uniform_policy_values,
    uplift_at_k,
    uplift_at_k_ratio,
)
from ml.offers.policy import (
    BudgetLimits,
    OfferPolicy,
    allocate_offers,
    best_offers,
    expected_gain,
    expected_incremental_margin,
    tune_shrinkage,
)
from ml.offers.uplift import (
    BoostedRegressor,
    BoosterConfig,
    RLearner,
    mean_uplift,
    shrink_uplift,
)

CONTROL = NO_OFFER
SMALL_EFFECT = BoosterConfig(num_leaves=4, min_child_samples=100, n_seeds=2)

# --- metrics -------------------------------------------------------------------------------------


def test_observed_uplift_and_uplift_at_k_on_a_hand_computed_case():
    score = [4, 3, 2, 1]
    treated = [True, False, True, False]
    y = [1, 0, 0, 0]
    assert observed_uplift(treated, y) == pytest.approx(0.5)
    assert uplift_at_k(score, treated, y, k=0.5) == pytest.approx(1.0)
    assert uplift_at_k_ratio(score, treated, y, k=0.5) == pytest.approx(2.0)
    assert np.isnan(observed_uplift([True, True], [1, 0]))


def test_qini_curve_and_coefficient_on_a_hand_computed_case():
    curve = qini_curve([4, 3, 2, 1], [True, False, True, False], [1, 0, 1, 1])
    np.testing.assert_allclose(curve["fraction"], [0, 0.25, 0.5, 0.75, 1.0])
    # cumulative: Y_T 1,1,2,2; Y_C 0,0,0,1; N_T/N_C 0,1,2,1 -> gains 1,1,2,1 over 4 customers
    np.testing.assert_allclose(curve["qini"], [0, 0.25, 0.25, 0.5, 0.25])
    np.testing.assert_allclose(curve["random"], [0, 0.0625, 0.125, 0.1875, 0.25])
    assert qini_coefficient([4, 3, 2, 1], [True, False, True, False], [1, 0, 1, 1]) == pytest.approx(0.15625)


def test_perfect_ranking_has_a_larger_qini_than_the_reverse():
    rng = np.random.default_rng(0)
    effect = rng.random(4000)
    treated = rng.random(4000) < 0.5
    y = (rng.random(4000) < 0.1 + 0.5 * effect * treated).astype(float)
    assert qini_coefficient(effect, treated, y) > 0 > qini_coefficient(-effect, treated, y)
    assert uplift_at_k_ratio(effect, treated, y, 0.3) > 1.2


def test_qini_plot_returns_a_figure_with_one_line_per_model_and_random():
    curve = qini_curve([3, 2, 1], [True, False, True], [1, 0, 0])
    figure = qini_plot({"model": curve, "other": curve})
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].lines) == 3


def test_ipw_policy_values_on_a_hand_computed_case():
    logged = ["a", "b", "a", "b"]
    y = [1.0, 2.0, 3.0, 4.0]
    assert ipw_policy_value(["a", "a", "b", "b"], logged, y, 0.5) == pytest.approx((1 / 0.5 + 4 / 0.5) / 4)
    assert ipw_policy_value(["a", "a", "b", "b"], logged, y, {"a": 0.25, "b": 0.75}) == pytest.approx(
        (1 / 0.25 + 4 / 0.75) / 4
    )
    assert uniform_policy_values(["a", "b"], logged, y, 0.5) == pytest.approx({"a": 2.0, "b": 3.0})
    assert random_policy_value(["a", "b"], logged, y, 0.5) == pytest.approx(2.5)


# --- policy --------------------------------------------------------------------------------------


def test_expected_incremental_margin_pays_the_reward_only_on_redemption():
    p = pd.DataFrame({CONTROL: [0.1], "fd:10": [0.2]})
    value = pd.DataFrame({CONTROL: [100.0], "fd:10": [90.0]})
    margin = expected_incremental_margin(p, value, {"fd:10": 10.0}, CONTROL, margin_rate=0.3)
    assert list(margin.columns) == ["fd:10"]
    assert margin.iloc[0, 0] == pytest.approx(0.3 * (0.2 * 90 - 0.1 * 100) - 10 * 0.2)


def test_best_offers_gives_no_offer_when_nothing_is_positive_or_predictions_are_missing():
    gain = pd.DataFrame({"a": [1.0, -1.0, np.nan], "b": [2.0, -0.5, np.nan]})
    cost = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [5.0, 1.0, 1.0]})
    offers = best_offers(gain, cost, CONTROL)
    assert offers["arm"].tolist() == ["b", CONTROL, CONTROL]
    assert offers["expected_cost"].tolist() == [5.0, 0.0, 0.0]


def _random_predictions(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    arms = [CONTROL, "free_delivery:10", "percent_discount:20", "cashback:15"]
    p = pd.DataFrame(rng.uniform(0.05, 0.4, (n, len(arms))), columns=arms)
    value = pd.DataFrame(rng.uniform(40, 160, (n, len(arms))), columns=arms)
    return p, value


REWARDS = {"free_delivery:10": 10.0, "percent_discount:20": 20.0, "cashback:15": 15.0}


@pytest.mark.parametrize(
    "limits",
    [
        BudgetLimits(total_budget=300.0),
        BudgetLimits(segment_budgets={"lapsed": 50.0, "dormant": 120.0}),
        BudgetLimits(total_budget=400.0, segment_budgets={"lapsed": 80.0}, segment_max_offers={"dormant": 25}),
    ],
)
def test_budget_and_segment_caps_are_never_exceeded(limits):
    p, value = _random_predictions(3000, seed=1)
    segment = np.random.default_rng(2).choice(["lapsed", "dormant", "churned"], 3000)
    policy = OfferPolicy("c-1", REWARDS, margin_rate=0.3, limits=limits)
    offers = policy.decide([f"u{i}" for i in range(3000)], p, value, segment)
    offered = offers[offers["arm"] != CONTROL]
    assert len(offered) > 0
    if limits.total_budget is not None:
        assert offers["expected_cost"].sum() <= limits.total_budget + 1e-9
    for group, budget in limits.segment_budgets.items():
        assert offers.loc[offers["segment"] == group, "expected_cost"].sum() <= budget + 1e-9
    for group, cap in limits.segment_max_offers.items():
        assert (offered["segment"] == group).sum() <= cap
    assert (offered["expected_gain"] > 0).all()


def test_unconstrained_allocation_takes_every_users_best_positive_arm():
    p, value = _random_predictions(500, seed=3)
    gain = expected_incremental_margin(p, value, REWARDS, CONTROL, 0.3)
    cost = p[list(REWARDS)] * pd.Series(REWARDS)
    offers = allocate_offers(gain, cost, np.full(500, "all"), BudgetLimits(), CONTROL)
    expected = np.where(gain.max(axis=1) > 0, gain.idxmax(axis=1), CONTROL)
    assert offers["arm"].tolist() == expected.tolist()


def test_a_tight_budget_goes_to_the_most_efficient_users_first():
    gain = pd.DataFrame({"a": [1.0, 3.0, 2.0]})
    cost = pd.DataFrame({"a": [1.0, 1.0, 4.0]})
    offers = allocate_offers(gain, cost, ["s", "s", "s"], BudgetLimits(total_budget=2.0), CONTROL)
    assert offers["arm"].tolist() == ["a", "a", CONTROL]


def test_holdout_users_never_get_an_offer_and_the_share_is_about_ten_percent():
    p, value = _random_predictions(20000, seed=4)
    users = [f"user-{i}" for i in range(20000)]
    offers = OfferPolicy("winback-2026-01", REWARDS, margin_rate=0.5).decide(users, p, value)
    assert 0.09 < offers["holdout"].mean() < 0.11
    assert (offers.loc[offers["holdout"], "arm"] == CONTROL).all()
    assert (offers.loc[offers["holdout"], "expected_cost"] == 0).all()
    assert (offers.loc[~offers["holdout"], "arm"] != CONTROL).any()


def test_the_holdout_is_the_experiments_hash_stable_across_runs_and_depending_on_the_campaign():
    users = [f"user-{i}" for i in range(5000)]
    p, value = _random_predictions(len(users), seed=5)

    def holdout(campaign_id: str) -> np.ndarray:
        return OfferPolicy(campaign_id, REWARDS, margin_rate=0.5).decide(users, p, value)["holdout"].to_numpy()

    # The one seeded hash (ml.experiments.assignment.hash_unit) decides, as it does for the experiment's arms.
    assert holdout("c-1").tolist() == [hash_unit("c-1", u) < 0.10 for u in users]
    assert np.array_equal(holdout("c-1"), holdout("c-1"))
    assert not np.array_equal(holdout("c-1"), holdout("c-2"))


def test_shrinkage_zero_means_one_arm_for_everyone():
    outcomes = pd.DataFrame({CONTROL: [0.1, 0.2, 0.3], "a": [0.3, 0.2, 0.3], "b": [0.1, 0.5, 0.3]})
    centre = mean_uplift(outcomes, CONTROL)
    assert centre == pytest.approx({"a": 0.2 / 3, "b": 0.1})
    flat = shrink_uplift(outcomes, CONTROL, 0.0, centre)
    np.testing.assert_allclose(flat["b"] - flat[CONTROL], 0.1)
    pd.testing.assert_frame_equal(shrink_uplift(outcomes, CONTROL, 1.0, centre), outcomes)


def test_arm_labels_pair_event_type_and_reward_size():
    assert arm_label("none", 0) == CONTROL
    assert arm_labels(["free_delivery", "cashback"], [10, 7.5]).tolist() == ["free_delivery:10", "cashback:7.5"]


# --- learners on a synthetic RCT with a planted best arm per user ---------------------------------


def synthetic_rct(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Three arms with probability 1/3 each. The true best arm: "a" where x1 > 0, else "b" where
    x2 > 0, else no offer (both offers hurt)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "x3": rng.normal(size=n),
            "platform": rng.choice(["ios", "android", "web"], n),
        }
    )
    arm = rng.choice([CONTROL, "a", "b"], n)
    base = 0.25 + 0.05 * np.tanh(X["x3"].to_numpy())
    effect = {
        CONTROL: np.zeros(n),
        "a": np.where(X["x1"] > 0, 0.25, -0.10),
        "b": np.where((X["x1"] <= 0) & (X["x2"] > 0), 0.25, -0.10),
    }
    true_best = np.where(X["x1"] > 0, "a", np.where(X["x2"] > 0, "b", CONTROL))
    p = base + np.select([arm == a for a in effect], [effect[a] for a in effect])
    y = (rng.random(n) < p).astype(float)
    return X, arm, y, true_best


def _choose(outcomes: pd.DataFrame) -> np.ndarray:
    policy = OfferPolicy("test", {"a": 0.0, "b": 0.0}, margin_rate=1.0, control=CONTROL, holdout_share=0.0)
    return policy.decide(outcomes.index.to_numpy(), outcomes, pd.DataFrame(1.0, outcomes.index, outcomes.columns))[
        "arm"
    ].to_numpy()


@pytest.fixture(scope="module")
def rct():
    X, arm, y, true_best = synthetic_rct(9000, seed=7)
    train = np.arange(len(y)) < 6000
    return X, arm, y, true_best, train


@pytest.mark.parametrize(
    "learner",
    [
        RLearner(CONTROL, effect_config=SMALL_EFFECT, seed=1),
    ],
    ids=["r"],
)
def test_learned_policy_beats_uniform_and_random_and_finds_the_planted_best_arm(rct, learner):
    X, arm, y, true_best, train = rct
    learner.fit(X[train], arm[train], y[train])
    outcomes = learner.predict_outcomes(X[~train])
    assert list(outcomes.columns) == [CONTROL, "a", "b"]
    assert list(learner.predict_uplift(X[~train]).columns) == ["a", "b"]

    chosen = _choose(outcomes)
    value = ipw_policy_value(chosen, arm[~train], y[~train], 1 / 3)
    uniform = uniform_policy_values([CONTROL, "a", "b"], arm[~train], y[~train], 1 / 3)
    assert value > max(uniform.values()) + 0.03
    assert value > random_policy_value([CONTROL, "a", "b"], arm[~train], y[~train], 1 / 3) + 0.05
    assert np.mean(chosen == true_best[~train]) > 0.75


def test_effect_features_limit_what_the_uplift_can_depend_on(rct):
    X, arm, y, _, train = rct
    learner = RLearner(CONTROL, effect_config=SMALL_EFFECT, effect_features=["x1"], seed=1)
    uplift = learner.fit(X[train], arm[train], y[train]).predict_uplift(X[~train])
    rows_with_same_x1 = X[~train].assign(x2=0.0, x3=0.0, platform="web")
    # Outcomes clipped to [0, 1] are the one place where other features can still move the uplift.
    unclipped = (learner.predict_outcomes(X[~train]) % 1 > 0) & (learner.predict_outcomes(rows_with_same_x1) % 1 > 0)
    inside = unclipped.all(axis=1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(learner.predict_uplift(rows_with_same_x1)[inside], uplift[inside], atol=1e-12)


def test_partial_pooling_mixes_each_arms_effect_with_the_any_offer_effect(rct):
    X, arm, y, _, train = rct
    uplift = {
        w: RLearner(CONTROL, effect_config=SMALL_EFFECT, pooling=w, seed=1).fit(X[train], arm[train], y[train])
        for w in (0.0, 0.5, 1.0)
    }
    outcomes = {w: learner.predict_outcomes(X[~train]) for w, learner in uplift.items()}
    inside = np.logical_and.reduce([((o > 0) & (o < 1)).all(axis=1).to_numpy() for o in outcomes.values()])
    assert inside.mean() > 0.9
    effect = {w: learner.predict_uplift(X[~train])[inside] for w, learner in uplift.items()}
    np.testing.assert_allclose(effect[1.0]["a"], effect[1.0]["b"])  # full pooling: one effect for every arm
    np.testing.assert_allclose(effect[0.5], (effect[0.0] + effect[1.0]) / 2)
    assert not np.allclose(effect[0.0]["a"], effect[0.0]["b"])  # no pooling: the planted arms differ
    with pytest.raises(ValueError, match="pooling"):
        RLearner(CONTROL, pooling=1.5)


def test_monotone_constraints_hold_even_against_the_data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.uniform(0, 1, 2000), "z": rng.uniform(0, 1, 2000)})
    y = X["x"].to_numpy() + 0.1 * rng.normal(size=2000)  # rises with x
    grid = pd.DataFrame({"x": np.linspace(0, 1, 50), "z": 0.5})
    free = BoostedRegressor(BoosterConfig(min_child_samples=20), objective="regression").fit(X, y).predict(grid)
    config = BoosterConfig(min_child_samples=20, monotone=(("x", -1),))
    falling = BoostedRegressor(config, objective="regression").fit(X, y).predict(grid)
    assert free[-1] - free[0] > 0.5
    assert (np.diff(falling) <= 1e-12).all()
    with pytest.raises(ValueError, match="monotone constraints name features"):
        BoostedRegressor(BoosterConfig(monotone=(("missing", 1),))).fit(X, y)


def test_tuned_shrinkage_keeps_real_heterogeneity(rct):
    X, arm, y, _, train = rct
    learner = RLearner(CONTROL, effect_config=SMALL_EFFECT, seed=1).fit(X[train], arm[train], y[train])
    outcomes = learner.predict_outcomes(X[~train])
    assert tune_shrinkage(outcomes, CONTROL, _choose, arm[~train], y[~train], 1 / 3) > 0


def test_users_without_history_get_a_prediction_and_a_sensible_offer(rct):
    X, arm, y, _, train = rct
    learner = RLearner(CONTROL, effect_config=SMALL_EFFECT, seed=1).fit(X[train], arm[train], y[train])
    newcomers = pd.DataFrame(
        {"x1": [np.nan, np.nan], "x2": [np.nan, 1.0], "x3": [np.nan, np.nan], "platform": [None, "tv"]}
    )
    outcomes = learner.predict_outcomes(newcomers)
    assert np.isfinite(outcomes.to_numpy()).all()
    assert ((outcomes >= 0) & (outcomes <= 1)).all().all()
    offers = OfferPolicy("c", {"a": 0.0, "b": 0.0}, margin_rate=1.0, holdout_share=0.0).decide(
        ["new-1", "new-2"], outcomes, pd.DataFrame(1.0, outcomes.index, outcomes.columns)
    )
    assert set(offers["arm"]) <= {CONTROL, "a", "b"}


def test_a_missing_prediction_means_no_offer():
    p = pd.DataFrame({CONTROL: [0.1, np.nan], "a": [0.3, np.nan]})
    value = pd.DataFrame({CONTROL: [50.0, 50.0], "a": [50.0, 50.0]})
    offers = OfferPolicy("c", {"a": 5.0}, margin_rate=0.5, holdout_share=0.0).decide(["u1", "u2"], p, value)
    assert offers["arm"].tolist() == ["a", CONTROL]


def test_learners_are_reproducible_with_a_fixed_seed(rct):
    X, arm, y, _, train = rct
    first = RLearner(CONTROL, effect_config=SMALL_EFFECT, seed=3).fit(X[train], arm[train], y[train])
    second = RLearner(CONTROL, effect_config=SMALL_EFFECT, seed=3).fit(X[train], arm[train], y[train])
    pd.testing.assert_frame_equal(first.predict_outcomes(X[~train]), second.predict_outcomes(X[~train]))


# --- the production decision path (ml.offers.decide) -----------------------------------------------

PRODUCTION_ARMS = {"cashback:5": 5.0, "free_delivery:10": 10.0, "percent_discount:20": 20.0}


class _StubResponseModel:
    """Fixed predictions per user: P(reactivate) 0.10 without an offer, 0.05-0.35 with one; orders of 100 QAR."""

    margin_rate = 0.3
    reward_size_ = PRODUCTION_ARMS

    def gain_and_cost(self, users: pd.DataFrame, objective: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        rng = np.random.default_rng(list(users["user_id"]))
        p = pd.DataFrame(rng.uniform(0.05, 0.35, (len(users), len(PRODUCTION_ARMS))), columns=list(PRODUCTION_ARMS))
        p.insert(0, CONTROL, 0.10)
        value = pd.DataFrame(100.0, index=p.index, columns=p.columns)
        gain = expected_gain(objective, p, value, PRODUCTION_ARMS, CONTROL, self.margin_rate)
        return p, gain, p[list(PRODUCTION_ARMS)] * pd.Series(PRODUCTION_ARMS)


def _production_day(budget: float, **overrides):
    from ml.experiments.assignment import assign_arms
    from ml.offers.decide import decide_offers
    from ml.recommend.lifecycle import INACTIVE_SEGMENTS
    from ml.settings import Settings

    # By default: the margin objective and a per-user budget that never binds, so `budget` is the only cap; no
    # exploration, so every personalised offer is the policy's (tests/test_offer_propensity.py explores).
    settings = Settings(
        **{
            "offer_exploration_share": 0.0,
            "campaign_budget": budget,
            "offer_segment_budget_share": 0.3,
            "holdout_share": 0.1,
            "offer_objective": "margin",
            "personalised_budget_per_user": 1e9,
            **overrides,
        }
    )
    # Half the users lapsed: their segment's cap (30% of the budget) binds as well as the total.
    segments = np.resize(["lapsed", "lapsed", "lapsed", *(s for s in INACTIVE_SEGMENTS if s != "lapsed")], 2000)
    users = pd.DataFrame({"user_id": np.arange(1, 2001), "segment": segments})
    offers = decide_offers(_StubResponseModel(), users, "winback-2026-02-01", settings)
    p, gain, cost = _StubResponseModel().gain_and_cost(users, settings.offer_objective)
    arms = assign_arms("winback-2026-02-01", users["user_id"], settings.holdout_share, settings.personalised_share)
    offers["arm_label"] = [
        CONTROL if e == CONTROL else arm_label(e, r) for e, r in zip(offers["event_type"], offers["reward_size"])
    ]
    return settings, offers, gain, cost, arms.to_numpy()


def test_production_decisions_follow_the_experiment_arms_and_an_unbinding_budget_gives_each_its_best_arm():
    settings, offers, gain, _, arms = _production_day(budget=1e9)
    assert (offers["arm"].to_numpy() == arms).all()
    holdout = offers[arms == "holdout"]
    assert len(holdout) > 100 and holdout["is_holdout"].all()
    assert (holdout["event_type"] == CONTROL).all() and (holdout[["reward_size", "expected_cost"]] == 0).all().all()
    default = offers[arms == "non_personalised"]
    assert len(default) > 500
    assert (default["event_type"] == settings.default_offer_event_type).all()
    assert (default["reward_size"] == settings.default_offer_reward).all()
    personalised = arms == "personalised"
    best = np.where(gain.max(axis=1) > 0, gain.idxmax(axis=1), CONTROL)
    assert offers.loc[personalised, "arm_label"].tolist() == best[personalised].tolist()
    assert {CONTROL, "free_delivery:10", "cashback:5"} <= set(best[personalised])


@pytest.mark.parametrize("holdout_share", [0.1, 0.2])
def test_production_holdout_users_get_nothing_in_the_settings_share_the_same_on_every_rerun(holdout_share):
    from ml.offers.decide import decide_offers
    from ml.settings import Settings

    settings = Settings(holdout_share=holdout_share, campaign_budget=1e9)
    users = pd.DataFrame({"user_id": np.arange(1, 4001), "segment": "lapsed"})

    def today(campaign_id: str) -> pd.DataFrame:
        return decide_offers(_StubResponseModel(), users, campaign_id, settings)

    offers = today("winback-2026-02-01")
    held = offers["is_holdout"].to_numpy()
    # The experiment's seeded hash of campaign and user decides, user by user.
    assert held.tolist() == [hash_unit("winback-2026-02-01", u) < holdout_share for u in users["user_id"]]
    assert held.mean() == pytest.approx(holdout_share, abs=4 * np.sqrt(holdout_share * (1 - holdout_share) / 4000))
    holdout = offers[held]
    assert (holdout["arm"] == "holdout").all() and (holdout["event_type"] == CONTROL).all()
    assert (holdout[["reward_size", "expected_cost", "expected_uplift"]] == 0).all().all()
    assert (offers.loc[~held, "arm"] != "holdout").all() and (offers.loc[~held, "event_type"] != CONTROL).any()
    pd.testing.assert_frame_equal(today("winback-2026-02-01"), offers)
    tomorrow = today("winback-2026-02-02")["is_holdout"].to_numpy()
    assert (tomorrow != held).sum() > 0.5 * held.sum()


def test_a_binding_budget_caps_the_personalised_offers_each_getting_its_best_affordable_arm_or_none():
    budget = 60.0
    settings, offers, gain, cost, arms = _production_day(budget)
    personalised = arms == "personalised"
    chosen = offers.loc[personalised]
    spent = chosen["expected_cost"].sum()
    assert spent <= budget + 1e-9 and (chosen["arm_label"] != CONTROL).sum() > 20
    # Without the cap the same users would cost far more, and users offered something then get less or nothing.
    unconstrained = _production_day(1e9)[1].loc[personalised]
    assert unconstrained["expected_cost"].sum() > 3 * budget
    offered_without_cap = unconstrained["event_type"] != CONTROL
    cut_back = (chosen["event_type"] == CONTROL) | (chosen["expected_cost"] < unconstrained["expected_cost"])
    assert (offered_without_cap & cut_back).sum() > 100
    by_segment = chosen.groupby("segment")["expected_cost"].sum()
    assert (by_segment <= budget * settings.offer_segment_budget_share + 1e-9).all()
    # The budget binds: users with a profitable offer are left without it ...
    best = np.where(gain.max(axis=1) > 0, gain.idxmax(axis=1), CONTROL)
    assert (chosen["arm_label"].to_numpy() != best[personalised]).sum() > 100
    # ... and nobody was passed over for an arm they could still afford, or given an unprofitable one.
    room = {
        segment: min(budget - spent, budget * settings.offer_segment_budget_share - by_segment.get(segment, 0.0))
        for segment in offers["segment"].unique()
    }
    for row in np.flatnonzero(personalised):
        label, segment = offers.at[row, "arm_label"], offers.at[row, "segment"]
        if label != CONTROL:
            assert gain.at[row, label] > 0
        better = gain.columns[(gain.loc[row] > (gain.at[row, label] if label != CONTROL else 0)).to_numpy()]
        assert (cost.loc[row, better] > room[segment] + 1e-9).all(), (row, label, list(better))


def test_by_default_the_personalised_arm_spends_what_the_blanket_offer_would_maximising_reactivations():
    # The defaults: objective reengagement, a per-user budget equal to the default offer's expected cost.
    settings, offers, gain, cost, arms = _production_day(
        budget=1e9, offer_objective="reengagement", personalised_budget_per_user=0.0
    )
    personalised, default = offers[arms == "personalised"], offers[arms == "non_personalised"]
    blanket_cost = cost.loc[arms == "personalised", "free_delivery:10"].mean()
    # Equal spend: what free_delivery:10 would cost for these very users, and no more.
    assert personalised["expected_cost"].mean() == pytest.approx(blanket_cost, rel=0.02)
    assert personalised["expected_cost"].mean() <= blanket_cost + 1e-9
    assert default["expected_cost"].mean() == pytest.approx(
        cost.loc[arms == "non_personalised", "free_delivery:10"].mean()
    )
    # Reactivations, not margin: the gain is the rise in P(reactivate), and the chosen arms beat the blanket on it.
    chosen = personalised["arm_label"].to_numpy()
    rows = np.flatnonzero(arms == "personalised")
    uplift = np.array([0.0 if a == CONTROL else gain.at[r, a] for r, a in zip(rows, chosen, strict=True)])
    np.testing.assert_allclose(personalised["expected_uplift"], uplift)
    assert uplift.sum() > gain.loc[rows, "free_delivery:10"].clip(lower=0).sum()


def test_a_binding_budget_is_spread_over_many_modest_offers_when_returns_diminish():
    # Ten alike users: a small offer gains 0.10 for 1 QAR, a big one 0.12 for 3 QAR. Ten QAR buy ten small
    # offers (1.0 in all); handing the big offer to the first users would buy three big and one small (0.46).
    gain = pd.DataFrame({"small": [0.10] * 10, "big": [0.12] * 10})
    cost = pd.DataFrame({"small": [1.0] * 10, "big": [3.0] * 10})
    offers = allocate_offers(gain, cost, np.full(10, "s"), BudgetLimits(total_budget=10.0), CONTROL)
    assert offers["arm"].tolist() == ["small"] * 10
    # Budget left over by the relaxation upgrades users: 13 QAR buy ten small offers and one upgrade to big.
    offers = allocate_offers(gain, cost, np.full(10, "s"), BudgetLimits(total_budget=13.0), CONTROL)
    assert sorted(offers["arm"].tolist()) == ["big"] + ["small"] * 9
    assert offers["expected_cost"].sum() == pytest.approx(12.0)


def test_the_objectives_value_an_offer_differently():
    p = pd.DataFrame({CONTROL: [0.30], "cashback:20": [0.40]})
    value = pd.DataFrame({CONTROL: [50.0], "cashback:20": [50.0]})
    # More reactivations (+0.10) but the reward costs more than the margin they bring (0.3 * 5 - 8 < 0).
    assert expected_gain("reengagement", p, value, {"cashback:20": 20.0}, CONTROL, 0.3).iloc[0, 0] == pytest.approx(0.1)
    assert expected_gain("margin", p, value, {"cashback:20": 20.0}, CONTROL, 0.3).iloc[0, 0] == pytest.approx(-6.5)
    with pytest.raises(ValueError, match="unknown offer objective"):
        expected_gain("clicks", p, value, {"cashback:20": 20.0}, CONTROL, 0.3)


def test_settings_reject_an_unknown_offer_objective():
    from ml.settings import Settings

    with pytest.raises(ValueError, match="REKINDLE_OFFER_OBJECTIVE='clicks' is not one of reengagement, margin"):
        Settings.from_env(environ={"REKINDLE_OFFER_OBJECTIVE": "clicks"})


def test_settings_reject_an_offer_training_window_no_outcome_is_observed_in():
    from ml.settings import Settings

    with pytest.raises(ValueError, match="REKINDLE_OFFER_TRAINING_DAYS=14 must be above"):
        Settings.from_env(environ={"REKINDLE_OFFER_TRAINING_DAYS": "14"})
    with pytest.raises(ValueError, match="REKINDLE_OFFER_TRAINING_MAX_EXPOSURES=0 must be at least 1"):
        Settings.from_env(environ={"REKINDLE_OFFER_TRAINING_MAX_EXPOSURES": "0"})


def test_an_exposure_pays_its_reward_only_when_redeemed():
    from ml.offers.response import realised_margin

    history = pd.DataFrame(
        {
            "reward_size": [10.0, 10.0, 10.0],
            "redeemed": [True, False, False],
            "reactivated": [True, True, False],  # the second came back without redeeming
            "order_value_in_window": [50.0, 40.0, 0.0],
        }
    )
    np.testing.assert_allclose(realised_margin(history, 0.3), [0.3 * 50 - 10, 0.3 * 40, 0.0])
