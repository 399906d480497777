"""EASE: a closed-form linear item-item model (Steck, 2019)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from ml.recommend.base import Recommender, as_user_items, binarise


class EASERecommender(Recommender):
    """B = I - P / diag(P) with P = (X^T X + l2 I)^-1 on the binarised matrix; scores are X B.

    Costs O(items^3) time and items^2 memory, fine up to some ten thousand items. The inversion runs in single
    precision, about twice as fast as double (2.7 s against 5.0 s for 5,700 merchants here); the l2 ridge keeps
    the Gram matrix well conditioned, so the weights (kept as float32 anyway) differ by about 1e-6 relative.
    """

    def __init__(self, l2: float = 250.0):
        self.l2 = l2

    def fit(self, user_items: sp.spmatrix) -> EASERecommender:
        self.user_items = as_user_items(user_items)
        binary = binarise(self.user_items)
        gram = (binary.T @ binary).toarray().astype(np.float32)
        gram[np.diag_indices_from(gram)] += self.l2
        precision = _spd_inverse(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return np.asarray(binarise(self.user_items[np.asarray(user_indices)]) @ self.weights, dtype=np.float32)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor L, in the matrix's own
    precision (float32 or float64): A^-1 = L^-T L^-1, about twice as fast as a general inverse."""
    potrf, trtri = lapack.get_lapack_funcs(("potrf", "trtri"), (matrix,))
    (syrk,) = blas.get_blas_funcs(("syrk",), (matrix,))
    factor, info = potrf(matrix, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix is not positive definite (potrf info {info})")
    inverse_factor, info = trtri(factor, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factor is singular (trtri info {info})")
    upper = syrk(1.0, inverse_factor, trans=1, lower=0)
    return np.triu(upper) + np.triu(upper, 1).T
