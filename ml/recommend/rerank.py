"""Post-processing of ranked lists: diversity by category (maximal marginal relevance), and the user's own items
in the order of how often they had them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def mmr_rerank(
    items: Sequence,
    scores: Sequence[float],
    item_categories: Mapping | Sequence,
    lam: float = 0.7,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance with category equality as the similarity, for one list.

    ``item_categories`` maps an item (or, for a sequence, an item index) to its category. Returns the
    first ``n`` (default all) picks and their original scores; see ``mmr_rerank_rows``.
    """
    items = np.asarray(items)
    n = len(items) if n is None else min(n, len(items))
    codes, _ = pd.factorize(pd.Series([item_categories[item] for item in items], dtype=object))
    order = mmr_rerank_rows(np.asarray(scores, dtype=np.float64)[None, :], codes[None, :], lam, n)[0]
    return items[order], np.asarray(scores, dtype=np.float64)[order]


def mmr_rerank_rows(scores: np.ndarray, categories: np.ndarray, lam: float, n: int) -> np.ndarray:
    """MMR over many lists at once: per row, the positions of the ``n`` picks in pick order.

    Greedily picks the position maximising ``lam * relevance - (1 - lam) * [its category is already in the
    list]``, relevance being the score min-max scaled over the row (with 0 inside the range); ties go to
    the earlier position, so ``lam=1`` keeps the order. ``scores`` is [rows, depth] with -inf for empty
    slots, ``categories`` the same shape of non-negative integer codes. Rows with fewer than ``n`` scored
    slots are padded with -1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    rows, depth = scores.shape
    n = min(n, depth)
    valid = np.isfinite(scores)
    finite = np.where(valid, scores, np.nan)
    low = np.minimum(np.nan_to_num(np.nanmin(finite, axis=1, initial=np.inf), posinf=0.0), 0.0)[:, None]
    high = np.maximum(np.nan_to_num(np.nanmax(finite, axis=1, initial=-np.inf), neginf=0.0), 0.0)[:, None]
    spread = high - low
    relevance = np.where(spread > 0, (np.nan_to_num(finite) - low) / np.where(spread > 0, spread, 1.0), 1.0)
    codes = np.asarray(categories, dtype=np.int64)
    seen = np.zeros((rows, int(codes.max(initial=0)) + 1), dtype=bool)
    available = valid.copy()
    picks = np.full((rows, n), -1, dtype=np.int64)
    row_index = np.arange(rows)
    for step in range(n):
        gains = lam * relevance - (1.0 - lam) * seen[row_index[:, None], codes]
        gains[~available] = -np.inf
        best = np.argmax(gains, axis=1)
        picking = available[row_index, best]
        picks[picking, step] = best[picking]
        available[row_index[picking], best[picking]] = False
        seen[row_index[picking], codes[row_index[picking], best[picking]]] = True
    return picks


def own_items_by_count(rows: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Scores of (row, item) pairs with each row's own items (``counts`` > 0: the user had them) re-dealt their own
    scores: the best of those scores goes to the item the row's user had most often, the next best to the next one,
    equal counts in the order of their scores. Which slots of a list hold own items and which new ones stays."""
    scores = np.asarray(scores).copy()
    positions = np.flatnonzero(counts > 0)
    own_rows, own_scores = rows[positions], scores[positions]
    by_score = positions[np.lexsort((-own_scores, own_rows))]
    by_count = positions[np.lexsort((-own_scores, -counts[positions], own_rows))]
    scores[by_count] = scores[by_score]
    return scores
