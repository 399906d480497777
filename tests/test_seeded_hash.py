"""One seeded hash (ml.experiments.assignment.hash_unit) behind the experiment's arms, the offer policy's holdout
and the offer model's user splits and folds; it never rounds up to 1.0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.experiments.assignment import HOLDOUT, PERSONALISED, assign_arms, hash_unit, unit_interval
from ml.offers.policy import OfferPolicy
from ml.offers.response import split_by_user, user_folds

USERS = np.arange(1, 3001)


def test_the_float_rounding_flaw_is_gone():
    top = 2**64 - 1  # the largest first 8 bytes a sha256 can have
    assert top / 2**64 == 1.0  # dividing all 64 bits rounds up to 1.0: a user beyond every share
    assert unit_interval(top) < 1.0
    assert unit_interval(0) == 0.0
    units = np.array([hash_unit("c", u) for u in USERS])
    assert ((units >= 0) & (units < 1)).all()


def test_an_integer_unit_hashes_the_same_whatever_its_type():
    assert hash_unit("c", 42) == hash_unit("c", np.int64(42)) == hash_unit("c", "42")
    assert hash_unit("c", 42) != hash_unit("c", 43)
    assert hash_unit(7, 42) == hash_unit("7", 42)


def test_experiment_arms_offer_holdout_and_offer_model_splits_draw_from_the_same_hash():
    campaign = "winback-2026-03-01"
    units = np.array([hash_unit(campaign, u) for u in USERS])
    arms = assign_arms(campaign, USERS, holdout_share=0.1, personalised_share=0.45)
    assert ((arms == HOLDOUT).to_numpy() == (units < 0.1)).all()

    p = pd.DataFrame({"none": 0.1, "a": np.linspace(0.2, 0.3, len(USERS))})
    policy = OfferPolicy(campaign, {"a": 1.0, "b": 1.0}, margin_rate=0.3, personalised_share=0.45, default_arm="b")
    decided = policy.decide(USERS, p, pd.DataFrame(100.0, index=p.index, columns=p.columns))
    assert (decided["experiment_arm"].to_numpy() == arms.to_numpy()).all()
    assert (decided["holdout"].to_numpy() == (units < 0.1)).all()

    seed = 11
    history = pd.DataFrame({"user_id": np.repeat(USERS, 2)})
    seeded = np.array([hash_unit(seed, u) for u in history["user_id"]])
    _, test = split_by_user(history, 0.3, seed)
    assert (history.index.isin(test.index) == (seeded < 0.3)).all()
    assert (user_folds(history, 3, seed) == np.floor(seeded * 3)).all()


def test_string_ids_hash_as_their_text_and_get_arms():
    uuid_ids = [f"8c5e3f1a-0000-4000-8000-{n:012d}" for n in range(2_000)]
    assert hash_unit("c", uuid_ids[0]) == hash_unit("c", str(uuid_ids[0]))
    assert hash_unit("c", "0042") != hash_unit("c", "42")  # a leading zero makes another id
    # The text the warehouse holds for an integer id draws what the integer drew before ids were text.
    assert hash_unit("winback-2026-01-01", "4") == hash_unit("winback-2026-01-01", 4)

    arms = assign_arms("winback-2026-03-01", uuid_ids, holdout_share=0.1, personalised_share=0.45)

    assert list(arms.index) == uuid_ids
    shares = arms.value_counts(normalize=True)
    assert shares[HOLDOUT] == pytest.approx(0.10, abs=0.03)
    assert shares[PERSONALISED] == pytest.approx(0.45, abs=0.04)
