"""Consent, erasure and minimal data end to end: the daily DAG through Airflow's ``dag.test()`` on the embedded
warehouse (real dbt, GX, MLflow registry, publish, exports). Opt-out events are honoured by the publication;
``rekindle forget``, the original drop folder loaded again and the DAG run again leave the forgotten user nowhere (any
text column of any table of any schema, any file under the home but the drop folder: exports, MLflow artifacts, GX
results and data docs, logs, Airflow's state); no export or log of the run carries the PII planted in the events'
properties."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from psycopg import sql

from ml.crm.segments import SEGMENTS
from ml.recommend.ranker import REASONS
from ml.synthetic.marketplace import generate_marketplace
from ml.warehouse import ingest
from ml.warehouse.contract import CHECKOUT, MARKETING_OPT_OUT, PERSONALISATION_OPT_OUT

RUN_DATE = date(2026, 11, 1)
DAG_ID = "reengagement_daily"
# PII-looking strings an app might put in an event's free-text properties.
PLANTED_PII = ("jane.doe@example.com", "+974 5555 1234", "Jane Quillfeather")
MARKETING_TABLES = ("crm.segment_members", "crm.inactive_user_offers", *(f"crm.{name}" for name in SEGMENTS))


@pytest.fixture
def pipeline_settings(settings, airflow_db, monkeypatch):
    """A small UUID-id marketplace in the drop folder; every tenth event carries an e-mail, a phone number and a
    name in its properties."""
    market = generate_marketplace(seed=7, days=30, end_date=RUN_DATE, n_users=700, n_merchants=90)
    planted = json.dumps({"email": PLANTED_PII[0], "phone": PLANTED_PII[1], "name": PLANTED_PII[2]})
    properties = market.events["properties"].astype(object).to_numpy(copy=True)
    properties[::10] = planted
    market.events["properties"] = properties
    market.events = pd.concat([market.events, _opt_outs(market)], ignore_index=True)
    market.write(settings.input_dir, ids="uuid")
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", settings.warehouse_url)
    # Cosmos lists the dbt project while the DAG file is parsed; on a busy machine that outlasts the default 30 s.
    monkeypatch.setenv("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "600")
    return settings


def _opt_outs(market) -> pd.DataFrame:
    """Two opted-in users whose last order is 15 to 25 days before the run (so inactive: each would get an offer)
    withdraw consent two days before the run: the first to marketing, the second to personalisation."""
    checkouts = market.events[market.events["event_type"] == CHECKOUT]
    last = checkouts.groupby("user_id")["event_time"].max()
    days_ago = (pd.Timestamp(RUN_DATE, tz="UTC") - last).dt.days
    opted_in = set(market.users.loc[market.users["marketing_opt_in"], "user_id"])
    first, second = [u for u in days_ago[(days_ago >= 15) & (days_ago <= 25)].index if u in opted_in][:2]
    rows = market.events[market.events["user_id"].isin([first, second])].drop_duplicates("user_id").copy()
    rows = rows.set_index("user_id").loc[[first, second]].reset_index()
    return rows.assign(
        event_id=["opt-out-1", "opt-out-2"],
        event_type=[MARKETING_OPT_OUT, PERSONALISATION_OPT_OUT],
        event_time=pd.Timestamp(RUN_DATE, tz="UTC") - pd.Timedelta(days=2),
        merchant_id=pd.array([None, None], dtype="Int64"),
        merchant_name=None,
        order_total=float("nan"),
        properties="{}",
    )[market.events.columns]


def _run_dag(settings) -> None:
    """The daily DAG as a user runs it: ``rekindle run`` in its own process, its whole output in ``<home>/logs``
    (in this process pytest's capture would take the output the log file gets)."""
    run = subprocess.run(
        [sys.executable, "-m", "ml.cli", "run", "--date", RUN_DATE.isoformat()], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _tables_naming(url: str, needle: str) -> dict[str, int]:
    """Rows per ``schema.table.column`` whose text (any text, varchar or JSON column, of every table of every
    schema) contains ``needle``."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            """SELECT c.table_schema, c.table_name, c.column_name
               FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
               WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
                 AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"""
        ).fetchall()
        found = {}
        for schema, table, column in columns:
            rows = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE strpos({}::text, %s) > 0").format(
                    sql.Identifier(schema, table), sql.Identifier(column)
                ),
                (needle,),
            ).fetchone()[0]
            if rows:
                found[f"{schema}.{table}.{column}"] = rows
    return found


def _files_naming(folder, needle: str) -> list[str]:
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and needle.encode() in path.read_bytes()
    )


def _home_files_naming(settings, needle: str) -> list[str]:
    """Every file under the home (exports, MLflow artifacts, GX results, logs, ...) and Airflow's home
    (``<home>/airflow`` in ``rekindle run``, the session's throw-away one here) that contains ``needle``; but for the
    embedded warehouse's data directory (its rows are checked through SQL) and the drop folder (the source system's
    files, which erasure leaves to their owner: the tombstones keep them from loading the user again)."""
    skipped = (settings.warehouse_dir, settings.input_dir)
    found = [
        str(settings.home / place)
        for place in _files_naming(settings.home, needle)
        if not any((settings.home / place).is_relative_to(folder) for folder in skipped)
    ]
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    return found + [str(airflow_home / place) for place in _files_naming(airflow_home, needle)]


def _assert_consent_is_honoured(settings) -> None:
    """The marketing opt-out reaches no marketing table or export though raw.users says opted in; the
    personalisation opt-out keeps the user's offer but gives them the zone's popular merchants in both modes."""
    url = settings.warehouse_url
    opted_out_at = pd.Timestamp(RUN_DATE, tz="UTC") - pd.Timedelta(days=2)
    with psycopg.connect(url) as conn:
        by_type = dict(
            conn.execute(
                "SELECT event_type, user_id FROM raw.events WHERE event_type IN (%s, %s)",
                (MARKETING_OPT_OUT, PERSONALISATION_OPT_OUT),
            ).fetchall()
        )
        no_marketing, no_personalisation = by_type[MARKETING_OPT_OUT], by_type[PERSONALISATION_OPT_OUT]
        consent = {
            user_id: row
            for user_id, *row in conn.execute(
                "SELECT f.user_id, u.marketing_opt_in, f.marketing_opt_in, f.marketing_opted_out_at, "
                "f.personalisation_opt_out, f.personalisation_opted_out_at "
                "FROM marts.user_features f JOIN raw.users u USING (user_id) WHERE f.user_id IN (%s, %s)",
                (no_marketing, no_personalisation),
            ).fetchall()
        }
        assert consent[no_marketing] == [True, False, opted_out_at, False, None]
        assert consent[no_personalisation] == [True, True, None, True, opted_out_at]
        for table in MARKETING_TABLES:
            rows = conn.execute(
                sql.SQL("SELECT user_id FROM {} WHERE run_date = %s AND user_id IN (%s, %s)").format(
                    sql.Identifier(*table.split("."))
                ),
                (RUN_DATE, no_marketing, no_personalisation),
            ).fetchall()
            assert (no_marketing,) not in rows, table
        assert (
            conn.execute(
                "SELECT count(*) FROM crm.inactive_user_offers WHERE run_date = %s AND user_id = %s",
                (RUN_DATE, no_personalisation),
            ).fetchone()[0]
            == 1
        )
        lists = pd.DataFrame(
            conn.execute(
                "SELECT mode, rank, merchant_id, reason FROM crm.recommendations "
                "WHERE run_date = %s AND user_id = %s ORDER BY mode, rank",
                (RUN_DATE, no_personalisation),
            ).fetchall(),
            columns=["mode", "rank", "merchant_id", "reason"],
        )
    winback, discovery = (lists[lists["mode"] == mode]["merchant_id"].tolist() for mode in ("winback", "discovery"))
    assert winback and winback == discovery
    assert set(lists["reason"]) <= {REASONS["zone"], REASONS["popular"]}
    assert _files_naming(settings.exports_dir, no_marketing) == []


def _victim(url: str) -> str:
    """A user in every kind of table: scored segment member, offered, exposed to a campaign, with orders."""
    with psycopg.connect(url) as conn:
        [(user_id,)] = conn.execute(
            """SELECT m.user_id FROM crm.segment_members m
               JOIN crm.inactive_user_offers o USING (run_date, user_id)
               WHERE m.run_date = %s
                 AND EXISTS (SELECT FROM raw.campaign_exposures e WHERE e.user_id = m.user_id)
                 AND EXISTS (SELECT FROM marts.orders r WHERE r.user_id = m.user_id)
                 AND EXISTS (SELECT FROM crm.recommendations r WHERE r.user_id = m.user_id)
               ORDER BY m.user_id LIMIT 1""",
            (RUN_DATE,),
        ).fetchall()
    return user_id


def test_a_forgotten_user_stays_gone_after_the_files_are_loaded_again(pipeline_settings, tmp_path):
    settings = pipeline_settings
    url = settings.warehouse_url
    _run_dag(settings)
    _assert_consent_is_honoured(settings)
    victim = _victim(url)
    bad_row = tmp_path / "events_bad.csv"  # and a quarantined row naming them
    bad_row.write_text(f"event_id,user_id,event_type,event_time\nbad-1,{victim},teleported,2026-10-30T12:00:00Z\n")
    ingest.ingest_path(url, bad_row)
    everywhere = _tables_naming(url, victim)
    for table in ("raw.events", "raw.users", "raw.campaign_exposures", "raw.quarantine", "crm.segment_members"):
        assert any(place.startswith(table + ".") for place in everywhere), table
    assert any(place.startswith("marts.") for place in everywhere)
    assert _files_naming(settings.exports_dir, victim)
    assert _files_naming(settings.mlflow_artifacts_dir, victim)
    assert {"exports", "mlruns", "gx", "logs"} <= {path.name for path in settings.home.iterdir()}

    # The request as a spreadsheet saves it: a byte-order mark, Windows line ends, a user_id column.
    request = tmp_path / "erasure_request.csv"
    request.write_bytes(f"\ufeffuser_id,received\r\n{victim},2026-11-01\r\n".encode())
    forget = subprocess.run(
        [sys.executable, "-m", "ml.cli", "forget", "--file", str(request), "--request-id", "e2e-request"],
        capture_output=True,
        text=True,
    )

    assert forget.returncode == 0, forget.stderr
    assert "1 user(s) forgotten" in forget.stdout and victim not in forget.stdout + forget.stderr
    with psycopg.connect(url) as conn:
        audit = dict(
            conn.execute("SELECT location, rows_removed FROM ops.erasure_audit WHERE request_id = 'e2e-request'")
        )
    assert audit["raw.events"] > 0 and audit["raw.quarantine"] == 1
    cleaned = [place for place in audit if place.startswith("mlflow:") and "->" in place]
    assert cleaned and "champion" in cleaned[0]
    assert _tables_naming(url, victim) == {}
    assert _home_files_naming(settings, victim) == []

    # The original drop folder again (its files changed on disk, so every one is read), and the DAG again.
    for file in settings.input_dir.iterdir():
        if file.is_file():
            os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    _run_dag(settings)

    assert _tables_naming(url, victim) == {}
    assert _home_files_naming(settings, victim) == []
    with psycopg.connect(url) as conn:
        [(load_summary,)] = conn.execute(
            "SELECT summary FROM ops.pipeline_steps WHERE run_date = %s AND step = 'load_events'", (RUN_DATE,)
        ).fetchall()
    assert sum(table["rows_erased"] for table in load_summary["tables"]) > 0

    # Minimal data: the exports and every log carry ids, never the PII planted in the properties.
    run_log = (settings.home / "logs" / f"{DAG_ID}_{RUN_DATE}.log").read_text()
    assert "publish_segments" in run_log and "[DAG TEST]" in run_log  # both runs' whole output was scanned
    for folder in (settings.exports_dir, settings.home / "logs"):
        assert any(folder.rglob("*")), folder
        for pii in PLANTED_PII:
            assert _files_naming(folder, pii) == [], (folder, pii)
