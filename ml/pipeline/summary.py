"""The run summary ``rekindle run`` prints, read back from what the steps recorded in ``ops.pipeline_steps``."""

from __future__ import annotations

from collections import Counter
from datetime import date

from ml.pipeline.airflow import tasks_span_seconds
from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS
from ml.recommend.modes import MODE_MEANINGS
from ml.settings import Settings

REPORTED_METRICS = ("precision@5", "recall@10", "hit_rate@5", "ndcg@10", "coverage")

# What the offer model's evaluation values: each user's most profitable offer with no budget. The published
# campaign maximises `offer_objective` within its budget (the summary's Offers line says which and at what cost).
MODEL_CHOICE = "model's most profitable offer per user (no budget)"


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(value.rjust(w) if i else value.ljust(w) for i, (value, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
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
        rows = [
            [
                t["table"],
                t["rows_read"],
                t["rows_loaded"],
                t["rows_duplicate"],
                t["rows_quarantined"],
                t.get("rows_per_second", 0),
            ]
            for t in load.get("tables", [])
        ]
        out += [
            "Load (raw.*)",
            _table(
                ["table", "read", "loaded", "duplicate", "quarantined", "rows/s"],
                rows or [["(no files)", 0, 0, 0, 0, 0]],
            ),
            "",
        ]
    marts = steps.get("check_mart_quality", {})
    if marts.get("users_per_segment"):
        order = {segment: i for i, segment in enumerate(LIFECYCLE_SEGMENTS)}
        counts = sorted(marts["users_per_segment"].items(), key=lambda item: order.get(item[0], len(order)))
        rows = [[segment, count] for segment, count in counts]
        out += ["Users per lifecycle segment", _table(["segment", "users"], rows), ""]
    train = steps.get("train_ranker", {})
    if train:
        for mode, metrics in train["metrics"].items():
            models = {train["model"]: metrics, **train["baselines"][mode]}
            rows = [[name] + [values.get(m, float("nan")) for m in REPORTED_METRICS] for name, values in models.items()]
            out += [
                f"Recommendation quality, {mode} ({MODE_MEANINGS[mode]}; last-window temporal split, "
                f"{int(metrics.get('users', 0))} test users)",
                _table(["model"] + list(REPORTED_METRICS), rows),
            ]
        out += [
            f"registered version {train['version']}; champion is v{train['champion_version']} ({train['gate']})",
            "",
        ]
    offers_model = steps.get("train_offer_model", {})
    if offers_model.get("skipped"):
        out += [f"Offer model: skipped ({offers_model['skipped']})", ""]
    elif offers_model:
        m = offers_model["metrics"]
        rows = [
            [MODEL_CHOICE, m["policy_value"]],
            [
                f"best uniform offer ({offers_model['best_uniform_arm']}, chosen on training users)",
                m["best_uniform_value"],
            ],
            ["best uniform offer in hindsight (max over test estimates, biased up)", m["hindsight_best_uniform_value"]],
            ["random offer", m["random_value"]],
            ["no offer", m["no_offer_value"]],
        ]
        out += [
            f"Offer policy value on held-out randomised exposures (IPW margin per user, QAR; {int(m['test_rows'])} rows)",
            _table(["policy", "value"], rows),
            f"uplift@30% = {m['uplift_at_30']:.2f}x random targeting; qini {m['qini']:.4f}",
        ]
        if "truth_policy_value" in m:
            truth_rows = [
                [MODEL_CHOICE, m["truth_policy_value"]],
                ["oracle (true best per user)", m["truth_oracle_value"]],
                ["oracle on the model's features (regression fitted to the truth)", m["truth_observable_oracle_value"]],
                ["best uniform offer", m["truth_best_uniform_value"]],
                ["random offer", m["truth_random_value"]],
                ["no offer", 0.0],
            ]
            out += [
                "Ground truth of the synthetic world on "
                + (
                    "today's inactive users"
                    if m.get("truth_users") == m.get("inactive_users")  # summaries from before the sample lack both
                    else f"a seeded sample of {int(m['truth_users']):,} of today's {int(m['inactive_users']):,} "
                    "inactive users"
                )
                + " (true expected margin per user, QAR)",
                _table(["policy", "value"], truth_rows),
                f"chosen offer = true best for {m['truth_best_offer_share']:.0%} of users (oracle on the model's "
                f"features: {m['truth_observable_oracle_best_offer_share']:.0%}); right event type or no offer for "
                f"{m['truth_best_event_type_share']:.0%}; regret {m['truth_regret_qar']:.2f} QAR/user",
            ]
        out += [
            f"registered rekindle-offer v{offers_model['version']}; champion is v{offers_model['champion_version']} "
            f"({offers_model['gate']})",
            "",
        ]
    published = steps.get("publish_segments", {})
    if published:
        rows = [
            [segment, users, published["rows_per_segment"][segment]]
            for segment, users in published["users_per_segment"].items()
        ]
        out += [
            f"Published to crm.segment_members with model v{published['model_version']} "
            f"(scored in {published['score_shards']} shards)",
            _table(["segment", "users", "rows"], rows),
        ]
        offers = published.get("offers")
        if offers:
            targeted = ", ".join(f"{k} {v:,}" for k, v in offers["users_targeted_per_segment"].items())
            arms = ", ".join(f"{k} {v:,}" for k, v in offers["users_per_arm"].items())
            out += [
                f"Offers (crm.inactive_user_offers, model v{offers['model_version']}): arms {arms}",
                f"  users targeted per segment: {targeted}",
                f"  expected reward cost {offers['expected_cost_total']:,.0f} QAR of which personalised "
                f"{offers['expected_cost_personalised']:,.0f}; "
                f"expected incremental orders {offers['expected_incremental_orders']:,.1f}",
                f"  personalised offers maximise {offers['objective']} at expected cost per user "
                + ", ".join(f"{arm} {cost:.2f}" for arm, cost in offers["expected_cost_per_user"].items()),
            ]
        if published.get("crm_segments"):
            out += ["CRM segments: " + ", ".join(f"{k} {v:,}" for k, v in published["crm_segments"].items())]
        out += [f"CSV exports: {len(published.get('exports', {}))} files in the exports folder", ""]
    if tasks:
        out += ["Tasks", _table(["task", "state", "seconds"], _task_rows(tasks))]
    return "\n".join(out)


def _task_rows(tasks: list) -> list[list]:
    """One row per task, a task group's tasks (``dbt_build.*``) as one row: its task count, its state when
    they all share it (else the count per state), the sum of their seconds."""
    groups: dict[str, list] = {}
    for task in tasks:
        groups.setdefault(task.task_id.split(".", 1)[0], []).append(task)
    rows = []
    for name, members in groups.items():
        seconds = sum(t.seconds or 0.0 for t in members)
        states = Counter(t.state for t in members)
        if len(members) == 1 and "." not in members[0].task_id:
            rows.append([name, members[0].state, "" if members[0].seconds is None else f"{seconds:.1f}"])
        else:
            state = next(iter(states)) if len(states) == 1 else ", ".join(f"{n} {s}" for s, n in states.most_common())
            rows.append([f"{name} ({len(members)} tasks)", state, f"{seconds:.1f}"])
    return rows


def key_figure(step: str, summary: dict) -> str:
    """The one figure ``rekindle run`` prints beside a task as it ends, from the summary the step recorded."""
    if step == "load_events":
        tables = summary.get("tables", [])
        loaded = sum(t["rows_loaded"] for t in tables)
        quarantined = sum(t["rows_quarantined"] for t in tables)
        figure = f"{loaded:,} rows loaded from {summary.get('files', 0)} files"
        return figure + (f", {quarantined:,} quarantined" if quarantined else "")
    if step in ("check_raw_quality", "check_mart_quality"):
        return f"{summary['expectations']} expectations met"
    if step == "build_marts":
        return ", ".join(f"{k} {v}" for k, v in summary.get("dbt", {}).items())
    if step == "train_ranker":
        per_mode = ", ".join(f"{mode} {metrics['ndcg@10']:.4f}" for mode, metrics in summary["metrics"].items())
        return f"ndcg@10 {per_mode}; registered v{summary['version']}, champion v{summary['champion_version']}"
    if step == "train_offer_model":
        if summary.get("skipped"):
            return f"skipped: {summary['skipped']}"
        m = summary["metrics"]
        return f"policy value {m['policy_value']:.1f} QAR/user (best uniform offer {m['best_uniform_value']:.1f})"
    if step.startswith("score_shard["):
        return (
            f"{summary['users']:,} users scored (shard {summary['shard'] + 1} of {summary['shards']}), "
            f"model v{summary['model_version']}"
        )
    if step == "publish_segments":
        users = sum(summary.get("users_per_segment", {}).values())
        return f"{users:,} users published, {len(summary.get('exports', {}))} CSV exports"
    if step == "prepare_warehouse":
        return "warehouse ready"
    return ""


def print_summary(settings: Settings, run_date: date, state: str, tasks: list, total_seconds: float) -> None:
    from ml.pipeline.tasks import step_summaries

    # Only what this run did: a step that failed or never ran today must not show yesterday's figures.
    succeeded = {t.task_id for t in tasks if t.state == "success"}
    steps = {row["step"]: row["summary"] for row in step_summaries(settings, run_date) if row["step"] in succeeded}
    span = tasks_span_seconds(tasks)
    tasks_took = f" (the DAG's tasks {span:.0f}s, from the first start to the last end)" if span is not None else ""
    print()
    print(f"=== reengagement_daily {run_date}: {state} in {total_seconds:.0f}s{tasks_took} ===")
    print(render(steps, tasks))
