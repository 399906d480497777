"""Great Expectations gates on the real warehouse: pass on clean data, fail loudly with table and examples."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from ml.warehouse import ingest, quality

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


def test_raw_gate_failure_names_expectation_table_and_bad_values(settings, warehouse_url):
    _seed_clean_events(warehouse_url)
    with psycopg.connect(warehouse_url) as conn:
        # A loader that bypassed ml.warehouse.ingest wrote these straight into raw.
        conn.execute(
            """INSERT INTO raw.events (event_id, user_id, event_type, event_time, merchant_id, order_total, source_file)
               VALUES ('neg', 2, 'checkout_completed', now() - interval '1 day', 7, -12.5, 'rogue'),
                      ('fut', 2, 'app_opened', now() + interval '3 days', NULL, NULL, 'rogue'),
                      ('odd', 2, 'teleported', now() - interval '1 day', NULL, NULL, 'rogue')"""
        )

    with pytest.raises(quality.DataQualityError) as failure:
        quality.check_raw(settings, warehouse_url)

    message = str(failure.value)
    assert "raw.events" in message
    assert "order_total" in message and "-12.5" in message
    assert "event_time is not in the future" in message and "'fut'" in message
    assert "event_type" in message and "teleported" in message
