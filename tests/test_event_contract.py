"""The event data contract (ml/warehouse/contract.py) is what ingest, dbt staging and the GX raw gate all enforce.

One set of rows, built from the contract: a valid row of every event type, an unknown event type, and one row
breaking each event rule. Each layer, run for real (embedded Postgres, dbt, GX), must keep exactly the contract's
event types and flag exactly the rows the contract says it flags, under the rule's name. Adding an event type or a
rule to the contract without the layers following it fails here.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import psycopg
import pytest
from great_expectations import expectations as gxe

from expectations.suites import raw_events
from ml.warehouse import contract, ingest, quality
from ml.warehouse.dbt_runner import build_args, run_dbt, write_profile

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
RUN_DATE = NOW.date()  # staging sees events strictly before today 00:00 UTC
PAST = dt.datetime.combine(RUN_DATE, dt.time(12), dt.UTC) - dt.timedelta(days=2)
USER, MERCHANT = 1, 7


def _event(event_id: str, event_type: str, **overrides) -> dict:
    checkout = event_type == contract.CHECKOUT
    row = {
        "event_id": event_id,
        "user_id": USER,
        "event_type": event_type,
        "event_time": PAST + dt.timedelta(minutes=len(event_id)),
        "merchant_id": MERCHANT if checkout or event_type in contract.VIEW_EVENT_TYPES else None,
        "order_total": 25.0 if checkout else None,
    }
    return {**row, **overrides}


VALID = [_event(f"ok-{event_type}", event_type) for event_type in contract.EVENT_TYPES]
# One row breaking each rule of the contract, and nothing else.
BREAKING = {
    "unknown_event_type": _event("bad-type", "teleported"),
    "negative_order_total": _event("bad-total", contract.CHECKOUT, order_total=-3.0),
    "event_time_in_future": _event("bad-time", "app_opened", event_time=NOW + dt.timedelta(days=1)),
    "missing_order_total": _event("bad-no-total", contract.CHECKOUT, order_total=None),
    "missing_merchant_id": _event("bad-no-merchant", contract.CHECKOUT, merchant_id=None),
}
RULES = {rule.name: rule for rule in contract.EVENT_RULES}
ROWS = [*VALID, *BREAKING.values()]


def test_every_rule_of_the_contract_has_a_breaking_row_here():
    assert set(BREAKING) == set(RULES)
    assert set(contract.VIEW_EVENT_TYPES) <= set(contract.EVENT_TYPES) and contract.CHECKOUT in contract.EVENT_TYPES
    assert contract.NO_OFFER in contract.OFFER_EVENT_TYPES


def _insert_raw(url: str) -> None:
    with psycopg.connect(url) as conn:
        ingest.ensure_raw_schema(conn)
        conn.execute(
            "INSERT INTO raw.users (user_id, signup_at, source_file) VALUES (%s, %s, 'test')",
            (USER, PAST - dt.timedelta(days=30)),
        )
        conn.execute(
            "INSERT INTO raw.merchants (merchant_id, merchant_name, category, zone, opened_at, source_file)"
            " VALUES (%s, 'Burger Hub', 'burgers', 'West Bay', %s, 'test')",
            (MERCHANT, PAST - dt.timedelta(days=365)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total,"
                " source_file) VALUES (%(event_id)s, %(user_id)s, %(event_type)s, %(event_time)s, %(merchant_id)s,"
                " %(order_total)s, 'rogue loader')",
                ROWS,
            )


def test_ingest_loads_every_contract_type_and_quarantines_by_the_contracts_rules(warehouse_url, tmp_path):
    path = tmp_path / "events_contract.csv"
    pd.DataFrame(ROWS).assign(event_time=lambda f: f["event_time"].map(dt.datetime.isoformat)).to_csv(path, index=False)

    [result] = ingest.ingest_path(warehouse_url, path, now=NOW)

    with psycopg.connect(warehouse_url) as conn:
        loaded = {r[0] for r in conn.execute("SELECT event_id FROM raw.events")}
        quarantined = dict(conn.execute("SELECT record->>'event_id', reason FROM raw.quarantine").fetchall())
    applied = {name for name, rule in RULES.items() if rule.ingest_reason}
    assert applied == {rule.name for rule in contract.INGEST_EVENT_RULES} and applied
    assert quarantined == {BREAKING[name]["event_id"]: RULES[name].ingest_reason for name in applied}
    let_through = {BREAKING[name]["event_id"] for name in set(RULES) - applied}
    assert loaded == {row["event_id"] for row in VALID} | let_through
    assert result.rows_quarantined == len(applied)


def test_the_rules_sql_flags_the_same_rows_as_ingest(warehouse_url):
    """Each rule's SQL (dbt staging, GX) and ingest's vectorised check break on exactly its own row."""
    _insert_raw(warehouse_url)
    frame = pd.DataFrame(ROWS).astype({"merchant_id": "Int64", "order_total": float})
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    future = pd.Timestamp(NOW + contract.FUTURE_TOLERANCE)
    with psycopg.connect(warehouse_url) as conn:
        for rule in contract.EVENT_RULES:
            by_sql = {r[0] for r in conn.execute(f"SELECT event_id FROM raw.events WHERE {rule.violation}")}
            assert by_sql == {BREAKING[rule.name]["event_id"]}, rule.name
            if rule.name in ingest.EVENT_RULE_CHECKS:
                mask = ingest.EVENT_RULE_CHECKS[rule.name](frame, future).fillna(False).astype(bool)
                assert set(frame.loc[mask, "event_id"]) == by_sql, rule.name


def test_dbt_staging_keeps_every_contract_type_and_rejects_by_the_contracts_rules(settings):
    url = settings.warehouse_url
    _insert_raw(url)

    run_dbt(
        settings,
        url,
        ["build", "--indirect-selection", "cautious"],
        RUN_DATE,
        select="stg_users stg_merchants stg_events_classified+1",
    )

    with psycopg.connect(url) as conn:
        kept = {r[0] for r in conn.execute("SELECT event_id FROM staging.stg_events")}
        rejected = dict(conn.execute("SELECT event_id, reason FROM staging.stg_events_rejected").fetchall())
    assert kept == {row["event_id"] for row in VALID}
    expected = {
        # staging's after_run_date stands in for the rules it does not apply (the future is after run_date)
        BREAKING[name]["event_id"]: name if rule.in_staging else "after_run_date"
        for name, rule in RULES.items()
    }
    assert rejected == expected


def test_dbt_without_the_contracts_vars_is_a_clear_compile_error(settings):
    from dbt.cli.main import dbtRunner

    write_profile(settings, settings.warehouse_url)
    args = build_args(settings, ["parse"], RUN_DATE)
    args[args.index("--vars") + 1] = json.dumps({"run_date": RUN_DATE.isoformat()})

    outcome = dbtRunner().invoke([*args, "--no-partial-parse"])

    assert not outcome.success
    assert "is missing: the event data contract (ml/warehouse/contract.py)" in str(outcome.exception)


def test_gx_raw_suite_expects_what_ingest_guarantees():
    suite = raw_events()
    [in_set] = [e for e in suite if isinstance(e, gxe.ExpectColumnValuesToBeInSet)]
    assert in_set.column == "event_type" and list(in_set.value_set) == list(contract.EVENT_TYPES)
    described = {e.description for e in suite if e.description}
    assert described == {rule.check for rule in contract.INGEST_EVENT_RULES}
    [future] = [e for e in suite if e.description == RULES["event_time_in_future"].check]
    assert f"interval '{contract.FUTURE_TOLERANCE_MINUTES} minutes'" in future.unexpected_rows_query


def test_gx_raw_gate_passes_every_contract_type_and_fails_each_ingest_rule(settings):
    url = settings.warehouse_url
    _insert_raw(url)
    with psycopg.connect(url) as conn:
        conn.execute(
            "DELETE FROM raw.events WHERE event_id = ANY(%s)",
            ([row["event_id"] for row in BREAKING.values()],),
        )
    assert quality.check_raw(settings, url).success

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total, source_file)"
            " VALUES (%(event_id)s, %(user_id)s, %(event_type)s, %(event_time)s, %(merchant_id)s, %(order_total)s,"
            " 'rogue loader')",
            list(BREAKING.values()),
        )
    with pytest.raises(quality.DataQualityError) as failure:
        quality.check_raw(settings, url)

    message = str(failure.value)
    for name, rule in RULES.items():
        if rule.ingest_reason:
            assert rule.check in message, name
    assert RULES["missing_order_total"].check not in message  # ingest lets it through, so the gate does too
