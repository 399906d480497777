"""``rekindle simulate | readout``: play a published campaign out in the synthetic world, then measure it."""

from __future__ import annotations

import argparse
from datetime import timedelta

import psycopg

from ml.cli.options import fail, iso_date, non_negative_int, positive_int, today
from ml.settings import Settings


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=positive_int, default=None, help="days to simulate (default: the reactivation window)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=None, help="simulation seed (default: REKINDLE_SEED)")


def cmd_simulate(args: argparse.Namespace) -> int:
    """``rekindle simulate``: play out the latest campaign and print the truth to compare the readout with."""
    from ml.synthetic.campaign_replay import simulate_campaign

    settings = Settings.from_env()
    days = args.days or settings.reactivation_window_days
    seed = settings.seed if args.seed is None else args.seed
    try:
        result = simulate_campaign(settings, days, seed)
    except psycopg.errors.UndefinedTable:
        return fail("rekindle simulate", "nothing published to crm yet: run `rekindle run` first")
    except (LookupError, FileNotFoundError, ValueError) as exc:
        return fail("rekindle simulate", str(exc))
    print(
        f"simulated {', '.join(result['campaign_ids'])} for {days} days from {result['start']} (seed {seed}): "
        f"{result['events']:,} events, {result['orders']:,} orders, {result['exposures']:,} exposures"
    )
    for table, path in result["files"].items():
        print(f"  {table:<19} -> {path}")
    print(f"{'arm':<18}{'users':>8}{'true re-engagement':>20}")
    for arm, rate in result["true_re_engagement"].items():
        print(f"{arm:<18}{result['users_per_arm'][arm]:>8,}{rate:>20.2%}")
    lift = result["true_relative_lift_vs_non_personalised"]
    if lift is not None:
        print(f"true relative lift, personalised vs non-personalised: {lift:+.1%} (the seed's bar is +15%)")
    print("the next daily run ingests these files; `rekindle readout` measures the campaign once its window is over")
    return 0


def add_readout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date",
        type=iso_date,
        default=None,
        help="campaign run date YYYY-MM-DD (default: the campaign whose window closed today, UTC)",
    )
    parser.add_argument(
        "--serving",
        action="store_true",
        help="the serving A/B test instead: click-through and order conversion per variant vs champion",
    )
    parser.add_argument(
        "--since", type=iso_date, default=None, help="with --serving: events from this date on (default: all)"
    )


def cmd_readout(args: argparse.Namespace) -> int:
    """``rekindle readout``: print the readout, with the simulated truth beside it when there is one."""
    from ml.experiments.readout import campaign_date_due, latest_campaign, load_campaign_truth, run_readout
    from ml.warehouse import postgres

    settings = Settings.from_env()
    if args.serving:
        return _serving_readout(settings, args.since)
    campaign_date = args.date or campaign_date_due(today(), settings.reactivation_window_days)
    summary = run_readout(settings, campaign_date)
    print(f"{summary['campaign_id']}: {summary['status']}")
    if "arms" not in summary:
        with psycopg.connect(postgres.start(settings)) as conn:
            latest = latest_campaign(conn)
        if latest is not None:
            campaign_id, run_date = latest
            closes = run_date + timedelta(days=settings.reactivation_window_days)
            window = f"an interim readout until {closes}" if closes > today() else f"its window closed on {closes}"
            print(
                f"the latest published campaign is {campaign_id}: rekindle readout --date {run_date} reads it out ({window})"
            )
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
    print(
        f"{'arm':<18}{'redeemed':>10}{'reward cost':>13}{'cost/user':>11}{'cost/incr. react.':>19}"
        f"{'net incr. margin':>18}{'net/user':>10}"
    )
    for arm, numbers in summary["arms"].items():
        print(
            f"{arm:<18}{numbers['redeemed_users']:>10,}{_money(numbers['reward_cost'], 13)}"
            f"{_money(numbers['reward_cost_per_user'], 11)}{_money(numbers['cost_per_incremental_reactivation'], 19)}"
            f"{_money(numbers['net_incremental_margin'], 18)}{_money(numbers['net_incremental_margin_per_user'], 10)}"
        )
    print(
        f"QAR; reward cost = rewards redeemed in the window; increments against the holdout; "
        f"margin = {summary['order_margin_rate']:.0%} of order value"
    )
    if not summary["window_complete"]:
        print(f"interim readout: the window closes at {summary['window_end']}")
    print(summary["verdict"])
    return 0


def _serving_readout(settings: Settings, since) -> int:
    from datetime import UTC, datetime

    from ml.serving.readout import format_readout, serving_counts, serving_readout
    from ml.warehouse import postgres

    start = datetime(since.year, since.month, since.day, tzinfo=UTC) if since else datetime.min.replace(tzinfo=UTC)
    with psycopg.connect(postgres.start(settings)) as conn:
        counts = serving_counts(conn, start)
    if counts.empty:
        print("no impressions with a variant yet: the app sends them as `impression` events (docs/api.md)")
        return 1
    print(format_readout(serving_readout(counts)))
    return 0


def _money(value: float | None, width: int) -> str:
    """QAR with two decimals, right-aligned; "-" when undefined (e.g. no incremental reactivation)."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.2f}"


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser(
        "simulate", help="play the latest published campaign out in the synthetic world (into the drop folder)"
    )
    add_simulate_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    read = sub.add_parser("readout", help="measure a win-back campaign: arms vs holdout and vs non-personalised")
    add_readout_arguments(read)
    read.set_defaults(func=cmd_readout)
