"""The pipeline's recommender on a small generated marketplace: quality on the held-out window, cold start,
recovery of the generator's true tastes, MLflow pyfunc round trip, output shape."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pandas as pd
import pytest

from ml.benchmarks.synthetic import orders_of
from ml.pipeline.tracking import RecommenderPyfunc
from ml.recommend.evaluation import Judge, TemporalSplit, evaluate_spec
from ml.recommend.lifecycle import LifecycleRule
from ml.recommend.merchant import (
    DEFAULT_GENERATORS,
    MarketContext,
    ModelSpec,
    RankerRecipe,
)
from ml.recommend.modes import MODES
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace

END = dt.date(2026, 11, 1)
AS_OF = pd.Timestamp(END, tz="UTC")
RANKER = ModelSpec("ranker", {"seed": 7, "num_threads": 1})


@pytest.fixture(scope="module")
def marketplace():
    return generate_marketplace("demo", seed=7, days=30, end_date=END, n_users=2000, n_merchants=200)


@pytest.fixture(scope="module")
def context(marketplace) -> MarketContext:
    return MarketContext.from_marketplace(marketplace)


@pytest.fixture(scope="module")
def orders(marketplace) -> pd.DataFrame:
    return orders_of(marketplace)


@pytest.fixture(scope="module")
def ranker(orders, context):
    return RANKER.recommender().fit(orders, AS_OF, context)


@pytest.mark.parametrize("mode", list(MODES))
def test_ranker_beats_its_best_generator_on_the_held_out_window(mode, orders, context):
    split = TemporalSplit.last_days(orders, AS_OF, 7)
    catalog = len(context.merchants)
    ranker_ndcg = evaluate_spec(RANKER, split, catalog, context, mode=mode)["ndcg@10"]
    generators = {
        kind: evaluate_spec(spec, split, catalog, context, mode=mode)["ndcg@10"]
        for kind, spec in RankerRecipe(**RANKER.params).generator_specs().items()
    }
    assert ranker_ndcg > max(generators.values()), (ranker_ndcg, generators)


def test_cold_users_and_new_merchants_get_recommendations_with_reasons(ranker, context, orders):
    never_ordered = context.users.index.difference(orders["user_id"].unique())[:3].tolist()
    unknown = [10**9]
    recs = ranker.recommend(never_ordered + unknown, n=5)
    assert recs.groupby("user_id").size().to_dict() == {user: 5 for user in never_ordered + unknown}
    assert recs["reason"].notna().all()
    assert set(recs.loc[recs["user_id"].isin(never_ordered), "reason"]) == {"popular in your zone"}
    assert set(recs.loc[recs["user_id"].isin(unknown), "reason"]) == {"popular right now"}

    new = ranker.axes.merchant_ids[ranker.axes.new_merchants]
    assert len(new) > 0
    everyone = ranker.recommend(context.users.index, n=10)
    shown = everyone[everyone["merchant_id"].isin(new)]
    assert shown["merchant_id"].nunique() > 0
    assert shown["reason"].str.startswith("new ").any()


def _top_taste_share(recommender, truth: pd.DataFrame, categories: pd.Series, users) -> float:
    recs = recommender.recommend(users, n=10)
    recs = recs.assign(
        category=recs["merchant_id"].map(categories).to_numpy(),
        favourite=recs["user_id"].map(truth["favourite_category"]).to_numpy(),
    )
    return float((recs["category"] == recs["favourite"]).mean())


@pytest.mark.parametrize("kind", [kind for kind in DEFAULT_GENERATORS if kind != "zone_popularity"])
def test_each_taste_generator_recovers_true_tastes_better_than_popularity(kind, marketplace, context, orders):
    truth = marketplace.user_truth.set_index("user_id")
    categories = context.merchants["category"]
    users = orders["user_id"].unique()
    popularity = ModelSpec("popularity").recommender().fit(orders, AS_OF, context)
    spec = RankerRecipe(**RANKER.params).generator_specs()[kind]
    generator = spec.recommender().fit(orders, AS_OF, context)
    assert _top_taste_share(generator, truth, categories, users) > _top_taste_share(
        popularity, truth, categories, users
    )


def test_pyfunc_round_trip_recommends_like_the_model(ranker):
    users = ranker.axes.user_ids[:20].tolist()
    restored = pickle.loads(pickle.dumps(RecommenderPyfunc(ranker)))
    predicted = restored.predict(None, pd.DataFrame({"user_id": users}), {"n": 5})
    assert restored.recommender.spec == RANKER
    pd.testing.assert_frame_equal(predicted, ranker.recommend(users, n=5))


def test_exactly_n_rows_per_user_with_ranks_one_to_n(ranker, context):
    users = context.users.index[:300]
    recs = ranker.recommend(users, n=7)
    assert list(recs.columns) == ["user_id", "rank", "merchant_id", "score", "reason"]
    assert recs.groupby("user_id")["rank"].apply(list).map(lambda ranks: ranks == list(range(1, 8))).all()
    assert recs["user_id"].nunique() == len(users)
    assert not recs.duplicated(["user_id", "merchant_id"]).any()


def test_lifecycle_rule_matches_the_marts_thresholds():
    at = pd.Timestamp("2026-11-01", tz="UTC")
    signup = pd.Series(
        pd.to_datetime(["2026-10-25", "2026-08-01", "2026-08-01", "2026-08-01", "2026-01-01"], utc=True),
        index=[1, 2, 3, 4, 5],
    )
    orders = pd.DataFrame(
        {
            "user_id": [2, 3, 4],
            "merchant_id": 1,
            "event_time": pd.to_datetime(["2026-10-30", "2026-10-20", "2026-10-10"], utc=True),
        }
    )
    segments = LifecycleRule.from_settings(Settings()).segments(orders, signup, at)
    assert segments.to_dict() == {1: "new", 2: "active", 3: "at_risk", 4: "lapsed", 5: "churned"}


def test_judge_scores_both_modes_and_segments(orders, context):
    split = TemporalSplit.last_days(orders, AS_OF, 7)
    segments = LifecycleRule.from_settings(Settings()).segments(split.train, context.users["signup_at"], split.cut)
    judge = Judge(split, len(context.merchants), context.merchants["category"].to_dict(), segments)
    card = judge.scorecard(ModelSpec("popularity").recommender().fit(split.train, split.cut, context))
    assert set(card) == {"discovery", "winback"}
    assert card["winback"].overall["users"] >= card["discovery"].overall["users"] > 0
    assert sum(r["users"] for r in card["discovery"].by_segment.values()) == card["discovery"].overall["users"]
    assert np.isfinite(card["discovery"].overall["novelty"])


def test_refit_keeps_the_learned_ranker_and_serves_the_new_window(orders, context):
    cut = AS_OF - pd.Timedelta(days=7)
    judged = RANKER.recommender().fit(orders[orders["event_time"] < cut], cut, context)
    served = judged.refit(orders, AS_OF, context)
    assert served.ranker.boosters is judged.ranker.boosters
    late_users = sorted(set(orders["user_id"]) - set(orders.loc[orders["event_time"] < cut, "user_id"]))
    assert late_users, "the window should bring users who first ordered after the cut"
    recs = served.recommend(late_users[:20], n=10)
    # Users known only from the new window get personalised lists (not the cold-start zone list).
    assert not recs["reason"].isin(["popular in your zone", "popular right now"]).all()
    assert served.trained_until == AS_OF and judged.trained_until == cut
    assert judged.recommend(late_users[:20], n=10)["reason"].isin(["popular in your zone", "popular right now"]).all()


def test_sampled_split_judges_a_seeded_subset_in_both_modes(orders):
    split = TemporalSplit.last_days(orders, AS_OF, 7)
    sample = split.sample(100, seed=3)
    assert len(sample.relevant_with_repeats) == 100
    assert set(sample.relevant) <= set(sample.relevant_with_repeats)
    assert sample.relevant == {u: split.relevant[u] for u in sample.relevant_with_repeats if u in split.relevant}
    assert split.sample(100, seed=3).relevant_with_repeats == sample.relevant_with_repeats
    assert split.sample(10**6, seed=3) is split


def test_split_after_the_last_order_has_nothing_to_judge(orders):
    """A run date weeks after the data ends: an empty held-out window, not a crash inside pandas."""
    split = TemporalSplit.last_days(orders, AS_OF + pd.Timedelta(days=30), 7)

    assert split.relevant == {} and split.relevant_with_repeats == {}
    assert len(split.train) == len(orders)
