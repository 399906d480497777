"""Post-processing of one ranked list: diversity by category (MMR) and an exploration slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def mmr_rerank(
    items: Sequence,
    scores: Sequence[float],
    item_categories: Mapping | Sequence,
    lam: float = 0.7,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance with category equality as the similarity.

    Greedily picks the item maximising ``lam * relevance - (1 - lam) * [its category is already in the
    list]``, relevance being the score min-max scaled over ``items``. ``lam=1`` keeps the order.
    ``item_categories`` maps an item (or, for a sequence, an item index) to its category. Returns the
    first ``n`` (default all) picks and their original scores.
    """
    items = np.asarray(items)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(items) if n is None else min(n, len(items))
    spread = scores.max(initial=0.0) - scores.min(initial=0.0)
    relevance = (scores - scores.min(initial=0.0)) / spread if spread > 0 else np.ones_like(scores)
    categories = [item_categories[item] for item in items]
    remaining = list(range(len(items)))
    chosen: list[int] = []
    seen_categories: set = set()
    while remaining and len(chosen) < n:
        gains = [lam * relevance[i] - (1.0 - lam) * (categories[i] in seen_categories) for i in remaining]
        best = remaining.pop(int(np.argmax(gains)))
        chosen.append(best)
        seen_categories.add(categories[best])
    return items[chosen], scores[chosen]


def add_exploration_slot(
    items: np.ndarray, pool: Sequence, rng: np.random.Generator, rate: float = 0.1
) -> np.ndarray:
    """With probability ``rate``, replace the last slot with a uniform pick from ``pool`` not already listed.

    The slot is the last one so exploration costs the least expected relevance.
    """
    items = np.array(items, copy=True)
    if len(items) == 0 or rng.random() >= rate:
        return items
    listed = set(items.tolist())
    fresh = [item for item in pool if item not in listed]
    if fresh:
        items[-1] = fresh[rng.integers(len(fresh))]
    return items
