"""Win-back experiments: hash-based arm assignment, proportion statistics and the campaign readout.

Every daily campaign ``winback-<run_date>`` splits its inactive users into three arms by a hash of
(campaign_id, user_id): ``personalised`` (the offer model's choice and ranked merchants),
``non_personalised`` (one default offer and popular merchants) and ``holdout`` (nothing). Once the
reactivation window is over, ``readout`` measures each arm's re-engagement against the holdout and
against the non-personalised arm, and what it cost and earned: the rewards actually paid (an offered reward is
paid when the user redeems it in the window, ``marts.reward_redemptions``), the cost per incremental
reactivation and the net incremental margin against the holdout. ``run_readout`` stores and logs it.

Intent to treat: a user counts in the arm they were assigned to, even when the personalised policy
chose to send them no offer (event_type ``none``)."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from ml.experiments.assignment import (
    ARMS,
    BASELINES,
    HOLDOUT,
    NON_PERSONALISED,
    PERSONALISED,
    campaign_id_for,
)
from ml.experiments.statistics import (
    SEED_RELATIVE_LIFT,
    Comparison,
    compare_proportions,
    meets_seed_criterion,
    seed_criterion_significant,
)
from ml.settings import Settings
from ml.synthetic.marketplace import TRUTH_FOLDER
from ml.warehouse import ddl, marts, postgres

MLFLOW_EXPERIMENT = "rekindle-experiments"

COUNT_COLUMNS = ["arm", "users", "re_engaged_users", "revenue", "redeemed_users", "reward_cost"]

# What each arm cost and earned against the holdout (all per arm; the holdout's increments are 0 by definition).
ECONOMICS_COLUMNS = [
    "redeemed_users",
    "reward_cost",
    "reward_cost_per_user",
    "incremental_reactivations",
    "cost_per_incremental_reactivation",
    "net_incremental_margin",
    "net_incremental_margin_per_user",
]
# Per-user costs closer than this (QAR) count as equal spend.
SPEND_TOLERANCE = 1e-9


def _comparison_columns(baseline: str) -> list[str]:
    return [
        f"abs_lift_vs_{baseline}",
        f"abs_lift_vs_{baseline}_ci_low",
        f"abs_lift_vs_{baseline}_ci_high",
        f"rel_lift_vs_{baseline}",
        f"rel_lift_vs_{baseline}_ci_low",
        f"rel_lift_vs_{baseline}_ci_high",
        f"p_value_vs_{baseline}",
    ]


RESULT_COLUMNS = [
    "campaign_id",
    "campaign_date",
    "window_days",
    "window_start",
    "window_end",
    "arm",
    "users",
    "re_engaged_users",
    "re_engagement_rate",
    "revenue",
    "revenue_per_user",
    *ECONOMICS_COLUMNS,
    *(column for baseline in BASELINES for column in _comparison_columns(baseline)),
    "meets_seed_criterion",
    "seed_criterion_significant",
    "personalised_cost_within_non_personalised",
    "order_margin_rate",
]


def campaign_start(campaign_date: date) -> datetime:
    """The window opens at the campaign's run_date 00:00 UTC: the offers are published that day and
    sent during it, so a window starting at midnight never misses a response."""
    return datetime.combine(campaign_date, time.min, tzinfo=UTC)


def campaign_date_due(run_date: date, window_days: int) -> date:
    """The campaign whose reactivation window closed at ``run_date`` 00:00 UTC."""
    return run_date - timedelta(days=window_days)


def readout(conn: psycopg.Connection, campaign_id: str, window_days: int, margin_rate: float) -> pd.DataFrame:
    """One row per arm of ``campaign_id``: users, re-engaged users (at least one checkout_completed in
    [run_date 00:00 UTC, + window_days)), revenue, the rewards paid in that window and what the arm earned
    against the holdout at ``margin_rate`` (settings.order_margin_rate), and lifts against the holdout and the
    non-personalised arm. Empty when the campaign has no published offers."""
    campaign_date = _campaign_date(conn, campaign_id)
    if campaign_date is None:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    window_start = campaign_start(campaign_date)
    window_end = window_start + timedelta(days=window_days)
    _check_one_arm_per_user(conn, campaign_id)
    counts = _arm_counts(conn, campaign_id, window_start, window_end)
    results = arm_results(counts, margin_rate)
    return results.assign(
        campaign_id=campaign_id,
        campaign_date=campaign_date,
        window_days=window_days,
        window_start=window_start,
        window_end=window_end,
    )[RESULT_COLUMNS]


def _offers_table_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('crm.inactive_user_offers')").fetchone()[0] is not None


def latest_campaign(conn: psycopg.Connection) -> tuple[str, date] | None:
    """The campaign id and run date of the newest published offers, if any."""
    if not _offers_table_exists(conn):
        return None
    return conn.execute(
        "SELECT campaign_id, run_date FROM crm.inactive_user_offers ORDER BY run_date DESC LIMIT 1"
    ).fetchone()


def _campaign_date(conn: psycopg.Connection, campaign_id: str) -> date | None:
    if not _offers_table_exists(conn):
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


def _arm_counts(
    conn: psycopg.Connection, campaign_id: str, window_start: datetime, window_end: datetime
) -> pd.DataFrame:
    """Per arm: users, users with at least one order in the window, and their revenue; users who redeemed their
    reward in the window, and the rewards paid (the offered reward_size, once per redeeming user). Orders come
    from ``marts.orders``, where staging has removed duplicate and invalid checkouts, so each order counts once;
    redemptions from ``marts.reward_redemptions``, the definition ``marts.campaign_history`` uses too."""
    campaign = pd.DataFrame(
        conn.execute(
            """SELECT user_id, arm, max(reward_size) FROM crm.inactive_user_offers WHERE campaign_id = %s
               GROUP BY user_id, arm""",
            (campaign_id,),
        ).fetchall(),
        columns=["user_id", "arm", "reward_size"],
    )
    revenue = marts.order_revenue(conn, campaign["user_id"].tolist(), window_start, window_end)
    campaign["revenue"] = campaign["user_id"].map(revenue)
    redeemed = campaign["user_id"].isin(marts.redeemed_users(conn, campaign_id, window_start, window_end))
    campaign["redeemed"] = redeemed
    campaign["paid"] = np.where(redeemed, campaign["reward_size"].astype(float), 0.0)
    counts = campaign.groupby("arm", sort=False).agg(
        users=("user_id", "size"),
        re_engaged_users=("revenue", "count"),
        revenue=("revenue", "sum"),
        redeemed_users=("redeemed", "sum"),
        reward_cost=("paid", "sum"),
    )
    return counts.reset_index()[COUNT_COLUMNS].astype(
        {
            "users": "int64",
            "re_engaged_users": "int64",
            "revenue": "float64",
            "redeemed_users": "int64",
            "reward_cost": "float64",
        }
    )


def arm_results(counts: pd.DataFrame, margin_rate: float) -> pd.DataFrame:
    """Per-arm rates, economics and comparisons from counts (``COUNT_COLUMNS``); ``margin_rate`` is the share of
    an order's value the marketplace keeps."""
    by_arm = counts.set_index("arm")
    unknown = set(by_arm.index) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s): {sorted(unknown)}")
    rows = []
    for arm in (arm for arm in ARMS if arm in by_arm.index):
        users, re_engaged, revenue = by_arm.loc[arm, ["users", "re_engaged_users", "revenue"]]
        row = {
            "arm": arm,
            "users": int(users),
            "re_engaged_users": int(re_engaged),
            "re_engagement_rate": re_engaged / users,
            "revenue": float(revenue),
            "revenue_per_user": revenue / users,
            **_economics(by_arm, arm, margin_rate),
        }
        for baseline in BASELINES:
            row.update(_comparison_row(baseline, _compare(by_arm, arm, baseline)))
        rows.append(row)
    results = pd.DataFrame(rows)
    seed = _compare(by_arm, PERSONALISED, NON_PERSONALISED)
    results["meets_seed_criterion"] = meets_seed_criterion(seed)
    results["seed_criterion_significant"] = seed_criterion_significant(seed)
    results["personalised_cost_within_non_personalised"] = _cost_within(results)
    results["order_margin_rate"] = float(margin_rate)
    return results


def _economics(by_arm: pd.DataFrame, arm: str, margin_rate: float) -> dict:
    """The arm's realised reward cost and what it bought against the holdout:

    - incremental reactivations = re-engaged users - users x the holdout's re-engagement rate;
    - cost per incremental reactivation = reward cost / incremental reactivations (NaN unless the increment > 0);
    - net incremental margin = margin_rate x (revenue - users x the holdout's revenue per user) - reward cost.

    Without a holdout the increments are NaN (the reward cost is still known)."""
    users = int(by_arm.at[arm, "users"])
    cost = float(by_arm.at[arm, "reward_cost"])
    if HOLDOUT in by_arm.index and by_arm.at[HOLDOUT, "users"] > 0:
        holdout_users = int(by_arm.at[HOLDOUT, "users"])
        # users x re-engaged / holdout users, in this order: exact for the holdout itself (its increment is 0)
        incremental = (
            int(by_arm.at[arm, "re_engaged_users"])
            - users * int(by_arm.at[HOLDOUT, "re_engaged_users"]) / holdout_users
        )
        incremental_revenue = (
            float(by_arm.at[arm, "revenue"]) - users * float(by_arm.at[HOLDOUT, "revenue"]) / holdout_users
        )
    else:
        incremental = incremental_revenue = math.nan
    net = margin_rate * incremental_revenue - cost
    return {
        "redeemed_users": int(by_arm.at[arm, "redeemed_users"]),
        "reward_cost": cost,
        "reward_cost_per_user": cost / users,
        "incremental_reactivations": incremental,
        "cost_per_incremental_reactivation": cost / incremental if incremental > 0 else math.nan,
        "net_incremental_margin": net,
        "net_incremental_margin_per_user": net / users,
    }


def _cost_within(results: pd.DataFrame) -> bool | None:
    """Did personalised pay no more reward per user than non-personalised? None without both arms."""
    per_user = results.set_index("arm")["reward_cost_per_user"]
    if PERSONALISED not in per_user.index or NON_PERSONALISED not in per_user.index:
        return None
    return bool(per_user[PERSONALISED] <= per_user[NON_PERSONALISED] + SPEND_TOLERANCE)


def _compare(by_arm: pd.DataFrame, arm: str, baseline: str) -> Comparison:
    if arm == baseline or arm not in by_arm.index or baseline not in by_arm.index:
        return compare_proportions(0, 0, 0, 0)
    return compare_proportions(
        int(by_arm.at[arm, "re_engaged_users"]),
        int(by_arm.at[arm, "users"]),
        int(by_arm.at[baseline, "re_engaged_users"]),
        int(by_arm.at[baseline, "users"]),
    )


def _comparison_row(baseline: str, comparison: Comparison) -> dict:
    values = (
        comparison.absolute_lift,
        comparison.absolute_ci.low,
        comparison.absolute_ci.high,
        comparison.relative_lift,
        comparison.relative_ci.low,
        comparison.relative_ci.high,
        comparison.p_value,
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
        ddl.ensure(conn, "crm")
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

    from ml.pipeline import tracking

    tracking.configure(settings, url)
    first = results.iloc[0]
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(settings, MLFLOW_EXPERIMENT), run_name=f"readout-{first['campaign_id']}"
    ) as run:
        mlflow.log_params(
            {
                "campaign_id": first["campaign_id"],
                "campaign_date": str(first["campaign_date"]),
                "window_days": int(first["window_days"]),
                "seed_relative_lift": SEED_RELATIVE_LIFT,
                "order_margin_rate": float(first["order_margin_rate"]),
            }
        )
        mlflow.log_metrics(mlflow_metrics(results))
        mlflow.set_tags(
            {
                "meets_seed_criterion": str(_plain(first["meets_seed_criterion"])),
                "seed_criterion_significant": str(_plain(first["seed_criterion_significant"])),
                "personalised_cost_within_non_personalised": str(
                    _plain(first["personalised_cost_within_non_personalised"])
                ),
            }
        )
        mlflow.log_text(results.to_csv(index=False), "readout.csv")
    return run.info.run_id


def mlflow_metrics(results: pd.DataFrame) -> dict[str, float]:
    """``<arm>.<column>`` for every finite number in the readout."""
    numeric = [
        "users",
        "re_engaged_users",
        "re_engagement_rate",
        "revenue_per_user",
        *ECONOMICS_COLUMNS,
        *(column for baseline in BASELINES for column in _comparison_columns(baseline)),
    ]
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
    url = postgres.start(settings)
    with psycopg.connect(url) as conn:
        results = readout(conn, campaign_id, settings.reactivation_window_days, settings.order_margin_rate)
        if results.empty:
            return {"campaign_id": campaign_id, "status": "no published offers for this campaign"}
        write_results(conn, results)
    summary = summarise(results)
    summary["mlflow_run_id"] = log_to_mlflow(results, settings, url)
    return summary


def summarise(results: pd.DataFrame) -> dict:
    """A JSON-able digest of a readout that says whether the 15% criterion is met, and at what spend."""
    first = results.iloc[0]
    window_end = first["window_end"]
    arms = {
        row.arm: {
            "users": int(row.users),
            "re_engaged_users": int(row.re_engaged_users),
            "re_engagement_rate": _rounded(row.re_engagement_rate),
            "revenue_per_user": _rounded(row.revenue_per_user),
            "redeemed_users": int(row.redeemed_users),
            **{column: _rounded(getattr(row, column)) for column in ECONOMICS_COLUMNS[1:]},
        }
        for row in results.itertuples(index=False)
    }
    by_arm = results.set_index("arm")
    return {
        "campaign_id": str(first["campaign_id"]),
        "campaign_date": str(first["campaign_date"]),
        "window_end": window_end.isoformat(),
        "window_complete": datetime.now(UTC) >= window_end,
        "status": "read out",
        "arms": arms,
        "personalised_vs_non_personalised": _lift_summary(by_arm, NON_PERSONALISED),
        "personalised_vs_holdout": _lift_summary(by_arm, HOLDOUT),
        "meets_seed_criterion": _plain(first["meets_seed_criterion"]),
        "seed_criterion_significant": _plain(first["seed_criterion_significant"]),
        "personalised_cost_within_non_personalised": _plain(first["personalised_cost_within_non_personalised"]),
        "order_margin_rate": float(first["order_margin_rate"]),
        "verdict": verdict(results),
    }


def _lift_summary(by_arm: pd.DataFrame, baseline: str) -> dict | None:
    if PERSONALISED not in by_arm.index:
        return None
    row = by_arm.loc[PERSONALISED]
    return {
        "absolute_lift": _rounded(row[f"abs_lift_vs_{baseline}"]),
        "absolute_ci": [
            _rounded(row[f"abs_lift_vs_{baseline}_ci_low"]),
            _rounded(row[f"abs_lift_vs_{baseline}_ci_high"]),
        ],
        "relative_lift": _rounded(row[f"rel_lift_vs_{baseline}"]),
        "relative_ci": [
            _rounded(row[f"rel_lift_vs_{baseline}_ci_low"]),
            _rounded(row[f"rel_lift_vs_{baseline}_ci_high"]),
        ],
        "p_value": _rounded(row[f"p_value_vs_{baseline}"]),
    }


def _rounded(value, digits: int = 4) -> float | None:
    value = _plain(value)
    return None if value is None else round(float(value), digits)


def verdict(results: pd.DataFrame) -> str:
    """One sentence on the seed criterion, and on whether the arms spent alike (the seed's test is at equal spend),
    for people who will not read the table."""
    by_arm = results.set_index("arm")
    if PERSONALISED not in by_arm.index or NON_PERSONALISED not in by_arm.index:
        return "cannot judge the 15% criterion: the campaign lacks a personalised or non-personalised arm"
    return f"{_lift_verdict(by_arm)}; {_spend_verdict(by_arm)}"


def _spend_verdict(by_arm: pd.DataFrame) -> str:
    personalised, non_personalised = (
        by_arm.at[arm, "reward_cost_per_user"] for arm in (PERSONALISED, NON_PERSONALISED)
    )
    spend = (
        f"rewards paid {personalised:.2f} QAR per user in the personalised arm against {non_personalised:.2f} "
        "in the non-personalised one"
    )
    if _plain(by_arm.at[PERSONALISED, "personalised_cost_within_non_personalised"]) is True:
        return f"{spend}: personalised spent no more, as the seed's equal-spend test requires"
    return f"{spend}: personalised spent more, so this is not the seed's equal-spend test"


def _lift_verdict(by_arm: pd.DataFrame) -> str:
    row = by_arm.loc[PERSONALISED]
    lift, low, high = (
        _plain(row[column])
        for column in (
            "rel_lift_vs_non_personalised",
            "rel_lift_vs_non_personalised_ci_low",
            "rel_lift_vs_non_personalised_ci_high",
        )
    )
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


def campaign_truth_path(settings: Settings, campaign_id: str) -> Path:
    """Where ``rekindle simulate`` writes a campaign's true re-engagement per arm (synthetic worlds only)."""
    return settings.input_dir / TRUTH_FOLDER / f"campaign_truth_{campaign_id}.json"


def load_campaign_truth(settings: Settings, campaign_id: str) -> dict | None:
    path = campaign_truth_path(settings, campaign_id)
    return json.loads(path.read_text()) if path.is_file() else None
