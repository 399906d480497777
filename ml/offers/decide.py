"""The production offer decision: today's offer (or none) and experiment arm per inactive user."""

from __future__ import annotations

import pandas as pd

from ml.offers.arms import NO_OFFER, arm_event_type, arm_label
from ml.offers.policy import BudgetLimits, OfferPolicy
from ml.offers.response import OfferResponseModel
from ml.recommend.lifecycle import INACTIVE_SEGMENTS


def production_policy(model: OfferResponseModel, campaign_id: str, settings) -> OfferPolicy:
    """Today's :class:`OfferPolicy`: the experiment's shares, the default offer for the non-personalised arm,
    and the campaign budget for the personalised offers, no inactive segment taking more than its share."""
    default_arm = arm_label(settings.default_offer_event_type, settings.default_offer_reward)
    segment_budget = settings.campaign_budget * settings.offer_segment_budget_share
    return OfferPolicy(
        campaign_id=campaign_id,
        reward_size={**model.reward_size_, default_arm: settings.default_offer_reward},
        margin_rate=settings.order_margin_rate,
        control=NO_OFFER,
        holdout_share=settings.holdout_share,
        personalised_share=settings.personalised_share,
        default_arm=default_arm,
        limits=BudgetLimits(
            total_budget=settings.campaign_budget,
            segment_budgets=dict.fromkeys(INACTIVE_SEGMENTS, segment_budget),
        ),
    )


def decide_offers(model: OfferResponseModel, users: pd.DataFrame, campaign_id: str, settings) -> pd.DataFrame:
    """Today's campaign: each inactive user's experiment arm (hash of campaign and user), then the offer.

    personalised: the policy's most profitable affordable offer ("none" when nothing pays) under the
    campaign budget, no segment taking more than its share; non_personalised: the fixed default offer;
    holdout: nothing, ever. Gains and costs are the model's (:meth:`OfferResponseModel.gain_and_cost`).
    """
    users = users.reset_index(drop=True)
    policy = production_policy(model, campaign_id, settings)
    p, gain, cost = model.gain_and_cost(users)
    decided = policy.choose(users["user_id"].to_numpy(), p, gain, cost, users["segment"].to_numpy())
    reward_of = {**policy.reward_size, NO_OFFER: 0.0}
    return pd.DataFrame(
        {
            "user_id": users["user_id"],
            "segment": users["segment"],
            "arm": decided["experiment_arm"].to_numpy(),
            "event_type": [arm_event_type(a) for a in decided["arm"]],
            "reward_size": [reward_of[a] for a in decided["arm"]],
            "expected_uplift": decided["expected_uplift"].to_numpy(),
            "expected_cost": decided["expected_cost"].to_numpy(),
            "is_holdout": decided["holdout"].to_numpy(),
        }
    )


def offer_summary(offers: pd.DataFrame, budget: float) -> dict:
    offered = offers[offers["event_type"] != NO_OFFER]
    return {
        "budget": budget,
        "expected_cost_personalised": round(
            float(offered.loc[offered["arm"] == "personalised", "expected_cost"].sum()), 2
        ),
        "expected_cost_total": round(float(offered["expected_cost"].sum()), 2),
        "users_targeted_per_segment": {k: int(v) for k, v in offered.groupby("segment").size().items()},
        "users_per_arm": {k: int(v) for k, v in offers.groupby("arm").size().items()},
        "expected_incremental_orders": round(float(offered["expected_uplift"].sum()), 1),
    }
