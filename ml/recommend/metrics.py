"""Top-K ranking metrics as pure functions, and a report that averages them over users.

Relevance is binary: an item is relevant when it is in the user's held-out set.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np


def _hits(recommended: Sequence, relevant: Collection, k: int) -> list[bool]:
    return [item in relevant for item in list(recommended)[:k]]


def precision_at_k(recommended: Sequence, relevant: Collection, k: int) -> float:
    """Share of the k slots holding a relevant item (a list shorter than k is not rewarded)."""
    return sum(_hits(recommended, relevant, k)) / k


def recall_at_k(recommended: Sequence, relevant: Collection, k: int) -> float:
    if not relevant:
        return 0.0
    return sum(_hits(recommended, relevant, k)) / len(relevant)


def hit_rate_at_k(recommended: Sequence, relevant: Collection, k: int) -> float:
    return float(any(_hits(recommended, relevant, k)))


def ndcg_at_k(recommended: Sequence, relevant: Collection, k: int) -> float:
    """Binary-relevance NDCG; the ideal list puts min(|relevant|, k) hits first."""
    ideal_hits = min(len(relevant), k)
    if ideal_hits == 0:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(_hits(recommended, relevant, k)) if hit)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(ideal_hits))
    return dcg / ideal


def average_precision_at_k(recommended: Sequence, relevant: Collection, k: int) -> float:
    """AP@k with denominator min(|relevant|, k), so a perfect list scores 1."""
    denominator = min(len(relevant), k)
    if denominator == 0:
        return 0.0
    found, total = 0, 0.0
    for rank, hit in enumerate(_hits(recommended, relevant, k), start=1):
        if hit:
            found += 1
            total += found / rank
    return total / denominator


def catalog_coverage(recommendation_lists: Iterable[Sequence], catalog_size: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    if catalog_size <= 0:
        return 0.0
    distinct = set()
    for items in recommendation_lists:
        distinct.update(items)
    return len(distinct) / catalog_size


def intra_list_diversity(items: Sequence, item_categories: Mapping[Hashable, Hashable]) -> float:
    """Share of item pairs in one list whose categories differ (items without a category count as one)."""
    pairs = list(combinations([item_categories.get(item) for item in items], 2))
    if not pairs:
        return 0.0
    return sum(a != b for a, b in pairs) / len(pairs)


def novelty(items: Sequence, item_popularity: Mapping[Hashable, float], floor: float | None = None) -> float:
    """Mean self-information -log2(p) of the items, p = share of users who interacted with the item.

    An item missing from ``item_popularity`` gets ``floor``, by default the smallest known popularity:
    it is at least as novel as the rarest item seen.
    """
    if not items or not item_popularity:
        return 0.0
    floor = min_popularity(item_popularity) if floor is None else floor
    probabilities = np.array([max(item_popularity.get(item, floor), floor) for item in items], dtype=float)
    return float(np.mean(-np.log2(probabilities)))


def min_popularity(item_popularity: Mapping[Hashable, float]) -> float:
    return min(p for p in item_popularity.values() if p > 0)


def ranking_report(
    recommended: Mapping[Hashable, Sequence],
    relevant: Mapping[Hashable, Collection],
    catalog_size: int,
    ks: Sequence[int] = (5, 10),
    item_categories: Mapping[Hashable, Hashable] | None = None,
    item_popularity: Mapping[Hashable, float] | None = None,
) -> dict[str, float]:
    """Metrics averaged over users with at least one relevant item.

    A user with relevant items but no recommendations scores zero. Coverage, diversity and novelty
    look at the top max(ks) of the same users.
    """
    users = [user for user, items in relevant.items() if len(items) > 0]
    depth = max(ks)
    lists = {user: list(recommended.get(user, ()))[:depth] for user in users}
    report: dict[str, float] = {"users": float(len(users))}
    metrics = {
        "precision": precision_at_k,
        "recall": recall_at_k,
        "hit_rate": hit_rate_at_k,
        "ndcg": ndcg_at_k,
        "map": average_precision_at_k,
    }
    for k in ks:
        for name, metric in metrics.items():
            values = [metric(lists[user], set(relevant[user]), k) for user in users]
            report[f"{name}@{k}"] = float(np.mean(values)) if values else 0.0
    report["coverage"] = catalog_coverage(lists.values(), catalog_size)
    if item_categories is not None:
        values = [intra_list_diversity(items, item_categories) for items in lists.values() if len(items) > 1]
        report["diversity"] = float(np.mean(values)) if values else 0.0
    if item_popularity is not None:
        floor = min_popularity(item_popularity) if item_popularity else None
        values = [novelty(items, item_popularity, floor) for items in lists.values() if items]
        report["novelty"] = float(np.mean(values)) if values else 0.0
    return report
