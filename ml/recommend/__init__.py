"""Candidate generators and the ranker; each fits on a users x items CSR matrix."""

from ml.recommend.als import ALSRecommender
from ml.recommend.base import Recommender, top_n
from ml.recommend.content import CategoryAffinityRecommender
from ml.recommend.cosine import ItemCosineRecommender
from ml.recommend.ease import EASERecommender
from ml.recommend.matrix import InteractionMatrix
from ml.recommend.popularity import PopularityRecommender, RandomRecommender
from ml.recommend.ranker import RankerRecommender
from ml.recommend.rerank import mmr_rerank, mmr_rerank_rows
from ml.recommend.split import temporal_split, unix_seconds

__all__ = [
    "ALSRecommender",
    "CategoryAffinityRecommender",
    "EASERecommender",
    "InteractionMatrix",
    "ItemCosineRecommender",
    "PopularityRecommender",
    "RandomRecommender",
    "RankerRecommender",
    "Recommender",
    "mmr_rerank",
    "mmr_rerank_rows",
    "temporal_split",
    "top_n",
    "unix_seconds",
]
