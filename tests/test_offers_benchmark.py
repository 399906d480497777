"""The Hillstrom offers benchmark end to end on a slice of the real data (skipped without the data)."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ml.benchmarks import offers


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    offers.add_arguments(parser)
    return parser.parse_args(argv)


def test_test_split_is_exactly_the_documented_rule():
    mask = offers.test_mask(1000, seed=3)
    assert np.array_equal(mask, np.random.default_rng(3).random(1000) < 0.3)


def test_benchmark_runs_on_a_slice_and_writes_the_policy(shared_data, tmp_path, capsys):
    out = tmp_path / "policy.csv"
    args = _parse(
        [
            "--hillstrom",
            str(shared_data / "hillstrom" / "hillstrom.csv"),
            "--seed",
            "0",
            "--rows",
            "6000",
            "--outcomes",
            "visit",
            "--out",
            str(out),
        ]
    )
    assert offers.run(args) == 0

    printed = capsys.readouterr()
    assert "outcome: visit" in printed.out
    for row in ("random targeting", "uniform Mens E-Mail", "model uplift@30% (x random)", "model policy value"):
        assert row in printed.out
    assert "[offers] visit seed 0" in printed.err

    policy = pd.read_csv(out)
    assert list(policy.columns) == ["row", "uplift_mens_vs_none_visit", "chosen_arm_visit"]
    assert policy["row"].tolist() == np.flatnonzero(offers.test_mask(6000, 0)).tolist()
    assert set(policy["chosen_arm_visit"]) <= set(offers.ARMS)
    assert policy["uplift_mens_vs_none_visit"].notna().all()
