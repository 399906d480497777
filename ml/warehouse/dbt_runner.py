"""Run the dbt project (``dbt/``) programmatically against the warehouse.

``write_profile`` generates ``profiles.yml`` from the warehouse URL (a unix-socket directory
works as host), ``dbt_vars`` turns the Settings and the event data contract (``contract.py``) into
dbt vars for one run_date, and ``run_dbt`` invokes dbt in-process through ``dbtRunner`` with
target/ and logs/ under ``settings.home``.
Failures raise :class:`DbtError` naming the failing nodes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ml.runtime import disable_telemetry
from ml.settings import Settings
from ml.warehouse import contract

log = logging.getLogger(__name__)

PROFILE_NAME = "rekindle"
TARGET_NAME = "dev"
THREADS = 2
# Statuses of a run/test/build node that mean the invocation failed.
FAILURE_STATUSES = frozenset({"error", "fail", "runtime error"})

# Session settings for every dbt connection (models and tests), passed through libpq's PGOPTIONS.
# A larger work_mem keeps sorts / hash aggregates over the event log in memory; it also avoids a
# pathological case seen on the embedded PostgreSQL 18, where a parallel partial HashAggregate that
# spills (4MB default work_mem, ~1 group per row, e.g. a uniqueness test on 1.7M interactions)
# ran for 15+ minutes instead of 4 seconds. A PGOPTIONS already in the environment is appended
# after these, so its values win.
DBT_SESSION_OPTIONS = "-c work_mem=256MB"


def skip_dbt_stack_walks() -> None:
    """Make dbt name the source of an adapter's behaviour flags without reading the source of every stack frame.

    dbt-common evaluates ``inspect.stack()`` for each of the adapter's ~30 behaviour flags whenever an adapter is
    registered, once per invocation; ``inspect.stack()`` reads the source lines around every frame. Under an
    Airflow task (or pytest) the stack is deep, and this took most of a small model's dbt task (about 60% of
    the DAG's dbt time on the demo world). The frames' globals give the same module name (it only labels dbt's
    events). Idempotent; called before every in-process dbt invocation."""
    from dbt_common import behavior_flags

    def default_source() -> str:
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_globals.get("__name__")
            if name and name != behavior_flags.__name__:
                return name
            frame = frame.f_back
        return "Unknown"

    behavior_flags.BehaviorFlagRendered._default_source = staticmethod(default_source)


# dbtRunner keeps global state (flags, adapters, event manager): one invocation at a time per process.
_dbt_lock = threading.Lock()


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    name: str
    resource_type: str
    status: str
    message: str | None = None
    failures: int | None = None
    execution_time: float = 0.0


@dataclass
class DbtResult:
    command: list[str]
    success: bool
    counts: dict[str, int] = field(default_factory=dict)  # status -> number of nodes, e.g. {"success": 12, "pass": 40}
    nodes: list[NodeResult] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    def by_status(self, status: str) -> list[NodeResult]:
        return [n for n in self.nodes if n.status == status]


class DbtError(RuntimeError):
    """A dbt invocation failed; ``failures`` lists the failing nodes (empty for parse/compile/connection errors)."""

    def __init__(self, message: str, failures: list[NodeResult] | None = None, result: DbtResult | None = None):
        super().__init__(message)
        self.failures = failures or []
        self.result = result


# --------------------------------------------------------------------------------------------
# profile and vars


def connection_params(url: str) -> dict[str, Any]:
    """host/port/user/password/dbname (+ sslmode) of a libpq URL; ``?host=/socket/dir`` is the host."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL URL (scheme {parsed.scheme!r})")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items() if v}
    host = query.get("host") or (unquote(parsed.hostname) if parsed.hostname else "localhost")
    port = int(query.get("port") or parsed.port or 5432)
    params: dict[str, Any] = {
        "host": host,
        "port": port,
        "user": unquote(query.get("user") or parsed.username or "postgres"),
        "password": unquote(query.get("password") or parsed.password or ""),
        "dbname": unquote(query.get("dbname") or (parsed.path or "").lstrip("/") or "postgres"),
    }
    if "sslmode" in query:
        params["sslmode"] = query["sslmode"]
    return params


def _jinja_literal(value: Any) -> Any:
    """dbt renders every profile string as Jinja: keep values such as a password containing '{{' literal."""
    if isinstance(value, str) and any(tok in value for tok in ("{{", "{%", "{#")):
        return "{% raw %}" + value + "{% endraw %}"
    return value


def profile_target(url: str) -> dict[str, Any]:
    """The dbt ``postgres`` target of the warehouse URL, every value literal to dbt's Jinja rendering."""
    params = connection_params(url)
    target: dict[str, Any] = {
        "type": "postgres",
        "host": params["host"],
        "port": params["port"],
        "user": params["user"],
        "password": params["password"],
        "dbname": params["dbname"],
        "schema": "public",
        "threads": THREADS,
        "connect_timeout": 10,
        "keepalives_idle": 0,
    }
    if "sslmode" in params:
        target["sslmode"] = params["sslmode"]
    return {key: _jinja_literal(value) for key, value in target.items()}


def write_profile(settings: Settings, url: str) -> Path:
    """Generate ``profiles.yml`` (profile ``rekindle``, target ``dev``) from the URL; returns the directory.

    The file is generated on every run and never hand-edited. It can hold the warehouse password, so it
    is written owner-read/write only under ``settings.home``.
    """
    profile = {PROFILE_NAME: {"target": TARGET_NAME, "outputs": {TARGET_NAME: profile_target(url)}}}

    profiles_dir = Path(settings.dbt_profiles_dir)
    profiles_dir.mkdir(parents=True, exist_ok=True)
    path = profiles_dir / "profiles.yml"
    # JSON is valid YAML: no quoting surprises for socket paths or passwords.
    text = (
        "# Generated by ml/warehouse/dbt_runner.py from the warehouse URL; do not edit.\n"
        + json.dumps(profile, indent=2)
        + "\n"
    )
    tmp = path.with_suffix(".yml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return profiles_dir


def dbt_vars(settings: Settings, run_date: datetime.date) -> dict:
    """The dbt vars of one run: run_date, lifecycle thresholds and campaign/recency windows."""
    if isinstance(run_date, datetime.datetime):
        run_date = run_date.date()
    if not isinstance(run_date, datetime.date):
        run_date = datetime.date.fromisoformat(str(run_date))
    return {"run_date": run_date.isoformat(), **settings_vars(settings)}


def settings_vars(settings: Settings) -> dict:
    """Every dbt var but run_date: lifecycle thresholds, campaign/recency windows and the event data contract
    (vocabularies and staging's event rules, from ml/warehouse/contract.py)."""
    return {
        **contract.dbt_vars(),
        "new_user_days": int(settings.new_user_days),
        "active_max_days": int(settings.active_max_days),
        "at_risk_max_days": int(settings.at_risk_max_days),
        "lapsed_max_days": int(settings.lapsed_max_days),
        "dormant_max_days": int(settings.dormant_max_days),
        "reactivation_window_days": int(settings.reactivation_window_days),
        # Not (yet) a Settings field everywhere: fall back to the dbt project's default.
        "recency_half_life_days": float(getattr(settings, "recency_half_life_days", 14)),
        "taste_recent_days": int(settings.taste_recent_days),
        "taste_half_life_days": float(settings.taste_half_life_days),
        "taste_drift_threshold": float(settings.taste_drift_threshold),
        "taste_drift_min_recent_orders": int(settings.taste_drift_min_recent_orders),
    }


# --------------------------------------------------------------------------------------------
# invocation


def target_path(settings: Settings) -> Path:
    return Path(settings.home) / "dbt" / "target"


def log_path(settings: Settings) -> Path:
    return Path(settings.home) / "dbt" / "logs"


def _command_params(command: list[str]) -> set[str]:
    """Names of the click parameters the dbt (sub)command accepts, e.g. {'select', 'vars', ...}."""
    from dbt.cli.main import cli

    node: Any = cli
    for word in command:
        if word.startswith("-"):
            break
        sub = getattr(node, "commands", {}).get(word)
        if sub is None:
            break
        node = sub
    return {p.name for p in getattr(node, "params", []) if p.name}


def build_args(
    settings: Settings,
    command: list[str],
    run_date: datetime.date,
    select: str | None = None,
) -> list[str]:
    """The dbt CLI arguments of an invocation (only the options the subcommand accepts)."""
    if not command:
        raise ValueError("command must name a dbt subcommand, e.g. ['build']")
    accepted = _command_params(command)
    args = list(command)
    if "project_dir" in accepted:
        args += ["--project-dir", str(settings.dbt_project_dir)]
    if "profiles_dir" in accepted:
        args += ["--profiles-dir", str(settings.dbt_profiles_dir)]
    if "target_path" in accepted:
        args += ["--target-path", str(target_path(settings))]
    if "vars" in accepted:
        args += ["--vars", json.dumps(dbt_vars(settings, run_date))]
    if "target" in accepted:
        args += ["--target", TARGET_NAME]
    if "log_path" in accepted:
        args += ["--log-path", str(log_path(settings))]
    if "send_anonymous_usage_stats" in accepted:
        args += ["--no-send-anonymous-usage-stats"]
    if select:
        if "select" not in accepted:
            raise ValueError(f"dbt {' '.join(command)} does not take --select")
        args += ["--select", *select.split()]
    return args


def _node_result(res: Any) -> NodeResult:
    node = getattr(res, "node", None)
    status = getattr(res, "status", "")
    status = str(getattr(status, "value", status))
    message = getattr(res, "message", None)
    return NodeResult(
        unique_id=str(getattr(node, "unique_id", "") or ""),
        name=str(getattr(node, "name", "") or ""),
        resource_type=str(
            getattr(getattr(node, "resource_type", ""), "value", getattr(node, "resource_type", "")) or ""
        ),
        status=status,
        message=None if message is None else str(message),
        failures=getattr(res, "failures", None),
        execution_time=float(getattr(res, "execution_time", 0.0) or 0.0),
    )


def _describe(nodes: list[NodeResult]) -> str:
    lines = []
    for n in nodes:
        kind = n.resource_type or "node"
        lines.append(f"  {kind} {n.name} [{n.status}] ({n.unique_id}): {n.message or ''}".rstrip())
    return "\n".join(lines)


def run_dbt(
    settings: Settings,
    url: str,
    command: list[str],
    run_date: datetime.date,
    select: str | None = None,
) -> DbtResult:
    """Invoke ``dbt <command>`` in-process (dbtRunner) for ``run_date``; raise DbtError on failure.

    ``command`` is e.g. ``["build"]``, ``["run"]``, ``["test"]``, ``["deps"]``, ``["docs", "generate"]``;
    extra CLI flags may follow the subcommand. ``select`` is a dbt selection (space-separated).
    Returns the number of nodes per status in ``DbtResult.counts``.
    """
    from dbt.cli.main import dbtRunner

    disable_telemetry()  # also set in dbt_project.yml flags
    skip_dbt_stack_walks()
    write_profile(settings, url)
    target_path(settings).mkdir(parents=True, exist_ok=True)
    log_path(settings).mkdir(parents=True, exist_ok=True)
    args = build_args(settings, command, run_date, select)
    label = " ".join(command)
    log.info("dbt %s (run_date=%s, select=%s)", label, dbt_vars(settings, run_date)["run_date"], select)

    started = time.perf_counter()
    with _dbt_lock:
        previous = os.environ.get("PGOPTIONS")
        os.environ["PGOPTIONS"] = f"{DBT_SESSION_OPTIONS} {previous or ''}".strip()
        try:
            outcome = dbtRunner().invoke(args)
        finally:
            if previous is None:
                os.environ.pop("PGOPTIONS", None)
            else:
                os.environ["PGOPTIONS"] = previous
    elapsed = time.perf_counter() - started

    nodes: list[NodeResult] = []
    raw_results = getattr(outcome.result, "results", None)
    if raw_results:
        nodes = [_node_result(r) for r in raw_results]
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.status] = counts.get(n.status, 0) + 1
    result = DbtResult(
        command=list(command), success=bool(outcome.success), counts=counts, nodes=nodes, elapsed_seconds=elapsed
    )

    failures = [n for n in nodes if n.status in FAILURE_STATUSES]
    if outcome.exception is not None:
        raise DbtError(f"dbt {label} failed: {outcome.exception}", failures, result) from outcome.exception
    if failures:
        raise DbtError(f"dbt {label} failed on {len(failures)} node(s):\n{_describe(failures)}", failures, result)
    if not outcome.success:
        raise DbtError(f"dbt {label} failed (see {log_path(settings) / 'dbt.log'})", failures, result)
    log.info("dbt %s finished in %.1fs: %s", label, elapsed, counts)
    return result
