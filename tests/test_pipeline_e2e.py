"""The daily DAG end to end through Airflow's ``dag.test()`` on the embedded warehouse: real dbt (via Cosmos),
real GX checkpoints, a real MLflow registry, published CRM rows; re-runs and bad input."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from datetime import date, timedelta

import pandas as pd
import psycopg
import pytest
from published_state import assert_same_crm_tables, assert_same_exports, crm_tables, export_files

from ml.pipeline.airflow import run_dag_in_process
from ml.pipeline.summary import print_summary
from ml.synthetic.marketplace import generate_marketplace

RUN_DATE = date(2026, 11, 1)
DAG_ID = "reengagement_daily"


@pytest.fixture
def pipeline_settings(settings, airflow_db, monkeypatch):
    """A small marketplace in the drop folder, its users and merchants named by UUIDs (integer ids go through every
    pipeline step in tests/test_feedback_loop.py); Airflow tasks read their settings from the environment."""
    market = generate_marketplace(seed=7, days=30, end_date=RUN_DATE, n_users=700, n_merchants=90)
    market.write(settings.input_dir, ids="uuid")
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    return settings


def _crm_rows(url: str, run_date: date) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT segment, user_id, rank, merchant_id, merchant_name, score, model_version "
            "FROM crm.segment_members WHERE run_date = %s ORDER BY segment, user_id, rank",
            (run_date,),
        ).fetchall()
    return pd.DataFrame(
        rows, columns=["segment", "user_id", "rank", "merchant_id", "merchant_name", "score", "model_version"]
    )


def _states(tasks) -> dict[str, str]:
    return {t.task_id: t.state for t in tasks}


def test_daily_dag_publishes_segments_and_reruns_replace(pipeline_settings, capsys):
    url = pipeline_settings.warehouse_url

    state, tasks = run_dag_in_process(DAG_ID, RUN_DATE)

    assert state == "success", _states(tasks)
    shards = [t for t in tasks if t.task_id == "score_shard"]
    assert [t.state for t in shards] == ["success"] * pipeline_settings.score_shards == ["success"] * 4
    published = _crm_rows(url, RUN_DATE)
    assert set(published["segment"]) == {"lapsed", "dormant"}
    with psycopg.connect(url) as conn:
        expected_members = dict(
            conn.execute(
                "SELECT lifecycle_segment, count(*) FROM marts.user_segments JOIN marts.user_features USING (user_id) "
                "WHERE lifecycle_segment IN ('lapsed', 'dormant') AND marketing_opt_in GROUP BY 1"
            ).fetchall()
        )
        merchants = {m for (m,) in conn.execute("SELECT merchant_id FROM raw.merchants").fetchall()}
    assert published.groupby("segment")["user_id"].nunique().to_dict() == expected_members
    assert published.groupby("user_id")["rank"].max().max() == pipeline_settings.top_n
    assert not published.duplicated(["user_id", "merchant_id"]).any()
    assert set(published["merchant_id"]) <= merchants and published["merchant_name"].notna().all()
    assert set(published["model_version"]) == {"1"}
    with psycopg.connect(url) as conn:
        recorded = dict(
            conn.execute(
                "SELECT step, seconds FROM ops.pipeline_steps WHERE run_date = %s AND starts_with(step, 'dbt_build.')",
                (RUN_DATE,),
            ).fetchall()
        )
    # Every dbt task's seconds, beside the other steps' (the dashboard's pipeline health adds them up).
    assert set(recorded) == {t.task_id for t in tasks if t.task_id.startswith("dbt_build.")}
    assert all(seconds > 0 for seconds in recorded.values()) and len(recorded) > 10
    _assert_both_modes_published(url, published)
    _assert_published_ids_are_the_worlds_uuids(pipeline_settings)
    for segment, members in published.groupby("segment"):
        export = pd.read_csv(pipeline_settings.exports_dir / f"{segment}_{RUN_DATE}.csv")
        assert len(export) == len(members)
        assert list(export["user_id"]) == list(members["user_id"])

    with psycopg.connect(url) as conn:
        offers = pd.DataFrame(
            conn.execute(
                "SELECT user_id, segment, arm, event_type, reward_size, expected_cost, is_holdout "
                "FROM crm.inactive_user_offers WHERE run_date = %s",
                (RUN_DATE,),
            ).fetchall(),
            columns=["user_id", "segment", "arm", "event_type", "reward_size", "expected_cost", "is_holdout"],
        )
        inactive = {
            u
            for (u,) in conn.execute(
                "SELECT user_id FROM marts.user_segments JOIN marts.user_features USING (user_id) "
                "WHERE lifecycle_segment IN ('at_risk', 'lapsed', 'dormant', 'churned') AND marketing_opt_in"
            ).fetchall()
        }
    assert set(offers["user_id"]) == inactive
    assert set(offers["arm"]) == {"personalised", "non_personalised", "holdout"}
    holdout = offers[offers["is_holdout"]]
    assert (holdout["event_type"] == "none").all() and (holdout["reward_size"] == 0).all()

    print_summary(pipeline_settings, RUN_DATE, state, tasks, 0.0)
    summary = capsys.readouterr().out
    assert re.search(r"=== reengagement_daily \S+: success in 0s \(the DAG's tasks \d+s, ", summary)
    for expected in (
        "Load (raw.*)",
        "Users per lifecycle segment",
        "popularity",
        "random",
        "champion is v1",
        "Published",
        f"scored in {pipeline_settings.score_shards} shards",
        "Offer policy value",
        "best uniform offer",
        "chosen on training users",
        "Ground truth of the synthetic world",
        "oracle on the model's features",
        "right event type",
        "CRM segments",
    ):
        assert expected in summary

    # The same day again: nothing new is loaded, the models fitted from the same recipe on the same data are the
    # registered versions again, and every crm table and export file is exactly as the first run left it.
    crm_before, exports_before = crm_tables(url), export_files(pipeline_settings.exports_dir)
    with psycopg.connect(url) as conn:
        events_before = conn.execute("SELECT count(*) FROM raw.events").fetchone()[0]

    state, tasks = run_dag_in_process(DAG_ID, RUN_DATE)

    assert state == "success", _states(tasks)
    assert_same_crm_tables(crm_tables(url), crm_before)
    assert_same_exports(export_files(pipeline_settings.exports_dir), exports_before)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM raw.events").fetchone()[0] == events_before
        summaries = dict(
            conn.execute(
                "SELECT step, summary FROM ops.pipeline_steps WHERE run_date = %s AND step IN "
                "('load_events', 'train_ranker', 'train_offer_model')",
                (RUN_DATE,),
            ).fetchall()
        )
    assert sum(table["rows_loaded"] for table in summaries["load_events"]["tables"]) == 0
    for step in ("train_ranker", "train_offer_model"):
        assert summaries[step]["version"] == "1" and summaries[step]["champion_version"] == "1"
        assert summaries[step]["gate"] == "v1 is champion already: the same recipe fitted on the same data"


def _assert_both_modes_published(url: str, published: pd.DataFrame) -> None:
    """crm.recommendations holds a winback and a discovery list per user; discovery never names a merchant the
    user ordered from, winback does (favourites), and crm.segment_members carries the winback lists."""
    with psycopg.connect(url) as conn:
        recs = pd.DataFrame(
            conn.execute(
                "SELECT r.user_id, r.mode, r.rank, r.merchant_id, o.user_id IS NOT NULL AS ordered "
                "FROM crm.recommendations r LEFT JOIN marts.user_merchant_orders o USING (user_id, merchant_id) "
                "WHERE r.run_date = %s",
                (RUN_DATE,),
            ).fetchall(),
            columns=["user_id", "mode", "rank", "merchant_id", "ordered"],
        )
    assert set(recs["mode"]) == {"winback", "discovery"}
    users_per_mode = recs.groupby("mode")["user_id"].nunique()
    assert users_per_mode["winback"] == users_per_mode["discovery"]
    assert not recs.loc[recs["mode"] == "discovery", "ordered"].any()
    assert recs.loc[recs["mode"] == "winback", "ordered"].mean() > 0.1
    winback = recs[recs["mode"] == "winback"].merge(published[["user_id"]].drop_duplicates(), on="user_id")
    merged = published.merge(winback, on=["user_id", "rank"], suffixes=("", "_winback"))
    assert len(merged) == len(published) and (merged["merchant_id"] == merged["merchant_id_winback"]).all()


def _assert_published_ids_are_the_worlds_uuids(settings) -> None:
    """The world was written with UUID ids: none of its rows was quarantined for an id, and every user and merchant
    the CRM tables and the exports name is one of its UUIDs."""
    users = set(pd.read_parquet(settings.input_dir / "users.parquet")["user_id"])
    merchants = set(pd.read_parquet(settings.input_dir / "merchants.parquet")["merchant_id"])
    assert all(str(uuid.UUID(i)) == i for i in users | merchants)
    with psycopg.connect(settings.warehouse_url) as conn:
        quarantined_ids = conn.execute("SELECT count(*) FROM raw.quarantine WHERE reason ~ '(user|merchant)_id'")
        recommended = conn.execute(
            "SELECT user_id, merchant_id FROM crm.recommendations WHERE run_date = %(day)s "
            "UNION ALL SELECT user_id, merchant_id FROM crm.segment_members WHERE run_date = %(day)s",
            {"day": RUN_DATE},
        ).fetchall()
        offered = conn.execute("SELECT user_id FROM crm.inactive_user_offers WHERE run_date = %s", (RUN_DATE,))
        offered = {user_id for (user_id,) in offered.fetchall()}
        assert quarantined_ids.fetchone()[0] == 0
    assert recommended and offered
    assert {user_id for user_id, _ in recommended} | offered <= users
    assert {merchant_id for _, merchant_id in recommended} <= merchants
    exports = [pd.read_csv(path, dtype=str) for path in settings.exports_dir.glob(f"*_{RUN_DATE}.csv")]
    assert sum(len(export) for export in exports) > 0
    for export in exports:
        assert set(export["user_id"]) <= users
        for column in [c for c in export.columns if c.endswith("merchant_id")]:
            assert set(export[column].dropna()) <= merchants, column


BAD_EVENTS = """event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties
late-1,1,checkout_completed,{yesterday}T12:00:00Z,1,X,20.0,ios,Z01,{{}}
late-1,1,checkout_completed,{yesterday}T12:00:00Z,1,X,20.0,ios,Z01,{{}}
late-2,{too_long_id},checkout_completed,{yesterday}T12:00:00Z,1,X,20.0,ios,Z01,{{}}
late-3,1,checkout_completed,2099-01-01T00:00:00Z,1,X,20.0,ios,Z01,{{}}
late-4,1,checkout_completed,{yesterday}T13:00:00Z,1,X,-9.0,ios,Z01,{{}}
"""


def test_bad_input_is_quarantined_and_a_failed_gate_keeps_the_old_crm_rows(pipeline_settings):
    url = pipeline_settings.warehouse_url
    state, tasks = run_dag_in_process(DAG_ID, RUN_DATE)
    assert state == "success", _states(tasks)
    before = _crm_rows(url, RUN_DATE)

    yesterday = RUN_DATE - timedelta(days=1)
    (pipeline_settings.input_dir / "events_late.csv").write_text(
        BAD_EVENTS.format(yesterday=yesterday, too_long_id="u" * 129)
    )
    with psycopg.connect(url) as conn:
        # A loader that bypassed validation wrote impossible rows straight into raw.events.
        conn.execute(
            """INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total, source_file)
               VALUES ('rogue-1', 1, 'checkout_completed', now() + interval '10 days', 1, -50, 'rogue_loader')"""
        )

    state, tasks = run_dag_in_process(DAG_ID, RUN_DATE)

    states = _states(tasks)
    assert state == "failed"
    assert states["load_events"] == "success"
    assert states["check_raw_quality"] == "failed"
    assert states["publish_segments"] != "success"
    with psycopg.connect(url) as conn:
        quarantined = dict(
            conn.execute(
                "SELECT record->>'event_id', reason FROM raw.quarantine WHERE source_file LIKE %s",
                ("%events_late.csv",),
            ).fetchall()
        )
        loaded = conn.execute("SELECT count(*) FROM raw.events WHERE event_id = 'late-1'").fetchone()[0]
    assert quarantined == {
        "late-2": "user_id is longer than 128 characters",
        "late-3": "event_time in the future",
        "late-4": "negative order_total",
    }
    assert loaded == 1
    after = _crm_rows(url, RUN_DATE)
    assert after.equals(before)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_rekindle_run_before_its_next_task(pipeline_settings, stop):
    """``dag.test`` turns an interrupt into the running task's failure and goes on with the tasks that do not depend
    on it, and gives every task a SIGTERM handler that does nothing."""
    run = subprocess.Popen(
        [sys.executable, "-m", "ml.cli", "run", "--date", RUN_DATE.isoformat()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background process ignores SIGINT unless it says otherwise; a terminal's foreground one does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    shown = []
    for line in run.stdout:
        shown.append(line)
        if "check_raw_quality" in line:  # the view prints a task as it ends: dbt's models are building now
            break
    run.send_signal(stop)
    remaining, errors = run.communicate(timeout=60)

    assert run.returncode == 130, "".join(shown) + remaining + errors
    assert f"rekindle run {RUN_DATE}: interrupted." in errors and "Traceback" not in errors
    assert "check_mart_quality" not in remaining and "train_ranker" not in remaining
    with psycopg.connect(pipeline_settings.warehouse_url) as conn:
        steps = {
            step for (step,) in conn.execute("SELECT step FROM ops.pipeline_steps WHERE run_date = %s", (RUN_DATE,))
        }
    assert steps == {"prepare_warehouse", "load_events", "check_raw_quality"}
