"""The pipeline's offer model and its evaluation: the fair uniform baseline, the ground-truth scorecard, and the
model on randomised campaigns whose best offers are planted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.offers.response import (
    USER_FEATURES,
    OfferResponseModel,
    best_uniform_offer,
    evaluate,
    sample_users,
    split_by_user,
)
from ml.offers.truth import observable_oracle, truth_scorecard
from ml.synthetic.world import EVENT_TYPES, REWARD_SIZES


def _history(rows: list[tuple[str, float, bool, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_type", "reward_size", "reactivated", "order_value_in_window"]).assign(
        redeemed=lambda frame: frame["reactivated"] & (frame["event_type"] != "none")
    )


def test_the_best_uniform_offer_is_the_offer_arm_with_the_highest_margin_never_no_offer():
    history = _history(
        [
            ("none", 0.0, True, 500.0),  # no offer earns most here, but it is not an offer
            ("free_delivery", 5.0, True, 100.0),  # margin 0.3 * 100 - 5 = 25
            ("cashback", 20.0, True, 100.0),  # 30 - 20 = 10
            ("cashback", 20.0, False, 0.0),
        ]
    )
    assert best_uniform_offer(history, margin_rate=0.3) == "free_delivery:5"


def test_truth_scorecard_on_a_hand_computed_case():
    truth = pd.DataFrame(
        [
            (1, "none", 0.0, 0.0),
            (1, "free_delivery", 5.0, 2.0),
            (1, "cashback", 5.0, -1.0),
            (2, "none", 0.0, 0.0),
            (2, "free_delivery", 5.0, -3.0),
            (2, "cashback", 5.0, -1.0),
            (3, "none", 0.0, 0.0),
            (3, "free_delivery", 5.0, 1.0),
            (3, "cashback", 5.0, 4.0),
        ],
        columns=["user_id", "event_type", "reward_size", "expected_incremental_margin"],
    )
    chosen = pd.Series(["free_delivery:5", "cashback:5", "none", "cashback:5"], index=[1, 2, 3, 99])  # 99: unknown
    card = truth_scorecard(chosen, truth)
    assert card["truth_policy_value"] == pytest.approx((2.0 - 1.0 + 0.0) / 3)
    assert card["truth_oracle_value"] == pytest.approx((2.0 + 0.0 + 4.0) / 3)
    assert card["truth_best_uniform_value"] == pytest.approx(2.0 / 3)  # cashback: (-1 - 1 + 4) / 3
    assert card["truth_random_value"] == pytest.approx((2.0 - 1.0 - 3.0 - 1.0 + 1.0 + 4.0) / 9)
    assert card["truth_best_offer_share"] == pytest.approx(1 / 3)
    assert card["truth_best_event_type_share"] == pytest.approx(1 / 3)
    assert card["truth_regret_qar"] == pytest.approx((0.0 + 1.0 + 4.0) / 3)

    sizes = pd.DataFrame(
        [(1, "none", 0.0, 0.0), (1, "cashback", 5.0, 1.0), (1, "cashback", 10.0, 1.5)],
        columns=["user_id", "event_type", "reward_size", "expected_incremental_margin"],
    )
    wrong_size = truth_scorecard(pd.Series(["cashback:5"], index=[1]), sizes)
    assert (wrong_size["truth_best_offer_share"], wrong_size["truth_best_event_type_share"]) == (0.0, 1.0)


def test_the_observable_oracle_recovers_a_best_offer_that_the_features_determine():
    rng = np.random.default_rng(0)
    n = 600
    users = pd.DataFrame(
        {
            "user_id": np.arange(n),
            "segment": rng.choice(["lapsed", "churned"], n),
            **{column: rng.random(n) for column in USER_FEATURES},
        }
    )
    recent = users["recency_days"].to_numpy() < 0.5
    truth = pd.DataFrame(
        {
            "user_id": np.repeat(users["user_id"], 3),
            "event_type": np.tile(["none", "free_delivery", "cashback"], n),
            "reward_size": np.tile([0.0, 5.0, 5.0], n),
            "expected_incremental_margin": np.column_stack(
                [np.zeros(n), np.where(recent, 2.0, -1.0), np.where(recent, -1.0, 3.0)]
            ).ravel(),
        }
    )
    chosen = observable_oracle(users, truth, seed=0)
    expected = np.where(recent, "free_delivery:5", "cashback:5")
    assert (chosen.loc[users["user_id"]].to_numpy() == expected).mean() > 0.9
    assert truth_scorecard(chosen, truth)["truth_policy_value"] > 2.0


MARGIN_RATE = 0.3


def planted_campaigns(n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One randomised exposure per user over the pipeline's 13 arms, and each user's true expected margin per arm.

    Free delivery brings back users in the remote zone, double points frequent users elsewhere; every other
    offer, and every offer to anyone else, only pays rewards to users who would have come back anyway (whose
    share is higher for users who still open the app). The best reward size depends on the order value."""
    rng = np.random.default_rng(seed)
    order_count = rng.poisson(3.0, n_users)
    avg_order_value = rng.uniform(40.0, 140.0, n_users)
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users),
            "recency_days": rng.integers(7, 90, n_users),
            "order_count_before": order_count,
            "order_value_before": order_count * avg_order_value,
            "avg_order_value_before": np.where(order_count > 0, avg_order_value, np.nan),
            "avg_price_level_before": np.where(order_count > 0, rng.uniform(1.0, 4.0, n_users), np.nan),
            "tenure_days": rng.integers(30, 400, n_users),
            "platform": rng.choice(["ios", "android", "web"], n_users),
            "home_zone": rng.choice(["Al Wakrah", "West Bay", "Al Sadd"], n_users, p=[0.4, 0.3, 0.3]),
            "favourite_category_before": rng.choice(["burgers", "sushi", "coffee"], n_users),
            "sessions_14d": rng.poisson(0.8, n_users),
            "days_since_session": rng.integers(0, 40, n_users).astype(float),
            "offers_received": rng.poisson(1.0, n_users),
            "campaign_opens": rng.poisson(0.3, n_users),
            "offers_redeemed": rng.poisson(0.1, n_users),
        }
    )
    remote = users["home_zone"].eq("Al Wakrah").to_numpy()
    frequent = ~remote & (order_count >= 4)
    base = np.where(users["sessions_14d"].to_numpy() > 0, 0.35, 0.10)
    arms = [("none", 0.0), *[(event_type, size) for event_type in EVENT_TYPES for size in REWARD_SIZES]]

    def p_reactivate(event_type: str, size: float) -> np.ndarray:
        fits = {"free_delivery": remote, "double_points": frequent}.get(event_type, np.zeros(n_users, bool))
        lift = 0.5 * fits * (1.0 - np.exp(-size / 5.0))
        return 1.0 - (1.0 - base) * (1.0 - lift)

    truth = pd.concat(
        [
            pd.DataFrame(
                {
                    "user_id": users["user_id"],
                    "event_type": event_type,
                    "reward_size": size,
                    "expected_incremental_margin": MARGIN_RATE
                    * avg_order_value
                    * (p_reactivate(event_type, size) - base)
                    - size * p_reactivate(event_type, size),
                }
            )
            for event_type, size in arms
        ],
        ignore_index=True,
    )

    arm = rng.integers(0, len(arms), n_users)
    event_type = np.array([arms[a][0] for a in arm], dtype=object)
    reward_size = np.array([arms[a][1] for a in arm])
    p = np.choose(arm, [p_reactivate(e, s) for e, s in arms])
    reactivated = rng.random(n_users) < p
    history = users.assign(
        campaign_id="planted",
        event_type=event_type,
        reward_size=reward_size,
        reactivated=reactivated,
        order_value_in_window=np.where(reactivated, avg_order_value * rng.lognormal(-0.02, 0.2, n_users), 0.0),
        redeemed=reactivated & (event_type != "none"),
    )
    return history, truth


@pytest.fixture(scope="module")
def planted():
    history, truth = planted_campaigns(26_000, seed=3)
    train, test = split_by_user(history, test_share=0.3, seed=0)
    return train, test, truth, OfferResponseModel(MARGIN_RATE, seed=0).fit(train)


def test_on_planted_campaigns_the_policy_beats_every_uniform_offer_and_finds_most_users_true_best(planted):
    train, test, truth, model = planted
    evaluation = evaluate(model, train, test, MARGIN_RATE)
    assert evaluation.policy_value > max(evaluation.uniform_values.values())
    assert evaluation.policy_value > max(evaluation.random_value, evaluation.no_offer_value)

    card = truth_scorecard(pd.Series(model.best_arms(test), index=test["user_id"].to_numpy()), truth)
    assert card["truth_best_offer_share"] > 0.5  # "most users"; 0.62-0.70 on data seeds 3-7
    assert card["truth_policy_value"] > card["truth_best_uniform_value"] + 1.0
    assert card["truth_policy_value"] > 0.8 * card["truth_oracle_value"]


def test_a_user_with_no_history_gets_an_offer_or_none_never_a_crash(planted):
    _, test, _, model = planted
    newcomer = pd.DataFrame([{column: None for column in USER_FEATURES}]).assign(user_id=-1, home_zone="Mars")
    p, gain, cost = model.gain_and_cost(newcomer)
    assert np.isfinite(p.to_numpy()).all() and np.isfinite(gain.to_numpy()).all() and np.isfinite(cost.to_numpy()).all()
    assert set(model.best_arms(newcomer)) <= set(model.arms_)
    # an unknown zone is treated like a missing one, not as an error
    assert model.best_arms(test.head(3).assign(home_zone="Mars")).shape == (3,)


def test_a_strength_chosen_on_the_training_users_carries_over_to_the_final_fit(planted):
    train, test, _, model = planted
    history = pd.concat([train, test])
    final = OfferResponseModel(MARGIN_RATE, seed=0).fit(history, shrinkage=model.shrinkage_)
    assert final.shrinkage_ == model.shrinkage_
    # the boosters are refitted on every exposure: its uplifts are not the training model's
    assert not np.allclose(final.predict(test)[0].to_numpy(), model.predict(test)[0].to_numpy())
    untrusting = OfferResponseModel(MARGIN_RATE, seed=0).fit(history, shrinkage=0.0)
    p = untrusting.predict(test)[0]
    uplift = p.drop(columns="none").sub(p["none"], axis=0)
    assert np.allclose(uplift.std(), 0.0, atol=1e-9)  # no heterogeneity trusted: one uplift per arm


def test_a_history_above_the_cap_is_a_seeded_sample_of_whole_users_stable_as_it_grows(planted):
    train, test, _, _ = planted
    history = pd.concat([train, test, train.assign(campaign_id="again")], ignore_index=True)
    sample = sample_users(history, 20_000, seed=42)
    assert 18_000 < len(sample) < 22_000
    kept = set(sample["user_id"])
    assert set(history.loc[history["user_id"].isin(kept)].index) == set(sample.index)  # whole users
    assert sample_users(history, len(history), seed=42) is history
    # a day later, with more history, the users kept before are still kept (the hash is fixed, the share shrinks)
    grown = pd.concat([history, test.assign(campaign_id="later")], ignore_index=True)
    later = set(sample_users(grown, 20_000, seed=42)["user_id"])
    assert later <= kept and len(later) > 0.8 * len(kept)
    assert set(sample_users(history, 20_000, seed=43)["user_id"]) != kept
