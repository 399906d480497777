"""The win-back baselines on a hand-built order log whose lists are worked out by hand.

Orders (user: item x count, last time):
  a: m0 x2 (t=100), m1 x2 (t=300), m2 x1 (t=400)
  b: m3 x1 (t=50)
  c: m0 x1 (t=10), m3 x3 (t=20)
  d: no orders
Users per item (the popularity fill): m0 2, m1 1, m2 1, m3 2, m4 0; equal scores go to the lower index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ml.recommend import FrequentItemsRecommender, InteractionMatrix, RecentItemsRecommender, last_interaction_times

ITEMS = ["m0", "m1", "m2", "m3", "m4"]
USERS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def orders():
    rows = [
        ("a", "m0", 20),
        ("a", "m0", 100),
        ("a", "m1", 30),
        ("a", "m1", 300),
        ("a", "m2", 400),
        ("b", "m3", 50),
        ("c", "m0", 10),
        ("c", "m3", 5),
        ("c", "m3", 20),
        ("c", "m3", 15),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])
    matrix = InteractionMatrix.from_frame(frame, users=USERS, items=ITEMS)
    return matrix, last_interaction_times(frame, matrix)


def lists(model, users, exclude_seen=False):
    items, _ = model.recommend(np.array(users), n=len(ITEMS), exclude_seen=exclude_seen)
    return [[ITEMS[i] if i >= 0 else None for i in row] for row in items]


def test_last_interaction_times_keep_the_latest_time_per_pair(orders):
    matrix, last_times = orders
    assert last_times.toarray().tolist() == [
        [100, 300, 400, 0, 0],
        [0, 0, 0, 50, 0],
        [10, 0, 0, 20, 0],
        [0, 0, 0, 0, 0],
    ]


def test_frequent_items_break_count_ties_by_the_later_order(orders):
    matrix, last_times = orders
    model = FrequentItemsRecommender().fit(matrix.csr, last_times)
    assert lists(model, [0, 1, 2, 3]) == [
        ["m1", "m0", "m2", "m3", "m4"],  # m0 and m1 both twice; m1 was ordered later
        ["m3", "m0", "m1", "m2", "m4"],
        ["m3", "m0", "m1", "m2", "m4"],
        ["m0", "m3", "m1", "m2", "m4"],  # no orders: popularity alone
    ]


def test_frequent_items_without_times_break_count_ties_by_popularity(orders):
    matrix, _ = orders
    model = FrequentItemsRecommender().fit(matrix.csr)
    assert lists(model, [0]) == [["m0", "m1", "m2", "m3", "m4"]]  # m0 has two users, m1 one


def test_recent_items_put_the_latest_order_first(orders):
    matrix, last_times = orders
    model = RecentItemsRecommender().fit(matrix.csr, last_times)
    assert lists(model, [0, 2, 3]) == [
        ["m2", "m1", "m0", "m3", "m4"],
        ["m3", "m0", "m1", "m2", "m4"],
        ["m0", "m3", "m1", "m2", "m4"],
    ]


def test_discovery_leaves_only_the_popular_items_the_user_never_had(orders):
    matrix, last_times = orders
    for model in (FrequentItemsRecommender(), RecentItemsRecommender()):
        model.fit(matrix.csr, last_times)
        assert lists(model, [0], exclude_seen=True) == [["m3", "m4", None, None, None]]


def test_recent_items_need_the_times(orders):
    matrix, _ = orders
    with pytest.raises(ValueError, match="needs last_times"):
        RecentItemsRecommender().fit(matrix.csr)
    with pytest.raises(ValueError, match="shape"):
        FrequentItemsRecommender().fit(matrix.csr, sp.csr_matrix((2, len(ITEMS))))
