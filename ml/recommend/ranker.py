"""Two-stage recommender: the union of the generators' top candidates, re-scored by LightGBM LambdaRank.

Training is temporal inside the data given to ``fit``: each user's last ``label_share`` of
interactions are the labels, the generators and features see only the interactions before them.
For serving, the generators are refitted on everything and the same features are rebuilt.

One booster per mode (``ml.recommend.modes``): ``winback`` learns from labels that include repeat
orders, over candidates that include the user's own past items; ``discovery`` from new items only,
over candidates the user never interacted with. Both share the generators fitted on each window.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ml.recommend.base import Recommender, rows_divided, top_n, top_n_of_pairs
from ml.recommend.content import CategoryAffinityRecommender
from ml.recommend.cosine import ItemCosineRecommender, cosine_similarity, keep_top_per_row
from ml.recommend.ease import EASERecommender
from ml.recommend.history import DAY, History
from ml.recommend.matrix import InteractionMatrix
from ml.recommend.modes import DISCOVERY, MODES, WINBACK
from ml.recommend.popularity import PopularityRecommender
from ml.recommend.rerank import mmr_rerank_rows, own_items_by_count
from ml.recommend.split import temporal_split, unix_seconds

# Users whose candidates are scored at once; bounds memory at about batch x items floats per generator.
_BATCH_USERS = 512
# Neighbours per item of the item-item similarity behind the similarity features and the reasons.
_SIMILAR_NEIGHBOURS = 100
# Below this cosine similarity a past item is too weak a link to name as the reason.
_SIMILAR_REASON_MIN = 0.1
_EARTH_RADIUS_KM = 6371.0
# The transition features count, for each interaction, the user's next this many interactions as following it
# (the d-th next weighted 1 / d).
_TRANSITION_LAGS = 3

# Features that can be left out together (``without_features``), for ablations; a name also covers the
# features it prefixes ("user_item_decayed" covers "user_item_decayed_7d", ...).
FEATURE_GROUPS = {
    # what the user did at this item and how much they come back in general (and own_items_by_count's ordering)
    "repeat": (
        "user_item_interactions",
        "user_item_days_since",
        "user_item_share",
        "user_item_recent_weight",  # one per recency half-life
        "user_item_decayed",  # one per history.DECAY_HALF_LIFE_DAYS
        "user_reorder_ratio",
        "item_reorder_rate",
        "user_idle_days",
    ),
    # when and where: habit match, distance, zone, price fit, the item's age
    "context": (
        "daypart_match",
        "weekday_match",
        "zone_match",
        "distance_km",
        "price_level_gap",
        "item_age_at_user_time_days",
    ),
}

DEFAULT_LGBM_PARAMS = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "lambdarank_truncation_level": 20,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "deterministic": True,
    # Column-wise histograms skip the features feature_fraction leaves out of a tree: 9 s less training on a
    # full-scale day than row-wise, with the same NDCG to four places (BENCHMARKS.md, Daily operation).
    "force_col_wise": True,
    "verbose": -1,
}

REASONS = {
    "repeat": "you ordered from {item} before",
    "similar": "you ordered from similar merchant {item}",
    "category": "matches your favourite category {category}",
    "zone": "popular in your zone",
    "popular": "popular right now",
}


class TooLittleHistoryError(ValueError):
    """The interactions give the ranker no training group: no sampled user has a label among their candidates."""


def _habit_match(user_shares: np.ndarray, item_shares: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """How much more the user's habit overlaps the item's than the marketplace's (1 = no better than it)."""
    expected = user_shares @ overall
    return np.einsum("ij,ij->i", user_shares, item_shares) / np.maximum(expected, 1e-9)


def _haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle km between rows of (lat, lng) degrees; NaN where either is unknown."""
    lat1, lng1, lat2, lng2 = (np.radians(v) for v in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lng2 - lng1) / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _ranks_of(keys: np.ndarray, listed: np.ndarray, listed_ranks: np.ndarray, unlisted: float) -> np.ndarray:
    """The rank of each of ``keys`` in a list given as its sorted keys ``listed`` and their ``listed_ranks``;
    ``unlisted`` for a key the list does not hold."""
    if not len(listed):
        return np.full(len(keys), unlisted, dtype=np.float32)
    at = np.minimum(np.searchsorted(listed, keys), len(listed) - 1)
    return np.where(listed[at] == keys, listed_ranks[at], unlisted).astype(np.float32)


def _pair_lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if not len(rows):
        # SciPy answers an empty look-up with an empty sparse matrix, not an empty array.
        return np.empty(0, dtype=matrix.dtype)
    return np.asarray(matrix[rows, cols]).ravel()


def _most_similar_past_items(
    similarity_to: sp.csr_matrix, items: np.ndarray, past: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray]:
    """For each recommended item ``items[k]`` and its user's past items (row k of ``past``): the largest
    similarity to it, at least 0, and the first past item (by index) that has it (0 where none is above 0).

    Looks up only the (item, past item) pairs: gathering each recommended item's whole similarity row instead
    was a quarter of a scoring thread's time at full scale."""
    best, most = np.zeros(len(items)), np.zeros(len(items), dtype=np.int64)
    if not past.nnz:
        return best, most
    pair = np.repeat(np.arange(len(items)), np.diff(past.indptr))
    values = _pair_lookup(similarity_to, items[pair], past.indices)
    np.maximum.at(best, pair, values)
    reaching = np.flatnonzero((values == best[pair]) & (values > 0))
    firsts, first_entry = np.unique(pair[reaching], return_index=True)
    most[firsts] = past.indices[reaching[first_entry]]
    return best, most


@dataclass
class _Stage:
    """Generators fitted on one history, plus that history."""

    generators: dict[str, Recommender]
    history: History
    affinity: CategoryAffinityRecommender | None
    similarity: sp.csr_matrix  # item x its top neighbours
    similarity_to: sp.csr_matrix  # the transpose: row i holds every item's similarity to item i
    user_locations: np.ndarray  # (users, 2): interaction-weighted mean (lat, lng) of their items, NaN if unknown
    recent_user_locations: np.ndarray | None  # the same weighted by recency (the middle half-life), if asked for
    user_price_levels: np.ndarray  # interaction-weighted mean price level of their items, NaN if unknown
    recent_category_shares: sp.csr_matrix | None  # users x categories: shares of recency-weighted interactions
    transitions: sp.csr_matrix | None  # item i x item j: the share of what followed i that was j, if asked for


class RankerRecommender(Recommender):
    """LightGBM LambdaRank over the union of the generators' top ``candidates_per_generator`` items.

    ``generators`` are unfitted prototypes (copied, never mutated). Generators that hold per-item or
    per-user arrays must be aligned with the ``users`` / ``items`` order passed to ``fit``.
    ``item_categories`` (item id -> category) adds category features; ``item_context`` (indexed by item
    id; any of the columns zone, lat, lng, price_level) and ``user_context`` (indexed by user id; column
    home_zone) add the zone, distance and price-fit features. ``modes`` are the modes to learn (one
    booster each); ``without_features`` names groups of ``FEATURE_GROUPS`` to leave out.
    ``max_train_users`` caps the users sampled for training (rows are about users x windows x
    candidates). ``diversity_lambda`` < 1 re-ranks each list by MMR over categories.

    ``bagged_boosters`` > 1 trains that many boosters per mode on the same training rows, each stopped early on its
    own slice of the sampled users (disjoint slices while they last) and seeded apart, and averages their scores:
    on a log of a few hundred users one booster's seed moves NDCG@10 by several points (BENCHMARKS.md).

    ``own_items_by_count``: in lists that keep the user's own items (winback), the booster decides which slots hold
    own items and which new ones, and the own items fill their slots most ordered first (equal counts in the
    booster's order); the booster alone ordered them worse than their counts do (BENCHMARKS.md).

    ``ease_of_recent_items`` adds EASE's score of the user's recency-weighted items (the half-lives of the
    similarity features; it needs an EASE generator): on MovieLens and on the order logs without categories it
    raised discovery NDCG@10; on the order logs with categories, in winback and on the pipeline's world it cost a
    little (BENCHMARKS.md).

    ``distance_from_recent_orders`` adds the distance from the recency-weighted mean place of the user's orders (the
    middle half-life) to the item (``distance_km_recent``), beside the distance from the mean place of all of them: a
    customer who moves house orders near the new home (BENCHMARKS.md).

    ``transitions_from_recent_items`` adds, per candidate, how often it came next after the user's recency-weighted
    items in all users' time-ordered interactions (``item_transitions``): what follows what, where the similarity
    features say only what goes together (BENCHMARKS.md).

    ``prior_generator`` starts every booster from that generator's order instead of from nothing: its init score
    is ``-prior_weight * log2(1 + the item's rank in the generator's list)``, so the trees learn corrections to the
    generator and early stopping keeps its order where they find none. On a few hundred users a booster started
    from nothing can rank below the best generator it has as a feature (BENCHMARKS.md).
    """

    def __init__(
        self,
        generators: Mapping[str, Recommender],
        item_categories: pd.Series | None = None,
        item_context: pd.DataFrame | None = None,
        user_context: pd.DataFrame | None = None,
        item_names: Mapping | None = None,
        modes: Sequence[str] = (DISCOVERY,),
        without_features: Sequence[str] = (),
        candidates_per_generator: int = 100,
        label_share: float = 0.2,
        training_windows: int = 2,
        validation_share: float = 0.2,
        recent_days: float = 14.0,
        recency_half_lives: Sequence[float] = (1.0, 4.0, 16.0),
        max_train_users: int | None = 20_000,
        lgbm_params: Mapping | None = None,
        num_boost_round: int = 1000,
        early_stopping_rounds: int = 100,
        diversity_lambda: float = 1.0,
        bagged_boosters: int = 1,
        own_items_by_count: bool = True,
        ease_of_recent_items: bool = False,
        distance_from_recent_orders: bool = False,
        transitions_from_recent_items: bool = False,
        prior_generator: str | None = None,
        prior_weight: float = 0.5,
        num_threads: int = 2,
        seed: int = 0,
    ):
        self.generators = dict(generators)
        unknown = [m for m in modes if m not in MODES] + [g for g in without_features if g not in FEATURE_GROUPS]
        if unknown or not modes:
            raise ValueError(
                f"unknown modes or feature groups {unknown}; modes: {', '.join(MODES)}; "
                f"feature groups: {', '.join(FEATURE_GROUPS)}"
            )
        if not self.generators:
            raise ValueError("the ranker needs at least one candidate generator")
        if prior_generator is not None and prior_generator not in self.generators:
            raise ValueError(
                f"prior_generator {prior_generator!r} is not one of the generators: {', '.join(self.generators)}"
            )
        if ease_of_recent_items and not any(isinstance(g, EASERecommender) for g in self.generators.values()):
            raise ValueError("ease_of_recent_items needs an EASE generator")
        if bagged_boosters < 1:
            raise ValueError(f"bagged_boosters must be at least 1, got {bagged_boosters}")
        self.item_categories = item_categories
        self.item_context = item_context
        self.user_context = user_context
        self.item_names = item_names
        self.modes = tuple(modes)
        self.without_features = tuple(without_features)
        self.candidates_per_generator = candidates_per_generator
        self.label_share = label_share
        self.training_windows = training_windows
        self.validation_share = validation_share
        self.recent_days = recent_days
        self.recency_half_lives = tuple(recency_half_lives)
        self.max_train_users = max_train_users
        self.lgbm_params = {**DEFAULT_LGBM_PARAMS, **(lgbm_params or {})}
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.diversity_lambda = diversity_lambda
        self.bagged_boosters = bagged_boosters
        self.own_items_by_count = own_items_by_count
        self.ease_of_recent_items = ease_of_recent_items
        self.distance_from_recent_orders = distance_from_recent_orders
        self.transitions_from_recent_items = transitions_from_recent_items
        self.prior_generator = prior_generator
        self.prior_weight = prior_weight
        self.num_threads = num_threads
        self.seed = seed

    def __setstate__(self, state: dict) -> None:
        # A ranker pickled before bagging (an MLflow champion of an earlier release) holds one booster per mode.
        state["boosters"] = {
            mode: boosters if isinstance(boosters, list) else [boosters]
            for mode, boosters in state.get("boosters", {}).items()
        }
        state.setdefault("bagged_boosters", 1)
        # One pickled before own items were ordered by count lists them as it did.
        state.setdefault("own_items_by_count", False)
        state.setdefault("prior_generator", None)
        state.setdefault("ease_of_recent_items", False)
        state.setdefault("distance_from_recent_orders", False)
        state.setdefault("transitions_from_recent_items", False)
        self.__dict__.update(state)

    def fit(
        self,
        interactions: pd.DataFrame,
        users: Sequence | None = None,
        items: Sequence | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str = "event_time",
    ) -> RankerRecommender:
        """Learn from interactions with a user, an item and a time (unix seconds or ISO) column."""
        frame = self._index(interactions, users, items, user_col, item_col, time_col)
        rng = np.random.default_rng(self.seed)
        all_users = rng.permutation(self.matrix.shape[0])
        if self.max_train_users is not None:
            all_users = all_users[: self.max_train_users]
        n_valid = int(round(self.validation_share * len(all_users)))
        sampled = np.sort(all_users)
        parts: dict[str, list] = {mode: [] for mode in self.modes}
        # Each window moves the cut one label share further back, adding training groups from older data.
        current = frame
        for _ in range(self.training_windows):
            past, future = temporal_split(current, 1.0 - self.label_share)
            stage = self._fit_stage(past)
            for mode in self.modes:
                positives = self._positives(stage, future, mode)
                parts[mode].append(self._training_rows(stage, sampled, positives, mode))
            current = past
        # One frame per mode (the windows' parts freed), split by user for each booster.
        rows = {mode: _concat_rows(parts.pop(mode)) for mode in self.modes}
        self.boosters = {mode: [] for mode in self.modes}
        for bag in range(self.bagged_boosters):
            valid_users = np.roll(all_users, -bag * n_valid)[:n_valid]
            for mode in self.modes:
                train, valid = _split_groups(rows[mode], valid_users)
                self.boosters[mode].append(self._train_booster(train, valid, mode, self.seed + bag))
        del rows, train, valid  # the training rows, the largest arrays held, are freed before the serving stage
        self.stage = self._fit_stage(frame)
        return self

    def _train_booster(self, train: tuple, valid: tuple, mode: str, seed: int) -> lgb.Booster:
        if not len(train[2]):
            raise TooLittleHistoryError(
                f"no {mode} training groups: no sampled user has a {mode} label among their candidates "
                "(too little history before the label window?)"
            )
        params = {**self.lgbm_params, "num_threads": self.num_threads, "seed": seed}
        train_set = lgb.Dataset(
            train[0], train[1], group=train[2], init_score=self._prior(train[0]), free_raw_data=True
        )
        callbacks = []
        valid_sets = []
        if len(valid[2]):
            valid_sets = [
                lgb.Dataset(valid[0], valid[1], group=valid[2], init_score=self._prior(valid[0]), reference=train_set)
            ]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        self.feature_names = list(train[0].columns)
        return lgb.train(
            params, train_set, num_boost_round=self.num_boost_round, valid_sets=valid_sets, callbacks=callbacks
        )

    def _prior(self, features: pd.DataFrame) -> np.ndarray | None:
        """The boosters' starting score of each candidate row: ``prior_generator``'s order (None without one)."""
        if self.prior_generator is None:
            return None
        ranks = features[f"{self.prior_generator}_rank"].to_numpy(np.float64)
        return -self.prior_weight * np.log2(1.0 + ranks)

    def _boosters(self, exclude_seen: bool) -> list[lgb.Booster]:
        """The boosters of the mode ``exclude_seen`` asks for, else those of the one mode this ranker learned."""
        mode = DISCOVERY if exclude_seen else WINBACK
        return self.boosters[mode] if mode in self.boosters else next(iter(self.boosters.values()))

    def refit(
        self,
        interactions: pd.DataFrame,
        users: Sequence | None = None,
        items: Sequence | None = None,
        generators: Mapping[str, Recommender] | None = None,
        item_categories: pd.Series | None = None,
        item_context: pd.DataFrame | None = None,
        user_context: pd.DataFrame | None = None,
        item_names: Mapping | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        time_col: str = "event_time",
    ) -> RankerRecommender:
        """A copy that keeps the learned booster and rebuilds candidates and features on ``interactions``.

        The booster scores features relative to each user's own history, so it carries over to a later
        window; refitting only the generators costs one stage instead of training again. Pass new
        ``generators`` prototypes when theirs hold arrays aligned with the old ``users`` / ``items``.
        """
        refreshed = copy.copy(self)
        refreshed.generators = dict(generators) if generators is not None else self.generators
        refreshed.item_categories = item_categories if item_categories is not None else self.item_categories
        refreshed.item_context = item_context if item_context is not None else self.item_context
        refreshed.user_context = user_context if user_context is not None else self.user_context
        refreshed.item_names = item_names if item_names is not None else self.item_names
        frame = refreshed._index(interactions, users, items, user_col, item_col, time_col)
        refreshed.stage = refreshed._fit_stage(frame)
        return refreshed

    def _index(self, interactions, users, items, user_col: str, item_col: str, time_col: str) -> pd.DataFrame:
        """Set the matrix axes and category codes; the interactions with row (u) and column (i) indices."""
        frame = pd.DataFrame(
            {
                "user_id": interactions[user_col],
                "item_id": interactions[item_col],
                "event_time": unix_seconds(interactions[time_col]),
            }
        )
        self.matrix = InteractionMatrix.from_frame(frame, users=users, items=items)
        self.user_items = self.matrix.csr
        frame = frame.assign(u=self.matrix.user_indices(frame["user_id"]), i=self.matrix.item_indices(frame["item_id"]))
        self._item_code = None
        if self.item_categories is not None:
            self._item_code = self.item_categories.reindex(self.matrix.item_ids).to_numpy(dtype=object)
            self._category_codes = pd.factorize(self._item_code, use_na_sentinel=False)[0]
        self._set_context()
        return frame[(frame["u"] >= 0) & (frame["i"] >= 0)]

    def _set_context(self) -> None:
        """Per-column location, price level and zone code, per-row zone code (NaN / -1 when unknown)."""
        n_users, n_items = self.matrix.shape
        items = pd.DataFrame(index=self.matrix.item_ids)
        if self.item_context is not None:
            items = self.item_context.reindex(self.matrix.item_ids)
        self._item_locations = np.column_stack(
            [pd.to_numeric(items.get(c, pd.Series(np.nan, index=items.index)), errors="coerce") for c in ("lat", "lng")]
        ).astype(np.float64)
        self._item_price_levels = pd.to_numeric(
            items.get("price_level", pd.Series(np.nan, index=items.index)), errors="coerce"
        ).to_numpy(np.float64)
        user_zones = pd.Series(np.nan, index=self.matrix.user_ids, dtype=object)
        if self.user_context is not None and "home_zone" in self.user_context:
            user_zones = self.user_context["home_zone"].reindex(self.matrix.user_ids)
        item_zones = items["zone"] if "zone" in items else pd.Series(np.nan, index=items.index, dtype=object)
        codes, _ = pd.factorize(pd.concat([item_zones, user_zones], ignore_index=True))
        self._item_zones, self._user_zones = codes[:n_items], codes[n_items:]

    def _fit_stage(self, frame: pd.DataFrame) -> _Stage:
        users, items = frame["u"].to_numpy(), frame["i"].to_numpy()
        times = frame["event_time"].to_numpy(np.float64)
        history = History.from_indices(users, items, times, self.matrix.shape, self.recency_half_lives)
        generators = {name: copy.deepcopy(g).fit(history.user_items) for name, g in self.generators.items()}
        affinity = None
        if self._item_code is not None:
            affinity = CategoryAffinityRecommender(self._item_code).fit(history.user_items)
        similarity = _item_similarity(history.user_items, generators.values())
        return _Stage(
            generators=generators,
            history=history,
            affinity=affinity,
            similarity=similarity,
            similarity_to=similarity.T.tocsr(),
            user_locations=_weighted_mean(history.user_items, self._item_locations),
            recent_user_locations=_weighted_mean(
                history.recent_user_items[self._middle_half_life], self._item_locations
            )
            if self.distance_from_recent_orders
            else None,
            user_price_levels=_weighted_mean(history.user_items, self._item_price_levels),
            recent_category_shares=None
            if affinity is None
            else _category_shares(history.recent_user_items[self._middle_half_life], affinity.item_codes),
            transitions=item_transitions(users, items, times, self.matrix.shape[1])
            if self.transitions_from_recent_items
            else None,
        )

    @property
    def _middle_half_life(self) -> float:
        return self.recency_half_lives[len(self.recency_half_lives) // 2]

    def _positives(self, stage: _Stage, future: pd.DataFrame, mode: str) -> sp.csr_matrix:
        labels = future[["u", "i"]].drop_duplicates()
        if MODES[mode]:
            seen = _pair_lookup(stage.history.user_items, labels["u"].to_numpy(), labels["i"].to_numpy())
            labels = labels[seen == 0]
        return sp.csr_matrix((np.ones(len(labels), np.float32), (labels["u"], labels["i"])), shape=self.matrix.shape)

    def _training_rows(
        self, stage: _Stage, users: np.ndarray, positives: sp.csr_matrix, mode: str
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels, per-user group sizes and the groups' users, keeping users with a positive among their
        candidates."""
        users = users[np.diff(positives.indptr)[users] > 0]

        def rows_of(batch: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
            local_rows, cols, features = self._candidates(stage, batch, MODES[mode])
            label = _pair_lookup(positives, batch[local_rows], cols)
            keep = (np.bincount(local_rows, label, minlength=len(batch)) > 0)[local_rows]
            sizes = np.bincount(local_rows[keep], minlength=len(batch))
            return features[keep], label[keep], sizes[sizes > 0], batch[sizes > 0]

        # Batches side by side: top-n selection, sparse products and BLAS release the GIL; map keeps their order.
        batches = [users[start : start + _BATCH_USERS] for start in range(0, len(users), _BATCH_USERS)]
        with ThreadPoolExecutor(max_workers=self.num_threads or os.cpu_count() or 1) as pool:
            return _concat_rows(list(pool.map(rows_of, batches)))

    def _candidates(
        self, stage: _Stage, users: np.ndarray, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """Candidate pairs as (position in ``users``, item index), grouped by user, and their features."""
        return self._candidates_each(stage, users, (exclude_seen,))[exclude_seen]

    def _candidates_each(
        self, stage: _Stage, users: np.ndarray, exclude_seen_options: Sequence[bool]
    ) -> dict[bool, tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        """``_candidates`` for each ``exclude_seen`` option, scoring the generators and the similarity to the
        users' recent items once for all options."""
        seen = stage.history.user_items[users]
        n_items = self.matrix.shape[1]
        depth = min(self.candidates_per_generator, n_items)
        dense_scores = {name: generator.score(users) for name, generator in stage.generators.items()}
        tops = {name: _generator_tops(dense, depth, seen, exclude_seen_options) for name, dense in dense_scores.items()}
        recent_items = {half_life: recent[users] for half_life, recent in stage.history.recent_user_items.items()}
        similarities = {
            f"similarity_to_recent_items_hl{half_life:g}": np.asarray((recent @ stage.similarity).todense())
            for half_life, recent in recent_items.items()
        }
        if self.ease_of_recent_items:
            weights = next(g.weights for g in stage.generators.values() if isinstance(g, EASERecommender))
            similarities.update(
                (f"ease_of_recent_items_hl{half_life:g}", np.asarray(recent @ weights))
                for half_life, recent in recent_items.items()
            )
        if self.transitions_from_recent_items:
            similarities.update(
                (f"transitions_from_recent_items_hl{half_life:g}", np.asarray((recent @ stage.transitions).todense()))
                for half_life, recent in recent_items.items()
            )
        result = {}
        for exclude_seen in exclude_seen_options:
            # Each list as sorted pair keys (position in the batch * items + item) with the item's rank in it:
            # the candidates are their union, and a candidate's rank is a look-up, not a users x items matrix.
            listings, scores = {}, {}
            for name, dense in dense_scores.items():
                top, top_scores = tops[name][exclude_seen]
                local, position = np.nonzero(top >= 0)
                keys = local * n_items + top[local, position]
                order = np.argsort(keys)
                listings[name] = (keys[order], (position[order] + 1).astype(np.float32))
                best = np.where(np.isfinite(top_scores[:, 0]), top_scores[:, 0], 0.0)
                scores[name] = (dense, np.abs(best) + 1e-9)
            listed_keys = [listed for listed, _ in listings.values()]
            if not exclude_seen:
                # Win-back: every item the user already ordered from is a candidate, whatever the generators say.
                seen_rows, seen_cols = seen.nonzero()
                listed_keys.append(seen_rows.astype(np.int64) * n_items + seen_cols)
            candidates = np.unique(np.concatenate(listed_keys))
            local_rows, cols = np.divmod(candidates, n_items)
            ranks = {name: _ranks_of(candidates, *listing, unlisted=depth + 1) for name, listing in listings.items()}
            result[exclude_seen] = (
                local_rows,
                cols,
                self._features(stage, users[local_rows], local_rows, cols, scores, ranks, similarities, depth),
            )
        return result

    def _features(
        self,
        stage: _Stage,
        rows: np.ndarray,
        local_rows: np.ndarray,
        cols: np.ndarray,
        scores: dict[str, tuple[np.ndarray, np.ndarray]],
        ranks: dict[str, np.ndarray],
        similarities: dict[str, np.ndarray],
        depth: int,
    ) -> pd.DataFrame:
        """The features of the candidate pairs (``rows``, ``cols``) given the batch's generator scores, each pair's
        rank in each generator's list (``depth`` + 1 where unlisted) and the batch's similarities to recent items, by
        feature name (indexed by ``local_rows``, the pair's position in the batch)."""
        columns: dict[str, np.ndarray] = {}
        for name, (dense, best) in scores.items():
            value = dense[local_rows, cols]
            columns[f"{name}_score"] = value
            columns[f"{name}_share_of_best"] = value / best[local_rows]
            columns[f"{name}_rank"] = ranks[name]
        columns["generators_listing"] = sum((rank <= depth).astype(np.float32) for rank in ranks.values())
        for name, similarity in similarities.items():
            columns[name] = similarity[local_rows, cols]
        columns.update(self._history_features(stage, rows, cols))
        columns.update(self._context_features(stage, rows, cols))
        features = pd.DataFrame(columns).astype(np.float32)
        dropped = [
            column
            for group in self.without_features
            for name in FEATURE_GROUPS[group]
            for column in features.columns
            if column == name or column.startswith(name + "_")
        ]
        return features.drop(columns=dropped)

    def _history_features(self, stage: _Stage, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        history = stage.history
        window = self.recent_days * DAY
        user_time = history.user_last[rows]
        # Users without history are placed at the end of the history.
        user_time = np.where(np.isnan(user_time), history.reference_time, user_time)
        user_n = np.asarray(history.user_items.sum(axis=1)).ravel()
        near = history.item_events_between(cols, user_time - window, user_time).astype(np.float32)
        near_total = history.events_between(user_time - window, user_time).astype(np.float32)
        n_items = self.matrix.shape[1]
        recent = history.item_events_between(
            np.arange(n_items),
            np.full(n_items, history.reference_time - window),
            np.full(n_items, history.reference_time),
        ).astype(np.float32)[cols]
        last_seen = _pair_lookup(history.last_seen, rows, cols)
        user_item_n = _pair_lookup(history.user_items, rows, cols)
        user_distinct = np.diff(history.user_items.indptr).astype(np.float32)
        features = {
            "item_users": history.item_users[cols].astype(np.float32),
            "item_recent_events": recent,
            "item_events_near_user_time": near,
            "item_share_near_user_time": near / np.maximum(near_total, 1.0),
            "item_age_at_user_time_days": (user_time - history.item_first[cols]) / DAY,
            "item_last_event_before_user_days": (user_time - history.item_last[cols]) / DAY,
            "user_interactions": user_n[rows].astype(np.float32),
            "user_span_days": (user_time - history.user_first[rows]) / DAY,
            "user_idle_days": (history.reference_time - user_time) / DAY,
            "user_item_interactions": user_item_n,
            "user_item_days_since": np.where(
                last_seen > 0, (user_time - (last_seen - 1.0 + history.time_origin)) / DAY, np.nan
            ),
            "user_item_share": user_item_n / np.maximum(user_n[rows], 1.0),
            **{
                f"user_item_recent_weight_hl{h:g}": _pair_lookup(recent, rows, cols)
                for h, recent in history.recent_user_items.items()
            },
            **{f"user_item_decayed_{d:g}d": _pair_lookup(m, rows, cols) for d, m in history.decayed_user_items.items()},
            "user_reorder_ratio": 1.0 - user_distinct[rows] / np.maximum(user_n[rows], 1.0),
            "item_reorder_rate": 1.0 - history.item_users[cols] / np.maximum(history.item_events[cols], 1.0),
        }
        if stage.affinity is not None:
            affinity = stage.affinity
            codes = affinity.item_codes[cols]
            counts = affinity.user_category_counts[rows, codes]
            features["category_affinity"] = affinity.category_affinity(rows)[np.arange(len(rows)), codes]
            features["category_user_share"] = counts / np.maximum(user_n[rows], 1.0)
            features["category_user_count"] = counts
            features["item_share_in_category"] = affinity.item_share_in_category[cols]
            # Recent taste: the category's share of the user's recency-weighted interactions, so a changed
            # taste moves the ranking before the lifetime counts catch up.
            features["category_recent_share"] = _pair_lookup(stage.recent_category_shares, rows, codes)
        return features

    def _context_features(self, stage: _Stage, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        history = stage.history
        user_zone, item_zone = self._user_zones[rows], self._item_zones[cols]
        features = {
            "daypart_match": _habit_match(history.user_hours[rows], history.item_hours[cols], history.hour_shares),
            "weekday_match": _habit_match(
                history.user_weekdays[rows], history.item_weekdays[cols], history.weekday_shares
            ),
            "zone_match": np.where((user_zone >= 0) & (item_zone >= 0), user_zone == item_zone, np.nan),
            "distance_km": _haversine_km(stage.user_locations[rows], self._item_locations[cols]),
        }
        # Beside distance_km: the columns' order is part of a booster's seeded feature sampling.
        if self.distance_from_recent_orders:
            features["distance_km_recent"] = _haversine_km(
                stage.recent_user_locations[rows], self._item_locations[cols]
            )
        features["price_level_gap"] = np.abs(self._item_price_levels[cols] - stage.user_price_levels[rows])
        return features

    def score(self, user_indices: np.ndarray, exclude_seen: bool = True) -> np.ndarray:
        """Ranker scores on each user's candidates, -inf for items that are not candidates."""
        users = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        local_rows, cols, scores = self._scored_candidates(users, (exclude_seen,))[exclude_seen]
        dense = np.full((len(users), self.matrix.shape[1]), -np.inf, dtype=np.float32)
        dense[local_rows, cols] = scores
        return dense

    def _scored_candidates(
        self, users: np.ndarray, exclude_seen_options: Sequence[bool]
    ) -> dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per option, the candidate pairs as (position in ``users``, item index) and the booster's score of each."""
        scored = {}
        for exclude_seen, (local_rows, cols, features) in self._candidates_each(
            self.stage, users, exclude_seen_options
        ).items():
            predictions = np.empty(0, dtype=np.float32)
            if len(cols):
                predictions = np.mean(
                    [
                        booster.predict(features[self.feature_names], num_threads=self.num_threads)
                        for booster in self._boosters(exclude_seen)
                    ],
                    axis=0,
                )
                prior = self._prior(features)
                if prior is not None:
                    predictions = predictions + prior
            # Ordering own items by their counts uses what the repeat features say, so a ranker without them
            # (an ablation) keeps the booster's order.
            if not exclude_seen and self.own_items_by_count and "repeat" not in self.without_features:
                counts = _pair_lookup(self.stage.history.user_items, users[local_rows], cols)
                predictions = own_items_by_count(local_rows, predictions, counts)
            scored[exclude_seen] = (local_rows, cols, predictions)
        return scored

    def recommend(
        self, user_indices: np.ndarray, n: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.recommend_each(user_indices, n, (exclude_seen,))[exclude_seen]

    def recommend_each(
        self, user_indices: np.ndarray, n: int = 10, exclude_seen_options: Sequence[bool] = (False, True)
    ) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
        """``recommend`` for each ``exclude_seen`` option, the same lists as one call per option at the cost of
        scoring the generators once."""
        users = np.asarray(user_indices, dtype=np.int64).reshape(-1)
        reranking = self.diversity_lambda < 1.0 and self._item_code is not None
        depth = 3 * n if reranking else n
        lists = {
            option: (np.full((len(users), n), -1, dtype=np.int64), np.full((len(users), n), -np.inf, dtype=np.float32))
            for option in exclude_seen_options
        }
        for start in range(0, len(users), _BATCH_USERS):
            batch = slice(start, start + _BATCH_USERS)
            batch_users = users[batch]
            for option, pairs in self._scored_candidates(batch_users, exclude_seen_options).items():
                top, top_scores = top_n_of_pairs(*pairs, len(batch_users), depth)
                if reranking:
                    picks = mmr_rerank_rows(
                        top_scores, self._category_codes[np.maximum(top, 0)], self.diversity_lambda, n
                    )
                    picked = picks >= 0
                    top = np.where(picked, np.take_along_axis(top, np.maximum(picks, 0), axis=1), -1)
                    top_scores = np.where(picked, np.take_along_axis(top_scores, np.maximum(picks, 0), axis=1), -np.inf)
                items, scores = lists[option]
                items[batch], scores[batch] = top[:, :n], top_scores[:, :n]
        return lists

    def boosting_rounds(self) -> int:
        """The rounds all boosters trained, early stopping's patience included: what the fit's time follows."""
        return sum(booster.num_trees() for boosters in self.boosters.values() for booster in boosters)

    def feature_importance(self, importance_type: str = "gain", mode: str | None = None) -> pd.Series:
        """The boosters' mean feature importance (of ``mode``, default the first mode learned)."""
        boosters = self.boosters[mode or self.modes[0]]
        return pd.Series(
            np.mean([booster.feature_importance(importance_type=importance_type) for booster in boosters], axis=0),
            index=self.feature_names,
        ).sort_values(ascending=False)

    def explain(self, user_indices: np.ndarray, item_indices: np.ndarray) -> list[list[str]]:
        """A short reason per recommended item; ``item_indices`` is [users, n] as from ``recommend``.

        In order: a past merchant, the most similar past merchant (similarity >= ``_SIMILAR_REASON_MIN``),
        the user's favourite category, else popularity.
        """
        history = self.stage.history
        item_indices = np.asarray(item_indices)
        listed = item_indices >= 0
        rows = np.repeat(np.asarray(user_indices), item_indices.shape[1])[listed.ravel()]
        items = item_indices[listed]
        past = history.user_items[rows]
        best_similarity, most_similar = _most_similar_past_items(self.stage.similarity_to, items, past)
        has_past = np.diff(past.indptr) > 0
        fallback = REASONS["zone" if self._zone_popularity else "popular"]
        if self.stage.affinity is not None:
            favourite = self.stage.affinity.user_category_counts[rows].argmax(axis=1)
            in_favourite = has_past & (self.stage.affinity.item_codes[items] == favourite)
        else:
            in_favourite = np.zeros(len(items), dtype=bool)
        repeat = _pair_lookup(history.user_items, rows, items) > 0
        reasons = [
            REASONS["repeat"].format(item=self._item_name(item))
            if is_repeat
            else REASONS["similar"].format(item=self._item_name(other))
            if similarity >= _SIMILAR_REASON_MIN
            else REASONS["category"].format(category=self._item_code[item])
            if favoured
            else fallback
            for item, other, similarity, is_repeat, favoured in zip(
                items.tolist(), most_similar.tolist(), best_similarity.tolist(), repeat.tolist(), in_favourite.tolist()
            )
        ]
        bounds = np.concatenate([[0], np.cumsum(listed.sum(axis=1))])
        return [reasons[begin:end] for begin, end in zip(bounds[:-1], bounds[1:])]

    @property
    def _zone_popularity(self) -> bool:
        return any(isinstance(g, PopularityRecommender) and g.user_groups is not None for g in self.generators.values())

    def _item_name(self, item: int) -> str:
        item_id = self.matrix.item_ids[item]
        return str(self.item_names.get(item_id, item_id)) if self.item_names is not None else str(item_id)


def _generator_tops(
    dense: np.ndarray, depth: int, seen: sp.csr_matrix, exclude_seen_options: Sequence[bool]
) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """A generator's top ``depth`` items and scores per user (``top_n``) for each ``exclude_seen`` option.

    One pass over every item serves both options: the list with seen items is ranked from the seen items and
    the list without them, which together hold all of it (an unseen item in it has fewer than ``depth`` unseen
    items above it)."""
    unseen = top_n(dense, depth, seen)
    tops = {True: unseen}
    if False in exclude_seen_options:
        valid = unseen[0] >= 0
        rows = np.concatenate([np.nonzero(valid)[0], np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))])
        cols = np.concatenate([unseen[0][valid], seen.indices])
        tops[False] = top_n_of_pairs(rows, cols, dense[rows, cols], seen.shape[0], depth)
    return {option: tops[option] for option in exclude_seen_options}


def _item_similarity(user_items: sp.csr_matrix, fitted_generators) -> sp.csr_matrix:
    """Item-item cosine over each item's top ``_SIMILAR_NEIGHBOURS``: an item-cosine generator fitted with those
    settings on the same history already holds it (at 5,700 merchants it costs half a second per stage)."""
    for generator in fitted_generators:
        if (
            isinstance(generator, ItemCosineRecommender)
            and generator.neighbours == _SIMILAR_NEIGHBOURS
            and generator.shrinkage == 0.0
        ):
            return generator.similarity
    return keep_top_per_row(cosine_similarity(user_items), _SIMILAR_NEIGHBOURS)


def item_transitions(users: np.ndarray, items: np.ndarray, times: np.ndarray, n_items: int) -> sp.csr_matrix:
    """items x items: row i holds what followed i in the users' time-ordered interactions, as shares of the row.
    Each interaction's next ``_TRANSITION_LAGS`` interactions of the same user count, the d-th next 1 / d."""
    order = np.lexsort((items, times, users))
    users, items = users[order], items[order]
    sources, targets, weights = [], [], []
    for lag in range(1, _TRANSITION_LAGS + 1):
        same_user = np.flatnonzero(users[lag:] == users[:-lag])
        sources.append(items[same_user])
        targets.append(items[same_user + lag])
        weights.append(np.full(len(same_user), 1.0 / lag))
    counts = sp.csr_matrix(
        (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))), shape=(n_items, n_items)
    )
    counts.sum_duplicates()
    return rows_divided(counts, np.asarray(counts.sum(axis=1)).ravel()).astype(np.float32)


def _weighted_mean(user_items: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Per user, the mean of ``values`` (one per item, or one row per item) over their items weighted by
    interactions, NaN values skipped."""
    known = np.isfinite(values)
    total = user_items @ np.where(known, values, 0.0)
    weight = user_items @ known.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def _category_shares(user_items: sp.csr_matrix, item_codes: np.ndarray) -> sp.csr_matrix:
    """users x categories: each category's share of the user's interaction weight."""
    n_items = user_items.shape[1]
    one_hot = sp.csr_matrix(
        (np.ones(n_items, np.float32), (np.arange(n_items), item_codes)), shape=(n_items, int(item_codes.max()) + 1)
    )
    sums = user_items @ one_hot
    return rows_divided(sums, sums.sum(axis=1))


def _split_groups(
    rows: tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray], valid_users: np.ndarray
) -> tuple[tuple[pd.DataFrame, np.ndarray, np.ndarray], tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    """Training rows (features, labels, group sizes, group users) split into the groups of users outside and
    inside ``valid_users``, each side keeping the groups' order."""
    features, labels, sizes, group_users = rows
    in_valid = np.isin(group_users, valid_users)
    row_in_valid = np.repeat(in_valid, sizes)
    return tuple(
        (features[row_in_valid == side].reset_index(drop=True), labels[row_in_valid == side], sizes[in_valid == side])
        for side in (False, True)
    )


def _concat_rows(
    parts: list[tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Training rows (features, labels, group sizes, group users) of several parts as one."""
    if not parts:
        return pd.DataFrame(), np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64)
    features, labels, sizes, group_users = zip(*parts)
    return (
        pd.concat(features, ignore_index=True),
        np.concatenate(labels),
        np.concatenate(sizes),
        np.concatenate(group_users),
    )
