"""What the ranker's features may look at: the interactions up to a point in time, indexed for fast look-ups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

DAY = 86400.0
# Time-of-day habit bins: 3-hour slices of the UTC day; 1970-01-01 was a Thursday (weekday 3, Monday = 0).
HOUR_BINS = 8
_EPOCH_WEEKDAY = 3
# Half-lives in days of the time-decayed order counts per (user, merchant), measured back from the user's last
# order: a favourite of last month outranks one of last year even with fewer orders.
DECAY_HALF_LIFE_DAYS = (7.0, 30.0, 90.0)


@dataclass
class History:
    """What the features may look at: interactions up to a point in time, as index arrays."""

    user_items: sp.csr_matrix  # interaction counts
    recent_user_items: dict[float, sp.csr_matrix]  # half-life h -> 0.5 ** (later events / h), summed per item
    decayed_user_items: dict[float, sp.csr_matrix]  # half-life d days -> 0.5 ** (days before the user's last / d)
    last_seen: sp.csr_matrix  # per (user, item): last interaction time - time_origin + 1
    time_origin: float
    reference_time: float
    user_first: np.ndarray
    user_last: np.ndarray
    item_first: np.ndarray
    item_last: np.ndarray
    item_users: np.ndarray
    events_by_item: np.ndarray  # item * _time_span(times) + (time - time_origin), sorted
    event_times: np.ndarray  # sorted
    item_events: np.ndarray  # interactions per item (repeats count)
    user_hours: np.ndarray  # (users, HOUR_BINS): share of the user's interactions per time-of-day bin
    item_hours: np.ndarray  # (items, HOUR_BINS)
    user_weekdays: np.ndarray  # (users, 7)
    item_weekdays: np.ndarray  # (items, 7)
    hour_shares: np.ndarray  # (HOUR_BINS,): all interactions
    weekday_shares: np.ndarray  # (7,)

    @classmethod
    def from_indices(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        times: np.ndarray,
        shape: tuple[int, int],
        half_lives: Sequence[float],
    ) -> History:
        n_users, n_items = shape
        order = np.lexsort((items, times, users))
        events_after = np.empty(len(users), dtype=np.float64)
        user_sizes = np.bincount(users, minlength=n_users)
        ends = np.cumsum(user_sizes)[users[order]]
        events_after[order] = ends - np.arange(len(order)) - 1
        recent = {
            half_life: sp.csr_matrix((0.5 ** (events_after / half_life), (users, items)), shape=shape, dtype=np.float32)
            for half_life in half_lives
        }
        user_last = np.full(n_users, -np.inf)
        np.maximum.at(user_last, users, times)
        days_before_last = (user_last[users] - times) / DAY
        decayed = {
            days: sp.csr_matrix((0.5 ** (days_before_last / days), (users, items)), shape=shape, dtype=np.float32)
            for days in DECAY_HALF_LIFE_DAYS
        }
        origin = float(times.min()) if len(times) else 0.0
        ones = np.ones(len(users), dtype=np.float32)
        counts = sp.csr_matrix((ones, (users, items)), shape=shape)
        counts.sum_duplicates()
        pairs = pd.DataFrame({"u": users, "i": items, "t": times - origin + 1.0}).groupby(["u", "i"])["t"].max()
        last_seen = sp.csr_matrix(
            (pairs.to_numpy(), (pairs.index.get_level_values(0), pairs.index.get_level_values(1))), shape=shape
        )

        def extreme(index: np.ndarray, size: int, ufunc: np.ufunc, empty: float) -> np.ndarray:
            out = np.full(size, empty)
            ufunc.at(out, index, times)
            return np.where(np.isinf(out), np.nan, out)

        binary = counts.copy()
        binary.data[:] = 1.0
        days = np.floor(times / DAY)
        hour_bins = ((times - days * DAY) // (DAY / HOUR_BINS)).astype(np.int64)
        weekdays = ((days.astype(np.int64) + _EPOCH_WEEKDAY) % 7).astype(np.int64)
        return cls(
            user_items=counts,
            recent_user_items=recent,
            decayed_user_items=decayed,
            last_seen=last_seen,
            time_origin=origin,
            reference_time=float(times.max()) if len(times) else 0.0,
            user_first=extreme(users, n_users, np.minimum, np.inf),
            user_last=extreme(users, n_users, np.maximum, -np.inf),
            item_first=extreme(items, n_items, np.minimum, np.inf),
            item_last=extreme(items, n_items, np.maximum, -np.inf),
            item_users=np.asarray(binary.sum(axis=0)).ravel(),
            events_by_item=np.sort(items.astype(np.float64) * _time_span(times) + (times - origin)),
            event_times=np.sort(times),
            item_events=np.bincount(items, minlength=n_items).astype(np.float32),
            user_hours=_shares(users, hour_bins, n_users, HOUR_BINS),
            item_hours=_shares(items, hour_bins, n_items, HOUR_BINS),
            user_weekdays=_shares(users, weekdays, n_users, 7),
            item_weekdays=_shares(items, weekdays, n_items, 7),
            hour_shares=_shares(np.zeros(len(times), np.int64), hour_bins, 1, HOUR_BINS)[0],
            weekday_shares=_shares(np.zeros(len(times), np.int64), weekdays, 1, 7)[0],
        )

    def item_events_between(self, items: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Interactions with each item in the window [start, end]."""
        span = _time_span(self.event_times)
        base = items.astype(np.float64) * span - self.time_origin
        # Clipping to the history keeps each key inside its own item's stretch of the sorted keys.
        start = np.clip(start, self.time_origin, self.reference_time)
        end = np.clip(end, self.time_origin, self.reference_time)
        low = np.searchsorted(self.events_by_item, base + start, side="left")
        high = np.searchsorted(self.events_by_item, base + end, side="right")
        return np.maximum(high - low, 0)

    def events_between(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.event_times, end, side="right") - np.searchsorted(self.event_times, start)


def _shares(rows: np.ndarray, bins: np.ndarray, n_rows: int, n_bins: int) -> np.ndarray:
    """Per row, the share of its events in each bin (rows without events are all zero)."""
    counts = np.zeros((n_rows, n_bins), dtype=np.float32)
    np.add.at(counts, (rows, bins), 1.0)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def _time_span(times: np.ndarray) -> float:
    """A stride larger than any time offset, so (item, time) pairs sort as one float key."""
    return float(np.ptp(times)) + 2.0 if len(times) else 2.0
