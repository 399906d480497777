"""Offer policy: from per-(user, arm) predictions to one offer per user, under a budget and a holdout.

Expected incremental margin of arm ``a`` over the control ``c`` (the holdout's "no offer"):

    margin_rate * (p_a * value_a - p_c * value_c) - reward_size_a * p_a

where ``p`` is P(reactivate) and ``value`` the expected order value given reactivation; the
reward is paid only on redemption, so its expected cost is reward_size_a * p_a.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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


def holdout_score(campaign_id: str, user_id: Hashable) -> float:
    """A uniform number in [0, 1) fixed by (campaign, user): the same on every run and machine."""
    digest = hashlib.sha256(f"{campaign_id}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_mask(campaign_id: str, user_ids: Sequence[Hashable], share: float = 0.10) -> np.ndarray:
    """True for the users held out of the campaign (about ``share`` of them)."""
    if share <= 0:
        return np.zeros(len(user_ids), dtype=bool)
    return np.array([holdout_score(campaign_id, u) < share for u in user_ids], dtype=bool)


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
    """Picks each user's offer: holdout by hash, then the best affordable arm by expected margin.

    ``reward_size`` maps every treated arm to its reward (QAR); ``control`` is the arm that stands
    for "no offer" in the predictions and in the output.
    """

    campaign_id: str
    reward_size: Mapping[Hashable, float]
    margin_rate: float
    control: Hashable = "none"
    holdout_share: float = 0.10
    limits: BudgetLimits = BudgetLimits()

    def decide(
        self,
        user_id: Sequence[Hashable],
        p_reactivate: pd.DataFrame,
        order_value: pd.DataFrame,
        segment: Sequence[Hashable] | None = None,
    ) -> pd.DataFrame:
        """One row per user (same order as the inputs): user_id, segment, holdout, arm,
        expected_gain, expected_cost. Holdout users always get the control and cost nothing."""
        segment = np.asarray([None] * len(p_reactivate) if segment is None else segment, dtype=object)
        holdout = holdout_mask(self.campaign_id, user_id, self.holdout_share)
        gain = expected_incremental_margin(p_reactivate, order_value, self.reward_size, self.control, self.margin_rate)
        cost = expected_cost(p_reactivate, self.reward_size, self.control)
        gain.iloc[np.flatnonzero(holdout)] = np.nan
        offers = allocate_offers(gain, cost, segment, self.limits, self.control)
        offers.insert(0, "holdout", holdout)
        offers.insert(0, "segment", segment)
        offers.insert(0, "user_id", np.asarray(user_id, dtype=object))
        return offers.reset_index(drop=True)


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
