"""Merchant recommendations by user id: interaction weighting, a fitted generator, evaluation on a temporal split."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from ml.evaluation import ranking_report
from ml.recommend import InteractionMatrix, ItemCosineRecommender, PopularityRecommender, RandomRecommender

HALF_LIFE_DAYS = 14.0


def interaction_weights(orders: pd.DataFrame, as_of: datetime, half_life_days: float = HALF_LIFE_DAYS) -> pd.DataFrame:
    """One row per (user_id, merchant_id): recency-decayed, value-weighted order strength as of ``as_of``."""
    age_days = (pd.Timestamp(as_of) - orders["event_time"]).dt.total_seconds() / 86400.0
    decay = np.power(0.5, age_days.clip(lower=0) / half_life_days)
    value = 1.0 + np.log1p(orders["order_total"].fillna(0).clip(lower=0))
    weighted = orders.assign(weight=decay * value)
    return weighted.groupby(["user_id", "merchant_id"], as_index=False)["weight"].sum()


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a generator kind and its hyperparameters (enough to refit on another window)."""

    kind: str
    params: dict = field(default_factory=dict)

    def build(self):
        builders = {
            "item_cosine": ItemCosineRecommender,
            "popularity": PopularityRecommender,
            "random": RandomRecommender,
        }
        if self.kind not in builders:
            raise ValueError(f"unknown model kind {self.kind!r}; known: {', '.join(builders)}")
        return builders[self.kind](**self.params)


class MerchantRecommender:
    """Fits a generator on orders and recommends merchant ids for user ids; unknown users get popular merchants."""

    def __init__(self, spec: ModelSpec, half_life_days: float = HALF_LIFE_DAYS):
        self.spec = spec
        self.half_life_days = half_life_days

    def fit(self, orders: pd.DataFrame, as_of: datetime) -> MerchantRecommender:
        weights = interaction_weights(orders, as_of, self.half_life_days)
        self.matrix = InteractionMatrix.from_frame(weights, item_col="merchant_id", weight_col="weight")
        self.model = self.spec.build().fit(self.matrix.csr)
        self.fallback = PopularityRecommender().fit(self.matrix.csr)
        self.trained_until = pd.Timestamp(as_of)
        return self

    def recommend(self, user_ids, n: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Columns user_id, rank (1 = best), merchant_id, score; known users first by the model, then popularity."""
        user_ids = pd.Index(pd.unique(np.asarray(list(user_ids))))
        rows = self.matrix.user_indices(user_ids)
        frames = []
        known = rows >= 0
        if known.any():
            items, scores = self.model.recommend(rows[known], n, exclude_seen=exclude_seen)
            frames.append(self._frame(user_ids[known], items, scores))
        if (~known).any():
            popular, scores = self.fallback.recommend(np.zeros(1, dtype=np.int64), n, exclude_seen=False)
            count = int((~known).sum())
            frames.append(self._frame(user_ids[~known], np.repeat(popular, count, 0), np.repeat(scores, count, 0)))
        if not frames:
            return pd.DataFrame(columns=["user_id", "rank", "merchant_id", "score"])
        return pd.concat(frames, ignore_index=True)

    def _frame(self, user_ids: pd.Index, items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        n = items.shape[1]
        frame = pd.DataFrame(
            {
                "user_id": np.repeat(np.asarray(user_ids), n),
                "rank": np.tile(np.arange(1, n + 1), len(user_ids)),
                "item": items.ravel(),
                "score": scores.ravel().astype(float),
            }
        )
        frame = frame[frame["item"] >= 0]
        frame["merchant_id"] = self.matrix.item_ids[frame["item"].to_numpy()].to_numpy()
        return frame.drop(columns="item").reset_index(drop=True)


@dataclass(frozen=True)
class TemporalSplit:
    cut: datetime
    train: pd.DataFrame
    relevant: dict

    @classmethod
    def last_days(cls, orders: pd.DataFrame, as_of: datetime, test_days: int) -> TemporalSplit:
        """Train on orders before ``as_of - test_days``; the test truth is each train user's new merchants after it."""
        cut = pd.Timestamp(as_of) - timedelta(days=test_days)
        train = orders[orders["event_time"] < cut]
        test = orders[(orders["event_time"] >= cut) & (orders["event_time"] < pd.Timestamp(as_of))]
        seen = set(zip(train["user_id"], train["merchant_id"]))
        new_pairs = test[[(u, m) not in seen for u, m in zip(test["user_id"], test["merchant_id"])]]
        new_pairs = new_pairs[new_pairs["user_id"].isin(set(train["user_id"]))]
        relevant = new_pairs.groupby("user_id")["merchant_id"].agg(set).to_dict()
        return cls(cut=cut.to_pydatetime(), train=train, relevant=relevant)


def evaluate(recommender: MerchantRecommender, split: TemporalSplit, catalog_size: int, k: int = 10) -> dict[str, float]:
    """Discovery-mode metrics (merchants already ordered from are excluded) on the split's test users."""
    users = list(split.relevant)
    recs = recommender.recommend(users, n=k, exclude_seen=True)
    recommended = recs.sort_values(["user_id", "rank"]).groupby("user_id")["merchant_id"].agg(list).to_dict()
    return ranking_report(recommended, split.relevant, catalog_size=catalog_size, ks=(5, 10))


def evaluate_spec(
    spec: ModelSpec, split: TemporalSplit, catalog_size: int, half_life_days: float = HALF_LIFE_DAYS
) -> dict[str, float]:
    recommender = MerchantRecommender(spec, half_life_days).fit(split.train, split.cut)
    return evaluate(recommender, split, catalog_size)
