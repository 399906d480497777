"""The Hillstrom offers benchmark: CausalML's learners on a planted-effect RCT, the CLI end to end on a slice of
the real data (skipped without the data), and causalml kept out of the CLI's and the pipeline's imports."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ml.benchmarks import offers
from ml.offers.evaluation import ipw_policy_value, uniform_policy_values, uplift_at_k_ratio
from ml.offers.uplift import BoosterConfig

CONTROL = "none"
SMALL = BoosterConfig(num_leaves=4, min_child_samples=100, n_seeds=2)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    offers.add_arguments(parser)
    return parser.parse_args(argv)


def _uniform_draws(seed, n_rows: int) -> np.ndarray:
    """The rule's uniforms rebuilt from the raw PCG64 stream (a double is the top 53 bits of a 64-bit word),
    not through the Generator call the implementation makes."""
    return (np.random.PCG64(seed).random_raw(n_rows) >> np.uint64(11)) * 2.0**-53


def test_test_split_is_exactly_the_documented_rule():
    # A row is a test row when its uniform draw from PCG64(seed) is below 0.3; the published splits 100-111 rest
    # on these rows, so the first test rows of split 100 are pinned as well.
    test = offers.test_mask(64_000, seed=100)
    assert np.flatnonzero(test[:30]).tolist() == [2, 3, 9, 11, 29]
    assert np.array_equal(test, _uniform_draws(100, 64_000) < 0.3)
    assert test.mean() == pytest.approx(0.3, abs=0.01)
    # Validation rows come from PCG64([seed, 1]) over the train rows only: another stream than the test split's.
    validation = offers.validation_mask(int((~test).sum()), seed=100)
    assert np.array_equal(validation, _uniform_draws([100, 1], len(validation)) < 0.3)
    assert not np.array_equal(validation, _uniform_draws(100, len(validation)) < 0.3)
    assert not np.array_equal(test, offers.test_mask(64_000, seed=101))


def test_default_seeds_are_the_unused_ones_and_seed_lists_parse(tmp_path):
    (tmp_path / "x.csv").touch()
    assert _parse(["--hillstrom", str(tmp_path / "x.csv")]).seeds == tuple(range(100, 112))
    assert offers.parse_seeds("100-103,110") == (100, 101, 102, 103, 110)


def test_causalml_stays_out_of_the_cli_and_the_daily_pipeline_imports():
    code = (
        "import sys; import ml.cli, ml.benchmarks.offers, ml.offers.response; ml.cli.build_parser(); "
        "assert 'causalml' not in sys.modules, 'causalml imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def planted_rct(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Arms none / a / b with probability 1/3 each; "a" lifts the response by 0.3 where x1 > 0 and lowers it by 0.1
    elsewhere, "b" lifts it by 0.1 everywhere; x2 moves the baseline only, platform is noise. Best uniform arm:
    0.3, the best policy ("a" where x1 > 0, else "b"): 0.4."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {"x1": rng.normal(size=n), "x2": rng.normal(size=n), "platform": rng.choice(["ios", "android", "web"], n)}
    )
    arm = rng.choice([CONTROL, "a", "b"], n)
    p = 0.2 + 0.1 * np.tanh(X["x2"].to_numpy())
    p = p + np.where(arm == "a", np.where(X["x1"] > 0, 0.3, -0.1), 0.0) + np.where(arm == "b", 0.1, 0.0)
    return X, arm, (rng.random(n) < p).astype(float)


@pytest.fixture(scope="module")
def rct():
    X, arm, y = planted_rct(9000, seed=11)
    return X, arm, y, np.arange(len(y)) < 6000


@pytest.mark.parametrize("kind", ["t", "x", "r", "dr"])
def test_causalml_learners_rank_the_planted_responders_first_and_beat_every_uniform_arm(rct, kind):
    from ml.benchmarks.causalml_learners import CausalMLLearner

    X, arm, y, train = rct
    learner = CausalMLLearner(
        kind, CONTROL, outcome_config=SMALL, effect_config=SMALL, propensities=dict.fromkeys([CONTROL, "a", "b"], 1 / 3)
    )
    outcomes = learner.fit(X[train], arm[train], y[train]).predict_outcomes(X[~train])
    assert list(outcomes.columns) == [CONTROL, "a", "b"]
    test_arm, test_y = arm[~train], y[~train]
    pair = np.isin(test_arm, [CONTROL, "a"])
    uplift = (outcomes["a"] - outcomes[CONTROL]).to_numpy()
    # Random targeting is 1.0; the top 30% by predicted uplift are nearly all x1 > 0, whose uplift is 3x the mean.
    assert uplift_at_k_ratio(uplift[pair], test_arm[pair] == "a", test_y[pair], 0.3) > 2.0
    assert np.corrcoef(uplift, X["x1"][~train] > 0)[0, 1] > 0.7
    chosen = outcomes.idxmax(axis=1).to_numpy()
    value = ipw_policy_value(chosen, test_arm, test_y, 1 / 3)
    assert value > max(uniform_policy_values([CONTROL, "a", "b"], test_arm, test_y, 1 / 3).values()) + 0.05


def test_benchmark_runs_on_a_slice_and_writes_the_policy(shared_data, tmp_path, capsys):
    out = tmp_path / "policy.csv"
    argv = ["--hillstrom", str(shared_data / "hillstrom" / "hillstrom.csv"), "--seeds", "100", "--rows", "6000"]
    args = _parse([*argv, "--outcomes", "visit", "--learners", "r", "causalml-t", "--out", str(out)])
    assert offers.run(args) == 0

    printed = capsys.readouterr()
    assert "outcome: visit" in printed.out
    for row in ("random targeting", "uniform Mens E-Mail", "R-learner", "CausalML T", "selected on validation"):
        assert row in printed.out
    for column in ("uplift@30% mean", "policy - best uniform mean", "best uniform"):
        assert column in printed.out
    assert "[offers] visit seed 100" in printed.err

    policy = pd.read_csv(out)
    assert list(policy.columns) == ["row", "uplift_mens_vs_none_visit", "chosen_arm_visit"]
    assert policy["row"].tolist() == np.flatnonzero(offers.test_mask(6000, 100)).tolist()
    assert set(policy["chosen_arm_visit"]) <= set(offers.ARMS)
    assert policy["uplift_mens_vs_none_visit"].notna().all()
