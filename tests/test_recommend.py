"""Candidate generators and the ranker on a planted-structure data set: clusters of users like clusters of items."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from ml.evaluation import ndcg_at_k
from ml.recommend import (
    InteractionMatrix,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    top_n,
)

N_CLUSTERS = 4
N_USERS = 240
N_ITEMS = 200


def planted_interactions(seed: int = 0, per_user: int = 15, noise: float = 0.05) -> pd.DataFrame:
    """Users of cluster c pick mostly items of cluster c, each with a Zipf-like popularity inside it."""
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(N_ITEMS) % N_CLUSTERS
    item_weight = 1.0 / (1.0 + rng.permutation(N_ITEMS) % (N_ITEMS // N_CLUSTERS))
    rows = []
    for user in range(N_USERS):
        cluster = user % N_CLUSTERS
        affinity = np.where(item_cluster == cluster, 1.0, noise) * item_weight
        items = rng.choice(N_ITEMS, size=per_user, replace=False, p=affinity / affinity.sum())
        times = np.sort(rng.uniform(0, 30 * 86400, size=per_user)).astype(np.int64)
        rows += [(user, int(item), int(t)) for item, t in zip(items, times)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])
    frame["category"] = "c" + (frame["item_id"] % N_CLUSTERS).astype(str)
    return frame


def temporal_split(frame: pd.DataFrame, train_share: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = frame.sort_values(["user_id", "event_time", "item_id"])
    position = frame.groupby("user_id").cumcount()
    size = frame.groupby("user_id")["item_id"].transform("size")
    in_train = position < np.ceil(train_share * size)
    return frame[in_train], frame[~in_train]


@pytest.fixture(scope="module")
def planted():
    train, test = temporal_split(planted_interactions())
    matrix = InteractionMatrix.from_frame(train, items=range(N_ITEMS), users=range(N_USERS))
    relevant = test.groupby("user_id")["item_id"].apply(set).to_dict()
    return matrix, relevant, train, test


def mean_ndcg(recommender, matrix: InteractionMatrix, relevant: dict, k: int = 10) -> float:
    users = sorted(relevant)
    items, _ = recommender.recommend(matrix.user_indices(users), k)
    return float(np.mean([ndcg_at_k(list(matrix.item_ids[row[row >= 0]]), relevant[u], k) for u, row in zip(users, items)]))


def test_interaction_matrix_sums_duplicates_and_maps_ids():
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "item_id": [10, 10, 20, 99], "w": [1.0, 2.0, 5.0, 1.0]})
    matrix = InteractionMatrix.from_frame(frame, weight_col="w", items=[10, 20])
    assert matrix.shape == (3, 2)
    assert matrix.csr.dtype == np.float32
    assert matrix.csr[matrix.user_indices(["u1"])[0], 0] == 3.0
    assert list(matrix.item_indices([20, 99])) == [1, -1]
    assert matrix.user_ids[matrix.user_indices(["u2"])[0]] == "u2"
    assert matrix.csr.nnz == 2


def test_top_n_excludes_and_pads():
    import scipy.sparse as sp

    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[0, 1, 0], [1, 1, 1]], dtype=np.float32))
    items, best = top_n(scores, 4, exclude)
    assert items[0].tolist() == [2, 0, -1, -1]
    assert items[1].tolist() == [-1, -1, -1, -1]
    assert np.isneginf(best[1]).all()
    assert top_n(scores, 2)[0][1].tolist() == [0, 1]


def test_cosine_similarity_is_the_seed_formula():
    import scipy.sparse as sp

    # Item 0 has users {0,1}, item 1 users {1,2,3}: one co-occurrence, sqrt(2*3) in the denominator.
    user_items = sp.csr_matrix(np.array([[1, 0], [3, 1], [0, 1], [0, 1]], dtype=np.float32))
    model = ItemCosineRecommender(neighbours=5, shrinkage=1.0).fit(user_items)
    assert model.similarity[0, 1] == pytest.approx(1 / (np.sqrt(6) + 1))
    assert model.similarity[0, 0] == 0
    items, scores = model.similar_items(0, n=3)
    assert items.tolist() == [1, -1, -1]


@pytest.mark.parametrize(
    "recommender",
    [ItemCosineRecommender(neighbours=30), ItemCosineRecommender(neighbours=30, shrinkage=5.0)],
    ids=["cosine", "cosine-shrunk"],
)
def test_generator_recovers_planted_structure_better_than_popularity(planted, recommender):
    matrix, relevant, _, _ = planted
    popularity = mean_ndcg(PopularityRecommender().fit(matrix.csr), matrix, relevant)
    assert mean_ndcg(recommender.fit(matrix.csr), matrix, relevant) > 1.2 * popularity


def test_recommend_excludes_seen_items_and_is_picklable(planted):
    matrix, relevant, _, _ = planted
    model = pickle.loads(pickle.dumps(ItemCosineRecommender(neighbours=20).fit(matrix.csr)))
    users = np.arange(10)
    items, scores = model.recommend(users, n=15)
    assert items.shape == scores.shape == (10, 15)
    for user, row in zip(users, items):
        assert not set(row[row >= 0]) & set(matrix.csr[user].indices)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert model.score(users).shape == (10, N_ITEMS)


def test_popularity_by_group_and_random_baseline(planted):
    matrix, relevant, _, _ = planted
    groups = np.arange(N_USERS) % N_CLUSTERS
    by_zone = PopularityRecommender(user_groups=groups).fit(matrix.csr)
    overall = PopularityRecommender().fit(matrix.csr)
    # Here the zone is the taste cluster, so popularity inside it is far better than overall popularity.
    assert mean_ndcg(by_zone, matrix, relevant) > 1.5 * mean_ndcg(overall, matrix, relevant)
    random = RandomRecommender(seed=3).fit(matrix.csr)
    assert np.array_equal(random.recommend([5, 6], 5)[0], RandomRecommender(seed=3).fit(matrix.csr).recommend([5, 6], 5)[0])
    assert mean_ndcg(random, matrix, relevant) < mean_ndcg(overall, matrix, relevant)
    pickle.loads(pickle.dumps(by_zone))
