"""The production offer decision: today's offer (or none) and experiment arm per inactive user."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ml.experiments.assignment import PERSONALISED, draw_arms, hash_units
from ml.offers.arms import NO_OFFER, arm_event_type, arm_label
from ml.offers.policy import BudgetLimits, OfferPolicy, value_of_arm
from ml.offers.response import OfferResponseModel
from ml.recommend.lifecycle import INACTIVE_SEGMENTS

log = logging.getLogger(__name__)


def production_policy(model: OfferResponseModel, campaign_id: str, settings, budget: float) -> OfferPolicy:
    """Today's :class:`OfferPolicy`: the experiment's shares, the default offer for the non-personalised arm,
    and ``budget`` for the personalised offers (maximising ``settings.offer_objective``), no inactive segment
    taking more than its share."""
    default_arm = arm_label(settings.default_offer_event_type, settings.default_offer_reward)
    return OfferPolicy(
        campaign_id=campaign_id,
        reward_size={**model.reward_size_, default_arm: settings.default_offer_reward},
        margin_rate=settings.order_margin_rate,
        control=NO_OFFER,
        holdout_share=settings.holdout_share,
        personalised_share=settings.personalised_share,
        default_arm=default_arm,
        limits=BudgetLimits(
            total_budget=budget,
            segment_budgets=dict.fromkeys(INACTIVE_SEGMENTS, budget * settings.offer_segment_budget_share),
        ),
        objective=settings.offer_objective,
    )


def personalised_budget(cost: pd.DataFrame, personalised: np.ndarray, settings) -> float:
    """The personalised offers' expected reward budget: ``personalised_budget_per_user`` per personalised user,
    or (0, the default) what the non-personalised offer is expected to cost for those same users, so that the
    controlled test compares the two arms at equal spend; never more than ``campaign_budget``."""
    per_user = settings.personalised_budget_per_user
    default_arm = arm_label(settings.default_offer_event_type, settings.default_offer_reward)
    if per_user <= 0:
        if default_arm not in cost.columns:
            log.warning(
                "the default offer %s was never sent: no estimate of its cost, using campaign_budget", default_arm
            )
            return settings.campaign_budget
        per_user = float(cost.loc[personalised, default_arm].mean()) if personalised.any() else 0.0
    return min(settings.campaign_budget, per_user * int(personalised.sum()))


def exploration_key(campaign_id: str) -> str:
    """The hash key of a campaign's exploration draw: its own, so it is independent of the experiment arms'."""
    return f"explore:{campaign_id}"


def explore(
    decided: pd.DataFrame, arms: tuple[str, ...], campaign_id: str, share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exploration in the personalised arm, and every offer's propensity.

    ``share`` of the personalised users (hash of campaign and user) get an arm drawn uniformly from ``arms``
    (every arm the model predicts, "none" included) instead of the policy's. Returns each user's arm, whether it was
    explored, and its propensity: the probability that this arm was the one sent, given the user's experiment
    arm. Personalised: (1 - share) * [arm is the policy's choice] + share / K over the K arms; non-personalised
    and holdout: 1 (their offer is fixed)."""
    arm = decided["arm"].to_numpy(dtype=object).copy()
    personalised = decided["experiment_arm"].to_numpy() == PERSONALISED
    user_id = decided["user_id"].to_numpy()
    unit = hash_units(exploration_key(campaign_id), user_id)
    explored = personalised & (unit < share)
    # The uniform pick reuses the draw below ``share``, rescaled to [0, 1): independent of whether to explore.
    pick = np.minimum((unit / share * len(arms)).astype(int), len(arms) - 1) if share > 0 else np.zeros(len(arm), int)
    policy_arm = arm.copy()
    arm[explored] = np.asarray(arms, dtype=object)[pick[explored]]
    propensity = np.where(personalised, (1.0 - share) * (arm == policy_arm) + share / len(arms), 1.0)
    return arm, explored, propensity


def decide_offers(model: OfferResponseModel, users: pd.DataFrame, campaign_id: str, settings) -> pd.DataFrame:
    """Today's campaign: each inactive user's experiment arm (hash of campaign and user), then the offer.

    personalised: the offers that maximise ``settings.offer_objective`` within :func:`personalised_budget`
    (no segment taking more than its share; "none" where no offer gains), but for the exploration share's
    uniformly drawn arms (:func:`explore`); non_personalised: the fixed default offer; holdout: nothing, ever.
    Gains and costs are the model's (:meth:`OfferResponseModel.gain_and_cost`). Each row carries the
    propensity of its offer, which the offer model's training weights by.
    """
    users = users.reset_index(drop=True)
    p, gain, cost = model.gain_and_cost(users, settings.offer_objective)
    experiment = draw_arms(
        campaign_id, users["user_id"].to_numpy(), settings.holdout_share, settings.personalised_share
    )
    budget = personalised_budget(cost, experiment == PERSONALISED, settings)
    policy = production_policy(model, campaign_id, settings, budget)
    decided = policy.choose(users["user_id"].to_numpy(), p, gain, cost, users["segment"].to_numpy(), experiment)
    arm, explored, propensity = explore(decided, tuple(p.columns), campaign_id, settings.offer_exploration_share)
    offered = arm != NO_OFFER
    expected_uplift = decided["expected_uplift"].to_numpy(dtype=float).copy()
    expected_cost = decided["expected_cost"].to_numpy(dtype=float).copy()
    expected_uplift[explored] = np.where(
        offered, np.nan_to_num(value_of_arm(p, arm) - p[NO_OFFER].to_numpy(dtype=float)), 0.0
    )[explored]
    expected_cost[explored] = np.where(offered, np.nan_to_num(value_of_arm(cost, arm)), 0.0)[explored]
    reward_of = {**policy.reward_size, NO_OFFER: 0.0}
    return pd.DataFrame(
        {
            "user_id": users["user_id"],
            "segment": users["segment"],
            "arm": decided["experiment_arm"].to_numpy(),
            "event_type": [arm_event_type(a) for a in arm],
            "reward_size": [reward_of[a] for a in arm],
            "expected_uplift": expected_uplift,
            "expected_cost": expected_cost,
            "is_holdout": decided["holdout"].to_numpy(),
            "explored": explored,
            "propensity": propensity,
        }
    )


def offer_summary(offers: pd.DataFrame, objective: str) -> dict:
    """The day's offers in figures: expected cost in total and per user of each experiment arm (the controlled
    test compares personalised and non-personalised at equal spend), users per arm and segment."""
    offered = offers[offers["event_type"] != NO_OFFER]
    return {
        "objective": objective,
        "expected_cost_per_user": {
            arm: round(float(members["expected_cost"].mean()), 3) for arm, members in offers.groupby("arm")
        },
        "expected_cost_personalised": round(
            float(offered.loc[offered["arm"] == "personalised", "expected_cost"].sum()), 2
        ),
        "expected_cost_total": round(float(offered["expected_cost"].sum()), 2),
        "users_targeted_per_segment": {k: int(v) for k, v in offered.groupby("segment").size().items()},
        "users_per_arm": {k: int(v) for k, v in offers.groupby("arm").size().items()},
        "expected_incremental_orders": round(float(offered["expected_uplift"].sum()), 1),
    }
