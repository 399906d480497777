"""Item-item cosine neighbourhood recommender."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ml.recommend.base import Recommender, as_user_items, binarise, top_n, top_per_row

# Items whose similarity rows are computed densely at once while pruning to the top neighbours.
_ITEM_BLOCK = 512


def cosine_similarity(user_items: sp.csr_matrix, shrinkage: float = 0.0) -> sp.csr_matrix:
    """co-occurrence(A, B) / (sqrt(n_A * n_B) + shrinkage) over binarised users-of-item, zero diagonal."""
    binary = binarise(as_user_items(user_items)).tocsc()
    counts = np.asarray(binary.sum(axis=0)).ravel()
    cooccurrence = (binary.T @ binary).tocsr()
    cooccurrence.setdiag(0)
    cooccurrence.eliminate_zeros()
    coo = cooccurrence.tocoo()
    coo.data = coo.data / (np.sqrt(counts[coo.row] * counts[coo.col]) + shrinkage)
    return coo.tocsr().astype(np.float32)


def keep_top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Zero all but the k largest entries of each row."""
    blocks = [
        top_per_row(matrix[start : start + _ITEM_BLOCK].toarray(), k)
        for start in range(0, matrix.shape[0], _ITEM_BLOCK)
    ]
    return sp.vstack(blocks, format="csr") if blocks else matrix.copy()


class ItemCosineRecommender(Recommender):
    """Scores an item by the summed similarity to the user's items, over each item's top neighbours."""

    def __init__(self, neighbours: int = 100, shrinkage: float = 0.0):
        self.neighbours = neighbours
        self.shrinkage = shrinkage

    def fit(self, user_items: sp.spmatrix) -> ItemCosineRecommender:
        self.user_items = as_user_items(user_items)
        self.similarity = keep_top_per_row(cosine_similarity(self.user_items, self.shrinkage), self.neighbours)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return np.asarray((self.user_items[np.asarray(user_indices)] @ self.similarity).toarray(), dtype=np.float32)

    def similar_items(self, item_index: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The item's n most similar items (itself excluded) and their similarities; padding -1 / -inf."""
        row = self.similarity[item_index].toarray()
        items, scores = top_n(np.where(row > 0, row, -np.inf), n)
        return items[0], scores[0]
