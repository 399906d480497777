"""Experiment arms: a seeded hash of (campaign_id, user_id) assigns each user one arm."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date

import numpy as np
import pandas as pd

PERSONALISED = "personalised"
NON_PERSONALISED = "non_personalised"
HOLDOUT = "holdout"
ARMS = (PERSONALISED, NON_PERSONALISED, HOLDOUT)
BASELINES = (HOLDOUT, NON_PERSONALISED)


def campaign_id_for(run_date: date) -> str:
    return f"winback-{run_date.isoformat()}"


def hash_unit(campaign_id: str, user_id: int) -> float:
    """A uniform number in [0, 1) fixed by (campaign_id, user_id): the top 53 bits of a sha256.

    53 bits, because a float holds no more: dividing all 64 could round up to exactly 1.0."""
    digest = hashlib.sha256(f"{campaign_id}:{int(user_id)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53


def assign_arms(
    campaign_id: str,
    user_ids: Iterable[int],
    holdout_share: float = 0.10,
    personalised_share: float = 0.45,
) -> pd.Series:
    """Each user's arm (index user_id): holdout below ``holdout_share``, then personalised, then the rest.

    The hash includes the campaign, so a user's arm changes from campaign to campaign (nobody is held
    out forever) but never between re-runs of the same campaign.
    """
    if holdout_share < 0 or personalised_share < 0 or holdout_share + personalised_share > 1:
        raise ValueError("holdout_share and personalised_share must be non-negative and add up to at most 1")
    ids = pd.Index(list(user_ids), dtype="int64", name="user_id")
    unit = np.array([hash_unit(campaign_id, user_id) for user_id in ids])
    arm = np.where(
        unit < holdout_share,
        HOLDOUT,
        np.where(unit < holdout_share + personalised_share, PERSONALISED, NON_PERSONALISED),
    )
    return pd.Series(arm, index=ids, name="arm", dtype=object)
