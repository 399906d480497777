"""Ranking benchmark: baselines, candidate generators and the LightGBM ranker side by side on one split.

Protocol: each user's interactions sorted by (event_time, item_id); the first ceil(0.8 n) train, the
rest are the test items; K = 10. In ``discovery`` mode items the user saw in train are neither recommended
nor relevant; in ``winback`` mode they may be recommended and count as hits, and the user's own most
frequent and most recent items (then popular) are the baselines. Generator hyperparameters are picked on a
validation split carved from train by the same per-user protocol.

Input: MovieLens (100K, 1M, 10M, 20M, 25M, 32M or latest), or any interaction / order log (CSV or Parquet)
with user_id, item_id (or merchant_id, or their usual other names), event_time (unix seconds or ms, or a
date-time) and optional category, lat, lng; ids are kept as strings.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ml.benchmarks import progress
from ml.benchmarks.order_log import order_log, order_log_with_oracle, with_movers, write_order_log
from ml.cli.options import UsageError, non_negative_int, positive_int
from ml.recommend import (
    ALSRecommender,
    CategoryAffinityRecommender,
    EASERecommender,
    FrequentItemsRecommender,
    InteractionMatrix,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
    RankerRecommender,
    RecentItemsRecommender,
    Recommender,
    TooLittleHistoryError,
    UserKNNRecommender,
    co_ordered_groups,
    fewest_to_hold_out,
    last_interaction_times,
    temporal_split,
    unix_seconds,
)
from ml.recommend.metrics import ndcg_at_k, ranking_report
from ml.recommend.modes import DISCOVERY, MODES, WINBACK, exclude_seen
from ml.synthetic.marketplace import LOYALTY_BETA
from ml.warehouse.ingest import csv_separator

K = 10
TRAIN_SHARE = 0.8
SECONDS_PER_DAY = 86_400
REQUIRED_COLUMNS = ("user_id", "item_id", "event_time")
ITEM_ID_ALIAS = "merchant_id"
LOCATION_COLUMNS = ["lat", "lng"]
OPTIONAL_COLUMNS = ("category", *LOCATION_COLUMNS)
# What logs call the item, so that a vendor_lat or a store_category is the item's.
ITEM_WORDS = ("restaurant", "merchant", "vendor", "store", "shop")
# The names real order logs give these columns, in order of preference after the exact name; a log's names are
# compared without case, spaces or hyphens ("Customer ID" and "customerId" are customer_id). --column NAME=COLUMN
# names any other.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("customer_id", "customer", "user", "client_id", "account_id", "device_id", "amplitude_id"),
    "item_id": (
        ITEM_ID_ALIAS,
        *(f"{word}_id" for word in ITEM_WORDS if f"{word}_id" != ITEM_ID_ALIAS),
        *ITEM_WORDS,
        "item",
        *(f"{word}_name" for word in ITEM_WORDS),
    ),
    "event_time": (
        "timestamp",
        "order_time",
        "order_timestamp",
        "order_datetime",
        "order_date_and_time",
        "ordered_at",
        "created_at",
        "order_date",
        "datetime",
        "time",
        "date",
    ),
    "category": (
        "cuisine",
        "cuisine_type",
        "category_name",
        *(f"{word}_{name}" for name in ("category", "cuisine") for word in ITEM_WORDS),
    ),
    "lat": ("latitude", *(f"{word}_{name}" for name in ("lat", "latitude") for word in ITEM_WORDS)),
    "lng": (
        "lon",
        "long",
        "longitude",
        *(f"{word}_{name}" for name in ("lng", "lon", "long", "longitude") for word in ITEM_WORDS),
    ),
}
# Beyond the aliases, a file's one column whose name holds one of these words is the item's category, unless the
# name also holds one of the customer's words.
CATEGORY_WORDS = {"category", "cuisine"}
CUSTOMER_WORDS = {"customer", "user", "client", "account", "delivery"}
FREQUENT_BASELINE = "own most frequent"
RECENT_BASELINE = "own most recent"
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
    "user_knn": {"neighbours": (20, 50, 100, 200)},
}
# The ranker's own grid, searched only on small logs (at most RANKER_TUNING_MAX_INTERACTIONS train rows), where
# one fit takes seconds and the defaults (two label windows, 200 rows per leaf) leave the booster few groups.
RANKER_GRID: dict[str, tuple] = {"training_windows": (2, 4), "min_data_in_leaf": (50, 200)}
# And in winback, how the lists order the user's own items: by their counts (RankerRecommender's default) or as the
# booster scores them. Validation chose the counts on most stand-in logs, whose customers' tastes do not change, and
# the booster, which sees recency, on every one whose customers' favourites change (BENCHMARKS.md).
WINBACK_OWN_ITEM_ORDERS = ({"own_items_by_count": True}, {"own_items_by_count": False})
# In discovery on a small log the ranker's boosters start from EASE's order (RankerRecommender's prior_generator):
# a few hundred new-item orders are too few to re-learn it, and started from nothing they ranked below EASE on the
# stand-in logs without categories. With categories it made no difference on average; on MovieLens 100K (more than
# a small log) it cost NDCG (BENCHMARKS.md).
DISCOVERY_PRIOR = "ease"
DISCOVERY_PRIOR_WEIGHT = 0.5
# The ranker's transition features are kept where they raise validation NDCG@10 by at least this many standard
# errors of the per-user difference: on the stand-in logs, whose orders do not depend on the one before, validation
# often scored them a little higher by chance and test lower (BENCHMARKS.md, "What came next").
TRANSITIONS_MIN_STANDARD_ERRORS = 2.0
RANKER_TUNING_MAX_INTERACTIONS = 50_000
# Boosters averaged per ranker on those small logs, where one booster's seed moves NDCG@10 by several points.
SMALL_LOG_BAGGED_BOOSTERS = 5
DEFAULTS: dict[str, dict] = {
    "cosine": {"neighbours": 100, "shrinkage": 0.0},
    "als": {"factors": 64, "regularization": 0.05, "alpha": 2.0},
    "ease": {"l2": 250.0},
    "user_knn": {"neighbours": 100},
    "ranker": {"training_windows": 2, "min_data_in_leaf": 200},
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
# The layouts GroupLens publishes MovieLens in: its ratings file and its movies file.
MOVIELENS_LAYOUTS = {
    "100K (u.data, u.item)": ("u.data", "u.item"),
    "1M / 10M (ratings.dat, movies.dat)": ("ratings.dat", "movies.dat"),
    "latest / 20M / 25M / 32M (ratings.csv, movies.csv)": ("ratings.csv", "movies.csv"),
}
UNKNOWN_GENRE = MOVIELENS_GENRES[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--interactions",
        type=Path,
        help="CSV or Parquet with user_id, item_id (or merchant_id), event_time (unix s or ISO), "
        "optional category, lat, lng",
    )
    source.add_argument(
        "--movielens",
        type=Path,
        help="a MovieLens directory (100K: u.data, u.item; 1M / 10M: ratings.dat, movies.dat; latest / 20M / 25M / "
        "32M: ratings.csv, movies.csv) or its ratings file",
    )
    source.add_argument(
        "--write-order-log",
        type=Path,
        help="write a synthetic food-delivery order log (about 600 customers, 100 restaurants, four months) "
        "to this CSV or Parquet file for --interactions, print the NDCG@10 of an oracle that knows the world's "
        "next-order chances, and stop",
    )
    parser.add_argument(
        "--loyalty-beta",
        type=_beta_parameters,
        default=LOYALTY_BETA,
        metavar="A,B",
        help="with --write-order-log: the Beta(A, B) the customers' chance of reordering from a merchant they had is "
        f"drawn from (default {LOYALTY_BETA[0]:g},{LOYALTY_BETA[1]:g}; lower A/(A+B): customers who try more new "
        "restaurants)",
    )
    parser.add_argument(
        "--movers",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="with --write-order-log: this share of the customers move house halfway through their orders, each "
        "later order going to the restaurant of the same category as near the new home as the world's choice was "
        "to the old one (a log whose customers' favourites change; default 0)",
    )
    parser.add_argument(
        "--column",
        action="append",
        metavar="NAME=COLUMN",
        help="read NAME (user_id, item_id, event_time, category, lat, lng) from the file's COLUMN; repeatable",
    )
    parser.add_argument(
        "--mode",
        choices=list(MODES),
        default=DISCOVERY,
        help="discovery: only items the user never had; winback: the user's own items count too, "
        "with their most frequent / most recent items as baselines",
    )
    parser.add_argument(
        "--recs-out", type=Path, help="write the ranker's top-10 per test user (user_id, item_id, rank)"
    )
    parser.add_argument("--max-users", type=positive_int, help="benchmark a seeded sample of this many users")
    parser.add_argument("--candidates", type=positive_int, default=100, help="candidates per generator for the ranker")
    parser.add_argument(
        "--bagged-boosters",
        type=positive_int,
        help=f"boosters the ranker averages (default: {SMALL_LOG_BAGGED_BOOSTERS} on logs of at most "
        f"{RANKER_TUNING_MAX_INTERACTIONS:,} train interactions, else 1)",
    )
    parser.add_argument("--no-tune", dest="tune", action="store_false", help="skip the validation grid search")
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="threads for ALS and LightGBM (at most the cores)"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seeds the user sample, ALS, LightGBM and the --write-order-log world",
    )


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {value!r}")
    return share


def _beta_parameters(value: str) -> tuple[float, float]:
    try:
        a, b = (float(part) for part in value.split(","))
    except ValueError:
        a = b = 0.0
    if not (a > 0 and b > 0):
        raise argparse.ArgumentTypeError(f"expected A,B (two positive numbers), got {value!r}")
    return a, b


def load_movielens(path: Path) -> pd.DataFrame:
    """Ratings as implicit interactions; an item's category is its first listed genre (``UNKNOWN_GENRE`` for
    none; no category without the movies file). ``path`` is a MovieLens directory in any of
    ``MOVIELENS_LAYOUTS``, or its ratings file."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    layout = next((files for files in MOVIELENS_LAYOUTS.values() if (directory / files[0]).is_file()), None)
    if layout is None:
        raise ValueError(
            f"{path} is not a MovieLens directory: it needs the files of one of its layouts: "
            f"{'; '.join(MOVIELENS_LAYOUTS)}"
        )
    ratings_path, movies_path = (directory / name for name in layout)
    if ratings_path.suffix == ".dat":
        # "::"-separated: with ":" as the separator (a regex one needs pandas' slow python engine) user, movie
        # and time are fields 0, 2 and 6.
        ratings = pd.read_csv(ratings_path, sep=":", header=None, usecols=[0, 2, 6])
    elif ratings_path.name == "u.data":
        ratings = pd.read_csv(ratings_path, sep="\t", header=None, usecols=[0, 1, 3])
    else:
        ratings = pd.read_csv(ratings_path, usecols=[0, 1, 3])
    ratings.columns = ["user_id", "item_id", "event_time"]
    if ratings.empty:
        raise ValueError(f"{ratings_path} has no ratings")
    if not movies_path.is_file():
        return ratings
    genres = _movielens_genres(movies_path).str.split("|").str[0]
    first_genre = genres.replace({"(no genres listed)": UNKNOWN_GENRE, "": UNKNOWN_GENRE})
    return ratings.assign(category=ratings["item_id"].map(first_genre).fillna(UNKNOWN_GENRE))


def _movielens_genres(movies_path: Path) -> pd.Series:
    """Movie id -> its genres, "|"-separated in the order the movies file lists them."""
    if movies_path.name == "u.item":
        movies = pd.read_csv(movies_path, sep="|", header=None, encoding="latin-1")
        flags = movies.iloc[:, -len(MOVIELENS_GENRES) :].to_numpy(dtype=bool)
        listed = ["|".join(np.array(MOVIELENS_GENRES)[row]) for row in flags]
        return pd.Series(listed, index=movies[0].to_numpy(), dtype=str)
    if movies_path.suffix == ".dat":
        # id::title::genres, and a title may hold "::" too
        fields = [line.split("::") for line in movies_path.read_text(encoding="latin-1").splitlines() if line]
        return pd.Series([row[-1] for row in fields], index=[int(row[0]) for row in fields], dtype=str)
    movies = pd.read_csv(movies_path, dtype={"genres": str})
    return pd.Series(movies["genres"].fillna("").to_numpy(), index=movies.iloc[:, 0].to_numpy(), dtype=str)


def load_interactions(path: Path, columns: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """user_id, item_id (string ids), event_time (unix seconds) and whichever of category, lat, lng the file has,
    and notes on what was read: which of the file's columns became which (``columns``: benchmark column -> the
    file's, else the exact name, else ``COLUMN_ALIASES``), the rows dropped for a blank id or time and the
    duplicate rows (one user, item and time: an order listed once per dish), kept on a log dated by day."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    parquet = path.suffix in (".parquet", ".pq")
    # A CSV as the daily load reads one: UTF-8 with or without a byte-order mark, separated by , ; tab or |.
    csv = {} if parquet else {"sep": csv_separator(path) or ",", "encoding": "utf-8-sig"}
    names = pq.read_schema(path).names if parquet else pd.read_csv(path, nrows=0, **csv).columns
    header = [str(name) for name in names]
    sources = _column_sources(path, header, columns or {})
    if parquet:
        frame = pd.read_parquet(path, columns=list(sources.values()))
    else:
        text = [sources[name] for name in ("user_id", "item_id", "category") if name in sources]
        frame = pd.read_csv(path, usecols=list(sources.values()), dtype=dict.fromkeys(text, str), **csv)
    frame = frame.rename(columns={source: name for name, source in sources.items()})[list(sources)]
    renamed = [f"{name} <- {source}" for name, source in sources.items() if name != source]
    notes = [f"columns read: {', '.join(renamed)}"] if renamed else []
    unread = [column for column in header if column not in sources.values()]
    if unread:
        notes.append(f"columns not read: {', '.join(unread)} (--column NAME=COLUMN reads one as NAME)")
    blank = frame[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    if blank.all():
        raise ValueError(f"{path} has no row with all of {', '.join(REQUIRED_COLUMNS)}")
    if blank.any():
        notes.append(f"dropped {int(blank.sum()):,} rows without {' or '.join(REQUIRED_COLUMNS)}")
    frame = frame[~blank].assign(user_id=lambda f: f["user_id"].astype(str), item_id=lambda f: f["item_id"].astype(str))
    try:
        frame = frame.assign(event_time=unix_seconds(frame["event_time"]))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{path}: event_time must be unix seconds (or ms) or a date-time, e.g. 2025-03-01T12:30:00Z; "
            f"{frame['event_time'].iloc[0]!r} ...: {exc}"
        ) from None
    repeated = int(frame.duplicated(list(REQUIRED_COLUMNS)).sum())
    if repeated and (frame["event_time"] % SECONDS_PER_DAY == 0).all():
        # On a log dated by day, one customer's two orders at one restaurant on one day share a time.
        notes.append(f"kept {repeated:,} rows of a user, item and day seen before: the log is dated by day")
    elif repeated:
        notes.append(f"dropped {repeated:,} duplicate rows (same user, item and event_time)")
        frame = frame.drop_duplicates(list(REQUIRED_COLUMNS))
    return frame.reset_index(drop=True), notes


def _column_sources(path: Path, header: list[str], columns: Mapping[str, str]) -> dict[str, str]:
    """Benchmark column -> the file's column it is read from, in ``REQUIRED_COLUMNS`` then optional order."""
    unknown = [source for source in columns.values() if source not in header]
    if unknown:
        raise ValueError(f"{path} has no column {', '.join(unknown)}; it has {', '.join(header)}")
    by_key = {_column_key(name): name for name in reversed(header)}
    sources: dict[str, str] = {}
    for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        if name in columns:
            sources[name] = columns[name]
            continue
        keys = [_column_key(candidate) for candidate in (name, *COLUMN_ALIASES.get(name, ()))]
        found = next((by_key[key] for key in keys if key in by_key), None)
        if found is None and name == "category":
            found = next((column for column in header if _names_a_category(column)), None)
        if found is not None and found not in sources.values() and found not in columns.values():
            sources[name] = found
    missing = [name for name in REQUIRED_COLUMNS if name not in sources]
    if missing:
        raise ValueError(
            f"{path} has no column {', '.join(missing)}: it needs user_id, item_id and event_time (or one of "
            f"their usual names, e.g. customer_id, merchant_id, timestamp; or say which with --column "
            f"{missing[0]}=NAME); it has {', '.join(header)}"
        )
    return sources


def _names_a_category(column: str) -> bool:
    """``vendor_category_en`` or ``primary_cuisine``: a word for a category, and not the customer's."""
    words = _column_key(column).split("_")
    return bool(CATEGORY_WORDS & set(words)) and not CUSTOMER_WORDS & set(words)


def _column_key(name: str) -> str:
    """``Customer ID``, ``customer-id``, ``customerId`` and ``CustomerID`` are all ``customer_id``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[\s_-]+", "_", words.lower())


def parse_column_mapping(values: list[str] | None) -> dict[str, str]:
    """``--column event_time=ordered_at`` arguments as {benchmark column: the file's column}."""
    mapping: dict[str, str] = {}
    for value in values or []:
        name, _, source = value.partition("=")
        if name not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) or not source:
            raise UsageError(
                f"--column {value!r}: expected NAME=COLUMN with NAME one of "
                f"{', '.join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))}"
            )
        mapping[name] = source
    return mapping


def held_out_relevance(train: pd.DataFrame, held_out: pd.DataFrame, mode: str) -> dict:
    """user -> the held-out items that count as hits; discovery drops the items the user had in ``train``."""
    if exclude_seen(mode):
        seen = pd.MultiIndex.from_frame(train[["user_id", "item_id"]])
        held_out = held_out[~pd.MultiIndex.from_frame(held_out[["user_id", "item_id"]]).isin(seen)]
    return held_out.groupby("user_id")["item_id"].apply(set).to_dict()


def item_categories(matrix: InteractionMatrix, log_categories: pd.Series | None, seed: int) -> pd.Series:
    """Each of ``matrix``'s items' category: ``log_categories`` (item -> the log's category) where the log has a
    category column, else its group among round(sqrt(items)) groups of items ordered by the same users in
    ``matrix`` (``co_ordered_groups``), so tuning groups by its inner train split alone."""
    if log_categories is not None:
        return log_categories.reindex(matrix.item_ids)
    groups = co_ordered_groups(matrix.csr, round(math.sqrt(len(matrix.item_ids))), seed)
    return pd.Series([f"group {group}" for group in groups], index=matrix.item_ids)


def build_generators(
    params: Mapping[str, dict], item_categories: pd.Series | None, seed: int, threads: int
) -> dict[str, Recommender]:
    """The ranker's inputs, aligned with the matrix columns that ``item_categories`` follows."""
    generators: dict[str, Recommender] = {
        "cosine": ItemCosineRecommender(**params["cosine"]),
        "als": ALSRecommender(**params["als"], random_state=seed, num_threads=threads),
        "ease": EASERecommender(**params["ease"]),
        "user_knn": UserKNNRecommender(**params["user_knn"]),
        "popularity": PopularityRecommender(),
    }
    if item_categories is not None:
        generators["category"] = CategoryAffinityRecommender(item_categories.to_numpy(dtype=object))
    return generators


def recommend_ids(recommender: Recommender, matrix: InteractionMatrix, users: np.ndarray, mode: str) -> dict:
    items, _ = recommender.recommend(matrix.user_indices(users), K, exclude_seen=exclude_seen(mode))
    return {user: list(matrix.item_ids[row[row >= 0]]) for user, row in zip(users, items)}


def is_small_log(train: pd.DataFrame) -> bool:
    """A log whose ranker the benchmark tunes and bags: at most ``RANKER_TUNING_MAX_INTERACTIONS`` train rows."""
    return len(train) <= RANKER_TUNING_MAX_INTERACTIONS


def tune(
    train: pd.DataFrame,
    users: list,
    items: list,
    mode: str,
    seed: int,
    threads: int,
    ranker_inputs: dict,
    log_categories: pd.Series | None,
) -> dict[str, dict]:
    """Grid search per generator on the last 20% of each user's train interactions; then the ranker over the chosen
    generators: on a small log its ``RANKER_GRID`` (else its defaults), in winback both orders of the user's own
    items, and on the best of those whether to add the transition features (``ranker_inputs``: build_ranker's
    keyword arguments but the item categories, which ``item_categories`` makes from ``log_categories`` and the
    inner train split)."""
    inner_train, validation = temporal_split(train, TRAIN_SHARE)
    matrix = InteractionMatrix.from_frame(inner_train, users=users, items=items)
    relevant = held_out_relevance(inner_train, validation, mode)
    eval_users = np.array(sorted(relevant))
    factories: dict[str, Callable[..., Recommender]] = {
        "cosine": ItemCosineRecommender,
        "als": lambda **p: ALSRecommender(**p, random_state=seed, num_threads=threads),
        "ease": EASERecommender,
        "user_knn": UserKNNRecommender,
    }
    chosen = dict(DEFAULTS)
    for name, grid in GRIDS.items():
        started = time.perf_counter()
        scored = []
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            recommender = factories[name](**params).fit(matrix.csr)
            listed = recommend_ids(recommender, matrix, eval_users, mode)
            report = ranking_report(listed, relevant, len(items), ks=(K,))
            scored.append((report["ndcg@10"], params))
        ndcg, chosen[name] = max(scored, key=lambda pair: pair[0])
        progress(
            f"[ranking] tuned over {len(scored)} settings: {_label(name, chosen[name])}, validation NDCG@10 "
            f"{ndcg:.4f} ({time.perf_counter() - started:.0f}s)"
        )
    categories = item_categories(matrix, log_categories, seed)

    def validation_scores(settings: dict) -> list[tuple[np.ndarray, dict]]:
        """The ranker's validation NDCG@10 per user on ``settings``; in winback once per order of the user's own
        items."""
        ranker = build_ranker(
            {**chosen, "ranker": settings},
            mode=mode,
            seed=seed,
            threads=threads,
            item_categories=categories,
            **ranker_inputs,
        )
        ranker.fit(inner_train, users=users, items=items)
        # Winback lists order the user's own items by their counts or as the booster scores them: a choice of the
        # lists, not of the fit, so one fit is scored both ways (counts first, so they win a tie).
        scored = []
        for own_order in WINBACK_OWN_ITEM_ORDERS if mode == WINBACK else ({},):
            ranker.own_items_by_count = own_order.get("own_items_by_count", True)
            listed = recommend_ids(ranker, ranker.matrix, eval_users, mode)
            per_user = np.array([ndcg_at_k(listed[user], relevant[user], K) for user in eval_users])
            scored.append((per_user, {**settings, **own_order}))
        return scored

    settings_grid = (
        [dict(zip(RANKER_GRID, values)) for values in itertools.product(*RANKER_GRID.values())]
        if is_small_log(train)
        else [DEFAULTS["ranker"]]
    )
    scored = []
    for number, settings in enumerate(settings_grid, start=1):
        started = time.perf_counter()
        fitted = validation_scores(settings)
        scored += fitted
        progress(
            f"[ranking] ranker settings {number}/{len(settings_grid)} {settings}: validation NDCG@10 "
            f"{max(per_user.mean() for per_user, _ in fitted):.4f} ({time.perf_counter() - started:.0f}s)"
        )
    best, best_settings = max(scored, key=lambda pair: pair[0].mean())
    # Then, on the best settings, whether what came next in the users' sequences helps, by a clear margin.
    started = time.perf_counter()
    with_transitions, with_settings = max(
        validation_scores({**best_settings, "transitions_from_recent_items": True}), key=lambda pair: pair[0].mean()
    )
    gain = with_transitions - best
    standard_error = gain.std(ddof=1) / math.sqrt(len(gain)) if len(gain) > 1 else math.inf
    keep = gain.mean() > TRANSITIONS_MIN_STANDARD_ERRORS * standard_error
    progress(
        f"[ranking] ranker with transitions from the recent items: validation NDCG@10 {with_transitions.mean():.4f} "
        f"against {best.mean():.4f} (gain {gain.mean():+.4f}, standard error {standard_error:.4f}: "
        f"{'kept' if keep else 'left out'}; {time.perf_counter() - started:.0f}s)"
    )
    chosen["ranker"] = with_settings if keep else best_settings
    return chosen


def build_ranker(
    params: Mapping[str, dict],
    mode: str,
    seed: int,
    threads: int,
    candidates: int,
    bagged_boosters: int,
    item_categories: pd.Series | None,
    item_locations: pd.DataFrame | None,
    prior_generator: str | None = None,
) -> RankerRecommender:
    """The benchmark's ranker for ``mode`` over the generators of ``params`` and its own ``params["ranker"]``."""
    ranker_params = params.get("ranker", DEFAULTS["ranker"])
    return RankerRecommender(
        build_generators(params, item_categories, seed, threads),
        item_categories=item_categories,
        item_context=item_locations,
        modes=(mode,),
        candidates_per_generator=candidates,
        bagged_boosters=bagged_boosters,
        training_windows=ranker_params["training_windows"],
        lgbm_params={"min_data_in_leaf": ranker_params["min_data_in_leaf"]},
        own_items_by_count=ranker_params.get("own_items_by_count", True),
        # Discovery only: in winback and on the pipeline's world the features cost NDCG@10 (BENCHMARKS.md).
        ease_of_recent_items=mode == DISCOVERY,
        # Both modes, where the log places its restaurants (without places the feature would be empty).
        distance_from_recent_orders=item_locations is not None,
        transitions_from_recent_items=ranker_params.get("transitions_from_recent_items", False),
        prior_generator=prior_generator,
        prior_weight=DISCOVERY_PRIOR_WEIGHT,
        num_threads=threads,
        seed=seed,
    )


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


def benchmark_interactions(args: argparse.Namespace) -> pd.DataFrame:
    """The benchmark's interactions, a seeded sample of ``--max-users`` users when asked."""
    try:
        if args.movielens:
            frame, notes = load_movielens(args.movielens), []
        else:
            frame, notes = load_interactions(args.interactions, parse_column_mapping(args.column))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for note in notes:
        print(note)
    if args.max_users:
        rng = np.random.default_rng(args.seed)
        all_users = frame["user_id"].unique()
        frame = frame[frame["user_id"].isin(rng.choice(all_users, min(args.max_users, len(all_users)), replace=False))]
    return frame


def evaluate(
    recommender: Recommender, matrix: InteractionMatrix, users: np.ndarray, relevant: dict, mode: str
) -> dict[str, float]:
    return ranking_report(recommend_ids(recommender, matrix, users, mode), relevant, len(matrix.item_ids), ks=(K,))


def write_stand_in(args: argparse.Namespace) -> None:
    """``--write-order-log``: write the stand-in log and print, where the world drew every order (no ``--movers``),
    the NDCG@10 of its oracle."""
    if args.movers:
        log, oracle = with_movers(order_log(args.seed, args.loyalty_beta), args.movers, args.seed), None
    else:
        log, oracle = order_log_with_oracle(args.seed, TRAIN_SHARE, loyalty_beta=args.loyalty_beta)
    write_order_log(args.write_order_log, log)
    a, b = args.loyalty_beta
    moving = f", {args.movers:.0%} of the customers moving house halfway" if args.movers else ""
    print(
        f"wrote {len(log):,} orders of {log['user_id'].nunique():,} customers at "
        f"{log['merchant_id'].nunique():,} restaurants to {args.write_order_log} (loyalty Beta({a:g}, {b:g}), "
        f"mean {a / (a + b):.2f}{moving})"
    )
    if oracle is None:
        print("no oracle: the world did not draw the movers' later orders")
        return
    train, held_out = temporal_split(log.rename(columns={ITEM_ID_ALIAS: "item_id"}), TRAIN_SHARE)
    for oracle_mode, lists in oracle.items():
        relevant = held_out_relevance(train, held_out, oracle_mode)
        report = ranking_report(lists, relevant, log["merchant_id"].nunique(), ks=(K,))
        print(
            f"{oracle_mode}: the world's own next-order chances at each customer's split (an oracle, for "
            f"reference) score NDCG@10 {report['ndcg@10']:.4f} on {len(relevant):,} test customers"
        )


def run(args: argparse.Namespace) -> int:
    if args.write_order_log:
        write_stand_in(args)
        return 0
    mode = args.mode
    frame = benchmark_interactions(args)
    train, test = temporal_split(frame, TRAIN_SHARE)
    users = sorted(frame["user_id"].unique())
    items = sorted(frame["item_id"].unique())
    relevant = held_out_relevance(train, test, mode)
    test_users = np.array(sorted(relevant))
    if not len(test_users):
        raise UsageError(
            f"{args.movielens or args.interactions} has no {mode} test users: the benchmark holds out the last "
            f"{1 - TRAIN_SHARE:.0%} of each user's interactions, so a user needs at least "
            f"{fewest_to_hold_out(TRAIN_SHARE)}"
            + (" and a held-out item they had not had before" if exclude_seen(mode) else "")
        )
    matrix = InteractionMatrix.from_frame(train, users=users, items=items)
    log_categories = frame.groupby("item_id")["category"].first() if "category" in frame.columns else None
    categories = item_categories(matrix, log_categories, args.seed)
    if log_categories is None:
        print(
            f"no category column: {categories.nunique()} groups of items ordered by the same users in train stand in "
            "for categories"
        )
    has_location = set(LOCATION_COLUMNS) <= set(frame.columns)
    item_locations = frame.groupby("item_id")[LOCATION_COLUMNS].median() if has_location else None
    print(
        f"{len(frame):,} interactions, {len(users):,} users, {len(items):,} items; "
        f"train {len(train):,}, test {len(test):,}; {mode} mode: {len(test_users):,} test users"
    )

    started = time.perf_counter()
    small_log = is_small_log(train)
    ranker_inputs = {
        "candidates": args.candidates,
        "bagged_boosters": args.bagged_boosters or (SMALL_LOG_BAGGED_BOOSTERS if small_log else 1),
        "item_locations": item_locations,
        "prior_generator": DISCOVERY_PRIOR if mode == DISCOVERY and small_log else None,
    }
    try:
        params = (
            tune(train, users, items, mode, args.seed, args.threads, ranker_inputs, log_categories)
            if args.tune
            else DEFAULTS
        )
    except TooLittleHistoryError as exc:
        raise _too_little_history(args, "its validation split", exc) from None
    if args.tune:
        print(f"tuned on validation carved from train in {time.perf_counter() - started:.0f}s: {params}")

    generators = build_generators(params, categories, args.seed, args.threads)
    # (name, model, fit arguments)
    models: list[tuple[str, Recommender, tuple]] = [("random", RandomRecommender(seed=args.seed), (matrix.csr,))]
    models += [(_label(name, params.get(name, {})), model, (matrix.csr,)) for name, model in generators.items()]
    if mode == WINBACK:
        last_times = last_interaction_times(train, matrix)
        models += [
            (f"{FREQUENT_BASELINE} (then popular)", FrequentItemsRecommender(), (matrix.csr, last_times)),
            (f"{RECENT_BASELINE} (then popular)", RecentItemsRecommender(), (matrix.csr, last_times)),
        ]
    rows = []
    for name, model, fit_arguments in models:
        started = time.perf_counter()
        model.fit(*fit_arguments)
        seconds = time.perf_counter() - started
        rows.append((name, evaluate(model, matrix, test_users, relevant, mode), seconds))

    ranker = build_ranker(
        params, mode=mode, seed=args.seed, threads=args.threads, item_categories=categories, **ranker_inputs
    )
    progress("[ranking] fitting the ranker on train ...")
    started = time.perf_counter()
    try:
        ranker.fit(train, users=users, items=items)
    except TooLittleHistoryError as exc:
        raise _too_little_history(args, "train", exc) from None
    seconds = time.perf_counter() - started
    ranked = recommend_ids(ranker, ranker.matrix, test_users, mode)
    bagged = f", {ranker.bagged_boosters} bagged boosters" if ranker.bagged_boosters > 1 else ""
    prior = f", started from {ranker.prior_generator}'s order" if ranker.prior_generator else ""
    rows.append(
        (
            f"ranker (LightGBM lambdarank{bagged}{prior})",
            ranking_report(ranked, relevant, len(items), ks=(K,)),
            seconds,
        )
    )

    print(format_table(rows))
    ranker_ndcg = rows[-1][1]["ndcg@10"]
    generator_rows = rows[1 : 1 + len(generators)]
    best_name, best_report, _ = max(generator_rows, key=lambda row: row[1]["ndcg@10"])
    if mode == WINBACK:
        frequent = rows[1 + len(generators)][1]
        print(f"ranker NDCG@10 / {FREQUENT_BASELINE} = {_ratio(ranker_ndcg, frequent['ndcg@10'])}")
    else:
        # EASE is the discovery baseline the targets are set against (BENCHMARKS.md).
        ease = next(report for name, report, _ in generator_rows if name.startswith("ease"))
        print(f"ranker NDCG@10 / ease = {_ratio(ranker_ndcg, ease['ndcg@10'])}")
    print(f"ranker NDCG@10 / best generator ({best_name}) = {_ratio(ranker_ndcg, best_report['ndcg@10'])}")
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


def _too_little_history(args: argparse.Namespace, split: str, exc: TooLittleHistoryError) -> UsageError:
    return UsageError(
        f"{args.movielens or args.interactions}: too few interactions to train the ranker on {split}: {exc}"
    )


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.3f}" if denominator > 0 else "n/a (the baseline scores 0)"
