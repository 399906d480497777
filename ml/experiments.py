"""Win-back experiments: hash-based arm assignment, proportion statistics and the campaign readout.

Every daily campaign ``winback-<run_date>`` splits its inactive users into three arms by a hash of
(campaign_id, user_id): ``personalised`` (the offer model's choice and ranked merchants),
``non_personalised`` (one default offer and popular merchants) and ``holdout`` (nothing). Once the
reactivation window is over, ``readout`` measures each arm's re-engagement against the holdout and
against the non-personalised arm, and ``run_readout`` stores and logs it.

Intent to treat: a user counts in the arm they were assigned to, even when the personalised policy
chose to send them no offer (event_type ``none``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import psycopg
from scipy.stats import norm

from ml import warehouse
from ml.generate import TRUTH_FOLDER
from ml.settings import Settings

PERSONALISED = "personalised"
NON_PERSONALISED = "non_personalised"
HOLDOUT = "holdout"
ARMS = (PERSONALISED, NON_PERSONALISED, HOLDOUT)
BASELINES = (HOLDOUT, NON_PERSONALISED)

SEED_RELATIVE_LIFT = 0.15  # the seed's bar: personalised beats non-personalised by at least 15%
CONFIDENCE = 0.95
MLFLOW_EXPERIMENT = "rekindle-experiments"

RESULTS_SQL = """
CREATE SCHEMA IF NOT EXISTS crm;
CREATE TABLE IF NOT EXISTS crm.experiment_results (
    campaign_id                    text    NOT NULL,
    campaign_date                  date    NOT NULL,
    window_days                    integer NOT NULL,
    window_start                   timestamptz NOT NULL,
    window_end                     timestamptz NOT NULL,
    arm                            text    NOT NULL,
    users                          bigint  NOT NULL,
    re_engaged_users               bigint  NOT NULL,
    re_engagement_rate             double precision,
    revenue                        double precision NOT NULL,
    revenue_per_user               double precision,
    abs_lift_vs_holdout            double precision,
    abs_lift_vs_holdout_ci_low     double precision,
    abs_lift_vs_holdout_ci_high    double precision,
    rel_lift_vs_holdout            double precision,
    rel_lift_vs_holdout_ci_low     double precision,
    rel_lift_vs_holdout_ci_high    double precision,
    p_value_vs_holdout             double precision,
    abs_lift_vs_non_personalised          double precision,
    abs_lift_vs_non_personalised_ci_low   double precision,
    abs_lift_vs_non_personalised_ci_high  double precision,
    rel_lift_vs_non_personalised          double precision,
    rel_lift_vs_non_personalised_ci_low   double precision,
    rel_lift_vs_non_personalised_ci_high  double precision,
    p_value_vs_non_personalised           double precision,
    meets_seed_criterion           boolean,
    seed_criterion_significant     boolean,
    computed_at                    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, arm)
);
"""
COUNT_COLUMNS = ["arm", "users", "re_engaged_users", "revenue"]


def _comparison_columns(baseline: str) -> list[str]:
    return [
        f"abs_lift_vs_{baseline}", f"abs_lift_vs_{baseline}_ci_low", f"abs_lift_vs_{baseline}_ci_high",
        f"rel_lift_vs_{baseline}", f"rel_lift_vs_{baseline}_ci_low", f"rel_lift_vs_{baseline}_ci_high",
        f"p_value_vs_{baseline}",
    ]


RESULT_COLUMNS = [
    "campaign_id", "campaign_date", "window_days", "window_start", "window_end",
    "arm", "users", "re_engaged_users", "re_engagement_rate", "revenue", "revenue_per_user",
    *(column for baseline in BASELINES for column in _comparison_columns(baseline)),
    "meets_seed_criterion", "seed_criterion_significant",
]


# --------------------------------------------------------------------------- assignment


def campaign_id_for(run_date: date) -> str:
    return f"winback-{run_date.isoformat()}"


def hash_unit(campaign_id: str, user_id: int) -> float:
    """A uniform number in [0, 1) fixed by (campaign_id, user_id): the top 53 bits of a sha256.

    53 bits, because a float holds no more: dividing all 64 could round up to exactly 1.0."""
    digest = hashlib.sha256(f"{campaign_id}:{int(user_id)}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53


def assign_arms(
    campaign_id: str, user_ids: Iterable[int], holdout_share: float = 0.10, personalised_share: float = 0.45,
) -> pd.Series:
    """Each user's arm (index user_id): holdout below ``holdout_share``, then personalised, then the rest.

    The hash includes the campaign, so a user's arm changes from campaign to campaign (nobody is held
    out forever) but never between re-runs of the same campaign.
    """
    if holdout_share < 0 or personalised_share < 0 or holdout_share + personalised_share > 1:
        raise ValueError("holdout_share and personalised_share must be non-negative and add up to at most 1")
    ids = pd.Index(list(user_ids), dtype="int64", name="user_id")
    unit = np.array([hash_unit(campaign_id, user_id) for user_id in ids])
    arm = np.where(
        unit < holdout_share, HOLDOUT, np.where(unit < holdout_share + personalised_share, PERSONALISED, NON_PERSONALISED)
    )
    return pd.Series(arm, index=ids, name="arm", dtype=object)


# --------------------------------------------------------------------------- statistics (pure)


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """An arm (x successes of n) against a baseline arm."""

    absolute_lift: float
    absolute_ci: Interval  # Newcombe hybrid score
    relative_lift: float
    relative_ci: Interval  # delta method on log(p_arm / p_baseline)
    p_value: float  # two-sided pooled two-proportion z-test


NAN_INTERVAL = Interval(math.nan, math.nan)


def z_critical(confidence: float = CONFIDENCE) -> float:
    return float(norm.ppf(0.5 + confidence / 2.0))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> ZTest:
    """Two-sided z-test of p1 = p2 with the pooled standard error."""
    if n1 == 0 or n2 == 0:
        return ZTest(math.nan, math.nan)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:  # both arms all-zero or all-one: no evidence of a difference
        return ZTest(0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / se
    return ZTest(z, float(2.0 * norm.sf(abs(z))))


def wilson_interval(x: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    z = z_critical(confidence)
    p = x / n
    centre = (x + z**2 / 2.0) / (n + z**2)
    half = z * math.sqrt(n) / (n + z**2) * math.sqrt(p * (1.0 - p) + z**2 / (4.0 * n))
    return Interval(centre - half, centre + half)


def wald_difference_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    p1, p2 = x1 / n1, x2 / n2
    half = z_critical(confidence) * math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    return Interval(p1 - p2 - half, p1 - p2 + half)


def newcombe_difference_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """Newcombe's hybrid score interval for p1 - p2 (his method 10): well behaved near 0 and 1,
    where the Wald interval is too narrow, and it never leaves [-1, 1]."""
    p1, p2 = x1 / n1, x2 / n2
    w1, w2 = wilson_interval(x1, n1, confidence), wilson_interval(x2, n2, confidence)
    low = p1 - p2 - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = p1 - p2 + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return Interval(low, high)


def relative_lift(x1: int, n1: int, x2: int, n2: int) -> float:
    """p1 / p2 - 1 (NaN when the baseline rate is 0)."""
    p2 = x2 / n2
    return (x1 / n1) / p2 - 1.0 if p2 > 0 else math.nan


def relative_lift_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """CI of p1 / p2 - 1 by the delta method on the log risk ratio (Katz):
    Var(log p1/p2) = (1 - p1) / x1 + (1 - p2) / x2. Undefined (NaN) when either arm has no successes."""
    if x1 == 0 or x2 == 0:
        return NAN_INTERVAL
    log_ratio = math.log((x1 / n1) / (x2 / n2))
    se = math.sqrt((1.0 - x1 / n1) / x1 + (1.0 - x2 / n2) / x2)
    half = z_critical(confidence) * se
    return Interval(math.exp(log_ratio - half) - 1.0, math.exp(log_ratio + half) - 1.0)


def compare_proportions(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Comparison:
    """Arm (x1 of n1) against baseline (x2 of n2): absolute and relative lift, CIs, p-value."""
    if n1 == 0 or n2 == 0:
        return Comparison(math.nan, NAN_INTERVAL, math.nan, NAN_INTERVAL, math.nan)
    return Comparison(
        absolute_lift=x1 / n1 - x2 / n2,
        absolute_ci=newcombe_difference_ci(x1, n1, x2, n2, confidence),
        relative_lift=relative_lift(x1, n1, x2, n2),
        relative_ci=relative_lift_ci(x1, n1, x2, n2, confidence),
        p_value=two_proportion_z_test(x1, n1, x2, n2).p_value,
    )


def meets_seed_criterion(comparison: Comparison) -> bool | None:
    if math.isnan(comparison.relative_lift):
        return None
    return comparison.relative_lift >= SEED_RELATIVE_LIFT


def seed_criterion_significant(comparison: Comparison) -> bool | None:
    """True when the whole CI lies at or above the bar (a one-sided test of lift < 15% at 2.5%)."""
    if math.isnan(comparison.relative_ci.low):
        return None
    return comparison.relative_ci.low >= SEED_RELATIVE_LIFT


# --------------------------------------------------------------------------- readout


def campaign_start(campaign_date: date) -> datetime:
    """The window opens at the campaign's run_date 00:00 UTC: the offers are published that day and
    sent during it, so a window starting at midnight never misses a response."""
    return datetime.combine(campaign_date, time.min, tzinfo=timezone.utc)


def campaign_date_due(run_date: date, window_days: int) -> date:
    """The campaign whose reactivation window closed at ``run_date`` 00:00 UTC."""
    return run_date - timedelta(days=window_days)


def readout(conn: psycopg.Connection, campaign_id: str, window_days: int) -> pd.DataFrame:
    """One row per arm of ``campaign_id``: users, re-engaged users (at least one checkout_completed in
    [run_date 00:00 UTC, + window_days)), revenue, and lifts against the holdout and the
    non-personalised arm. Empty when the campaign has no published offers."""
    campaign_date = _campaign_date(conn, campaign_id)
    if campaign_date is None:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    window_start = campaign_start(campaign_date)
    window_end = window_start + timedelta(days=window_days)
    _check_one_arm_per_user(conn, campaign_id)
    counts = _arm_counts(conn, campaign_id, window_start, window_end)
    results = arm_results(counts)
    return results.assign(
        campaign_id=campaign_id, campaign_date=campaign_date, window_days=window_days,
        window_start=window_start, window_end=window_end,
    )[RESULT_COLUMNS]


def _campaign_date(conn: psycopg.Connection, campaign_id: str) -> date | None:
    if conn.execute("SELECT to_regclass('crm.inactive_user_offers')").fetchone()[0] is None:
        return None
    return conn.execute(
        "SELECT min(run_date) FROM crm.inactive_user_offers WHERE campaign_id = %s", (campaign_id,)
    ).fetchone()[0]


def _check_one_arm_per_user(conn: psycopg.Connection, campaign_id: str) -> None:
    conflicting = conn.execute(
        """SELECT count(*) FROM (
               SELECT user_id FROM crm.inactive_user_offers WHERE campaign_id = %s
               GROUP BY user_id HAVING count(DISTINCT arm) > 1
           ) users_in_several_arms""",
        (campaign_id,),
    ).fetchone()[0]
    if conflicting:
        raise ValueError(f"{campaign_id}: {conflicting} user(s) appear in more than one arm")


def _arm_counts(conn: psycopg.Connection, campaign_id: str, window_start: datetime, window_end: datetime) -> pd.DataFrame:
    rows = conn.execute(
        """WITH campaign AS (
               SELECT DISTINCT user_id, arm FROM crm.inactive_user_offers WHERE campaign_id = %(campaign_id)s
           ),
           orders AS (
               SELECT e.user_id, sum(e.order_total) AS revenue
               FROM raw.events e
               JOIN campaign c ON c.user_id = e.user_id
               WHERE e.event_type = 'checkout_completed'
                 AND e.event_time >= %(window_start)s AND e.event_time < %(window_end)s
               GROUP BY e.user_id
           )
           SELECT c.arm, count(*), count(o.user_id), coalesce(sum(o.revenue), 0)
           FROM campaign c
           LEFT JOIN orders o ON o.user_id = c.user_id
           GROUP BY c.arm""",
        {"campaign_id": campaign_id, "window_start": window_start, "window_end": window_end},
    ).fetchall()
    counts = pd.DataFrame(rows, columns=COUNT_COLUMNS)
    return counts.astype({"users": "int64", "re_engaged_users": "int64", "revenue": "float64"})


def arm_results(counts: pd.DataFrame) -> pd.DataFrame:
    """Per-arm rates and comparisons from counts (arm, users, re_engaged_users, revenue)."""
    by_arm = counts.set_index("arm")
    unknown = set(by_arm.index) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s): {sorted(unknown)}")
    rows = []
    for arm in (arm for arm in ARMS if arm in by_arm.index):
        users, re_engaged, revenue = by_arm.loc[arm, ["users", "re_engaged_users", "revenue"]]
        row = {
            "arm": arm, "users": int(users), "re_engaged_users": int(re_engaged),
            "re_engagement_rate": re_engaged / users, "revenue": float(revenue), "revenue_per_user": revenue / users,
        }
        for baseline in BASELINES:
            row.update(_comparison_row(baseline, _compare(by_arm, arm, baseline)))
        rows.append(row)
    results = pd.DataFrame(rows)
    seed = _compare(by_arm, PERSONALISED, NON_PERSONALISED)
    results["meets_seed_criterion"] = meets_seed_criterion(seed)
    results["seed_criterion_significant"] = seed_criterion_significant(seed)
    return results


def _compare(by_arm: pd.DataFrame, arm: str, baseline: str) -> Comparison:
    if arm == baseline or arm not in by_arm.index or baseline not in by_arm.index:
        return compare_proportions(0, 0, 0, 0)
    return compare_proportions(
        int(by_arm.at[arm, "re_engaged_users"]), int(by_arm.at[arm, "users"]),
        int(by_arm.at[baseline, "re_engaged_users"]), int(by_arm.at[baseline, "users"]),
    )


def _comparison_row(baseline: str, comparison: Comparison) -> dict:
    values = (
        comparison.absolute_lift, comparison.absolute_ci.low, comparison.absolute_ci.high,
        comparison.relative_lift, comparison.relative_ci.low, comparison.relative_ci.high, comparison.p_value,
    )
    return dict(zip(_comparison_columns(baseline), values, strict=True))


# --------------------------------------------------------------------------- storing and logging


def write_results(conn: psycopg.Connection, results: pd.DataFrame) -> int:
    """Replace the campaign's rows in ``crm.experiment_results`` in one transaction."""
    campaign_ids = results["campaign_id"].unique()
    if len(campaign_ids) != 1:
        raise ValueError("write_results takes the readout of exactly one campaign")
    placeholders = ", ".join(["%s"] * len(RESULT_COLUMNS))
    with conn.transaction():
        conn.execute(RESULTS_SQL)
        conn.execute("DELETE FROM crm.experiment_results WHERE campaign_id = %s", (str(campaign_ids[0]),))
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO crm.experiment_results ({', '.join(RESULT_COLUMNS)}) VALUES ({placeholders})",
                _records(results[RESULT_COLUMNS]),
            )
    return len(results)


def _records(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(_plain(value) for value in row) for row in frame.itertuples(index=False)]


def _plain(value):
    """NaN/None as NULL, numpy scalars as Python values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def log_to_mlflow(results: pd.DataFrame, settings: Settings, url: str) -> str:
    """One run per readout in the ``rekindle-experiments`` experiment; returns the run id."""
    import mlflow  # imported here so that parsing the DAG file stays light

    from ml import registry

    registry.configure(settings, url)
    first = results.iloc[0]
    with mlflow.start_run(
        experiment_id=registry.experiment_id(settings, MLFLOW_EXPERIMENT), run_name=f"readout-{first['campaign_id']}"
    ) as run:
        mlflow.log_params({
            "campaign_id": first["campaign_id"], "campaign_date": str(first["campaign_date"]),
            "window_days": int(first["window_days"]), "seed_relative_lift": SEED_RELATIVE_LIFT,
        })
        mlflow.log_metrics(mlflow_metrics(results))
        mlflow.set_tags({
            "meets_seed_criterion": str(_plain(first["meets_seed_criterion"])),
            "seed_criterion_significant": str(_plain(first["seed_criterion_significant"])),
        })
        mlflow.log_text(results.to_csv(index=False), "readout.csv")
    return run.info.run_id


def mlflow_metrics(results: pd.DataFrame) -> dict[str, float]:
    """``<arm>.<column>`` for every finite number in the readout."""
    numeric = ["users", "re_engaged_users", "re_engagement_rate", "revenue_per_user",
               *(column for baseline in BASELINES for column in _comparison_columns(baseline))]
    metrics = {}
    for row in results.itertuples(index=False):
        for column in numeric:
            value = _plain(getattr(row, column))
            if value is not None:
                metrics[f"{row.arm}.{column}"] = float(value)
    return metrics


# --------------------------------------------------------------------------- the DAG task


def run_readout(settings: Settings, campaign_date: date) -> dict:
    """Read out ``winback-<campaign_date>``, store it in crm.experiment_results, log it to MLflow."""
    campaign_id = campaign_id_for(campaign_date)
    url = warehouse.start(settings)
    with psycopg.connect(url) as conn:
        results = readout(conn, campaign_id, settings.reactivation_window_days)
        if results.empty:
            return {"campaign_id": campaign_id, "status": "no published offers for this campaign"}
        write_results(conn, results)
    summary = summarise(results)
    summary["mlflow_run_id"] = log_to_mlflow(results, settings, url)
    return summary


def summarise(results: pd.DataFrame) -> dict:
    """A JSON-able digest of a readout that says whether the 15% criterion is met."""
    first = results.iloc[0]
    window_end = first["window_end"]
    arms = {
        row.arm: {
            "users": int(row.users), "re_engaged_users": int(row.re_engaged_users),
            "re_engagement_rate": _rounded(row.re_engagement_rate), "revenue_per_user": _rounded(row.revenue_per_user),
        }
        for row in results.itertuples(index=False)
    }
    by_arm = results.set_index("arm")
    return {
        "campaign_id": str(first["campaign_id"]),
        "campaign_date": str(first["campaign_date"]),
        "window_end": window_end.isoformat(),
        "window_complete": datetime.now(timezone.utc) >= window_end,
        "status": "read out",
        "arms": arms,
        "personalised_vs_non_personalised": _lift_summary(by_arm, NON_PERSONALISED),
        "personalised_vs_holdout": _lift_summary(by_arm, HOLDOUT),
        "meets_seed_criterion": _plain(first["meets_seed_criterion"]),
        "seed_criterion_significant": _plain(first["seed_criterion_significant"]),
        "verdict": verdict(results),
    }


def _lift_summary(by_arm: pd.DataFrame, baseline: str) -> dict | None:
    if PERSONALISED not in by_arm.index:
        return None
    row = by_arm.loc[PERSONALISED]
    return {
        "absolute_lift": _rounded(row[f"abs_lift_vs_{baseline}"]),
        "absolute_ci": [_rounded(row[f"abs_lift_vs_{baseline}_ci_low"]), _rounded(row[f"abs_lift_vs_{baseline}_ci_high"])],
        "relative_lift": _rounded(row[f"rel_lift_vs_{baseline}"]),
        "relative_ci": [_rounded(row[f"rel_lift_vs_{baseline}_ci_low"]), _rounded(row[f"rel_lift_vs_{baseline}_ci_high"])],
        "p_value": _rounded(row[f"p_value_vs_{baseline}"]),
    }


def _rounded(value, digits: int = 4) -> float | None:
    value = _plain(value)
    return None if value is None else round(float(value), digits)


def verdict(results: pd.DataFrame) -> str:
    """One sentence on the seed criterion for people who will not read the table."""
    by_arm = results.set_index("arm")
    if PERSONALISED not in by_arm.index or NON_PERSONALISED not in by_arm.index:
        return "cannot judge the 15% criterion: the campaign lacks a personalised or non-personalised arm"
    row = by_arm.loc[PERSONALISED]
    lift, low, high = (_plain(row[column]) for column in (
        "rel_lift_vs_non_personalised", "rel_lift_vs_non_personalised_ci_low", "rel_lift_vs_non_personalised_ci_high",
    ))
    if lift is None:
        return "cannot judge the 15% criterion: the non-personalised arm re-engaged nobody"
    interval = "CI undefined" if low is None else f"95% CI {low:+.1%} to {high:+.1%}"
    if _plain(row["seed_criterion_significant"]) is True:
        judgement = "meets the 15% criterion, significantly"
    elif _plain(row["meets_seed_criterion"]) is True:
        judgement = "meets the 15% criterion, but not significantly (the CI reaches below 15%)"
    else:
        judgement = "does not meet the 15% criterion"
    return f"personalised re-engagement {lift:+.1%} relative to non-personalised ({interval}): {judgement}"


# --------------------------------------------------------------------------- command line


def campaign_truth_path(settings: Settings, campaign_id: str) -> Path:
    """Where ``rekindle simulate`` writes a campaign's true re-engagement per arm (synthetic worlds only)."""
    return settings.input_dir / TRUTH_FOLDER / f"campaign_truth_{campaign_id}.json"


def load_campaign_truth(settings: Settings, campaign_id: str) -> dict | None:
    path = campaign_truth_path(settings, campaign_id)
    return json.loads(path.read_text()) if path.is_file() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date", default=None,
        help="campaign run date YYYY-MM-DD (default: the campaign whose window closed today, UTC)",
    )


def run(args: argparse.Namespace) -> int:
    """``rekindle readout``: print the readout, with the simulated truth beside it when there is one."""
    settings = Settings.from_env()
    if args.date:
        campaign_date = date.fromisoformat(args.date)
    else:
        campaign_date = campaign_date_due(datetime.now(timezone.utc).date(), settings.reactivation_window_days)
    summary = run_readout(settings, campaign_date)
    print(f"{summary['campaign_id']}: {summary['status']}")
    if "arms" not in summary:
        return 1
    truth = load_campaign_truth(settings, summary["campaign_id"]) or {}
    true_rates = truth.get("true_re_engagement", {})
    print(f"{'arm':<18}{'users':>8}{'re-engaged':>12}{'rate':>9}{'true rate':>11}{'revenue/user':>14}")
    for arm, numbers in summary["arms"].items():
        true_rate = f"{true_rates[arm]:.2%}" if arm in true_rates else "-"
        print(
            f"{arm:<18}{numbers['users']:>8,}{numbers['re_engaged_users']:>12,}{numbers['re_engagement_rate']:>9.2%}"
            f"{true_rate:>11}{numbers['revenue_per_user']:>14.2f}"
        )
    if not summary["window_complete"]:
        print(f"interim readout: the window closes at {summary['window_end']}")
    print(summary["verdict"])
    return 0
