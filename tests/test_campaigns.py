"""The pipeline's offer evaluation: the fair uniform baseline and the ground-truth scorecard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.campaigns import USER_FEATURES, best_uniform_offer, observable_oracle, truth_scorecard


def _history(rows: list[tuple[str, float, bool, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["event_type", "reward_size", "reactivated", "order_value_in_window"]).assign(
        redeemed=lambda frame: frame["reactivated"] & (frame["event_type"] != "none")
    )


def test_the_best_uniform_offer_is_the_offer_arm_with_the_highest_margin_never_no_offer():
    history = _history([
        ("none", 0.0, True, 500.0),              # no offer earns most here, but it is not an offer
        ("free_delivery", 5.0, True, 100.0),     # margin 0.3 * 100 - 5 = 25
        ("cashback", 20.0, True, 100.0),         # 30 - 20 = 10
        ("cashback", 20.0, False, 0.0),
    ])
    assert best_uniform_offer(history, margin_rate=0.3) == "free_delivery:5"


def test_truth_scorecard_on_a_hand_computed_case():
    truth = pd.DataFrame(
        [(1, "none", 0.0, 0.0), (1, "free_delivery", 5.0, 2.0), (1, "cashback", 5.0, -1.0),
         (2, "none", 0.0, 0.0), (2, "free_delivery", 5.0, -3.0), (2, "cashback", 5.0, -1.0),
         (3, "none", 0.0, 0.0), (3, "free_delivery", 5.0, 1.0), (3, "cashback", 5.0, 4.0)],
        columns=["user_id", "event_type", "reward_size", "expected_incremental_margin"],
    )
    chosen = pd.Series(["free_delivery:5", "cashback:5", "none", "cashback:5"], index=[1, 2, 3, 99])  # 99: unknown
    card = truth_scorecard(chosen, truth)
    assert card["truth_policy_value"] == pytest.approx((2.0 - 1.0 + 0.0) / 3)
    assert card["truth_oracle_value"] == pytest.approx((2.0 + 0.0 + 4.0) / 3)
    assert card["truth_best_uniform_value"] == pytest.approx(2.0 / 3)  # cashback: (-1 - 1 + 4) / 3
    assert card["truth_random_value"] == pytest.approx((2.0 - 1.0 - 3.0 - 1.0 + 1.0 + 4.0) / 9)
    assert card["truth_best_offer_share"] == pytest.approx(1 / 3)
    assert card["truth_regret_qar"] == pytest.approx((0.0 + 1.0 + 4.0) / 3)


def test_the_observable_oracle_recovers_a_best_offer_that_the_features_determine():
    rng = np.random.default_rng(0)
    n = 600
    users = pd.DataFrame({
        "user_id": np.arange(n),
        "segment": rng.choice(["lapsed", "churned"], n),
        **{column: rng.random(n) for column in USER_FEATURES},
    })
    recent = users["recency_days"].to_numpy() < 0.5
    truth = pd.DataFrame({
        "user_id": np.repeat(users["user_id"], 3),
        "event_type": np.tile(["none", "free_delivery", "cashback"], n),
        "reward_size": np.tile([0.0, 5.0, 5.0], n),
        "expected_incremental_margin": np.column_stack(
            [np.zeros(n), np.where(recent, 2.0, -1.0), np.where(recent, -1.0, 3.0)]
        ).ravel(),
    })
    chosen = observable_oracle(users, truth, seed=0)
    expected = np.where(recent, "free_delivery:5", "cashback:5")
    assert (chosen.loc[users["user_id"]].to_numpy() == expected).mean() > 0.9
    assert truth_scorecard(chosen, truth)["truth_policy_value"] > 2.0
