"""The ranker's repeat and context features on a hand-built history whose values are worked out by hand.

User u1 lives in zone A and orders lunch (12:00 UTC) on weekdays at m1 (three times) and m2 (once); u2 orders
late (23:00) at m3, twice. Merchants m1, m2 are in zone A at the same spot; m3 and m4 in zone B 1 degree of
latitude north (111.19 km); price levels 1, 1, 3, 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ml.recommend import EASERecommender, PopularityRecommender, RankerRecommender

MONDAY = pd.Timestamp("2026-11-02", tz="UTC")
ORDERS = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u1", "u1", "u2", "u2"],
        "item_id": ["m1", "m1", "m2", "m1", "m3", "m3"],
        "event_time": [
            MONDAY + pd.Timedelta(days=d, hours=h) for d, h in ((0, 12), (1, 12), (2, 12), (3, 12), (0, 23), (1, 23))
        ],
    }
)
ITEMS = pd.DataFrame(
    {"zone": ["A", "A", "B", "B"], "lat": [25.0, 25.0, 26.0, 26.0], "lng": [51.5] * 4, "price_level": [1, 1, 3, 3]},
    index=pd.Index(["m1", "m2", "m3", "m4"], name="item_id"),
)
USERS = pd.DataFrame({"home_zone": ["A", "B"]}, index=pd.Index(["u1", "u2"], name="user_id"))


def winback_features(
    ranker: RankerRecommender, orders: pd.DataFrame = ORDERS, users: pd.DataFrame = USERS
) -> tuple[object, pd.DataFrame]:
    """The ranker's stage on ``orders`` and the features of every (user, merchant) pair, as it builds them for
    scoring in winback mode, indexed by (user, merchant)."""
    frame = ranker._index(
        orders, users=users.index, items=ITEMS.index, user_col="user_id", item_col="item_id", time_col="event_time"
    )
    stage = ranker._fit_stage(frame)
    rows, cols, table = ranker._candidates(stage, np.arange(len(users)), exclude_seen=False)
    table.index = pd.MultiIndex.from_arrays([users.index[rows], ITEMS.index[cols]], names=["user", "merchant"])
    return stage, table


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    ranker = RankerRecommender({"popularity": PopularityRecommender()}, item_context=ITEMS, user_context=USERS)
    return winback_features(ranker)[1]


def test_repeat_features(features):
    u1_m1 = features.loc[("u1", "m1")]
    assert u1_m1["user_item_interactions"] == 3
    assert u1_m1["user_item_share"] == pytest.approx(0.75)
    assert u1_m1["user_reorder_ratio"] == pytest.approx(1 - 2 / 4)  # two merchants in four orders
    assert u1_m1["item_reorder_rate"] == pytest.approx(1 - 1 / 3)  # one customer, three orders
    assert u1_m1["user_item_days_since"] == pytest.approx(0.0)  # m1 was u1's last order
    assert features.loc[("u1", "m2"), "user_item_days_since"] == pytest.approx(1.0)
    # Decayed counts: m1's orders were 0, 2 and 3 days before u1's last order.
    expected = sum(0.5 ** (days / 7.0) for days in (0, 2, 3))
    assert u1_m1["user_item_decayed_7d"] == pytest.approx(expected, rel=1e-5)


def test_context_features(features):
    assert features.loc[("u1", "m1"), "zone_match"] == 1 and features.loc[("u1", "m3"), "zone_match"] == 0
    assert features.loc[("u2", "m3"), "zone_match"] == 1
    # u1's usual location is m1/m2's spot; m3 lies one degree of latitude north of it.
    assert features.loc[("u1", "m1"), "distance_km"] == pytest.approx(0.0, abs=1e-6)
    assert features.loc[("u1", "m3"), "distance_km"] == pytest.approx(111.19, rel=1e-3)
    assert features.loc[("u1", "m3"), "price_level_gap"] == pytest.approx(2.0)
    # Lunch-time u1 matches lunch-time m1 better than late-night m3; late-night u2 the other way round.
    assert features.loc[("u1", "m1"), "daypart_match"] > 1 > features.loc[("u1", "m3"), "daypart_match"]
    assert features.loc[("u2", "m3"), "daypart_match"] > 1 > features.loc[("u2", "m1"), "daypart_match"]


def test_feature_groups_can_be_left_out():
    ranker = RankerRecommender(
        {"popularity": PopularityRecommender()},
        item_context=ITEMS,
        user_context=USERS,
        without_features=("context", "repeat"),
    )
    _, table = winback_features(ranker)
    left = {"distance_km", "zone_match", "daypart_match", "user_item_interactions", "user_item_decayed_7d"}
    assert not left & set(table.columns)
    assert "popularity_score" in table.columns
    with pytest.raises(ValueError, match="feature groups"):
        RankerRecommender({"popularity": PopularityRecommender()}, without_features=("weather",))
    with pytest.raises(ValueError, match="at least one candidate generator"):
        RankerRecommender({})


def test_ease_scores_the_users_recency_weighted_items(features):
    ranker = RankerRecommender(
        {"ease": EASERecommender(l2=1.0)}, item_context=ITEMS, user_context=USERS, ease_of_recent_items=True
    )
    _, table = winback_features(ranker)
    # EASE on who ordered where: u1 at m1 and m2, u2 at m3.
    weights = EASERecommender(l2=1.0).fit(sp.csr_matrix([[1, 1, 0, 0], [0, 0, 1, 0]])).weights
    # At a half-life of one order u1's orders m1, m1, m2, m1 weigh 1/8 + 1/4 + 1 at m1 and 1/2 at m2.
    u1_recent = np.array([1.375, 0.5, 0.0, 0.0])
    for merchant, column in (("m1", 0), ("m2", 1)):
        expected = u1_recent @ weights[:, column]
        assert table.loc[("u1", merchant), "ease_of_recent_items_hl1"] == pytest.approx(expected, rel=1e-5)
    assert table.loc[("u1", "m2"), "ease_of_recent_items_hl1"] > 0  # m1, ordered by the same customer, points to m2
    # Off by default (the fixture's ranker), and it needs an EASE generator.
    assert not [column for column in features.columns if column.startswith("ease_of_recent_items")]
    with pytest.raises(ValueError, match="needs an EASE generator"):
        RankerRecommender({"popularity": PopularityRecommender()}, ease_of_recent_items=True)


def test_distance_from_the_users_recent_orders_follows_a_move(features):
    # u3 orders twice at m1, then moves 1 degree north and orders twice at m3.
    moved = pd.DataFrame(
        {
            "user_id": ["u3"] * 4,
            "item_id": ["m1", "m1", "m3", "m3"],
            "event_time": [MONDAY + pd.Timedelta(days=d, hours=12) for d in range(4)],
        }
    )
    users = pd.DataFrame({"home_zone": ["A", "B", "A"]}, index=pd.Index(["u1", "u2", "u3"], name="user_id"))
    ranker = RankerRecommender(
        {"popularity": PopularityRecommender()},
        item_context=ITEMS,
        user_context=users,
        distance_from_recent_orders=True,
    )
    _, table = winback_features(ranker, pd.concat([ORDERS, moved]), users)
    # At the middle half-life, four orders, the later orders at m3 weigh 1 and 0.5 ** (1 / 4), the earlier at m1
    # 0.5 ** (2 / 4) and 0.5 ** (3 / 4): the recent place is that far north of m1 and short of m3.
    at_m3 = 1 + 0.5**0.25
    at_m1 = 0.5**0.5 + 0.5**0.75
    north = at_m3 / (at_m3 + at_m1)
    km_per_degree = 111.195
    u3_m3 = table.loc[("u3", "m3")]
    assert u3_m3["distance_km_recent"] == pytest.approx((1 - north) * km_per_degree, rel=1e-3)
    assert u3_m3["distance_km"] == pytest.approx(0.5 * km_per_degree, rel=1e-3)  # halfway over all the orders
    assert table.loc[("u3", "m1"), "distance_km_recent"] == pytest.approx(north * km_per_degree, rel=1e-3)
    # u1 never moved: both distances agree.
    assert table.loc[("u1", "m3"), "distance_km_recent"] == pytest.approx(table.loc[("u1", "m3"), "distance_km"])
    # Off by default (the fixture's ranker).
    assert "distance_km_recent" not in features.columns


def test_transitions_count_what_followed_each_item_in_the_same_users_sequence(features):
    ranker = RankerRecommender(
        {"popularity": PopularityRecommender()},
        item_context=ITEMS,
        user_context=USERS,
        transitions_from_recent_items=True,
    )
    stage, table = winback_features(ranker)
    # u1 ordered m1, m1, m2, m1; the next order counts 1, the one after 1/2, the third 1/3. After m1: m1 1 + 1/2
    # + 1/3 and m2 1 + 1/2; after m2: m1. u2's m3, m3 follow nothing of u1's, though they come next in the log.
    after_m1 = np.array([1 + 1 / 2 + 1 / 3, 1 + 1 / 2, 0, 0])
    expected = np.vstack([after_m1 / after_m1.sum(), [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(stage.transitions.toarray(), expected, rtol=1e-6)
    # At a half-life of one order u1's orders weigh 1.375 at m1 and 0.5 at m2 (as for EASE's score above).
    u1_recent = np.array([1.375, 0.5, 0.0, 0.0])
    for merchant, column in (("m1", 0), ("m2", 1), ("m3", 2)):
        value = table.loc[("u1", merchant), "transitions_from_recent_items_hl1"]
        assert value == pytest.approx(u1_recent @ expected[:, column], rel=1e-5)
    assert table.loc[("u1", "m3"), "transitions_from_recent_items_hl1"] == 0
    # Off by default (the fixture's ranker).
    assert not [column for column in features.columns if column.startswith("transitions")]
