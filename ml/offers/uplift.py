"""Multi-arm uplift learners on LightGBM.

Every learner takes a feature frame ``X`` (any columns; text columns become categories),
the logged ``arm`` of each row (one of them the control) and the outcome ``y``, and predicts
per row the outcome under every arm (``predict_outcomes``) or the uplift of every treated arm
over the control (``predict_uplift``). Arms are plain labels, so a campaign's
(event_type, reward_size) pairs become arms through :func:`ml.offers.arms.arm_label`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd


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
    # Small data: one thread is faster than OpenMP workers fighting over a busy machine.
    n_threads: int = 1
    # (feature, +1 or -1): the prediction may only rise (+1) or fall (-1) with that feature, a prior
    # that keeps noise from bending a known direction of effect the wrong way.
    monotone: tuple[tuple[str, int], ...] = ()

    def lightgbm_params(self, objective: str, seed: int, columns: Sequence[str] = ()) -> dict:
        directions = dict(self.monotone)
        unknown = set(directions) - set(columns)
        if unknown:
            raise ValueError(f"monotone constraints name features the data does not have: {sorted(unknown)}")
        monotone = {"monotone_constraints": [directions.get(c, 0) for c in columns]} if directions else {}
        return {
            **monotone,
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
            if not pd.api.types.is_numeric_dtype(X[column])
        }
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        encoded = {}
        for column in self.columns_:
            values = X[column] if column in X.columns else pd.Series(np.nan, index=X.index)
            if column in self.categories_:
                text = values.astype(str).where(values.notna())
                encoded[column] = pd.Categorical(text, categories=self.categories_[column])
            else:
                encoded[column] = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        return pd.DataFrame(encoded, index=X.index)

    def constant(self, column: str, value, rows: int):
        """``rows`` copies of ``value`` encoded as ``transform`` encodes ``column``."""
        if column in self.categories_:
            return pd.Categorical(np.full(rows, str(value), dtype=object), categories=self.categories_[column])
        return np.full(rows, float(value))


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
                self.config.lightgbm_params(objective, self.seed * 1000 + i, list(X.columns)),
                lgb.Dataset(X, label=y, weight=sample_weight, categorical_feature="auto"),
                num_boost_round=self.config.n_trees,
            )
            for i in range(self.config.n_seeds)
        ]
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        # Every core: unlike training on small data, predicting every user x arm is worth the OpenMP workers, and
        # the predictions do not depend on the thread count.
        return np.mean([booster.predict(X, num_threads=0) for booster in self.boosters_], axis=0)


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


class _CrossFittedOutcomes:
    """Per-arm outcome models fitted on K-1 folds: out-of-fold predictions for the training rows and,
    for new rows, the mean of the K fold models (which doubles as bagging)."""

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
                model = BoostedRegressor(self.config, seed=self.seed + 100 * fold + i).fit(features[rows], y[rows])
                self.models_[a].append(model)
                out_of_fold.loc[held_out, a] = model.predict(features[held_out])
        return out_of_fold

    def predict(self, features: pd.DataFrame, arm: Hashable) -> np.ndarray:
        return np.mean([model.predict(features) for model in self.models_[arm]], axis=0)


class _TwoStageLearner(_UpliftFromOutcomes):
    """Shared frame of the meta-learners that model the uplift directly.

    Stage 1 cross-fits one outcome model per arm on all features; stage 2 (``_fit_effect``) fits the
    uplift of each treated arm on ``effect_features`` only (default: all). Keeping the effect stage
    to the few features that plausibly modify the response (the "X" of EconML, the rest being
    controls) is the strongest regulariser on noisy outcomes. The outcome under a treated arm is the
    control's predicted outcome plus that arm's predicted uplift, clipped to the observed range.
    """

    def __init__(
        self,
        control: Hashable,
        outcome_config: BoosterConfig = BoosterConfig(),
        effect_config: BoosterConfig = BoosterConfig(num_leaves=2, min_child_samples=2000, n_seeds=5),
        effect_features: Sequence[str] | None = None,
        n_folds: int = 3,
        propensities: Mapping[Hashable, float] | None = None,
        seed: int = 0,
    ):
        self.control = control
        self.outcome_config = outcome_config
        self.effect_config = effect_config
        self.effect_features = effect_features
        self.n_folds = n_folds
        self.propensities = propensities
        self.seed = seed

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]):
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        self.arms_ = _arms_in(arm, self.control)
        self.encoder_ = FeatureEncoder().fit(X)
        features = self.encoder_.transform(X)
        self.effect_columns_ = list(self.effect_features) if self.effect_features is not None else list(X.columns)
        propensity = _propensities(arm, self.arms_, self.propensities)
        self.outcomes_ = _CrossFittedOutcomes(self.arms_, self.outcome_config, self.n_folds, self.seed)
        mu = self.outcomes_.fit_predict(features, arm, y)
        effects = {
            a: self._fit_effect(a, features[self.effect_columns_], arm, y, mu, propensity, self.seed + 10 * (i + 1))
            for i, a in enumerate(self.treated_arms_)
        }
        self.effects_ = self._pool_effects(effects, features[self.effect_columns_], arm, y, mu, propensity)
        self.y_range_ = (float(y.min()), float(y.max()))
        return self

    def _pool_effects(self, effects: dict, features, arm, y, mu, propensity) -> dict:
        """Learners that pool the arms' effects override this; the others keep each arm's own effect."""
        return effects

    def _effect_model(self, seed: int) -> BoostedRegressor:
        return BoostedRegressor(self.effect_config, objective="regression", seed=seed)

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        features = self.encoder_.transform(X)
        control = self.outcomes_.predict(features, self.control)
        outcomes = {self.control: control}
        for a, effect in self.effects_.items():
            outcomes[a] = control + effect.predict(features[self.effect_columns_])
        return pd.DataFrame(outcomes, index=X.index).clip(*self.y_range_)


class RLearner(_TwoStageLearner):
    """R-learner (Nie & Wager 2021), each treated arm against the control.

    On the rows of arm ``a`` or the control, with t = 1[arm = a], e = P(a | a or control) and the
    cross-fitted m(x) = e mu_a(x) + (1 - e) mu_c(x), the uplift minimises
    sum ((y - m) - (t - e) tau(x))^2: a booster regressing (y - m) / (t - e) with weights (t - e)^2.
    Unlike the doubly robust pseudo-outcome it never divides by one arm's propensity alone, so it
    is the least noisy of the direct learners under randomisation.

    ``pooling`` w in [0, 1] partially pools the arms: each arm's uplift becomes (1 - w) tau_a(x) + w tau(x),
    where tau is the same R-learner fitted to "any offer" against the control on every row. Offers that share
    a channel tend to share who responds, and tau sees all the treated rows, so its effect modifiers are
    estimated with less noise than any one arm's.
    """

    def __init__(self, control: Hashable, *, pooling: float = 0.0, **kwargs):
        if not 0.0 <= pooling <= 1.0:
            raise ValueError(f"pooling must be in [0, 1], got {pooling}")
        super().__init__(control, **kwargs)
        self.pooling = pooling

    def _pool_effects(self, effects: dict, features, arm, y, mu, propensity) -> dict:
        if self.pooling == 0:
            return effects
        total = sum(propensity.values())
        treated_share = 1.0 - propensity[self.control] / total
        mean_outcome = sum(propensity[a] * mu[a].to_numpy() for a in self.arms_) / total
        residual = (arm != self.control).astype(float) - treated_share
        shared = self._effect_model(self.seed + 10 * (len(self.arms_) + 1)).fit(
            features, (y - mean_outcome) / residual, sample_weight=residual**2
        )
        return {a: _BlendedEffect(shared, own, self.pooling) for a, own in effects.items()}

    def _fit_effect(
        self,
        a: Hashable,
        features: pd.DataFrame,
        arm: np.ndarray,
        y: np.ndarray,
        mu: pd.DataFrame,
        propensity: dict,
        seed: int,
    ) -> BoostedRegressor:
        pair = np.isin(arm, [a, self.control])
        share = propensity[a] / (propensity[a] + propensity[self.control])
        mean_outcome = share * mu[a].to_numpy() + (1 - share) * mu[self.control].to_numpy()
        residual = (arm == a).astype(float) - share
        return self._effect_model(seed).fit(
            features[pair], ((y - mean_outcome) / residual)[pair], sample_weight=(residual**2)[pair]
        )


class _BlendedEffect:
    """Two effect models for one arm, blended: ``weight`` on ``first``, the rest on ``second`` (an arm's own
    effect and the pooled "any offer" effect in the R-learner)."""

    def __init__(self, first, second, weight: float):
        self.first = first
        self.second = second
        self.weight = weight

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.weight * self.first.predict(features) + (1 - self.weight) * self.second.predict(features)


def shrink_uplift(
    outcomes: pd.DataFrame, control: Hashable, strength: float, centre: Mapping[Hashable, float]
) -> pd.DataFrame:
    """Pull every treated arm's predicted uplift toward ``centre`` (e.g. its mean over a validation
    set): ``strength`` 1 keeps the model, 0 gives every user the same uplift per arm, so a policy
    on the result only deviates from the best uniform arm where the predicted difference is large."""
    shrunk = outcomes.copy()
    for a in outcomes.columns:
        if a != control:
            uplift = outcomes[a] - outcomes[control]
            shrunk[a] = outcomes[control] + centre[a] + strength * (uplift - centre[a])
    return shrunk


def mean_uplift(outcomes: pd.DataFrame, control: Hashable) -> dict:
    """Mean predicted uplift of every treated arm over the rows of ``outcomes``."""
    return {a: float((outcomes[a] - outcomes[control]).mean()) for a in outcomes.columns if a != control}
