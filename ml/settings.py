"""The one settings object: every knob comes from a ``REKINDLE_`` environment variable or its default."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.warehouse.contract import NO_OFFER, OFFER_EVENT_TYPES

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# What the personalised offers maximise (Settings.offer_objective); ml.offers.policy.expected_gain computes each.
OFFER_OBJECTIVES = ("reengagement", "margin")
AT_LEAST_ONE = (1, None)
NON_NEGATIVE = (0, None)
SHARE = (0, 1)
# Each number's allowed values, both ends included (None: no end); ABOVE_ZERO ones must also not be 0. A value
# outside fails at once, naming its variable, rather than as a wrong result later (a negative crm retention would
# delete the day just published).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": NON_NEGATIVE,
    "days": AT_LEAST_ONE,
    "new_user_days": AT_LEAST_ONE,
    "active_max_days": NON_NEGATIVE,
    "at_risk_max_days": NON_NEGATIVE,
    "lapsed_max_days": NON_NEGATIVE,
    "dormant_max_days": NON_NEGATIVE,
    "recency_half_life_days": NON_NEGATIVE,
    "taste_recent_days": AT_LEAST_ONE,
    "taste_half_life_days": NON_NEGATIVE,
    "taste_drift_threshold": SHARE,
    "taste_drift_min_recent_orders": AT_LEAST_ONE,
    "top_n": AT_LEAST_ONE,
    "eval_test_days": AT_LEAST_ONE,
    "eval_users": AT_LEAST_ONE,
    "cosine_neighbours": AT_LEAST_ONE,
    "cosine_shrinkage": NON_NEGATIVE,
    "ranker_candidates": AT_LEAST_ONE,
    "ranker_train_users": AT_LEAST_ONE,
    "diversity_lambda": SHARE,
    "exploration_rate": SHARE,
    "model_threads": NON_NEGATIVE,
    "promotion_margin": (-1, None),
    "personalised_budget_per_user": NON_NEGATIVE,
    "campaign_budget": NON_NEGATIVE,
    "offer_segment_budget_share": SHARE,
    "holdout_share": SHARE,
    "personalised_share": SHARE,
    "offer_exploration_share": SHARE,
    "default_offer_reward": NON_NEGATIVE,
    "order_margin_rate": SHARE,
    "offer_test_share": SHARE,
    "offer_training_days": AT_LEAST_ONE,
    "offer_training_max_exposures": AT_LEAST_ONE,
    "reactivation_window_days": AT_LEAST_ONE,
    "crm_affinity_threshold": SHARE,
    "crm_top_k": AT_LEAST_ONE,
    "crm_lapsed_days": AT_LEAST_ONE,
    "crm_new_user_max_orders": NON_NEGATIVE,
    "crm_superfans_per_merchant": AT_LEAST_ONE,
    "crm_retention_days": AT_LEAST_ONE,
    "raw_retention_days": AT_LEAST_ONE,
    "quality_results_kept": AT_LEAST_ONE,
    "score_shards": AT_LEAST_ONE,
    "task_retry_delay_seconds": NON_NEGATIVE,
    "api_cache_ttl_seconds": NON_NEGATIVE,
    "api_cache_max_users": AT_LEAST_ONE,
    "api_publication_poll_seconds": NON_NEGATIVE,
    "api_zone_boost": NON_NEGATIVE,
    "api_daypart_boost": NON_NEGATIVE,
    "api_view_boost": NON_NEGATIVE,
}
ABOVE_ZERO = {"recency_half_life_days", "taste_half_life_days", "offer_test_share", "api_publication_poll_seconds"}


def _default_home() -> Path:
    return PROJECT_ROOT / ".rekindle"


@dataclass(frozen=True)
class Settings:
    """Every field is read from ``REKINDLE_<FIELD>``; its description lives in ``DESCRIPTIONS`` below."""

    home: Path = field(default_factory=_default_home)
    warehouse_url: str = ""
    seed: int = 42
    scale: str = "demo"
    days: int = 45

    # Lifecycle thresholds in days since the last order (DESIGN.md: user_segments).
    new_user_days: int = 14
    active_max_days: int = 6
    at_risk_max_days: int = 13
    lapsed_max_days: int = 29
    dormant_max_days: int = 59

    # Interaction strength (dbt)
    recency_half_life_days: float = 14.0

    # Taste drift (dbt: int_user_category_profile, int_user_taste -> marts.user_features)
    taste_recent_days: int = 28
    taste_half_life_days: float = 30.0
    taste_drift_threshold: float = 0.5
    taste_drift_min_recent_orders: int = 3

    # Recommendation / evaluation
    top_n: int = 10
    eval_test_days: int = 7
    eval_users: int = 6000
    cosine_neighbours: int = 100
    cosine_shrinkage: float = 0.0
    ranker_candidates: int = 40
    ranker_train_users: int = 5000
    diversity_lambda: float = 0.9
    exploration_rate: float = 0.05
    model_threads: int = 0
    promotion_margin: float = 0.0
    score_segments: tuple[str, ...] = ("lapsed", "dormant")

    # Offers (ml/offers/decide.py, the offer model in ml/pipeline/tasks.py)
    offer_objective: str = "reengagement"
    personalised_budget_per_user: float = 0.0
    campaign_budget: float = 20000.0
    offer_segment_budget_share: float = 0.5
    holdout_share: float = 0.10
    personalised_share: float = 0.45
    offer_exploration_share: float = 0.10
    default_offer_event_type: str = "free_delivery"
    default_offer_reward: float = 10.0
    order_margin_rate: float = 0.30
    offer_test_share: float = 0.3
    offer_training_days: int = 180
    offer_training_max_exposures: int = 100_000
    reactivation_window_days: int = 14

    # CRM segments (ml/crm/segments.py) and publishing
    crm_affinity_threshold: float = 0.5
    crm_top_k: int = 3
    crm_lapsed_days: int = 14
    crm_new_user_max_orders: int = 2
    crm_superfans_per_merchant: int = 20
    crm_retention_days: int = 90
    crm_reader_role: str = "rekindle_crm_reader"
    crm_reader_password: str = ""

    # Privacy (ml/privacy): erasure tombstones, retention, the dashboard's role
    erasure_salt: str = field(default="", repr=False)
    raw_retention_days: int = 400
    dashboard_role: str = "rekindle_dashboard"
    dashboard_role_password: str = field(default="", repr=False)

    # Great Expectations gates (ml/warehouse/quality.py)
    quality_results_kept: int = 7

    # MLflow model names and where MLflow lives
    ranker_model_name: str = "rekindle-ranker"
    offer_model_name: str = "rekindle-offer"
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = ""

    # Shared locations and scale-out (issue 18: every task may run on another worker)
    input_path: str = ""
    exports_path: str = ""
    score_shards: int = 4
    task_retry_delay_seconds: float = 120.0

    # The real-time API (ml/serving, `rekindle serve`)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_role: str = "rekindle_api"
    api_role_password: str = field(default="", repr=False)
    api_cache_ttl_seconds: float = 300.0
    api_cache_max_users: int = 100_000
    api_publication_poll_seconds: float = 1.0
    api_zone_boost: float = 0.1
    api_daypart_boost: float = 0.1
    api_view_boost: float = 0.2
    serving_experiment: str = "serving-1"
    serving_strategies: tuple[str, ...] = ("champion:0.8", "popularity:0.1", "cosine:0.1")

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if (low is not None and value < low) or (high is not None and value > high) or value != value:
                allowed = f"in [{low}, {high}]" if high is not None else f"at least {low}"
                raise ValueError(f"REKINDLE_{name.upper()}={value} must be {allowed}")
            if name in ABOVE_ZERO and value == 0:
                raise ValueError(f"REKINDLE_{name.upper()}=0 must be above 0")
        if self.default_offer_event_type not in OFFER_EVENT_TYPES or self.default_offer_event_type == NO_OFFER:
            offers = ", ".join(event_type for event_type in OFFER_EVENT_TYPES if event_type != NO_OFFER)
            raise ValueError(
                f"REKINDLE_DEFAULT_OFFER_EVENT_TYPE={self.default_offer_event_type!r} is not one of {offers}"
            )
        if self.offer_objective not in OFFER_OBJECTIVES:
            raise ValueError(
                f"REKINDLE_OFFER_OBJECTIVE={self.offer_objective!r} is not one of {', '.join(OFFER_OBJECTIVES)}"
            )
        lifecycle = (self.active_max_days, self.at_risk_max_days, self.lapsed_max_days, self.dormant_max_days)
        if list(lifecycle) != sorted(set(lifecycle)):
            raise ValueError(
                "REKINDLE_ACTIVE_MAX_DAYS < REKINDLE_AT_RISK_MAX_DAYS < REKINDLE_LAPSED_MAX_DAYS < "
                f"REKINDLE_DORMANT_MAX_DAYS must hold (each segment ends after the one before), got {lifecycle}"
            )
        if self.holdout_share + self.personalised_share > 1:
            raise ValueError(
                f"REKINDLE_HOLDOUT_SHARE={self.holdout_share} and REKINDLE_PERSONALISED_SHARE="
                f"{self.personalised_share} add up to more than 1"
            )
        for days, name, why in (
            (self.offer_training_days, "OFFER_TRAINING", "no exposure sent later has an observed outcome"),
            (self.crm_retention_days, "CRM_RETENTION", "the readout reads a campaign's offers after its window"),
        ):
            if days <= self.reactivation_window_days:
                raise ValueError(
                    f"REKINDLE_{name}_DAYS={days} must be above REKINDLE_REACTIVATION_WINDOW_DAYS="
                    f"{self.reactivation_window_days}: {why}"
                )

    @property
    def worker_threads(self) -> int:
        """``model_threads`` resolved: every core of the machine for 0."""
        return self.model_threads or os.cpu_count() or 1

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def input_dir(self) -> Path:
        """The drop folder the daily load ingests; ``rekindle generate`` writes here."""
        return Path(self.input_path) if self.input_path else self.data_dir / "incoming"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlruns"

    @property
    def exports_dir(self) -> Path:
        return Path(self.exports_path) if self.exports_path else self.home / "exports"

    @property
    def dbt_project_dir(self) -> Path:
        return PROJECT_ROOT / "dbt"

    @property
    def dbt_profiles_dir(self) -> Path:
        return self.home / "dbt_profiles"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``REKINDLE_<FIELD>`` variables (upper-case field names), then apply overrides."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"REKINDLE_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, cls.__dataclass_fields__[f.name].default, f)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"]).resolve()
        return cls(**values)


# One description per Settings field: docs/configuration.md is generated from it (``python -m ml.settings``) and
# tests/test_configuration_docs.py fails when a field has none. Add the description with the field.
DESCRIPTIONS: dict[str, str] = {
    "home": "Where local state lives: embedded warehouse, drop folder (`data/incoming`), Airflow metadata, "
    "MLflow artifacts, exports, GX data docs, dbt profiles, run logs.",
    "warehouse_url": "libpq URL of any Postgres to use as the warehouse (e.g. `postgresql://user:pass@host:5432/db`); "
    "empty means the embedded server under `home`. Printed redacted, never with the password.",
    "seed": "Seed of the synthetic marketplace (`rekindle generate`), the evaluation sample of test users, "
    "the ranker and the random baseline, and the offer model's train/test split and fit.",
    "scale": "Size of the synthetic marketplace `rekindle generate` writes: `demo` (5,000 users, 500 merchants) "
    "or `full` (55,000 users, 5,700 merchants).",
    "days": "Length in days of the window `rekindle generate` writes: the days before its `--end-date` "
    "(default: today, UTC).",
    "new_user_days": "Lifecycle `new`: signed up at most this many days before the run date and fewer than 2 orders "
    "(dbt var for `marts.user_segments`; the evaluation's per-segment breakdown uses the same value).",
    "active_max_days": "Lifecycle `active`: last order at most this many days before the run date.",
    "at_risk_max_days": "Lifecycle `at_risk`: last order more than `active_max_days` and at most this many days ago.",
    "lapsed_max_days": "Lifecycle `lapsed`: last order more than `at_risk_max_days` and at most this many days ago.",
    "dormant_max_days": "Lifecycle `dormant`: last order more than `lapsed_max_days` and at most this many days ago; "
    "beyond it a user is `churned`.",
    "recency_half_life_days": "Half-life in days of the recency decay of user x merchant interaction strength in "
    "dbt's `int_user_merchant_interactions` (dbt var). The recommenders weight orders with their own fixed "
    "14-day half-life (`HALF_LIFE_DAYS` in `ml/recommend/merchant.py`).",
    "taste_recent_days": "Taste drift: orders in this many days before the run date are the user's recent category "
    "mix, compared with the mix of every earlier order (`category_divergence` in `marts.user_features`; dbt var).",
    "taste_half_life_days": "Half-life in days of the order weights behind each user's recency-weighted category "
    "shares (`int_user_category_profile`) and so `recent_favourite_category` (dbt var).",
    "taste_drift_threshold": "`taste_drift` is true when `category_divergence` (Jensen-Shannon, base 2, in [0, 1]) "
    "is at least this and the user has `taste_drift_min_recent_orders` recent orders (dbt var).",
    "taste_drift_min_recent_orders": "Recent orders (within `taste_recent_days`) a user needs before a divergent mix "
    "counts as `taste_drift`: one or two orders elsewhere are not yet a changed taste (dbt var).",
    "top_n": "Merchants published per user in `crm.recommendations` (and `crm.segment_members`).",
    "eval_test_days": "Held-out window of the daily evaluation: models are fitted on orders before the last this "
    "many days and judged on the orders inside them.",
    "eval_users": "At most this many test users (a seeded sample, the same for every model of the day) judge the "
    "ranker, its generators and the baselines in `train_ranker`; on synthetic worlds, as many inactive users (the "
    "same kind of seeded sample) score the offer model against the generator's ground truth in `train_offer_model`.",
    "cosine_neighbours": "Item-item cosine generator: neighbours kept per merchant.",
    "cosine_shrinkage": "Item-item cosine generator: shrinkage added to the similarity's denominator "
    "(damps pairs with few co-orders).",
    "ranker_candidates": "Candidates each generator contributes per user to the LightGBM ranker (40: the NDCG@10 of 50 "
    "within 0.6% in both modes at demo and full scale, with a fifth fewer candidates to build and score).",
    "ranker_train_users": "At most this many users (a seeded sample) label the ranker's training windows.",
    "diversity_lambda": "MMR re-ranking over categories: 1.0 = ranker order only, lower = more category diversity.",
    "exploration_rate": "Share of users (per user and day, by a seeded draw) whose last slot shows the new merchant "
    "their category taste scores highest; 0 turns it off.",
    "model_threads": "Threads for ALS and LightGBM (the ranker's training and scoring), for the batches a "
    "scoring shard scores side by side, the ranker's training rows and the daily judge's test users, and for the "
    "offer model's cross-fitting folds; 0 means every core of the "
    "machine. Set 1 where several tasks share a machine's cores (several Celery worker slots per host).",
    "promotion_margin": "A challenger becomes `@champion` only if its gate metric exceeds the champion's times "
    "(1 + this margin), both judged on the same held-out data (0.05 = 5% better).",
    "score_segments": "Lifecycle segments (comma-separated) whose members and their recommendations are written "
    "to `crm.segment_members` (and the exports `<segment>_<date>.csv`); each one of new, active, at_risk, lapsed, "
    "dormant, churned (the daily DAG's first task refuses any other).",
    "offer_objective": "What the personalised offers maximise within their budget: `reengagement` (incremental "
    "reactivations, the seed's criterion) or `margin` (incremental margin minus reward cost; sends no offer where "
    "none pays).",
    "personalised_budget_per_user": "Expected reward cost (QAR) per personalised user. 0: the non-personalised "
    "offer's expected cost for the same users, so both arms of the controlled test spend the same.",
    "campaign_budget": "Cap on the total expected reward cost (QAR) of one day's personalised offers, on top of "
    "`personalised_budget_per_user`.",
    "offer_segment_budget_share": "Each inactive segment (at_risk, lapsed, dormant, churned) may use at most this "
    "share of the personalised offers' budget.",
    "holdout_share": "Share of inactive users in the holdout arm (by a hash of campaign and user): never offered.",
    "personalised_share": "Share of inactive users in the personalised arm (the model's offer); the rest get the "
    "fixed default offer (non-personalised arm).",
    "offer_exploration_share": "Share of the personalised arm (by a hash of campaign and user) sent an offer drawn "
    "uniformly from the offer model's arms (\"none\" included) instead of the policy's, so the offer model keeps "
    "learning every arm's effect; each offer logs its propensity and the model weights exposures by its inverse.",
    "default_offer_event_type": "Event type of the non-personalised arm's fixed offer.",
    "default_offer_reward": "Reward size (QAR) of the non-personalised arm's fixed offer.",
    "order_margin_rate": "Share of an order's value the marketplace keeps: the offer model values a reactivation "
    "as margin on the expected orders minus the reward cost.",
    "offer_test_share": "Share of exposed users held out to value the offer policy (and the gate) in "
    "`train_offer_model`.",
    "offer_training_days": "The offer model learns from the exposures sent in this many days before the run date "
    "(those whose outcome window has closed): recent responses, and a training cost that stops growing with the "
    "campaigns sent.",
    "offer_training_max_exposures": "At most about this many of those exposures train the offer model: above it, "
    "a seeded sample of users with all their exposures (the same users from day to day). A window of weekly "
    "campaigns at full scale holds several hundred thousand; the sample keeps the daily fit's cost flat.",
    "reactivation_window_days": "Days after a campaign is sent in which a checkout counts as reactivation (dbt "
    "var for `marts.campaign_history`); the experiment readout reads out the campaign sent this many days earlier.",
    "crm_affinity_threshold": "`high_affinity_prospects` and `cross_sell_targets`: keep recommendations whose "
    "normalised score (share of the user's best) is above this.",
    "crm_top_k": "Recommendations per user in the `lapsed_personalised`, `category_explorers`, "
    "`cross_sell_targets` and `new_user_onboarding` segments.",
    "crm_lapsed_days": "`lapsed_personalised`: users with no order in at least this many days.",
    "crm_new_user_max_orders": "`new_user_onboarding`: users with fewer than this many orders.",
    "crm_superfans_per_merchant": "`merchant_superfans`: customers kept per merchant (most orders, then most spent).",
    "crm_retention_days": "Publishing run_date D deletes rows older than D minus this many days from every `crm` "
    "table with a run_date (`crm.experiment_results` is kept). Keep it above `reactivation_window_days`: the "
    "readout reads a campaign's offers after its window.",
    "crm_reader_role": "The LOGIN role the CRM reads with: SELECT on schema `crm` only.",
    "crm_reader_password": "Password of `crm_reader_role`; empty gives the role no password (fine for the "
    "embedded server's local trust authentication). Never printed.",
    "erasure_salt": "Key of the salted hash (HMAC-SHA256) that `ops.erased_users` keeps of each erased user id; "
    "empty: a random salt generated once into `<home>/erasure_salt` (mode 0600). Every process that ingests must "
    "use the same salt, or erased users' rows load again. Never printed.",
    "raw_retention_days": "The daily load deletes `raw.events` older than this many days before the run date "
    "(the marts rebuild from what remains).",
    "dashboard_role": "The LOGIN role the dashboard reads with: SELECT on `crm` and `marts`, nothing else.",
    "dashboard_role_password": "Password of `dashboard_role`; empty gives the role no password (fine for the "
    "embedded server's local trust authentication). Never printed.",
    "quality_results_kept": "Great Expectations validation results kept per suite, the newest, with their data-docs "
    "pages: each gate deletes the older ones first. Building the data-docs index reads every kept result, so "
    "without this the gates would slow down with every day run.",
    "ranker_model_name": "MLflow registered model of the merchant ranker.",
    "offer_model_name": "MLflow registered model of the offer (response) model.",
    "mlflow_tracking_uri": "An MLflow tracking server (`http://host:5000`) every task logs and loads models through; "
    "the server stores the artifacts (`--serve-artifacts`), so no task reads a file another wrote. Empty: the "
    "warehouse's `mlflow` schema directly, artifacts in `mlflow_artifact_root` (`rekindle ui --executor celery` "
    "sets it to the MLflow server it starts).",
    "mlflow_artifact_root": "Where new MLflow experiments keep their artifacts when there is no tracking server: any "
    "URI MLflow writes (`s3://bucket/mlruns`, `gs://...`, a shared file path). Empty: `<home>/mlruns`.",
    "input_path": "The drop folder the daily load ingests (a path every worker can read, e.g. a shared mount). "
    "Empty: `<home>/data/incoming`.",
    "exports_path": "Where the CSV exports for the CRM are written (a path every worker and the CRM can reach). "
    "Empty: `<home>/exports`.",
    "score_shards": "Scoring shards of the daily DAG: `score_shard` is mapped over this many user hash buckets "
    "(Airflow dynamic task mapping), each written to a staging table that `publish_segments` swaps into `crm` "
    "in one transaction.",
    "task_retry_delay_seconds": "First retry delay of every daily task (doubling on each retry, at most 30 "
    "minutes; Airflow adds jitter) after its worker died or the warehouse was unreachable.",
    "api_keys": "API keys of `rekindle serve`, comma-separated `scope:key` with scope `read` or `write` (a write "
    "key may also read). Empty: `rekindle serve` generates one key per scope into `<home>/.rekindle/api_keys.json` "
    "(mode 0600) and prints that path. Never printed or logged.",
    "api_role": "The LOGIN role the API connects as: SELECT on `crm` and `marts`, INSERT into `raw.events` and "
    "`raw.quarantine`, nothing else (`rekindle serve` creates it when it can).",
    "api_role_password": "Password of `api_role`; empty gives the role no password (fine for the embedded server's "
    "local trust authentication). Never printed.",
    "api_cache_ttl_seconds": "How long the API keeps a user's response in its in-process cache; a new publication "
    "and the user's own events empty it sooner.",
    "api_cache_max_users": "Users whose responses the API keeps cached per worker (least recently used go first).",
    "api_publication_poll_seconds": "How often the API looks for a new run_date in `crm.recommendations` (a new "
    "publication is served without a restart, and empties the cache).",
    "api_zone_boost": "Request-time re-scoring: added to the normalised score (0-1) of a recommended merchant in the "
    "request's zone (or the user's home zone).",
    "api_daypart_boost": "Request-time re-scoring: added, times the user's share of orders in the request's day-part, "
    "to every recommendation's normalised score of a user who orders at that time of day (orders what they like "
    "then higher: merchants of the user's favourite category).",
    "api_view_boost": "In-session adaptation: added, times the similarity, to the normalised score of the "
    "neighbours of a merchant the user viewed since the last publication (per view, at most three views).",
    "serving_experiment": "Key of the serving A/B test's hash (`hash_unit(serving_experiment, user_id)`): change it "
    "to re-draw every user's variant.",
    "serving_strategies": "The serving A/B test: comma-separated `strategy:share` (shares add up to 1) from "
    "`champion` (the published list, re-scored for context and session), `popularity` (the zone's most ordered "
    "merchants) and `cosine` (item-item co-order neighbours of the user's merchants).",
}


def _parse(name: str, raw: str, default: Any, f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return Path(raw)
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"REKINDLE_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from exc
    return raw


def redact(url: str) -> str:
    """Hide the password in a connection URL so it can be printed or logged."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _default_text(f: dataclasses.Field) -> str:
    if f.name == "home":
        return "`<project>/.rekindle`"
    default = f.default
    if isinstance(default, tuple):
        return f"`{','.join(default)}`"
    if default == "":
        return "(empty)"
    return f"`{default}`"


def _allowed_text(name: str) -> str:
    """The range a number may take (``RANGES``), as the docs show it; empty for the rest."""
    if name not in RANGES:
        return ""
    low, high = RANGES[name]
    if high is not None:
        return f"{low} to {high}" + (", not 0" if name in ABOVE_ZERO else "")
    return f"> {low}" if name in ABOVE_ZERO else f">= {low}"


def configuration_markdown() -> str:
    """docs/configuration.md: every Settings field as its environment variable, type, default and description."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from ml/settings.py by `python -m ml.settings > docs/configuration.md`; do not edit by hand. -->",
        "",
        "Regenerate this page with `python -m ml.settings > docs/configuration.md` after changing `Settings` or",
        "`DESCRIPTIONS` in `ml/settings.py`; `tests/test_configuration_docs.py` fails when it is stale or a setting",
        "has no description.",
        "",
        "Every field of the one settings object (`ml.settings.Settings`) is read from the environment variable",
        "`REKINDLE_<FIELD>` by `Settings.from_env()`; unset variables keep the default. Numbers are parsed as",
        "`int` or `float`, lists are comma-separated, `home` is a path; a number outside its allowed range (and the",
        "cross-checks in `Settings.__post_init__`) stops the command with one line naming the variable. Command-line",
        "options (`--seed`, `--scale`, `--days`, ...) override the environment.",
        "",
        "| environment variable | type | default | allowed | description |",
        "|---|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        description = DESCRIPTIONS.get(f.name, "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| `REKINDLE_{f.name.upper()}` | `{f.type}` | {_default_text(f)} | {_allowed_text(f.name)} | {description} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(configuration_markdown())
