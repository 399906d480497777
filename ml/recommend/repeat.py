"""Win-back baselines from the user's own history: their most frequent, or most recent, items first.

Both fit on a users x items matrix of interaction counts plus, optionally, a matrix of the same shape whose
values are each (user, item)'s last interaction time (any scale where later is larger, e.g. unix seconds;
zero means never), as built by :func:`last_interaction_times`. After the user's own items come the items
most users interacted with, so every list is full. With ``exclude_seen`` (discovery) only that popularity
order is left.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ml.recommend.base import Recommender, as_user_items, binarise
from ml.recommend.matrix import InteractionMatrix

# Scores of the user's own items start here; everything below is the popularity fill, which lies in [0, 1).
_OWN_ITEMS_FLOOR = 2.0


def last_interaction_times(
    interactions: pd.DataFrame,
    matrix: InteractionMatrix,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "event_time",
) -> sp.csr_matrix:
    """Per (user, item) of ``matrix``, the latest ``time_col`` (unix seconds) in ``interactions``, as float64."""
    rows = matrix.user_indices(interactions[user_col])
    cols = matrix.item_indices(interactions[item_col])
    known = (rows >= 0) & (cols >= 0)
    latest = (
        pd.DataFrame({"u": rows[known], "i": cols[known], "t": interactions[time_col].to_numpy(np.float64)[known]})
        .groupby(["u", "i"])["t"]
        .max()
    )
    return sp.csr_matrix(
        (latest.to_numpy(), (latest.index.get_level_values(0), latest.index.get_level_values(1))),
        shape=matrix.shape,
        dtype=np.float64,
    )


class _OwnHistoryRecommender(Recommender):
    """The popularity fill and the recency scale both baselines share."""

    last_times: sp.csr_matrix | None

    def fit(self, user_items: sp.spmatrix, last_times: sp.spmatrix | None = None) -> _OwnHistoryRecommender:
        self.user_items = as_user_items(user_items)
        if last_times is not None and last_times.shape != self.user_items.shape:
            raise ValueError(f"last_times has shape {last_times.shape}, the user_items {self.user_items.shape}")
        self.last_times = None if last_times is None else sp.csr_matrix(last_times, dtype=np.float64)
        item_users = np.asarray(binarise(self.user_items).sum(axis=0), dtype=np.float64).ravel()
        self.popularity = (item_users / (item_users.max(initial=0.0) + 1.0)).astype(np.float32)
        return self

    def _recency(self, user_indices: np.ndarray) -> np.ndarray:
        """Last interaction times of the users' items mapped into [0, 1) (0 for items never seen)."""
        times = self.last_times[user_indices].toarray()
        stamped = self.last_times.data[self.last_times.data > 0]
        if not len(stamped):
            return np.zeros_like(times)
        earliest, span = stamped.min(), np.ptp(stamped)
        return np.where(times > 0, (times - earliest + 1.0) / (span + 2.0), 0.0)


class FrequentItemsRecommender(_OwnHistoryRecommender):
    """The user's items by interaction count, ties broken by the later last interaction (with ``last_times``)
    or else by popularity; then the popular items the user never had."""

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        user_indices = np.asarray(user_indices, dtype=np.int64)
        counts = self.user_items[user_indices].toarray()
        tie_break = self._recency(user_indices) if self.last_times is not None else self.popularity[None, :]
        own = _OWN_ITEMS_FLOOR + counts + tie_break
        return np.where(counts > 0, own, self.popularity[None, :]).astype(np.float32)


class RecentItemsRecommender(_OwnHistoryRecommender):
    """The user's items by their last interaction, latest first; then the popular items the user never had.

    Needs ``last_times`` in ``fit``.
    """

    def fit(self, user_items: sp.spmatrix, last_times: sp.spmatrix | None = None) -> RecentItemsRecommender:
        if last_times is None:
            raise ValueError("RecentItemsRecommender needs last_times: each (user, item)'s last interaction time")
        super().fit(user_items, last_times)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        user_indices = np.asarray(user_indices, dtype=np.int64)
        recency = self._recency(user_indices)
        return np.where(recency > 0, _OWN_ITEMS_FLOOR + recency, self.popularity[None, :]).astype(np.float32)
