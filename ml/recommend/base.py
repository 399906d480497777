"""What every recommender shares: score a batch of users densely, then take the top n."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Rows scored at once in ``recommend``: bounds memory at about batch x items floats.
BATCH_USERS = 1024


def as_user_items(user_items: sp.spmatrix) -> sp.csr_matrix:
    """The users x items matrix as float32 CSR with sorted indices."""
    csr = sp.csr_matrix(user_items, dtype=np.float32)
    csr.sort_indices()
    return csr


def binarise(user_items: sp.csr_matrix) -> sp.csr_matrix:
    binary = user_items.copy()
    binary.eliminate_zeros()
    binary.data = np.ones_like(binary.data)
    return binary


def top_n(scores: np.ndarray, n: int, exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the n highest-scoring columns, best first, skipping the non-zeros of ``exclude``.

    Rows with fewer than n eligible columns are padded with index -1 and score -inf.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    n_rows, n_cols = scores.shape
    if exclude is not None:
        rows = np.repeat(np.arange(n_rows), np.diff(exclude.indptr))
        scores[rows, exclude.indices] = -np.inf
    n_keep = min(n, n_cols)
    if n_keep < n_cols:
        candidates = np.argpartition(-scores, n_keep - 1, axis=1)[:, :n_keep]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    # Ties break on the lower column index so results do not depend on argpartition's internals.
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    items = np.full((n_rows, n), -1, dtype=np.int64)
    best = np.full((n_rows, n), -np.inf, dtype=np.float32)
    items[:, :n_keep] = np.take_along_axis(candidates, order, axis=1)
    best[:, :n_keep] = np.take_along_axis(candidate_scores, order, axis=1)
    items[~np.isfinite(best)] = -1
    return items, best


def top_per_row(dense: np.ndarray, k: int) -> sp.csr_matrix:
    """The k largest positive entries of each row of a dense block, as a sparse matrix of its shape."""
    columns, values = top_n(np.where(dense > 0, dense, -np.inf), k)
    rows = np.repeat(np.arange(dense.shape[0]), columns.shape[1])
    kept = columns.ravel() >= 0
    return sp.csr_matrix(
        (values.ravel()[kept], (rows[kept], columns.ravel()[kept])), shape=dense.shape, dtype=np.float32
    )


def rows_divided(matrix: sp.spmatrix, divisors: np.ndarray) -> sp.csr_matrix:
    """Each row divided by its divisor (a row sum for shares, a norm for unit rows); rows with 0 stay 0."""
    return (sp.diags(1.0 / np.maximum(np.asarray(divisors).ravel(), 1e-12)) @ matrix).tocsr()


def damped_unit_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Each row as log(1 + value), scaled to unit length (rows with nothing stay 0), in the matrix's own dtype:
    many interactions with one column weigh less than the same number spread over several."""
    damped = sp.csr_matrix(matrix, copy=True)
    damped.data = np.log1p(damped.data)
    return rows_divided(damped, sp.linalg.norm(damped, axis=1))


def top_n_of_pairs(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, n_rows: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``top_n`` of a sparse score matrix given as (row, column, score) triples, its missing entries -inf: the
    same lists, ties and padding, sorting only the scored pairs instead of every column of every row."""
    scores = np.asarray(scores, dtype=np.float32)
    scored = np.isfinite(scores)
    rows, cols, scores = rows[scored], cols[scored], scores[scored]
    order = np.lexsort((cols, -scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    position = np.arange(len(rows)) - np.searchsorted(rows, rows)
    kept = position < n
    items = np.full((n_rows, n), -1, dtype=np.int64)
    best = np.full((n_rows, n), -np.inf, dtype=np.float32)
    items[rows[kept], position[kept]] = cols[kept]
    best[rows[kept], position[kept]] = scores[kept]
    return items, best


class Recommender:
    """Fit on a users x items CSR matrix; ``score`` and ``recommend`` take row indices of that matrix."""

    user_items: sp.csr_matrix

    def fit(self, user_items: sp.spmatrix) -> Recommender:
        raise NotImplementedError

    def score(self, user_indices: np.ndarray) -> np.ndarray:
        """Dense [len(user_indices), n_items] float32 scores, higher is better."""
        raise NotImplementedError

    def recommend(
        self, user_indices: np.ndarray, n: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n item indices and their scores, each [len(user_indices), n]; padding is -1 / -inf."""
        user_indices = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        items = np.full((len(user_indices), n), -1, dtype=np.int64)
        scores = np.full((len(user_indices), n), -np.inf, dtype=np.float32)
        for start in range(0, len(user_indices), BATCH_USERS):
            batch = user_indices[start : start + BATCH_USERS]
            exclude = self.user_items[batch] if exclude_seen else None
            items[start : start + len(batch)], scores[start : start + len(batch)] = top_n(self.score(batch), n, exclude)
        return items, scores
