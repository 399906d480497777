"""A food-delivery order log for trying ``rekindle benchmark ranking --interactions`` without a real one.

Shaped like the small real log the ranking benchmark is judged on (about 600 ordering customers, 100
restaurants, 7,000 orders over four months, string ids): the orders (``checkout_completed``) of the synthetic
marketplace at a custom scale, one row per order with user_id, merchant_id, event_time (ISO-8601 UTC), and the
restaurant's category, lat and lng.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ml.recommend.modes import DISCOVERY, WINBACK
from ml.recommend.split import temporal_split
from ml.synthetic.marketplace import LOYALTY_BETA, generate_marketplace
from ml.synthetic.world import MarketSimulator, OrderObserver, plane_km

ORDER_LOG_COLUMNS = ["user_id", "merchant_id", "event_time", "category", "lat", "lng"]
# About 80% of the generated users order in the window, so this many give about 600 customers.
GENERATED_USERS = 750
MERCHANTS = 100
DAYS = 120
END_DATE = dt.date(2025, 6, 1)


def order_log(seed: int = 0, loyalty_beta: tuple[float, float] = LOYALTY_BETA) -> pd.DataFrame:
    """The stand-in log, sorted by time; ids are strings that do not parse as numbers (``c0042``, ``r007``).
    ``loyalty_beta`` draws the customers' chance of reordering from a merchant they had (lower: a log whose
    customers try more new restaurants)."""
    return _generate(seed, order_observer=None, loyalty_beta=loyalty_beta)


def order_log_with_oracle(
    seed: int, train_share: float, n: int = 10, loyalty_beta: tuple[float, float] = LOYALTY_BETA
) -> tuple[pd.DataFrame, dict[str, dict[str, list[str]]]]:
    """:func:`order_log` and, per mode, the oracle's lists: for each customer with held-out orders under the ranking
    benchmark's per-user split (``temporal_split`` at ``train_share``), the ``n`` merchants the world itself made
    likeliest for their next order just after their last training order (``MerchantChooser.next_order_probabilities``;
    in discovery, among the merchants they had not ordered from). It knows what no model of the log can see (the
    orders before the window, each customer's loyalty and habits), so its NDCG@10 is a reference for how much better
    than the baselines a model can be on this log."""
    after_order: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    codes: list[np.ndarray] = []

    def observe(simulator: MarketSimulator, users: np.ndarray, order_s: np.ndarray, day_start_s: int) -> None:
        if not codes:
            codes.append(_restaurant_ids(pd.Series(simulator.catalog.merchant_id)).to_numpy())
        chances = simulator.chooser.next_order_probabilities(users, day_start_s, simulator.state)
        customers = _customer_ids(pd.Series(simulator.population.user_id[users]))
        for customer, time_s, row in zip(customers, order_s, chances):
            after_order[customer].append((int(time_s), row))

    log = _generate(seed, order_observer=observe, loyalty_beta=loyalty_beta)
    train, held_out = temporal_split(log, train_share, item_col="merchant_id")
    training_orders = train.groupby("user_id").size()
    had = train.groupby("user_id")["merchant_id"].apply(set)
    merchants = codes[0]
    oracle: dict[str, dict[str, list[str]]] = {WINBACK: {}, DISCOVERY: {}}
    for customer in held_out["user_id"].unique():
        # The state after the customer's last training order (their orders in time order, as the split takes them).
        _, chances = sorted(after_order[customer], key=lambda pair: pair[0])[training_orders[customer] - 1]
        ranked = merchants[np.argsort(-chances, kind="stable")]
        oracle[WINBACK][customer] = list(ranked[:n])
        oracle[DISCOVERY][customer] = [m for m in ranked if m not in had[customer]][:n]
    return log, oracle


def with_movers(log: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """``log`` with ``share`` of its customers (seeded) moving house halfway through their orders. Each mover's new
    home is where a restaurant of the log is (drawn per customer), their old one the mean place of their orders before
    the move; from their middle order on, each order goes to the restaurant of the same category that lies as near the
    new home as the one the world chose lay to the old one (the k-th nearest of its category for the k-th nearest).
    Their favourites change from then on and stay as near home, as on a real log whose customers move; the stand-in
    world's customers otherwise do not."""
    rng = np.random.default_rng(seed)
    customers = log["user_id"].unique()
    movers = np.sort(rng.choice(customers, round(share * len(customers)), replace=False))
    restaurants = log.groupby("merchant_id")[["category", "lat", "lng"]].first()
    places = np.column_stack(plane_km(restaurants["lat"].to_numpy(), restaurants["lng"].to_numpy()))
    by_category = [np.flatnonzero(restaurants["category"].to_numpy() == c) for c in restaurants["category"].unique()]
    index_of = pd.Series(np.arange(len(restaurants)), index=restaurants.index)
    orders = log.sort_values("event_time", kind="mergesort")
    position = orders.groupby("user_id").cumcount()
    # The middle order on, after at least one: a customer's first order shows where they lived.
    moved = (position >= np.maximum(orders.groupby("user_id")["user_id"].transform("size") // 2, 1)).to_numpy()
    merchants = index_of[orders["merchant_id"]].to_numpy(copy=True)
    rows_of = pd.Series(np.arange(len(orders))).groupby(orders["user_id"].to_numpy()).apply(np.asarray)
    for customer in movers:
        rows = rows_of[customer]
        old_home = places[merchants[rows[~moved[rows]]]].mean(axis=0)
        new_home = places[rng.integers(len(places))]
        mapping = np.arange(len(places))
        for same in by_category:
            nearest_old = same[np.argsort(np.linalg.norm(places[same] - old_home, axis=1), kind="stable")]
            nearest_new = same[np.argsort(np.linalg.norm(places[same] - new_home, axis=1), kind="stable")]
            mapping[nearest_old] = nearest_new
        later = rows[moved[rows]]
        merchants[later] = mapping[merchants[later]]
    return (
        orders.assign(merchant_id=restaurants.index.to_numpy()[merchants])[["user_id", "merchant_id", "event_time"]]
        .join(restaurants, on="merchant_id")
        .sort_values(["event_time", "user_id", "merchant_id"], kind="mergesort")
        .reset_index(drop=True)[ORDER_LOG_COLUMNS]
    )


def _generate(seed: int, order_observer: OrderObserver | None, loyalty_beta: tuple[float, float]) -> pd.DataFrame:
    market = generate_marketplace(
        seed=seed,
        days=DAYS,
        end_date=END_DATE,
        n_users=GENERATED_USERS,
        n_merchants=MERCHANTS,
        order_observer=order_observer,
        loyalty_beta=loyalty_beta,
    )
    orders = market.events[market.events["event_type"] == "checkout_completed"]
    merchants = market.merchants.set_index("merchant_id")[["category", "lat", "lng"]]
    log = orders[["user_id", "merchant_id", "event_time"]].join(merchants, on="merchant_id")
    return (
        log.assign(
            user_id=_customer_ids(log["user_id"]),
            merchant_id=_restaurant_ids(log["merchant_id"]),
            event_time=pd.to_datetime(log["event_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .sort_values(["event_time", "user_id", "merchant_id"], kind="mergesort")
        .reset_index(drop=True)[ORDER_LOG_COLUMNS]
    )


def _customer_ids(ids: pd.Series) -> pd.Series:
    return "c" + ids.astype(str).str.zfill(4)


def _restaurant_ids(ids: pd.Series) -> pd.Series:
    return "r" + ids.astype(str).str.zfill(3)


def write_order_log(path: Path, log: pd.DataFrame) -> None:
    """Write an order log to ``path`` (Parquet for .parquet, else CSV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        log.to_parquet(path, index=False)
    else:
        log.to_csv(path, index=False)
