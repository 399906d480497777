"""Candidate generators and the ranker; each fits on a users x items CSR matrix.

The classes load on first use (``from ml.recommend import ALSRecommender`` works as usual), so the light
modules of this package, e.g. :mod:`ml.recommend.lifecycle`, import without LightGBM or SciPy.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ALSRecommender": "ml.recommend.als",
    "CategoryAffinityRecommender": "ml.recommend.content",
    "EASERecommender": "ml.recommend.ease",
    "FrequentItemsRecommender": "ml.recommend.repeat",
    "InteractionMatrix": "ml.recommend.matrix",
    "ItemCosineRecommender": "ml.recommend.cosine",
    "PopularityRecommender": "ml.recommend.popularity",
    "RandomRecommender": "ml.recommend.popularity",
    "RankerRecommender": "ml.recommend.ranker",
    "RecentItemsRecommender": "ml.recommend.repeat",
    "Recommender": "ml.recommend.base",
    "TooLittleHistoryError": "ml.recommend.ranker",
    "UserKNNRecommender": "ml.recommend.userknn",
    "co_ordered_groups": "ml.recommend.content",
    "fewest_to_hold_out": "ml.recommend.split",
    "last_interaction_times": "ml.recommend.repeat",
    "mmr_rerank": "ml.recommend.rerank",
    "mmr_rerank_rows": "ml.recommend.rerank",
    "temporal_split": "ml.recommend.split",
    "top_n": "ml.recommend.base",
    "unix_seconds": "ml.recommend.split",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
