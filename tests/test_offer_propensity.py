"""The offer model learns from its own campaigns (issue 13, item 3): the personalised arm explores, every offer
logs the probability it was chosen, the propensity travels with the exposure into the warehouse, and the offer
model weights exposures by its inverse so that its arm effects stay unbiased on campaigns its policy chose."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import psycopg
import pytest

from ml.experiments.assignment import HOLDOUT, NON_PERSONALISED, PERSONALISED, hash_unit
from ml.offers.arms import NO_OFFER, arm_labels
from ml.offers.decide import decide_offers, exploration_key
from ml.offers.policy import expected_gain
from ml.offers.response import MAX_INVERSE_PROPENSITY, OfferResponseModel, inverse_propensity_weights
from ml.settings import Settings
from ml.synthetic.campaign_replay import with_propensity
from ml.warehouse import ddl, ingest

OFFER_ARMS = {"cashback:5": 5.0, "double_points:10": 10.0, "free_delivery:10": 10.0}
ALL_ARMS = (NO_OFFER, *sorted(OFFER_ARMS))
CAMPAIGN = "winback-2026-03-01"


class RemoteZonePolicy:
    """A logging policy with strong preferences: free delivery for users in the remote zone, double points for
    everyone else (what a model trained on earlier campaigns would send). The decide path's model interface."""

    margin_rate = 0.3
    reward_size_ = OFFER_ARMS

    def gain_and_cost(self, users: pd.DataFrame, objective: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        remote = users["home_zone"].eq("remote").to_numpy()
        p = pd.DataFrame(
            {
                NO_OFFER: 0.10,
                "cashback:5": 0.12,
                "double_points:10": np.where(remote, 0.12, 0.40),
                "free_delivery:10": np.where(remote, 0.40, 0.12),
            },
            index=users.index,
        )
        value = pd.DataFrame(100.0, index=p.index, columns=p.columns)
        gain = expected_gain(objective, p, value, OFFER_ARMS, NO_OFFER, self.margin_rate)
        return p, gain, p[list(OFFER_ARMS)] * pd.Series(OFFER_ARMS)


def campaign_settings(**overrides) -> Settings:
    """A budget that never binds and the margin objective, so the policy's choice is each user's favourite."""
    return Settings(
        **{
            "holdout_share": 0.1,
            "personalised_share": 0.6,
            "campaign_budget": 1e9,
            "personalised_budget_per_user": 1e9,
            "offer_objective": "margin",
            "default_offer_event_type": "cashback",
            "default_offer_reward": 5.0,
            **overrides,
        }
    )


def inactive_users(n: int, rng: np.random.Generator, first_id: int = 0) -> pd.DataFrame:
    order_count = rng.poisson(3.0, n)
    avg_order_value = rng.uniform(40.0, 140.0, n)
    return pd.DataFrame(
        {
            "user_id": np.arange(first_id, first_id + n),
            "segment": "lapsed",
            "recency_days": rng.integers(7, 90, n),
            "order_count_before": order_count,
            "order_value_before": order_count * avg_order_value,
            "avg_order_value_before": avg_order_value,
            "avg_price_level_before": rng.uniform(1.0, 4.0, n),
            "tenure_days": rng.integers(30, 400, n),
            "platform": rng.choice(["ios", "android"], n),
            "home_zone": rng.choice(["remote", "centre"], n),
            "favourite_category_before": rng.choice(["burgers", "sushi"], n),
            "sessions_14d": rng.poisson(0.8, n),
            "days_since_session": rng.integers(0, 40, n).astype(float),
            "offers_received": rng.poisson(1.0, n),
            "campaign_opens": rng.poisson(0.3, n),
            "offers_redeemed": rng.poisson(0.1, n),
        }
    )


def true_reactivation(users: pd.DataFrame) -> pd.DataFrame:
    """The world's truth per user and arm: free delivery only works in the remote zone (+20 points), double
    points only elsewhere (+10), cashback a little for everyone (+3); users who still open the app come back
    more often anyway."""
    remote = users["home_zone"].eq("remote").to_numpy()
    base = np.where(users["sessions_14d"].to_numpy() > 0, 0.30, 0.10)
    return pd.DataFrame(
        {
            NO_OFFER: base,
            "cashback:5": base + 0.03,
            "double_points:10": base + np.where(remote, 0.0, 0.10),
            "free_delivery:10": base + np.where(remote, 0.20, 0.0),
        },
        index=users.index,
    )


# --- exploration and propensities in the decision ------------------------------------------------------------


@pytest.fixture(scope="module")
def decided() -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    users = inactive_users(20_000, np.random.default_rng(1))
    settings = campaign_settings()
    explored = decide_offers(RemoteZonePolicy(), users, CAMPAIGN, settings)
    policy_only = decide_offers(RemoteZonePolicy(), users, CAMPAIGN, campaign_settings(offer_exploration_share=0.0))
    return settings, explored, policy_only


def test_the_exploration_share_of_the_personalised_arm_gets_a_uniformly_drawn_arm(decided):
    settings, offers, policy_only = decided
    share = settings.offer_exploration_share
    personalised = offers["arm"].eq(PERSONALISED).to_numpy()
    expected = [hash_unit(exploration_key(CAMPAIGN), u) < share for u in offers["user_id"]] & personalised
    assert offers["explored"].tolist() == expected.tolist()
    n = personalised.sum()
    assert offers.loc[personalised, "explored"].mean() == pytest.approx(share, abs=4 * np.sqrt(share * 0.9 / n))
    # Explored users' arms are uniform over all arms, whatever the policy prefers for them.
    explored = offers[offers["explored"]]
    counts = pd.Series(arm_labels(explored["event_type"], explored["reward_size"])).value_counts()
    assert set(counts.index) == set(ALL_ARMS)
    assert (counts / len(explored)).to_numpy() == pytest.approx(1 / len(ALL_ARMS), abs=0.05)
    # Everyone else keeps the policy's offer, and only the personalised arm ever explores.
    kept = ~offers["explored"].to_numpy()
    pd.testing.assert_frame_equal(
        offers.loc[kept, ["user_id", "arm", "event_type", "reward_size"]],
        policy_only.loc[kept, ["user_id", "arm", "event_type", "reward_size"]],
    )


def test_each_offer_logs_the_probability_it_was_chosen_given_its_experiment_arm(decided):
    settings, offers, policy_only = decided
    share, k = settings.offer_exploration_share, len(ALL_ARMS)
    sent = arm_labels(offers["event_type"], offers["reward_size"])
    policy_choice = arm_labels(policy_only["event_type"], policy_only["reward_size"])
    personalised = offers["arm"].eq(PERSONALISED).to_numpy()
    expected = np.where(sent == policy_choice, 1 - share + share / k, share / k)
    assert offers.loc[personalised, "propensity"].to_numpy() == pytest.approx(expected[personalised])
    fixed = offers["arm"].isin([NON_PERSONALISED, HOLDOUT])
    assert (offers.loc[fixed, "propensity"] == 1.0).all() and not offers.loc[fixed, "explored"].any()
    assert (offers.loc[offers["arm"].eq(HOLDOUT), "event_type"] == NO_OFFER).all()
    # The propensities are the true choice probabilities: weighted by their inverse, every arm stands for the
    # whole personalised arm (E[1{sent = a} / propensity] = 1 for each arm a), the policy's favourites and the rest.
    for arm in ALL_ARMS:
        weighted = np.where(sent[personalised] == arm, 1.0 / offers.loc[personalised, "propensity"], 0.0)
        assert weighted.mean() == pytest.approx(1.0, abs=0.25), arm


def test_the_exploration_share_is_a_share():
    with pytest.raises(ValueError, match="REKINDLE_OFFER_EXPLORATION_SHARE"):
        Settings(offer_exploration_share=1.5)


# --- the propensity travels with the exposure ----------------------------------------------------------------


def test_the_propensity_is_stored_with_the_offer_and_an_older_offers_table_migrates_in_place(warehouse_url):
    from ml.crm.offers import replace_offers

    offers = decide_offers(
        RemoteZonePolicy(), inactive_users(300, np.random.default_rng(2)), CAMPAIGN, campaign_settings()
    )
    with psycopg.connect(warehouse_url) as conn:
        conn.execute("CREATE SCHEMA crm")
        # crm.inactive_user_offers as a warehouse made before propensities holds it, with one published row.
        conn.execute(
            """CREATE TABLE crm.inactive_user_offers (
                   run_date date not null, campaign_id text not null, user_id text not null, segment text not null,
                   arm text not null, event_type text not null, reward_size numeric(8, 2) not null,
                   expected_uplift double precision not null, expected_cost double precision not null,
                   is_holdout boolean not null, model_version text not null, primary key (run_date, user_id))"""
        )
        conn.execute(
            "INSERT INTO crm.inactive_user_offers VALUES "
            "('2026-02-01', 'winback-2026-02-01', '1', 'lapsed', 'holdout', 'none', 0, 0, 0, true, 'v0')"
        )
        replace_offers(conn, date(2026, 3, 1), CAMPAIGN, offers, "v1")
        old = conn.execute("SELECT explored, propensity FROM crm.inactive_user_offers WHERE model_version = 'v0'")
        assert old.fetchall() == [(False, None)]
        stored = conn.execute(
            "SELECT user_id, explored, propensity FROM crm.inactive_user_offers WHERE run_date = '2026-03-01'"
        ).fetchall()
    stored = pd.DataFrame(stored, columns=["user_id", "explored", "propensity"]).set_index("user_id")
    expected = offers.assign(user_id=offers["user_id"].astype(str)).set_index("user_id")
    assert stored["explored"].to_dict() == expected["explored"].to_dict()
    assert stored["propensity"].to_dict() == pytest.approx(expected["propensity"].to_dict())
    assert stored["propensity"].min() < 0.1


def test_the_replayed_exposures_carry_their_offers_propensity():
    offers = pd.DataFrame({"campaign_id": ["c", "c"], "user_id": [1, 2], "propensity": [0.025, np.nan]})
    exposures = pd.DataFrame({"campaign_id": ["c", "c"], "user_id": [2, 1], "event_type": ["none", "cashback"]})
    assert with_propensity(exposures, offers)["propensity"].tolist() == pytest.approx([np.nan, 0.025], nan_ok=True)


def test_ingest_loads_the_propensity_when_present_null_when_absent_and_quarantines_impossible_ones(
    warehouse_url, tmp_path
):
    header = "campaign_id,user_id,sent_at,event_type,reward_size,assignment"
    (tmp_path / "campaign_exposures_1.csv").write_text(f"{header}\nc1,1,2026-03-01T09:00:00Z,cashback,5,treatment\n")
    (tmp_path / "campaign_exposures_2.csv").write_text(
        f"{header},propensity\n"
        "c2,1,2026-03-02T09:00:00Z,cashback,5,treatment,0.025\n"
        "c2,2,2026-03-02T09:00:00Z,none,0,holdout,1\n"
        "c2,3,2026-03-02T09:00:00Z,cashback,5,treatment,0\n"
    )
    ingest.ingest_path(warehouse_url, tmp_path, now=datetime(2026, 3, 20, tzinfo=UTC))
    with psycopg.connect(warehouse_url) as conn:
        loaded = conn.execute("SELECT campaign_id, user_id, propensity FROM raw.campaign_exposures ORDER BY 1, 2")
        assert loaded.fetchall() == [("c1", "1", None), ("c2", "1", 0.025), ("c2", "2", 1.0)]
        reasons = conn.execute("SELECT reason FROM raw.quarantine WHERE table_name = 'campaign_exposures'")
        assert reasons.fetchall() == [("propensity not in (0, 1]",)]


def test_ddl_adds_the_propensity_to_an_older_exposure_table(warehouse_url):
    with psycopg.connect(warehouse_url) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute(
            """CREATE TABLE raw.campaign_exposures (campaign_id text not null, user_id text not null,
                   sent_at timestamptz not null, event_type text not null, reward_size numeric(8, 2) not null,
                   assignment text not null, source_file text not null, loaded_at timestamptz not null default now(),
                   primary key (campaign_id, user_id))"""
        )
        ddl.ensure(conn, "raw")
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'raw' AND table_name = 'campaign_exposures'"
        ).fetchall()
    assert ("propensity",) in columns


# --- inverse-propensity weighting ---------------------------------------------------------------------------


def test_inverse_propensity_weights_are_capped_and_unknown_propensities_weigh_one(caplog):
    history = pd.DataFrame({"propensity": [1.0, 0.5, 0.025, np.nan]})
    assert inverse_propensity_weights(history).tolist() == [1.0, 2.0, MAX_INVERSE_PROPENSITY, 1.0]
    assert "1 of 4 exposures have no logged propensity" in caplog.text
    assert inverse_propensity_weights(history.drop(columns="propensity")).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="propensity"):
        inverse_propensity_weights(pd.DataFrame({"propensity": [0.0]}))


def policy_campaigns(n_campaigns: int, users_per_campaign: int, seed: int) -> pd.DataFrame:
    """Campaigns the logging policy chose (with the default exploration), answered by the world's truth."""
    rng = np.random.default_rng(seed)
    campaigns = []
    for c in range(n_campaigns):
        users = inactive_users(users_per_campaign, rng, first_id=c * users_per_campaign)
        offers = decide_offers(RemoteZonePolicy(), users, f"winback-2026-03-0{c + 1}", campaign_settings())
        truth = true_reactivation(users)
        sent = arm_labels(offers["event_type"], offers["reward_size"])
        p = truth.to_numpy()[np.arange(len(users)), truth.columns.get_indexer(sent)]
        reactivated = rng.random(len(users)) < p
        campaigns.append(
            users.drop(columns="segment").assign(
                campaign_id=f"c{c}",
                event_type=offers["event_type"],
                reward_size=offers["reward_size"].astype(float),
                propensity=offers["propensity"],
                reactivated=reactivated,
                order_value_in_window=np.where(reactivated, 100.0, 0.0),
                redeemed=reactivated & offers["event_type"].ne(NO_OFFER).to_numpy(),
            )
        )
    return pd.concat(campaigns, ignore_index=True)


def test_a_model_trained_on_campaigns_its_policy_chose_estimates_the_arm_effects_without_bias():
    history = policy_campaigns(n_campaigns=4, users_per_campaign=8000, seed=0)
    # The policy sent free delivery where it works and double points where it works: the history overstates both.
    sent = arm_labels(history["event_type"], history["reward_size"])
    assert history.loc[sent == "free_delivery:10", "home_zone"].eq("remote").mean() > 0.9
    population = inactive_users(4000, np.random.default_rng(9))
    truth = true_reactivation(population)
    true_effect = {arm: float((truth[arm] - truth[NO_OFFER]).mean()) for arm in OFFER_ARMS}

    def effect_errors(history: pd.DataFrame) -> dict[str, float]:
        p, _ = OfferResponseModel(0.3, seed=0).fit(history).predict(population)
        return {arm: float((p[arm] - p[NO_OFFER]).mean()) - true_effect[arm] for arm in OFFER_ARMS}

    weighted = effect_errors(history)
    unweighted = effect_errors(history.drop(columns="propensity"))
    # Within 3.5 points of the truth for every arm (the true effects are 3 to 10 points); at most 2.7 on seeds 0-4.
    assert max(abs(e) for e in weighted.values()) < 0.035, weighted
    # Without the weights the policy's favourites look better than they are (3.8-5.8 points too high on seeds 0-4).
    favourites = ("free_delivery:10", "double_points:10")
    assert all(unweighted[a] > 0.03 for a in favourites), unweighted
    assert sum(abs(unweighted[a]) for a in favourites) > sum(abs(weighted[a]) for a in favourites) + 0.03


def test_the_offer_model_is_the_same_whether_its_folds_are_fitted_one_by_one_or_side_by_side():
    history = policy_campaigns(n_campaigns=2, users_per_campaign=3000, seed=1)
    population = inactive_users(500, np.random.default_rng(3))
    one_by_one = OfferResponseModel(0.3, seed=0).fit(history, workers=1)
    side_by_side = OfferResponseModel(0.3, seed=0).fit(history, workers=3)
    assert side_by_side.shrinkage_ == one_by_one.shrinkage_
    assert side_by_side.centre_ == one_by_one.centre_
    for mine, theirs in zip(side_by_side.predict(population), one_by_one.predict(population)):
        pd.testing.assert_frame_equal(mine, theirs)
