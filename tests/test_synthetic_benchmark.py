"""``rekindle benchmark synthetic --ablation``: the ranker with and without its context and repeat features,
beside the best single generator, in both modes, on one split of a tiny world."""

from __future__ import annotations

import datetime as dt

import pytest

from ml.benchmarks.synthetic import ABLATION_COLUMNS, ABLATION_VARIANTS
from ml.cli import main as rekindle
from ml.recommend.merchant import DEFAULT_GENERATORS
from ml.recommend.modes import MODES
from ml.synthetic.marketplace import generate_marketplace

END_DATE = dt.date(2026, 11, 1)


def ablation_tables(printed: str) -> dict[str, dict[str, list[float]]]:
    """mode -> row name -> its numbers, from the ``ablation, <mode> mode`` tables."""
    tables, mode = {}, None
    for line in printed.splitlines():
        if line.startswith("ablation, "):
            mode = line.removeprefix("ablation, ").removesuffix(" mode")
            tables[mode] = {}
            continue
        tokens = line.split()
        if mode is None or len(tokens) <= len(ABLATION_COLUMNS):
            continue
        try:
            numbers = [float(token) for token in tokens[-len(ABLATION_COLUMNS) :]]
        except ValueError:
            continue
        tables[mode][" ".join(tokens[: -len(ABLATION_COLUMNS)])] = numbers
    return tables


@pytest.fixture(scope="module")
def world_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    generate_marketplace(seed=5, days=30, end_date=END_DATE, n_users=300, n_merchants=30).write(folder)
    return folder


def test_ablation_prints_the_four_variants_and_the_best_generator_in_both_modes(world_folder, capsys):
    argv = ["benchmark", "synthetic", "--data", str(world_folder), "--end-date", END_DATE.isoformat()]
    assert rekindle([*argv, "--threads", "1", "--ablation"]) == 0
    tables = ablation_tables(capsys.readouterr().out)

    assert list(tables) == list(MODES)
    for mode, rows in tables.items():
        assert list(rows)[: len(ABLATION_VARIANTS)] == list(ABLATION_VARIANTS), mode
        best = [name for name in rows if name.startswith("best generator (")]
        assert len(best) == 1 and len(rows) == len(ABLATION_VARIANTS) + 1, mode
        assert best[0].removeprefix("best generator (").removesuffix(")") in DEFAULT_GENERATORS, mode
        assert all(0.0 <= value <= 1.0 for numbers in rows.values() for value in numbers), mode
    # Each variant is its own model: leaving features out changes what the ranker recommends.
    assert any(len({tuple(tables[mode][name]) for name in ABLATION_VARIANTS}) > 1 for mode in MODES)
