"""Experiment arms: a seeded hash of (campaign_id, user_id) assigns each user one arm."""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Hashable, Iterable, Sequence
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


def hash_unit(key: object, unit: Hashable) -> float:
    """A uniform number in [0, 1) fixed by (key, unit): the top 53 bits of sha256("<key>:<unit>").

    The one seeded hash of the project: experiment arms (key = campaign id), the offer policy's holdout and the
    offer model's user splits and folds (key = seed) all draw from it. A unit hashes as its text: a string id (a
    UUID, an Amplitude id) as itself and an integer as its decimal digits, so 42, numpy's int64(42) and the
    warehouse's text id "42" land on the same number.

    53 bits, because a float holds no more: dividing all 64 could round up to exactly 1.0."""
    if isinstance(unit, numbers.Integral):
        unit = int(unit)
    digest = hashlib.sha256(f"{key}:{unit}".encode()).digest()
    return unit_interval(int.from_bytes(digest[:8], "big"))


def unit_interval(bits64: int) -> float:
    """A 64-bit integer as a float in [0, 1): its top 53 bits over 2^53, so even 2^64 - 1 stays below 1."""
    return (bits64 >> 11) / 2.0**53


def hash_units(key: object, units: Iterable[Hashable]) -> np.ndarray:
    """:func:`hash_unit` of every unit, in order."""
    return np.array([hash_unit(key, unit) for unit in units], dtype=float)


def draw_arms(
    campaign_id: str,
    user_ids: Sequence[Hashable],
    holdout_share: float = 0.10,
    personalised_share: float | None = 0.45,
) -> np.ndarray:
    """Each user's arm, in order: holdout below ``holdout_share``, then personalised, then non-personalised.

    ``personalised_share=None`` makes everyone not held out personalised (with no holdout either, nothing is
    hashed). The hash includes the campaign, so a user's arm changes from campaign to campaign (nobody is held
    out forever) but never between re-runs of the same campaign.
    """
    if holdout_share < 0 or (personalised_share or 0.0) < 0 or holdout_share + (personalised_share or 0.0) > 1:
        raise ValueError("holdout_share and personalised_share must be non-negative and add up to at most 1")
    if personalised_share is None and holdout_share <= 0:
        return np.full(len(user_ids), PERSONALISED, dtype=object)
    unit = hash_units(campaign_id, user_ids)
    personalised = unit >= holdout_share
    if personalised_share is not None:
        personalised &= unit < holdout_share + personalised_share
    return np.where(unit < holdout_share, HOLDOUT, np.where(personalised, PERSONALISED, NON_PERSONALISED)).astype(
        object
    )


def assign_arms(
    campaign_id: str,
    user_ids: Iterable[Hashable],
    holdout_share: float = 0.10,
    personalised_share: float = 0.45,
) -> pd.Series:
    """Each user's arm (index user_id) by :func:`draw_arms`."""
    ids = pd.Index(list(user_ids), name="user_id")
    return pd.Series(
        draw_arms(campaign_id, ids, holdout_share, personalised_share), index=ids, name="arm", dtype=object
    )
