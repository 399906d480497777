"""Ranking metrics against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from ml.recommend.evaluation import Judge, TemporalSplit
from ml.recommend.metrics import (
    average_precision_at_k,
    catalog_coverage,
    hit_rate_at_k,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    precision_at_k,
    ranking_report,
    recall_at_k,
    summarise,
    user_metrics,
)

RECOMMENDED = ["a", "b", "c", "d", "e"]
RELEVANT = {"b", "d", "z"}


def test_precision_recall_hit_rate():
    assert precision_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(2 / 5)
    assert precision_at_k(RECOMMENDED, RELEVANT, 2) == pytest.approx(1 / 2)
    assert precision_at_k(["b"], RELEVANT, 5) == pytest.approx(1 / 5)
    assert recall_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RECOMMENDED, set(), 5) == 0.0
    assert hit_rate_at_k(RECOMMENDED, RELEVANT, 1) == 0.0
    assert hit_rate_at_k(RECOMMENDED, RELEVANT, 2) == 1.0


def test_ndcg_uses_ideal_over_min_relevant_and_k():
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx(dcg / ideal)
    # Only two slots, so the ideal holds two hits although three items are relevant.
    assert ndcg_at_k(["b", "d"], RELEVANT, 2) == pytest.approx(1.0)
    assert ndcg_at_k(RECOMMENDED, set(), 5) == 0.0


def test_average_precision_denominator_is_min_relevant_and_k():
    assert average_precision_at_k(RECOMMENDED, RELEVANT, 5) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert average_precision_at_k(["b", "x"], RELEVANT, 1) == pytest.approx(1.0)
    assert average_precision_at_k(["x", "b"], {"b"}, 2) == pytest.approx(1 / 2)


def test_coverage_diversity_novelty():
    assert catalog_coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(0.3)
    categories = {"a": "pizza", "b": "pizza", "c": "sushi"}
    # Pairs (a,b) same, (a,c) and (b,c) differ.
    assert intra_list_diversity(["a", "b", "c"], categories) == pytest.approx(2 / 3)
    assert intra_list_diversity(["a"], categories) == 0.0
    popularity = {"a": 0.5, "b": 0.25}
    assert novelty(["a", "b"], popularity) == pytest.approx(1.5)
    assert novelty(["c"], popularity) == pytest.approx(2.0)


def test_ranking_report_averages_over_users_with_relevant_items():
    recommended = {1: ["a", "b"], 2: ["c", "d"], 3: ["a"]}
    relevant = {1: {"a"}, 2: {"x"}, 3: set(), 4: {"a"}}
    report = ranking_report(
        recommended, relevant, catalog_size=4, ks=(1, 2), item_categories={"a": 1, "b": 2}, item_popularity={"a": 0.5}
    )
    assert report["users"] == 3
    assert report["precision@1"] == pytest.approx(1 / 3)
    assert report["precision@2"] == pytest.approx((1 / 2) / 3)
    assert report["hit_rate@2"] == pytest.approx(1 / 3)
    assert report["ndcg@2"] == pytest.approx(1 / 3)
    assert report["map@2"] == pytest.approx(1 / 3)
    assert report["recall@2"] == pytest.approx(1 / 3)
    assert report["coverage"] == pytest.approx(4 / 4)
    assert report["diversity"] == pytest.approx((1.0 + 0.0) / 2)
    assert set(report) >= {"precision@1", "recall@2", "ndcg@1", "map@1", "coverage", "diversity", "novelty"}


def test_user_metrics_match_the_pure_functions_user_by_user():
    rng = np.random.default_rng(7)
    items = [f"m{i}" for i in range(30)]
    categories = {item: i % 4 for i, item in enumerate(items[:25])}  # the last five have no category
    popularity = {item: (i + 1) / 40 for i, item in enumerate(items[:20])}
    recommended, relevant = {}, {}
    for user in range(300):
        recommended[user] = list(rng.choice(items, size=int(rng.integers(0, 13)), replace=False))
        relevant[user] = set(rng.choice(items, size=int(rng.integers(0, 6)), replace=False))
    ks = (1, 5, 10)
    per_user = user_metrics(recommended, relevant, ks, categories, popularity)
    assert list(per_user.index) == [user for user in relevant if relevant[user]]
    floor = min(popularity.values())
    for user, row in per_user.iterrows():
        top = recommended[user][:10]
        for k in ks:
            for name, metric in (
                ("precision", precision_at_k),
                ("recall", recall_at_k),
                ("hit_rate", hit_rate_at_k),
                ("ndcg", ndcg_at_k),
                ("map", average_precision_at_k),
            ):
                assert row[f"{name}@{k}"] == pytest.approx(metric(top, relevant[user], k)), (user, name, k)
        if len(top) > 1:
            assert row["diversity"] == pytest.approx(intra_list_diversity(top, categories))
        else:
            assert np.isnan(row["diversity"])
        assert (np.isnan(row["novelty"]) and not top) or row["novelty"] == pytest.approx(
            novelty(top, popularity, floor)
        )
    segment = per_user.index.to_series().map(lambda user: user % 3 == 0)
    some = per_user[segment.to_numpy()]
    assert summarise(some, 30)["ndcg@10"] == pytest.approx(
        ranking_report({u: recommended[u] for u in some.index}, {u: relevant[u] for u in some.index}, 30, ks)["ndcg@10"]
    )


def test_temporal_split_keeps_known_users_and_separates_new_merchants_from_repeats():
    at = pd.Timestamp("2026-01-10", tz="UTC")
    orders = pd.DataFrame(
        [
            ("u1", "a", "2026-01-01"),
            ("u1", "b", "2026-01-02"),
            ("u2", "a", "2026-01-02"),
            ("u1", "a", "2026-01-08"),  # a repeat
            ("u1", "c", "2026-01-09"),  # new to u1
            ("u2", "b", "2026-01-08"),  # new to u2, though u1 ordered there
            ("u3", "a", "2026-01-08"),  # u3 has no order before the cut
            ("u2", "c", "2026-01-10"),  # at as_of: outside the test window
        ],
        columns=["user_id", "merchant_id", "event_time"],
    ).assign(event_time=lambda f: pd.to_datetime(f["event_time"], utc=True))
    split = TemporalSplit.last_days(orders, at, 3)
    assert len(split.train) == 3
    assert split.relevant == {"u1": {"c"}, "u2": {"b"}}
    assert split.relevant_with_repeats == {"u1": {"a", "c"}, "u2": {"b"}}


class _FixedLists:
    """A recommender stand-in whose lists are given: rows out of order, as a model may return them."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.asked: list[list] = []

    def recommend(self, users, n, mode, explain):
        self.asked.append(list(users))
        return self.frame[self.frame["user_id"].isin(users)]


def test_judge_lists_are_each_users_merchants_in_rank_order():
    split = TemporalSplit(cut=None, train=pd.DataFrame(), relevant={}, relevant_with_repeats={7: {1}, 3: {2}})
    recs = pd.DataFrame({"user_id": [7, 3, 7, 3, 7], "rank": [3, 2, 1, 1, 2], "merchant_id": [30, 20, 10, 40, 50]})
    lists = Judge(split, catalog_size=60).lists(_FixedLists(recs), "winback")
    assert lists == {3: [40, 20], 7: [10, 50, 30]}

    # with two workers each scores half of the test users, and the lists are the same
    in_parts = _FixedLists(recs)
    assert Judge(split, catalog_size=60, workers=2).lists(in_parts, "winback") == lists
    assert sorted(map(sorted, in_parts.asked)) == [[3], [7]]
    assert Judge(split, catalog_size=60, workers=3).lists(_FixedLists(recs), "winback") == lists


@pytest.mark.parametrize(
    ("days_ago", "advice"),
    [
        (
            [3, 2, 1],
            "the first order is from 2026-11-28: load earlier orders, or lower REKINDLE_EVAL_TEST_DAYS below "
            "the 3 days the orders reach back",
        ),
        (
            [30, 25, 20],
            "no user who ordered before them ordered in them (the latest order is from 2026-11-11): run "
            "a date the data reaches, or raise REKINDLE_EVAL_TEST_DAYS",
        ),
    ],
    ids=["too little history", "none in the window"],
)
def test_a_day_with_nothing_to_judge_the_ranker_on_says_which_way_to_move_the_window(days_ago, advice):
    from datetime import date

    from ml.pipeline.tasks import as_of, nothing_to_judge_on

    run_date = date(2026, 12, 1)
    orders = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "merchant_id": ["m1", "m2", "m1"],
            "event_time": [pd.Timestamp(run_date, tz="UTC") - pd.Timedelta(days=d) for d in days_ago],
        }
    )
    split = TemporalSplit.last_days(orders, as_of(run_date), 7)
    assert not split.relevant_with_repeats

    message = nothing_to_judge_on(orders, run_date, 7, split.cut)
    assert message.startswith("the models are judged on the 7 days before 2026-12-01 (REKINDLE_EVAL_TEST_DAYS)")
    assert message.endswith(advice)
