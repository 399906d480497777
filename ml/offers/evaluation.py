"""Offer-model evaluation on randomised data: uplift@k, Qini, and off-policy values by inverse propensity.

All functions are pure; ``treated`` is a boolean mask over rows of one treated arm and the control.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

Propensity = float | Sequence[float] | Mapping[Hashable, float]


def observed_uplift(treated: Sequence[bool], y: Sequence[float]) -> float:
    """Mean outcome of treated rows minus mean outcome of control rows (NaN when a side is empty)."""
    treated, y = np.asarray(treated, dtype=bool), np.asarray(y, dtype=float)
    if treated.all() or not treated.any():
        return float("nan")
    return float(y[treated].mean() - y[~treated].mean())


def _top_k(score: np.ndarray, k: float) -> np.ndarray:
    """Indices of the ceil(k*n) highest scores; ties keep row order so results are reproducible."""
    if not 0 < k <= 1:
        raise ValueError("k is a fraction in (0, 1]")
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    return order[: int(np.ceil(k * len(order)))]


def uplift_at_k(uplift_score: Sequence[float], treated: Sequence[bool], y: Sequence[float], k: float = 0.3) -> float:
    """Observed treated-minus-control outcome rate among the top ``k`` share of rows by predicted uplift."""
    treated, y = np.asarray(treated, dtype=bool), np.asarray(y, dtype=float)
    top = _top_k(np.asarray(uplift_score), k)
    return observed_uplift(treated[top], y[top])


def uplift_at_k_ratio(
    uplift_score: Sequence[float], treated: Sequence[bool], y: Sequence[float], k: float = 0.3
) -> float:
    """uplift@k as a multiple of the uplift of random targeting (all rows); 1.0 means no better than random."""
    return uplift_at_k(uplift_score, treated, y, k) / observed_uplift(treated, y)


def qini_curve(uplift_score: Sequence[float], treated: Sequence[bool], y: Sequence[float]) -> pd.DataFrame:
    """Qini curve: targeting rows by decreasing predicted uplift, the incremental outcome after each row,
    Y_T(t) - Y_C(t) * N_T(t) / N_C(t), per customer of the whole population.

    Columns ``fraction`` (share targeted, starting at 0), ``qini`` (model) and ``random`` (the straight
    line to the same end point).
    """
    treated, y = np.asarray(treated, dtype=bool), np.asarray(y, dtype=float)
    order = np.argsort(-np.asarray(uplift_score, dtype=float), kind="stable")
    treated, y = treated[order], y[order]
    n_treated, n_control = np.cumsum(treated), np.cumsum(~treated)
    y_treated, y_control = np.cumsum(y * treated), np.cumsum(y * ~treated)
    ratio = np.divide(n_treated, n_control, out=np.zeros(len(y)), where=n_control > 0)
    gain = np.concatenate([[0.0], (y_treated - y_control * ratio) / len(y)])
    fraction = np.arange(len(y) + 1) / len(y)
    return pd.DataFrame({"fraction": fraction, "qini": gain, "random": fraction * gain[-1]})


def qini_coefficient(uplift_score: Sequence[float], treated: Sequence[bool], y: Sequence[float]) -> float:
    """Area between the Qini curve and the random-targeting line (trapezoids over the share targeted)."""
    curve = qini_curve(uplift_score, treated, y)
    return float(np.trapezoid(curve["qini"] - curve["random"], curve["fraction"]))


def qini_plot(curves: Mapping[str, pd.DataFrame], title: str = "Qini curve") -> Figure:
    """One figure with a Qini curve per model (from :func:`qini_curve`) and the random line of the first."""
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for name, curve in curves.items():
        axes.plot(curve["fraction"], curve["qini"], label=name)
    if curves:
        first = next(iter(curves.values()))
        axes.plot(first["fraction"], first["random"], linestyle="--", color="grey", label="random")
    axes.set_xlabel("share of customers targeted (by predicted uplift)")
    axes.set_ylabel("incremental outcome per customer")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _row_propensity(logged_arm: np.ndarray, propensity: Propensity) -> np.ndarray:
    if isinstance(propensity, Mapping):
        return np.array([propensity[a] for a in logged_arm], dtype=float)
    return np.broadcast_to(np.asarray(propensity, dtype=float), logged_arm.shape)


def ipw_contributions(
    chosen_arm: Sequence, logged_arm: Sequence, y: Sequence[float], propensity: Propensity
) -> np.ndarray:
    """Per-row terms 1[chosen = logged] * y / P(logged arm); their mean is the policy value."""
    chosen_arm, logged_arm = np.asarray(chosen_arm, dtype=object), np.asarray(logged_arm, dtype=object)
    y = np.asarray(y, dtype=float)
    return np.where(chosen_arm == logged_arm, y / _row_propensity(logged_arm, propensity), 0.0)


def ipw_policy_value(chosen_arm: Sequence, logged_arm: Sequence, y: Sequence[float], propensity: Propensity) -> float:
    """Inverse-propensity estimate of the mean outcome per customer had the policy chosen the arms.

    ``propensity`` is the logging probability of each logged arm: one number, one per row, or per arm.
    """
    return float(ipw_contributions(chosen_arm, logged_arm, y, propensity).mean())


def uniform_policy_values(
    arms: Sequence[Hashable], logged_arm: Sequence, y: Sequence[float], propensity: Propensity
) -> dict:
    """IPW value of giving every customer the same arm, for each arm (the control arm is "no offer")."""
    n = len(np.asarray(y))
    return {a: ipw_policy_value(np.full(n, a, dtype=object), logged_arm, y, propensity) for a in arms}


def random_policy_value(
    arms: Sequence[Hashable], logged_arm: Sequence, y: Sequence[float], propensity: Propensity
) -> float:
    """Expected value of drawing each customer's arm uniformly at random: the mean of the uniform values."""
    return float(np.mean(list(uniform_policy_values(arms, logged_arm, y, propensity).values())))
