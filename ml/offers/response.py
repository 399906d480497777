"""Offers for inactive users in the daily pipeline: learn responses from campaign_history, evaluate the
policy on held-out randomised exposures, register ``rekindle-offer``, and publish today's offers."""

from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml.experiments.assignment import hash_units
from ml.offers.arms import NO_OFFER, arm_event_type, arm_label
from ml.offers.evaluation import (
    ipw_policy_value,
    qini_coefficient,
    uniform_policy_values,
    uplift_at_k_ratio,
)
from ml.offers.policy import (
    OfferPolicy,
    expected_cost,
    expected_gain,
    tune_shrinkage,
)
from ml.offers.uplift import (
    BoostedRegressor,
    BoosterConfig,
    FeatureEncoder,
    mean_uplift,
    shrink_uplift,
)
from ml.warehouse.marts import USER_FEATURES  # the user features of marts.campaign_history, as of sending

log = logging.getLogger(__name__)

# The response model's control arm: no offer.
CONTROL = NO_OFFER
OFFER_FEATURES = ["event_type", "reward_size"]
SHRINKAGE_FOLDS = 3
# Inverse-propensity weights are capped here: one explored exposure (propensity 0.10 / 13 arms) may count for
# at most this many, trading a little bias for far less variance.
MAX_INVERSE_PROPENSITY = 20.0


class OfferResponseModel:
    """S-learner: one booster for P(reactivate | user, event type, reward size) and one for the order value
    of those who come back. Sharing one model across arms lets sparse arms borrow strength from each other
    (and learn diminishing returns in reward size) where a per-arm model would see a few hundred rows."""

    def __init__(self, margin_rate: float, config: BoosterConfig | None = None, seed: int = 0):
        self.margin_rate = margin_rate
        # Shallow trees, enough of them for the offer's effect (a few points of reactivation) to enter the model:
        # chosen on the synthetic demo world (seed 42) by ground-truth policy value, confirmed on seed 1
        # (BENCHMARKS.md). Sixty 3-leaf trees, the earlier choice, barely split on the offer and sent nothing.
        self.config = config or BoosterConfig(n_trees=200, num_leaves=4, min_child_samples=100, lambda_l2=10.0)
        self.seed = seed

    def fit(self, history: pd.DataFrame, workers: int = 1, shrinkage: float | None = None) -> OfferResponseModel:
        """Fit the boosters, then choose how much per-user heterogeneity to trust: the predicted uplifts are
        shrunk toward each arm's mean unless trusting them pays on held-out users. Held out by cross-fitting,
        so the choice is judged on every exposure rather than on a validation slice.

        ``shrinkage`` given (a strength already chosen on these users' training subset), the cross-fitting is
        skipped: the boosters are fitted once. ``workers`` threads fit the cross-fitting folds side by side
        (LightGBM releases the GIL); the model does not depend on it."""
        self._set_arms(history)
        self.shrinkage_, self.centre_ = 1.0, None
        strength = self._tuned_shrinkage(history, workers) if shrinkage is None else shrinkage
        self._fit_boosters(history)
        p = self._per_arm(history, self.reactivation_)  # the centre needs no order values
        self.shrinkage_, self.centre_ = strength, mean_uplift(p, CONTROL)
        return self

    def _tuned_shrinkage(self, history: pd.DataFrame, workers: int) -> float:
        folds = user_folds(history, SHRINKAGE_FOLDS, self.seed + 7)

        def held_out(fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
            fold_model = copy.copy(self)  # its own boosters, the same arms and settings
            fold_model._fit_boosters(history[folds != fold])
            return fold_model.predict(history[folds == fold])

        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            predictions = list(pool.map(held_out, range(SHRINKAGE_FOLDS)))
        p = pd.concat([fold_p for fold_p, _ in predictions]).loc[history.index]
        value = pd.concat([fold_value for _, fold_value in predictions]).loc[history.index]
        logged, propensity = _logged_arms(history)
        # z=0: the strength with the best held-out value. With 13 arms the IPW difference between two strengths
        # is so noisy that demanding significance (Hillstrom's z=1.645) nearly always fell back to no
        # heterogeneity, even where it was large and real (tests/test_campaigns.py: planted campaigns).
        return tune_shrinkage(
            p,
            CONTROL,
            lambda outcomes: self._choose(outcomes, value),
            logged,
            realised_margin(history, self.margin_rate),
            propensity,
            z=0.0,
        )

    def _choose(self, p: pd.DataFrame, value: pd.DataFrame) -> np.ndarray:
        """Each row's most profitable arm with no holdout, budget or cap: :class:`OfferPolicy` unconstrained."""
        unconstrained = OfferPolicy("", self.reward_size_, self.margin_rate, control=CONTROL, holdout_share=0.0)
        return unconstrained.decide(p.index, p, value)["arm"].to_numpy()

    def _set_arms(self, history: pd.DataFrame) -> None:
        arms = history[["event_type", "reward_size"]].drop_duplicates()
        self.reward_size_ = {
            arm_label(e, r): float(r) for e, r in zip(arms["event_type"], arms["reward_size"]) if e != CONTROL
        }
        self.arms_ = (CONTROL, *sorted(self.reward_size_))

    def _fit_boosters(self, history: pd.DataFrame) -> None:
        X = history[USER_FEATURES + OFFER_FEATURES]
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        weight = inverse_propensity_weights(history)
        self.reactivation_ = BoostedRegressor(self.config, seed=self.seed).fit(
            features, history["reactivated"].astype(float), sample_weight=weight
        )
        came_back = history["reactivated"].to_numpy()
        self.value_ = BoostedRegressor(self.config, objective="regression", seed=self.seed + 1).fit(
            features[came_back],
            history.loc[came_back, "order_value_in_window"].to_numpy(),
            sample_weight=weight[came_back],
        )

    def _per_arm(self, users: pd.DataFrame, model: BoostedRegressor) -> pd.DataFrame:
        encoded = self.encoder_.transform(users[USER_FEATURES].assign(event_type=CONTROL, reward_size=0.0))
        columns = {}
        for arm in self.arms_:
            event_type, reward = (CONTROL, 0.0) if arm == CONTROL else (arm_event_type(arm), self.reward_size_[arm])
            X = encoded.assign(
                event_type=self.encoder_.constant("event_type", event_type, len(encoded)),
                reward_size=self.encoder_.constant("reward_size", reward, len(encoded)),
            )
            columns[arm] = model.predict(X)
        return pd.DataFrame(columns, index=users.index)

    def predict(self, users: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """P(reactivate) and expected order value per user (rows) and arm (columns, control first)."""
        p = self._per_arm(users, self.reactivation_)
        if self.centre_ is not None:
            p = shrink_uplift(p, CONTROL, self.shrinkage_, self.centre_).clip(0.0, 1.0)
        return p, self._per_arm(users, self.value_).clip(lower=0)

    def gain_and_cost(
        self, users: pd.DataFrame, objective: str = "margin"
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """P(reactivate) per arm, and per treated arm the gain under ``objective`` and the expected reward cost."""
        p, value = self.predict(users)
        gain = expected_gain(objective, p, value, self.reward_size_, CONTROL, self.margin_rate)
        cost = expected_cost(p, self.reward_size_, CONTROL)
        return p, gain, cost

    def best_arms(self, users: pd.DataFrame) -> np.ndarray:
        """Each user's most profitable arm with no budget or cap ("none" when no offer pays)."""
        return self._choose(*self.predict(users))


def inverse_propensity_weights(history: pd.DataFrame) -> np.ndarray:
    """Each exposure's weight: 1 / the probability its offer was chosen (``propensity``, logged with the offer),
    capped at :data:`MAX_INVERSE_PROPENSITY`. Weighted so, the exposures a policy chose for its favourite users
    stand for every user again, and the arms' effects learnt from the policy's own campaigns stay unbiased.
    Exposures logged without a propensity (before it was logged, or from a fully randomised test) weigh 1."""
    if "propensity" not in history.columns:
        return np.ones(len(history))
    propensity = history["propensity"].to_numpy(dtype=float)
    unknown = np.isnan(propensity)
    if unknown.any() and not unknown.all():
        log.warning("%d of %d exposures have no logged propensity: weighted as 1", unknown.sum(), len(history))
    if ((propensity <= 0) | (propensity > 1)).any():
        raise ValueError("an exposure's propensity must lie in (0, 1]")
    return np.minimum(1.0 / np.where(unknown, 1.0, propensity), MAX_INVERSE_PROPENSITY)


def realised_margin(history: pd.DataFrame, margin_rate: float) -> np.ndarray:
    """What an exposure earned: margin on the orders in the window minus the reward paid on redemption (the
    readout's definition: a user who comes back without redeeming costs nothing)."""
    paid = np.where(history["redeemed"], history["reward_size"], 0.0)
    return margin_rate * history["order_value_in_window"].to_numpy() - paid


def _user_score(history: pd.DataFrame, seed: int) -> np.ndarray:
    """A seeded hash of each row's user in [0, 1): the same user always lands on the same side of a split."""
    return hash_units(seed, history["user_id"])


def split_by_user(history: pd.DataFrame, test_share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out users (by a seeded hash) so no user's exposures sit on both sides."""
    test = _user_score(history, seed) < test_share
    return history[~test], history[test]


def sample_users(history: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """About ``max_rows`` exposures when there are more: a seeded sample of users, each with all their
    exposures, so a user never straddles the held-out split. The same users stay in the sample from day to day
    while the history grows (the hash is fixed), and the daily fit stops growing with it."""
    if len(history) <= max_rows:
        return history
    return history[_user_score(history, seed + 11) < max_rows / len(history)]


def user_folds(history: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold 0..n_folds-1 of each row, by a seeded hash of its user."""
    return np.minimum((_user_score(history, seed) * n_folds).astype(int), n_folds - 1)


@dataclass
class OfferEvaluation:
    """IPW values on held-out exposures. ``uniform_values`` holds every offer arm valued on the test users;
    the best of them in hindsight is biased upward (the maximum of a dozen noisy estimates), so the fair
    baseline is ``trained_uniform_arm``: the uniform offer that did best on the training exposures."""

    policy_value: float
    uniform_values: dict
    trained_uniform_arm: str
    random_value: float
    no_offer_value: float
    uplift_at_30: float
    qini: float
    test_rows: int
    # Per test row: the largest predicted uplift of any offer over no offer (the qini curve's ranking).
    predicted_uplift: np.ndarray
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {
            "policy_value": self.policy_value,
            "best_uniform_value": self.uniform_values[self.trained_uniform_arm],
            "hindsight_best_uniform_value": max(self.uniform_values.values()),
            "random_value": self.random_value,
            "no_offer_value": self.no_offer_value,
            "uplift_at_30": self.uplift_at_30,
            "qini": self.qini,
            "test_rows": float(self.test_rows),
            **self.extra,
        }


def _logged_arms(history: pd.DataFrame) -> tuple[np.ndarray, dict]:
    logged = np.array([arm_label(e, r) for e, r in zip(history["event_type"], history["reward_size"])], dtype=object)
    return logged, {arm: float(np.mean(logged == arm)) for arm in np.unique(logged)}


def best_uniform_offer(history: pd.DataFrame, margin_rate: float) -> str:
    """The offer arm (never "none") with the highest IPW margin per user on ``history``."""
    logged, propensity = _logged_arms(history)
    offers = [a for a in propensity if a != CONTROL]
    values = uniform_policy_values(offers, logged, realised_margin(history, margin_rate), propensity)
    return max(values, key=values.get)


def evaluate(model: OfferResponseModel, train: pd.DataFrame, test: pd.DataFrame, margin_rate: float) -> OfferEvaluation:
    """Policy value (margin per exposed user, IPW with the logged arm shares) beside uniform, random and no offer."""
    logged, propensity = _logged_arms(test)
    y = realised_margin(test, margin_rate)
    p, value = model.predict(test)
    chosen = model._choose(p, value)  # best_arms(test) without predicting the test rows twice
    arms = [a for a in model.arms_ if a in propensity]
    uniform = uniform_policy_values(arms, logged, y, propensity)
    predicted_uplift = p.drop(columns=CONTROL).max(axis=1).to_numpy() - p[CONTROL].to_numpy()
    treated = logged != CONTROL
    offers = {a: v for a, v in uniform.items() if a != CONTROL}
    trained_arm = best_uniform_offer(train, margin_rate)
    return OfferEvaluation(
        policy_value=ipw_policy_value(chosen, logged, y, propensity),
        uniform_values=offers,
        trained_uniform_arm=trained_arm if trained_arm in offers else max(offers, key=offers.get),
        random_value=float(np.mean(list(uniform.values()))),
        no_offer_value=uniform.get(CONTROL, float("nan")),
        uplift_at_30=uplift_at_k_ratio(predicted_uplift, treated, test["reactivated"].astype(float).to_numpy(), 0.3),
        qini=qini_coefficient(predicted_uplift, treated, test["reactivated"].astype(float).to_numpy()),
        test_rows=len(test),
        predicted_uplift=predicted_uplift,
    )
