"""EASE: a closed-form linear item-item model (Steck, 2019)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from ml.recommend.base import Recommender, as_user_items, binarise


class EASERecommender(Recommender):
    """B = I - P / diag(P) with P = (X^T X + l2 I)^-1 on the binarised matrix; scores are X B.

    Costs O(items^3) time and items^2 memory, fine up to some ten thousand items.
    """

    def __init__(self, l2: float = 250.0):
        self.l2 = l2

    def fit(self, user_items: sp.spmatrix) -> EASERecommender:
        self.user_items = as_user_items(user_items)
        binary = binarise(self.user_items)
        gram = (binary.T @ binary).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        precision = _spd_inverse(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return np.asarray(binarise(self.user_items[np.asarray(user_indices)]) @ self.weights, dtype=np.float32)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor L:
    A^-1 = L^-T L^-1, about twice as fast as a general inverse."""
    factor, info = lapack.dpotrf(matrix, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix is not positive definite (potrf info {info})")
    inverse_factor, info = lapack.dtrtri(factor, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factor is singular (trtri info {info})")
    upper = blas.dsyrk(1.0, inverse_factor, trans=1, lower=0)
    return np.triu(upper) + np.triu(upper, 1).T
