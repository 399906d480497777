"""User and merchant ids are any string (a UUID, an Amplitude id, digits): ingest checks them against the id
contract, every warehouse table keeps them as text, an old warehouse with bigint ids is converted in place, and
``rekindle generate --ids uuid`` writes the same world under UUIDs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime

import pandas as pd
import psycopg
import pytest

from ml.crm import segments
from ml.offers.response import CONTROL
from ml.offers.truth import read_offer_truth, truth_scorecard
from ml.synthetic.marketplace import Marketplace, generate_marketplace
from ml.warehouse import ddl, ingest

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
UUID_ID = "6f1c9a52-3b7e-4d1a-9c2f-0e8b7a6d5c4b"
AMPLITUDE_DEVICE_ID = "R7xq2LmN-iOS-9F3A2B1C"

MIXED_USERS_CSV = f"""user_id,signup_at
{UUID_ID},2026-01-01T00:00:00Z
{AMPLITUDE_DEVICE_ID},2026-01-01T00:00:00Z
  42  ,2026-01-01T00:00:00Z
00123,2026-01-01T00:00:00Z
123,2026-01-01T00:00:00Z
"   ",2026-01-01T00:00:00Z
,2026-01-01T00:00:00Z
{"x" * 129},2026-01-01T00:00:00Z
"tab\there",2026-01-01T00:00:00Z
"""


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_mixed_ids_load_as_text_and_bad_ones_are_quarantined_with_the_reason(warehouse_url, tmp_path):
    path = tmp_path / "users.csv"
    path.write_text(MIXED_USERS_CSV)

    [result] = ingest.ingest_path(warehouse_url, path, now=NOW)

    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (9, 5, 4)
    loaded = {user_id for (user_id,) in _rows(warehouse_url, "SELECT user_id FROM raw.users")}
    # Trimmed; a leading zero makes a different id from the integer.
    assert loaded == {UUID_ID, AMPLITUDE_DEVICE_ID, "42", "00123", "123"}
    reasons = sorted(reason for (reason,) in _rows(warehouse_url, "SELECT reason FROM raw.quarantine"))
    assert reasons == [
        "missing user_id",
        "user_id contains a control character",
        "user_id is empty",
        "user_id is longer than 128 characters",
    ]


def test_integer_ids_from_json_lines_and_parquet_become_their_decimal_text(warehouse_url, tmp_path):
    base = {"event_type": "app_opened", "event_time": "2026-11-20T10:00:00Z"}
    lines = [
        {**base, "event_id": "j1", "user_id": 123, "merchant_id": 7},
        {**base, "event_id": "j2", "user_id": "00123"},
        {**base, "event_id": "j3", "user_id": 2**62},
        {**base, "event_id": "j4", "user_id": 12.5},
        {**base, "event_id": "j5", "user_id": True},
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    # A nullable integer column with a gap, as pandas writes merchant ids of events without a merchant.
    merchants = pd.DataFrame(
        {
            "merchant_id": pd.array([7, 8], dtype="Int64"),
            "merchant_name": ["A", "B"],
            "category": "pizza",
            "zone": "Z1",
            "opened_at": pd.Timestamp("2026-01-01", tz="UTC"),
            "price_level": pd.array([2, None], dtype="Int64"),
        }
    )
    merchants.to_parquet(tmp_path / "merchants.parquet")

    ingest.ingest_path(warehouse_url, tmp_path, now=NOW)

    assert _rows(warehouse_url, "SELECT event_id, user_id, merchant_id FROM raw.events ORDER BY 1") == [
        ("j1", "123", "7"),
        ("j2", "00123", None),
        ("j3", str(2**62), None),
    ]
    assert _rows(warehouse_url, "SELECT merchant_id FROM raw.merchants ORDER BY 1") == [("7",), ("8",)]
    assert sorted(r for (r,) in _rows(warehouse_url, "SELECT reason FROM raw.quarantine")) == [
        "user_id is a boolean, not text or an integer",
        "user_id is a number that is not an integer",
    ]


def test_a_warehouse_with_bigint_ids_is_converted_to_text_in_place(warehouse_url):
    with psycopg.connect(warehouse_url) as conn:
        conn.execute(
            """CREATE SCHEMA raw;
               CREATE TABLE raw.users (user_id bigint PRIMARY KEY, signup_at timestamptz NOT NULL,
                                       source_file text NOT NULL);
               INSERT INTO raw.users VALUES (42, '2026-01-01', 'old.csv'), (7, '2026-01-02', 'old.csv');
               CREATE SCHEMA staging;
               CREATE VIEW staging.stg_users AS SELECT user_id::bigint AS user_id FROM raw.users;
               CREATE MATERIALIZED VIEW staging.signups AS SELECT user_id FROM raw.users;
               CREATE SCHEMA crm;
               CREATE TABLE crm.recommendations (run_date date NOT NULL, user_id bigint NOT NULL,
                   rank integer NOT NULL, merchant_id bigint NOT NULL, merchant_name text,
                   score double precision NOT NULL, reason text, model_version text NOT NULL,
                   PRIMARY KEY (run_date, user_id, rank));
               INSERT INTO crm.recommendations VALUES ('2026-11-01', 42, 1, 9, 'M', 0.5, NULL, '1');"""
        )
        # The segment tables as they were made when ids were bigint.
        conn.execute(re.sub(r"((user|merchant)_id +)text", r"\1bigint", segments.CRM_SEGMENTS_SQL))
        conn.execute(
            "INSERT INTO crm.cross_sell_targets (run_date, segment, user_id, recommended_merchant_id, score, rank, "
            "ordered_merchant_id) VALUES ('2026-11-01', 'cross_sell_targets', 42, 9, 1.0, 1, 3)"
        )
        conn.commit()

        ddl.ensure(conn)
        segments.ensure_tables(conn)
        conn.commit()
        ddl.ensure(conn)  # once converted, nothing left to do

        id_types = dict(
            conn.execute(
                """SELECT table_schema || '.' || table_name || '.' || column_name, data_type
                   FROM information_schema.columns
                   WHERE table_schema IN ('raw', 'crm') AND column_name ~ '(^|_)(user|merchant)_id$'"""
            ).fetchall()
        )
        users = conn.execute("SELECT user_id FROM raw.users ORDER BY signup_at").fetchall()
        recommendation = conn.execute("SELECT user_id, merchant_id FROM crm.recommendations").fetchall()
        cross_sell = conn.execute(
            "SELECT user_id, recommended_merchant_id, ordered_merchant_id FROM crm.cross_sell_targets"
        ).fetchall()
        stale_views = conn.execute("SELECT to_regclass('staging.stg_users'), to_regclass('staging.signups')").fetchone()

    assert "crm.cross_sell_targets.ordered_merchant_id" in id_types and "raw.events.merchant_id" in id_types
    assert set(id_types.values()) == {"text"}, id_types
    assert users == [("42",), ("7",)]
    assert recommendation == [("42", "9")]
    assert cross_sell == [("42", "9", "3")]
    assert stale_views == (None, None)  # dbt's next build creates its views again, on the text column


def test_generate_with_uuid_ids_names_everyone_by_the_same_uuid_in_every_file(tmp_path):
    market = generate_marketplace(seed=3, days=10, end_date=date(2026, 11, 1), n_users=120, n_merchants=20)

    market.write(tmp_path / "a", ids="uuid")
    market.write(tmp_path / "b", ids="uuid")

    files = {name: pd.read_parquet(path) for name, path in _written(tmp_path / "a").items()}
    users, merchants = set(files["users.parquet"]["user_id"]), set(files["merchants.parquet"]["merchant_id"])
    assert len(users) == len(market.users) and len(merchants) == len(market.merchants)
    assert all(str(uuid.UUID(u)) == u for u in users | merchants)
    assert not users & merchants
    for name, frame in files.items():
        if "user_id" in frame:
            assert set(frame["user_id"]) <= users, name
        if "merchant_id" in frame:
            assert set(frame["merchant_id"].dropna()) <= merchants, name
    events = files["events.parquet"]
    # The same world: the rows line up with the integer world's, only the names changed.
    assert events["merchant_id"].isna().tolist() == market.events["merchant_id"].isna().tolist()
    assert events["user_id"].factorize()[0].tolist() == market.events["user_id"].factorize()[0].tolist()
    for name in files:
        assert files[name].equals(pd.read_parquet(_written(tmp_path / "b")[name])), name

    with pytest.raises(ValueError, match="generate it again without --ids uuid"):
        Marketplace.read(tmp_path / "a")
    with pytest.raises(ValueError, match="unknown id format"):
        market.write(tmp_path / "c", ids="amplitude")


def _written(folder):
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*.parquet"))}


def test_the_offer_truth_of_an_integer_world_scores_the_warehouses_text_ids(tmp_path):
    market = generate_marketplace(seed=3, days=10, end_date=date(2026, 11, 1), n_users=60, n_merchants=10)
    market.write(tmp_path)

    offer_truth = read_offer_truth(tmp_path / "ground_truth" / "offer_truth.parquet")
    user_ids = [str(user_id) for user_id in market.users["user_id"]]  # as the marts return them
    card = truth_scorecard(pd.Series(CONTROL, index=user_ids), offer_truth)

    assert set(offer_truth["user_id"]) == set(user_ids)
    assert card["truth_policy_value"] == 0.0 and card["truth_oracle_value"] > 0


def test_rekindle_generate_writes_uuid_ids_on_request_and_refuses_an_unknown_format(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REKINDLE_", "AIRFLOW"))}
    env["REKINDLE_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-m", "ml.cli", "generate", "--days", "2", "--end-date", "2026-11-01"]

    written = subprocess.run(
        [*command, "--ids", "uuid", "--out", str(tmp_path / "world")],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    refused = subprocess.run([*command, "--ids", "amplitude"], env=env, text=True, capture_output=True, timeout=120)

    assert written.returncode == 0, written.stderr
    assert "(uuid ids)" in written.stdout
    events = pd.read_parquet(tmp_path / "world" / "events.parquet")
    assert all(str(uuid.UUID(user_id)) == user_id for user_id in events["user_id"].unique())
    assert refused.returncode == 2 and "amplitude" in refused.stderr and "Traceback" not in refused.stderr
