"""The offer arms' vocabulary: the no-offer arm and the labels of (event type, reward size) arms.

"No offer" is defined once, in the event data contract (``ml.warehouse.contract.NO_OFFER``: the exposure event
type ingest, dbt and GX accept for the control); the response model, the uplift learners, the offer policy and
the synthetic world take it from here. Light (no learners), so the synthetic world imports it freely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.warehouse.contract import NO_OFFER

__all__ = ["NO_OFFER", "arm_event_type", "arm_label", "arm_labels"]


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
