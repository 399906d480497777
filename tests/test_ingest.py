"""Ingestion into raw.*: typing, quarantine with reasons, idempotency, schema drift, every file format."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from ml import ingest

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)

BAD_EVENTS_CSV = """event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties
e1,1,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,{}
e1,1,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,{}
e2,abc,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,
e3,2,checkout_completed,2030-01-01T10:00:00Z,5,Foo,25.5,ios,Z1,
e4,2,checkout_completed,2026-11-20T10:00:00Z,5,Foo,-3,ios,Z1,
e5,2,app_opened,2026-11-20T11:00:00+03:00,,,,android,Z1,"{""screen"": ""home""}"
e6,2,teleported,2026-11-20T11:00:00Z,,,,ios,Z1,
e7,,app_opened,2026-11-20T11:00:00Z,,,,ios,Z1,
e8,3,app_opened,not-a-time,,,,ios,Z1,
e9,3,checkout_completed,2026-11-20T12:00:00Z,,,30,ios,Z1,
e10,3,app_opened,2026-11-20T12:00:00Z,,,,ios,Z1,[1 2
"""


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_load(warehouse_url, tmp_path):
    path = tmp_path / "events_2026-11-20.csv"
    path.write_text(BAD_EVENTS_CSV)

    [result] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert (result.rows_read, result.rows_loaded, result.rows_duplicate, result.rows_quarantined) == (11, 2, 1, 8)
    assert _rows(warehouse_url, "SELECT event_id FROM raw.events ORDER BY event_id") == [("e1",), ("e5",)]
    reasons = dict(_rows(warehouse_url, "SELECT record->>'event_id', reason FROM raw.quarantine"))
    assert reasons == {
        "e2": "user_id is not an integer",
        "e3": "event_time in the future",
        "e4": "negative order_total",
        "e6": "unknown event_type",
        "e7": "missing user_id",
        "e8": "event_time is not a timestamp",
        "e9": "checkout without merchant_id",
        "e10": "properties is not a JSON object",
    }
    assert {r[0] for r in _rows(warehouse_url, "SELECT source_file FROM raw.quarantine")} == {str(path.resolve())}
    # Offsets are converted, JSON is kept as JSON.
    [(event_time, properties)] = _rows(warehouse_url, "SELECT event_time, properties FROM raw.events WHERE event_id = 'e5'")
    assert event_time == datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
    assert properties == {"screen": "home"}


def test_loading_the_same_file_twice_changes_nothing(warehouse_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(BAD_EVENTS_CSV)
    ingest.ingest_path(warehouse_url, path, now=NOW)
    before = _rows(warehouse_url, "SELECT count(*), (SELECT count(*) FROM raw.quarantine) FROM raw.events")

    [again] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert again.rows_loaded == 0 and again.rows_duplicate == 3
    assert _rows(warehouse_url, "SELECT count(*), (SELECT count(*) FROM raw.quarantine) FROM raw.events") == before


def test_schema_drift_is_a_clear_error_and_loads_nothing(warehouse_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,user,event_type,event_time\ne1,1,app_opened,2026-11-20T10:00:00Z\n")

    with pytest.raises(ingest.SchemaDriftError, match="required column\\(s\\) missing: user_id"):
        ingest.ingest_path(warehouse_url, path, now=NOW)

    assert _rows(warehouse_url, "SELECT count(*) FROM raw.events") == [(0,)]


def test_parquet_and_json_lines_drop_folder(warehouse_url, tmp_path):
    users = pd.DataFrame(
        {
            "user_id": [1, 2],
            "signup_at": pd.to_datetime(["2025-01-01", "2026-11-01"], utc=True),
            "platform": ["ios", "web"],
            "home_zone": ["Z1", "Z2"],
            "marketing_opt_in": [True, False],
        }
    )
    users.to_parquet(tmp_path / "users.parquet")
    lines = [
        {"campaign_id": "c1", "user_id": 1, "sent_at": "2026-11-10T09:00:00Z", "event_type": "cashback", "reward_size": 10, "assignment": "treatment"},
        {"campaign_id": "c1", "user_id": 2, "sent_at": "2026-11-10T09:00:00Z", "event_type": "none", "reward_size": 0, "assignment": "holdout"},
        {"campaign_id": "c1", "user_id": 3, "sent_at": "2026-11-10T09:00:00Z", "event_type": "lottery", "reward_size": 5, "assignment": "treatment"},
    ]
    (tmp_path / "campaign_exposures.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n{broken\n")
    (tmp_path / "notes.txt").write_text("not a contract file")

    results = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert [(r.table, r.rows_loaded, r.rows_quarantined) for r in results] == [
        ("users", 2, 0),
        ("campaign_exposures", 2, 2),
    ]
    assert _rows(warehouse_url, "SELECT user_id, marketing_opt_in FROM raw.users ORDER BY 1") == [(1, True), (2, False)]
    assert sorted(r[0] for r in _rows(warehouse_url, "SELECT reason FROM raw.quarantine")) == [
        "unknown offer event_type",
        "unparseable record",
    ]


def test_empty_file_loads_nothing_without_error(warehouse_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(BAD_EVENTS_CSV.splitlines()[0] + "\n")

    [result] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (0, 0, 0)


def test_file_names_map_to_tables():
    assert ingest.table_for_file(Path("events_2026-11-22.csv")) == "events"
    assert ingest.table_for_file(Path("campaign_exposures.parquet")) == "campaign_exposures"
    with pytest.raises(ValueError, match="cannot tell which raw table"):
        ingest.table_for_file(Path("orders.csv"))
