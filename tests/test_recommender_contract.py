"""The contract every recommender keeps, on a small seeded market.

Merchant level (what the pipeline serves): every generator through ``MerchantRecommender`` and the two-stage
ranker through ``RankedMerchantRecommender`` return columns user_id, rank, merchant_id, score, reason; every
requested user gets ranks 1..k (k <= n) over distinct known merchants in both modes; discovery never lists
a merchant the user ordered from; the same seed gives the same lists; a pickle round trip recommends the same.
Matrix level: every class of ``ml.recommend`` returns [users, n] item indices and scores, -1 / -inf padding only
at the end, and no seen item when asked.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ml.recommend import (
    ALSRecommender,
    CategoryAffinityRecommender,
    EASERecommender,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    RankerRecommender,
    UserKNNRecommender,
)
from ml.recommend.merchant import RECOMMENDATION_COLUMNS, MarketContext, ModelSpec
from ml.recommend.modes import DISCOVERY, MODES, WINBACK

AS_OF = pd.Timestamp("2026-06-01", tz="UTC")
N = 8
CATEGORIES = ("burgers", "sushi", "coffee", "pizza", "salads")
ZONES = ("West Bay", "Al Sadd", "Lusail")
SMALL_GENERATORS = {
    "item_cosine": {"neighbours": 20},
    "als": {"factors": 8, "iterations": 3, "num_threads": 1},
    "ease": {"l2": 50.0},
    "zone_popularity": {},
    "category": {},
}
SPECS = {
    "item_cosine": ModelSpec("item_cosine", {"neighbours": 20}),
    "als": ModelSpec("als", {"factors": 8, "iterations": 3, "num_threads": 1, "random_state": 3}),
    "ease": ModelSpec("ease", {"l2": 50.0}),
    "category": ModelSpec("category"),
    "popularity": ModelSpec("popularity"),
    "zone_popularity": ModelSpec("zone_popularity"),
    "random": ModelSpec("random", {"seed": 3}),
    "ranker": ModelSpec(
        "ranker",
        {
            "generators": SMALL_GENERATORS,
            "candidates_per_generator": 15,
            "max_train_users": 400,
            "num_boost_round": 20,
            "lgbm_params": {"min_data_in_leaf": 5},
            # High, so the new-merchant slot is in play in every check.
            "exploration_rate": 0.5,
            "num_threads": 1,
            "seed": 3,
        },
    ),
}


@pytest.fixture(scope="module")
def market() -> tuple[pd.DataFrame, MarketContext]:
    """300 users (40 never ordered), 40 merchants in 5 categories (4 opened in the last week, unordered), 60 days
    of orders, mostly from each user's favourite category."""
    rng = np.random.default_rng(20260601)
    n_users, n_merchants = 300, 40
    merchants = pd.DataFrame(
        {
            "merchant_id": np.arange(101, 101 + n_merchants),
            "merchant_name": [f"m{i}" for i in range(n_merchants)],
            "category": np.resize(CATEGORIES, n_merchants),
            "zone": np.resize(ZONES, n_merchants),
            "price_level": rng.integers(1, 5, n_merchants),
            "opened_at": [AS_OF - pd.Timedelta(days=3 if i >= n_merchants - 4 else 400) for i in range(n_merchants)],
        }
    ).set_index("merchant_id")
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "home_zone": rng.choice(ZONES, n_users),
            "signup_at": AS_OF - pd.to_timedelta(rng.integers(20, 300, n_users), unit="D"),
        }
    ).set_index("user_id")
    open_ids = merchants.index[: n_merchants - 4].to_numpy()
    open_categories = merchants.loc[open_ids, "category"].to_numpy()
    rows = []
    for user in users.index[40:]:
        favourite = rng.choice(CATEGORIES)
        for _ in range(rng.integers(2, 16)):
            pool = open_ids[open_categories == favourite] if rng.random() < 0.7 else open_ids
            rows.append((user, rng.choice(pool), AS_OF - pd.Timedelta(seconds=int(rng.integers(1, 60 * 86400)))))
    orders = pd.DataFrame(rows, columns=["user_id", "merchant_id", "event_time"])
    orders["order_total"] = rng.uniform(20, 200, len(orders)).round(2)
    return orders, MarketContext(merchants=merchants, users=users)


@pytest.fixture(scope="module")
def fitted(market) -> dict:
    orders, context = market
    return {name: spec.recommender().fit(orders, AS_OF, context) for name, spec in SPECS.items()}


def _requested(context: MarketContext) -> list:
    # Warm users, users who never ordered, and one nobody knows.
    return [*context.users.index[35:120].tolist(), 10**9]


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("mode", list(MODES))
def test_lists_have_the_shared_shape(name, mode, fitted, market):
    _, context = market
    users = _requested(context)
    recs = fitted[name].recommend(users, n=N, mode=mode)
    assert list(recs.columns) == RECOMMENDATION_COLUMNS
    assert set(recs["user_id"]) == set(users)
    ranks = recs.groupby("user_id", sort=False)["rank"].agg(list)
    assert all(1 <= len(r) <= N and r == list(range(1, len(r) + 1)) for r in ranks)
    assert (ranks.map(len) == N).mean() > 0.9  # short lists are the exception (few eligible merchants)
    assert not recs.duplicated(["user_id", "merchant_id"]).any()
    assert recs["merchant_id"].isin(context.merchants.index).all()
    assert np.isfinite(recs["score"].to_numpy(dtype=float)).all()


@pytest.mark.parametrize("name", list(SPECS))
def test_discovery_never_lists_a_merchant_the_user_ordered_from(name, fitted, market):
    orders, context = market
    recs = fitted[name].recommend(_requested(context), n=N, mode=DISCOVERY)
    seen = set(zip(orders["user_id"], orders["merchant_id"]))
    assert not [pair for pair in zip(recs["user_id"], recs["merchant_id"]) if pair in seen]
    # The check has teeth: in winback mode the personalised models do list known merchants.
    if name not in {"random", "popularity", "zone_popularity"}:
        repeat = fitted[name].recommend(_requested(context), n=N, mode=WINBACK)
        assert any(pair in seen for pair in zip(repeat["user_id"], repeat["merchant_id"]))


@pytest.mark.parametrize("name", list(SPECS))
def test_the_same_seed_gives_the_same_lists(name, fitted, market):
    orders, context = market
    again = SPECS[name].recommender().fit(orders, AS_OF, context)
    users = _requested(context)
    pd.testing.assert_frame_equal(again.recommend(users, n=N), fitted[name].recommend(users, n=N))


@pytest.mark.parametrize("name", list(SPECS))
def test_a_pickle_round_trip_recommends_the_same(name, fitted, market):
    _, context = market
    users = _requested(context)
    restored = pickle.loads(pickle.dumps(fitted[name]))
    for mode in MODES:
        pd.testing.assert_frame_equal(
            restored.recommend(users, n=N, mode=mode), fitted[name].recommend(users, n=N, mode=mode)
        )


# --- the matrix-level classes of ml.recommend -------------------------------------------------------------


def _matrix_models(categories: np.ndarray) -> dict:
    return {
        "ItemCosineRecommender": lambda: ItemCosineRecommender(neighbours=20),
        "ALSRecommender": lambda: ALSRecommender(factors=8, iterations=3, random_state=5, num_threads=1),
        "EASERecommender": lambda: EASERecommender(l2=50.0),
        "CategoryAffinityRecommender": lambda: CategoryAffinityRecommender(categories),
        "PopularityRecommender": lambda: PopularityRecommender(),
        "RandomRecommender": lambda: RandomRecommender(seed=5),
        "UserKNNRecommender": lambda: UserKNNRecommender(neighbours=20),
    }


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(5)
    dense = (rng.random((120, 30)) < 0.15) * rng.uniform(1, 3, (120, 30))
    return sp.csr_matrix(dense.astype(np.float32)), np.resize(CATEGORIES, 30)


@pytest.mark.parametrize(
    "name",
    [
        "ItemCosineRecommender",
        "ALSRecommender",
        "EASERecommender",
        "CategoryAffinityRecommender",
        "PopularityRecommender",
        "RandomRecommender",
        "UserKNNRecommender",
    ],
)
def test_matrix_level_recommenders_keep_the_contract(name, matrix):
    user_items, categories = matrix
    build = _matrix_models(categories)[name]
    model = build().fit(user_items)
    users = np.arange(0, 120, 3)
    items, scores = model.recommend(users, n=N, exclude_seen=True)
    assert items.shape == scores.shape == (len(users), N)
    assert ((items >= -1) & (items < user_items.shape[1])).all()
    padded = items < 0
    assert (np.isneginf(scores) == padded).all()
    assert (np.sort(padded, axis=1) == padded).all()  # padding only after the listed items
    assert (np.diff(np.where(padded, -np.inf, scores), axis=1) <= 0).all()  # best first
    seen = user_items[users].toarray() > 0
    assert not np.take_along_axis(seen, np.maximum(items, 0), axis=1)[~padded].any()
    again_items, again_scores = build().fit(user_items).recommend(users, n=N, exclude_seen=True)
    assert np.array_equal(items, again_items) and np.array_equal(scores, again_scores)
    restored_items, _ = pickle.loads(pickle.dumps(model)).recommend(users, n=N, exclude_seen=True)
    assert np.array_equal(items, restored_items)


def test_the_ranker_keeps_the_matrix_level_contract(market):
    orders, context = market
    ranker = RankerRecommender(
        {
            "item_cosine": ItemCosineRecommender(neighbours=20),
            "popularity": PopularityRecommender(),
        },
        candidates_per_generator=15,
        max_train_users=400,
        num_boost_round=20,
        lgbm_params={"min_data_in_leaf": 5},
        num_threads=1,
        seed=5,
    ).fit(orders, items=context.merchants.index, item_col="merchant_id")
    users = np.arange(0, ranker.matrix.shape[0], 4)
    items, scores = ranker.recommend(users, n=N, exclude_seen=True)
    assert items.shape == scores.shape == (len(users), N)
    padded = items < 0
    assert (np.isneginf(scores) == padded).all() and (np.sort(padded, axis=1) == padded).all()
    seen = ranker.matrix.csr[users].toarray() > 0
    assert not np.take_along_axis(seen, np.maximum(items, 0), axis=1)[~padded].any()
    restored_items, restored_scores = pickle.loads(pickle.dumps(ranker)).recommend(users, n=N, exclude_seen=True)
    assert np.array_equal(items, restored_items) and np.array_equal(scores, restored_scores)
