"""The synthetic marketplace's dynamics: how users order, browse, churn and answer win-back offers.

``ml.synthetic.marketplace`` builds a world and runs it through the window it writes; ``simulate_days`` continues
the same world past that window. Both use the one response model, ``true_reactivation_probability``.
Times inside the simulation are integer seconds since the simulation's first midnight (UTC).

Merchant choice (``MerchantChooser``) depends on the order's context. An order's day-part d (lunch, dinner,
late) comes first: an organic order's from the user's day-part habit, any other order's from its clock time
(``daypart_at``). With probability ``loyalty`` (if the user has regulars) the user reorders, picking regular r
with weight ``orders_r x profile_r[d]``. Otherwise the user explores: a category c with weight
``taste[c] x D_c[d]`` (D_c: the popularity-weighted mean day-part profile of the category's merchants), then
an open merchant m of c with weight

    popularity_m x exp(-PRICE_AVERSION x price_sensitivity x (price_level_m - 1))
                 x exp(-km(home, m) / DISTANCE_SCALE_KM) x profile_m[d]

where ``profile_m`` is the merchant's day-part profile and ``home`` the user's home location (both in the
ground truth: merchant_truth daypart_*, user_truth home_lat/home_lng) and km the straight-line distance.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.offers.arms import NO_OFFER

EVENT_TYPES = ("free_delivery", "percent_discount", "cashback", "double_points")
REWARD_SIZES = (5.0, 10.0, 20.0)  # QAR
REACTIVATION_WINDOW_DAYS = 14
CAMPAIGN_SEND_HOUR = 10  # UTC, early afternoon in Doha

EXPOSURE_COLUMNS = ("campaign_id", "user_id", "sent_at", "event_type", "reward_size", "assignment")

APP_OPENED = "app_opened"
MERCHANT_VIEWED = "merchant_page_viewed"
PRODUCT_VIEWED = "product_page_viewed"
CHECKOUT = "checkout_completed"
CAMPAIGN_OPENED = "campaign_opened"
REWARD_REDEEMED = "reward_redeemed"

SECONDS_PER_DAY = 86_400
REACTIVATION_WINDOW_S = REACTIVATION_WINDOW_DAYS * SECONDS_PER_DAY

# Merchant choice
REGULAR_SLOTS = 5
DISTANCE_SCALE_KM = 4.0  # a merchant this much further from home is e (2.7) times less likely to be picked
KM_PER_DEGREE = 111.0  # of latitude; a degree of longitude is this x cos(DOHA_LAT)
DOHA_LAT = 25.2854
PRICE_AVERSION = 1.2  # log-weight lost per price level by a fully price-sensitive user
MEAN_ORDER_TOTAL_BY_PRICE_LEVEL = np.array([45.0, 70.0, 110.0, 170.0])  # QAR, price levels 1..4
ORDER_TOTAL_SIGMA = 0.35
MIN_ORDER_TOTAL = 8.0

# Time of day: lunch, dinner, late night; late night runs past midnight and folds back onto the
# same calendar day so every session of a day starts after 00:30 and ends before 24:00.
DAYPARTS = ("lunch", "dinner", "late")
DAYPART_HOURS = np.array([[11.0, 14.5], [18.0, 21.5], [22.0, 25.4]])
# Where a clock hour (UTC) belongs: lunch from 05:00, dinner from 16:00, late from 21:45 until 05:00.
LUNCH_FROM_HOUR, DINNER_FROM_HOUR, LATE_FROM_HOUR = 5.0, 16.0, 21.75
EARLIEST_HOUR = 0.5
LATEST_HOUR = 23.9
WEEKEND_DAYS = (4, 5)  # Friday and Saturday in Qatar

# Browsing without ordering, per day
BROWSE_RATE_PER_ORDER_RATE = 0.6
BASE_BROWSE_RATE = 0.03
CHURNED_APP_OPEN_RATE = 0.01
PRODUCT_VIEW_SHARE_WHILE_BROWSING = 0.3

# Campaign response
MIN_RESPONSE_DELAY_S = 1_800
MEAN_RESPONSE_DELAY_S = 3 * SECONDS_PER_DAY
MEAN_IDLE_OPEN_DELAY_S = 6 * 3_600
IDLE_OPEN_SHARE = 0.3  # treated non-responders who still open the message
OFFER_SATURATION_QAR = {"free_delivery": 5.0, "percent_discount": 10.0, "cashback": 8.0, "double_points": 6.0}
MAX_LIFT = 0.95

# Tags that keep the id streams of generated and simulated events apart
GENERATED_EVENT_IDS = 0
SIMULATED_EVENT_IDS = 1


# --------------------------------------------------------------------------- response model


def true_reactivation_probability(user_truth: pd.DataFrame, event_type, reward_size) -> np.ndarray:
    """True P(the user orders within 14 days) if sent ``event_type``/``reward_size`` now.

    ``event_type`` and ``reward_size`` are scalars or one value per row; ``user_truth`` needs
    activity_rate, churned, days_since_last_order, price_sensitivity, deal_responsiveness, remoteness.
    """
    n_users = len(user_truth)
    event_type = np.broadcast_to(np.asarray(event_type, dtype=object), (n_users,))
    reward_size = np.broadcast_to(np.asarray(reward_size, dtype=float), (n_users,))
    base = baseline_reactivation_probability(user_truth)
    lift = _offer_lift(user_truth, event_type, reward_size)
    return 1.0 - (1.0 - base) * (1.0 - lift)


def baseline_reactivation_probability(user_truth: pd.DataFrame) -> np.ndarray:
    """P(order within 14 days without an offer): the organic rate if active, a rare return if churned."""
    active = 1.0 - np.exp(-REACTIVATION_WINDOW_DAYS * user_truth["activity_rate"].to_numpy(float))
    returns = 1.0 - np.exp(
        -REACTIVATION_WINDOW_DAYS * _spontaneous_return_rate(user_truth["days_since_last_order"].to_numpy(float))
    )
    return np.where(user_truth["churned"].to_numpy(bool), returns, active)


def expected_orders_per_reactivation(user_truth: pd.DataFrame) -> np.ndarray:
    """Orders in the reactivation window of a user who comes back: the first, then organic orders at their
    activity rate for the rest of the window (coming back un-churns them) until they churn again.

    The first order's delay is taken at its mean; ``user_truth`` needs activity_rate and churn_hazard.
    """
    span_s = REACTIVATION_WINDOW_S - MIN_RESPONSE_DELAY_S - 60
    ratio = span_s / MEAN_RESPONSE_DELAY_S
    mean_delay_s = MIN_RESPONSE_DELAY_S + MEAN_RESPONSE_DELAY_S * (1.0 - ratio * np.exp(-ratio) / -np.expm1(-ratio))
    remaining_days = (REACTIVATION_WINDOW_S - mean_delay_s) / SECONDS_PER_DAY
    hazard = user_truth["churn_hazard"].to_numpy(float)
    still_active_days = -np.expm1(-hazard * remaining_days) / hazard
    return 1.0 + user_truth["activity_rate"].to_numpy(float) * still_active_days


def _spontaneous_return_rate(days_since_last_order: np.ndarray) -> np.ndarray:
    """Daily chance that a churned user comes back on their own; fades the longer they have been away."""
    return 0.004 * np.exp(-days_since_last_order / 45.0)


def _offer_lift(user_truth: pd.DataFrame, event_type: np.ndarray, reward_size: np.ndarray) -> np.ndarray:
    """Share of would-be non-buyers an offer converts: trait fit x diminishing returns in the reward."""
    unknown = set(np.unique(event_type)) - set(EVENT_TYPES) - {NO_OFFER}
    if unknown:
        raise ValueError(f"unknown offer event types: {sorted(unknown)}")
    affinity = np.zeros(len(user_truth))
    saturation = np.zeros(len(user_truth))
    for offer_type in EVENT_TYPES:
        rows = event_type == offer_type
        affinity[rows] = _trait_affinity(user_truth, offer_type)[rows]
        saturation[rows] = 1.0 - np.exp(-reward_size[rows] / OFFER_SATURATION_QAR[offer_type])
    recency = 0.6 + 0.4 * np.exp(-user_truth["days_since_last_order"].to_numpy(float) / 60.0)
    lift = user_truth["deal_responsiveness"].to_numpy(float) * affinity * saturation * recency
    return np.clip(lift, 0.0, MAX_LIFT)


def _trait_affinity(user_truth: pd.DataFrame, event_type: str) -> np.ndarray:
    """How well an offer type fits each user, before reward size and general responsiveness."""
    rate = user_truth["activity_rate"].to_numpy(float)
    price_sensitivity = user_truth["price_sensitivity"].to_numpy(float)
    frequent = 1.0 - np.exp(-rate / 0.15)
    if event_type == "free_delivery":
        return 0.05 + 0.7 * user_truth["remoteness"].to_numpy(float) ** 2 + 0.25 * (1.0 - frequent)
    if event_type == "percent_discount":
        return 0.05 + price_sensitivity * (0.3 + 1.0 * (1.0 - frequent))
    if event_type == "cashback":
        return 0.05 + price_sensitivity * (0.2 + 1.0 * frequent)
    return 0.05 + 1.0 * frequent * (1.0 - price_sensitivity)  # double_points


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Catalog:
    """Merchants as arrays; ``category`` and ``zone`` are codes into the world's vocabularies."""

    merchant_id: np.ndarray
    name: np.ndarray
    category: np.ndarray
    zone: np.ndarray
    x_km: np.ndarray  # position on the city's plane (``plane_km``), float32 like the choice weights
    y_km: np.ndarray
    price_level: np.ndarray
    popularity: np.ndarray
    opened_s: np.ndarray
    daypart_profile: np.ndarray  # (merchants, 3): share of the merchant's business at lunch, dinner, late
    category_daypart: np.ndarray  # (categories, 3): popularity-weighted mean profile of each category

    @classmethod
    def from_frame(
        cls,
        merchants: pd.DataFrame,
        merchant_truth: pd.DataFrame,
        popularity: np.ndarray,
        start: pd.Timestamp,
        categories: list[str],
        zones: list[str],
    ) -> Catalog:
        truth = merchant_truth.set_index("merchant_id").reindex(merchants["merchant_id"])
        profile = truth[[f"daypart_{daypart}" for daypart in DAYPARTS]].to_numpy(float)
        if np.isnan(profile).any():
            raise ValueError("merchant_truth is missing merchants")
        category = _codes(merchants["category"], categories)
        popularity = np.asarray(popularity, dtype=float)
        category_daypart = np.zeros((len(categories), len(DAYPARTS)))
        np.add.at(category_daypart, category, popularity[:, None] * profile)
        category_daypart /= np.maximum(category_daypart.sum(axis=1, keepdims=True), 1e-12)
        x_km, y_km = (
            coordinate.astype(np.float32)
            for coordinate in plane_km(merchants["lat"].to_numpy(float), merchants["lng"].to_numpy(float))
        )
        return cls(
            merchant_id=merchants["merchant_id"].to_numpy(np.int64),
            name=merchants["merchant_name"].to_numpy(object),
            category=category,
            zone=_codes(merchants["zone"], zones),
            x_km=x_km,
            y_km=y_km,
            price_level=merchants["price_level"].to_numpy(np.int64),
            popularity=popularity,
            opened_s=seconds_since(merchants["opened_at"], start),
            daypart_profile=profile,
            category_daypart=category_daypart,
        )

    def open_before(self, time_s: int) -> np.ndarray:
        return self.opened_s < time_s


@dataclass(frozen=True)
class Population:
    """Users' fixed traits as arrays, aligned with ``users`` (position i is users.iloc[i])."""

    user_id: np.ndarray
    platform: np.ndarray
    zone_name: np.ndarray
    zone: np.ndarray
    home_x_km: np.ndarray  # home on the city's plane (``plane_km``)
    home_y_km: np.ndarray
    signup_s: np.ndarray
    opted_in: np.ndarray
    taste: np.ndarray  # (users, categories)
    daypart: np.ndarray  # (users, 3): lunch, dinner, late
    weekend_multiplier: np.ndarray
    activity_rate: np.ndarray
    price_sensitivity: np.ndarray
    loyalty: np.ndarray
    basket_multiplier: np.ndarray
    churn_hazard: np.ndarray
    response_traits: pd.DataFrame  # the static columns the response model reads

    @classmethod
    def from_frames(
        cls,
        users: pd.DataFrame,
        user_truth: pd.DataFrame,
        start: pd.Timestamp,
        categories: list[str],
        zones: list[str],
    ) -> Population:
        truth = user_truth.set_index("user_id").reindex(users["user_id"])
        if truth["activity_rate"].isna().any():
            raise ValueError("user_truth is missing users")
        home_x_km, home_y_km = (
            coordinate.astype(np.float32)
            for coordinate in plane_km(truth["home_lat"].to_numpy(float), truth["home_lng"].to_numpy(float))
        )
        return cls(
            user_id=users["user_id"].to_numpy(np.int64),
            platform=users["platform"].to_numpy(object),
            zone_name=users["home_zone"].to_numpy(object),
            zone=_codes(users["home_zone"], zones),
            home_x_km=home_x_km,
            home_y_km=home_y_km,
            signup_s=seconds_since(users["signup_at"], start),
            opted_in=users["marketing_opt_in"].to_numpy(bool),
            taste=truth[[f"taste_{category}" for category in categories]].to_numpy(float),
            daypart=truth[["daypart_lunch", "daypart_dinner", "daypart_late"]].to_numpy(float),
            weekend_multiplier=truth["weekend_multiplier"].to_numpy(float),
            activity_rate=truth["activity_rate"].to_numpy(float),
            price_sensitivity=truth["price_sensitivity"].to_numpy(float),
            loyalty=truth["loyalty"].to_numpy(float),
            basket_multiplier=truth["basket_multiplier"].to_numpy(float),
            churn_hazard=truth["churn_hazard"].to_numpy(float),
            response_traits=truth[
                ["activity_rate", "price_sensitivity", "deal_responsiveness", "remoteness"]
            ].reset_index(drop=True),
        )

    def __len__(self) -> int:
        return len(self.user_id)


@dataclass
class UserState:
    """What changes as the world runs: churn, last orders, regular merchants, pending campaign outcomes."""

    churned: np.ndarray
    last_order_s: np.ndarray  # NaN: never ordered
    regulars: np.ndarray  # (users, REGULAR_SLOTS) catalog positions, -1 for an empty slot
    regular_counts: np.ndarray
    locked_until_s: np.ndarray  # a campaign decides the user's next order until then
    response_at_s: np.ndarray  # NaN: no campaign order pending
    response_campaign: np.ndarray  # campaign id of a pending treated order, None otherwise
    response_reward: np.ndarray

    @classmethod
    def start(cls, churned: np.ndarray, last_order_s: np.ndarray) -> UserState:
        n_users = len(churned)
        return cls(
            churned=churned.astype(bool),
            last_order_s=last_order_s.astype(float),
            regulars=np.full((n_users, REGULAR_SLOTS), -1, dtype=np.int64),
            regular_counts=np.zeros((n_users, REGULAR_SLOTS)),
            locked_until_s=np.full(n_users, -np.inf),
            response_at_s=np.full(n_users, np.nan),
            response_campaign=np.full(n_users, None, dtype=object),
            response_reward=np.zeros(n_users),
        )

    def remember_orders(self, users: np.ndarray, merchants: np.ndarray) -> None:
        """Count each order towards the user's regulars; a new merchant replaces the least used slot."""
        if len(np.unique(users)) != len(users):
            raise ValueError("remember_orders takes at most one order per user at a time")
        slots = self.regulars[users]
        known = slots == merchants[:, None]
        is_known = known.any(axis=1)
        slot = np.where(is_known, known.argmax(axis=1), self.regular_counts[users].argmin(axis=1))
        self.regular_counts[users, slot] = np.where(is_known, self.regular_counts[users, slot] + 1.0, 1.0)
        self.regulars[users, slot] = merchants

    def days_since_last_order(self, now_s: int, signup_s: np.ndarray) -> np.ndarray:
        """Days since the last order, or since signup for users who never ordered."""
        since = np.where(np.isnan(self.last_order_s), signup_s, self.last_order_s)
        return (now_s - since) / SECONDS_PER_DAY


class MerchantChooser:
    """Picks merchants for orders and views at day-part ``dayparts`` (codes into DAYPARTS): a regular (by past
    order counts x its day-part share) with the user's loyalty, else a new one by the choice model in the
    module docstring."""

    def __init__(self, population: Population, catalog: Catalog):
        self._population = population
        self._catalog = catalog

    def choose(
        self,
        users: np.ndarray,
        dayparts: np.ndarray,
        day_start_s: int,
        state: UserState,
        rng: np.random.Generator,
    ) -> np.ndarray:
        counts = state.regular_counts[users]
        reorder = (counts.sum(axis=1) > 0) & (rng.random(len(users)) < self._population.loyalty[users])
        regulars = state.regulars[users[reorder]]
        # Empty slots (-1) have no orders, so whatever profile row they index gets weight zero.
        fit = self._catalog.daypart_profile[regulars, dayparts[reorder, None]]
        chosen = np.empty(len(users), dtype=np.int64)
        chosen[reorder] = regulars[np.arange(len(regulars)), sample_rows(counts[reorder] * fit, rng)]
        chosen[~reorder] = self.explore(users[~reorder], dayparts[~reorder], day_start_s, rng)
        return chosen

    def explore(
        self, users: np.ndarray, dayparts: np.ndarray, day_start_s: int, rng: np.random.Generator
    ) -> np.ndarray:
        catalog = self._catalog
        open_now = catalog.open_before(day_start_s)
        category = sample_rows(self._population.taste[users] * catalog.category_daypart.T[dayparts], rng)
        chosen = np.full(len(users), -1, dtype=np.int64)
        for code in np.unique(category):
            rows = np.flatnonzero(category == code)
            candidates = np.flatnonzero(open_now & (catalog.category == code))
            if candidates.size:
                weights = self._weights(users[rows], dayparts[rows], candidates)
                chosen[rows] = candidates[sample_rows(weights, rng)]
        # Small worlds can have a category with nothing open yet; those users pick from everything.
        stranded = np.flatnonzero(chosen < 0)
        if stranded.size:
            candidates = np.flatnonzero(open_now)
            weights = self._weights(users[stranded], dayparts[stranded], candidates)
            chosen[stranded] = candidates[sample_rows(weights, rng)]
        return chosen

    def next_order_probabilities(self, users: np.ndarray, day_start_s: int, state: UserState) -> np.ndarray:
        """(users, merchants): the chance that each user's next organic order goes to each merchant, given ``state``
        and the merchants open by ``day_start_s``. The closed form of ``choose`` with the day-part drawn from the
        user's habit, as for an organic order."""
        population, catalog = self._population, self._catalog
        n_merchants, n_categories = len(catalog.category), catalog.category_daypart.shape[0]
        habits = population.daypart[users] / population.daypart[users].sum(axis=1, keepdims=True)
        counts, regulars = state.regular_counts[users], state.regulars[users]
        loyalty = np.where(counts.sum(axis=1) > 0, population.loyalty[users], 0.0)
        candidates = np.flatnonzero(catalog.open_before(day_start_s))
        candidate_category = catalog.category[candidates]
        slot_rows = np.repeat(np.arange(len(users)), REGULAR_SLOTS)
        probabilities = np.zeros((len(users), n_merchants))
        for daypart in range(len(DAYPARTS)):
            fit = counts * catalog.daypart_profile[regulars, daypart]  # empty slots have no orders: weight zero
            reorder = fit / np.maximum(fit.sum(axis=1, keepdims=True), np.finfo(float).tiny)
            np.add.at(
                probabilities,
                (slot_rows, regulars.ravel()),
                ((habits[:, daypart] * loyalty)[:, None] * reorder).ravel(),
            )
            taste = population.taste[users] * catalog.category_daypart.T[daypart]
            category_share = taste / taste.sum(axis=1, keepdims=True)
            weights = self._weights(users, np.full(len(users), daypart), candidates).astype(float)
            explore = np.zeros((len(users), n_merchants))
            stranded = np.zeros(len(users))
            for code in range(n_categories):
                in_category = candidate_category == code
                if not in_category.any():
                    stranded += category_share[:, code]
                    continue
                chosen = weights[:, in_category]
                explore[:, candidates[in_category]] += (
                    category_share[:, [code]] * chosen / chosen.sum(axis=1, keepdims=True)
                )
            explore[:, candidates] += stranded[:, None] * weights / weights.sum(axis=1, keepdims=True)
            probabilities += (habits[:, daypart] * (1.0 - loyalty))[:, None] * explore
        return probabilities

    def _weights(self, users: np.ndarray, dayparts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(users, candidates) choice weights. Generation's hot loop: float32 and in place, the price fit and
        distance decay as one exponential."""
        catalog, population = self._catalog, self._population
        weights = population.home_x_km[users, None] - catalog.x_km[None, candidates]
        north = population.home_y_km[users, None] - catalog.y_km[None, candidates]
        weights *= weights
        north *= north
        weights += north
        np.sqrt(weights, out=weights)  # km from home
        weights *= np.float32(-1.0 / DISTANCE_SCALE_KM)
        price_aversion = np.float32(PRICE_AVERSION) * population.price_sensitivity[users].astype(np.float32)
        weights -= price_aversion[:, None] * (catalog.price_level[candidates] - 1).astype(np.float32)[None, :]
        np.exp(weights, out=weights)
        weights *= catalog.popularity[candidates].astype(np.float32)[None, :]
        weights *= catalog.daypart_profile[candidates].T.astype(np.float32)[dayparts]
        return weights


class EventLog:
    """Collects events as column chunks; ``frame`` sorts them by time and gives them ids."""

    def __init__(self):
        self._chunks: list[dict[str, np.ndarray]] = []

    def add(
        self,
        event_type: str,
        users: np.ndarray,
        time_s: np.ndarray,
        merchants: np.ndarray | None = None,
        order_total: np.ndarray | None = None,
        properties: np.ndarray | None = None,
    ) -> None:
        n_events = len(users)
        self._chunks.append(
            {
                "event_type": np.full(n_events, event_type, dtype=object),
                "user": np.asarray(users, dtype=np.int64),
                "time_s": np.asarray(time_s, dtype=np.int64),
                "merchant": np.full(n_events, -1, dtype=np.int64) if merchants is None else np.asarray(merchants),
                "order_total": np.full(n_events, np.nan) if order_total is None else np.asarray(order_total),
                "properties": np.full(n_events, "{}", dtype=object) if properties is None else np.asarray(properties),
            }
        )

    def frame(
        self,
        population: Population,
        catalog: Catalog,
        start: pd.Timestamp,
        id_rng: np.random.Generator,
    ) -> pd.DataFrame:
        columns = {
            key: np.concatenate([chunk[key] for chunk in self._chunks] or [np.empty(0)])
            for key in ("event_type", "user", "time_s", "merchant", "order_total", "properties")
        }
        order = np.argsort(columns["time_s"], kind="stable")
        columns = {key: values[order] for key, values in columns.items()}
        users, merchants = columns["user"].astype(np.int64), columns["merchant"].astype(np.int64)
        has_merchant = merchants >= 0
        return pd.DataFrame(
            {
                "event_id": pd.array(event_ids(id_rng, len(users)), dtype="str"),
                "user_id": population.user_id[users],
                "event_type": pd.array(columns["event_type"], dtype="str"),
                "event_time": timestamps(start, columns["time_s"]),
                "merchant_id": pd.arrays.IntegerArray(
                    np.where(has_merchant, catalog.merchant_id[merchants], 0),
                    ~has_merchant,
                ),
                "merchant_name": pd.array(np.where(has_merchant, catalog.name[merchants], None), dtype="str"),
                "order_total": columns["order_total"].astype(float),
                "platform": pd.array(population.platform[users], dtype="str"),
                "zone": pd.array(population.zone_name[users], dtype="str"),
                "properties": pd.array(columns["properties"], dtype="str"),
            }
        )


# Called after each batch of orders is placed, with the simulator (its state already counts the orders), the
# users (population positions), their order times and the day's start, all in seconds of the simulation.
OrderObserver = Callable[["MarketSimulator", np.ndarray, np.ndarray, int], None]


class MarketSimulator:
    """Runs the world one UTC day at a time from ``start`` for ``days`` days, recording events and exposures;
    ``order_observer`` sees the state after each batch of orders."""

    def __init__(
        self,
        population: Population,
        catalog: Catalog,
        state: UserState,
        start: pd.Timestamp,
        days: int,
        rng: np.random.Generator,
        order_observer: OrderObserver | None = None,
    ):
        self.population = population
        self.catalog = catalog
        self.state = state
        self.start = start
        self.end_s = days * SECONDS_PER_DAY
        self.chooser = MerchantChooser(population, catalog)
        self.log = EventLog()
        self._rng = rng
        self._exposures: list[pd.DataFrame] = []
        self._order_observer = order_observer

    # -- campaigns

    def winback_targets(self, sent_s: int, min_inactive_days: int) -> np.ndarray:
        """Opted-in users, signed up before ``sent_s``, with no order in the last ``min_inactive_days``
        and not already inside another campaign's outcome window."""
        state = self.state
        inactive_since = sent_s - min_inactive_days * SECONDS_PER_DAY
        inactive = np.isnan(state.last_order_s) | (state.last_order_s <= inactive_since)
        free = ~(state.locked_until_s > sent_s) & np.isnan(state.response_at_s)
        return np.flatnonzero(self.population.opted_in & (self.population.signup_s < sent_s) & inactive & free)

    def send_campaign(
        self,
        campaign_id: str,
        users: np.ndarray,
        event_type: np.ndarray,
        reward_size: np.ndarray,
        treated: np.ndarray,
        sent_s: int,
    ) -> None:
        """Expose ``users`` at ``sent_s``; holdout users get no offer. Whether each user orders within
        the reactivation window is drawn now from the true response model; the order happens later."""
        rng, state = self._rng, self.state
        event_type = np.where(treated, np.asarray(event_type, dtype=object), NO_OFFER)
        reward_size = np.where(treated, np.asarray(reward_size, dtype=float), 0.0)
        p_order = true_reactivation_probability(self._response_frame(users, sent_s), event_type, reward_size)
        responds = rng.random(len(users)) < p_order
        response_at = sent_s + _response_delay_s(rng, len(users))

        state.locked_until_s[users] = sent_s + REACTIVATION_WINDOW_S
        state.response_at_s[users] = np.where(responds, response_at, np.nan)
        state.response_campaign[users] = np.where(responds & treated, campaign_id, None)
        state.response_reward[users] = reward_size

        idle_open = treated & ~responds & (rng.random(len(users)) < IDLE_OPEN_SHARE)
        open_s = sent_s + rng.exponential(MEAN_IDLE_OPEN_DELAY_S, len(users)).astype(np.int64)
        idle_open &= open_s < self.end_s
        self.log.add(
            CAMPAIGN_OPENED,
            users[idle_open],
            open_s[idle_open],
            properties=_campaign_properties(np.full(idle_open.sum(), campaign_id, dtype=object)),
        )
        self._exposures.append(
            pd.DataFrame(
                {
                    "campaign_id": campaign_id,
                    "user_id": self.population.user_id[users],
                    "sent_at": timestamps(self.start, np.full(len(users), sent_s)),
                    "event_type": event_type,
                    "reward_size": reward_size,
                    "assignment": np.where(treated, "treatment", "holdout"),
                }
            )
        )

    def _response_frame(self, users: np.ndarray, now_s: int) -> pd.DataFrame:
        frame = self.population.response_traits.iloc[users].reset_index(drop=True)
        frame["churned"] = self.state.churned[users]
        frame["days_since_last_order"] = self.state.days_since_last_order(now_s, self.population.signup_s)[users]
        return frame

    # -- one day

    def simulate_day(self, day: int) -> None:
        day_start = day * SECONDS_PER_DAY
        present = self.population.signup_s < day_start
        self._churn(present)
        self._place_campaign_orders(day_start)
        self._place_organic_orders(day_start, present)
        self._browse(day_start, present)

    def _churn(self, present: np.ndarray) -> None:
        leaving = present & ~self.state.churned & (self._rng.random(len(present)) < self.population.churn_hazard)
        self.state.churned |= leaving

    def _place_campaign_orders(self, day_start: int) -> None:
        state = self.state
        due = np.flatnonzero((state.response_at_s >= day_start) & (state.response_at_s < day_start + SECONDS_PER_DAY))
        order_s = state.response_at_s[due].astype(np.int64)
        self._record_orders(due, order_s, day_start, state.response_campaign[due], state.response_reward[due])
        state.locked_until_s[due] = order_s
        state.response_at_s[due] = np.nan
        state.response_campaign[due] = None
        state.churned[due] = False

    def _place_organic_orders(self, day_start: int, present: np.ndarray) -> None:
        population, state, rng = self.population, self.state, self._rng
        recency = state.days_since_last_order(day_start, population.signup_s)
        rate = np.where(
            state.churned,
            _spontaneous_return_rate(recency),
            population.activity_rate * self._weekday_factor(day_start),
        )
        free = present & ~(state.locked_until_s > day_start)
        users = np.flatnonzero(free & (rng.random(len(population)) < 1.0 - np.exp(-rate)))
        order_s = day_start + time_in_daypart_s(habitual_dayparts(population.daypart[users], rng), rng)
        self._record_orders(users, order_s, day_start, np.full(len(users), None, dtype=object), np.zeros(len(users)))
        state.churned[users] = False

    def _weekday_factor(self, day_start: int) -> np.ndarray:
        """Order-rate multiplier for this day; a user's weekly average stays their activity rate."""
        weekend = self.population.weekend_multiplier
        weekday = (self.start + pd.Timedelta(seconds=day_start)).weekday()
        return np.where(weekday in WEEKEND_DAYS, weekend, 1.0) * 7.0 / (5.0 + 2.0 * weekend)

    def _record_orders(
        self,
        users: np.ndarray,
        order_s: np.ndarray,
        day_start: int,
        campaign_id: np.ndarray,
        reward: np.ndarray,
    ) -> None:
        """A session per order: app open, browsing of alternatives, the merchant page (and maybe
        products) minutes before checkout; campaign orders also open the message and redeem the reward."""
        rng, log = self._rng, self.log
        dayparts = daypart_at(order_s)
        merchants = self.chooser.choose(users, dayparts, day_start, self.state, rng)
        session_s = order_s - rng.integers(300, 1_500, len(users))
        from_campaign = np.flatnonzero(pd.notna(campaign_id))
        log.add(
            CAMPAIGN_OPENED,
            users[from_campaign],
            session_s[from_campaign] - 1,
            properties=_campaign_properties(campaign_id[from_campaign]),
        )
        log.add(APP_OPENED, users, session_s)

        n_alternatives = rng.choice(3, size=len(users), p=[0.45, 0.35, 0.20])
        rows = np.repeat(np.arange(len(users)), n_alternatives)
        log.add(
            MERCHANT_VIEWED,
            users[rows],
            session_s[rows] + 20 * (_position_in_group(rows) + 1),
            self.chooser.explore(users[rows], dayparts[rows], day_start, rng),
        )

        merchant_view_s = order_s - rng.integers(60, 181, len(users))
        log.add(MERCHANT_VIEWED, users, merchant_view_s, merchants)
        rows = np.repeat(np.arange(len(users)), rng.choice(3, size=len(users), p=[0.35, 0.40, 0.25]))
        gap = order_s[rows] - merchant_view_s[rows] - 1
        product_view_s = merchant_view_s[rows] + 1 + (rng.random(len(rows)) * gap).astype(np.int64)
        log.add(PRODUCT_VIEWED, users[rows], product_view_s, merchants[rows])

        log.add(
            CHECKOUT, users, order_s, merchants, self._order_totals(users, merchants), _campaign_properties(campaign_id)
        )
        log.add(
            REWARD_REDEEMED,
            users[from_campaign],
            order_s[from_campaign],
            merchants[from_campaign],
            properties=_campaign_properties(campaign_id[from_campaign], reward[from_campaign]),
        )

        self.state.last_order_s[users] = order_s
        self.state.remember_orders(users, merchants)
        if self._order_observer is not None:
            self._order_observer(self, users, order_s, day_start)

    def _order_totals(self, users: np.ndarray, merchants: np.ndarray) -> np.ndarray:
        mean = MEAN_ORDER_TOTAL_BY_PRICE_LEVEL[self.catalog.price_level[merchants] - 1]
        mean = mean * self.population.basket_multiplier[users]
        noise = np.exp(ORDER_TOTAL_SIGMA * self._rng.standard_normal(len(users)) - ORDER_TOTAL_SIGMA**2 / 2)
        return np.maximum(np.round(mean * noise, 2), MIN_ORDER_TOTAL)

    def _browse(self, day_start: int, present: np.ndarray) -> None:
        """Sessions without an order: active users look at a few merchants, churned ones rarely open the app."""
        population, state, rng = self.population, self.state, self._rng
        active_rate = BROWSE_RATE_PER_ORDER_RATE * population.activity_rate + BASE_BROWSE_RATE
        rate = np.where(state.churned, CHURNED_APP_OPEN_RATE, active_rate)
        users = np.flatnonzero(present & (rng.random(len(population)) < 1.0 - np.exp(-rate)))
        dayparts = habitual_dayparts(population.daypart[users], rng)
        session_s = day_start + time_in_daypart_s(dayparts, rng)
        self.log.add(APP_OPENED, users, session_s)

        looking = np.flatnonzero(~state.churned[users])
        n_views = rng.integers(1, 4, len(looking))
        rows = np.repeat(looking, n_views)
        viewed = self.chooser.choose(users[rows], dayparts[rows], day_start, state, rng)
        self.log.add(MERCHANT_VIEWED, users[rows], session_s[rows] + 30 * (_position_in_group(rows) + 1), viewed)

        last_view = np.cumsum(n_views) - 1
        to_products = rng.random(len(looking)) < PRODUCT_VIEW_SHARE_WHILE_BROWSING
        sessions = looking[to_products]
        self.log.add(
            PRODUCT_VIEWED,
            users[sessions],
            session_s[sessions] + 30 * (n_views[to_products] + 1),
            viewed[last_view[to_products]],
        )

    # -- output

    def events_frame(self, id_rng: np.random.Generator) -> pd.DataFrame:
        return self.log.frame(self.population, self.catalog, self.start, id_rng)

    def exposures_frame(self) -> pd.DataFrame:
        if not self._exposures:
            return empty_exposures()
        return _typed_exposures(pd.concat(self._exposures, ignore_index=True))


# --------------------------------------------------------------------------- continuing a generated world


def simulate_days(
    marketplace,
    start: dt.date,
    days: int,
    offers: pd.DataFrame,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Continue the world of ``marketplace`` (an ``ml.synthetic.marketplace.Marketplace``) for ``days`` days from ``start``.

    Every user in ``offers`` (campaign_id, user_id, event_type, reward_size, assignment) is exposed
    on ``start`` and answers by the true response model; holdout rows get no offer. Returns
    (events, campaign_exposures) in the generator's formats. The users' state is ``user_truth``'s and the
    merchants' day-part profiles ``merchant_truth``'s; merchant popularity is re-estimated from the orders in
    ``marketplace.events``.
    """
    start_ts = pd.Timestamp(start, tz="UTC")
    categories = taste_categories(marketplace.user_truth)
    zones = sorted(set(marketplace.merchants["zone"]) | set(marketplace.users["home_zone"]))
    population = Population.from_frames(marketplace.users, marketplace.user_truth, start_ts, categories, zones)
    catalog = Catalog.from_frame(
        marketplace.merchants,
        marketplace.merchant_truth,
        _observed_popularity(marketplace.merchants, marketplace.events),
        start_ts,
        categories,
        zones,
    )
    state = _state_from_history(population, catalog, marketplace.user_truth, marketplace.events, start_ts)
    simulator = MarketSimulator(population, catalog, state, start_ts, days, np.random.default_rng(seed))
    _send_offers(simulator, offers)
    for day in range(days):
        simulator.simulate_day(day)
    id_rng = np.random.default_rng([SIMULATED_EVENT_IDS, seed, start_ts.toordinal(), days])
    return simulator.events_frame(id_rng), simulator.exposures_frame()


def _send_offers(simulator: MarketSimulator, offers: pd.DataFrame) -> None:
    if offers["user_id"].duplicated().any():
        raise ValueError("offers must hold at most one row per user")
    if not offers["assignment"].isin(["treatment", "holdout"]).all():
        raise ValueError("offer assignment must be 'treatment' or 'holdout'")
    positions = pd.Index(simulator.population.user_id).get_indexer(offers["user_id"])
    if (positions < 0).any():
        raise ValueError("offers name users the marketplace does not have")
    sent_s = CAMPAIGN_SEND_HOUR * 3_600
    for campaign_id, rows in offers.assign(position=positions).groupby("campaign_id", sort=True):
        simulator.send_campaign(
            str(campaign_id),
            rows["position"].to_numpy(np.int64),
            rows["event_type"].to_numpy(object),
            rows["reward_size"].to_numpy(float),
            rows["assignment"].eq("treatment").to_numpy(),
            sent_s,
        )


def _observed_popularity(merchants: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    orders = events.loc[events["event_type"] == CHECKOUT, "merchant_id"].value_counts()
    return orders.reindex(merchants["merchant_id"], fill_value=0).to_numpy(float) + 1.0


def _state_from_history(
    population: Population,
    catalog: Catalog,
    user_truth: pd.DataFrame,
    events: pd.DataFrame,
    start: pd.Timestamp,
) -> UserState:
    truth = user_truth.set_index("user_id").reindex(population.user_id)
    state = UserState.start(truth["churned"].to_numpy(bool), seconds_since(truth["last_order_at"], start))
    orders = events.loc[events["event_type"] == CHECKOUT, ["user_id", "merchant_id"]]
    counts = orders.value_counts().rename("orders").reset_index()
    counts = counts.sort_values(["user_id", "orders", "merchant_id"], ascending=[True, False, True])
    counts["slot"] = counts.groupby("user_id").cumcount()
    counts = counts[counts["slot"] < REGULAR_SLOTS]
    users = pd.Index(population.user_id).get_indexer(counts["user_id"])
    slots = counts["slot"].to_numpy()
    state.regulars[users, slots] = pd.Index(catalog.merchant_id).get_indexer(counts["merchant_id"].astype(np.int64))
    state.regular_counts[users, slots] = counts["orders"].to_numpy(float)
    return state


# --------------------------------------------------------------------------- helpers shared with ml.synthetic.marketplace


def taste_categories(user_truth: pd.DataFrame) -> list[str]:
    return [column.removeprefix("taste_") for column in user_truth.columns if column.startswith("taste_")]


def sample_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per row, drawn with probability proportional to that row's weights."""
    cumulative = np.cumsum(weights, axis=1)
    draw = rng.random(len(weights)) * cumulative[:, -1] if len(weights) else np.empty(0)
    return np.minimum((cumulative <= draw[:, None]).sum(axis=1), weights.shape[1] - 1)


def habitual_dayparts(daypart_habits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One day-part code per row, drawn from that user's (lunch, dinner, late) habit weights."""
    return sample_rows(daypart_habits, rng)


def time_in_daypart_s(dayparts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds after midnight in [00:30, 23:54), uniform within each row's day-part (codes into DAYPARTS)."""
    bounds = DAYPART_HOURS[dayparts]
    hours = bounds[:, 0] + rng.random(len(dayparts)) * (bounds[:, 1] - bounds[:, 0])
    hours = np.where(hours >= LATEST_HOUR, hours - LATEST_HOUR + EARLIEST_HOUR, hours)
    return (hours * 3_600).astype(np.int64)


def daypart_at(time_s: np.ndarray) -> np.ndarray:
    """The day-part code (into DAYPARTS) of each time: lunch from 05:00, dinner from 16:00, late from 21:45 (UTC).

    Every time ``time_in_daypart_s`` draws falls in the day-part it was drawn for."""
    hours = (np.asarray(time_s) % SECONDS_PER_DAY) / 3_600
    return np.where(
        (hours >= LATE_FROM_HOUR) | (hours < LUNCH_FROM_HOUR), 2, np.where(hours >= DINNER_FROM_HOUR, 1, 0)
    ).astype(np.int64)


def plane_km(lat: np.ndarray, lng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) km of points given in degrees, on a flat map of the city: exact enough across Doha."""
    return np.asarray(lng) * KM_PER_DEGREE * np.cos(np.radians(DOHA_LAT)), np.asarray(lat) * KM_PER_DEGREE


def distance_km(lat_a, lng_a, lat_b, lng_b) -> np.ndarray:
    """Straight-line km between points given in degrees (broadcast), on the city's flat map."""
    x_a, y_a = plane_km(lat_a, lng_a)
    x_b, y_b = plane_km(lat_b, lng_b)
    return np.hypot(x_a - x_b, y_a - y_b)


def seconds_since(times: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Seconds from ``start`` (NaN for missing times)."""
    return (times - start).dt.total_seconds().to_numpy(float)


def timestamps(start: pd.Timestamp, seconds: np.ndarray) -> pd.DatetimeIndex:
    """UTC timestamps ``seconds`` (whole seconds; NaN gives NaT) after ``start``."""
    seconds = np.asarray(seconds, dtype=float)
    missing = np.isnan(seconds)
    delta = pd.to_timedelta(np.where(missing, 0, seconds).astype(np.int64), unit="s")
    return (start + delta).as_unit("us").where(~missing)


def event_ids(rng: np.random.Generator, n_events: int) -> np.ndarray:
    """Random (version 4 shaped) UUID strings from a seeded generator: unique in practice, reproducible."""
    raw = rng.integers(0, 256, size=(n_events, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = np.empty((n_events, 32), dtype=np.uint8)
    digits[:, 0::2] = hex_digits[raw >> 4]
    digits[:, 1::2] = hex_digits[raw & 0x0F]
    text = np.full((n_events, 36), ord("-"), dtype=np.uint8)
    text[:, [i for i in range(36) if i not in (8, 13, 18, 23)]] = digits
    return text.view("S36").ravel().astype(str)


def empty_exposures() -> pd.DataFrame:
    return _typed_exposures(pd.DataFrame({column: [] for column in EXPOSURE_COLUMNS}))


def _typed_exposures(exposures: pd.DataFrame) -> pd.DataFrame:
    return exposures.astype(
        {
            "campaign_id": "str",
            "user_id": "int64",
            "sent_at": "datetime64[us, UTC]",
            "event_type": "str",
            "reward_size": "float64",
            "assignment": "str",
        }
    )


def _campaign_properties(campaign_id: np.ndarray, reward_size: np.ndarray | None = None) -> np.ndarray:
    """JSON properties: the campaign behind an event (and the reward redeemed), ``{}`` for organic events."""
    if reward_size is None:
        return np.array(
            ["{}" if campaign is None else json.dumps({"campaign_id": campaign}) for campaign in campaign_id],
            dtype=object,
        )
    return np.array(
        [
            json.dumps({"campaign_id": campaign, "reward_size": float(size)})
            for campaign, size in zip(campaign_id, reward_size, strict=True)
        ],
        dtype=object,
    )


def _response_delay_s(rng: np.random.Generator, n_users: int) -> np.ndarray:
    """Time from send to a campaign order: mostly within days, always inside the reactivation window."""
    span = REACTIVATION_WINDOW_S - MIN_RESPONSE_DELAY_S - 60
    truncation = 1.0 - np.exp(-span / MEAN_RESPONSE_DELAY_S)
    delay = -MEAN_RESPONSE_DELAY_S * np.log1p(-rng.random(n_users) * truncation)
    return MIN_RESPONSE_DELAY_S + delay.astype(np.int64)


def _position_in_group(rows: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array (e.g. the k-th view of a session)."""
    if rows.size == 0:
        return rows
    run_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    run_lengths = np.diff(np.r_[run_starts, rows.size])
    return np.arange(rows.size) - np.repeat(run_starts, run_lengths)


def _codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    codes = pd.Index(vocabulary).get_indexer(values)
    if (codes < 0).any():
        raise ValueError(f"values outside the vocabulary: {sorted(set(values) - set(vocabulary))[:5]}")
    return codes
