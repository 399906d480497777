"""A seeded synthetic delivery marketplace around Doha, with the ground truth behind it.

``generate_marketplace`` draws merchants, users and their hidden traits, runs the world
(``ml.synthetic.world``) through the window [end_date - days, end_date) with a few randomised win-back
campaigns, and returns the raw tables plus the truth: each user's tastes, traits and home location, each
merchant's latent popularity and day-part profile and, for every offer arm, the true probability of coming
back and the expected incremental margin. How users pick merchants (taste, popularity, price fit, distance
from home, day-part) is written out in ``ml.synthetic.world``'s docstring.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, fields, replace
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from ml.offers.arms import NO_OFFER
from ml.synthetic.world import (
    CAMPAIGN_SEND_HOUR,
    DAYPARTS,
    DOHA_LAT,
    EVENT_TYPES,
    GENERATED_EVENT_IDS,
    KM_PER_DEGREE,
    MEAN_ORDER_TOTAL_BY_PRICE_LEVEL,
    PRICE_AVERSION,
    REWARD_SIZES,
    SECONDS_PER_DAY,
    Catalog,
    MarketSimulator,
    MerchantChooser,
    OrderObserver,
    Population,
    UserState,
    expected_orders_per_reactivation,
    habitual_dayparts,
    sample_rows,
    timestamps,
    true_reactivation_probability,
)

__all__ = [
    "EVENT_TYPES",
    "REWARD_SIZES",
    "SCALES",
    "CATEGORIES",
    "Marketplace",
    "generate_marketplace",
    "offer_truth",
]

SCALES = {"demo": (5_000, 500), "full": (55_000, 5_700)}  # (users, merchants)

CATEGORIES = (
    "burgers",
    "pizza",
    "shawarma",
    "indian",
    "chinese",
    "sushi",
    "healthy",
    "desserts",
    "coffee",
    "grocery",
    "arabic",
    "breakfast",
)
CATEGORY_SHARE = np.array([0.12, 0.09, 0.11, 0.10, 0.07, 0.05, 0.07, 0.08, 0.09, 0.06, 0.10, 0.06])
# P(price level 1..4) per category, in CATEGORIES order
CATEGORY_PRICE_MIX = np.array(
    [
        [0.30, 0.45, 0.20, 0.05],
        [0.25, 0.45, 0.25, 0.05],
        [0.60, 0.30, 0.10, 0.00],
        [0.30, 0.40, 0.25, 0.05],
        [0.25, 0.40, 0.30, 0.05],
        [0.00, 0.20, 0.45, 0.35],
        [0.10, 0.40, 0.40, 0.10],
        [0.35, 0.45, 0.15, 0.05],
        [0.50, 0.40, 0.10, 0.00],
        [0.40, 0.45, 0.15, 0.00],
        [0.30, 0.40, 0.20, 0.10],
        [0.45, 0.40, 0.15, 0.00],
    ]
)
# Each category's typical share of business at lunch, dinner and late night, in CATEGORIES order; a merchant's
# own profile is a Dirichlet draw around its category's (MERCHANT_DAYPART_CONCENTRATION), floored so that every
# merchant takes some orders in every day-part.
CATEGORY_DAYPART = np.array(
    [
        [0.25, 0.45, 0.30],
        [0.20, 0.50, 0.30],
        [0.30, 0.40, 0.30],
        [0.35, 0.55, 0.10],
        [0.35, 0.50, 0.15],
        [0.35, 0.55, 0.10],
        [0.65, 0.30, 0.05],
        [0.15, 0.45, 0.40],
        [0.70, 0.20, 0.10],
        [0.50, 0.40, 0.10],
        [0.35, 0.50, 0.15],
        [0.85, 0.10, 0.05],
    ]
)
MERCHANT_DAYPART_CONCENTRATION = 6.0
MIN_DAYPART_SHARE = 0.02
NAME_STEMS = {
    "burgers": ("Burger Barn", "Grill Stack", "Patty Lab", "Smash House"),
    "pizza": ("Pizza Forno", "Slice Republic", "Napoli Oven", "Crust & Co"),
    "shawarma": ("Shawarma Corner", "Saj Station", "Wrap Street", "Al Sikh"),
    "indian": ("Spice Garden", "Tandoor Nights", "Curry Leaf", "Masala Junction"),
    "chinese": ("Golden Wok", "Dragon Bowl", "Jade Noodle", "Bamboo House"),
    "sushi": ("Sakura Sushi", "Maki Bar", "Umami Roll", "Tokyo Table"),
    "healthy": ("Green Bowl", "Fit Kitchen", "Leaf & Grain", "Protein Lab"),
    "desserts": ("Sugar Rush", "Kunafa House", "Gelato Lane", "Sweet Spot"),
    "coffee": ("Bean There", "Karak Corner", "Daily Grind", "Roast Room"),
    "grocery": ("Fresh Mart", "Corner Basket", "Daily Market", "Green Grocer"),
    "arabic": ("Mandi Palace", "Majlis Kitchen", "Souq Grill", "Bedouin Table"),
    "breakfast": ("Morning Table", "Sunny Side", "Fatayer Oven", "Early Bird"),
}

DOHA_LNG = 51.5310
MERCHANT_JITTER_DEGREES = 0.008  # sd around the zone centre
HOME_JITTER_DEGREES = 0.010
PLATFORMS = ("ios", "android", "web")
PLATFORM_SHARE = (0.45, 0.40, 0.15)

MID_WINDOW_OPENING_SHARE = 0.05
IN_WINDOW_SIGNUP_SHARE = 0.10
MARKETING_OPT_IN_SHARE = 0.80
DORMANT_AT_START_SHARE = 0.15  # pre-window users who had already stopped ordering
NEVER_ORDERED_SHARE_OF_DORMANT = 0.20
UNRESPONSIVE_SHARE = 0.25  # users no offer moves
FRAGILE_SHARE = 0.35  # users with a high churn hazard
LOYALTY_BETA = (6.0, 3.0)  # Beta(a, b) of each user's chance that an order goes to a merchant used before

# Win-back campaigns: the first after two weeks of event history, so the features of its exposures (orders,
# recency, browsing before sending) mean what they mean on the run date; then every 8 days.
FIRST_CAMPAIGN_DAY = 14
CAMPAIGN_EVERY_DAYS = 8
WINBACK_MIN_INACTIVE_DAYS = 7
HOLDOUT_SHARE = 0.15
OFFER_ARMS = tuple(product(EVENT_TYPES, REWARD_SIZES))

TRUTH_FOLDER = "ground_truth"
TABLE_FILES = {
    "users": "users.parquet",
    "merchants": "merchants.parquet",
    "events": "events.parquet",
    "campaign_exposures": "campaign_exposures.parquet",
    "user_truth": f"{TRUTH_FOLDER}/user_truth.parquet",
    "merchant_truth": f"{TRUTH_FOLDER}/merchant_truth.parquet",
    "offer_truth": f"{TRUTH_FOLDER}/offer_truth.parquet",
}

# How `rekindle generate --ids` names users and merchants: the world's integers, or UUIDs derived from them
# (uuid5 in a fixed namespace per kind, so the same world always gets the same UUIDs).
ID_FORMATS = ("integer", "uuid")
UUID_NAMESPACES = {
    "user_id": uuid.uuid5(uuid.NAMESPACE_URL, "https://rekindle.invalid/synthetic/users"),
    "merchant_id": uuid.uuid5(uuid.NAMESPACE_URL, "https://rekindle.invalid/synthetic/merchants"),
}


@dataclass
class Marketplace:
    users: pd.DataFrame
    merchants: pd.DataFrame
    events: pd.DataFrame
    campaign_exposures: pd.DataFrame
    user_truth: pd.DataFrame
    merchant_truth: pd.DataFrame
    offer_truth: pd.DataFrame

    def write(self, folder: Path, ids: str = "integer") -> None:
        """Raw tables as Parquet in ``folder``, the truth under ``folder/ground_truth``; users and merchants named by
        ``ids``, one of ID_FORMATS."""
        if ids not in ID_FORMATS:
            raise ValueError(f"unknown id format {ids!r}; choose one of {', '.join(ID_FORMATS)}")
        market = self.with_uuid_ids() if ids == "uuid" else self
        for table in fields(market):
            path = Path(folder) / TABLE_FILES[table.name]
            path.parent.mkdir(parents=True, exist_ok=True)
            getattr(market, table.name).to_parquet(path, index=False)

    def with_uuid_ids(self) -> Marketplace:
        """The same world with every user_id and merchant_id, in every table, replaced by its UUID (as text)."""
        renamed = {}
        for table in fields(self):
            frame = getattr(self, table.name)
            renamed[table.name] = frame.assign(
                **{column: _uuid_ids(frame[column], column) for column in UUID_NAMESPACES if column in frame.columns}
            )
        return replace(self, **renamed)

    @classmethod
    def read(cls, folder: Path) -> Marketplace:
        """The world written to ``folder``; campaign replay simulates users by their integer ids, so a world written
        with UUID ids is refused."""
        market = cls(**{table.name: pd.read_parquet(Path(folder) / TABLE_FILES[table.name]) for table in fields(cls)})
        if not pd.api.types.is_integer_dtype(market.users["user_id"]):
            raise ValueError(
                f"{folder} holds a synthetic world written with UUID ids (rekindle generate --ids uuid); "
                "simulating campaigns needs the integer-id world: generate it again without --ids uuid"
            )
        return market


def _uuid_ids(ids: pd.Series, column: str) -> pd.Series:
    distinct = ids.dropna().unique()
    names = {n: str(uuid.uuid5(UUID_NAMESPACES[column], str(n))) for n in distinct}
    return ids.map(names).astype(object)


def generate_marketplace(
    scale: str = "demo",
    seed: int = 42,
    days: int = 30,
    end_date: dt.date | None = None,
    margin_rate: float = 0.30,
    n_users: int | None = None,
    n_merchants: int | None = None,
    order_observer: OrderObserver | None = None,
    loyalty_beta: tuple[float, float] = LOYALTY_BETA,
) -> Marketplace:
    """The marketplace's tables for the ``days`` days before ``end_date`` (default: today, UTC); ``order_observer``
    is handed to the simulator (``MarketSimulator``); ``loyalty_beta`` is the Beta distribution of the users'
    loyalty."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    if days < 1:
        raise ValueError("days must be at least 1")
    scale_users, scale_merchants = SCALES[scale]
    n_users = n_users or scale_users
    n_merchants = n_merchants or scale_merchants
    end_date = end_date or dt.datetime.now(dt.UTC).date()
    start = pd.Timestamp(end_date - dt.timedelta(days=days), tz="UTC")
    world_rng, user_rng, history_rng, simulation_rng, assignment_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(5)
    )

    zones = _draw_zones(n_merchants, world_rng)
    merchants, merchant_truth = _draw_merchants(n_merchants, zones, start, days, world_rng)
    popularity = merchant_truth["popularity"].to_numpy(float)
    users = _draw_users(n_users, zones, start, days, user_rng)
    traits = _draw_user_traits(users, zones, user_rng, loyalty_beta)

    zone_names, categories = list(zones["zone"]), list(CATEGORIES)
    population = Population.from_frames(users, traits, start, categories, zone_names)
    catalog = Catalog.from_frame(merchants, merchant_truth, popularity, start, categories, zone_names)
    simulator = MarketSimulator(
        population,
        catalog,
        _history_before_window(population, catalog, history_rng),
        start,
        days,
        simulation_rng,
        order_observer,
    )
    campaign_days = _campaign_days(days)
    for day in range(days):
        if day in campaign_days:
            _send_winback_campaign(simulator, day, assignment_rng)
        simulator.simulate_day(day)

    id_rng = np.random.default_rng([GENERATED_EVENT_IDS, seed, start.toordinal(), days, n_users, n_merchants])
    user_truth = _user_truth(traits, simulator, catalog, popularity)
    return Marketplace(
        users=users,
        merchants=merchants,
        events=simulator.events_frame(id_rng),
        campaign_exposures=simulator.exposures_frame(),
        user_truth=user_truth,
        merchant_truth=merchant_truth,
        offer_truth=offer_truth(user_truth, margin_rate),
    )


def offer_truth(user_truth: pd.DataFrame, margin_rate: float) -> pd.DataFrame:
    """One row per user x arm (no offer, then every event type x reward size) with the true
    reactivation probability, incremental margin against no offer over the reactivation window, and
    the single best arm.

    A user who comes back keeps ordering for the rest of the window, so an extra reactivation is worth
    ``orders_per_reactivation`` orders; the reward is paid once, on the redeemed first order."""
    arms = [(NO_OFFER, 0.0), *OFFER_ARMS]
    arm_types = np.array([event_type for event_type, _ in arms], dtype=object)
    arm_rewards = np.array([reward for _, reward in arms])
    p_reactivate = np.column_stack(
        [true_reactivation_probability(user_truth, event_type, reward) for event_type, reward in arms]
    )
    order_value = user_truth["expected_order_value"].to_numpy(float)
    orders = expected_orders_per_reactivation(user_truth)
    # The reward is paid on every redeemed order, including those that would have happened anyway.
    window_value = margin_rate * order_value * orders
    margin = window_value[:, None] * (p_reactivate - p_reactivate[:, [0]]) - arm_rewards * p_reactivate
    best_offer = margin[:, 1:].argmax(axis=1) + 1
    best = np.where(margin[:, 1:].max(axis=1) > 0, best_offer, 0)
    n_users, n_arms = margin.shape
    return pd.DataFrame(
        {
            "user_id": np.repeat(user_truth["user_id"].to_numpy(np.int64), n_arms),
            "event_type": pd.array(np.tile(arm_types, n_users), dtype="str"),
            "reward_size": np.tile(arm_rewards, n_users),
            "p_reactivate": p_reactivate.ravel(),
            "expected_order_value": np.repeat(order_value, n_arms),
            "orders_per_reactivation": np.repeat(orders, n_arms),
            "expected_incremental_margin": margin.ravel(),
            "is_best": (np.arange(n_arms)[None, :] == best[:, None]).ravel(),
        }
    )


# --------------------------------------------------------------------------- places and merchants


def _draw_zones(n_merchants: int, rng: np.random.Generator) -> pd.DataFrame:
    """Zones on a spiral out from central Doha: the further out, the fewer merchants (remoteness 0..1)."""
    n_zones = max(3, round(0.55 * np.sqrt(n_merchants)))
    rank = np.arange(n_zones)
    distance_km = 1.5 + 16.0 * np.sqrt(rank / (n_zones - 1))
    angle = rank * 2.39996 + rng.uniform(0, 2 * np.pi)  # golden angle: evenly spread directions
    lat = DOHA_LAT + distance_km / KM_PER_DEGREE * np.sin(angle)
    lng = DOHA_LNG + distance_km / (KM_PER_DEGREE * np.cos(np.radians(DOHA_LAT))) * np.cos(angle)
    density = (rank + 1.0) ** -0.7
    return pd.DataFrame(
        {
            "zone": [f"Z{number:02d}" for number in rank + 1],
            "lat": lat,
            "lng": lng,
            "merchant_share": density / density.sum(),
            "remoteness": (distance_km - distance_km.min()) / (distance_km.max() - distance_km.min()),
        }
    )


def _draw_merchants(
    n_merchants: int,
    zones: pd.DataFrame,
    start: pd.Timestamp,
    days: int,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The merchants table and their truth: latent popularity (Zipf by rank within the category) and the
    day-part profile (shares of business at lunch, dinner, late night)."""
    category = rng.choice(len(CATEGORIES), size=n_merchants, p=CATEGORY_SHARE)
    zone = rng.choice(len(zones), size=n_merchants, p=zones["merchant_share"].to_numpy())
    price_level = sample_rows(CATEGORY_PRICE_MIX[category], rng) + 1
    rank_in_category = pd.Series(rng.random(n_merchants)).groupby(category).rank(method="first").to_numpy()
    popularity = rank_in_category**-1.1

    opens_mid_window = rng.random(n_merchants) < MID_WINDOW_OPENING_SHARE
    opened_days = np.where(
        opens_mid_window,
        rng.uniform(0.1 * days, 0.9 * days, n_merchants),
        -rng.uniform(60, 2_500, n_merchants),
    )
    categories = np.array(CATEGORIES)[category]
    merchants = pd.DataFrame(
        {
            "merchant_id": np.arange(1, n_merchants + 1, dtype=np.int64),
            "merchant_name": pd.array(_merchant_names(categories, rng), dtype="str"),
            "category": pd.array(categories, dtype="str"),
            "zone": pd.array(zones["zone"].to_numpy()[zone], dtype="str"),
            "lat": zones["lat"].to_numpy()[zone] + rng.normal(0, MERCHANT_JITTER_DEGREES, n_merchants),
            "lng": zones["lng"].to_numpy()[zone] + rng.normal(0, MERCHANT_JITTER_DEGREES, n_merchants),
            "price_level": price_level.astype(np.int64),
            "opened_at": timestamps(start, np.floor(opened_days * SECONDS_PER_DAY)),
        }
    )
    draws = rng.gamma(MERCHANT_DAYPART_CONCENTRATION * CATEGORY_DAYPART[category])  # Dirichlet rows
    profile = MIN_DAYPART_SHARE + (1.0 - len(DAYPARTS) * MIN_DAYPART_SHARE) * draws / draws.sum(axis=1, keepdims=True)
    merchant_truth = pd.DataFrame({"merchant_id": merchants["merchant_id"], "popularity": popularity})
    for code, daypart in enumerate(DAYPARTS):
        merchant_truth[f"daypart_{daypart}"] = profile[:, code]
    return merchants, merchant_truth


def _merchant_names(categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Readable unique names: a stem from the category plus a running number per stem."""
    stems = np.array([rng.choice(NAME_STEMS[category]) for category in categories], dtype=object)
    number = pd.Series(stems).groupby(stems).cumcount().to_numpy() + 1
    return np.array([f"{stem} {n}" for stem, n in zip(stems, number, strict=True)], dtype=object)


# --------------------------------------------------------------------------- users


def _draw_users(
    n_users: int,
    zones: pd.DataFrame,
    start: pd.Timestamp,
    days: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    signs_up_in_window = rng.random(n_users) < IN_WINDOW_SIGNUP_SHARE
    signup_days = np.where(signs_up_in_window, rng.uniform(0, days, n_users), -rng.uniform(30, 730, n_users))
    # Users live where the merchants are, but less strongly so.
    zone_share = 0.5 * zones["merchant_share"].to_numpy() + 0.5 / len(zones)
    return pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "signup_at": timestamps(start, np.floor(signup_days * SECONDS_PER_DAY)),
            "platform": pd.array(rng.choice(PLATFORMS, size=n_users, p=PLATFORM_SHARE), dtype="str"),
            "home_zone": pd.array(rng.choice(zones["zone"].to_numpy(), size=n_users, p=zone_share), dtype="str"),
            "marketing_opt_in": rng.random(n_users) < MARKETING_OPT_IN_SHARE,
        }
    )


def _draw_user_traits(
    users: pd.DataFrame, zones: pd.DataFrame, rng: np.random.Generator, loyalty_beta: tuple[float, float]
) -> pd.DataFrame:
    """Hidden per-user parameters: what they like, when and how often they order, how they react to offers."""
    n_users = len(users)
    taste = _draw_tastes(n_users, rng)
    habitual_daypart = np.eye(3)[rng.choice(3, n_users, p=[0.35, 0.5, 0.15])]  # lunch, dinner, late
    daypart = 0.7 * habitual_daypart + 0.3 * rng.dirichlet([1.0, 1.0, 1.0], n_users)
    responsive = rng.random(n_users) >= UNRESPONSIVE_SHARE
    fragile = rng.random(n_users) < FRAGILE_SHARE
    traits = pd.DataFrame({"user_id": users["user_id"].to_numpy()})
    for code, category in enumerate(CATEGORIES):
        traits[f"taste_{category}"] = taste[:, code]
    traits["favourite_category"] = pd.array(np.array(CATEGORIES)[taste.argmax(axis=1)], dtype="str")
    traits["activity_rate"] = np.clip(rng.lognormal(np.log(0.12), 0.8, n_users), 0.01, 1.5)  # orders per day
    traits["price_sensitivity"] = rng.beta(1.5, 2.0, n_users)
    traits["deal_responsiveness"] = np.where(responsive, rng.beta(3.0, 1.5, n_users), 0.0)
    home_zone = zones.set_index("zone").reindex(users["home_zone"])
    traits["remoteness"] = home_zone["remoteness"].to_numpy()
    traits["home_lat"] = home_zone["lat"].to_numpy() + rng.normal(0, HOME_JITTER_DEGREES, n_users)
    traits["home_lng"] = home_zone["lng"].to_numpy() + rng.normal(0, HOME_JITTER_DEGREES, n_users)
    traits["churn_hazard"] = np.where(fragile, rng.uniform(0.03, 0.10, n_users), rng.uniform(0.001, 0.01, n_users))
    traits["loyalty"] = rng.beta(*loyalty_beta, n_users)
    traits["weekend_multiplier"] = rng.lognormal(0.1, 0.35, n_users)
    traits["daypart_lunch"], traits["daypart_dinner"], traits["daypart_late"] = daypart.T
    traits["basket_multiplier"] = rng.lognormal(-0.045, 0.3, n_users)
    return traits


def _draw_tastes(n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Dirichlet tastes concentrated on 1-3 categories, the popular categories being favoured more often."""
    n_favourites = rng.choice([1, 2, 3], size=n_users, p=[0.35, 0.40, 0.25])
    favourite_rank = np.argsort(rng.random((n_users, len(CATEGORIES))) ** (1.0 / CATEGORY_SHARE), axis=1)[:, ::-1]
    is_favourite = np.zeros((n_users, len(CATEGORIES)), dtype=bool)
    rows, slots = np.nonzero(np.arange(3)[None, :] < n_favourites[:, None])
    is_favourite[rows, favourite_rank[rows, slots]] = True
    # A Dirichlet draw per row with its own concentration: normalised gammas.
    draws = rng.gamma(np.where(is_favourite, 2.5, 0.08))
    return draws / draws.sum(axis=1, keepdims=True)


def _history_before_window(population: Population, catalog: Catalog, rng: np.random.Generator) -> UserState:
    """Users' state at the window's start: last order, churned or not, and the regulars they built up."""
    n_users = len(population)
    existing = population.signup_s < 0
    dormant = existing & (rng.random(n_users) < DORMANT_AT_START_SHARE)
    never_ordered = dormant & (rng.random(n_users) < NEVER_ORDERED_SHARE_OF_DORMANT)
    days_since_order = np.where(
        dormant,
        rng.uniform(10, 180, n_users),
        rng.exponential(1.0 / population.activity_rate),
    )
    last_order_s = np.maximum(-np.floor(days_since_order * SECONDS_PER_DAY), population.signup_s + 3_600)
    state = UserState.start(dormant, np.where(existing & ~never_ordered, last_order_s, np.nan))

    past_orders = np.where(existing & ~never_ordered, 1 + rng.poisson(3.0, n_users), 0)
    chooser = MerchantChooser(population, catalog)
    for order in range(past_orders.max(initial=0)):
        users = np.flatnonzero(past_orders > order)
        dayparts = habitual_dayparts(population.daypart[users], rng)
        state.remember_orders(users, chooser.choose(users, dayparts, 0, state, rng))
    return state


# --------------------------------------------------------------------------- campaigns and truth


def _campaign_days(days: int) -> set[int]:
    """Days 14, 22, 30, ... inside the window; a window shorter than four weeks starts at its midpoint."""
    first = max(1, min(FIRST_CAMPAIGN_DAY, days // 2))
    return set(range(first, days, CAMPAIGN_EVERY_DAYS))


def _send_winback_campaign(simulator: MarketSimulator, day: int, rng: np.random.Generator) -> None:
    """Offer a random arm to every inactive opted-in user, holding out a random share."""
    sent_s = day * SECONDS_PER_DAY + CAMPAIGN_SEND_HOUR * 3_600
    users = simulator.winback_targets(sent_s, WINBACK_MIN_INACTIVE_DAYS)
    treated = rng.random(len(users)) >= HOLDOUT_SHARE
    arm = rng.integers(0, len(OFFER_ARMS), len(users))
    event_type = np.array([event_type for event_type, _ in OFFER_ARMS], dtype=object)[arm]
    reward_size = np.array([reward for _, reward in OFFER_ARMS])[arm]
    campaign_id = f"winback-{(simulator.start + pd.Timedelta(days=day)):%Y%m%d}"
    simulator.send_campaign(campaign_id, users, event_type, reward_size, treated, sent_s)


def _user_truth(
    traits: pd.DataFrame,
    simulator: MarketSimulator,
    catalog: Catalog,
    popularity: np.ndarray,
) -> pd.DataFrame:
    """Traits plus the state at the end of the window, which is where ``simulate_days`` picks up."""
    state, population = simulator.state, simulator.population
    truth = traits.copy()
    truth["churned"] = state.churned.copy()
    truth["last_order_at"] = timestamps(simulator.start, state.last_order_s)
    truth["days_since_last_order"] = state.days_since_last_order(simulator.end_s, population.signup_s)
    truth["expected_order_value"] = _expected_order_value(population, catalog, popularity)
    return truth


def _expected_order_value(population: Population, catalog: Catalog, popularity: np.ndarray) -> np.ndarray:
    """Mean order total: the user's basket size x the mean total at the price levels their taste and
    price sensitivity lead them to (ignoring distance and day-part)."""
    price_levels = np.arange(1, 5)
    supply = np.zeros((len(CATEGORIES), len(price_levels)))
    np.add.at(supply, (catalog.category, catalog.price_level - 1), popularity)
    price_fit = np.exp(-PRICE_AVERSION * population.price_sensitivity[:, None] * (price_levels[None, :] - 1))
    weights = supply[None, :, :] * price_fit[:, None, :]  # (users, categories, price levels)
    level_share = weights / np.maximum(weights.sum(axis=2, keepdims=True), 1e-12)
    mean_by_category = level_share @ MEAN_ORDER_TOTAL_BY_PRICE_LEVEL  # (users, categories)
    has_supply = supply.sum(axis=1) > 0
    taste = population.taste * has_supply[None, :]
    mean_total = (taste * mean_by_category).sum(axis=1) / taste.sum(axis=1)
    return population.basket_multiplier * mean_total
