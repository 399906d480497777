"""Synthetic marketplace benchmark of the pipeline's model: the ranker beside each of its generators, popularity
and random, on the pipeline's own temporal split (the last ``--test-days`` days), in discovery and
repeat-inclusive mode; then every user scored by the ranker. Prints wall time per stage and peak memory.

``--ablation`` instead fits the ranker four ways on the same split (all features, without the context features,
without the repeat features, without both: ``ml.recommend.ranker.FEATURE_GROUPS``) and prints each beside the
best single generator, in both modes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ml.cli.options import comma_separated, iso_date, non_negative_int, positive_int, unit_float
from ml.recommend.evaluation import Judge, TemporalSplit
from ml.recommend.lifecycle import LifecycleRule
from ml.recommend.merchant import MarketContext, ModelSpec, RankerRecipe, comparison_specs, ranker_spec
from ml.recommend.modes import MODES
from ml.settings import Settings
from ml.synthetic.marketplace import SCALES, Marketplace, generate_marketplace

# The seed's quality targets (metric -> minimum), checked for the ranker in both modes.
TARGETS = {
    "precision@5": 0.15,
    "recall@10": 0.25,
    "hit_rate@5": 0.40,
    "ndcg@10": 0.30,
    "coverage": 0.50,
    "diversity": 0.60,
}
COLUMNS = [
    ("P@5", "precision@5"),
    ("R@10", "recall@10"),
    ("HR@5", "hit_rate@5"),
    ("NDCG@10", "ndcg@10"),
    ("MAP@10", "map@10"),
    ("coverage", "coverage"),
    ("diversity", "diversity"),
    ("novelty", "novelty"),
]
ABLATION_COLUMNS = [("NDCG@10", "ndcg@10"), ("P@5", "precision@5"), ("HR@5", "hit_rate@5"), ("coverage", "coverage")]
# variant name -> the ranker's feature groups left out
ABLATION_VARIANTS = {
    "ranker, all features": (),
    "ranker without context": ("context",),
    "ranker without repeat": ("repeat",),
    "ranker without context and repeat": ("context", "repeat"),
}
DEFAULT_END_DATE = dt.date(2026, 11, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument(
        "--data", type=Path, help="read a marketplace written by `rekindle generate` instead of generating"
    )
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument("--days", type=positive_int, default=30)
    parser.add_argument("--end-date", type=iso_date, default=DEFAULT_END_DATE)
    parser.add_argument(
        "--test-days", type=positive_int, default=7, help="the held-out window (the pipeline's eval_test_days)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="threads for ALS and LightGBM (at most the cores)"
    )
    parser.add_argument(
        "--mmr-lambdas",
        type=comma_separated(unit_float),
        default=[1.0, 0.9, 0.7, 0.5, 0.3],
        help="MMR lambdas for the accuracy/diversity trade-off table (comma-separated)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="only the feature ablation: the ranker with and without its context and repeat features, both modes",
    )


class StageClock:
    """Wall seconds per named stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def orders_of(marketplace: Marketplace) -> pd.DataFrame:
    events = marketplace.events
    orders = events[(events["event_type"] == "checkout_completed") & events["merchant_id"].notna()]
    orders = orders[["user_id", "merchant_id", "event_time", "order_total"]].copy()
    orders["event_time"] = pd.to_datetime(orders["event_time"], utc=True)
    orders["merchant_id"] = orders["merchant_id"].astype("int64")
    return orders


def format_table(reports: dict[str, dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    width = max(len(name) for name in reports)
    header = f"{'model':<{width}}  " + "  ".join(f"{title:>9}" for title, _ in columns)
    lines = [header, "-" * len(header)]
    for name, report in reports.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{report[key]:>9.4f}" for _, key in columns))
    return "\n".join(lines)


def best_generator(reports: dict[str, dict], ranker: ModelSpec) -> str:
    """The generator of ``ranker`` whose report has the highest NDCG@10."""
    return max(RankerRecipe(**ranker.params).generator_specs(), key=lambda name: reports[name]["ndcg@10"])


def ablation_specs(ranker: ModelSpec) -> dict[str, ModelSpec]:
    """The ranker's recipe once per ABLATION_VARIANTS entry, leaving out that entry's feature groups."""
    return {
        name: ModelSpec("ranker", {**ranker.params, "without_features": groups})
        for name, groups in ABLATION_VARIANTS.items()
    }


def target_lines(report: dict) -> list[str]:
    return [
        f"  {metric} {report[metric]:.4f} > {minimum:.2f}: {'met' if report[metric] > minimum else 'NOT met'}"
        for metric, minimum in TARGETS.items()
    ]


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run(args: argparse.Namespace) -> int:
    return (run_ablation if args.ablation else run_comparison)(args)


def _prepare(args: argparse.Namespace, clock: StageClock) -> tuple[Settings, MarketContext, TemporalSplit, Judge]:
    """The world (generated or read), the pipeline's temporal split and the judge of both modes."""
    with clock.stage("generate" if args.data is None else "read"):
        marketplace = (
            Marketplace.read(args.data)
            if args.data is not None
            else generate_marketplace(args.scale, seed=args.seed, days=args.days, end_date=args.end_date)
        )
    orders = orders_of(marketplace)
    context = MarketContext.from_marketplace(marketplace)
    as_of = pd.Timestamp(args.end_date, tz="UTC")
    split = TemporalSplit.last_days(orders, as_of, args.test_days)
    # The pipeline's recipe and lifecycle thresholds (the settings' defaults), with this run's seed and threads.
    settings = Settings(seed=args.seed, model_threads=args.threads)
    segments = LifecycleRule.from_settings(settings).segments(split.train, context.users["signup_at"], split.cut)
    judge = Judge(split, len(context.merchants), context.merchants["category"].to_dict(), segments)
    print(
        f"{len(context.users):,} users, {len(context.merchants):,} merchants, {len(orders):,} orders; cut {split.cut:%Y-%m-%d}, "
        f"train {len(split.train):,} orders; test users: {len(split.relevant):,} discovery, "
        f"{len(split.relevant_with_repeats):,} repeat-inclusive"
    )
    return settings, context, split, judge


def run_ablation(args: argparse.Namespace) -> int:
    clock = StageClock()
    settings, context, split, judge = _prepare(args, clock)
    ranker = ranker_spec(settings)
    specs = {**ablation_specs(ranker), **RankerRecipe(**ranker.params).generator_specs()}
    cards = {}
    for name, spec in specs.items():
        with clock.stage(f"fit and evaluate {name}"):
            cards[name] = judge.scorecard(spec.recommender().fit(split.train, split.cut, context))
    for mode in MODES:
        reports = {name: card[mode].overall for name, card in cards.items()}
        best = best_generator(reports, ranker)
        shown = {name: reports[name] for name in ABLATION_VARIANTS} | {f"best generator ({best})": reports[best]}
        print(f"\nablation, {mode} mode")
        print(format_table(shown, ABLATION_COLUMNS))
    print("\nstage                                            seconds")
    for stage, seconds in clock.seconds.items():
        print(f"{stage:<48} {seconds:>7.1f}")
    return 0


def run_comparison(args: argparse.Namespace) -> int:
    clock = StageClock()
    settings, context, split, judge = _prepare(args, clock)
    specs = comparison_specs(ranker_spec(settings))
    cards, fitted = {}, {}
    for name, spec in specs.items():
        with clock.stage(f"fit {name}"):
            fitted[name] = spec.recommender().fit(split.train, split.cut, context)
        with clock.stage("evaluate (both modes)"):
            cards[name] = judge.scorecard(fitted[name])
    everyone = context.users.index
    with clock.stage(f"ranker: score every user ({len(everyone):,}, with reasons)"):
        recommendations = fitted["ranker"].recommend(everyone, n=10)

    for mode in MODES:
        reports = {name: card[mode].overall for name, card in cards.items()}
        print(f"\n{mode} ({'merchants already ordered from excluded' if MODES[mode] else 'repeat orders count'})")
        print(format_table(reports))
        best = best_generator(reports, specs["ranker"])
        print(
            f"ranker NDCG@10 / best generator ({best}) = {reports['ranker']['ndcg@10'] / reports[best]['ndcg@10']:.3f}"
        )
        print("seed targets (ranker):")
        print("\n".join(target_lines(reports["ranker"])))
        by_segment = cards["ranker"][mode].by_segment
        print(
            "ranker NDCG@10 by lifecycle segment at the cut: "
            + ", ".join(
                f"{segment} {report['ndcg@10']:.3f} ({int(report['users'])})" for segment, report in by_segment.items()
            )
        )

    print("\naccuracy / diversity trade-off of the ranker's MMR re-ranking (discovery; 1.0 = no re-ranking)")
    print(f"{'lambda':>6} {'NDCG@10':>8} {'P@5':>7} {'coverage':>9} {'diversity':>9}")
    trained_lambda = fitted["ranker"].ranker.diversity_lambda
    for lam in args.mmr_lambdas:
        # MMR only re-orders the fitted ranker's lists, so one fit serves every lambda.
        fitted["ranker"].ranker.diversity_lambda = lam
        report = judge.scorecard(fitted["ranker"])["discovery"].overall
        print(
            f"{lam:>6.2f} {report['ndcg@10']:>8.4f} {report['precision@5']:>7.4f} {report['coverage']:>9.4f} {report['diversity']:>9.4f}"
        )
    fitted["ranker"].ranker.diversity_lambda = trained_lambda

    print(
        "\ntop ranker features (gain share): "
        + ", ".join(
            f"{name} {share:.2f}"
            for name, share in (lambda g: (g / g.sum()).head(6))(fitted["ranker"].feature_importance()).items()
        )
    )
    users_listed = recommendations["user_id"].nunique()
    print(
        f"scored {users_listed:,} users, {len(recommendations):,} rows, reasons filled: "
        f"{recommendations['reason'].notna().mean():.1%}"
    )
    print("\nstage                                            seconds")
    for stage, seconds in clock.seconds.items():
        print(f"{stage:<48} {seconds:>7.1f}")
    fit_and_score = sum(seconds for stage, seconds in clock.seconds.items() if stage not in {"generate", "read"})
    print(f"{'total after data (fit, evaluate, score)':<48} {fit_and_score:>7.1f}")
    print(f"peak memory (max RSS): {peak_memory_mb():,.0f} MB")
    return 0
