"""User-user neighbourhood recommender: an item scores by how much of their orders similar users gave it."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ml.recommend.base import Recommender, as_user_items, damped_unit_rows, rows_divided, top_per_row

# Users whose similarity rows are computed densely at once while pruning to the top neighbours.
_USER_BLOCK = 512


class UserKNNRecommender(Recommender):
    """Scores an item by the similarity-weighted share of orders the user's ``neighbours`` most similar users gave it.

    Users are compared by the cosine of their log-damped order counts (a favourite counts more than a one-off, but
    not in proportion); each neighbour adds its share of orders per item, so its favourites count, repeats included:
    the neighbour half of TIFU-KNN (Hu et al., 2020), whose own-history half is the ranker's repeat features. The
    user-user similarity costs about users x users work, done a block of users at a time.
    """

    def __init__(self, neighbours: int = 100):
        self.neighbours = neighbours

    def fit(self, user_items: sp.spmatrix) -> UserKNNRecommender:
        self.user_items = as_user_items(user_items)
        unit = damped_unit_rows(self.user_items).astype(np.float32)
        unit_t = unit.T.tocsr()
        blocks = []
        for start in range(0, unit.shape[0], _USER_BLOCK):
            similarity = (unit[start : start + _USER_BLOCK] @ unit_t).toarray()
            block = np.arange(similarity.shape[0])
            similarity[block, start + block] = 0.0  # a user is not their own neighbour
            blocks.append(top_per_row(similarity, self.neighbours))
        self.similarity = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, 0), dtype=np.float32)
        self.shares = rows_divided(self.user_items, self.user_items.sum(axis=1)).astype(np.float32)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return np.asarray((self.similarity[np.asarray(user_indices)] @ self.shares).toarray(), dtype=np.float32)
