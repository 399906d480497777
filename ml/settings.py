"""The one settings object: every knob comes from a ``REKINDLE_`` environment variable or its default."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return PROJECT_ROOT / ".rekindle"


@dataclass(frozen=True)
class Settings:
    # Where local state lives: embedded warehouse, Airflow metadata, MLflow artifacts, exports, data docs.
    home: Path = field(default_factory=_default_home)
    # Any Postgres; empty means the embedded server under ``home``.
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

    # Interaction strength: signals halve every this many days (dbt marts and the recommender)
    recency_half_life_days: float = 14.0

    # Recommendation / evaluation
    top_n: int = 10
    eval_test_days: int = 7
    # Test users every model of a day is judged on (a seeded sample when there are more)
    eval_users: int = 6000
    cosine_neighbours: int = 100
    cosine_shrinkage: float = 0.0
    ranker_candidates: int = 50
    ranker_train_users: int = 5000
    diversity_lambda: float = 0.9
    exploration_rate: float = 0.05
    model_threads: int = 1
    promotion_margin: float = 0.0
    score_segments: tuple[str, ...] = ("lapsed", "dormant")

    # Offers (ml/offers/decide.py): budget is the total expected reward cost of one day's campaign (QAR)
    campaign_budget: float = 20000.0
    offer_segment_budget_share: float = 0.5
    holdout_share: float = 0.10
    personalised_share: float = 0.45
    default_offer_event_type: str = "free_delivery"
    default_offer_reward: float = 10.0
    order_margin_rate: float = 0.30
    offer_test_share: float = 0.3
    reactivation_window_days: int = 14

    # CRM segments (ml/crm/segments.py): thresholds and sizes
    crm_affinity_threshold: float = 0.5
    crm_top_k: int = 3
    crm_lapsed_days: int = 14
    crm_new_user_max_orders: int = 2
    crm_superfans_per_merchant: int = 20
    # Publishing run_date D deletes rows with run_date < D - this from every crm table that has a run_date.
    # Keep it above reactivation_window_days: the experiment readout reads a campaign's offers after its window.
    crm_retention_days: int = 90
    crm_reader_role: str = "rekindle_crm_reader"
    # Empty: the role gets no password (fine for the embedded server's local trust auth).
    crm_reader_password: str = ""

    # MLflow model names
    ranker_model_name: str = "rekindle-ranker"
    offer_model_name: str = "rekindle-offer"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def input_dir(self) -> Path:
        """The drop folder the daily load ingests; ``rekindle generate`` writes here."""
        return self.data_dir / "incoming"

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
        return self.home / "exports"

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
