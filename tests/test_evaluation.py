"""Ranking metrics against hand-computed cases."""

import math

import pytest

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
