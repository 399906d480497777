"""The run summary ``rekindle run`` prints, read back from what the steps recorded in ``ops.pipeline_steps``."""

from __future__ import annotations

from datetime import date

from ml.pipeline import step_summaries
from ml.settings import Settings

LIFECYCLE_ORDER = ("new", "active", "at_risk", "lapsed", "dormant", "churned")
REPORTED_METRICS = ("precision@5", "recall@10", "hit_rate@5", "ndcg@10", "coverage")


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.rjust(w) if i else value.ljust(w) for i, (value, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(steps: dict[str, dict], tasks: list) -> str:
    out = []
    load = steps.get("load_events", {})
    if load:
        rows = [[t["table"], t["rows_read"], t["rows_loaded"], t["rows_duplicate"], t["rows_quarantined"]] for t in load.get("tables", [])]
        out += ["Load (raw.*)", _table(["table", "read", "loaded", "duplicate", "quarantined"], rows or [["(no files)", 0, 0, 0, 0]]), ""]
    marts = steps.get("check_mart_quality", {})
    if marts.get("users_per_segment"):
        order = {segment: i for i, segment in enumerate(LIFECYCLE_ORDER)}
        counts = sorted(marts["users_per_segment"].items(), key=lambda item: order.get(item[0], len(order)))
        rows = [[segment, count] for segment, count in counts]
        out += ["Users per lifecycle segment", _table(["segment", "users"], rows), ""]
    train = steps.get("train_ranker", {})
    if train:
        models = {train["model"]: train["metrics"], **train["baselines"]}
        rows = [[name] + [values.get(m, float("nan")) for m in REPORTED_METRICS] for name, values in models.items()]
        out += [
            f"Recommendation quality (discovery, last-window temporal split, {int(train['metrics'].get('users', 0))} test users)",
            _table(["model"] + list(REPORTED_METRICS), rows),
            f"registered version {train['version']}; champion is v{train['champion_version']} ({train['gate']})",
            "",
        ]
    published = steps.get("publish_segments", {})
    if published:
        rows = [
            [segment, users, published["rows_per_segment"][segment]]
            for segment, users in published["users_per_segment"].items()
        ]
        out += [
            f"Published to crm.segment_members with model v{published['model_version']}",
            _table(["segment", "users", "rows"], rows),
            "CSV exports: " + ", ".join(published.get("exports", {}).values()),
            "",
        ]
    if tasks:
        rows = [[t.task_id, t.state, "" if t.seconds is None else f"{t.seconds:.1f}"] for t in tasks]
        out += ["Tasks", _table(["task", "state", "seconds"], rows)]
    return "\n".join(out)


def print_summary(settings: Settings, run_date: date, state: str, tasks: list, total_seconds: float) -> None:
    # Only what this run did: a step that failed or never ran today must not show yesterday's figures.
    succeeded = {t.task_id for t in tasks if t.state == "success"}
    steps = {row["step"]: row["summary"] for row in step_summaries(settings, run_date) if row["step"] in succeeded}
    print()
    print(f"=== reengagement_daily {run_date}: {state} in {total_seconds:.0f}s ===")
    print(render(steps, tasks))
