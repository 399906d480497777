"""The daily pipeline's steps: one function per Airflow task, each runnable and testable without Airflow.

Every step returns a small JSON-able summary and records it, with its duration, in ``ops.pipeline_steps``
so ``rekindle run`` (and anyone with psql) can see what the day did.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import pandas as pd
import psycopg

from ml.crm import export, publish, segments
from ml.crm.offers import replace_offers
from ml.experiments.assignment import campaign_id_for
from ml.offers import decide, response
from ml.offers.truth import truth_values
from ml.pipeline import tracking
from ml.privacy import consent, retention, roles, tombstones
from ml.recommend.evaluation import Judge, TemporalSplit
from ml.recommend.lifecycle import INACTIVE_SEGMENTS, LIFECYCLE_SEGMENTS, LifecycleRule
from ml.recommend.merchant import (
    MarketContext,
    ModelSpec,
    RankerRecipe,
    comparison_specs,
    ranker_spec,
)
from ml.recommend.modes import MODES
from ml.runtime import PROGRESS_LOGGER
from ml.settings import Settings, redact
from ml.warehouse import ddl, ingest, marts, postgres, quality

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

# Per mode; the gate compares the mean over the modes (``gate_value``), so a ranker must not trade one for the other.
GATE_METRIC = "ndcg@10"


def as_of(run_date: date) -> datetime:
    """A run for date D sees everything before D 00:00 UTC."""
    return datetime.combine(run_date, dtime.min, tzinfo=UTC)


class WarehouseUnavailableError(RuntimeError):
    """The warehouse went away while a step ran (server stopped, connection lost)."""


@contextmanager
def recorded_step(url: str, run_date: date, step: str) -> Iterator[dict]:
    summary: dict = {}
    _return_freed_heap()
    started = time.perf_counter()
    try:
        with PeakMemory() as memory:
            yield summary
    except psycopg.OperationalError as error:
        raise WarehouseUnavailableError(
            f"{step} for {run_date} lost the warehouse ({redact(url)}): {str(error).strip()}. Every step is "
            "idempotent: run it again once the warehouse is back (Airflow retries it on its own)."
        ) from error
    seconds = time.perf_counter() - started
    summary["peak_rss_mb"] = memory.peak_mb
    with psycopg.connect(url) as conn:
        ddl.ensure(conn, "ops")
        _write_step(conn, run_date, step, seconds, summary)
    log.info("%s finished in %.1fs: %s", step, seconds, summary)


def _write_step(conn: psycopg.Connection, run_date: date, step: str, seconds: float, summary: dict) -> None:
    conn.execute(
        """INSERT INTO ops.pipeline_steps (run_date, step, seconds, summary) VALUES (%s, %s, %s, %s)
           ON CONFLICT (run_date, step) DO UPDATE
           SET seconds = EXCLUDED.seconds, summary = EXCLUDED.summary, finished_at = now()""",
        (run_date, step, seconds, json.dumps(summary, default=str)),
    )


def record_dbt_task(settings: Settings, run_date: date, task_id: str, seconds: float) -> None:
    """A Cosmos task's seconds as a step of its own (``dbt_build.<node>``), so that the dbt build shows beside the
    other steps (the dashboard's pipeline health adds them up). ``prepare_warehouse`` has made ``ops``."""
    with psycopg.connect(postgres.start(settings)) as conn:
        _write_step(conn, run_date, task_id, seconds, {})


def _return_freed_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's ``malloc_trim``; a no-op elsewhere). When the DAG
    runs in one process (``rekindle run``), memory the earlier steps freed otherwise stays resident and adds to
    every later step's peak."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class PeakMemory:
    """The process's peak resident memory while the block runs, sampled a few times a second (the
    kernel's own high-water mark covers the process's whole life, not one step of it)."""

    def __init__(self, interval_seconds: float = 0.2):
        self.interval_seconds = interval_seconds
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self._sample()

    def _sample(self) -> None:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        self.peak_mb = max(self.peak_mb, round(resident_pages * _PAGE_BYTES / 2**20, 1))


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def check_run_date(settings: Settings, run_date: date, today: date) -> None:
    """A run measures recency up to its date and deletes what its retention puts before it, so a run dated after
    today (a mistyped year) would call every user lapsed and delete raw events and publications still in use."""
    if run_date > today:
        raise ValueError(
            f"run date {run_date} is after today ({today}, UTC): its retention would delete raw events before "
            f"{run_date - timedelta(days=settings.raw_retention_days)} and CRM publications before "
            f"{run_date - timedelta(days=settings.crm_retention_days)}"
        )


def prepare_warehouse(settings: Settings, run_date: date) -> dict:
    """The warehouse's schemas and dbt's profile; first, the run date and the settings only the pipeline's vocabulary
    can check."""
    from ml.warehouse.dbt_runner import write_profile

    check_run_date(settings, run_date, datetime.now(UTC).date())
    unknown = [name for name in settings.score_segments if name not in LIFECYCLE_SEGMENTS]
    if unknown:
        raise ValueError(
            f"REKINDLE_SCORE_SEGMENTS names {', '.join(unknown)}: not a lifecycle segment (one of "
            f"{', '.join(LIFECYCLE_SEGMENTS)})"
        )
    url = postgres.start(settings)
    with psycopg.connect(url) as conn:
        ddl.ensure(conn)  # raw, ops and crm
    write_profile(settings, url)
    with recorded_step(url, run_date, "prepare_warehouse") as summary:
        summary["warehouse"] = redact(url)
    return summary


def load_events(settings: Settings, run_date: date) -> dict:
    """Ingest every contract file in the drop folder (loading the same files again changes nothing; erased users'
    rows are dropped), delete what the API inserted for erased users since, and raw events past
    ``raw_retention_days``."""
    url = postgres.start(settings)
    with recorded_step(url, run_date, "load_events") as summary:
        if not settings.input_dir.is_dir():
            log.warning("drop folder %s does not exist: nothing to load today", settings.input_dir)
            results = []
        else:
            results = ingest.ingest_path(url, settings.input_dir, erasure_salt=tombstones.erasure_salt(settings))
        with psycopg.connect(url) as conn:
            erased = tombstones.ErasedUsers.load(conn, tombstones.erasure_salt(settings))
            summary["erased_api_rows"] = tombstones.purge_api_rows(conn, erased)
            summary["expired_raw_events"] = retention.purge_raw_events(conn, run_date, settings.raw_retention_days)
        summary["files"] = len(results)
        summary["tables"] = ingest.summarise(results).to_dict("records")
    return summary


def check_raw_quality(settings: Settings, run_date: date) -> dict:
    url = postgres.start(settings)
    with recorded_step(url, run_date, "check_raw_quality") as summary:
        report = quality.check_raw(settings, url)
        summary.update(expectations=report.evaluated, data_docs=str(report.data_docs))
    return summary


def build_marts(settings: Settings, run_date: date) -> dict:
    """dbt build outside Airflow (the DAG runs the same project through Cosmos, one task per node)."""
    from ml.warehouse.dbt_runner import run_dbt

    url = postgres.start(settings)
    with recorded_step(url, run_date, "build_marts") as summary:
        result = run_dbt(settings, url, ["build"], run_date)
        summary["dbt"] = result.counts
    return summary


def check_mart_quality(settings: Settings, run_date: date) -> dict:
    url = postgres.start(settings)
    with recorded_step(url, run_date, "check_mart_quality") as summary:
        report = quality.check_marts(settings, url)
        with psycopg.connect(url) as conn:
            users_per_segment = marts.users_per_segment(conn)
        summary.update(expectations=report.evaluated, users_per_segment=users_per_segment)
    return summary


CURVE_KS = tuple(range(1, 11))
CURVE_METRICS = ("precision", "recall", "hit_rate", "ndcg")
# Every model's metric@K for K in CURVE_KS, per mode, in each ranker run (the dashboard draws its curves from it).
METRIC_AT_K_ARTIFACT = "metric_at_k.json"
SUMMARY_KS = ("@5", "@10")


def load_market_context(conn: psycopg.Connection) -> MarketContext:
    return MarketContext(merchants=marts.load_merchants(conn), users=marts.load_user_profiles(conn))


def gate_value(scorecard: dict) -> float:
    """What the ranker gate compares: ``GATE_METRIC`` averaged over the modes of one model's scorecard."""
    return sum(scorecard[mode].overall[GATE_METRIC] for mode in MODES) / len(MODES)


def nothing_to_judge_on(orders: pd.DataFrame, run_date: date, test_days: int, cut: datetime) -> str:
    """Why no user ordered both before the judging window and in it: too little history, or none in the window."""
    first, last = orders["event_time"].min(), orders["event_time"].max()
    window = f"the models are judged on the {test_days} days before {run_date} (REKINDLE_EVAL_TEST_DAYS)"
    if first >= cut:
        return (
            f"{window} against the orders before them, and the first order is from {first:%Y-%m-%d}: load earlier "
            f"orders, or lower REKINDLE_EVAL_TEST_DAYS below the {(as_of(run_date) - first).days} days the orders reach back"
        )
    return (
        f"{window}, and no user who ordered before them ordered in them (the latest order is from {last:%Y-%m-%d}): "
        "run a date the data reaches, or raise REKINDLE_EVAL_TEST_DAYS"
    )


def train_ranker(settings: Settings, run_date: date) -> dict:
    """Judge the ranker beside its generators and the baselines on the last ``eval_test_days`` (winback and
    discovery, per lifecycle segment, on at most ``eval_users`` test users), register the judged ranker
    refitted on all orders, run the gate."""
    import mlflow

    url = postgres.start(settings)
    with recorded_step(url, run_date, "train_ranker") as summary:
        with psycopg.connect(url) as conn:
            orders = marts.load_orders(conn)
            context = load_market_context(conn)
        summary["orders"] = len(orders)
        if orders.empty:
            raise ValueError(f"no orders before {run_date}: nothing to train on")
        split = TemporalSplit.last_days(orders, as_of(run_date), settings.eval_test_days).sample(
            settings.eval_users, settings.seed
        )
        if not split.relevant_with_repeats:
            raise ValueError(nothing_to_judge_on(orders, run_date, settings.eval_test_days, split.cut))
        rule = LifecycleRule.from_settings(settings)
        judge = Judge(
            split,
            len(context.merchants),
            context.merchants["category"].to_dict(),
            rule.segments(split.train, context.users["signup_at"], split.cut),
            ks=CURVE_KS,
            workers=settings.worker_threads,
        )
        spec = ranker_spec(settings)
        tracking.configure(settings, url)
        with mlflow.start_run(
            experiment_id=tracking.experiment_id(settings, settings.ranker_model_name), run_name=f"ranker-{run_date}"
        ):
            scorecards = {}
            for name, model_spec in comparison_specs(spec).items():
                started = time.perf_counter()
                model = model_spec.recommender().fit(split.train, split.cut, context)
                scorecards[name] = judge.scorecard(model)
                if name == "ranker":
                    ranker = model  # only the ranker is kept: the others are judged, then let go
                del model
                progress.info(
                    "judged %s on %d test users: %s (%.1fs)",
                    name,
                    len(split.relevant_with_repeats),
                    ", ".join(
                        f"{mode} {GATE_METRIC} {scorecards[name][mode].overall[GATE_METRIC]:.4f}" for mode in MODES
                    ),
                    time.perf_counter() - started,
                )
            challenger_value = gate_value(scorecards["ranker"])
            champion_metric, same_recipe = _champion_metric(settings, split, context, spec, challenger_value)
            importance = {mode: ranker.feature_importance(mode) for mode in MODES}
            summary["boosting_rounds"] = ranker.boosting_rounds()
            _log_comparison(spec, split, scorecards, importance, run_date)
            started = time.perf_counter()
            final = ranker.refit(orders, as_of(run_date), context)
            del ranker
            progress.info(
                "refitted the ranker's candidates on %d orders (%.1fs)", len(orders), time.perf_counter() - started
            )
            version = tracking.log_model_once(
                tracking.RecommenderPyfunc(final),
                settings.ranker_model_name,
                tracking.fit_key((spec, as_of(run_date)), orders, context.merchants, context.users),
            )
            decision = tracking.gate(
                settings.ranker_model_name,
                version,
                f"mean {GATE_METRIC} over {' and '.join(MODES)}",
                challenger_value,
                champion_metric,
                settings.promotion_margin,
                same_recipe,
            )
            mlflow.set_tags({"gate": decision.reason, "promoted": str(decision.promoted)})
        summary.update(
            model=spec.kind,
            gate_value=round(challenger_value, 4),
            metrics={mode: _summary_metrics(scorecards["ranker"][mode].overall) for mode in MODES},
            baselines={
                mode: {
                    name: _summary_metrics(card[mode].overall) for name, card in scorecards.items() if name != "ranker"
                }
                for mode in MODES
            },
            ndcg_at_10_by_segment={
                mode: {
                    segment: {
                        name: round(card[mode].by_segment[segment][GATE_METRIC], 4) for name, card in scorecards.items()
                    }
                    for segment in scorecards["ranker"][mode].by_segment
                }
                for mode in MODES
            },
            feature_importance={
                mode: {
                    name: round(float(share), 4)
                    for name, share in (importance[mode] / importance[mode].sum()).head(10).items()
                }
                for mode in MODES
            },
            version=version,
            champion_version=decision.champion_version,
            promoted=decision.promoted,
            gate=decision.reason,
        )
    return summary


def _summary_metrics(report: dict) -> dict:
    """The @5 / @10 metrics, coverage, diversity, novelty and user count of a K = 1..10 report, rounded."""
    return _rounded({k: v for k, v in report.items() if "@" not in k or k.endswith(SUMMARY_KS)})


def _log_comparison(
    spec: ModelSpec, split: TemporalSplit, scorecards: dict, importance: dict[str, pd.Series], run_date: date
) -> None:
    """Params, every model's metrics in both modes and per segment, and the plots, into the active MLflow run."""
    import mlflow

    recipe = RankerRecipe(**spec.params)
    params = {key: value for key, value in vars(recipe).items() if key != "generators"}
    params.update(
        {f"{kind}.{key}": value for kind, values in recipe.generators.items() for key, value in values.items()}
    )
    mlflow.log_params(
        {
            "model": spec.kind,
            "generators": ",".join(recipe.generators),
            **params,
            "run_date": run_date.isoformat(),
            "cut": split.cut.isoformat(),
            "test_users": len(split.relevant),
        }
    )
    # The ranker's metrics as "<mode>_<metric>", every other model's as "<mode>_<model>_<metric>".
    mlflow.log_metric("gate_" + _metric_key(GATE_METRIC), gate_value(scorecards["ranker"]))
    for name, card in scorecards.items():
        for mode, result in card.items():
            prefix = f"{mode}_" if name == "ranker" else f"{mode}_{name}_"
            mlflow.log_metrics({prefix + _metric_key(k): v for k, v in _summary_metrics(result.overall).items()})
            mlflow.log_metrics(
                {
                    f"{mode}_{name}_{segment}_{_metric_key(GATE_METRIC)}": report[GATE_METRIC]
                    for segment, report in result.by_segment.items()
                }
            )
    for mode in MODES:
        results = {name: card[mode] for name, card in scorecards.items()}
        mlflow.log_figure(_curves_figure(results, mode), f"metric_at_k_{mode}.png")
        mlflow.log_figure(_segments_figure(results, mode), f"ndcg_at_10_by_segment_{mode}.png")
    mlflow.log_dict(
        {
            mode: {
                name: {m: [float(card[mode].overall[f"{m}@{k}"]) for k in CURVE_KS] for m in CURVE_METRICS}
                for name, card in scorecards.items()
            }
            for mode in MODES
        },
        METRIC_AT_K_ARTIFACT,
    )
    mlflow.log_dict(
        {mode: {name: float(gain) for name, gain in gains.items()} for mode, gains in importance.items()},
        "feature_importance.json",
    )


def _curves_figure(results: dict, mode: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.2))
    for axes, metric in zip(figure.subplots(1, len(CURVE_METRICS)), CURVE_METRICS):
        for name, result in results.items():
            axes.plot(CURVE_KS, [result.overall[f"{metric}@{k}"] for k in CURVE_KS], marker=".", label=name)
        axes.set_xlabel("K")
        axes.set_title(f"{metric}@K ({mode})")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _segments_figure(results: dict, mode: str):
    from matplotlib.figure import Figure

    segment_names = list(next(iter(results.values())).by_segment)
    figure = Figure(figsize=(9, 3.5))
    axes = figure.subplots()
    width = 0.8 / max(len(results), 1)
    for offset, (name, result) in enumerate(results.items()):
        values = [result.by_segment[segment][GATE_METRIC] for segment in segment_names]
        axes.bar([i + offset * width for i in range(len(segment_names))], values, width, label=name)
    axes.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(segment_names))],
        [f"{s}\n({int(next(iter(results.values())).by_segment[s]['users'])} users)" for s in segment_names],
    )
    axes.set_ylabel(GATE_METRIC)
    axes.set_title(f"{GATE_METRIC} by lifecycle segment at the cut ({mode})")
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    return figure


def train_offer_model(settings: Settings, run_date: date) -> dict:
    """Learn offer responses from randomised past campaigns; judge the policy on held-out users; gate."""
    import mlflow

    from ml.offers.evaluation import qini_curve, qini_plot

    url = postgres.start(settings)
    with recorded_step(url, run_date, "train_offer_model") as summary:
        with psycopg.connect(url) as conn:
            history = response.sample_users(
                marts.load_history(conn, run_date - timedelta(days=settings.offer_training_days)),
                settings.offer_training_max_exposures,
                settings.seed,
            )
            users = marts.load_inactive_users(conn, INACTIVE_SEGMENTS)
        summary["training_exposures"] = len(history)
        if history.empty or not (history["event_type"] == response.CONTROL).any():
            summary["skipped"] = "no randomised campaign with an observed outcome window and a holdout yet"
            return summary
        train, test = response.split_by_user(history, settings.offer_test_share, settings.seed)
        tracking.configure(settings, url)
        with mlflow.start_run(
            experiment_id=tracking.experiment_id(settings, settings.offer_model_name), run_name=f"offers-{run_date}"
        ):
            model = response.OfferResponseModel(settings.order_margin_rate, seed=settings.seed).fit(
                train, settings.worker_threads
            )
            evaluation = response.evaluate(model, train, test, settings.order_margin_rate)
            # The heterogeneity trust chosen on the training users (most of the history) carries over: a second
            # cross-fit on every user would cost three more fits a day to re-make nearly the same choice.
            final = response.OfferResponseModel(settings.order_margin_rate, seed=settings.seed).fit(
                history, settings.worker_threads, shrinkage=model.shrinkage_
            )
            truth = settings.input_dir / "ground_truth" / "offer_truth.parquet"
            if truth.exists() and not users.empty:
                # On a seeded sample, as the ranker is judged: a mean over thousands of users is precise enough.
                judged = users.sample(n=min(len(users), settings.eval_users), random_state=settings.seed)
                evaluation.extra.update(truth_values(final, judged, truth))
                evaluation.extra.update(truth_users=len(judged), inactive_users=len(users))
            metrics = evaluation.metrics()
            champion_value, same_recipe = _champion_offer_value(settings, model, train, test, metrics["policy_value"])
            mlflow.log_params(
                {
                    "learner": "s_learner_lightgbm",
                    "margin_rate": settings.order_margin_rate,
                    "train_rows": len(train),
                    "test_rows": len(test),
                    "run_date": run_date.isoformat(),
                    "training_days": settings.offer_training_days,
                    "max_training_exposures": settings.offer_training_max_exposures,
                    "heterogeneity_trust": final.shrinkage_,
                }
            )
            mlflow.log_metrics(metrics)
            mlflow.log_metrics({f"uniform_{arm.replace(':', '_')}": v for arm, v in evaluation.uniform_values.items()})
            curve = qini_curve(
                evaluation.predicted_uplift,
                (test["event_type"] != response.CONTROL).to_numpy(),
                test["reactivated"].astype(float).to_numpy(),
            )
            mlflow.log_figure(qini_plot({"s-learner": curve}), "qini.png")
            version = tracking.log_model_once(
                tracking.OfferPyfunc(final),
                settings.offer_model_name,
                tracking.fit_key((final.margin_rate, final.config, final.seed), history),
                signature=None,
            )
            decision = tracking.gate(
                settings.offer_model_name,
                version,
                "policy_value",
                metrics["policy_value"],
                champion_value,
                settings.promotion_margin,
                same_recipe,
            )
            mlflow.set_tags({"gate": decision.reason, "promoted": str(decision.promoted)})
        summary.update(
            metrics=_rounded(metrics),
            best_uniform_arm=evaluation.trained_uniform_arm,
            version=version,
            champion_version=decision.champion_version,
            promoted=decision.promoted,
            gate=decision.reason,
        )
    return summary


def _champion_offer_value(
    settings: Settings,
    challenger: response.OfferResponseModel,
    train: pd.DataFrame,
    test: pd.DataFrame,
    challenger_value: float,
) -> tuple[float | None, bool]:
    """The champion's value on today's held-out users (its configuration refitted on today's training users),
    and whether it has the challenger's own configuration; (None, False) without a champion this code can load.

    Fitting is seeded and deterministic, so a champion with the challenger's own configuration scores exactly
    the challenger's value: reusing it saves a refit.
    """
    loaded = tracking.loadable_champion(settings.offer_model_name)
    if loaded is None:
        return None, False
    champion = loaded.model
    recipe = (champion.margin_rate, champion.config, champion.seed)
    if recipe == (challenger.margin_rate, challenger.config, challenger.seed):
        return challenger_value, True
    refit = response.OfferResponseModel(*recipe).fit(train, settings.worker_threads)
    return response.evaluate(refit, train, test, settings.order_margin_rate).policy_value, False


def _champion_metric(
    settings: Settings, split: TemporalSplit, context: MarketContext, spec: ModelSpec, challenger_value: float
) -> tuple[float | None, bool]:
    """The champion's gate value on today's split (its spec refitted on today's training window, so both are
    judged on the same window), and whether it has the challenger's own recipe (``ModelSpec.same_recipe``: thread
    counts aside); (None, False) without one this code can load.

    Fitting is seeded and deterministic, so a champion with the challenger's own recipe scores exactly the
    challenger's value: reusing it saves a second ranker fit.
    """
    loaded = tracking.loadable_champion(settings.ranker_model_name)
    if loaded is None:
        return None, False
    champion = loaded.recommender
    if champion.spec.same_recipe(spec):
        return challenger_value, True
    judge = Judge(split, len(context.merchants), ks=(5, 10), workers=settings.worker_threads)
    return gate_value(judge.scorecard(champion.spec.recommender().fit(split.train, split.cut, context))), False


def _metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def _rounded(metrics: dict) -> dict:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def _champion_ranker_version(settings: Settings) -> str:
    version = tracking.alias_version(settings.ranker_model_name, tracking.CHAMPION)
    if version is None:
        raise RuntimeError(f"no model has alias @{tracking.CHAMPION} in {settings.ranker_model_name}: train first")
    return version


def score_shard(settings: Settings, run_date: date, shard: int) -> dict:
    """Top-N merchants in both modes from ``@champion`` for the lifecycle members in one user hash bucket of
    ``settings.score_shards`` (``publish.shard_of``), the personalisation opt-outs' lists non-personalised;
    staged in ``ops.staged_recommendations`` for publish_segments (a re-run replaces the shard's rows)."""
    if not 0 <= shard < settings.score_shards:
        raise ValueError(
            f"shard {shard} is not one of 0..{settings.score_shards - 1} (REKINDLE_SCORE_SHARDS={settings.score_shards})"
        )
    url = postgres.start(settings)
    with recorded_step(url, run_date, f"score_shard[{shard}]") as summary:
        tracking.configure(settings, url)
        version = _champion_ranker_version(settings)
        recommender = tracking.load_alias(settings.ranker_model_name).recommender
        with psycopg.connect(url) as conn:
            ddl.ensure(conn, "ops")
            members = marts.load_lifecycle_members(conn)
            in_shard = publish.shard_of(members["user_id"], settings.score_shards) == shard
            user_ids = members.loc[in_shard, "user_id"].tolist()
            recommender = consent.NonPersonalisedFor(recommender, marts.load_personalisation_opt_outs(conn))
            recommendations = publish.recommend_all(
                recommender,
                user_ids,
                marts.load_merchant_names(conn),
                settings.top_n,
                workers=settings.worker_threads,
            )
            publish.stage_shard(conn, run_date, settings.score_shards, shard, recommendations, len(user_ids), version)
        summary.update(
            shard=shard,
            shards=settings.score_shards,
            model_version=version,
            users=len(user_ids),
            recommendations=len(recommendations),
        )
    return summary


def score_all_shards(settings: Settings, run_date: date) -> list[dict]:
    """Every scoring shard of run_date in turn, for callers without Airflow (the DAG maps score_shard instead)."""
    return [score_shard(settings, run_date, shard) for shard in range(settings.score_shards)]


def publish_segments(settings: Settings, run_date: date) -> dict:
    """Swap the scored shards of run_date (all ``settings.score_shards`` of them, by the ``@champion`` ranker)
    into crm with today's offers and the CRM segment tables, replacing run_date's rows in one transaction
    (readers see the old day or the new one, never a mix), and write the exports."""
    url = postgres.start(settings)
    with recorded_step(url, run_date, "publish_segments") as summary:
        tracking.configure(settings, url)
        version = _champion_ranker_version(settings)
        with psycopg.connect(url) as conn:
            segments.ensure_tables(conn)
            ddl.ensure(conn, "ops")
            offers, offer_version = _todays_offers(settings, conn, run_date)
            with conn.transaction():
                # Held to the commit, after the exports: an erasure meanwhile waits, then removes what this wrote.
                tombstones.hold_erasure_lock(conn)
                erased = tombstones.ErasedUsers.load(conn, tombstones.erasure_salt(settings))
                summary["erased_users_dropped"] = publish.drop_erased_staged(conn, run_date, erased)
                if offers is not None:
                    offers = offers[~erased.mask(offers["user_id"])]
                members = sum(marts.users_per_segment(conn).values())
                # Shards an erased-from version scored before the erasure publish as the refit's.
                others = publish.staged_versions(conn, run_date) - {version}
                replaced = tracking.replaced_versions(settings.ranker_model_name, version) if others else []
                publish.check_staged(conn, run_date, settings.score_shards, version, members, frozenset(replaced))
                started = time.perf_counter()
                expired = publish.drop_expired(conn, run_date, settings.crm_retention_days)
                recommendations, scored = publish.replace_run(
                    conn, run_date, settings.score_shards, settings.score_segments, version
                )
                if offers is not None:
                    replace_offers(conn, run_date, campaign_id_for(run_date), offers, offer_version)
                progress.info(
                    "published %s recommendations, %s segment members and %s offers (%.1fs)",
                    f"{recommendations:,}",
                    f"{sum(counts['rows'] for counts in scored.values()):,}",
                    f"{0 if offers is None else len(offers):,}",
                    time.perf_counter() - started,
                )
                started = time.perf_counter()
                segment_rows = segments.refresh_segments(conn, run_date, settings)
                progress.info(
                    "refreshed the CRM segment tables: %s (%.1fs)",
                    ", ".join(f"{name} {rows:,}" for name, rows in segment_rows.items()),
                    time.perf_counter() - started,
                )
            roles.ensure_roles(conn, settings)
            exports = export.export_all(conn, run_date, settings)
            # Last, and in the connection's transaction with the crm rows: a publish that fails before the commit
            # (in the exports, say) leaves the staged shards for its retry.
            publish.clear_staged(conn, run_date)
        summary.update(
            model_version=version,
            score_shards=settings.score_shards,
            users_per_segment={segment: counts["users"] for segment, counts in scored.items()},
            rows_per_segment={segment: counts["rows"] for segment, counts in scored.items()},
            recommendations=recommendations,
            crm_segments=segment_rows,
            expired_rows=expired,
            offers=None
            if offers is None
            else {"model_version": offer_version, **decide.offer_summary(offers, settings.offer_objective)},
            exports={segment: str(path) for segment, path in exports.items()},
        )
    return summary


def _todays_offers(settings: Settings, conn: psycopg.Connection, run_date: date):
    """Offers for today's inactive users from the ``@champion`` offer model, or (None, None) without one."""
    version = tracking.alias_version(settings.offer_model_name, tracking.CHAMPION)
    if version is None:
        log.warning(
            "no @%s %s yet: publishing recommendations without offers", tracking.CHAMPION, settings.offer_model_name
        )
        return None, None
    model = tracking.load_alias(settings.offer_model_name).model
    users = marts.load_inactive_users(conn, INACTIVE_SEGMENTS)
    return decide.decide_offers(model, users, campaign_id_for(run_date), settings), version


def step_summaries(settings: Settings, run_date: date) -> list[dict]:
    url = postgres.start(settings)
    with psycopg.connect(url) as conn:
        ddl.ensure(conn, "ops")
        rows = conn.execute(
            "SELECT step, seconds, summary FROM ops.pipeline_steps WHERE run_date = %s ORDER BY finished_at",
            (run_date,),
        ).fetchall()
    return [{"step": step, "seconds": seconds, "summary": summary} for step, seconds, summary in rows]


def read_out_campaign(settings: Settings, run_date: date) -> dict:
    """The experiment_readout DAG's task: read out the campaign whose reactivation window closed on run_date."""
    from ml.experiments import readout

    return readout.run_readout(settings, readout.campaign_date_due(run_date, settings.reactivation_window_days))
