"""MLflow on the warehouse: registered versions, aliases, the champion/challenger gate, pyfunc scoring."""

from __future__ import annotations

from datetime import UTC, datetime

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from old_release import OldRelease

from ml.pipeline import tracking
from ml.recommend.merchant import MerchantRecommender, ModelSpec

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def orders() -> pd.DataFrame:
    # Users 1-3 order from merchants 10 and 11 together; user 4 only from 10; merchant 12 is popular alone.
    rows = [(1, 10), (1, 11), (2, 10), (2, 11), (3, 10), (3, 11), (4, 10), (5, 12), (6, 12), (7, 12), (8, 12), (9, 12)]
    return pd.DataFrame(
        {
            "user_id": [str(u) for u, _ in rows],
            "merchant_id": [str(m) for _, m in rows],
            "event_time": pd.Timestamp("2026-10-20", tz="UTC"),
            "order_total": 40.0,
        }
    )


def _register(settings, orders, spec: ModelSpec) -> str:
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, "gate-test")):
        model = MerchantRecommender(spec).fit(orders, AS_OF)
        return tracking.log_model(tracking.RecommenderPyfunc(model), "gate-test-model")


def test_gate_promotes_first_then_only_a_better_challenger(settings, warehouse_url, orders):
    tracking.configure(settings, warehouse_url)
    first = _register(settings, orders, ModelSpec("item_cosine"))
    decision = tracking.gate("gate-test-model", first, "ndcg@10", 0.20, champion_value=None, margin=0.0)
    assert decision.promoted and tracking.alias_version("gate-test-model", "champion") == first

    worse = _register(settings, orders, ModelSpec("popularity"))
    decision = tracking.gate("gate-test-model", worse, "ndcg@10", 0.15, champion_value=0.20, margin=0.0)
    assert not decision.promoted and "stays" in decision.reason
    assert tracking.alias_version("gate-test-model", "champion") == first
    assert tracking.alias_version("gate-test-model", "challenger") == worse

    marginal = _register(settings, orders, ModelSpec("item_cosine"))
    decision = tracking.gate("gate-test-model", marginal, "ndcg@10", 0.205, champion_value=0.20, margin=0.05)
    assert not decision.promoted

    better = _register(settings, orders, ModelSpec("item_cosine"))
    decision = tracking.gate("gate-test-model", better, "ndcg@10", 0.30, champion_value=0.20, margin=0.05)
    assert decision.promoted and tracking.alias_version("gate-test-model", "champion") == better

    # The champion's own recipe refitted on newer data replaces it, even on an equal score.
    refreshed = _register(settings, orders, ModelSpec("item_cosine"))
    decision = tracking.gate(
        "gate-test-model", refreshed, "ndcg@10", 0.30, champion_value=0.30, margin=0.05, same_recipe=True
    )
    assert decision.promoted and "same recipe" in decision.reason
    assert tracking.alias_version("gate-test-model", "champion") == refreshed


def test_scoring_loads_whatever_has_the_champion_alias(settings, warehouse_url, orders):
    tracking.configure(settings, warehouse_url)
    cosine = _register(settings, orders, ModelSpec("item_cosine"))
    popularity = _register(settings, orders, ModelSpec("popularity"))
    client = MlflowClient()

    client.set_registered_model_alias("gate-test-model", "champion", popularity)  # as a person would in the UI
    assert tracking.load_alias("gate-test-model").recommender.spec.kind == "popularity"
    client.set_registered_model_alias("gate-test-model", "champion", cosine)
    champion = tracking.load_alias("gate-test-model")
    assert champion.recommender.spec.kind == "item_cosine"

    # The pyfunc takes user ids; user 4 ordered only from 10, and 11 is what 10's co-customers also use.
    loaded = mlflow.pyfunc.load_model("models:/gate-test-model@champion")
    top = loaded.predict(pd.DataFrame({"user_id": ["4"]}), params={"n": 1})
    assert top["merchant_id"].tolist() == ["11"]
    # The mode param reaches the model: winback may list 10, the only merchant user 4 ever ordered from.
    for mode, expected in (("winback", {"10", "11"}), ("discovery", {"11", "12"})):
        listed = loaded.predict(pd.DataFrame({"user_id": ["4"]}), params={"n": 2, "mode": mode})
        assert set(listed["merchant_id"]) == expected
    # An unknown user falls back to the most popular merchant rather than failing.
    unknown = loaded.predict(pd.DataFrame({"user_id": ["999"]}), params={"n": 1})
    assert unknown["merchant_id"].tolist() == ["12"]


def test_a_champion_this_code_cannot_load_is_judged_as_absent(settings, warehouse_url, orders, tmp_path, monkeypatch):
    """An upgrade: @champion was logged by a release whose classes no longer exist. The gate must not crash on it;
    the challenger is judged as the first model and replaces it."""
    tracking.configure(settings, warehouse_url)
    old_release = OldRelease(tmp_path, monkeypatch)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, "gate-test")):
        old = old_release.log(MerchantRecommender(ModelSpec("popularity")).fit(orders, AS_OF), "gate-test-model")
    MlflowClient().set_registered_model_alias("gate-test-model", "champion", old)
    assert tracking.loadable_champion("gate-test-model").recommender.spec.kind == "popularity"

    old_release.upgrade()

    assert tracking.loadable_champion("gate-test-model") is None
    challenger = _register(settings, orders, ModelSpec("item_cosine"))
    decision = tracking.gate("gate-test-model", challenger, "ndcg@10", 0.2, champion_value=None, margin=0.0)
    assert decision.promoted and tracking.alias_version("gate-test-model", "champion") == challenger


def test_a_champion_differing_only_in_threads_has_the_challengers_recipe():
    """The gate replaces a champion of the same recipe; a thread count is how a fit runs, not what it fits, so a
    changed REKINDLE_MODEL_THREADS must not make every later ranker a rival that has to beat its own twin."""
    recipe = {"candidates_per_generator": 50, "seed": 42}
    one_thread = ModelSpec("ranker", {**recipe, "num_threads": 1})
    assert one_thread.same_recipe(ModelSpec("ranker", {**recipe, "num_threads": 0}))
    assert not one_thread.same_recipe(ModelSpec("ranker", {**recipe, "candidates_per_generator": 60}))
    assert not one_thread.same_recipe(ModelSpec("ranker", {"seed": 42, "num_threads": 1}))
    assert not ModelSpec("als", {"seed": 42}).same_recipe(ModelSpec("ease", {"seed": 42}))
