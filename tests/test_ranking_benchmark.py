"""``rekindle benchmark ranking``: the split protocol, CSV and Parquet order logs with string ids in both modes
(the win-back baselines beside the generators), clear errors for a missing column and for a log too small to
benchmark, and a MovieLens slice when the data is present."""

from __future__ import annotations

import argparse
import itertools
import re

import numpy as np
import pandas as pd
import pytest

from ml.benchmarks import ranking
from ml.benchmarks.order_log import order_log, order_log_with_oracle, with_movers
from ml.cli import main as rekindle
from ml.recommend import fewest_to_hold_out, temporal_split
from ml.recommend.content import co_ordered_groups
from ml.recommend.metrics import ranking_report
from ml.synthetic.world import plane_km

MODELS = ["random", "popularity", "cosine", "als", "ease", "user_knn", "category", "ranker"]
WINBACK_BASELINES = ["own most frequent", "own most recent"]
FAST = ["--no-tune", "--threads", "1", "--candidates", "30"]


def run_benchmark(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    ranking.add_arguments(parser)
    return ranking.run(parser.parse_args(argv))


def table(printed: str) -> dict[str, list[float]]:
    """Model name without its parameters (``ease``, ``own most frequent``) -> the seven numbers of its row."""
    rows = {}
    for line in printed.splitlines():
        tokens = line.split()
        try:
            numbers = [float(token) for token in tokens[-7:]]
        except ValueError:
            continue
        if len(tokens) >= 8:
            rows[" ".join(tokens[:-7]).split(" (")[0]] = numbers
    return rows


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


@pytest.mark.parametrize("train_share", [0.5, 0.75, 0.8, 0.9])
def test_the_fewest_interactions_to_hold_out_is_where_the_split_first_holds_one_out(train_share):
    fewest = fewest_to_hold_out(train_share)
    sizes = range(1, fewest + 1)
    frame = pd.DataFrame(
        [(n, item, item) for n in sizes for item in range(n)], columns=["user_id", "item_id", "event_time"]
    )
    _, held_out = temporal_split(frame, train_share)
    assert set(held_out["user_id"]) == {fewest}


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
    assert set(table(capsys.readouterr().out)) == set(MODELS)
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
    rows = table(capsys.readouterr().out)
    assert set(rows) == set(MODELS)
    ndcg = {name: values[2] for name, values in rows.items()}
    assert ndcg["ranker"] > ndcg["popularity"] > ndcg["random"]
    recs = pd.read_csv(recs_path)
    assert recs["user_id"].nunique() == 150
    assert (recs.groupby("user_id").size() == 10).all()
    train, _ = temporal_split(ranking.load_movielens(shared_data / "ml-100k"))
    seen = set(zip(train["user_id"], train["item_id"]))
    assert not any(pair in seen for pair in zip(recs["user_id"], recs["item_id"]))


# Three users' ratings of four movies; movie 30 lists no genre, movie 40 is never rated.
MOVIELENS_RATINGS = [(1, 10, 4, 881250949), (1, 20, 3, 881250950), (2, 30, 5, 891717742), (3, 10, 1, 878887116)]
MOVIELENS_MOVIES = [
    (10, "Star Wars: Episode IV (1977)", ["Action", "Sci-Fi"]),
    (20, "Toy Story (1995)", ["Animation", "Comedy"]),
    (30, "Untitled (2001)", []),
    (40, "Heat (1995)", ["Crime"]),
]


def write_movielens(directory, layout: str) -> None:
    """``MOVIELENS_RATINGS`` and ``MOVIELENS_MOVIES`` in one of GroupLens's published layouts."""
    directory.mkdir()
    genres = ranking.MOVIELENS_GENRES
    if layout == "100k":
        ratings = "".join("\t".join(map(str, row)) + "\n" for row in MOVIELENS_RATINGS)
        (directory / "u.data").write_text(ratings)
        movies = [
            "|".join([str(movie), title, "01-Jan-1995", "", "http://x"] + [str(int(g in listed)) for g in genres])
            for movie, title, listed in MOVIELENS_MOVIES
        ]
        (directory / "u.item").write_text("\n".join(movies) + "\n", encoding="latin-1")
    elif layout == "1m":
        (directory / "ratings.dat").write_text("".join("::".join(map(str, row)) + "\n" for row in MOVIELENS_RATINGS))
        movies = [f"{movie}::{title}::{'|'.join(listed)}" for movie, title, listed in MOVIELENS_MOVIES]
        (directory / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    else:
        columns = ["userId", "movieId", "rating", "timestamp"]
        pd.DataFrame(MOVIELENS_RATINGS, columns=columns).to_csv(directory / "ratings.csv", index=False)
        movies = [(movie, title, "|".join(listed) or "(no genres listed)") for movie, title, listed in MOVIELENS_MOVIES]
        pd.DataFrame(movies, columns=["movieId", "title", "genres"]).to_csv(directory / "movies.csv", index=False)


@pytest.mark.parametrize("layout", ["100k", "1m", "latest"])
def test_movielens_is_read_in_each_published_layout(layout, tmp_path):
    directory = tmp_path / f"ml-{layout}"
    write_movielens(directory, layout)
    expected = {
        "user_id": [1, 1, 2, 3],
        "item_id": [10, 20, 30, 10],
        "event_time": [881250949, 881250950, 891717742, 878887116],
        "category": ["Action", "Animation", "unknown", "Action"],
    }
    ratings_file = next(path for path in directory.iterdir() if path.name in ("u.data", "ratings.dat", "ratings.csv"))
    for source in (directory, ratings_file):
        assert ranking.load_movielens(source).to_dict("list") == expected
    movies_file = next(path for path in directory.iterdir() if path != ratings_file)
    movies_file.unlink()
    assert list(ranking.load_movielens(directory).columns) == ["user_id", "item_id", "event_time"]


def test_a_folder_that_is_not_movielens_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "orders.csv").write_text("user_id,item_id,event_time\n")
    assert rekindle(["benchmark", "ranking", "--movielens", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "is not a MovieLens directory" in error and "ratings.dat" in error


def test_movielens_1m_layout_runs_the_benchmark(shared_data, tmp_path, capsys):
    """MovieLens 100K rewritten in the 1M layout gives the 100K run's table."""
    source = shared_data / "ml-100k"
    ratings = pd.read_csv(source / "u.data", sep="\t", header=None)
    directory = tmp_path / "ml-1m"
    directory.mkdir()
    (directory / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings.to_numpy()))
    movies = pd.read_csv(source / "u.item", sep="|", header=None, encoding="latin-1")
    flags = movies.iloc[:, -len(ranking.MOVIELENS_GENRES) :].to_numpy(dtype=bool)
    lines = [
        f"{movie}::{title}::{'|'.join(np.array(ranking.MOVIELENS_GENRES)[row])}"
        for movie, title, row in zip(movies[0], movies[1], flags)
    ]
    (directory / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    printed = {}
    for name, path in (("100k", source), ("1m", directory)):
        assert run_benchmark(["--movielens", str(path), "--max-users", "100", *FAST]) == 0
        printed[name] = table(capsys.readouterr().out)
    assert set(printed["1m"]) == set(MODELS)
    assert {name: row[:6] for name, row in printed["1m"].items()} == {
        name: row[:6] for name, row in printed["100k"].items()
    }


@pytest.fixture(scope="module")
def order_log_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("orders") / "orders.csv"
    assert rekindle(["benchmark", "ranking", "--write-order-log", str(path)]) == 0
    return path


def test_the_stand_in_order_log_has_the_real_logs_shape(order_log_file):
    log = pd.read_csv(order_log_file, dtype=str)
    assert list(log.columns) == ["user_id", "merchant_id", "event_time", "category", "lat", "lng"]
    assert 500 <= log["user_id"].nunique() <= 700
    assert 90 <= log["merchant_id"].nunique() <= 100
    assert 5_000 <= len(log) <= 9_000
    assert log["user_id"].str.fullmatch(r"c\d{4}").all() and log["merchant_id"].str.fullmatch(r"r\d{3}").all()
    times = pd.to_datetime(log["event_time"], utc=True)
    assert 110 <= (times.max() - times.min()).days <= 120
    # Seeded: the same log every time.
    assert order_log().equals(pd.read_csv(order_log_file, dtype={"user_id": str, "merchant_id": str}))


def test_a_stand_in_of_less_loyal_customers_reorders_less(order_log_file, tmp_path, capsys):
    path = tmp_path / "orders.csv"
    assert rekindle(["benchmark", "ranking", "--write-order-log", str(path), "--loyalty-beta", "2,4"]) == 0
    assert "(loyalty Beta(2, 4), mean 0.33)" in capsys.readouterr().out

    def reorder_share(log: pd.DataFrame) -> float:
        return log.duplicated(["user_id", "merchant_id"]).mean()

    assert reorder_share(pd.read_csv(path)) < reorder_share(pd.read_csv(order_log_file)) - 0.05
    for value in ("2", "0,4", "a,b"):
        with pytest.raises(SystemExit):
            rekindle(["benchmark", "ranking", "--write-order-log", str(path), "--loyalty-beta", value])
        assert "expected A,B (two positive numbers)" in capsys.readouterr().err


def test_a_stand_in_whose_customers_move_house_changes_their_later_restaurants_near_the_new_home(
    order_log_file, tmp_path, capsys
):
    path = tmp_path / "moved.csv"
    assert rekindle(["benchmark", "ranking", "--write-order-log", str(path), "--movers", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "50% of the customers moving house halfway" in printed and "no oracle" in printed
    assert "NDCG@10" not in printed
    key = ["user_id", "event_time"]
    before = pd.read_csv(order_log_file).sort_values(key, kind="mergesort").reset_index(drop=True)
    after = pd.read_csv(path).sort_values(key, kind="mergesort").reset_index(drop=True)
    # The same orders at the same times, each at a restaurant of the category it had.
    assert before[key].equals(after[key]) and before["category"].equals(after["category"])
    position = before.groupby("user_id").cumcount()
    later = position >= np.maximum(before.groupby("user_id")["user_id"].transform("size") // 2, 1)
    changed = before["merchant_id"] != after["merchant_id"]
    assert not changed[~later].any()
    movers = before.loc[changed, "user_id"].unique()
    assert 0.3 * before["user_id"].nunique() < len(movers) <= 0.5 * before["user_id"].nunique()
    # A mover's later orders at one restaurant all go to one other restaurant: their favourites move with them.
    moved = later & before["user_id"].isin(movers)
    new_places = after.loc[moved, "merchant_id"].groupby(
        [before.loc[moved, "user_id"], before.loc[moved, "merchant_id"]]
    )
    assert new_places.nunique().max() == 1
    # Their orders move across town and stay near home: about as close together after the move as before it.
    earlier = ~later & before["user_id"].isin(movers)
    centre_before, spread_before = _centres_and_spreads(before[earlier])
    centre_after, spread_after = _centres_and_spreads(after[moved])
    centre_unmoved, _ = _centres_and_spreads(before[moved])
    shift = np.hypot(*(centre_after - centre_before.loc[centre_after.index]).to_numpy().T).mean()
    shift_unmoved = np.hypot(*(centre_unmoved - centre_before.loc[centre_unmoved.index]).to_numpy().T).mean()
    assert shift > 2 * shift_unmoved
    assert spread_after.mean() < 1.5 * spread_before.mean()
    assert with_movers(order_log(), 0.0, seed=0).equals(order_log())

    for value in ("-0.1", "1.5", "half"):
        with pytest.raises(SystemExit):
            rekindle(["benchmark", "ranking", "--write-order-log", str(path), "--movers", value])
        assert "expected a share between 0 and 1" in capsys.readouterr().err


def test_the_stand_in_logs_oracle_ranks_by_the_worlds_own_next_order_chances():
    log, oracle = order_log_with_oracle(seed=0, train_share=ranking.TRAIN_SHARE)
    assert log.equals(order_log(seed=0))
    frame = log.rename(columns={"merchant_id": "item_id"})
    train, held_out = temporal_split(frame, ranking.TRAIN_SHARE)
    assert set(oracle["winback"]) == set(oracle["discovery"]) == set(held_out["user_id"])
    assert all(len(listed) == 10 for lists in oracle.values() for listed in lists.values())
    seen = train.groupby("user_id")["item_id"].apply(set)
    assert not any(set(listed) & seen[user] for user, listed in oracle["discovery"].items())
    # Taken right after each customer's last training order, whose merchant the world has just made a regular.
    last_merchant = train.groupby("user_id")["item_id"].last()
    assert all(last_merchant[user] in listed for user, listed in oracle["winback"].items())
    # It knows what the log does not show (orders before the window, loyalty, habits), so it beats the customers'
    # own most frequent merchants, the strongest baseline in winback.
    counts = train.groupby(["user_id", "item_id"]).size().rename("orders").reset_index()
    counts = counts.sort_values(["user_id", "orders"], ascending=[True, False], kind="mergesort")
    frequent = counts.groupby("user_id")["item_id"].apply(lambda items: list(items[:10])).to_dict()
    relevant = ranking.held_out_relevance(train, held_out, "winback")
    catalog = frame["item_id"].nunique()
    oracle_ndcg = ranking_report(oracle["winback"], relevant, catalog, ks=(10,))["ndcg@10"]
    assert oracle_ndcg > ranking_report(frequent, relevant, catalog, ks=(10,))["ndcg@10"] + 0.02


def test_on_a_log_of_ids_and_times_only_groups_of_items_stand_in_for_categories(order_log_file, tmp_path, capsys):
    bare = tmp_path / "ids_and_times.csv"
    pd.read_csv(order_log_file, usecols=["user_id", "merchant_id", "event_time"]).to_csv(bare, index=False)
    bagged = f"ranker (LightGBM lambdarank, {ranking.SMALL_LOG_BAGGED_BOOSTERS} bagged boosters"
    for mode, ranker_row in [("discovery", f"{bagged}, started from ease's order) "), ("winback", f"{bagged}) ")]:
        assert run_benchmark(["--interactions", str(bare), "--mode", mode, *FAST]) == 0
        printed = capsys.readouterr().out
        # Groups of restaurants ordered by the same customers stand in for the missing categories.
        assert "no category column: 10 groups of items ordered by the same users in train" in printed
        assert "category" in table(printed)
        assert any(line.startswith(ranker_row) for line in printed.splitlines()), printed


def _held_out(path, mode: str) -> tuple[pd.DataFrame, dict]:
    train, test = temporal_split(ranking.load_interactions(path)[0])
    return train, ranking.held_out_relevance(train, test, mode)


@pytest.mark.parametrize("mode", ["winback", "discovery"])
def test_an_order_log_with_string_ids_in_each_mode(order_log_file, mode, tmp_path, capsys):
    recs_path = tmp_path / "recs.csv"
    argv = ["--interactions", str(order_log_file), "--mode", mode, "--recs-out", str(recs_path), *FAST]
    assert run_benchmark(argv) == 0
    printed = capsys.readouterr().out
    rows = table(printed)
    if mode == "winback":
        assert set(rows) == {*MODELS, *WINBACK_BASELINES}
        assert re.search(r"^ranker NDCG@10 / own most frequent = \d+\.\d{3}$", printed, re.MULTILINE)
        # Most win-back orders go to a merchant the customer already had: their own history beats popularity.
        assert rows["own most frequent"][2] > 2 * rows["popularity"][2]
    else:
        assert set(rows) == set(MODELS)
        assert "own most" not in printed
        ratio = re.search(r"^ranker NDCG@10 / ease = (\d+\.\d{3})$", printed, re.MULTILINE)
        assert ratio and float(ratio[1]) == pytest.approx(rows["ranker"][2] / rows["ease"][2], abs=1e-3)
    assert re.search(r"^ranker NDCG@10 / best generator \(.+\) = \d+\.\d{3}$", printed, re.MULTILINE)
    # A log this small gets the ranker of several bagged boosters by default, in discovery started from EASE's order.
    prior = ", started from ease's order" if mode == "discovery" else ""
    bagged = f"ranker (LightGBM lambdarank, {ranking.SMALL_LOG_BAGGED_BOOSTERS} bagged boosters{prior}) "
    assert any(line.startswith(bagged) for line in printed.splitlines()), printed
    recs = pd.read_csv(recs_path, dtype={"user_id": str, "item_id": str})
    train, relevant = _held_out(order_log_file, mode)
    assert list(recs.columns) == ["user_id", "item_id", "rank"]
    assert set(recs["user_id"]) == set(relevant)
    assert recs["item_id"].str.fullmatch(r"r\d{3}").all()
    assert all(sorted(ranks) == list(range(1, 11)) for ranks in recs.groupby("user_id")["rank"].apply(list))
    seen = set(zip(train["user_id"], train["item_id"]))
    repeats = [pair in seen for pair in zip(recs["user_id"], recs["item_id"])]
    assert any(repeats) if mode == "winback" else not any(repeats)


def test_above_a_small_log_discovery_has_one_booster_started_from_nothing(order_log_file, monkeypatch, capsys):
    monkeypatch.setattr(ranking, "RANKER_TUNING_MAX_INTERACTIONS", 1_000)
    assert run_benchmark(["--interactions", str(order_log_file), "--mode", "discovery", *FAST]) == 0
    printed = capsys.readouterr().out
    assert any(line.startswith("ranker (LightGBM lambdarank) ") for line in printed.splitlines()), printed


def test_string_ids_stay_strings_in_csv_and_parquet(tmp_path):
    frame = pd.DataFrame(
        {
            "user_id": ["007", "007", "10"],
            "merchant_id": ["0042", "1e3", "0042"],
            "event_time": ["2025-01-01T10:00:00Z", "2025-01-02T10:00:00Z", "2025-01-01T12:00:00Z"],
            "lat": [25.3, 25.2, 25.3],
        }
    )
    frame.to_csv(tmp_path / "orders.csv", index=False)
    # As a spreadsheet saves it where the decimal mark is a comma, with a byte-order mark.
    frame.to_csv(tmp_path / "orders_semicolons.csv", index=False, sep=";", encoding="utf-8-sig")
    frame.to_parquet(tmp_path / "orders.parquet", index=False)
    for name in ("orders.csv", "orders_semicolons.csv", "orders.parquet"):
        loaded, notes = ranking.load_interactions(tmp_path / name)
        assert notes == ["columns read: item_id <- merchant_id"]
        assert list(loaded.columns) == ["user_id", "item_id", "event_time", "lat"]
        assert list(loaded["user_id"]) == ["007", "007", "10"]
        assert list(loaded["item_id"]) == ["0042", "1e3", "0042"]
        assert list(loaded["event_time"]) == [1735725600.0, 1735812000.0, 1735732800.0]


def test_a_missing_column_is_named(tmp_path, capsys):
    path = tmp_path / "orders.csv"
    pd.DataFrame({"user_id": ["a"], "merchant_id": ["m"], "when": ["2025-01-01"]}).to_csv(path, index=False)
    assert rekindle(["benchmark", "ranking", "--interactions", str(path), "--mode", "winback"]) == 2
    error = capsys.readouterr().err
    assert "has no column event_time" in error and "when" in error


@pytest.mark.parametrize("mode", ["winback", "discovery"])
def test_a_log_too_small_to_benchmark_is_a_clear_error(mode, tmp_path, capsys):
    path = tmp_path / "orders.csv"
    rng = np.random.default_rng(0)

    def write_log(orders_each: int) -> None:
        users = np.repeat([f"c{user}" for user in range(6)], orders_each)
        items = [f"r{item}" for item in rng.integers(0, 5, len(users))]
        pd.DataFrame({"user_id": users, "item_id": items, "event_time": 1.7e9 + 3600.0 * np.arange(len(users))}).to_csv(
            path, index=False
        )

    write_log(4)  # the last 20% of four interactions is none
    assert rekindle(["benchmark", "ranking", "--interactions", str(path), "--mode", mode]) == 2
    error = capsys.readouterr().err
    assert f"has no {mode} test users" in error and "needs at least 5" in error

    # Five: one held out, but the ranker's label windows inside the other four are empty.
    write_log(5)
    for extra, split in [([], "its validation split"), (["--no-tune"], "train")]:
        assert rekindle(["benchmark", "ranking", "--interactions", str(path), "--mode", mode, *extra]) == 2
        error = capsys.readouterr().err
        assert f"too few interactions to train the ranker on {split}: no {mode} training groups" in error


def test_a_real_logs_own_column_names_units_and_repeated_rows_are_read(tmp_path):
    ordered_at_ms = [1735725600000, 1735812000000, 1735732800000, 1735732800000, 1735740000000]
    frame = pd.DataFrame(
        {
            "Customer ID": ["u1", "u1", "u2", "u2", None],
            "restaurantId": [7, 8, 7, 7, 8],
            "ordered_at": ordered_at_ms,
            "cuisine": ["thai", "pizza", "thai", "thai", "pizza"],
            "Latitude": [25.3, 25.2, 25.3, 25.3, 25.2],
            "Longitude": [55.3, 55.2, 55.3, 55.3, 55.2],
            "customer_lat": [1.0] * 5,
        }
    )
    frame.to_csv(tmp_path / "orders.csv", index=False)
    # As a spreadsheet saves it where the decimal mark is a comma, with a byte-order mark.
    frame.to_csv(tmp_path / "orders_semicolons.csv", index=False, sep=";", encoding="utf-8-sig")
    frame.to_parquet(tmp_path / "orders.parquet", index=False)
    for name in ("orders.csv", "orders_semicolons.csv", "orders.parquet"):
        loaded, notes = ranking.load_interactions(
            tmp_path / name, ranking.parse_column_mapping(["event_time=ordered_at"])
        )
        assert list(loaded.columns) == ["user_id", "item_id", "event_time", "category", "lat", "lng"]
        # The row without a customer and the order listed twice (once per dish) are dropped and said.
        assert list(loaded["user_id"]) == ["u1", "u1", "u2"]
        assert list(loaded["item_id"]) == ["7", "8", "7"]
        # Milliseconds since 1970 are read as such.
        assert list(loaded["event_time"]) == [1735725600.0, 1735812000.0, 1735732800.0]
        assert list(loaded["lat"]) == [25.3, 25.2, 25.3]
        assert notes == [
            "columns read: user_id <- Customer ID, item_id <- restaurantId, event_time <- ordered_at, "
            "category <- cuisine, lat <- Latitude, lng <- Longitude",
            "columns not read: customer_lat (--column NAME=COLUMN reads one as NAME)",
            "dropped 1 rows without user_id or item_id or event_time",
            "dropped 1 duplicate rows (same user, item and event_time)",
        ]


def test_a_restaurants_name_cuisine_type_and_latitude_are_read_and_the_customers_location_is_not(tmp_path):
    path = tmp_path / "orders.csv"
    pd.DataFrame(
        {
            "Customer_ID": ["u1", "u2"],
            "Restaurant_Name": ["Thai Palace", "Pizza Hut"],
            "Order_Date": ["2025-01-01", "2025-01-02"],
            "Cuisine_Type": ["thai", "pizza"],
            "Delivery_location_latitude": [1.0, 1.0],
            "Delivery_location_longitude": [2.0, 2.0],
            "Restaurant_latitude": [25.3, 25.2],
            "Restaurant_longitude": [55.3, 55.2],
        }
    ).to_csv(path, index=False)
    loaded, notes = ranking.load_interactions(path)
    assert list(loaded["item_id"]) == ["Thai Palace", "Pizza Hut"] and list(loaded["category"]) == ["thai", "pizza"]
    assert list(loaded["lat"]) == [25.3, 25.2] and list(loaded["lng"]) == [55.3, 55.2]
    assert notes[0].endswith("lat <- Restaurant_latitude, lng <- Restaurant_longitude")


@pytest.mark.parametrize("word", ranking.ITEM_WORDS)
def test_the_items_category_and_place_are_read_under_any_word_for_the_item(tmp_path, word):
    path = tmp_path / "orders.csv"
    pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            f"{word}_id": ["m1", "m2"],
            "event_time": [1735725600, 1735812000],
            f"{word.title()}Category": ["thai", "pizza"],
            f"{word}_lat": [25.3, 25.2],
            f"{word}-longitude": [55.3, 55.2],
        }
    ).to_csv(path, index=False)
    loaded, _ = ranking.load_interactions(path)
    assert list(loaded["category"]) == ["thai", "pizza"]
    assert list(loaded["lat"]) == [25.3, 25.2] and list(loaded["lng"]) == [55.3, 55.2]


def test_a_column_named_for_a_category_is_read_as_one_unless_it_is_the_customers(tmp_path):
    path = tmp_path / "orders.csv"
    frame = pd.DataFrame(
        {
            "customer_id": ["u1", "u2"],
            "customer_category": ["gold", "new"],
            "vendor_id": ["m1", "m2"],
            "created_at": [1735725600, 1735812000],
            "vendor_category_en": ["Restaurants", "Sweets & Bakes"],
        }
    )
    frame.to_csv(path, index=False)
    loaded, notes = ranking.load_interactions(path)
    assert list(loaded["category"]) == ["Restaurants", "Sweets & Bakes"]
    assert notes == [
        "columns read: user_id <- customer_id, item_id <- vendor_id, event_time <- created_at, "
        "category <- vendor_category_en",
        "columns not read: customer_category (--column NAME=COLUMN reads one as NAME)",
    ]
    frame.drop(columns="vendor_category_en").to_csv(path, index=False)
    assert "category" not in ranking.load_interactions(path)[0].columns


def test_on_a_log_dated_by_day_two_orders_of_a_day_at_one_restaurant_are_kept(tmp_path):
    path = tmp_path / "orders.csv"
    days = ["2025-01-01", "2025-01-01", "2025-01-02"]
    pd.DataFrame({"user_id": ["a", "a", "a"], "merchant_id": ["m", "m", "m"], "order_date": days}).to_csv(
        path, index=False
    )
    loaded, notes = ranking.load_interactions(path)
    assert list(loaded["event_time"]) == [1735689600.0, 1735689600.0, 1735776000.0]
    assert notes[-1] == "kept 1 rows of a user, item and day seen before: the log is dated by day"


def test_times_in_other_formats_and_bad_column_arguments(tmp_path, capsys):
    path = tmp_path / "orders.csv"
    times = ["01/02/2025 10:00", "2025-01-03 10:00:00"]
    pd.DataFrame({"who": ["a", "b"], "where": ["m", "n"], "when": times}).to_csv(path, index=False)
    mapping = ranking.parse_column_mapping(["user_id=who", "item_id=where", "event_time=when"])
    loaded, _ = ranking.load_interactions(path, mapping)
    assert list(loaded["event_time"]) == [1735812000.0, 1735898400.0]

    for argument, message in [
        ("user=who", "expected NAME=COLUMN"),
        ("user_id=", "expected NAME=COLUMN"),
        ("user_id=nobody", "has no column nobody"),
    ]:
        argv = ["benchmark", "ranking", "--interactions", str(path), "--column", argument]
        assert rekindle(argv) == 2
        assert message in capsys.readouterr().err

    pd.DataFrame({"user_id": ["a"], "item_id": ["m"], "event_time": ["the day after"]}).to_csv(path, index=False)
    assert rekindle(["benchmark", "ranking", "--interactions", str(path)]) == 2
    assert "event_time must be unix seconds (or ms) or a date-time" in capsys.readouterr().err


def test_tuning_picks_the_rankers_settings_on_validation_only_for_small_logs(monkeypatch, capsys):
    log = order_log(seed=3).rename(columns={"merchant_id": "item_id"})
    log = log[log["user_id"].isin(sorted(log["user_id"].unique())[:150])]
    train, _ = temporal_split(log, ranking.TRAIN_SHARE)
    users, items = sorted(log["user_id"].unique()), sorted(log["item_id"].unique())
    monkeypatch.setattr(ranking, "GRIDS", {"ease": {"l2": (50.0, 250.0)}})
    inputs = {"candidates": 20, "bagged_boosters": 1, "item_locations": None}
    grouped = []

    def recorded_groups(user_items, n_groups, seed):
        grouped.append(int(user_items.sum()))
        return co_ordered_groups(user_items, n_groups, seed)

    monkeypatch.setattr(ranking, "co_ordered_groups", recorded_groups)

    chosen = ranking.tune(train, users, items, "discovery", 0, 1, inputs, log_categories=None)
    grid = [dict(zip(ranking.RANKER_GRID, values)) for values in itertools.product(*ranking.RANKER_GRID.values())]
    assert chosen["ranker"] in grid and chosen["ease"]["l2"] in (50.0, 250.0)
    # Without a category column the ranker is tuned on groups of the inner train split alone: groups from all
    # of train would carry the validation orders.
    inner_train, _ = temporal_split(train, ranking.TRAIN_SHARE)
    assert grouped == [len(inner_train)]
    # Tuning can take minutes: a line on stderr per generator and per ranker setting, stdout kept for the tables.
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("[ranking] tuned over 2 settings: ease (l2=") == 1
    assert [line.split(" {")[0] for line in err.splitlines() if "ranker settings" in line] == [
        f"[ranking] ranker settings {number}/{len(grid)}" for number in range(1, len(grid) + 1)
    ]

    assert "own_items_by_count" not in chosen["ranker"]
    # In winback the validation split also chooses how the lists order the user's own items.
    winback = ranking.tune(train, users, items, "winback", 0, 1, inputs, log_categories=None)["ranker"]
    assert winback["own_items_by_count"] in (True, False)
    ranker = ranking.build_ranker(
        {**chosen, "ranker": {**winback, "own_items_by_count": False}}, "winback", 0, 1, item_categories=None, **inputs
    )
    assert ranker.own_items_by_count is False
    # EASE's score of the recent items is a discovery feature.
    assert not ranker.ease_of_recent_items
    assert ranking.build_ranker(chosen, "discovery", 0, 1, item_categories=None, **inputs).ease_of_recent_items
    # The distance from the recent orders' place, in both modes of a log that places its restaurants.
    assert not ranker.distance_from_recent_orders
    places = pd.DataFrame({"lat": 25.0, "lng": 51.5}, index=pd.Index(items, name="item_id"))
    for mode in ("winback", "discovery"):
        placed = {**inputs, "item_locations": places}
        assert ranking.build_ranker(chosen, mode, 0, 1, item_categories=None, **placed).distance_from_recent_orders

    # Then validation says whether the ranker sees what followed what: only for a gain of two standard errors.
    (line,) = [line for line in err.splitlines() if "ranker with transitions from the recent items" in line]
    gain, standard_error = map(float, re.search(r"gain ([-+0-9.]+), standard error ([0-9.]+)", line).groups())
    kept = gain > ranking.TRANSITIONS_MIN_STANDARD_ERRORS * standard_error
    assert ("kept" in line) == kept and ("left out" in line) == (not kept)
    assert chosen["ranker"].get("transitions_from_recent_items", False) == kept

    # A larger log keeps the ranker's default settings; validation still chooses the transitions.
    monkeypatch.setattr(ranking, "RANKER_TUNING_MAX_INTERACTIONS", len(train) // 2)
    larger = ranking.tune(train, users, items, "discovery", 0, 1, inputs, None)["ranker"]
    assert {key: value for key, value in larger.items() if key != "transitions_from_recent_items"} == (
        ranking.DEFAULTS["ranker"]
    )


def test_tuning_turns_the_transitions_on_where_each_order_follows_from_the_last():
    # 40 restaurants; after restaurant i a customer orders at next_of[i] four times in five, else anywhere. Each
    # customer orders daily at most of the 40, so who ordered what together says little; what came last says much.
    rng = np.random.default_rng(5)
    next_of = rng.permutation(40)
    rows = []
    for user in range(120):
        item = int(rng.integers(40))
        for day in range(30):
            rows.append((f"c{user}", f"r{item:02d}", 1_700_000_000 + day * 86_400 + user))
            item = int(next_of[item]) if rng.random() < 0.8 else int(rng.integers(40))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "event_time"])
    train, _ = temporal_split(log, ranking.TRAIN_SHARE)
    users, items = sorted(log["user_id"].unique()), sorted(log["item_id"].unique())
    inputs = {"candidates": 20, "bagged_boosters": 1, "item_locations": None}
    chosen = ranking.tune(train, users, items, "winback", 0, 1, inputs, log_categories=None)
    assert chosen["ranker"]["transitions_from_recent_items"] is True
    assert ranking.build_ranker(chosen, "winback", 0, 1, item_categories=None, **inputs).transitions_from_recent_items


def _centres_and_spreads(orders: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Per customer, the mean place of their orders' restaurants and their mean distance from it, in km."""
    east, north = plane_km(orders["lat"].to_numpy(), orders["lng"].to_numpy())
    km = pd.DataFrame({"east": east, "north": north, "user_id": orders["user_id"].to_numpy()})
    centres = km.groupby("user_id")[["east", "north"]].mean()
    offsets = km[["east", "north"]].to_numpy() - centres.loc[km["user_id"]].to_numpy()
    return centres, pd.Series(np.hypot(*offsets.T)).groupby(km["user_id"].to_numpy()).mean()
