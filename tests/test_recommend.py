"""Candidate generators and the ranker on a planted-structure data set: clusters of users like clusters of items."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ml.benchmarks.order_log import order_log
from ml.recommend import (
    ALSRecommender,
    CategoryAffinityRecommender,
    EASERecommender,
    InteractionMatrix,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    RankerRecommender,
    UserKNNRecommender,
    mmr_rerank,
    temporal_split,
    top_n,
)
from ml.recommend import ranker as ranker_module
from ml.recommend import userknn as userknn_module
from ml.recommend.base import top_n_of_pairs
from ml.recommend.content import co_ordered_groups
from ml.recommend.ease import _mirror_upper, _spd_inverse
from ml.recommend.metrics import intra_list_diversity, ndcg_at_k
from ml.recommend.modes import WINBACK
from ml.recommend.ranker import _generator_tops, _most_similar_past_items, _ranks_of, _split_groups
from ml.recommend.rerank import own_items_by_count

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
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])


def drifting_interactions(seed: int = 0, n_users: int = 300, per_user: int = 20, noise: float = 0.05) -> pd.DataFrame:
    """Each user's taste moves from one cluster to another halfway through their history."""
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(N_ITEMS) % N_CLUSTERS
    item_weight = 1.0 / (1.0 + rng.permutation(N_ITEMS) % (N_ITEMS // N_CLUSTERS))
    rows = []
    for user in range(n_users):
        first = user % N_CLUSTERS
        later = (first + 1 + (user // N_CLUSTERS) % (N_CLUSTERS - 1)) % N_CLUSTERS
        chosen: list[int] = []
        for step in range(per_user):
            cluster = first if step < per_user // 2 else later
            affinity = np.where(item_cluster == cluster, 1.0, noise) * item_weight
            affinity[chosen] = 0.0
            chosen.append(int(rng.choice(N_ITEMS, p=affinity / affinity.sum())))
            rows.append((user, chosen[-1], step * 3600 + user * 60))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])


COLD_USER = 10_000
ITEM_CATEGORIES = pd.Series(["c" + str(item % N_CLUSTERS) for item in range(N_ITEMS)], index=range(N_ITEMS))


@pytest.fixture(scope="module")
def planted():
    train, test = temporal_split(planted_interactions())
    matrix = InteractionMatrix.from_frame(train, items=range(N_ITEMS), users=range(N_USERS))
    relevant = test.groupby("user_id")["item_id"].apply(set).to_dict()
    return matrix, relevant, train, test


def mean_ndcg(recommender, matrix: InteractionMatrix, relevant: dict, k: int = 10) -> float:
    users = sorted(relevant)
    items, _ = recommender.recommend(matrix.user_indices(users), k)
    lists = [list(matrix.item_ids[row[row >= 0]]) for row in items]
    return float(np.mean([ndcg_at_k(listed, relevant[user], k) for user, listed in zip(users, lists)]))


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

    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[0, 1, 0], [1, 1, 1]], dtype=np.float32))
    items, best = top_n(scores, 4, exclude)
    assert items[0].tolist() == [2, 0, -1, -1]
    assert items[1].tolist() == [-1, -1, -1, -1]
    assert np.isneginf(best[1]).all()
    assert top_n(scores, 2)[0][1].tolist() == [0, 1]


def test_cosine_similarity_is_the_seed_formula():

    # Item 0 has users {0,1}, item 1 users {1,2,3}: one co-occurrence, sqrt(2*3) in the denominator.
    user_items = sp.csr_matrix(np.array([[1, 0], [3, 1], [0, 1], [0, 1]], dtype=np.float32))
    model = ItemCosineRecommender(neighbours=5, shrinkage=1.0).fit(user_items)
    assert model.similarity[0, 1] == pytest.approx(1 / (np.sqrt(6) + 1))
    assert model.similarity[0, 0] == 0
    items, scores = model.similar_items(0, n=3)
    assert items.tolist() == [1, -1, -1]


def test_user_knn_scores_are_the_neighbours_similarity_weighted_order_shares_across_user_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    counts = rng.poisson(0.6, size=(37, 12)).astype(np.float64)
    counts[5] = 0.0  # a user without orders has no neighbours and scores zero
    damped = np.log1p(counts)
    unit = damped / np.maximum(np.linalg.norm(damped, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, 0.0)
    neighbours = 4
    kept = np.zeros_like(similarity)
    for user, row in enumerate(similarity):
        top = np.lexsort((np.arange(len(row)), -row))[:neighbours]
        top = top[row[top] > 0]
        kept[user, top] = row[top]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
    monkeypatch.setattr(userknn_module, "_USER_BLOCK", 10)  # four blocks, the last one short
    model = UserKNNRecommender(neighbours=neighbours).fit(sp.csr_matrix(counts))
    np.testing.assert_allclose(model.score(np.arange(37)), kept @ shares, rtol=1e-5, atol=1e-6)
    assert not model.score(np.array([5])).any()


def test_ease_weights_are_the_closed_form_of_steck_2019():
    rng = np.random.default_rng(3)
    user_items = sp.csr_matrix((rng.random((400, 60)) < 0.08) * rng.integers(1, 4, (400, 60)), dtype=np.float32)
    model = EASERecommender(l2=20.0).fit(user_items)
    binary = (user_items.toarray() > 0).astype(np.float64)
    precision = np.linalg.inv(binary.T @ binary + 20.0 * np.eye(60))
    expected = -precision / np.diag(precision)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(model.weights, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(model.score(np.arange(5)), binary[:5] @ expected, atol=1e-4)


def test_spd_inverse_is_the_whole_symmetric_inverse_across_mirroring_bands():
    rng = np.random.default_rng(4)
    square = rng.random((50, 50))
    spd = square @ square.T + 50.0 * np.eye(50)
    given = spd.copy()
    np.testing.assert_allclose(_spd_inverse(spd), np.linalg.inv(given), rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(spd, given)  # only overwrite=True may work in the caller's matrix
    np.testing.assert_allclose(_spd_inverse(spd, overwrite=True), np.linalg.inv(given), rtol=1e-10, atol=1e-14)
    upper = np.triu(rng.random((23, 23)))
    np.testing.assert_array_equal(_mirror_upper(upper.copy(), block=5), upper + np.triu(upper, 1).T)


@pytest.mark.parametrize(
    "recommender",
    [
        ItemCosineRecommender(neighbours=30),
        ItemCosineRecommender(neighbours=30, shrinkage=5.0),
        ALSRecommender(factors=16, regularization=0.1, iterations=10, num_threads=1),
        EASERecommender(l2=50.0),
        CategoryAffinityRecommender(ITEM_CATEGORIES.to_numpy()),
        UserKNNRecommender(neighbours=30),
    ],
    ids=["cosine", "cosine-shrunk", "als", "ease", "category", "user-knn"],
)
def test_generator_recovers_planted_structure_better_than_popularity(planted, recommender):
    matrix, relevant, _, _ = planted
    popularity = mean_ndcg(PopularityRecommender().fit(matrix.csr), matrix, relevant)
    assert mean_ndcg(recommender.fit(matrix.csr), matrix, relevant) > 1.2 * popularity


@pytest.mark.parametrize(
    "recommender",
    [
        ItemCosineRecommender(neighbours=20),
        ALSRecommender(factors=8, iterations=3, num_threads=1),
        EASERecommender(),
        UserKNNRecommender(neighbours=20),
    ],
    ids=["cosine", "als", "ease", "user-knn"],
)
def test_recommend_excludes_seen_items_and_is_picklable(planted, recommender):
    matrix, _, _, _ = planted
    model = pickle.loads(pickle.dumps(recommender.fit(matrix.csr)))
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
    again = RandomRecommender(seed=3).fit(matrix.csr)
    assert np.array_equal(random.recommend([5, 6], 5)[0], again.recommend([5, 6], 5)[0])
    assert mean_ndcg(random, matrix, relevant) < mean_ndcg(overall, matrix, relevant)
    pickle.loads(pickle.dumps(by_zone))


def test_category_affinity_serves_cold_users_and_new_items():
    # Category a: items 0-2 (item 2 just opened, no interactions yet); category b: items 3-5.
    frame = pd.DataFrame({"user_id": [0, 1, 1, 2, 2, 3], "item_id": [0, 0, 1, 3, 4, 5]})
    matrix = InteractionMatrix.from_frame(frame, users=[0, 1, 2, 3, 9], items=range(6))
    categories = np.array(["a", "a", "a", "b", "b", "b"])
    new_items = np.array([False, False, True, False, False, False])
    model = CategoryAffinityRecommender(categories, new_items=new_items).fit(matrix.csr)
    one_interaction, no_interaction = matrix.user_indices([0, 9])
    items, _ = model.recommend([one_interaction, no_interaction], n=3)
    # The user who tried one "a" item gets the other "a" items first, the new one included.
    assert set(items[0, :2]) == {1, 2}
    assert (items[1] >= 0).all()
    assert model.category_affinity([one_interaction])[0].argmax() == list(model.categories).index("a")


def test_mmr_increases_diversity_and_lambda_one_keeps_order():
    items = np.array([10, 11, 12, 13, 14, 15])
    scores = np.array([1.0, 0.95, 0.9, 0.85, 0.5, 0.4])
    categories = {10: "pizza", 11: "pizza", 12: "pizza", 13: "pizza", 14: "sushi", 15: "burger"}
    reranked, reranked_scores = mmr_rerank(items, scores, categories, lam=0.5, n=4)
    assert reranked[0] == 10
    assert intra_list_diversity(list(reranked), categories) > intra_list_diversity(list(items[:4]), categories)
    assert set(reranked_scores) <= set(scores)
    assert list(mmr_rerank(items, scores, categories, lam=1.0)[0]) == list(items)


@pytest.fixture(scope="module")
def drifting_ranker():
    train, held_out = temporal_split(drifting_interactions())
    users = sorted(set(train["user_id"])) + [COLD_USER]
    generators = {
        "cosine": ItemCosineRecommender(neighbours=30),
        "ease": EASERecommender(l2=50.0),
        "popularity": PopularityRecommender(),
    }
    ranker = RankerRecommender(
        generators,
        item_categories=ITEM_CATEGORIES,
        candidates_per_generator=30,
        num_boost_round=200,
        lgbm_params={"min_data_in_leaf": 20},
        num_threads=1,
    ).fit(train, users=users, items=range(N_ITEMS))
    relevant = held_out.groupby("user_id")["item_id"].apply(set).to_dict()
    return ranker, generators, train, relevant


def test_ranker_beats_its_best_input_on_a_held_out_window(drifting_ranker):
    ranker, generators, train, relevant = drifting_ranker
    matrix = ranker.matrix
    best_input = max(mean_ndcg(g.fit(matrix.csr), matrix, relevant) for g in generators.values())
    assert mean_ndcg(ranker, matrix, relevant) > 1.15 * best_input
    importance = ranker.feature_importance()
    assert importance.index[0] and (importance >= 0).all()


def test_ranker_explains_pickles_and_reranks(drifting_ranker):
    ranker, _, _, _ = drifting_ranker
    users = np.arange(5)
    items, scores = ranker.recommend(users, n=5)
    assert items.shape == (5, 5) and (items >= 0).all()
    reasons = ranker.explain(users, items)
    assert [len(row) for row in reasons] == [5] * 5
    assert all(isinstance(reason, str) and reason for row in reasons for reason in row)
    assert any("similar merchant" in reason or "favourite category" in reason for row in reasons for reason in row)
    cold = ranker.matrix.user_indices([COLD_USER])
    cold_items, _ = ranker.recommend(cold, n=5)
    assert (cold_items >= 0).all()
    assert ranker.explain(cold, cold_items) == [["popular right now"] * 5]
    restored = pickle.loads(pickle.dumps(ranker))
    assert np.array_equal(restored.recommend(users, n=5)[0], items)

    categories = ITEM_CATEGORIES.to_numpy()
    diverse = pickle.loads(pickle.dumps(ranker))
    diverse.diversity_lambda = 0.3
    diverse_items, _ = diverse.recommend(users, n=5)
    assert np.mean([intra_list_diversity(list(row), dict(enumerate(categories))) for row in diverse_items]) > np.mean(
        [intra_list_diversity(list(row), dict(enumerate(categories))) for row in items]
    )


def test_the_most_similar_past_item_of_each_recommendation_is_the_first_with_the_largest_similarity():
    similarity_to = sp.csr_matrix(np.array([[0, 0.3, 0.3, 0], [0.5, 0, 0.1, 0.2], [0, 0, 0, 0.4], [0, 0, 0, 0]]))
    items = np.array([0, 1, 2, 3])
    past = sp.csr_matrix(np.array([[0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]))
    best, most = _most_similar_past_items(similarity_to, items, past)
    assert best.tolist() == [0.3, 0.0, 0.0, 0.0]
    assert most.tolist() == [1, 0, 0, 0]
    nobody_ordered = _most_similar_past_items(similarity_to, items, sp.csr_matrix((4, 4)))
    assert [values.tolist() for values in nobody_ordered] == [[0.0] * 4, [0] * 4]

    # against the dense reading of the rule on random data: max over the user's past items, ties to the lowest
    rng = np.random.default_rng(0)
    similarity_to = sp.random(40, 40, density=0.2, random_state=1, format="csr")
    similarity_to.data = np.round(similarity_to.data, 1)  # ties
    past = sp.random(300, 40, density=0.1, random_state=2, format="csr")
    items = rng.integers(0, 40, 300)
    best, most = _most_similar_past_items(similarity_to, items, past)
    dense = similarity_to.toarray()[items] * (past.toarray() > 0)
    assert np.allclose(best, dense.max(axis=1))
    has_best = best > 0
    assert np.array_equal(most[has_best], dense.argmax(axis=1)[has_best])


def _small_ranker_settings(num_boost_round: int, num_threads: int) -> dict:
    return dict(
        generators={"cosine": ItemCosineRecommender(neighbours=30), "popularity": PopularityRecommender()},
        item_categories=ITEM_CATEGORIES,
        candidates_per_generator=20,
        num_boost_round=num_boost_round,
        early_stopping_rounds=10,
        lgbm_params={"min_data_in_leaf": 20},
        num_threads=num_threads,
    )


def test_training_rows_built_in_batches_side_by_side_train_the_same_ranker_as_one_batch(monkeypatch):
    train, _ = temporal_split(drifting_interactions(n_users=150))
    settings = _small_ranker_settings(num_boost_round=30, num_threads=2)
    monkeypatch.setattr(ranker_module, "_BATCH_USERS", 10_000)
    whole = RankerRecommender(**settings).fit(train, items=range(N_ITEMS))
    monkeypatch.setattr(ranker_module, "_BATCH_USERS", 16)
    batched = RankerRecommender(**settings).fit(train, items=range(N_ITEMS))
    assert batched.boosters["discovery"][0].model_to_string() == whole.boosters["discovery"][0].model_to_string()


def test_a_bagged_ranker_averages_boosters_stopped_on_their_own_users_and_its_first_is_the_unbagged_one():
    train, _ = temporal_split(drifting_interactions(n_users=150))
    settings = _small_ranker_settings(num_boost_round=60, num_threads=1)
    single = RankerRecommender(**settings).fit(train, items=range(N_ITEMS))
    bagged = RankerRecommender(**settings, bagged_boosters=3).fit(train, items=range(N_ITEMS))
    boosters = bagged.boosters["discovery"]
    assert len(boosters) == 3 and len(single.boosters["discovery"]) == 1
    # The first booster has the unbagged ranker's validation users and seed; the others differ from it.
    assert boosters[0].model_to_string() == single.boosters["discovery"][0].model_to_string()
    assert len({booster.model_to_string() for booster in boosters}) == 3
    users = np.arange(0, bagged.matrix.shape[0], 5)
    local_rows, cols, features = bagged._candidates(bagged.stage, users, True)
    mean = np.mean([booster.predict(features[bagged.feature_names]) for booster in boosters], axis=0)
    np.testing.assert_allclose(bagged.score(users)[local_rows, cols], mean, rtol=1e-5)
    with pytest.raises(ValueError, match="bagged_boosters"):
        RankerRecommender(**{**settings, "bagged_boosters": 0})


def test_a_ranker_pickled_with_one_booster_per_mode_still_scores(drifting_ranker):
    ranker, _, _, _ = drifting_ranker
    state = dict(ranker.__dict__)
    state["boosters"] = {mode: boosters[0] for mode, boosters in ranker.boosters.items()}
    del state["bagged_boosters"], state["prior_generator"], state["prior_weight"], state["ease_of_recent_items"]
    del state["distance_from_recent_orders"], state["transitions_from_recent_items"]
    state["stage"] = copy.copy(ranker.stage)
    del state["stage"].recent_user_locations, state["stage"].transitions  # a stage pickled before them
    earlier = RankerRecommender.__new__(RankerRecommender)
    earlier.__setstate__(state)
    users = np.arange(6)
    np.testing.assert_array_equal(earlier.recommend(users, n=5)[0], ranker.recommend(users, n=5)[0])
    assert earlier.bagged_boosters == 1 and earlier.prior_generator is None and not earlier.ease_of_recent_items
    assert not earlier.distance_from_recent_orders and not earlier.transitions_from_recent_items


def test_a_ranker_with_a_prior_starts_its_boosters_from_that_generators_order():
    train, _ = temporal_split(drifting_interactions(n_users=150))
    settings = _small_ranker_settings(num_boost_round=60, num_threads=1)
    plain = RankerRecommender(**settings).fit(train, items=range(N_ITEMS))
    led = RankerRecommender(**settings, prior_generator="cosine").fit(train, items=range(N_ITEMS))
    # Trained from the prior, its first tree already corrects the prior instead of learning from nothing.
    first_tree = [ranker.boosters["discovery"][0].dump_model()["tree_info"][0] for ranker in (led, plain)]
    assert first_tree[0] != first_tree[1]
    # Served as trees plus prior: -prior_weight * log2(1 + the item's rank in cosine's list).
    users = np.arange(0, led.matrix.shape[0], 5)
    local_rows, cols, features = led._candidates(led.stage, users, True)
    trees = np.mean([booster.predict(features[led.feature_names]) for booster in led.boosters["discovery"]], axis=0)
    prior = -0.5 * np.log2(1.0 + features["cosine_rank"].to_numpy(np.float64))
    np.testing.assert_allclose(led.score(users)[local_rows, cols], trees + prior, rtol=1e-5)
    # A prior no tree can outweigh lists the generator's own top items.
    dominated = RankerRecommender(**settings, prior_generator="cosine", prior_weight=1e4)
    dominated.fit(train, items=range(N_ITEMS))
    cosine_lists, _ = dominated.stage.generators["cosine"].recommend(users, n=5)
    np.testing.assert_array_equal(dominated.recommend(users, n=5)[0], cosine_lists)
    with pytest.raises(ValueError, match="prior_generator 'ease' is not one of the generators"):
        RankerRecommender(**settings, prior_generator="ease")


def test_training_groups_split_by_user_keep_their_rows_and_order():
    features = pd.DataFrame({"x": np.arange(9.0)})
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=np.float32)
    # Three groups of users 4, 7 and 9 with 3, 2 and 4 rows.
    rows = (features, labels, np.array([3, 2, 4]), np.array([4, 7, 9]))
    (train_x, train_y, train_sizes), (valid_x, valid_y, valid_sizes) = _split_groups(rows, np.array([7, 8]))
    assert train_x["x"].tolist() == [0, 1, 2, 5, 6, 7, 8] and train_sizes.tolist() == [3, 4]
    assert valid_x["x"].tolist() == [3, 4] and valid_sizes.tolist() == [2]
    assert train_y.tolist() == [1, 0, 0, 1, 1, 0, 0] and valid_y.tolist() == [1, 0]


def test_top_n_of_scored_pairs_is_top_n_of_the_dense_scores():
    rng = np.random.default_rng(5)
    dense = np.full((40, 30), -np.inf, dtype=np.float32)
    scored = rng.random((40, 30)) < 0.3
    # Few distinct scores, so there are ties to break.
    dense[scored] = rng.integers(0, 4, scored.sum()).astype(np.float32)
    dense[7] = -np.inf  # a row without candidates
    rows, cols = np.nonzero(np.isfinite(dense))
    order = rng.permutation(len(rows))
    for n in (1, 5, 30):
        items, best = top_n_of_pairs(rows[order], cols[order], dense[rows, cols][order], 40, n)
        np.testing.assert_array_equal(best, top_n(dense, n)[1])
        for row in range(40):
            listed = np.flatnonzero(np.isfinite(dense[row]))
            # Best first, ties on the lower column, also at the cut (argpartition in top_n may pick either there).
            expected = listed[np.lexsort((listed, -dense[row, listed]))][:n]
            np.testing.assert_array_equal(items[row], np.r_[expected, np.full(n - len(expected), -1)])
    np.testing.assert_array_equal(top_n_of_pairs(rows, cols, dense[rows, cols], 40, 30)[0], top_n(dense, 30)[0])


def test_a_candidates_rank_in_a_list_is_looked_up_by_its_key_and_one_past_the_depth_when_unlisted():
    keys = np.array([3, 5, 7, 9, 12])
    listed, listed_ranks = np.array([5, 9, 10]), np.array([2.0, 1.0, 3.0], dtype=np.float32)
    assert _ranks_of(keys, listed, listed_ranks, unlisted=4).tolist() == [4, 2, 4, 1, 4]
    assert _ranks_of(keys, np.empty(0, np.int64), np.empty(0, np.float32), unlisted=4).tolist() == [4] * 5


def test_a_generators_lists_with_and_without_seen_items_come_from_one_pass():
    rng = np.random.default_rng(6)
    dense = rng.random((30, 25)).astype(np.float32)
    dense[rng.random((30, 25)) < 0.2] = -np.inf
    # Users with nothing seen, a few items and more seen items than any depth below.
    seen = sp.csr_matrix((rng.random((30, 25)) < np.linspace(0.0, 0.9, 30)[:, None]).astype(np.float32))
    for depth in (1, 5, 12):
        tops = _generator_tops(dense, depth, seen, (False, True))
        for exclude_seen, (items, best) in tops.items():
            expected_items, expected_best = top_n(dense, depth, seen if exclude_seen else None)
            np.testing.assert_array_equal(items, expected_items)
            np.testing.assert_array_equal(best, expected_best)
    assert list(_generator_tops(dense, 5, seen, (False,))) == [False]


def test_the_ranker_scores_both_modes_in_one_pass_as_it_scores_each_alone(drifting_ranker):
    ranker, _, _, _ = drifting_ranker
    users = np.arange(0, ranker.matrix.shape[0], 7)
    together = ranker.recommend_each(users, n=8, exclude_seen_options=(False, True))
    for exclude_seen in (False, True):
        alone = ranker.recommend(users, n=8, exclude_seen=exclude_seen)
        np.testing.assert_array_equal(together[exclude_seen][0], alone[0])
        np.testing.assert_array_equal(together[exclude_seen][1], alone[1])
    assert not np.array_equal(together[False][0], together[True][0])


def test_own_items_are_dealt_the_best_of_their_scores_by_count_and_new_items_keep_theirs():
    rng = np.random.default_rng(8)
    rows = np.repeat(np.arange(50), 12)
    scores = rng.random(len(rows))
    own = rng.random(len(rows)) < 0.4
    # Few distinct counts, so equal counts keep the order of their scores.
    counts = np.where(own, rng.integers(1, 4, len(rows)), 0).astype(float)
    dealt = own_items_by_count(rows, scores, counts)
    np.testing.assert_array_equal(dealt[~own], scores[~own])
    for row in range(50):
        mine = np.flatnonzero((rows == row) & own)
        assert sorted(dealt[mine]) == sorted(scores[mine])
        by_count = mine[np.lexsort((-scores[mine], -counts[mine]))]
        assert (np.diff(dealt[by_count]) <= 0).all()


def test_the_rankers_winback_lists_fill_its_own_item_slots_most_ordered_first():
    log = order_log(seed=0)

    def fitted(**options) -> RankerRecommender:
        return RankerRecommender(
            {"ease": EASERecommender(l2=50.0), "popularity": PopularityRecommender()},
            modes=(WINBACK,),
            candidates_per_generator=20,
            lgbm_params={"min_data_in_leaf": 50},
            num_threads=1,
            **options,
        ).fit(log, users=sorted(set(log["user_id"])), items=sorted(set(log["merchant_id"])), item_col="merchant_id")

    ranker = fitted()
    free = pickle.loads(pickle.dumps(ranker))
    free.own_items_by_count = False
    users = np.arange(ranker.matrix.shape[0])
    ordered_lists, ordered_scores = ranker.recommend(users, n=10, exclude_seen=False)
    free_lists, _ = free.recommend(users, n=10, exclude_seen=False)
    user_items = ranker.stage.history.user_items
    reordered = 0
    for user, ordered, scores, listed in zip(users, ordered_lists, ordered_scores, free_lists):
        counts = user_items[user].toarray().ravel()
        own = counts[ordered] > 0
        np.testing.assert_array_equal(own, counts[listed] > 0)
        mine, mine_scores = counts[ordered][own], scores[own]
        # Consecutive own items come most ordered first, but for equal scores, listed by item like any tie.
        assert all(a >= b or s == t for a, b, s, t in zip(mine, mine[1:], mine_scores, mine_scores[1:]))
        reordered += not np.array_equal(ordered, listed)
    # The booster alone orders some customers' own merchants otherwise; discovery lists are untouched.
    assert reordered > 0
    np.testing.assert_array_equal(ranker.recommend(users, n=10)[0], free.recommend(users, n=10)[0])

    # Without the repeat features (an ablation) the counts do not order the lists either.
    blind = fitted(without_features=("repeat",))
    blind_free = pickle.loads(pickle.dumps(blind))
    blind_free.own_items_by_count = False
    np.testing.assert_array_equal(
        blind.recommend(users, n=10, exclude_seen=False)[0], blind_free.recommend(users, n=10, exclude_seen=False)[0]
    )


def test_the_rankers_item_similarity_is_its_cosine_generators_when_they_agree(planted):
    _, _, train, _ = planted
    stages = {}
    for name, generator in {"item_cosine": ItemCosineRecommender(), "popularity": PopularityRecommender()}.items():
        ranker = RankerRecommender({name: generator})
        stages[name] = ranker._fit_stage(
            ranker._index(train, range(N_USERS), range(N_ITEMS), "user_id", "item_id", "event_time")
        )
    assert stages["item_cosine"].similarity is stages["item_cosine"].generators["item_cosine"].similarity
    assert (stages["item_cosine"].similarity != stages["popularity"].similarity).nnz == 0
    assert stages["popularity"].similarity.nnz > 0


def test_items_ordered_by_the_same_users_share_a_group():
    # Three communities of 40 users, each ordering (with some noise) from its own 8 of 24 items.
    rng = np.random.default_rng(0)
    community_of_item = np.repeat(np.arange(3), 8)
    rows, cols = [], []
    for user in range(120):
        community = user % 3
        own = np.flatnonzero(community_of_item == community)
        picks = np.concatenate([rng.choice(own, 4, replace=False), rng.choice(24, 1)])
        rows += [user] * len(picks)
        cols += picks.tolist()
    user_items = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(120, 24))
    groups = co_ordered_groups(user_items, n_groups=3, seed=0)
    assert groups.shape == (24,) and set(groups) == {0, 1, 2}
    # The groups are the communities, whatever their numbers.
    assert len(set(zip(groups, community_of_item))) == 3
    np.testing.assert_array_equal(co_ordered_groups(user_items, n_groups=3, seed=0), groups)
