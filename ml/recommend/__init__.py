"""Candidate generators and the ranker; each fits on a users x items CSR matrix."""

from ml.recommend.base import Recommender, top_n
from ml.recommend.cosine import ItemCosineRecommender
from ml.recommend.matrix import InteractionMatrix
from ml.recommend.popularity import PopularityRecommender, RandomRecommender

__all__ = [
    "InteractionMatrix",
    "ItemCosineRecommender",
    "PopularityRecommender",
    "RandomRecommender",
    "Recommender",
    "top_n",
]
