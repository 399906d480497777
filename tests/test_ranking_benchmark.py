"""``rekindle benchmark ranking``: the split protocol, a CSV input, and a MovieLens slice when the data is present."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ml.benchmarks import ranking
from ml.recommend import temporal_split

MODELS = ["random", "popularity", "cosine", "als", "ease", "category", "ranker"]


def run_benchmark(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    ranking.add_arguments(parser)
    return ranking.run(parser.parse_args(argv))


def _is_table_row(line: str) -> bool:
    tokens = line.split()
    if len(tokens) < 8 or tokens[0] not in MODELS:
        return False
    try:
        [float(token) for token in tokens[-7:]]
    except ValueError:
        return False
    return True


def test_split_keeps_the_first_ceil_80_percent_of_each_user():
    frame = pd.DataFrame(
        {
            "user_id": [1] * 15 + [2] * 2 + [3],
            "item_id": list(range(15)) + [7, 5] + [1],
            "event_time": list(range(15, 0, -1)) + [100, 100] + [5],
        }
    )
    train, test = temporal_split(frame, 0.8)
    # ceil(0.8 * 15) = 12 (not 13 from 0.8 * 15 = 12.000000000000002), ceil(1.6) = 2, ceil(0.8) = 1.
    assert train.groupby("user_id").size().to_dict() == {1: 12, 2: 2, 3: 1}
    assert set(test.loc[test["user_id"] == 1, "item_id"]) == {0, 1, 2}
    # Equal times are ordered by item id.
    assert list(train.loc[train["user_id"] == 2, "item_id"]) == [5, 7]


def test_benchmark_on_a_csv_with_iso_times(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        taste = user % 3
        for step, item in enumerate(rng.choice(np.arange(taste, 45, 3), size=12, replace=False)):
            when = pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(hours=step + user)
            rows.append((f"u{user}", f"m{item}", when.isoformat(), f"k{item % 3}"))
    path = tmp_path / "interactions.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "event_time", "category"]).to_csv(path, index=False)
    recs_path = tmp_path / "recs.csv"
    argv = [
        "--interactions",
        str(path),
        "--recs-out",
        str(recs_path),
        "--no-tune",
        "--threads",
        "1",
        "--candidates",
        "20",
    ]
    assert run_benchmark(argv) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in MODELS)
    recs = pd.read_csv(recs_path)
    assert list(recs.columns) == ["user_id", "item_id", "rank"]
    assert recs.groupby("user_id")["rank"].max().max() == 10


def test_movielens_slice(shared_data, tmp_path, capsys):
    recs_path = tmp_path / "recs.csv"
    argv = [
        "--movielens",
        str(shared_data / "ml-100k"),
        "--max-users",
        "150",
        "--recs-out",
        str(recs_path),
        "--no-tune",
        "--threads",
        "1",
        "--candidates",
        "50",
    ]
    assert run_benchmark(argv) == 0
    printed = capsys.readouterr().out
    table = {line.split()[0]: line.split() for line in printed.splitlines() if _is_table_row(line)}
    assert set(table) == set(MODELS)
    ndcg = {name: float(values[-5]) for name, values in table.items()}
    assert ndcg["ranker"] > ndcg["popularity"] > ndcg["random"]
    recs = pd.read_csv(recs_path)
    assert recs["user_id"].nunique() == 150
    assert (recs.groupby("user_id").size() == 10).all()
    train, _ = temporal_split(ranking.load_movielens(shared_data / "ml-100k"))
    seen = set(zip(train["user_id"], train["item_id"]))
    assert not any(pair in seen for pair in zip(recs["user_id"], recs["item_id"]))
