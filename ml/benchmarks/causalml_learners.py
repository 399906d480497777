"""CausalML's meta-learners (T, X, R, DR) with the project's LightGBM base learner, for the Hillstrom benchmark.

Imported only by ``ml.benchmarks.offers`` when a ``causalml-*`` learner runs (causalml is a heavy import:
numba, shap, xgboost), never at CLI parse time or by the pipeline. Each learner has the interface of the
hand-written ones in ``ml.offers.uplift``: ``fit(X, arm, y)`` on a feature frame and ``predict_outcomes(X)``,
one column per arm. The base learner is :class:`ml.offers.uplift.BoostedRegressor` (bagged LightGBM,
cross-entropy for 0/1 outcomes, so the regressor variants return probabilities like CausalML's classifier
variants) with the same :class:`BoosterConfig` as the hand-written learner of the same kind; the effect
models see only ``effect_features``. Only the meta-learner logic (cross-fitting, pseudo-outcomes, blending)
is CausalML's.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from causalml.inference.meta import BaseDRRegressor, BaseRRegressor, BaseTRegressor, BaseXRegressor
from sklearn.base import BaseEstimator, RegressorMixin

from ml.offers.uplift import BoostedRegressor, BoosterConfig, FeatureEncoder

KINDS = ("t", "x", "r", "dr")
# CausalML logs every fitting step at INFO; the benchmark prints its own progress.
logging.getLogger("causalml").setLevel(logging.WARNING)
DEFAULT_OUTCOME = BoosterConfig()
DEFAULT_EFFECT = BoosterConfig(num_leaves=2, min_child_samples=2000, n_seeds=5)


class LightGBMLearner(RegressorMixin, BaseEstimator):
    """scikit-learn face of :class:`BoostedRegressor` for CausalML, which hands it numeric matrices.

    ``columns`` names the matrix's columns; ``categorical`` maps a column to its number of levels (its
    values are level codes, -1 for missing); ``use`` picks the columns the model sees (default: all).
    """

    def __init__(
        self,
        config: BoosterConfig = DEFAULT_OUTCOME,
        columns: tuple = (),
        categorical: tuple = (),
        use: tuple | None = None,
        objective: str = "auto",
        seed: int = 0,
    ):
        self.config = config
        self.columns = columns
        self.categorical = categorical
        self.use = use
        self.objective = objective
        self.seed = seed

    def _frame(self, X) -> pd.DataFrame:
        frame = pd.DataFrame(np.asarray(X, dtype=float), columns=list(self.columns))
        for column, levels in self.categorical:
            frame[column] = pd.Categorical(frame[column].astype(int), categories=range(levels))
        return frame[list(self.use)] if self.use is not None else frame

    def fit(self, X, y, sample_weight=None) -> LightGBMLearner:
        self.model_ = BoostedRegressor(self.config, objective=self.objective, seed=self.seed)
        self.model_.fit(self._frame(X), np.asarray(y, dtype=float), sample_weight=sample_weight)
        return self

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(self._frame(X))


class CausalMLLearner:
    """One CausalML meta-learner over every treated arm against ``control`` (multi-treatment)."""

    def __init__(
        self,
        kind: str,
        control: Hashable,
        *,
        outcome_config: BoosterConfig = DEFAULT_OUTCOME,
        effect_config: BoosterConfig = DEFAULT_EFFECT,
        effect_features: Sequence[str] | None = None,
        propensities: Mapping[Hashable, float] | None = None,
        n_folds: int = 3,
        seed: int = 0,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind is one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.control = control
        self.outcome_config = outcome_config
        self.effect_config = effect_config
        self.effect_features = effect_features
        self.propensities = propensities
        self.n_folds = n_folds
        self.seed = seed

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        encoded = self.encoder_.transform(X)
        return np.column_stack(
            [
                encoded[c].cat.codes.to_numpy(float) if c in self.encoder_.categories_ else encoded[c].to_numpy(float)
                for c in self.encoder_.columns_
            ]
        )

    def _pair_propensity(self, n: int) -> dict:
        """P(arm a | arm a or control) for every treated arm, per row (CausalML's ``p``)."""
        given = self.propensities or {a: float(np.mean(self.arm_ == a)) for a in self.arms_}
        return {str(a): np.full(n, given[a] / (given[a] + given[self.control])) for a in self.arms_[1:]}

    def fit(self, X: pd.DataFrame, arm: Sequence, y: Sequence[float]) -> CausalMLLearner:
        arm, y = np.asarray(arm, dtype=object), np.asarray(y, dtype=float)
        arms = sorted(set(arm.tolist()), key=str)
        if self.control not in arms:
            raise ValueError(f"control arm {self.control!r} does not occur in the training data")
        self.arms_ = (self.control, *(a for a in arms if a != self.control))
        self.arm_ = arm
        self.encoder_ = FeatureEncoder().fit(X)
        columns = tuple(self.encoder_.columns_)
        categorical = tuple((c, len(levels)) for c, levels in self.encoder_.categories_.items())
        effect_use = tuple(self.effect_features) if self.effect_features is not None else None

        def outcome(config: BoosterConfig) -> LightGBMLearner:
            return LightGBMLearner(config, columns, categorical, seed=self.seed)

        effect = LightGBMLearner(
            self.effect_config, columns, categorical, use=effect_use, objective="regression", seed=self.seed
        )
        matrix, treatment = self._matrix(X), arm.astype(str)
        p = self._pair_propensity(len(y))
        if self.kind == "t":
            self.model_ = BaseTRegressor(learner=outcome(self.outcome_config), control_name=str(self.control))
            self.model_.fit(matrix, treatment, y)
        elif self.kind == "x":
            self.model_ = BaseXRegressor(
                control_outcome_learner=outcome(self.outcome_config),
                treatment_outcome_learner=outcome(self.outcome_config),
                control_effect_learner=effect,
                treatment_effect_learner=effect,
                control_name=str(self.control),
            )
            self.model_.fit(matrix, treatment, y, p=p)
        elif self.kind == "dr":
            self.model_ = BaseDRRegressor(
                control_outcome_learner=outcome(self.outcome_config),
                treatment_outcome_learner=outcome(self.outcome_config),
                treatment_effect_learner=effect,
                control_name=str(self.control),
            )
            self.model_.fit(matrix, treatment, y, p=p, seed=self.seed)
        else:
            self.model_ = BaseRRegressor(
                outcome_learner=outcome(self.outcome_config),
                effect_learner=effect,
                control_name=str(self.control),
                n_fold=self.n_folds,
                random_state=self.seed,
            )
            self.model_.cv_n_jobs = 1  # the regressor does not pass it on; the default -1 forks a worker per core
            self.model_.fit(matrix, treatment, y, p=p, verbose=False)
            # CausalML's R-learner keeps no outcome model (only cross-fitted predictions); the policy needs a
            # level, so E[y | x] is fitted once more and the control's outcome is E[y | x] - sum_a P(a) tau_a(x).
            self.mean_outcome_ = outcome(self.outcome_config).fit(matrix, y)
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        matrix = self._matrix(X)
        treated = [str(a) for a in self.arms_[1:]]
        p = self._pair_propensity(len(matrix))
        if self.kind == "r":
            te = self.model_.predict(matrix)
            shares = {a: float(np.mean(self.arm_ == a)) for a in self.arms_}
            control = self.mean_outcome_.predict(matrix) - sum(
                shares[a] * te[:, self.model_._classes[str(a)]] for a in self.arms_[1:]
            )
        elif self.kind == "x":
            te = self.model_.predict(matrix, p=p, verbose=False)
            control = self.model_.models_mu_c[treated[0]].predict(matrix)
        else:
            te, control_by_arm, _ = self.model_.predict(matrix, return_components=True, verbose=False)
            control = control_by_arm[treated[0]]
        outcomes = {self.control: control}
        for a in self.arms_[1:]:
            outcomes[a] = control + te[:, self.model_._classes[str(a)]]
        return pd.DataFrame(outcomes, index=X.index)
