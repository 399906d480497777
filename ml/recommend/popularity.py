"""Non-personalised baselines: popularity (optionally per user group, e.g. zone) and random."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ml.recommend.base import Recommender, as_user_items, binarise


class PopularityRecommender(Recommender):
    """Ranks items by how many users interacted with them.

    With ``user_groups`` (one group label per matrix row, e.g. the home zone; -1 for none) an item is
    ranked by its popularity inside the user's group, ties broken by overall popularity.
    """

    def __init__(self, user_groups: np.ndarray | None = None):
        self.user_groups = None if user_groups is None else np.asarray(user_groups)

    def fit(self, user_items: sp.spmatrix) -> PopularityRecommender:
        self.user_items = as_user_items(user_items)
        binary = binarise(self.user_items)
        self.item_users = np.asarray(binary.sum(axis=0), dtype=np.float32).ravel()
        # Overall counts scaled into [0, 1) only break ties between equal integer group counts.
        self.global_scores = self.item_users / (self.item_users.max(initial=0.0) + 1.0)
        self.group_scores: dict = {}
        if self.user_groups is not None:
            for group in np.unique(self.user_groups):
                members = np.flatnonzero(self.user_groups == group)
                counts = np.asarray(binary[members].sum(axis=0), dtype=np.float32).ravel()
                self.group_scores[group] = counts + self.global_scores
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        user_indices = np.asarray(user_indices)
        scores = np.tile(self.item_users, (len(user_indices), 1))
        if self.user_groups is not None:
            for row, group in enumerate(self.user_groups[user_indices]):
                if group in self.group_scores and group != -1:
                    scores[row] = self.group_scores[group]
        return scores


class RandomRecommender(Recommender):
    """Uniformly random scores, reproducible per (seed, user index)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, user_items: sp.spmatrix) -> RandomRecommender:
        self.user_items = as_user_items(user_items)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        n_items = self.user_items.shape[1]
        rows = [
            np.random.default_rng([self.seed, int(user)]).random(n_items, dtype=np.float32) for user in user_indices
        ]
        return np.array(rows, dtype=np.float32).reshape(len(rows), n_items)
