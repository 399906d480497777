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


def expected_gain(
    objective: str,
    p_reactivate: pd.DataFrame,
    order_value: pd.DataFrame | None,
    reward_size: Mapping[Hashable, float],
    control: Hashable,
    margin_rate: float,
) -> pd.DataFrame:
    """What an offer is worth per user (rows) and treated arm (columns) under ``objective``:
    ``reengagement``, the rise in P(reactivate) over the control; ``margin``, the expected incremental
    margin minus the expected reward cost (:func:`expected_incremental_margin`; only it needs ``order_value``)."""
    if objective == "reengagement":
        arms = [a for a in p_reactivate.columns if a != control]
        return p_reactivate[arms].sub(p_reactivate[control], axis=0)
    if objective == "margin":
        return expected_incremental_margin(p_reactivate, order_value, reward_size, control, margin_rate)
    raise ValueError(f"unknown offer objective {objective!r}: use reengagement or margin")


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
    """The largest total expected gain that fits ``limits`` (a multiple-choice knapsack).

    Each user takes the arm that maximises ``gain - price * cost`` (``no_offer`` when none is positive),
    ``price`` being the smallest price of a unit of budget at which the spend fits every cap: the
    Lagrangian relaxation, found by bisection; a segment over its own budget gets its own, higher price.
    Spreading the budget this way gives many users a modest offer where handing the biggest offers to the
    first users would run dry, since an offer's effect saturates with its reward. Budget the relaxation
    leaves unspent then upgrades users, the largest gain per extra cost first. Offers per segment are
    capped by keeping that segment's best offers. Without binding caps this is exactly :func:`best_offers`.
    """
    best = best_offers(gain, cost, no_offer)
    if limits.total_budget is None and not limits.segment_budgets and not limits.segment_max_offers:
        return best
    segment = np.asarray(segment, dtype=object)
    gains = np.nan_to_num(gain.to_numpy(dtype=float), nan=-np.inf)
    costs = cost[gain.columns].to_numpy(dtype=float)
    everyone = np.ones(len(gain), dtype=bool)
    caps = {group: float(budget) for group, budget in limits.segment_budgets.items()}
    total = np.inf if limits.total_budget is None else float(limits.total_budget)
    # Each segment's price for its own budget, then one price for the total on top of them (a row pays the higher).
    floor = np.zeros(len(gain))
    for group, budget in caps.items():
        rows = segment == group
        floor[rows] = _clearing_price(gains, costs, rows, budget, floor)
    price = np.maximum(_clearing_price(gains, costs, everyone, total, floor), floor)
    pick, offered = _priced_choice(gains, costs, price)
    pick, offered = _cap_offers(gains, costs, price, segment, pick, offered, limits.segment_max_offers)
    pick, offered = _upgrade(gains, costs, segment, pick, offered, total, caps, limits.segment_max_offers)
    rows = np.arange(len(gain))
    arms = np.asarray(gain.columns, dtype=object)
    return pd.DataFrame(
        {
            "arm": np.where(offered, arms[pick], no_offer).astype(object),
            "expected_gain": np.where(offered, gains[rows, pick], 0.0),
            "expected_cost": np.where(offered, costs[rows, pick], 0.0),
        },
        index=gain.index,
    )


def _priced_choice(gains: np.ndarray, costs: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row the arm with the largest ``gain - price * cost`` and whether it is worth offering at all."""
    with np.errstate(invalid="ignore"):
        score = gains - price[:, None] * costs
    score = np.where(np.isfinite(gains), score, -np.inf)
    pick = score.argmax(axis=1)
    rows = np.arange(len(gains))
    return pick, (score[rows, pick] > 0) & (gains[rows, pick] > 0)


def _spend(gains: np.ndarray, costs: np.ndarray, price: np.ndarray, rows: np.ndarray) -> float:
    pick, offered = _priced_choice(gains, costs, price)
    return float(costs[np.arange(len(gains)), pick][offered & rows].sum())


def _clearing_price(gains: np.ndarray, costs: np.ndarray, rows: np.ndarray, budget: float, floor: np.ndarray) -> float:
    """The smallest price at which ``rows`` spend no more than ``budget``, each row paying at least its ``floor``."""
    if not np.isfinite(budget):
        return 0.0

    def fits(value: float) -> bool:
        return _spend(gains, costs, np.maximum(value, floor), rows) <= budget + 1e-9

    if fits(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while not fits(high):
        low, high = high, 2.0 * high
    for _ in range(50):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _cap_offers(gains, costs, price, segment, pick, offered, max_offers) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_offers[group]`` offers per segment: those with the largest priced score."""
    rows = np.arange(len(gains))
    score = gains[rows, pick] - price * costs[rows, pick]
    offered = offered.copy()
    for group, cap in max_offers.items():
        members = np.flatnonzero(offered & (segment == group))
        if len(members) > cap:
            offered[members[np.argsort(-score[members], kind="stable")[int(cap) :]]] = False
    return pick, offered


def _upgrade(gains, costs, segment, pick, offered, total, caps, max_offers) -> tuple[np.ndarray, np.ndarray]:
    """Spend what the relaxation left: move users to an arm with more gain, best gain per extra cost first."""
    rows = np.arange(len(gains))
    current_gain = np.where(offered, gains[rows, pick], 0.0)
    current_cost = np.where(offered, costs[rows, pick], 0.0)
    extra_gain = gains - current_gain[:, None]
    extra_cost = costs - current_cost[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((extra_gain > 0) & np.isfinite(gains), extra_gain / np.maximum(extra_cost, 1e-12), -np.inf)
    best_arm = ratio.argmax(axis=1)
    best_ratio = ratio[rows, best_arm]
    left = total - current_cost.sum()
    left_in = {g: caps[g] - current_cost[segment == g].sum() for g in caps}
    offers_in = {g: int((offered & (segment == g)).sum()) for g in max_offers}
    pick, offered = pick.copy(), offered.copy()
    for row in np.argsort(-best_ratio, kind="stable"):
        if best_ratio[row] == -np.inf:
            break
        group, arm = segment[row], best_arm[row]
        extra = extra_cost[row, arm]
        if extra > left + 1e-9 or extra > left_in.get(group, np.inf) + 1e-9:
            continue
        if not offered[row] and offers_in.get(group, 0) >= max_offers.get(group, np.inf):
            continue
        if not offered[row] and group in offers_in:
            offers_in[group] += 1
        pick[row], offered[row] = arm, True
        left -= extra
        if group in left_in:
            left_in[group] -= extra
    return pick, offered


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
    offers' expected cost; ``objective`` is what they maximise (:func:`expected_gain`).
    """

    campaign_id: str
    reward_size: Mapping[Hashable, float]
    margin_rate: float
    control: Hashable = NO_OFFER
    holdout_share: float = 0.10
    personalised_share: float | None = None
    default_arm: Hashable | None = None
    limits: BudgetLimits = BudgetLimits()
    objective: str = "margin"

    def decide(
        self,
        user_id: Sequence[Hashable],
        p_reactivate: pd.DataFrame,
        order_value: pd.DataFrame,
        segment: Sequence[Hashable] | None = None,
    ) -> pd.DataFrame:
        """Expected gain and cost from the predictions, then :meth:`choose`."""
        gain = expected_gain(
            self.objective, p_reactivate, order_value, self.reward_size, self.control, self.margin_rate
        )
        cost = expected_cost(p_reactivate, self.reward_size, self.control)
        return self.choose(user_id, p_reactivate, gain, cost, segment)

    def choose(
        self,
        user_id: Sequence[Hashable],
        p_reactivate: pd.DataFrame,
        gain: pd.DataFrame,
        cost: pd.DataFrame,
        segment: Sequence[Hashable] | None = None,
        experiment: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """One row per user (same order as the inputs): user_id, segment, experiment_arm, holdout, arm,
        expected_gain, expected_cost (reward size x P(reactivate | arm)) and expected_uplift (P(reactivate)
        over the control's); both are 0 for the control. ``gain`` and ``cost`` are per user and treated arm;
        ``experiment``: the users' arms if the caller drew them already (the same ``draw_arms``)."""
        segment = np.asarray([None] * len(p_reactivate) if segment is None else segment, dtype=object)
        user_id = np.asarray(user_id, dtype=object)
        if experiment is None:
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
            expected_gain[non_personalised] = value_of_arm(gain, arm)[non_personalised]
        offered = arm != self.control
        reward = np.array([self.reward_size[a] if o else 0.0 for a, o in zip(arm, offered, strict=True)], dtype=float)
        p_chosen = value_of_arm(p_reactivate, arm)
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


def value_of_arm(frame: pd.DataFrame, arm: np.ndarray) -> np.ndarray:
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
