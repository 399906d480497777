"""``DELETE /v1/users/{user_id}`` on a running ``rekindle serve``: write scope only, the user erased from the warehouse,
every worker's cache and session, answered non-personalised afterwards; events the API accepts for an erased user
are removed by the next daily load. ``rekindle forget`` reaches the running API's cache and sessions too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from api_server import API_KEYS, READ_KEY, RUN_DATE, WRITE_KEY, copy_of_published_day, start_server, stop_server

from ml.pipeline import tasks
from ml.serving.app import Server
from ml.serving.role import api_role_url
from ml.settings import Settings


@pytest.fixture
def served(postgres_server_url, tmp_path):
    settings = copy_of_published_day(postgres_server_url, tmp_path / "home")
    server = start_server(settings, tmp_path / "serve.log", {"REKINDLE_API_CACHE_TTL_SECONDS": "600"})
    yield settings, server
    stop_server(server)


def _rows_naming(url: str, user_id: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT c.table_schema, c.table_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.column_name = 'user_id' AND t.table_type = 'BASE TABLE' "
            "AND c.table_schema IN ('raw', 'staging', 'intermediate', 'marts', 'crm', 'ops')"
        ).fetchall()
        counts = {
            f"{schema}.{table}": conn.execute(
                f'SELECT count(*) FROM "{schema}"."{table}" WHERE user_id = %s', (user_id,)
            ).fetchone()[0]
            for schema, table in tables
        }
    return {table: rows for table, rows in counts.items() if rows}


def _order(user_id: str, merchant_id: str) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user_id,
        "event_type": "checkout_completed",
        "event_time": datetime.now(UTC).isoformat(),
        "merchant_id": merchant_id,
        "order_total": 20,
    }


def test_delete_erases_the_user_and_every_worker_forgets_them(served, tmp_path):
    settings, server = served
    url = settings.warehouse_url
    with psycopg.connect(url) as conn:
        user_id, merchant_id = conn.execute(
            "SELECT user_id, merchant_id FROM crm.recommendations WHERE run_date = %s AND mode = 'winback' "
            "AND reason = 'because you ordered there' ORDER BY user_id, rank LIMIT 1",
            (RUN_DATE,),
        ).fetchone()
    # A second worker on the same warehouse, holding a cached answer and a session for the user.
    worker_settings = Settings.from_env(environ={"REKINDLE_API_KEYS": API_KEYS}, home=tmp_path, warehouse_url=url)
    other = Server(worker_settings, api_role_url(url, worker_settings))
    other.refresh_publication()
    other.start_watching()
    try:
        assert other.listening.wait(30)
        with server.client(WRITE_KEY) as client:
            assert client.post("/v1/events", json={"events": [_order(user_id, merchant_id)]}).json()["accepted"] == 1
        with server.client(READ_KEY) as client:
            before = client.get(f"/v1/users/{user_id}/recommendations", params={"mode": "winback"}).json()
            assert client.get(f"/v1/users/{user_id}/recommendations", params={"mode": "winback"}).json()["cached"]
            assert client.delete(f"/v1/users/{user_id}").status_code == 403
        other.cache.put(user_id, "any", before)
        assert _rows_naming(url, user_id)

        with server.client(WRITE_KEY) as client:
            answer = client.delete(f"/v1/users/{user_id}", params={"request_id": "api-erasure-1"})

        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["request_id"] == "api-erasure-1" and report["users"] == 1 and report["total_rows"] > 0
        assert user_id not in answer.text
        assert _rows_naming(url, user_id) == {}
        deadline = time.monotonic() + 30
        while other.cache.get(user_id, "any") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert other.cache.get(user_id, "any") is None
        assert not other.sessions.of(user_id).ordered
    finally:
        other.stop_watching()
    with server.client(READ_KEY) as client:
        after = client.get(f"/v1/users/{user_id}/recommendations").json()
    assert not after["cached"]
    assert all(item["reason"].startswith("popular") for item in after["items"])

    # The API cannot read the tombstones, so it accepts the erased user's events; the next daily load removes them.
    with server.client(WRITE_KEY) as client:
        assert client.post("/v1/events", json={"events": [_order(user_id, merchant_id)]}).json()["accepted"] == 1
    summary = tasks.load_events(settings, RUN_DATE)
    assert summary["erased_api_rows"] == 1
    assert _rows_naming(url, user_id) == {}


def test_rekindle_forget_reaches_the_running_apis_cache_and_sessions(served):
    settings, server = served
    with psycopg.connect(settings.warehouse_url) as conn:
        user_id, merchant_id = conn.execute(
            "SELECT user_id, merchant_id FROM crm.recommendations WHERE run_date = %s AND mode = 'winback' "
            "AND reason = 'because you ordered there' ORDER BY user_id DESC, rank LIMIT 1",
            (RUN_DATE,),
        ).fetchone()
    with server.client(WRITE_KEY) as client:
        assert client.post("/v1/events", json={"events": [_order(user_id, merchant_id)]}).json()["accepted"] == 1
    path = f"/v1/users/{user_id}/recommendations"
    with server.client(READ_KEY) as client:
        client.get(path, params={"mode": "winback"})
        cached = client.get(path, params={"mode": "winback"}).json()
    assert cached["cached"] and not all(item["reason"].startswith("popular") for item in cached["items"])

    # The command line, not the API: its own process, with only the warehouse in common with the server.
    env = {**os.environ, "REKINDLE_HOME": str(settings.home), "REKINDLE_WAREHOUSE_URL": settings.warehouse_url}
    forget = subprocess.run(
        [sys.executable, "-m", "ml.cli", "forget", user_id], env=env, capture_output=True, text=True, timeout=300
    )
    assert forget.returncode == 0, forget.stderr

    # The answer cached for ten minutes and the session's order are gone within seconds.
    deadline = time.monotonic() + 30
    with server.client(READ_KEY) as client:
        while True:
            after = client.get(path, params={"mode": "winback"}).json()
            if all(item["reason"].startswith("popular") for item in after["items"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert all(item["reason"].startswith("popular") for item in after["items"]), after
