"""Implicit-feedback matrix factorisation (alternating least squares, via ``implicit``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ml.recommend.base import Recommender, as_user_items


class ALSRecommender(Recommender):
    """Keeps only the learnt factors, so the fitted model pickles without ``implicit`` internals."""

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        random_state: int = 0,
        num_threads: int = 2,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def fit(self, user_items: sp.spmatrix) -> ALSRecommender:
        from implicit.cpu.als import AlternatingLeastSquares

        self.user_items = as_user_items(user_items)
        # implicit runs its own threads; a multi-threaded BLAS underneath would oversubscribe the cores.
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.num_threads,
            )
            model.fit(self.user_items, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        return self.user_factors[np.asarray(user_indices)] @ self.item_factors.T
