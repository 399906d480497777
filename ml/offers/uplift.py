"""Multi-arm uplift learners on LightGBM.

Every learner takes a feature frame ``X`` (any columns; text columns become categories),
the logged ``arm`` of each row (one of them the control) and the outcome ``y``, and predicts
per row the outcome under every arm (``predict_outcomes``) or the uplift of every treated arm
over the control (``predict_uplift``). Arms are plain labels, so a campaign's
(event_type, reward_size) pairs become arms through :func:`arm_label`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np
import pandas as pd

CONTROL_EVENT_TYPE = "none"


def arm_label(event_type: str, reward_size: float) -> str:
    """One arm per (event type, reward size); the control is the bare ``"none"``."""
    if event_type == CONTROL_EVENT_TYPE:
        return CONTROL_EVENT_TYPE
    return f"{event_type}:{float(reward_size):g}"


def arm_labels(event_type: Sequence[str], reward_size: Sequence[float]) -> np.ndarray:
    return np.array([arm_label(e, r) for e, r in zip(event_type, reward_size, strict=True)], dtype=object)


@dataclass(frozen=True)
class BoosterConfig:
    """LightGBM settings; the defaults are deliberately conservative for noisy, binary outcomes."""

    n_trees: int = 100
    learning_rate: float = 0.05
    num_leaves: int = 8
    min_child_samples: int = 300
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 10.0
    n_seeds: int = 1
    n_threads: int = 2

    def lightgbm_params(self, objective: str, seed: int) -> dict:
        return {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.n_threads,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }


class FeatureEncoder:
    """Numbers stay numbers, everything else becomes a category with the levels seen in ``fit``.

    Unseen levels and missing values become NaN, which LightGBM routes down its default branch.
    """

    def fit(self, X: pd.DataFrame) -> FeatureEncoder:
        self.columns_ = list(X.columns)
        self.categories_ = {
            column: pd.Index(sorted(X[column].dropna().astype(str).unique()))
            for column in X.columns
            if not (pd.api.types.is_numeric_dtype(X[column]) or pd.api.types.is_bool_dtype(X[column]))
        }
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        encoded = {}
        for column in self.columns_:
            values = X[column] if column in X.columns else pd.Series(np.nan, index=X.index)
            if column in self.categories_:
                text = values.astype(object).where(values.notna(), None)
                text = text.map(lambda v: None if v is None else str(v))
                encoded[column] = pd.Categorical(text, categories=self.categories_[column])
            else:
                encoded[column] = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        return pd.DataFrame(encoded, index=X.index)


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0.0, 1.0)).all())


class BoostedRegressor:
    """Mean of ``n_seeds`` bagged LightGBM boosters for E[y | X]; probabilities for 0/1 outcomes."""

    def __init__(self, config: BoosterConfig, objective: str = "auto", seed: int = 0):
        self.config = config
        self.objective = objective
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> BoostedRegressor:
        y = np.asarray(y, dtype=float)
        objective = self.objective
        if objective == "auto":
            objective = "cross_entropy" if _is_binary(y) else "regression"
        self.boosters_ = [
            lgb.train(
                self.config.lightgbm_params(objective, self.seed * 1000 + i),
                lgb.Dataset(X, label=y, weight=sample_weight, categorical_feature="auto"),
                num_boost_round=self.config.n_trees,
            )
            for i in range(self.config.n_seeds)
        ]
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.mean([booster.predict(X) for booster in self.boosters_], axis=0)


def _arms_in(arm: np.ndarray, control: Hashable) -> tuple:
    arms = tuple(sorted(set(arm.tolist()), key=str))
    if control not in arms:
        raise ValueError(f"control arm {control!r} does not occur in the training data")
    return (control, *(a for a in arms if a != control))


def _propensities(arm: np.ndarray, arms: tuple, given: Mapping[Hashable, float] | None) -> dict:
    """Known assignment probabilities, else the arm shares (valid for randomised campaigns)."""
    if given is not None:
        return {a: float(given[a]) for a in arms}
    return {a: float(np.mean(arm == a)) for a in arms}


def _fold_ids(n: int, n_folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % n_folds


class _UpliftFromOutcomes:
    """``predict_uplift`` for learners that define ``predict_outcomes``."""

    def predict_uplift(self, X: pd.DataFrame) -> pd.DataFrame:
        outcomes = self.predict_outcomes(X)
        return outcomes[list(self.treated_arms_)].sub(outcomes[self.control], axis=0)

    @property
    def treated_arms_(self) -> tuple:
        return self.arms_[1:]


class TLearner(_UpliftFromOutcomes):
    """One outcome model per arm; uplift is the difference of their predictions."""

    def __init__(self, control: Hashable, config: BoosterConfig = BoosterConfig(), seed: int = 0):
        self.control = control
        self.config = config
        self.seed = seed

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]) -> TLearner:
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        self.arms_ = _arms_in(arm, self.control)
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        self.models_ = {
            a: BoostedRegressor(self.config, seed=self.seed + i).fit(features[arm == a], y[arm == a])
            for i, a in enumerate(self.arms_)
        }
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        features = self.encoder_.transform(X)
        return pd.DataFrame({a: model.predict(features) for a, model in self.models_.items()}, index=X.index)


class _CrossFittedOutcomes:
    """Per-arm outcome models fitted on K-1 folds; out-of-fold predictions for training rows and the
    average of the K fold models for new rows (which doubles as bagging)."""

    def __init__(self, arms: tuple, config: BoosterConfig, n_folds: int, seed: int):
        self.arms = arms
        self.config = config
        self.n_folds = n_folds
        self.seed = seed

    def fit_predict(self, features: pd.DataFrame, arm: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        folds = _fold_ids(len(y), self.n_folds, self.seed)
        out_of_fold = pd.DataFrame(np.nan, index=features.index, columns=list(self.arms))
        self.models_ = {a: [] for a in self.arms}
        for fold in range(self.n_folds):
            held_out = folds == fold
            for i, a in enumerate(self.arms):
                rows = ~held_out & (arm == a)
                model = BoostedRegressor(self.config, seed=self.seed + 100 * fold + i)
                model.fit(features[rows], y[rows])
                self.models_[a].append(model)
                out_of_fold.loc[held_out, a] = model.predict(features[held_out])
        return out_of_fold

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {a: np.mean([m.predict(features) for m in self.models_[a]], axis=0) for a in self.arms},
            index=features.index,
        )


def _clip_to_outcome_range(outcomes: pd.DataFrame, y: np.ndarray) -> pd.DataFrame:
    return outcomes.clip(lower=float(np.min(y)), upper=float(np.max(y)))


class DRLearner(_UpliftFromOutcomes):
    """Doubly robust learner with cross-fitting.

    Cross-fitted outcome models give, for every training row and treated arm ``a``, the
    pseudo-outcome mu_a - mu_c + 1[arm=a](y - mu_a)/e_a - 1[arm=c](y - mu_c)/e_c, whose mean given X
    is the uplift; a strongly regularised booster regresses it on X. Its noise is large, so the
    final stage wants few, wide leaves and several seeds.
    """

    def __init__(
        self,
        control: Hashable,
        outcome_config: BoosterConfig = BoosterConfig(),
        effect_config: BoosterConfig = BoosterConfig(num_leaves=4, min_child_samples=1000, n_seeds=3),
        n_folds: int = 3,
        propensities: Mapping[Hashable, float] | None = None,
        seed: int = 0,
    ):
        self.control = control
        self.outcome_config = outcome_config
        self.effect_config = effect_config
        self.n_folds = n_folds
        self.propensities = propensities
        self.seed = seed

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]) -> DRLearner:
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        self.arms_ = _arms_in(arm, self.control)
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        propensity = _propensities(arm, self.arms_, self.propensities)
        self.outcomes_ = _CrossFittedOutcomes(self.arms_, self.outcome_config, self.n_folds, self.seed)
        mu = self.outcomes_.fit_predict(features, arm, y)
        control_residual = np.where(arm == self.control, (y - mu[self.control]) / propensity[self.control], 0.0)
        self.effects_ = {}
        for i, a in enumerate(self.treated_arms_):
            treated_residual = np.where(arm == a, (y - mu[a]) / propensity[a], 0.0)
            pseudo_outcome = mu[a] - mu[self.control] + treated_residual - control_residual
            self.effects_[a] = BoostedRegressor(self.effect_config, objective="regression", seed=self.seed + 7 + i)
            self.effects_[a].fit(features, pseudo_outcome.to_numpy())
        self.y_range_ = np.array([y.min(), y.max()])
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        features = self.encoder_.transform(X)
        control = self.outcomes_.predict(features)[self.control]
        outcomes = {self.control: control}
        for a, model in self.effects_.items():
            outcomes[a] = control + model.predict(features)
        return _clip_to_outcome_range(pd.DataFrame(outcomes, index=X.index), self.y_range_)


class XLearner(_UpliftFromOutcomes):
    """X-learner (Künzel et al. 2019) for several arms, with cross-fitted first-stage imputations.

    Treated rows of arm ``a`` impute y - mu_c(x), control rows mu_a(x) - y; one effect model per
    side, blended by the arm's share of the (a, control) pair.
    """

    def __init__(
        self,
        control: Hashable,
        outcome_config: BoosterConfig = BoosterConfig(),
        effect_config: BoosterConfig = BoosterConfig(num_leaves=4, min_child_samples=500, n_seeds=3),
        n_folds: int = 3,
        propensities: Mapping[Hashable, float] | None = None,
        seed: int = 0,
    ):
        self.control = control
        self.outcome_config = outcome_config
        self.effect_config = effect_config
        self.n_folds = n_folds
        self.propensities = propensities
        self.seed = seed

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]) -> XLearner:
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        self.arms_ = _arms_in(arm, self.control)
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        propensity = _propensities(arm, self.arms_, self.propensities)
        self.outcomes_ = _CrossFittedOutcomes(self.arms_, self.outcome_config, self.n_folds, self.seed)
        mu = self.outcomes_.fit_predict(features, arm, y)
        is_control = arm == self.control
        self.effects_ = {}
        for i, a in enumerate(self.treated_arms_):
            is_treated = arm == a
            on_treated = BoostedRegressor(self.effect_config, objective="regression", seed=self.seed + 11 + i)
            on_treated.fit(features[is_treated], y[is_treated] - mu[self.control][is_treated])
            on_control = BoostedRegressor(self.effect_config, objective="regression", seed=self.seed + 31 + i)
            on_control.fit(features[is_control], mu[a][is_control] - y[is_control])
            treated_share = propensity[a] / (propensity[a] + propensity[self.control])
            self.effects_[a] = (on_treated, on_control, treated_share)
        self.y_range_ = np.array([y.min(), y.max()])
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        features = self.encoder_.transform(X)
        control = self.outcomes_.predict(features)[self.control]
        outcomes = {self.control: control}
        for a, (on_treated, on_control, treated_share) in self.effects_.items():
            # The effect model fitted on the larger side is the more reliable; weight it by the other side's share.
            effect = treated_share * on_control.predict(features) + (1 - treated_share) * on_treated.predict(features)
            outcomes[a] = control + effect
        return _clip_to_outcome_range(pd.DataFrame(outcomes, index=X.index), self.y_range_)


class RLearner(_UpliftFromOutcomes):
    """R-learner (Nie & Wager 2021), one treated arm against the control at a time.

    On the rows of arm ``a`` or the control, with t = 1[arm = a], e = P(a | a or control) and a
    cross-fitted m(x) = E[y | x], uplift minimises sum ((y - m) - (t - e) tau(x))^2: a booster
    regressing (y - m) / (t - e) with weights (t - e)^2. With randomised arms this pseudo-outcome is
    less noisy than the doubly robust one because it never divides by a single arm's propensity.
    """

    def __init__(
        self,
        control: Hashable,
        outcome_config: BoosterConfig = BoosterConfig(),
        effect_config: BoosterConfig = BoosterConfig(num_leaves=2, min_child_samples=2000, n_seeds=5),
        n_folds: int = 3,
        propensities: Mapping[Hashable, float] | None = None,
        seed: int = 0,
    ):
        self.control = control
        self.outcome_config = outcome_config
        self.effect_config = effect_config
        self.n_folds = n_folds
        self.propensities = propensities
        self.seed = seed

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]) -> RLearner:
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        self.arms_ = _arms_in(arm, self.control)
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        propensity = _propensities(arm, self.arms_, self.propensities)
        folds = _fold_ids(len(y), self.n_folds, self.seed)
        self.control_model_ = BoostedRegressor(self.outcome_config, seed=self.seed).fit(
            features[arm == self.control], y[arm == self.control]
        )
        self.effects_ = {}
        for i, a in enumerate(self.treated_arms_):
            pair = np.isin(arm, [a, self.control])
            treated = (arm[pair] == a).astype(float)
            share = propensity[a] / (propensity[a] + propensity[self.control])
            mean_outcome = np.empty(pair.sum())
            for fold in range(self.n_folds):
                held_out = folds[pair] == fold
                model = BoostedRegressor(self.outcome_config, seed=self.seed + 100 * fold + i)
                model.fit(features[pair][~held_out], y[pair][~held_out])
                mean_outcome[held_out] = model.predict(features[pair][held_out])
            residual = treated - share
            effect = BoostedRegressor(self.effect_config, objective="regression", seed=self.seed + 7 + i)
            effect.fit(features[pair], (y[pair] - mean_outcome) / residual, sample_weight=residual**2)
            self.effects_[a] = effect
        self.y_range_ = np.array([y.min(), y.max()])
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        features = self.encoder_.transform(X)
        control = self.control_model_.predict(features)
        outcomes = {self.control: control}
        for a, model in self.effects_.items():
            outcomes[a] = control + model.predict(features)
        return _clip_to_outcome_range(pd.DataFrame(outcomes, index=X.index), self.y_range_)
