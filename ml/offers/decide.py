"""The production offer decision: today's offer (or none) and experiment arm per inactive user."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.offers.policy import (
    BudgetLimits,
    allocate_offers,
)
from ml.offers.response import CONTROL, INACTIVE_SEGMENTS, OfferResponseModel
from ml.offers.uplift import (
    arm_event_type,
    arm_label,
)


def decide_offers(model: OfferResponseModel, users: pd.DataFrame, campaign_id: str, settings) -> pd.DataFrame:
    """Today's campaign: each inactive user's experiment arm (hash of campaign and user), then the offer.

    personalised: the policy's most profitable affordable offer ("none" when nothing pays) under the
    campaign budget, no segment taking more than its share; non_personalised: the fixed default offer;
    holdout: nothing, ever.
    """
    from ml.experiments.assignment import (
        HOLDOUT,
        NON_PERSONALISED,
        PERSONALISED,
        assign_arms,
    )

    users = users.reset_index(drop=True)
    arm = assign_arms(campaign_id, users["user_id"], settings.holdout_share, settings.personalised_share)
    users["arm"] = arm.reindex(users["user_id"]).to_numpy()
    p, gain, cost = model.gain_and_cost(users)
    personalised = (users["arm"] == PERSONALISED).to_numpy()
    segment_budget = settings.campaign_budget * settings.offer_segment_budget_share
    limits = BudgetLimits(
        total_budget=settings.campaign_budget,
        segment_budgets={segment: segment_budget for segment in INACTIVE_SEGMENTS},
    )
    chosen = pd.Series(CONTROL, index=users.index, dtype=object)
    allocated = allocate_offers(
        gain[personalised], cost[personalised], users.loc[personalised, "segment"], limits, CONTROL
    )
    chosen[personalised] = allocated["arm"].to_numpy()
    default_arm = arm_label(settings.default_offer_event_type, settings.default_offer_reward)
    chosen[(users["arm"] == NON_PERSONALISED).to_numpy()] = default_arm
    reward_of = {**model.reward_size_, default_arm: settings.default_offer_reward, CONTROL: 0.0}
    p_chosen = np.array([p.at[i, a] if a in p.columns else np.nan for i, a in chosen.items()])
    return pd.DataFrame(
        {
            "user_id": users["user_id"],
            "segment": users["segment"],
            "arm": users["arm"],
            "event_type": [arm_event_type(a) for a in chosen],
            "reward_size": [reward_of[a] for a in chosen],
            "expected_uplift": np.where(chosen == CONTROL, 0.0, np.nan_to_num(p_chosen - p[CONTROL].to_numpy())),
            "expected_cost": np.where(
                chosen == CONTROL, 0.0, np.nan_to_num(p_chosen) * np.array([reward_of[a] for a in chosen])
            ),
            "is_holdout": (users["arm"] == HOLDOUT).to_numpy(),
        }
    )


def offer_summary(offers: pd.DataFrame, budget: float) -> dict:
    offered = offers[offers["event_type"] != CONTROL]
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
