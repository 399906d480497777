"""Great Expectations gates on the real warehouse: pass on clean data, fail loudly with table and examples."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from ml.warehouse import ingest, quality
from ml.warehouse.contract import ID_MAX_LENGTH

NOW = datetime.now(UTC)


def _seed_clean_events(url: str) -> None:
    with psycopg.connect(url) as conn:
        ingest.ensure_raw_schema(conn)
        conn.execute(
            """INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total, source_file)
               VALUES ('a', 1, 'checkout_completed', now() - interval '1 day', 7, 30.0, 'test'),
                      ('b', 1, 'app_opened', now() - interval '2 days', NULL, NULL, 'test')"""
        )


def test_raw_gate_passes_clean_events_and_builds_data_docs(settings, warehouse_url):
    _seed_clean_events(warehouse_url)

    report = quality.check_raw(settings, warehouse_url)

    assert report.success and report.evaluated >= 10
    assert report.data_docs is not None and report.data_docs.exists()
    assert str(settings.home) in str(report.data_docs)


def test_raw_gate_failure_names_expectation_table_and_counts_and_writes_no_values(settings, warehouse_url):
    _seed_clean_events(warehouse_url)
    too_long_id = "user-" + "x" * ID_MAX_LENGTH
    with psycopg.connect(warehouse_url) as conn:
        # A loader that bypassed ml.warehouse.ingest wrote these straight into raw.
        conn.execute(
            """INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total, source_file)
               VALUES ('neg', 2, 'checkout_completed', now() - interval '1 day', 7, -12.5, 'rogue'),
                      ('fut', 2, 'app_opened', now() + interval '3 days', NULL, NULL, 'rogue'),
                      ('odd', 2, 'teleported', now() - interval '1 day', NULL, NULL, 'rogue'),
                      ('long', %s, 'app_opened', now() - interval '1 day', NULL, NULL, 'rogue')""",
            (too_long_id,),
        )

    with pytest.raises(quality.DataQualityError) as failure:
        quality.check_raw(settings, warehouse_url)

    message = str(failure.value)
    assert "raw.events: order_total is not negative | column order_total | 1 bad row(s)" in message
    assert "raw.events: event_type is one of the contract's event types (exact spelling) | column event_type" in message
    assert "raw.events: expect_column_value_lengths_to_be_between | column user_id | 1 bad row(s)" in message
    assert "event_time is not in the future" in message and "'fut'" in message
    # GX's validation results and data docs under the home report counts, never a bad value: no user id lands there.
    gx_files = [path for path in (settings.home / "gx").rglob("*") if path.is_file()]
    assert any(path.suffix == ".html" and "validations" in path.parts for path in gx_files)
    for value in (too_long_id, "teleported", "-12.5"):
        assert [path for path in gx_files if value.encode() in path.read_bytes()] == [], value
    assert too_long_id not in message


def test_raw_gate_reads_the_rows_that_arrived_since_it_last_passed(settings, warehouse_url):
    _seed_clean_events(warehouse_url)
    assert quality.check_raw(settings, warehouse_url).success
    assert quality.check_raw(settings, warehouse_url).success  # a day without new events passes too
    insert = """INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total,
                                        source_file, load_xid)
                VALUES (%s, 2, 'checkout_completed', now() - interval '1 day', 7, -12.5, 'rogue', {})"""
    with psycopg.connect(warehouse_url) as conn:
        # written by a transaction that had ended before the last passing run: that run read it, this one does not
        conn.execute(insert.format("1"), ("old-neg",))
    assert quality.check_raw(settings, warehouse_url).success

    with psycopg.connect(warehouse_url) as conn:
        conn.execute(insert.format("DEFAULT"), ("new-neg",))
    with pytest.raises(quality.DataQualityError, match=r"order_total is not negative \| column order_total \| 1 bad"):
        quality.check_raw(settings, warehouse_url)


def test_each_gate_keeps_the_newest_validation_results_and_their_pages_only(settings, warehouse_url):
    from expectations.suites import RAW_SUITES

    _seed_clean_events(warehouse_url)
    keeping_two = dataclasses.replace(settings, quality_results_kept=2)
    for _ in range(4):
        assert quality.check_raw(keeping_two, warehouse_url).success

    # A result is <suite>/<run name>/<run time>/<batch>.json in the store and .html in the data docs; the data-docs
    # index reads every stored result, so four days must leave two of each, not four.
    gx = settings.home / "gx" / "gx" / "uncommitted"
    for folder, suffix in ((gx / "validations", ".json"), (gx / "data_docs" / "local_site" / "validations", ".html")):
        per_suite = Counter(path.relative_to(folder).parts[0] for path in folder.rglob(f"*{suffix}"))
        assert per_suite == {spec.name: 2 for spec in RAW_SUITES}, folder
