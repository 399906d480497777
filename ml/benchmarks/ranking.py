"""Ranking benchmark: baselines, candidate generators and the LightGBM ranker side by side on one split.

Protocol: each user's interactions sorted by (event_time, item_id); the first ceil(0.8 n) train, the
rest are the test items; items the user saw in train are never recommended; K = 10. Generator
hyperparameters are picked on a validation split carved from train by the same per-user protocol.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ml.recommend import (
    ALSRecommender,
    CategoryAffinityRecommender,
    EASERecommender,
    InteractionMatrix,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    RankerRecommender,
    Recommender,
    temporal_split,
    unix_seconds,
)
from ml.recommend.metrics import ranking_report

K = 10
TRAIN_SHARE = 0.8
COLUMNS = [
    ("P@10", "precision@10"),
    ("R@10", "recall@10"),
    ("NDCG@10", "ndcg@10"),
    ("HR@10", "hit_rate@10"),
    ("MAP@10", "map@10"),
    ("coverage", "coverage"),
]
GRIDS: dict[str, dict[str, tuple]] = {
    "cosine": {"neighbours": (50, 100, 200, 400), "shrinkage": (0.0, 10.0)},
    "als": {"factors": (32, 64, 128), "regularization": (0.01, 0.1), "alpha": (1.0, 4.0)},
    "ease": {"l2": (50.0, 100.0, 250.0, 500.0, 1000.0)},
}
DEFAULTS: dict[str, dict] = {
    "cosine": {"neighbours": 100, "shrinkage": 0.0},
    "als": {"factors": 64, "regularization": 0.05, "alpha": 2.0},
    "ease": {"l2": 250.0},
}
MOVIELENS_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--interactions", type=Path, help="CSV with user_id, item_id, event_time (unix s or ISO), optional category"
    )
    source.add_argument("--movielens", type=Path, help="MovieLens 100K directory (u.data, u.item)")
    parser.add_argument(
        "--recs-out", type=Path, help="write the ranker's top-10 per test user (user_id, item_id, rank)"
    )
    parser.add_argument("--max-users", type=int, help="benchmark a seeded sample of this many users")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per generator for the ranker")
    parser.add_argument("--no-tune", dest="tune", action="store_false", help="skip the validation grid search")
    parser.add_argument("--threads", type=int, default=2, help="threads for ALS and LightGBM (at most the cores)")
    parser.add_argument("--seed", type=int, default=0)


def load_movielens(directory: Path) -> pd.DataFrame:
    """Ratings as implicit interactions; an item's category is its first listed genre."""
    ratings = pd.read_csv(directory / "u.data", sep="\t", names=["user_id", "item_id", "rating", "event_time"])
    movies = pd.read_csv(directory / "u.item", sep="|", header=None, encoding="latin-1")
    genre_flags = movies.iloc[:, -len(MOVIELENS_GENRES) :].to_numpy()
    category = pd.Series(np.array(MOVIELENS_GENRES)[genre_flags.argmax(axis=1)], index=movies[0])
    return ratings[["user_id", "item_id", "event_time"]].assign(category=ratings["item_id"].map(category))


def load_interactions(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"user_id", "item_id", "event_time"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    return frame.assign(event_time=unix_seconds(frame["event_time"]))


def build_generators(
    params: Mapping[str, dict], categories: np.ndarray | None, seed: int, threads: int
) -> dict[str, Recommender]:
    """The ranker's inputs, aligned with the matrix columns that ``categories`` follows."""
    generators: dict[str, Recommender] = {
        "cosine": ItemCosineRecommender(**params["cosine"]),
        "als": ALSRecommender(**params["als"], random_state=seed, num_threads=threads),
        "ease": EASERecommender(**params["ease"]),
        "popularity": PopularityRecommender(),
    }
    if categories is not None:
        generators["category"] = CategoryAffinityRecommender(categories)
    return generators


def recommend_ids(recommender: Recommender, matrix: InteractionMatrix, users: np.ndarray) -> dict:
    items, _ = recommender.recommend(matrix.user_indices(users), K)
    return {user: list(matrix.item_ids[row[row >= 0]]) for user, row in zip(users, items)}


def tune(train: pd.DataFrame, users: list, items: list, seed: int, threads: int) -> dict[str, dict]:
    """Grid search per generator on the last 20% of each user's train interactions."""
    inner_train, validation = temporal_split(train, TRAIN_SHARE)
    matrix = InteractionMatrix.from_frame(inner_train, users=users, items=items)
    relevant = validation.groupby("user_id")["item_id"].apply(set).to_dict()
    eval_users = np.array(sorted(relevant))
    factories: dict[str, Callable[..., Recommender]] = {
        "cosine": ItemCosineRecommender,
        "als": lambda **p: ALSRecommender(**p, random_state=seed, num_threads=threads),
        "ease": EASERecommender,
    }
    chosen = {}
    for name, grid in GRIDS.items():
        scored = []
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            recommender = factories[name](**params).fit(matrix.csr)
            report = ranking_report(recommend_ids(recommender, matrix, eval_users), relevant, len(items), ks=(K,))
            scored.append((report["ndcg@10"], params))
        chosen[name] = max(scored, key=lambda pair: pair[0])[1]
    return chosen


def _label(name: str, params: Mapping) -> str:
    return f"{name} ({', '.join(f'{key}={value:g}' for key, value in params.items())})" if params else name


def format_table(rows: list[tuple[str, dict, float]]) -> str:
    width = max(len(name) for name, _, _ in rows)
    header = f"{'model':<{width}}  " + "  ".join(f"{title:>8}" for title, _ in COLUMNS) + f"  {'fit s':>7}"
    lines = [header, "-" * len(header)]
    for name, report, seconds in rows:
        values = "  ".join(f"{report[key]:>8.4f}" for _, key in COLUMNS)
        lines.append(f"{name:<{width}}  {values}  {seconds:>7.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    frame = load_movielens(args.movielens) if args.movielens else load_interactions(args.interactions)
    if args.max_users:
        rng = np.random.default_rng(args.seed)
        all_users = frame["user_id"].unique()
        frame = frame[frame["user_id"].isin(rng.choice(all_users, min(args.max_users, len(all_users)), replace=False))]
    train, test = temporal_split(frame, TRAIN_SHARE)
    users = sorted(frame["user_id"].unique())
    items = sorted(frame["item_id"].unique())
    relevant = test.groupby("user_id")["item_id"].apply(set).to_dict()
    test_users = np.array(sorted(relevant))
    has_categories = "category" in frame.columns
    item_categories = frame.drop_duplicates("item_id").set_index("item_id")["category"] if has_categories else None
    categories = item_categories.reindex(items).to_numpy(dtype=object) if has_categories else None
    print(
        f"{len(frame):,} interactions, {len(users):,} users, {len(items):,} items; "
        f"train {len(train):,}, test {len(test):,} over {len(test_users):,} users"
    )

    started = time.perf_counter()
    params = tune(train, users, items, args.seed, args.threads) if args.tune else DEFAULTS
    if args.tune:
        print(f"tuned on validation carved from train in {time.perf_counter() - started:.0f}s: {params}")

    matrix = InteractionMatrix.from_frame(train, users=users, items=items)
    generators = build_generators(params, categories, args.seed, args.threads)
    candidates: list[tuple[str, Recommender]] = [("random", RandomRecommender(seed=args.seed))]
    candidates += [(_label(name, params.get(name, {})), generator) for name, generator in generators.items()]
    rows = []
    for name, recommender in candidates:
        started = time.perf_counter()
        recommender.fit(matrix.csr)
        seconds = time.perf_counter() - started
        report = ranking_report(recommend_ids(recommender, matrix, test_users), relevant, len(items), ks=(K,))
        rows.append((name, report, seconds))

    started = time.perf_counter()
    ranker = RankerRecommender(
        build_generators(params, categories, args.seed, args.threads),
        item_categories=item_categories,
        candidates_per_generator=args.candidates,
        num_threads=args.threads,
        seed=args.seed,
    ).fit(train, users=users, items=items)
    seconds = time.perf_counter() - started
    ranked = recommend_ids(ranker, ranker.matrix, test_users)
    rows.append(("ranker (LightGBM lambdarank)", ranking_report(ranked, relevant, len(items), ks=(K,)), seconds))

    print(format_table(rows))
    best_name, best_report, _ = max(rows[1:-1], key=lambda row: row[1]["ndcg@10"])
    print(f"ranker NDCG@10 / best generator ({best_name}) = {rows[-1][1]['ndcg@10'] / best_report['ndcg@10']:.3f}")
    print("top ranker features (gain):", ", ".join(ranker.feature_importance().head(5).index))
    if args.recs_out:
        recs = pd.DataFrame(
            [(user, item, rank) for user, listed in ranked.items() for rank, item in enumerate(listed, start=1)],
            columns=["user_id", "item_id", "rank"],
        )
        args.recs_out.parent.mkdir(parents=True, exist_ok=True)
        recs.to_csv(args.recs_out, index=False)
        print(f"wrote {len(recs):,} recommendations to {args.recs_out}")
    return 0
