"""Closed-loop win-back campaigns on synthetic worlds: personalised offers against a blanket offer at equal spend.

Per world seed, in its own home under ``.rekindle/benchmarks``: generate the window before ``--end-date``,
run the daily DAG for that date (it publishes campaign ``winback-<date>``), play the campaign out in the
world for the reactivation window, run the DAG for the day the window closes (it ingests the outcomes),
and read the campaign out. Printed per seed and arm: users, the true re-engagement (the world's own
probabilities for what each user was sent) beside the measured one, the true expected and the realised
reward cost per user; then personalised / non-personalised, true and measured, and the ceiling: what
an oracle that knows every user's true response could reach at the same spend (the most any policy can
get out of this world with these offers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from ml.cli.options import comma_separated, iso_date, non_negative_int, positive_int
from ml.experiments.assignment import HOLDOUT, NON_PERSONALISED, PERSONALISED
from ml.offers.arms import NO_OFFER, arm_label
from ml.offers.policy import BudgetLimits, allocate_offers, expected_cost, expected_gain
from ml.settings import PROJECT_ROOT, Settings

ARMS = (PERSONALISED, NON_PERSONALISED, HOLDOUT)
DEFAULT_END_DATE = dt.date(2026, 9, 1)
# "Equal spend" up to rounding: the budget is met to the last offer, not to the cent.
COST_TOLERANCE = 0.01


@dataclass
class ArmResult:
    users: int
    true_re_engagement: float
    measured_re_engagement: float
    true_cost_per_user: float
    realised_cost_per_user: float


@dataclass
class SeedResult:
    seed: int
    arms: dict[str, ArmResult]
    measured_lift: float | None
    measured_ci: tuple[float | None, float | None]
    oracle_ratio: float
    verdict: str

    @property
    def true_ratio(self) -> float:
        return self.arms[PERSONALISED].true_re_engagement / self.arms[NON_PERSONALISED].true_re_engagement

    @property
    def measured_ratio(self) -> float:
        return self.arms[PERSONALISED].measured_re_engagement / self.arms[NON_PERSONALISED].measured_re_engagement

    @property
    def true_cost_ratio(self) -> float:
        return self.arms[PERSONALISED].true_cost_per_user / self.arms[NON_PERSONALISED].true_cost_per_user


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seeds",
        type=comma_separated(non_negative_int),
        default=[1, 2, 3, 4, 5],
        help="comma-separated world seeds (default 1,2,3,4,5)",
    )
    parser.add_argument("--scale", choices=["demo", "full"], default="demo")
    parser.add_argument("--users", type=positive_int, default=None, help="users per world (default: the scale's)")
    parser.add_argument("--merchants", type=positive_int, default=None, help="merchants (default: the scale's)")
    parser.add_argument("--end-date", type=iso_date, default=DEFAULT_END_DATE, help="campaign date (YYYY-MM-DD)")
    parser.add_argument("--home", type=Path, default=None, help="folder for the worlds (default: .rekindle/benchmarks)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    root = (args.home or Settings.from_env().home / "benchmarks").resolve()
    results = []
    for seed in args.seeds:
        print(f"world seed {seed}:", flush=True)
        try:
            results.append(run_world(root / f"campaign-{args.scale}-{seed}", seed, args))
        except RuntimeError as exc:
            print(f"error: world seed {seed}: {exc}", file=sys.stderr)
            return 1
        print(format_seed(results[-1]) + "\n", flush=True)
    print(format_summary(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return 0


def run_world(home: Path, seed: int, args: argparse.Namespace) -> SeedResult:
    from ml.synthetic.marketplace import generate_marketplace

    settings = Settings.from_env(home=home, seed=seed, scale=args.scale, warehouse_url="")
    _stop_and_clear(settings)
    end = args.end_date
    generate_marketplace(
        scale=args.scale, seed=seed, days=settings.days, end_date=end, n_users=args.users, n_merchants=args.merchants
    ).write(settings.input_dir)
    window = settings.reactivation_window_days
    _cli(settings, "run", "--date", end.isoformat())
    _cli(settings, "simulate", "--days", str(window), "--seed", str(seed))
    _cli(settings, "run", "--date", (end + dt.timedelta(days=window)).isoformat())
    try:
        return _score(settings, seed, end)
    finally:
        from ml.warehouse import postgres

        postgres.stop(settings)


def _cli(settings: Settings, *command: str) -> None:
    """One ``rekindle`` command in its own process, as a user would run it, against this world's home."""
    # Airflow's variables point at this process's home: each world derives its own from REKINDLE_HOME.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "REKINDLE_WAREHOUSE_URL"}
    env.update(REKINDLE_HOME=str(settings.home), REKINDLE_SEED=str(settings.seed))
    print(f"  rekindle {' '.join(command)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "ml.cli", *command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"`rekindle {' '.join(command)}` exited {done.returncode}: {done.stderr.strip()[-500:]}")


def _stop_and_clear(settings: Settings) -> None:
    from ml.warehouse import postgres

    if settings.home.exists():
        postgres.stop(settings)
        shutil.rmtree(settings.home)


def _score(settings: Settings, seed: int, campaign_date: dt.date) -> SeedResult:
    from ml.experiments.readout import run_readout
    from ml.synthetic.campaign_replay import simulation_offers, true_response_probability
    from ml.synthetic.marketplace import Marketplace
    from ml.warehouse import postgres

    summary = run_readout(settings, campaign_date)
    if "arms" not in summary:
        raise RuntimeError(f"no readout for {campaign_date}: {summary.get('status')}")
    with psycopg.connect(postgres.start(settings)) as conn:
        offers = _offers(conn, campaign_date)
    marketplace = Marketplace.read(settings.input_dir)
    sent = simulation_offers(offers)
    p_true = true_response_probability(marketplace, sent, campaign_date).to_numpy()
    true_cost = p_true * sent["reward_size"].to_numpy()
    arms = {}
    for arm in ARMS:
        members = (offers["arm"] == arm).to_numpy()
        measured = summary["arms"].get(arm, {})
        arms[arm] = ArmResult(
            users=int(members.sum()),
            true_re_engagement=float(p_true[members].mean()),
            measured_re_engagement=float(measured.get("re_engagement_rate") or np.nan),
            true_cost_per_user=float(true_cost[members].mean()),
            realised_cost_per_user=float(measured.get("reward_cost_per_user") or 0.0),
        )
    lift = summary.get("personalised_vs_non_personalised") or {}
    personalised = offers.loc[offers["arm"] == PERSONALISED, "user_id"]
    return SeedResult(
        seed=seed,
        arms=arms,
        measured_lift=lift.get("relative_lift"),
        measured_ci=tuple(lift.get("relative_ci") or (None, None)),
        oracle_ratio=oracle_ratio(marketplace.offer_truth, personalised, settings),
        verdict=summary["verdict"],
    )


def _offers(conn: psycopg.Connection, run_date: dt.date) -> pd.DataFrame:
    rows = conn.execute(
        """SELECT run_date, campaign_id, user_id, arm, event_type, reward_size FROM crm.inactive_user_offers
           WHERE run_date = %s ORDER BY user_id""",
        (run_date,),
    ).fetchall()
    offers = pd.DataFrame(rows, columns=["run_date", "campaign_id", "user_id", "arm", "event_type", "reward_size"])
    return offers.astype({"user_id": "int64", "reward_size": "float64"})


def oracle_ratio(offer_truth: pd.DataFrame, user_ids: pd.Series, settings: Settings) -> float:
    """True re-engagement of the best allocation of the world's offers to ``user_ids`` at the blanket offer's
    true expected cost, over the blanket offer's: the ceiling of personalised / non-personalised at equal spend
    (the oracle knows each user's true response to every offer; nothing learnt from data can do better)."""
    truth = offer_truth[offer_truth["user_id"].isin(set(user_ids))]
    arms = [arm_label(e, r) for e, r in zip(truth["event_type"], truth["reward_size"], strict=True)]
    p = truth.assign(arm=arms).pivot_table(index="user_id", columns="arm", values="p_reactivate")
    reward = {a: float(r) for a, r in zip(arms, truth["reward_size"], strict=True) if a != NO_OFFER}
    default = arm_label(settings.default_offer_event_type, settings.default_offer_reward)
    gain = expected_gain("reengagement", p, None, reward, NO_OFFER, settings.order_margin_rate)
    cost = expected_cost(p, reward, NO_OFFER)
    chosen = allocate_offers(
        gain, cost, np.zeros(len(p)), BudgetLimits(total_budget=float(cost[default].sum())), NO_OFFER
    )
    picked = p.to_numpy()[np.arange(len(p)), p.columns.get_indexer(chosen["arm"])]
    return float(picked.mean() / p[default].mean())


def format_seed(result: SeedResult) -> str:
    header = f"{'arm':<18}{'users':>7}{'true rate':>11}{'measured':>10}{'true cost/user':>16}{'realised cost/user':>20}"
    lines = [header]
    for arm, r in result.arms.items():
        lines.append(
            f"{arm:<18}{r.users:>7,}{r.true_re_engagement:>11.2%}{r.measured_re_engagement:>10.2%}"
            f"{r.true_cost_per_user:>16.2f}{r.realised_cost_per_user:>20.2f}"
        )
    low, high = result.measured_ci
    ci = f" (95% CI {low:+.1%} to {high:+.1%})" if low is not None and high is not None else ""
    lines += [
        f"personalised / non-personalised: true {result.true_ratio:.3f}x at {result.true_cost_ratio:.2f}x the "
        f"cost; measured {result.measured_ratio:.3f}x{ci}; ceiling at equal spend {result.oracle_ratio:.3f}x",
        result.verdict,
    ]
    return "\n".join(lines)


def format_summary(results: list[SeedResult]) -> str:
    lines = [
        "personalised vs non-personalised re-engagement per world seed (equal expected spend by design)",
        f"{'seed':>6}{'true ratio':>12}{'measured ratio':>16}{'same sign':>11}{'true cost ratio':>17}{'ceiling':>9}",
    ]
    for r in results:
        same_sign = np.sign(r.true_ratio - 1) == np.sign(r.measured_ratio - 1)
        lines.append(
            f"{r.seed:>6}{r.true_ratio:>12.3f}{r.measured_ratio:>16.3f}{'yes' if same_sign else 'no':>11}"
            f"{r.true_cost_ratio:>17.2f}{r.oracle_ratio:>9.3f}"
        )
    if results:
        true = [r.true_ratio for r in results]
        lines.append(
            f"{'mean':>6}{np.mean(true):>12.3f}{np.mean([r.measured_ratio for r in results]):>16.3f}{'':>11}"
            f"{np.mean([r.true_cost_ratio for r in results]):>17.2f}{np.mean([r.oracle_ratio for r in results]):>9.3f}"
        )
        met = (
            np.mean(true) >= 1.15
            and min(true) >= 1.05
            and all(r.true_cost_ratio <= 1.0 + COST_TOLERANCE for r in results)
        )
        lines.append(
            "target: mean true ratio >= 1.15 and every seed >= 1.05 at equal or lower cost: "
            + ("met" if met else "not met")
        )
    return "\n".join(lines)
