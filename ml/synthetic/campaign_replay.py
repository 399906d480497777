"""Closing the loop on synthetic data: play the latest published win-back campaign out in the
generator's world and drop the outcome where the next daily run picks it up.

``simulate_campaign`` reads the latest run_date's ``crm.inactive_user_offers``, continues the
marketplace (ground truth from ``rekindle generate``) from that day with those offers, and writes
the events and campaign exposures into the drop folder. The next daily run ingests them, so the
exposures and their outcomes reach ``raw`` and the ``campaign_history`` mart, and after the
reactivation window ``experiment_readout`` measures the campaign. The true expected re-engagement
per arm is returned and kept beside the ground truth, so the measured readout can be checked
against it.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg

from ml.experiments.assignment import ARMS, HOLDOUT, NON_PERSONALISED, PERSONALISED
from ml.experiments.readout import campaign_truth_path, load_campaign_truth
from ml.offers.arms import NO_OFFER
from ml.settings import Settings
from ml.synthetic.marketplace import Marketplace
from ml.synthetic.world import (
    CAMPAIGN_SEND_HOUR,
    CHECKOUT,
    simulate_days,
    true_reactivation_probability,
)
from ml.warehouse import ingest, postgres

OFFER_COLUMNS = ["run_date", "campaign_id", "user_id", "arm", "event_type", "reward_size", "propensity"]


def latest_offers(conn: psycopg.Connection) -> pd.DataFrame:
    """The latest run_date's published offers, one row per (campaign, user)."""
    rows = conn.execute(
        """SELECT DISTINCT ON (campaign_id, user_id)
                  run_date, campaign_id, user_id, arm, event_type, reward_size, propensity
           FROM crm.inactive_user_offers
           WHERE run_date = (SELECT max(run_date) FROM crm.inactive_user_offers)
           ORDER BY campaign_id, user_id"""
    ).fetchall()
    offers = pd.DataFrame(rows, columns=OFFER_COLUMNS)
    return offers.astype({"reward_size": "float64", "propensity": "float64"})


def with_propensity(exposures: pd.DataFrame, offers: pd.DataFrame) -> pd.DataFrame:
    """The exposures with the probability their offer was chosen (crm.inactive_user_offers.propensity), so the
    offer model can weight what its own policy chose; null for offers published before propensities."""
    propensity = offers.set_index(["campaign_id", "user_id"])["propensity"]
    keys = pd.MultiIndex.from_arrays([exposures["campaign_id"].astype(str), exposures["user_id"].astype("int64")])
    return exposures.assign(propensity=propensity.reindex(keys).to_numpy(dtype=float))


def simulation_offers(offers: pd.DataFrame) -> pd.DataFrame:
    """Published offers in ``simulate_days``' format: both treated arms get their offer, the holdout
    nothing. A treated user whose offer is ``none`` stays in the campaign with no reward, so they
    answer at their baseline rate like the holdout (intent to treat)."""
    treated = offers["arm"].ne(HOLDOUT)
    has_offer = treated & offers["event_type"].ne(NO_OFFER)
    return pd.DataFrame(
        {
            "campaign_id": offers["campaign_id"].astype(str),
            "user_id": offers["user_id"].astype("int64"),
            "event_type": offers["event_type"].where(has_offer, NO_OFFER).astype(str),
            "reward_size": offers["reward_size"].where(has_offer, 0.0).astype(float),
            "assignment": treated.map({True: "treatment", False: "holdout"}),
        }
    )


def true_response_probability(marketplace: Marketplace, sent: pd.DataFrame, start: date) -> pd.Series:
    """Each user's true P(order within the reactivation window) for what they were sent, with the
    user's state when the campaign goes out (``start`` at the send hour), as ``simulate_days`` draws it."""
    sent_at = pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=CAMPAIGN_SEND_HOUR)
    truth = marketplace.user_truth.set_index("user_id").loc[sent["user_id"]]
    signup_at = marketplace.users.set_index("user_id")["signup_at"].loc[sent["user_id"]]
    # Users who never ordered count their inactivity from signup, like the simulator does.
    inactive_since = truth["last_order_at"].fillna(signup_at)
    truth = truth.assign(days_since_last_order=(sent_at - inactive_since).dt.total_seconds() / 86_400)
    treated = sent["assignment"].eq("treatment").to_numpy()
    event_type = sent["event_type"].where(treated, NO_OFFER).to_numpy(object)
    reward_size = sent["reward_size"].where(treated, 0.0).to_numpy(float)
    probability = true_reactivation_probability(truth.reset_index(), event_type, reward_size)
    return pd.Series(probability, index=pd.Index(sent["user_id"], name="user_id"), name="p_true")


def true_re_engagement_by_arm(offers: pd.DataFrame, p_true: pd.Series) -> dict[str, float]:
    """Mean true probability per arm: the re-engagement rate the readout should measure."""
    by_arm = p_true.reindex(offers["user_id"]).groupby(offers["arm"].to_numpy()).mean()
    return {arm: float(by_arm[arm]) for arm in ARMS if arm in by_arm.index}


def true_relative_lift(rates: dict[str, float], arm: str, baseline: str) -> float | None:
    if arm not in rates or baseline not in rates or rates[baseline] == 0:
        return None
    return rates[arm] / rates[baseline] - 1.0


def drop_file_names(start: date, days: int) -> dict[str, str]:
    """``events_sim_<start>_<days>d.parquet`` and the exposures beside it: named so ingest knows the table."""
    return {table: f"{table}_sim_{start.isoformat()}_{days}d.parquet" for table in ("events", "campaign_exposures")}


def earlier_simulation_files(
    conn: psycopg.Connection, settings: Settings, campaign_ids: list[str], seed: int, days: int
) -> list[Path]:
    """The files of an earlier simulation of these campaigns with another seed or number of days, which the new one
    replaces: a campaign has one simulated outcome. Refused once the daily run has loaded them: their events would
    stay in raw beside the new ones, and the campaign would be measured on two outcomes."""
    stale = []
    has_ingest_log = conn.execute("SELECT to_regclass('raw.ingested_files') IS NOT NULL").fetchone()[0]
    for campaign_id in campaign_ids:
        earlier = load_campaign_truth(settings, campaign_id)
        if earlier is None or (earlier["seed"], earlier["days"]) == (seed, days):
            continue
        files = [Path(path).resolve() for path in earlier["files"].values()]
        if has_ingest_log and ingest.recorded_files(conn, [str(path) for path in files]):
            raise ValueError(
                f"campaign {campaign_id} was already simulated (seed {earlier['seed']}, {earlier['days']} days) and "
                "the daily run has loaded that outcome; another would add its events beside it. Repeat it with "
                f"--seed {earlier['seed']} --days {earlier['days']}, or simulate the next published campaign"
            )
        stale += files
    return stale


def write_drop_files(
    folder: Path,
    start: date,
    days: int,
    events: pd.DataFrame,
    exposures: pd.DataFrame,
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {table: folder / name for table, name in drop_file_names(start, days).items()}
    events.to_parquet(paths["events"], index=False)
    exposures.to_parquet(paths["campaign_exposures"], index=False)
    return paths


def simulate_campaign(settings: Settings, days: int, seed: int) -> dict:
    """Play out the latest published campaign for ``days`` days; returns counts and the true
    re-engagement per arm. Use ``days`` >= the reactivation window to observe every response."""
    url = postgres.start(settings)
    with psycopg.connect(url) as conn:
        offers = latest_offers(conn)
        if offers.empty:
            raise LookupError("crm.inactive_user_offers has no offers: run the daily pipeline first")
        stale = earlier_simulation_files(conn, settings, sorted(offers["campaign_id"].unique()), seed, days)
    start = offers["run_date"].iloc[0]
    marketplace = Marketplace.read(settings.input_dir)  # refuses a world written with UUID ids
    # The simulated world numbers its users; the warehouse holds their ids as text.
    offers = offers.astype({"user_id": "int64"})
    sent = simulation_offers(offers)
    events, exposures = simulate_days(marketplace, start, days, sent, seed)
    exposures = with_propensity(exposures, offers)
    paths = write_drop_files(settings.input_dir, start, days, events, exposures)
    for path in set(stale) - {path.resolve() for path in paths.values()}:
        path.unlink(missing_ok=True)
    rates = true_re_engagement_by_arm(offers, true_response_probability(marketplace, sent, start))
    result = {
        "campaign_ids": sorted(offers["campaign_id"].unique()),
        "start": start.isoformat(),
        "days": days,
        "seed": seed,
        "files": {table: str(path) for table, path in paths.items()},
        "events": len(events),
        "orders": int(events["event_type"].eq(CHECKOUT).sum()),
        "exposures": len(exposures),
        "users_per_arm": {arm: int(n) for arm, n in offers["arm"].value_counts().items()},
        "true_re_engagement": rates,
        "true_relative_lift_vs_non_personalised": true_relative_lift(rates, PERSONALISED, NON_PERSONALISED),
        "true_relative_lift_vs_holdout": true_relative_lift(rates, PERSONALISED, HOLDOUT),
    }
    for campaign_id in result["campaign_ids"]:
        path = campaign_truth_path(settings, campaign_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return result
