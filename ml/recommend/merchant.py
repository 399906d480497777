"""Merchant recommendations by user id: what to build (``ModelSpec``) and fitting it on orders as of a date.

Two recommenders share one interface, ``fit(orders, as_of, context=None)`` and
``recommend(user_ids, n, mode="discovery") -> DataFrame[user_id, rank, merchant_id, score, reason]``
(modes: ``ml.recommend.modes``): ``MerchantRecommender`` (one generator) and ``RankedMerchantRecommender``
(generators + LightGBM ranker, one booster per mode). Users without orders get the popular merchants of
their home zone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from ml.experiments.assignment import hash_units
from ml.recommend import (
    ALSRecommender,
    CategoryAffinityRecommender,
    EASERecommender,
    InteractionMatrix,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    RankerRecommender,
    top_n,
)
from ml.recommend.modes import DISCOVERY, MODES, exclude_seen
from ml.recommend.ranker import REASONS

HALF_LIFE_DAYS = 14.0
NEW_MERCHANT_DAYS = 14
UNKNOWN_CATEGORY = "unknown"
RECOMMENDATION_COLUMNS = ["user_id", "rank", "merchant_id", "score", "reason"]
# What the ranker may know of a merchant besides its orders and category (MarketContext.merchants columns).
ITEM_CONTEXT_COLUMNS = ["zone", "lat", "lng", "price_level"]


@dataclass(frozen=True)
class MarketContext:
    """What the marts know besides orders.

    ``merchants`` is indexed by merchant_id with columns category, zone, merchant_name, lat, lng, price_level,
    opened_at; ``users`` is indexed by user_id with columns home_zone, signup_at.
    """

    merchants: pd.DataFrame
    users: pd.DataFrame

    @classmethod
    def from_marketplace(cls, marketplace) -> MarketContext:
        """From ``ml.generate.Marketplace`` raw tables (benchmarks and tests)."""
        return cls(
            merchants=marketplace.merchants.set_index("merchant_id")[
                ["category", "zone", "merchant_name", "lat", "lng", "price_level", "opened_at"]
            ],
            users=marketplace.users.set_index("user_id")[["home_zone", "signup_at"]],
        )


@dataclass(frozen=True)
class MarketAxes:
    """Row (user) and column (merchant) order of the interaction matrix, with per-row / per-column facts."""

    user_ids: pd.Index
    merchant_ids: pd.Index
    user_zones: np.ndarray  # zone code per row; -1 when unknown
    merchant_categories: np.ndarray  # category per column (object)
    new_merchants: np.ndarray  # opened within NEW_MERCHANT_DAYS before as_of, per column

    @classmethod
    def build(cls, orders: pd.DataFrame, as_of: datetime, context: MarketContext | None) -> MarketAxes:
        """Users who ordered or signed up before ``as_of``; merchants ordered from or open before it."""
        as_of = pd.Timestamp(as_of)
        user_ids = set(orders["user_id"].unique())
        merchant_ids = set(orders["merchant_id"].unique())
        if context is not None:
            signup = pd.to_datetime(context.users["signup_at"], utc=True)
            user_ids |= set(context.users.index[signup.isna() | (signup < as_of)])
            opened = pd.to_datetime(context.merchants["opened_at"], utc=True)
            merchant_ids |= set(context.merchants.index[opened.isna() | (opened < as_of)])
        users = pd.Index(sorted(user_ids), name="user_id")
        merchants = pd.Index(sorted(merchant_ids), name="merchant_id")
        if context is None:
            return cls(
                user_ids=users,
                merchant_ids=merchants,
                user_zones=np.full(len(users), -1),
                merchant_categories=np.full(len(merchants), UNKNOWN_CATEGORY, dtype=object),
                new_merchants=np.zeros(len(merchants), dtype=bool),
            )
        zones, _ = pd.factorize(context.users["home_zone"].reindex(users))
        opened = pd.to_datetime(context.merchants["opened_at"], utc=True).reindex(merchants)
        return cls(
            user_ids=users,
            merchant_ids=merchants,
            user_zones=zones,
            merchant_categories=context.merchants["category"]
            .reindex(merchants)
            .fillna(UNKNOWN_CATEGORY)
            .to_numpy(object),
            new_merchants=(opened >= as_of - pd.Timedelta(days=NEW_MERCHANT_DAYS)).to_numpy(bool),
        )


def interaction_weights(orders: pd.DataFrame, as_of: datetime, half_life_days: float = HALF_LIFE_DAYS) -> pd.DataFrame:
    """One row per (user_id, merchant_id): recency-decayed, value-weighted order strength as of ``as_of``."""
    age_days = (pd.Timestamp(as_of) - orders["event_time"]).dt.total_seconds() / 86400.0
    decay = np.power(0.5, age_days.clip(lower=0) / half_life_days)
    value = 1.0 + np.log1p(orders["order_total"].fillna(0).clip(lower=0))
    weighted = orders.assign(weight=decay * value)
    return weighted.groupby(["user_id", "merchant_id"], as_index=False)["weight"].sum()


_GENERATORS = {
    "item_cosine": lambda axes, params: ItemCosineRecommender(**params),
    "als": lambda axes, params: ALSRecommender(**params),
    "ease": lambda axes, params: EASERecommender(**params),
    "popularity": lambda axes, params: PopularityRecommender(),
    "zone_popularity": lambda axes, params: PopularityRecommender(user_groups=axes.user_zones),
    "category": lambda axes, params: CategoryAffinityRecommender(
        axes.merchant_categories, axes.new_merchants, **params
    ),
    "random": lambda axes, params: RandomRecommender(**params),
}


# Params that say how a fit runs, not what it fits (LightGBM and implicit are deterministic per thread count).
EXECUTION_PARAMS = frozenset({"num_threads"})


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a kind and its hyperparameters (enough to refit on another window).

    Kinds: the generators in ``_GENERATORS`` and ``ranker`` (params: see ``RankerRecipe``).
    """

    kind: str
    params: dict = field(default_factory=dict)

    def build(self, axes: MarketAxes):
        """The unfitted generator, aligned with ``axes``."""
        if self.kind not in _GENERATORS:
            raise ValueError(f"unknown generator kind {self.kind!r}; known: {', '.join(_GENERATORS)}")
        return _GENERATORS[self.kind](axes, self.params)

    def same_recipe(self, other: ModelSpec) -> bool:
        """Whether ``other`` fits the same model: the same kind and params, apart from how a fit runs
        (``EXECUTION_PARAMS``), so a change of thread count does not make today's ranker a rival of its champion."""
        return self.kind == other.kind and _recipe_params(self) == _recipe_params(other)

    def recommender(self, half_life_days: float = HALF_LIFE_DAYS):
        if self.kind == "ranker":
            return RankedMerchantRecommender(self)
        return MerchantRecommender(self, half_life_days)


def _recipe_params(spec: ModelSpec) -> dict:
    return {name: value for name, value in spec.params.items() if name not in EXECUTION_PARAMS}


DEFAULT_GENERATORS = {
    "item_cosine": {"neighbours": 100, "shrinkage": 0.0},
    "als": {"factors": 32, "regularization": 0.05, "alpha": 2.0, "iterations": 15},
    "ease": {"l2": 250.0},
    "zone_popularity": {},
    "category": {},
}


@dataclass(frozen=True)
class RankerRecipe:
    """A ``ModelSpec("ranker", params)``'s params with their defaults."""

    generators: Mapping[str, dict] = field(default_factory=lambda: dict(DEFAULT_GENERATORS))
    candidates_per_generator: int = 50
    label_share: float = 0.5
    training_windows: int = 2
    modes: tuple[str, ...] = tuple(MODES)
    without_features: tuple[str, ...] = ()
    max_train_users: int = 5_000
    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    # Fewer rows per leaf than the ranker's default: a day's marketplace yields few labelled users.
    lgbm_params: Mapping = field(default_factory=lambda: {"min_data_in_leaf": 50})
    diversity_lambda: float = 0.9
    exploration_rate: float = 0.05
    num_threads: int = 1
    seed: int = 0

    def generator_specs(self) -> dict[str, ModelSpec]:
        """ALS gets the recipe's seed and threads, so one knob sets them for every model."""
        specs = {}
        for kind, params in self.generators.items():
            if kind == "als":
                params = {"random_state": self.seed, "num_threads": self.num_threads, **params}
            specs[kind] = ModelSpec(kind, params)
        return specs


def ranker_spec(settings) -> ModelSpec:
    """The production recipe from the settings: the two-stage ranker over cosine, ALS, EASE, zone popularity and
    category affinity, with MMR re-ranking and the new-merchant slot."""
    generators = {
        **DEFAULT_GENERATORS,
        "item_cosine": {"neighbours": settings.cosine_neighbours, "shrinkage": settings.cosine_shrinkage},
    }
    return ModelSpec(
        "ranker",
        {
            "generators": generators,
            "candidates_per_generator": settings.ranker_candidates,
            "max_train_users": settings.ranker_train_users,
            "diversity_lambda": settings.diversity_lambda,
            "exploration_rate": settings.exploration_rate,
            "num_threads": settings.model_threads,
            "seed": settings.seed,
        },
    )


def comparison_specs(ranker: ModelSpec) -> dict[str, ModelSpec]:
    """The model comparison set: the ranker beside each of its generators alone and the popularity and random
    baselines (random seeded like the ranker). The daily pipeline and the synthetic benchmark both judge it."""
    recipe = RankerRecipe(**ranker.params)
    return {
        "ranker": ranker,
        **recipe.generator_specs(),
        "popularity": ModelSpec("popularity"),
        "random": ModelSpec("random", {"seed": recipe.seed}),
    }


class ColdStart:
    """Lists for users without orders: the most-ordered merchants of their home zone, else overall."""

    def fit(self, axes: MarketAxes, user_items) -> ColdStart:
        self.axes = axes
        self.popularity = PopularityRecommender(user_groups=axes.user_zones).fit(user_items)
        return self

    def recommend(self, user_ids: pd.Index, n: int) -> pd.DataFrame:
        rows = self.axes.user_ids.get_indexer(user_ids)
        zones = np.where(rows >= 0, self.axes.user_zones[np.maximum(rows, 0)], -1)
        frames = []
        for zone in np.unique(zones):
            # Any row of the zone (or the global scores for -1) yields the zone's list.
            members = user_ids[zones == zone]
            scores = self.popularity.group_scores.get(zone, self.popularity.item_users)[None, :]
            items, best = top_n(scores, n)
            reason = REASONS["zone" if zone >= 0 else "popular"]
            frames.append(
                _frame(
                    members,
                    np.repeat(items, len(members), 0),
                    np.repeat(best, len(members), 0),
                    self.axes.merchant_ids,
                    np.full((len(members), n), reason, dtype=object),
                )
            )
        return pd.concat(frames, ignore_index=True)


class MerchantRecommender:
    """One generator on recency-decayed, value-weighted orders; users without orders go to ``ColdStart``."""

    def __init__(self, spec: ModelSpec, half_life_days: float = HALF_LIFE_DAYS):
        self.spec = spec
        self.half_life_days = half_life_days

    def fit(self, orders: pd.DataFrame, as_of: datetime, context: MarketContext | None = None) -> MerchantRecommender:
        self.axes = MarketAxes.build(orders, as_of, context)
        weights = interaction_weights(orders, as_of, self.half_life_days)
        self.matrix = InteractionMatrix.from_frame(
            weights, item_col="merchant_id", weight_col="weight", users=self.axes.user_ids, items=self.axes.merchant_ids
        )
        self.model = self.spec.build(self.axes).fit(self.matrix.csr)
        self.cold_start = ColdStart().fit(self.axes, self.matrix.csr)
        self.trained_until = pd.Timestamp(as_of)
        return self

    def recommend(self, user_ids: Iterable, n: int = 10, mode: str = DISCOVERY, explain: bool = True) -> pd.DataFrame:
        """Columns user_id, rank (1 = best), merchant_id, score, reason (set for cold-start rows only)."""
        user_ids = _unique(user_ids)
        rows = self.matrix.user_indices(user_ids)
        warm = _has_orders(self.matrix, rows)
        frames = []
        if warm.any():
            items, scores = self.model.recommend(rows[warm], n, exclude_seen=exclude_seen(mode))
            frames.append(_frame(user_ids[warm], items, scores, self.matrix.item_ids))
        if (~warm).any():
            frames.append(self.cold_start.recommend(user_ids[~warm], n))
        return _concat(frames)

    def recommend_modes(
        self, user_ids: Iterable, n: int = 10, modes: Sequence[str] = tuple(MODES), explain: bool = True
    ) -> pd.DataFrame:
        """``recommend`` in each of ``modes``, with a ``mode`` column."""
        return _with_modes({mode: self.recommend(user_ids, n, mode, explain) for mode in modes})


class RankedMerchantRecommender:
    """Cosine, ALS, EASE, zone popularity and category affinity candidates re-scored by LightGBM LambdaRank,
    diversified by MMR over categories, with an exploration slot that shows users a new merchant.

    Features and labels come from the orders alone (the marts' as-of-run-date aggregates would leak the
    label window into training); the context adds categories, zones, names and price levels.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def fit(
        self, orders: pd.DataFrame, as_of: datetime, context: MarketContext | None = None
    ) -> RankedMerchantRecommender:
        recipe = RankerRecipe(**self.spec.params)
        self.axes = MarketAxes.build(orders, as_of, context)
        generators = {kind: spec.build(self.axes) for kind, spec in recipe.generator_specs().items()}
        self.ranker = RankerRecommender(
            generators,
            **self._item_facts(context),
            candidates_per_generator=recipe.candidates_per_generator,
            label_share=recipe.label_share,
            training_windows=recipe.training_windows,
            modes=recipe.modes,
            without_features=recipe.without_features,
            max_train_users=recipe.max_train_users,
            num_boost_round=recipe.num_boost_round,
            lgbm_params=recipe.lgbm_params,
            early_stopping_rounds=recipe.early_stopping_rounds,
            diversity_lambda=recipe.diversity_lambda,
            num_threads=recipe.num_threads,
            seed=recipe.seed,
        ).fit(orders, users=self.axes.user_ids, items=self.axes.merchant_ids, item_col="merchant_id")
        return self._ready(recipe, as_of)

    def refit(
        self, orders: pd.DataFrame, as_of: datetime, context: MarketContext | None = None
    ) -> RankedMerchantRecommender:
        """The same learned ranker over candidates and features rebuilt from ``orders`` as of ``as_of``.

        The daily pipeline judges the ranker fitted before its held-out window, then serves this refit on
        all orders, so the booster is trained once a day.
        """
        refreshed = RankedMerchantRecommender(self.spec)
        refreshed.axes = MarketAxes.build(orders, as_of, context)
        recipe = RankerRecipe(**self.spec.params)
        refreshed.ranker = self.ranker.refit(
            orders,
            users=refreshed.axes.user_ids,
            items=refreshed.axes.merchant_ids,
            item_col="merchant_id",
            generators={kind: spec.build(refreshed.axes) for kind, spec in recipe.generator_specs().items()},
            **refreshed._item_facts(context),
        )
        return refreshed._ready(recipe, as_of)

    def _item_facts(self, context: MarketContext | None) -> dict:
        return {
            "item_categories": pd.Series(self.axes.merchant_categories, index=self.axes.merchant_ids),
            "item_names": None if context is None else context.merchants["merchant_name"].to_dict(),
            "item_context": None
            if context is None
            else context.merchants[[c for c in ITEM_CONTEXT_COLUMNS if c in context.merchants]],
            "user_context": None if context is None else context.users[["home_zone"]],
        }

    def _ready(self, recipe: RankerRecipe, as_of: datetime) -> RankedMerchantRecommender:
        self.matrix = self.ranker.matrix
        self.cold_start = ColdStart().fit(self.axes, self.matrix.csr)
        self.exploration = NewMerchantSlot(
            recipe.exploration_rate, f"new-merchant-slot:{recipe.seed}:{pd.Timestamp(as_of).date()}"
        ).fit(self.axes, self.matrix.csr)
        self.trained_until = pd.Timestamp(as_of)
        return self

    def recommend(self, user_ids: Iterable, n: int = 10, mode: str = DISCOVERY, explain: bool = True) -> pd.DataFrame:
        return self._recommend_each(user_ids, n, (mode,), explain)[mode]

    def recommend_modes(
        self, user_ids: Iterable, n: int = 10, modes: Sequence[str] = tuple(MODES), explain: bool = True
    ) -> pd.DataFrame:
        """``recommend`` in each of ``modes`` with a ``mode`` column; the generators score each user once."""
        return _with_modes(self._recommend_each(user_ids, n, modes, explain))

    def _recommend_each(
        self, user_ids: Iterable, n: int, modes: Sequence[str], explain: bool
    ) -> dict[str, pd.DataFrame]:
        user_ids = _unique(user_ids)
        rows = self.matrix.user_indices(user_ids)
        warm = _has_orders(self.matrix, rows)
        frames: dict[str, list[pd.DataFrame]] = {mode: [] for mode in modes}
        if warm.any():
            warm_rows = rows[warm]
            lists = self.ranker.recommend_each(warm_rows, n, tuple(dict.fromkeys(exclude_seen(mode) for mode in modes)))
            for mode in modes:
                items, scores = lists[exclude_seen(mode)]
                reasons = _pad(self.ranker.explain(warm_rows, items), n) if explain else None
                items, scores, reasons = self.exploration.apply(
                    user_ids[warm], warm_rows, items, scores, reasons, exclude_seen(mode)
                )
                frames[mode].append(_frame(user_ids[warm], items, scores, self.matrix.item_ids, reasons))
        if (~warm).any():
            cold = self.cold_start.recommend(user_ids[~warm], n)
            for mode in modes:
                frames[mode].append(cold)
        return {mode: _concat(mode_frames) for mode, mode_frames in frames.items()}

    def feature_importance(self, mode: str | None = None) -> pd.Series:
        return self.ranker.feature_importance(mode=mode)

    def boosting_rounds(self) -> int:
        return self.ranker.boosting_rounds()


class NewMerchantSlot:
    """With probability ``rate`` per user and day, the last slot shows the new merchant the user's
    category taste scores highest (merchants without orders never reach the ranker's top otherwise).
    Who explores is the seeded hash of (``key``, user id), so any id works and a re-run draws the same."""

    def __init__(self, rate: float, key: str):
        self.rate = rate
        self.key = key

    def fit(self, axes: MarketAxes, user_items) -> NewMerchantSlot:
        self.axes = axes
        self.new_columns = np.flatnonzero(axes.new_merchants)
        self.affinity = CategoryAffinityRecommender(axes.merchant_categories, axes.new_merchants).fit(user_items)
        return self

    def apply(self, user_ids, rows, items, scores, reasons, exclude_seen: bool):
        if self.rate <= 0 or not len(self.new_columns):
            return items, scores, reasons
        draws = hash_units(self.key, user_ids)
        exploring = np.flatnonzero(draws < self.rate)
        if not len(exploring):
            return items, scores, reasons
        items, scores = items.copy(), scores.copy()
        taste = self.affinity.score(rows[exploring])[:, self.new_columns]
        if exclude_seen:
            taste[self.affinity.user_items[rows[exploring]][:, self.new_columns].toarray() > 0] = -np.inf
        for position, row in enumerate(exploring):
            listed = np.flatnonzero(items[row] >= 0)
            taste[position, np.isin(self.new_columns, items[row])] = -np.inf
            if not len(listed) or not np.isfinite(taste[position]).any():
                continue
            slot = listed[-1]
            items[row, slot] = self.new_columns[int(np.argmax(taste[position]))]
            # The slot keeps the list's lowest score so scores still fall with rank.
            scores[row, slot] = scores[row, listed].min()
            if reasons is not None:
                reasons[row, slot] = f"new {self.axes.merchant_categories[items[row, slot]]} merchant to try"
        return items, scores, reasons


def _unique(user_ids: Iterable) -> pd.Index:
    return pd.Index(pd.unique(np.asarray(list(user_ids))))


def _has_orders(matrix: InteractionMatrix, rows: np.ndarray) -> np.ndarray:
    counts = np.diff(matrix.csr.indptr)
    return (rows >= 0) & (counts[np.maximum(rows, 0)] > 0)


def _pad(reasons: list[list[str]], n: int) -> np.ndarray:
    out = np.full((len(reasons), n), None, dtype=object)
    for row, values in enumerate(reasons):
        out[row, : len(values)] = values
    return out


def _frame(
    user_ids, items: np.ndarray, scores: np.ndarray, merchant_ids: pd.Index, reasons: np.ndarray | None = None
) -> pd.DataFrame:
    n = items.shape[1]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids), n),
            "rank": np.tile(np.arange(1, n + 1), len(user_ids)),
            "item": items.ravel(),
            "score": scores.ravel().astype(float),
            "reason": None if reasons is None else reasons.ravel(),
        }
    )
    frame = frame[frame["item"] >= 0]
    frame.insert(2, "merchant_id", merchant_ids[frame["item"].to_numpy()].to_numpy())
    return frame.drop(columns="item").reset_index(drop=True)


def _with_modes(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame of per-mode recommendation frames, with a ``mode`` column."""
    columns = RECOMMENDATION_COLUMNS + ["mode"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat([frame.assign(mode=mode) for mode, frame in frames.items()], ignore_index=True)[columns]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=RECOMMENDATION_COLUMNS)
    return pd.concat(frames, ignore_index=True)[RECOMMENDATION_COLUMNS]
