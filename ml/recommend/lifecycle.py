"""The lifecycle vocabulary and rule: where a user stands, from sign-up and last order, at any date.

dbt's ``marts.user_segments`` computes the segment as of the run date (the source of truth for what is
published); :class:`LifecycleRule` is the same rule in Python, built from the same settings, for dates the
marts do not hold (the evaluation's cut). ``tests/test_lifecycle_agreement.py`` proves both agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

# Every segment, from the freshest to the most inactive.
LIFECYCLE_SEGMENTS = ("new", "active", "at_risk", "lapsed", "dormant", "churned")
# The segments offered win-back offers.
INACTIVE_SEGMENTS = LIFECYCLE_SEGMENTS[2:]


@dataclass(frozen=True)
class LifecycleRule:
    """marts.user_segments' lifecycle rule, applicable at any date (thresholds in days, from Settings).

    new: signed up at most ``new_user_days`` ago with fewer than two orders; otherwise by days since the last
    order (since sign-up for users who never ordered): active up to ``active_max_days``, at_risk up to
    ``at_risk_max_days``, lapsed up to ``lapsed_max_days``, dormant up to ``dormant_max_days``, then churned.
    """

    new_user_days: int
    active_max_days: int
    at_risk_max_days: int
    lapsed_max_days: int
    dormant_max_days: int

    @classmethod
    def from_settings(cls, settings) -> LifecycleRule:
        """The thresholds dbt gets as vars (``ml.warehouse.dbt_runner``), from the one settings object."""
        return cls(
            new_user_days=settings.new_user_days,
            active_max_days=settings.active_max_days,
            at_risk_max_days=settings.at_risk_max_days,
            lapsed_max_days=settings.lapsed_max_days,
            dormant_max_days=settings.dormant_max_days,
        )

    def segments(self, orders: pd.DataFrame, signup_at: pd.Series, at: datetime) -> pd.Series:
        """Segment per user of ``signup_at`` (indexed by user_id) as of ``at``, from orders before it.

        The pipeline's evaluation needs segments at the split's cut: as of the run date every test
        user has just ordered, so the marts' own column would put them all in new / active.
        """
        day = pd.Timestamp(at).normalize()
        before = orders[orders["event_time"] < pd.Timestamp(at)]
        last_order = before.groupby("user_id")["event_time"].max().reindex(signup_at.index)
        order_count = before.groupby("user_id").size().reindex(signup_at.index, fill_value=0)
        tenure = (day - pd.to_datetime(signup_at, utc=True).dt.normalize()).dt.days
        since_last = (day - last_order.dt.normalize()).dt.days
        inactive = since_last.fillna(tenure)
        labels = np.select(
            [
                (tenure <= self.new_user_days) & (order_count < 2),
                inactive <= self.active_max_days,
                inactive <= self.at_risk_max_days,
                inactive <= self.lapsed_max_days,
                inactive <= self.dormant_max_days,
            ],
            LIFECYCLE_SEGMENTS[:-1],
            default=LIFECYCLE_SEGMENTS[-1],
        )
        return pd.Series(labels, index=signup_at.index, name="lifecycle_segment")
