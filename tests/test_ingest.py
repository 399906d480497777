"""Ingestion into raw.*: typing, quarantine with reasons, idempotency, schema drift, every file format."""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.runtime import PROGRESS_LOGGER
from ml.warehouse import ingest

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

BAD_EVENTS_CSV = """event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties
e1,1,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,{}
e1,1,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,{}
e2,LONG_ID,checkout_completed,2026-11-20T10:00:00Z,5,Foo,25.5,ios,Z1,
e3,2,checkout_completed,2030-01-01T10:00:00Z,5,Foo,25.5,ios,Z1,
e4,2,checkout_completed,2026-11-20T10:00:00Z,5,Foo,-3,ios,Z1,
e5,2,app_opened,2026-11-20T11:00:00+03:00,,,,android,Z1,"{""screen"": ""home""}"
e6,2,teleported,2026-11-20T11:00:00Z,,,,ios,Z1,
e7,,app_opened,2026-11-20T11:00:00Z,,,,ios,Z1,
e8,3,app_opened,not-a-time,,,,ios,Z1,
e9,3,checkout_completed,2026-11-20T12:00:00Z,,,30,ios,Z1,
e10,3,app_opened,2026-11-20T12:00:00Z,,,,ios,Z1,[1 2
""".replace("LONG_ID", "u" * 129)


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
        "e2": "user_id is longer than 128 characters",
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
    [(event_time, properties)] = _rows(
        warehouse_url, "SELECT event_time, properties FROM raw.events WHERE event_id = 'e5'"
    )
    assert event_time == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert properties == {"screen": "home"}


def test_loading_a_folder_again_skips_the_files_already_loaded(warehouse_url, tmp_path, caplog):
    (tmp_path / "events_a.csv").write_text(BAD_EVENTS_CSV)
    (tmp_path / "events_b.csv").write_text(BAD_EVENTS_CSV.replace("e1,", "b1,"))
    first = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)
    counts = "SELECT count(*), (SELECT count(*) FROM raw.quarantine) FROM raw.events"
    before = _rows(warehouse_url, counts)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        again = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert again == []
    assert caplog.messages == ["skipped 2 file(s) already loaded and unchanged"]
    assert _rows(warehouse_url, counts) == before
    assert _rows(
        warehouse_url, "SELECT source_file, table_name, rows_read, rows_loaded FROM raw.ingested_files ORDER BY 1"
    ) == [(r.source_file, "events", r.rows_read, r.rows_loaded) for r in first]


def test_a_changed_file_loads_again_its_new_rows_only(warehouse_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(BAD_EVENTS_CSV)
    ingest.ingest_path(warehouse_url, path, now=NOW)
    quarantined = _rows(warehouse_url, "SELECT count(*) FROM raw.quarantine")

    path.write_text(BAD_EVENTS_CSV + "e11,4,app_opened,2026-11-21T10:00:00Z,,,,ios,Z1,\n")
    [again] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert (again.rows_read, again.rows_loaded, again.rows_duplicate, again.rows_quarantined) == (12, 1, 3, 8)
    assert _rows(warehouse_url, "SELECT event_id FROM raw.events ORDER BY event_id") == [("e1",), ("e11",), ("e5",)]
    assert _rows(warehouse_url, "SELECT count(*) FROM raw.quarantine") == quarantined
    stat = path.stat()
    assert _rows(warehouse_url, "SELECT size_bytes, modified_ns, rows_read, rows_loaded FROM raw.ingested_files") == [
        (stat.st_size, stat.st_mtime_ns, 12, 1)
    ]

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    [touched] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert (touched.rows_loaded, touched.rows_duplicate) == (0, 4)
    assert ingest.ingest_path(warehouse_url, path, now=NOW) == []


def test_schema_drift_is_a_clear_error_and_loads_nothing(warehouse_url, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("event_id,user,event_type,event_time\ne1,1,app_opened,2026-11-20T10:00:00Z\n")

    with pytest.raises(ingest.SchemaDriftError, match="required column\\(s\\) missing: user_id"):
        ingest.ingest_path(warehouse_url, path, now=NOW)

    assert _rows(warehouse_url, "SELECT count(*) FROM raw.events") == [(0,)]
    assert _rows(warehouse_url, "SELECT count(*) FROM raw.ingested_files") == [(0,)]
    # Not recorded, so the corrected file loads on the next run.
    path.write_text(BAD_EVENTS_CSV.splitlines()[0] + "\n" + "e1,1,app_opened,2026-11-20T10:00:00Z,,,,ios,Z1,\n")
    [result] = ingest.ingest_path(warehouse_url, path, now=NOW)
    assert result.rows_loaded == 1


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
        {
            "campaign_id": "c1",
            "user_id": 1,
            "sent_at": "2026-11-10T09:00:00Z",
            "event_type": "cashback",
            "reward_size": 10,
            "assignment": "treatment",
        },
        {
            "campaign_id": "c1",
            "user_id": 2,
            "sent_at": "2026-11-10T09:00:00Z",
            "event_type": "none",
            "reward_size": 0,
            "assignment": "holdout",
        },
        {
            "campaign_id": "c1",
            "user_id": 3,
            "sent_at": "2026-11-10T09:00:00Z",
            "event_type": "lottery",
            "reward_size": 5,
            "assignment": "treatment",
        },
    ]
    (tmp_path / "campaign_exposures.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    (tmp_path / "notes.txt").write_text("not a contract file")

    results = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert [(r.table, r.rows_loaded, r.rows_quarantined) for r in results] == [
        ("users", 2, 0),
        ("campaign_exposures", 2, 2),
    ]
    assert _rows(warehouse_url, "SELECT user_id, marketing_opt_in FROM raw.users ORDER BY 1") == [
        ("1", True),
        ("2", False),
    ]
    assert sorted(r[0] for r in _rows(warehouse_url, "SELECT reason FROM raw.quarantine")) == [
        "unknown offer event_type",
        "unparseable record",
    ]


def test_bytes_that_are_not_utf8_in_a_parquet_binary_column_are_quarantined(warehouse_url, tmp_path):
    events = pa.table(
        {
            "event_id": ["b1", "b2", "b3"],
            "user_id": ["1", "1", "1"],
            "event_type": ["app_opened"] * 3,
            "event_time": ["2026-11-20T10:00:00Z"] * 3,
            "zone": pa.array([b"Z1", b"\xff\xfe", b" "], pa.binary()),
        }
    )
    pq.write_table(events, tmp_path / "events.parquet")

    [result] = ingest.ingest_path(warehouse_url, tmp_path / "events.parquet", now=NOW)

    assert (result.rows_loaded, result.rows_quarantined) == (2, 1)
    assert _rows(warehouse_url, "SELECT event_id, zone FROM raw.events ORDER BY 1") == [("b1", "Z1"), ("b3", None)]
    assert _rows(warehouse_url, "SELECT row_number, reason, record->>'zone' FROM raw.quarantine") == [
        (2, "zone is not UTF-8 text", "\\xff\\xfe")
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [("events.csv", BAD_EVENTS_CSV.splitlines()[0] + "\n"), ("events.csv", ""), ("events.jsonl", "\n\n")],
    ids=["a header only", "no bytes", "blank lines"],
)
def test_an_empty_file_of_a_day_without_events_loads_nothing_without_error(warehouse_url, tmp_path, name, text):
    (tmp_path / name).write_text(text)

    [result] = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (0, 0, 0)
    # Recorded like any loaded file: the next run skips it.
    assert ingest.ingest_path(warehouse_url, tmp_path, now=NOW) == []


GOOD_EVENTS_CSV = "\n".join(BAD_EVENTS_CSV.splitlines()[i] for i in (0, 1, 6)) + "\n"


@pytest.mark.parametrize(
    ("name", "separator", "encoding"),
    [
        ("events.csv", ";", "utf-8"),
        ("events.csv", "\t", "utf-8"),
        ("events.csv", ",", "utf-8-sig"),
        ("events.csv.gz", ";", "utf-8-sig"),
    ],
    ids=["semicolons", "tabs", "a byte-order mark", "gzipped semicolons with a byte-order mark"],
)
def test_a_csv_saved_by_a_spreadsheet_loads_as_the_same_rows(warehouse_url, tmp_path, name, separator, encoding):
    frame = pd.read_csv(io.StringIO(GOOD_EVENTS_CSV), dtype=str, keep_default_na=False)
    frame.to_csv(tmp_path / name, sep=separator, index=False, encoding=encoding)

    [result] = ingest.ingest_path(warehouse_url, tmp_path / name, now=NOW)

    assert (result.rows_loaded, result.rows_quarantined) == (2, 0)
    assert _rows(warehouse_url, "SELECT event_id, user_id, properties->>'screen' FROM raw.events ORDER BY 1") == [
        ("e1", "1", None),
        ("e5", "2", "home"),
    ]


@pytest.mark.parametrize("name", ["events.csv", "events.jsonl"])
def test_a_file_that_is_not_utf8_is_refused_naming_it(warehouse_url, tmp_path, name):
    rows = GOOD_EVENTS_CSV.replace("Foo", "Caf\u00e9")
    if name.endswith(".jsonl"):
        rows = pd.read_csv(io.StringIO(rows), dtype=str).to_json(orient="records", lines=True, force_ascii=False)
    (tmp_path / name).write_bytes(rows.encode("latin-1"))

    with pytest.raises(ValueError, match=f"{name} is not UTF-8 text \\(invalid continuation byte at byte \\d+\\)"):
        ingest.ingest_path(warehouse_url, tmp_path, now=NOW)
    assert _rows(warehouse_url, "SELECT count(*) FROM raw.ingested_files") == [(0,)]


def test_file_names_map_to_tables():
    assert ingest.table_for_file(Path("events_2026-11-22.csv")) == "events"
    assert ingest.table_for_file(Path("campaign_exposures.parquet")) == "campaign_exposures"
    with pytest.raises(ValueError, match="cannot tell which raw table"):
        ingest.table_for_file(Path("orders.csv"))


def test_duplicates_within_a_file_and_across_files_load_once_first_copy_wins(warehouse_url, tmp_path):
    header = "event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties\n"
    first = tmp_path / "events_2026-11-20.csv"
    first.write_text(
        header
        + "k2,1,app_opened,2026-11-20T10:00:00.123456Z,,,,ios,Z1,\n"
        + "k1,1,checkout_completed,2026-11-20T11:00:00Z,5,Foo,10,ios,Z1,\n"
        + "k1,1,checkout_completed,2026-11-20T11:00:00Z,5,Foo,99,ios,Z1,\n"
    )
    second = tmp_path / "events_2026-11-21.csv"
    second.write_text(
        header
        + "k3,2,app_opened,2026-11-21T09:00:00Z,,,,web,Z2,\n"
        + "k2,9,app_opened,2026-11-21T09:00:00Z,,,,web,Z2,\n"
    )

    results = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    counts = [(r.rows_read, r.rows_loaded, r.rows_duplicate, r.rows_quarantined) for r in results]
    assert counts == [(3, 2, 1, 0), (2, 1, 1, 0)]
    assert _rows(warehouse_url, "SELECT event_id, user_id, order_total, source_file FROM raw.events ORDER BY 1") == [
        ("k1", "1", Decimal("10.00"), str(first.resolve())),
        ("k2", "1", None, str(first.resolve())),
        ("k3", "2", None, str(second.resolve())),
    ]
    [(event_time,)] = _rows(warehouse_url, "SELECT event_time FROM raw.events WHERE event_id = 'k2'")
    assert event_time == datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)


def test_composite_keys_are_matched_on_every_column(warehouse_url, tmp_path):
    header = "campaign_id,user_id,sent_at,event_type,reward_size,assignment\n"
    (tmp_path / "campaign_exposures_1.csv").write_text(header + "c1,1,2026-11-10T09:00:00Z,cashback,10,treatment\n")
    (tmp_path / "campaign_exposures_2.csv").write_text(
        header
        + "c1,1,2026-11-10T09:00:00Z,cashback,10,treatment\n"
        + "c1,2,2026-11-10T09:00:00Z,none,0,holdout\n"
        + "c2,1,2026-11-12T09:00:00Z,none,0,holdout\n"
    )

    results = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert [(r.rows_loaded, r.rows_duplicate) for r in results] == [(1, 0), (2, 1)]
    assert _rows(warehouse_url, "SELECT campaign_id, user_id FROM raw.campaign_exposures ORDER BY 1, 2") == [
        ("c1", "1"),
        ("c1", "2"),
        ("c2", "1"),
    ]


def test_json_lines_events_with_nested_properties(warehouse_url, tmp_path):
    base = {"user_id": 1, "event_type": "app_opened", "event_time": "2026-11-20T10:00:00Z", "zone": 7}
    lines = [
        {**base, "event_id": "j1", "properties": {"screen": "home"}},
        {**base, "event_id": "j2", "properties": '{"screen": "cart"}'},
        {**base, "event_id": "j3", "properties": [1, 2]},
        {**base, "event_id": "j4"},
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    [result] = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert (result.rows_loaded, result.rows_quarantined) == (3, 1)
    assert _rows(warehouse_url, "SELECT event_id, properties, zone FROM raw.events ORDER BY 1") == [
        ("j1", {"screen": "home"}, "7"),
        ("j2", {"screen": "cart"}, "7"),
        ("j4", {}, "7"),
    ]
    assert _rows(warehouse_url, "SELECT reason, record->'properties' FROM raw.quarantine") == [
        ("properties is not a JSON object", [1, 2])
    ]


def test_each_file_logs_and_the_summary_carries_its_rate(warehouse_url, tmp_path, caplog):
    (tmp_path / "events_a.csv").write_text(BAD_EVENTS_CSV)
    (tmp_path / "events_b.csv").write_text(BAD_EVENTS_CSV)

    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        results = ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert all(r.seconds > 0 and r.rows_per_second == round(r.rows_read / r.seconds) for r in results)
    lines = [m for m in caplog.messages if m.startswith("events_")]
    assert len(lines) == 2 and all(" rows/s)" in m and "11 read, " in m for m in lines)
    [summary] = ingest.summarise(results).to_dict("records")
    assert summary["rows_read"] == 22 and summary["rows_duplicate"] == 1 + 3
    assert summary["seconds"] > 0 and summary["rows_per_second"] > 0
    assert {"seconds", "rows_per_second"} <= set(ingest.summarise([]).columns)


def test_raw_schema_upgrades_an_older_events_table_in_place(warehouse_url):
    with psycopg.connect(warehouse_url) as conn:
        ingest.ensure_raw_schema(conn)
        # as an older release left it: a b-tree on event_time, no load_xid
        conn.execute("DROP INDEX raw.events_event_time_brin")
        conn.execute("CREATE INDEX events_event_time_idx ON raw.events (event_time)")
        conn.execute("ALTER TABLE raw.events DROP COLUMN load_xid")
        conn.execute(
            "INSERT INTO raw.events (event_id, user_id, event_type, event_time, source_file)"
            " VALUES ('old', 'u1', 'app_opened', now(), 'old release')"
        )
        ingest.ensure_raw_schema(conn)
        indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events' ORDER BY 1").fetchall()
        [(load_xid,)] = conn.execute("SELECT load_xid FROM raw.events WHERE event_id = 'old'").fetchall()
    assert indexes == [("events_event_time_brin",), ("events_load_xid_brin",), ("events_pkey",)]
    assert load_xid > 0


def _app_opens(path: Path, first_id: int, rows: int) -> Path:
    ids = range(first_id, first_id + rows)
    pd.DataFrame(
        {
            "event_id": [f"open-{i}" for i in ids],
            "user_id": [str(i % 500) for i in ids],
            "event_type": "app_opened",
            "event_time": "2026-11-20T10:00:00Z",
            "platform": "ios",
        }
    ).to_csv(path, index=False)
    return path


def test_each_load_summarises_the_brin_ranges_it_appended_so_tomorrows_readers_skip_today(warehouse_url, tmp_path):
    with psycopg.connect(warehouse_url) as conn:
        ingest.ensure_raw_schema(conn)
        # Autovacuum would summarise them too, but only after inserts of a fifth of the table: between its runs.
        conn.execute("ALTER TABLE raw.events SET (autovacuum_enabled = false)")
    day_one = 40_000
    ingest.ingest_path(warehouse_url, _app_opens(tmp_path / "events_1.csv", 0, day_one), now=NOW)
    with psycopg.connect(warehouse_url) as conn:
        since = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
    ingest.ingest_path(warehouse_url, _app_opens(tmp_path / "events_2.csv", day_one, 1_000), now=NOW)

    with psycopg.connect(warehouse_url) as conn:
        conn.execute("SET enable_seqscan = off")  # what the BRIN index finds, as on a full-scale table
        [[[plan]]] = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM raw.events WHERE load_xid >= {since}"
        ).fetchall()
    scan = plan["Plan"]["Plans"][0]
    assert scan["Node Type"] == "Bitmap Heap Scan" and scan["Actual Rows"] == 1_000
    # Unsummarised, every range of day one would match: all 40,000 of its rows read and dropped on the recheck.
    assert scan["Rows Removed by Index Recheck"] < day_one / 4
