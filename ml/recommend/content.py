"""Content-based generator: the user's category taste times the item's popularity inside its category."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ml.recommend.base import Recommender, as_user_items, binarise, damped_unit_rows

# Dimensions of the item embeddings that co_ordered_groups clusters.
_GROUP_EMBEDDING_SIZE = 32


class CategoryAffinityRecommender(Recommender):
    """score(u, i) = P(category of i | u) * P(i | its category).

    P(c | u) is the user's category share shrunk towards the overall share with ``prior_strength``
    pseudo-interactions, so users with no or one interaction still get sensible lists. P(i | c) is
    additively smoothed; items flagged in ``new_items`` count as their category's average item, so a
    merchant that just opened is not buried under a zero count.
    """

    def __init__(
        self,
        item_categories: Sequence,
        new_items: Sequence[bool] | None = None,
        prior_strength: float = 2.0,
        smoothing: float = 1.0,
    ):
        self.item_categories = np.asarray(item_categories, dtype=object)
        self.new_items = None if new_items is None else np.asarray(new_items, dtype=bool)
        self.prior_strength = prior_strength
        self.smoothing = smoothing

    def fit(self, user_items: sp.spmatrix) -> CategoryAffinityRecommender:
        self.user_items = as_user_items(user_items)
        codes, categories = pd.factorize(pd.Series(self.item_categories), use_na_sentinel=False)
        self.item_codes = codes.astype(np.int64)
        self.categories = pd.Index(categories)
        n_items, n_categories = len(codes), len(categories)
        item_category = sp.csr_matrix(
            (np.ones(n_items, np.float32), (np.arange(n_items), codes)), shape=(n_items, n_categories)
        )
        binary = binarise(self.user_items)
        self.user_category_counts = np.asarray((binary @ item_category).toarray(), dtype=np.float32)
        totals = self.user_category_counts.sum(axis=0)
        self.category_share = (totals + 1.0) / (totals.sum() + n_categories)

        item_users = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
        if self.new_items is not None:
            category_mean = np.bincount(codes, item_users, n_categories) / np.bincount(codes, minlength=n_categories)
            item_users = np.where(self.new_items, np.maximum(item_users, category_mean[codes]), item_users)
        smoothed = item_users + self.smoothing
        self.item_share_in_category = (smoothed / np.bincount(codes, smoothed, n_categories)[codes]).astype(np.float32)
        return self

    def category_affinity(self, user_indices: np.ndarray) -> np.ndarray:
        """P(category | user), [len(user_indices), n_categories]."""
        counts = self.user_category_counts[np.asarray(user_indices)]
        prior = self.prior_strength * self.category_share
        return ((counts + prior) / (counts.sum(axis=1, keepdims=True) + self.prior_strength)).astype(np.float32)

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return self.category_affinity(user_indices)[:, self.item_codes] * self.item_share_in_category


def co_ordered_groups(user_items: sp.spmatrix, n_groups: int, seed: int = 0) -> np.ndarray:
    """Each item's group (0 .. ``n_groups`` - 1), for a log without categories: k-means over the items' unit-length
    embeddings from a truncated SVD of their unit-length log(1 + interactions) user vectors, so items that the same
    users order share a group."""
    # Imported here: the pipeline, which has categories, never loads scikit-learn for this.
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import normalize
    from sklearn.utils.extmath import randomized_svd

    item_users = damped_unit_rows(as_user_items(user_items).T.astype(np.float64))
    components = max(1, min(_GROUP_EMBEDDING_SIZE, min(item_users.shape) - 1))
    vectors, strengths, _ = randomized_svd(item_users, n_components=components, random_state=seed)
    embeddings = normalize(vectors * strengths)
    n_groups = min(n_groups, item_users.shape[0])
    return KMeans(n_clusters=n_groups, n_init=10, random_state=seed).fit_predict(embeddings).astype(np.int64)
