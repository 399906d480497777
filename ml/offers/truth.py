"""Ground-truth scoring of offer choices on synthetic worlds (the hidden truth file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ml.offers.arms import arm_event_type, arm_label
from ml.offers.response import CONTROL, USER_FEATURES, OfferResponseModel
from ml.offers.uplift import (
    BoostedRegressor,
    BoosterConfig,
    FeatureEncoder,
)


def truth_values(model: OfferResponseModel, users: pd.DataFrame, offer_truth_path: Path) -> dict[str, float]:
    """On synthetic data: :func:`truth_scorecard` of the model's unconstrained choices for ``users``, and the
    value and best-offer share of :func:`observable_oracle`, the most any model of these features could get."""
    offer_truth = read_offer_truth(offer_truth_path)
    offer_truth = offer_truth[offer_truth["user_id"].isin(users["user_id"])]
    card = truth_scorecard(pd.Series(model.best_arms(users), index=users["user_id"].to_numpy()), offer_truth)
    ceiling = truth_scorecard(observable_oracle(users, offer_truth, model.seed), offer_truth)
    card["truth_observable_oracle_value"] = ceiling["truth_policy_value"]
    card["truth_observable_oracle_best_offer_share"] = ceiling["truth_best_offer_share"]
    return card


def read_offer_truth(path: Path) -> pd.DataFrame:
    """The generator's offer truth file with its user ids as text, as the warehouse (and so the models) hold them:
    the generator writes integers or UUIDs."""
    offer_truth = pd.read_parquet(path)
    return offer_truth.assign(user_id=offer_truth["user_id"].astype(str))


def _true_values(offer_truth: pd.DataFrame) -> pd.DataFrame:
    """User x arm table of the true expected incremental margin, "none" being 0."""
    arms = [arm_label(e, r) for e, r in zip(offer_truth["event_type"], offer_truth["reward_size"])]
    value = offer_truth.assign(arm=arms).pivot_table(
        index="user_id", columns="arm", values="expected_incremental_margin"
    )
    value[CONTROL] = 0.0
    return value


def observable_oracle(users: pd.DataFrame, offer_truth: pd.DataFrame, seed: int) -> pd.Series:
    """Each user's arm by regressions fitted to the true values themselves on the model's features and the
    lifecycle segment, cross-fitted over two halves of the users: no noise from outcomes and no lack of data,
    so its value and best-offer share bound what a model of these features can reach."""
    value = _true_values(offer_truth).reindex(users["user_id"])
    features = users[USER_FEATURES + ["segment"]]
    encoded = FeatureEncoder().fit(features).transform(features).set_index(users["user_id"])
    half = np.random.default_rng(seed).permutation(len(users)) % 2
    config = BoosterConfig(
        n_trees=200, num_leaves=8, min_child_samples=30, lambda_l2=0.0, feature_fraction=1.0, bagging_fraction=1.0
    )
    predicted = pd.DataFrame(0.0, index=value.index, columns=value.columns)
    for arm in value.columns.drop(CONTROL):
        for fold in (0, 1):
            model = BoostedRegressor(config, objective="regression", seed=seed).fit(
                encoded[half != fold], value[arm].to_numpy()[half != fold]
            )
            predicted.loc[half == fold, arm] = model.predict(encoded[half == fold])
    return predicted.idxmax(axis=1)


def truth_scorecard(chosen: pd.Series, offer_truth: pd.DataFrame) -> dict[str, float]:
    """The true expected margin per user (QAR) of ``chosen`` (arm per user id) beside the best uniform offer,
    random arms, no offer (0) and the oracle (each user's true best), plus the share of users whose chosen
    arm is their true best (and whose chosen event type, or no offer, is the true best's) and the mean
    regret. Noise-free, unlike any estimate from logged outcomes."""
    value = _true_values(offer_truth)
    chosen = chosen[chosen.index.isin(value.index)]
    value = value.loc[chosen.index]
    chosen_value = value.to_numpy()[np.arange(len(value)), value.columns.get_indexer(chosen.to_numpy())]
    best_value = value.max(axis=1).to_numpy()
    return {
        "truth_policy_value": float(chosen_value.mean()),
        "truth_best_uniform_value": float(value.drop(columns=CONTROL).mean().max()),
        "truth_random_value": float(value.to_numpy().mean()),
        "truth_oracle_value": float(best_value.mean()),
        "truth_best_offer_share": float((chosen.to_numpy() == value.idxmax(axis=1).to_numpy()).mean()),
        "truth_best_event_type_share": float(
            np.mean([arm_event_type(a) == arm_event_type(b) for a, b in zip(chosen, value.idxmax(axis=1), strict=True)])
        ),
        "truth_regret_qar": float((best_value - chosen_value).mean()),
    }
