"""Top-K ranking metrics as pure functions, and a report that averages them over users.

Relevance is binary: an item is relevant when it is in the user's held-out set.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd


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


def user_metrics(
    recommended: Mapping[Hashable, Sequence],
    relevant: Mapping[Hashable, Collection],
    ks: Sequence[int] = (5, 10),
    item_categories: Mapping[Hashable, Hashable] | None = None,
    item_popularity: Mapping[Hashable, float] | None = None,
) -> pd.DataFrame:
    """Per user with at least one relevant item (the index): precision, recall, hit rate, NDCG and MAP at each k,
    as the functions above define them, plus the top max(ks)'s ``diversity`` (NaN below two items) and
    ``novelty`` (NaN for an empty list) when categories / popularity are given, and that top itself (``items``,
    for coverage).

    The hits of each list are looked up once and every metric is computed from them for all users at once, so
    averaging over several groups of users (``summarise``) costs one pass.
    """
    users = [user for user, items in relevant.items() if len(items) > 0]
    depth = max(ks)
    lists = [list(recommended.get(user, ()))[:depth] for user in users]
    hits = np.zeros((len(users), depth))
    n_relevant = np.empty(len(users))
    for row, (user, items) in enumerate(zip(users, lists)):
        wanted = set(relevant[user])
        n_relevant[row] = len(wanted)
        hits[row, : len(items)] = [item in wanted for item in items]
    found = hits.cumsum(axis=1)
    discount = 1.0 / np.log2(np.arange(depth) + 2.0)
    columns: dict[str, np.ndarray] = {}
    for k in ks:
        ideal = np.minimum(n_relevant, k).astype(int)
        columns[f"precision@{k}"] = found[:, k - 1] / k
        columns[f"recall@{k}"] = found[:, k - 1] / n_relevant
        columns[f"hit_rate@{k}"] = (found[:, k - 1] > 0).astype(float)
        columns[f"ndcg@{k}"] = hits[:, :k] @ discount[:k] / np.cumsum(discount)[ideal - 1]
        columns[f"map@{k}"] = (hits[:, :k] * found[:, :k] / np.arange(1, k + 1)).sum(axis=1) / ideal
    if item_categories is not None:
        columns["diversity"] = np.array(
            [intra_list_diversity(items, item_categories) if len(items) > 1 else np.nan for items in lists]
        )
    if item_popularity is not None:
        floor = min_popularity(item_popularity) if item_popularity else None
        columns["novelty"] = np.array([novelty(items, item_popularity, floor) if items else np.nan for items in lists])
    per_user = pd.DataFrame(columns, index=pd.Index(users, dtype=object))
    per_user["items"] = pd.Series(lists, index=per_user.index, dtype=object)
    return per_user


def summarise(per_user: pd.DataFrame, catalog_size: int) -> dict[str, float]:
    """``user_metrics`` rows (all of them, or any subset) averaged: the report of those users. Diversity and novelty
    average the lists where they are defined."""
    list_metrics = ("diversity", "novelty")
    report: dict[str, float] = {"users": float(len(per_user))}
    for column in per_user.columns.drop(["items", *list_metrics], errors="ignore"):
        report[column] = float(per_user[column].mean()) if len(per_user) else 0.0
    report["coverage"] = catalog_coverage(per_user["items"], catalog_size)
    for column in list_metrics:
        if column in per_user:
            defined = per_user[column].dropna()
            report[column] = float(defined.mean()) if len(defined) else 0.0
    return report


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
    return summarise(user_metrics(recommended, relevant, ks, item_categories, item_popularity), catalog_size)
