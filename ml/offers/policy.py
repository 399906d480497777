"""Offer policy: from per-(user, arm) predictions to one offer per user, under a budget and a holdout.

Expected incremental margin of arm ``a`` over the control ``c`` (the holdout's "no offer"):

    margin_rate * (p_a * value_a - p_c * value_c) - reward_size_a * p_a

where ``p`` is P(reactivate) and ``value`` the expected order value given reactivation; the
reward is paid only on redemption, so its expected cost is reward_size_a * p_a.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml.experiments.assignment import HOLDOUT, NON_PERSONALISED, PERSONALISED, draw_arms
from ml.offers.arms import NO_OFFER
from ml.offers.evaluation import Propensity, ipw_contributions
from ml.offers.uplift import mean_uplift, shrink_uplift


def expected_cost(p_reactivate: pd.DataFrame, reward_size: Mapping[Hashable, float], control: Hashable) -> pd.DataFrame:
    """Expected reward paid per user for every treated arm: reward size times P(reactivate | arm)."""
    arms = [a for a in p_reactivate.columns if a != control]
    return pd.DataFrame({a: reward_size[a] * p_reactivate[a] for a in arms}, index=p_reactivate.index)


def expected_incremental_margin(
    p_reactivate: pd.DataFrame,
    order_value: pd.DataFrame,
    reward_size: Mapping[Hashable, float],
    control: Hashable,
    margin_rate: float,
) -> pd.DataFrame:
    """Expected incremental margin minus expected reward cost, per user (rows) and treated arm (columns)."""
    revenue = p_reactivate * order_value[p_reactivate.columns]
    arms = [a for a in p_reactivate.columns if a != control]
    incremental = margin_rate * revenue[arms].sub(revenue[control], axis=0)
    return incremental - expected_cost(p_reactivate, reward_size, control)


def best_offers(gain: pd.DataFrame, cost: pd.DataFrame, no_offer: Hashable) -> pd.DataFrame:
    """Per user the arm with the largest expected gain, or ``no_offer`` when no gain is positive.

    Missing gains (e.g. no prediction for a user) count as "not positive".
    """
    filled = gain.fillna(-np.inf)
    best_arm = filled.idxmax(axis=1)
    best_gain = filled.max(axis=1)
    positive = best_gain > 0
    chosen_cost = cost.to_numpy()[np.arange(len(cost)), cost.columns.get_indexer(best_arm)]
    return pd.DataFrame(
        {
            "arm": best_arm.where(positive, no_offer).astype(object),
            "expected_gain": best_gain.where(positive, 0.0),
            "expected_cost": np.where(positive, chosen_cost, 0.0),
        },
        index=gain.index,
    )


@dataclass(frozen=True)
class BudgetLimits:
    """Caps on the sum of expected reward cost (overall and per segment) and on offers per segment.

    ``None`` / a missing segment means unlimited.
    """

    total_budget: float | None = None
    segment_budgets: Mapping[Hashable, float] = field(default_factory=dict)
    segment_max_offers: Mapping[Hashable, int] = field(default_factory=dict)


def allocate_offers(
    gain: pd.DataFrame,
    cost: pd.DataFrame,
    segment: Sequence[Hashable],
    limits: BudgetLimits,
    no_offer: Hashable,
) -> pd.DataFrame:
    """Greedy allocation under ``limits``.

    Users are served in decreasing order of their best arm's gain per unit of expected cost (free
    offers first); each gets the highest-gain positive arm that still fits every remaining cap, or
    ``no_offer``. Without binding caps this is exactly :func:`best_offers`.
    """
    best = best_offers(gain, cost, no_offer)
    if limits.total_budget is None and not limits.segment_budgets and not limits.segment_max_offers:
        return best
    segment = np.asarray(segment, dtype=object)
    candidates = best["arm"].to_numpy() != no_offer
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = np.where(best["expected_cost"] > 0, best["expected_gain"] / best["expected_cost"], np.inf)
    order = np.lexsort((-best["expected_gain"].to_numpy(), -efficiency))

    remaining_total = np.inf if limits.total_budget is None else float(limits.total_budget)
    remaining_budget = dict(limits.segment_budgets)
    remaining_offers = dict(limits.segment_max_offers)
    gains = np.nan_to_num(gain.to_numpy(dtype=float), nan=-np.inf)
    costs, arms = cost[gain.columns].to_numpy(dtype=float), np.asarray(gain.columns, dtype=object)
    chosen = np.full(len(gain), no_offer, dtype=object)
    chosen_gain, chosen_cost = np.zeros(len(gain)), np.zeros(len(gain))
    for row in order[candidates[order]]:
        group = segment[row]
        if remaining_offers.get(group, 1) < 1:
            continue
        room = min(remaining_total, remaining_budget.get(group, np.inf))
        affordable = np.where((gains[row] > 0) & (costs[row] <= room), gains[row], -np.inf)
        pick = int(np.argmax(affordable))
        if affordable[pick] == -np.inf:
            continue
        chosen[row], chosen_gain[row], chosen_cost[row] = arms[pick], gains[row, pick], costs[row, pick]
        remaining_total -= costs[row, pick]
        if group in remaining_budget:
            remaining_budget[group] -= costs[row, pick]
        if group in remaining_offers:
            remaining_offers[group] -= 1
    return pd.DataFrame({"arm": chosen, "expected_gain": chosen_gain, "expected_cost": chosen_cost}, index=gain.index)


@dataclass(frozen=True)
class OfferPolicy:
    """The one offer decision, in production (:func:`ml.offers.decide.decide_offers`) and in the benchmarks.

    Each user first gets an experiment arm by the campaign's hash (:func:`ml.experiments.assignment.draw_arms`):
    - ``holdout`` (``holdout_share`` of users): the control, at no cost, ever;
    - ``personalised`` (``personalised_share``; ``None``: everyone not held out): the arm with the largest
      expected gain that still fits ``limits`` (greedy, most efficient users first, :func:`allocate_offers`),
      or the control when no arm pays or fits;
    - ``non_personalised`` (the rest): ``default_arm``, whatever it is predicted to earn.

    ``reward_size`` maps every treated arm (the default arm included) to its reward (QAR); ``control`` is the
    arm that stands for "no offer" in the predictions and in the output. ``limits`` cap the personalised
    offers' expected cost.
    """

    campaign_id: str
    reward_size: Mapping[Hashable, float]
    margin_rate: float
    control: Hashable = NO_OFFER
    holdout_share: float = 0.10
    personalised_share: float | None = None
    default_arm: Hashable | None = None
    limits: BudgetLimits = BudgetLimits()

    def decide(
        self,
        user_id: Sequence[Hashable],
        p_reactivate: pd.DataFrame,
        order_value: pd.DataFrame,
        segment: Sequence[Hashable] | None = None,
    ) -> pd.DataFrame:
        """Expected gain and cost from the predictions, then :meth:`choose`."""
        gain = expected_incremental_margin(p_reactivate, order_value, self.reward_size, self.control, self.margin_rate)
        cost = expected_cost(p_reactivate, self.reward_size, self.control)
        return self.choose(user_id, p_reactivate, gain, cost, segment)

    def choose(
        self,
        user_id: Sequence[Hashable],
        p_reactivate: pd.DataFrame,
        gain: pd.DataFrame,
        cost: pd.DataFrame,
        segment: Sequence[Hashable] | None = None,
    ) -> pd.DataFrame:
        """One row per user (same order as the inputs): user_id, segment, experiment_arm, holdout, arm,
        expected_gain, expected_cost (reward size x P(reactivate | arm)) and expected_uplift (P(reactivate)
        over the control's); both are 0 for the control. ``gain`` and ``cost`` are per user and treated arm."""
        segment = np.asarray([None] * len(p_reactivate) if segment is None else segment, dtype=object)
        user_id = np.asarray(user_id, dtype=object)
        experiment = draw_arms(self.campaign_id, user_id, self.holdout_share, self.personalised_share)
        personalised = experiment == PERSONALISED
        candidates = gain.copy()
        candidates.iloc[np.flatnonzero(~personalised)] = np.nan
        offers = allocate_offers(candidates, cost, segment, self.limits, self.control)
        arm = offers["arm"].to_numpy(dtype=object).copy()
        expected_gain = offers["expected_gain"].to_numpy(dtype=float).copy()
        non_personalised = experiment == NON_PERSONALISED
        if non_personalised.any():
            if self.default_arm is None:
                raise ValueError("non-personalised users need a default_arm")
            arm[non_personalised] = self.default_arm
            expected_gain[non_personalised] = _pick(gain, arm)[non_personalised]
        offered = arm != self.control
        reward = np.array([self.reward_size[a] if o else 0.0 for a, o in zip(arm, offered, strict=True)], dtype=float)
        p_chosen = _pick(p_reactivate, arm)
        p_control = p_reactivate[self.control].to_numpy(dtype=float)
        return pd.DataFrame(
            {
                "user_id": user_id,
                "segment": segment,
                "experiment_arm": experiment,
                "holdout": experiment == HOLDOUT,
                "arm": arm,
                "expected_gain": np.where(offered, expected_gain, 0.0),
                "expected_cost": np.where(offered, np.nan_to_num(p_chosen) * reward, 0.0),
                "expected_uplift": np.where(offered, np.nan_to_num(p_chosen - p_control), 0.0),
            }
        )


def _pick(frame: pd.DataFrame, arm: np.ndarray) -> np.ndarray:
    """Per row the value in column ``arm[row]``; NaN where the frame has no such column."""
    columns = frame.columns.get_indexer(pd.Index(arm, dtype=object))
    values = frame.to_numpy(dtype=float)[np.arange(len(frame)), np.maximum(columns, 0)]
    return np.where(columns >= 0, values, np.nan)


def tune_shrinkage(
    outcomes: pd.DataFrame,
    control: Hashable,
    choose_arms: Callable[[pd.DataFrame], np.ndarray],
    logged_arm: Sequence,
    realised_value: Sequence[float],
    propensity: Propensity,
    strengths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    z: float = 1.645,
) -> float:
    """Shrinkage strength (see :func:`ml.offers.uplift.shrink_uplift`) for a policy, chosen on
    held-out randomised rows.

    Strength 0 ignores the model's heterogeneity (with free offers: the best uniform arm); a larger
    strength is taken only if its IPW value of ``realised_value`` beats strength 0 by more than ``z``
    standard errors of the paired difference, and among those the one with the largest gain.
    ``choose_arms`` maps predicted outcomes to one arm per row.
    """
    centre = mean_uplift(outcomes, control)
    contributions = {}
    for strength in strengths:
        chosen = choose_arms(shrink_uplift(outcomes, control, strength, centre))
        contributions[strength] = ipw_contributions(chosen, logged_arm, realised_value, propensity)
    baseline = contributions[min(strengths)]
    best, best_gain = min(strengths), 0.0
    for strength, values in contributions.items():
        difference = values - baseline
        gain, standard_error = difference.mean(), difference.std(ddof=1) / np.sqrt(len(difference))
        if gain > z * standard_error and gain > best_gain:
            best, best_gain = strength, gain
    return float(best)
