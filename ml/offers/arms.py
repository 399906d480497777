"""The offer arms' vocabulary: the no-offer arm and the labels of (event type, reward size) arms.

The one definition of "no offer": the control of the response model and the uplift learners, the holdout's
exposure in ``raw.campaign_exposures`` and the synthetic world's untreated users all use :data:`NO_OFFER`.
Dependency-free, so the synthetic world and ingest can import it without the learners.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_OFFER = "none"


def arm_label(event_type: str, reward_size: float) -> str:
    """One arm per (event type, reward size); the control is the bare :data:`NO_OFFER`."""
    if event_type == NO_OFFER:
        return NO_OFFER
    return f"{event_type}:{float(reward_size):g}"


def arm_event_type(label: str) -> str:
    """The event type of an arm label (``arm_label``'s inverse for the type): "cashback:5" -> "cashback"."""
    return str(label).split(":")[0]


def arm_labels(event_type: Sequence[str], reward_size: Sequence[float]) -> np.ndarray:
    return np.array([arm_label(e, r) for e, r in zip(event_type, reward_size, strict=True)], dtype=object)
