"""The real-time API against a real ``rekindle serve`` (uvicorn in a subprocess) on the embedded warehouse with a
small published day (real ingest, dbt build and publish writers, tests/api_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psutil
import psycopg
import pytest
from api_server import (
    API_KEYS,
    BOTH_KEY,
    READ_KEY,
    RUN_DATE,
    WRITE_KEY,
    copy_of_published_day,
    free_port,
    publish_day,
    start_server,
    stop_server,
)
from conftest import publish_offers
from uvicorn.config import STARTUP_FAILURE

from ml.experiments.assignment import HOLDOUT, NON_PERSONALISED, PERSONALISED
from ml.serving import auth
from ml.serving.app import Event, EventBatch, Server, receive_events, recommend
from ml.serving.readout import serving_counts, serving_readout
from ml.serving.role import api_role_url, ensure_api_role
from ml.serving.variants import ServingExperiment
from ml.serving.workers import Workers
from ml.settings import Settings

STRATEGIES = "champion:0.5,popularity:0.25,cosine:0.25"
EXPERIMENT = ServingExperiment.from_settings("serving-1", tuple(STRATEGIES.split(",")))


@pytest.fixture(scope="module")
def world(postgres_server_url, tmp_path_factory):
    """One published day and one server for the module; tests that change the publication come last."""
    home = tmp_path_factory.mktemp("api")
    settings = copy_of_published_day(postgres_server_url, home / "home")
    url = settings.warehouse_url
    with psycopg.connect(url) as conn:
        users = pd.DataFrame(
            conn.execute(
                "SELECT s.user_id, s.lifecycle_segment, f.marketing_opt_in, f.home_zone FROM marts.user_segments s "
                "JOIN marts.user_features f USING (user_id) ORDER BY s.user_id"
            ).fetchall(),
            columns=["user_id", "segment", "opt_in", "zone"],
        )
        inactive = users[users["segment"].isin(["lapsed", "dormant"]) & users["opt_in"]]["user_id"].tolist()
        publish_offers(
            conn,
            pd.DataFrame(
                {
                    "run_date": RUN_DATE,
                    "campaign_id": "winback-test",
                    "user_id": inactive[:3],
                    "arm": [HOLDOUT, PERSONALISED, NON_PERSONALISED],
                    "event_type": ["none", "cashback", "none"],
                    "reward_size": [0.0, 15.0, 0.0],
                }
            ),
        )
        conn.commit()
    server = start_server(
        settings,
        home / "serve.log",
        {"REKINDLE_SERVING_STRATEGIES": STRATEGIES, "REKINDLE_API_CACHE_TTL_SECONDS": "600"},
    )
    yield {"settings": settings, "server": server, "users": users, "offered": inactive[:3], "url": url}
    stop_server(server)


def _user(world, segment: str, variant: str = "champion", opt_in: bool | None = None) -> str:
    users = world["users"]
    chosen = users[users["segment"] == segment]
    if opt_in is not None:
        chosen = chosen[chosen["opt_in"] == opt_in]
    chosen = chosen[~chosen["user_id"].isin(world["offered"])]
    return next(u for u in chosen["user_id"] if EXPERIMENT.variant(u) == variant)


def _published(world, user_id: str, mode: str) -> list[str]:
    with psycopg.connect(world["url"]) as conn:
        return [
            m
            for (m,) in conn.execute(
                "SELECT merchant_id FROM crm.recommendations WHERE run_date = %s AND user_id = %s AND mode = %s "
                "ORDER BY rank",
                (RUN_DATE, user_id, mode),
            )
        ]


def _ordered(world, user_id: str) -> set[str]:
    with psycopg.connect(world["url"]) as conn:
        return {
            m
            for (m,) in conn.execute(
                "SELECT merchant_id FROM marts.user_merchant_orders WHERE user_id = %s", (user_id,)
            )
        }


def test_recommendations_default_to_winback_for_inactive_and_discovery_for_active_users(world):
    lapsed, active = _user(world, "lapsed"), _user(world, "active")
    with world["server"].client() as client:
        winback = client.get(f"/v1/users/{lapsed}/recommendations", params={"n": 5, "diversity": 1}).json()
        discovery = client.get(f"/v1/users/{active}/recommendations", params={"n": 5}).json()
    assert winback["mode"] == "winback" and winback["variant"] == "champion" and winback["model_version"] == "1"
    assert [i["position"] for i in winback["items"]] == [1, 2, 3, 4, 5]
    assert {i["merchant_id"] for i in winback["items"]} <= set(_published(world, lapsed, "winback"))
    assert winback["items"][0]["merchant_id"] in _ordered(world, lapsed)  # favourites first in the win-back list
    assert discovery["mode"] == "discovery" and len(discovery["items"]) == 5
    assert not {i["merchant_id"] for i in discovery["items"]} & _ordered(world, active)
    assert all(i["merchant_name"] for i in winback["items"] + discovery["items"])


def test_every_variant_is_the_hash_assignment_and_each_strategy_answers(world):
    with world["server"].client() as client:
        for variant in ("champion", "popularity", "cosine"):
            user_id = _user(world, "lapsed", variant)
            answer = client.get(f"/v1/users/{user_id}/recommendations", params={"mode": "discovery"}).json()
            assert answer["variant"] == variant
            assert answer["items"] and not {i["merchant_id"] for i in answer["items"]} & _ordered(world, user_id)
            if variant == "cosine":
                assert answer["items"][0]["reason"].startswith("because you ordered from")
            if variant == "popularity":
                assert answer["items"][0]["reason"].startswith("popular")


def test_unknown_user_gets_the_zones_popular_merchants(world):
    zone = world["users"]["zone"].iloc[0]
    with world["server"].client() as client:
        answer = client.get("/v1/users/never-seen-user/recommendations", params={"zone": zone, "n": 3}).json()
    assert answer["mode"] == "discovery" and len(answer["items"]) == 3
    assert all(item["reason"] == f"popular in {zone}" for item in answer["items"])


def test_filters_exclusions_and_diversity(world):
    user_id = _user(world, "active")
    with world["server"].client() as client:
        base = client.get(f"/v1/users/{user_id}/recommendations", params={"n": 10, "diversity": 1}).json()["items"]
        top = base[0]["merchant_id"]
        excluded = client.get(
            f"/v1/users/{user_id}/recommendations", params={"n": 10, "exclude": f"{top},nope"}
        ).json()["items"]
        similar = client.get(f"/v1/merchants/{top}/similar", params={"n": 1}).json()["items"]
        with psycopg.connect(world["url"]) as conn:
            category_of = dict(conn.execute("SELECT merchant_id, category FROM marts.merchant_features").fetchall())
        wanted = category_of[top]
        filtered = client.get(f"/v1/users/{user_id}/recommendations", params={"category": wanted}).json()["items"]
        diverse = client.get(f"/v1/users/{user_id}/recommendations", params={"n": 4, "diversity": 0}).json()["items"]
    assert top not in {i["merchant_id"] for i in excluded} and len(excluded) == 10
    assert filtered and {category_of[i["merchant_id"]] for i in filtered} == {wanted}
    assert len({category_of[i["merchant_id"]] for i in diverse}) == 4  # lambda 0: a new category at every pick
    assert similar and similar[0]["merchant_id"] != top


def test_offer_or_the_reason_there_is_none(world):
    holdout, personalised, nothing = world["offered"]
    with world["server"].client() as client:
        answers = {u: client.get(f"/v1/users/{u}/offer").json() for u in (holdout, personalised, nothing)}
        active = client.get(f"/v1/users/{_user(world, 'active')}/offer").json()
        opted_out = client.get(f"/v1/users/{_user(world, 'lapsed', opt_in=False)}/offer").json()
        unknown = client.get("/v1/users/nobody/offer").json()
    assert answers[holdout] | {"cached": False} == {
        "user_id": holdout,
        "run_date": "2026-11-01",
        "offer": None,
        "reason": "holdout",
        "cached": False,
    }
    offer = answers[personalised]["offer"]
    assert offer["event_type"] == "cashback" and offer["reward_size"] == 15.0 and offer["valid_until"] == "2026-11-15"
    assert answers[nothing]["offer"] is None and answers[nothing]["reason"] == "nothing profitable"
    assert (active["reason"], opted_out["reason"], unknown["reason"]) == ("not inactive", "opted out", "unknown user")


def test_similar_merchants_and_unknown_merchant(world):
    with psycopg.connect(world["url"]) as conn:
        merchant = conn.execute(
            "SELECT merchant_id FROM marts.user_merchant_orders GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchone()[0]
    with world["server"].client() as client:
        answer = client.get(f"/v1/merchants/{merchant}/similar", params={"n": 5}).json()
        missing = client.get("/v1/merchants/no-such-merchant/similar")
    scores = [i["score"] for i in answer["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    assert merchant not in {i["merchant_id"] for i in answer["items"]}
    assert missing.status_code == 404 and "no-such-merchant" in missing.json()["detail"]


def test_profile(world):
    user_id = _user(world, "lapsed")
    with world["server"].client() as client:
        answer = client.get(f"/v1/users/{user_id}/profile").json()
        unknown = client.get("/v1/users/nobody/profile")
    assert answer["lifecycle_segment"] == "lapsed" and answer["default_mode"] == "winback"
    assert answer["value_tier"] in {"low", "medium", "high"} and answer["favourite_categories"]
    assert {o["merchant_id"] for o in answer["recent_orders"]} <= _ordered(world, user_id)
    assert any("winback" in line for line in answer["why"])
    assert unknown.status_code == 404


def test_auth_scopes(world):
    server = world["server"]
    path = "/v1/users/someone/offer"
    event = {"events": [_event("someone", "app_opened")]}
    with server.client(None) as anonymous, server.client("wrong") as wrong, server.client(READ_KEY) as reader:
        assert anonymous.get(path).status_code == 401
        assert wrong.get(path).status_code == 401
        assert reader.post("/v1/events", json=event).status_code == 403
    with server.client(WRITE_KEY) as writer, server.client(BOTH_KEY) as both:
        assert writer.get(path).status_code == 403
        assert writer.post("/v1/events", json=event).status_code == 200
        assert both.get(path).status_code == 200
    log = server.log.read_text()
    assert all(key not in log for key in (READ_KEY, WRITE_KEY, BOTH_KEY))


def _event(user_id: str, event_type: str, merchant_id: str | None = None, **extra) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user_id,
        "event_type": event_type,
        "event_time": datetime.now(UTC).isoformat(),
        "merchant_id": merchant_id,
        **extra,
    }


def test_events_loaded_idempotently_and_bad_ones_quarantined_per_event(world):
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    events = [
        _event("u-1", "app_opened"),
        _event("u-1", "checkout_completed", "m-1", order_total=23.5, properties={"recommendation_id": "r1"}),
        _event("u-1", "teleported"),
        _event("u-1", "app_opened") | {"event_time": future},
        _event("u-1", "checkout_completed", "m-1", order_total=-4),
        _event("u-1", "app_opened") | {"event_time": "yesterday-ish"},
    ]
    with world["server"].client(WRITE_KEY) as client:
        first = client.post("/v1/events", json={"events": events}).json()
        again = client.post("/v1/events", json={"events": events[:2]}).json()
    assert [e["status"] for e in first["events"]] == ["accepted"] * 2 + ["quarantined"] * 4
    assert [e["reason"] for e in first["events"][2:]] == [
        "unknown event_type",
        "event_time in the future",
        "negative order_total",
        "event_time is not a timestamp",
    ]
    assert (again["accepted"], again["duplicate"]) == (0, 2)
    with psycopg.connect(world["url"]) as conn:
        loaded = conn.execute(
            "SELECT event_id, order_total, properties FROM raw.events WHERE event_id = ANY(%s) ORDER BY order_total",
            ([e["event_id"] for e in events],),
        ).fetchall()
        quarantined = conn.execute(
            "SELECT reason, record->>'event_id' FROM raw.quarantine WHERE record->>'event_id' = ANY(%s)",
            ([e["event_id"] for e in events],),
        ).fetchall()
    assert {row[0] for row in loaded} == {events[0]["event_id"], events[1]["event_id"]}
    assert float(loaded[0][1]) == 23.5 and loaded[0][2] == {"recommendation_id": "r1"}
    assert sorted(r for r, _ in quarantined) == sorted(e["reason"] for e in first["events"][2:])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"events": [', "JSON"),
        (b'{"events": "not a list"}', "events"),
        (b'{"events": []}', "at least 1"),
        (b'{"events": [1, 2]}', "events.0"),
        (json.dumps({"events": [{"event_id": "x"}] * 1001}).encode(), "at most 1000"),
    ],
)
def test_bad_event_bodies_are_4xx_with_a_clear_message(world, body, message):
    with world["server"].client(WRITE_KEY) as client:
        answer = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and message in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/users/x/recommendations?n=0", "n"),
        ("/v1/users/x/recommendations?n=ten", "n"),
        ("/v1/users/x/recommendations?mode=sideways", "mode"),
        ("/v1/users/x/recommendations?daypart=brunch", "daypart"),
        ("/v1/users/x/recommendations?diversity=2", "diversity"),
        (f"/v1/users/{'x' * 129}/offer", "user_id"),
        ("/v1/users/%20%20/profile", "user_id"),
        ("/v1/merchants/a%01b/similar", "merchant_id"),
    ],
)
def test_malformed_parameters_are_422_naming_the_parameter(world, path, message):
    with world["server"].client() as client:
        answer = client.get(path)
    assert answer.status_code == 422 and message in answer.json()["detail"]


def test_cache_hits_and_an_order_takes_the_merchant_out_of_discovery_at_once(world):
    user_id = _user(world, "active")
    path = f"/v1/users/{user_id}/recommendations"
    with world["server"].client(BOTH_KEY) as client:
        first = client.get(path, params={"mode": "discovery"}).json()
        second = client.get(path, params={"mode": "discovery"}).json()
        top = first["items"][0]["merchant_id"]
        client.post("/v1/events", json={"events": [_event(user_id, "checkout_completed", top, order_total=30)]})
        after = client.get(path, params={"mode": "discovery"}).json()
        metrics = client.get("/metrics").text
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["recommendation_id"] == first["recommendation_id"]
    assert after["cached"] is False and top not in {i["merchant_id"] for i in after["items"]}
    assert 'rekindle_api_cache_total{result="hit"}' in metrics
    assert 'rekindle_api_events_total{outcome="accepted"}' in metrics
    assert (
        'rekindle_api_request_seconds_bucket{le="0.01",method="GET",route="/v1/users/{user_id}/recommendations"}'
        in metrics
    )


def _cache_hits(client) -> float:
    metrics = client.get("/metrics").text.splitlines()
    return float(
        next(line for line in metrics if line.startswith('rekindle_api_cache_total{result="hit"}')).split()[-1]
    )


def test_a_repeated_request_is_replayed_byte_for_byte_and_counted_as_a_hit(world):
    path = f"/v1/users/{_user(world, 'active', 'popularity')}/recommendations"
    with world["server"].client() as client:
        hits_before = _cache_hits(client)
        first = client.get(path, params={"n": 5, "mode": "winback"})
        second = client.get(path, params={"n": 5, "mode": "winback"})
        offers = [client.get(path.replace("recommendations", "offer")) for _ in range(2)]
        hits_after = _cache_hits(client)
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert second.content == first.content.replace(b'"cached":false', b'"cached":true')
    assert second.headers["content-type"] == first.headers["content-type"] == "application/json"
    assert [o.json()["cached"] for o in offers] == [False, True]
    assert hits_after - hits_before == 2


def test_a_cached_answer_is_only_given_to_a_key_with_the_read_scope(world):
    path = f"/v1/users/{_user(world, 'active', 'cosine')}/recommendations"
    with world["server"].client(READ_KEY) as reader:
        reader.get(path)
        assert reader.get(path).json()["cached"] is True
    with world["server"].client(None) as anonymous, world["server"].client("wrong") as wrong:
        with world["server"].client(WRITE_KEY) as writer:
            refused = [anonymous.get(path), wrong.get(path), writer.get(path)]
            basic = anonymous.get(path, headers={"Authorization": f"Basic {READ_KEY}"})
    assert [r.status_code for r in refused] == [401, 401, 403]
    assert basic.status_code == 401
    assert all("items" not in r.json() for r in [*refused, basic])


def test_a_query_differing_in_one_parameter_is_not_given_the_others_cached_answer(world):
    path = f"/v1/users/{_user(world, 'new', 'cosine')}/recommendations"
    with world["server"].client() as client:
        three = [client.get(path, params={"n": 3}).json() for _ in range(2)]
        four = client.get(path, params={"n": 4}).json()
        invalid = client.get(path, params={"n": 0})
    assert [a["cached"] for a in three] == [False, True] and len(three[1]["items"]) == 3
    assert four["cached"] is False and len(four["items"]) == 4
    assert invalid.status_code == 422


def test_a_cached_answer_is_dropped_after_the_users_event_and_after_their_erasure(world):
    user_id = _user(world, "new", "popularity")
    path = f"/v1/users/{user_id}/recommendations"
    with world["server"].client(BOTH_KEY) as client:
        client.get(path)
        cached = client.get(path).json()["cached"]
        client.post("/v1/events", json={"events": [_event(user_id, "marketing_opt_out")]})
        after_event = client.get(path).json()["cached"]
        assert client.get(path).json()["cached"] is True
        assert client.delete(f"/v1/users/{user_id}").status_code == 200
        after_erasure = client.get(path).json()["cached"]
    assert (cached, after_event, after_erasure) == (True, False, False)


def _listening_workers(server, port: int) -> dict[int, psutil.Process]:
    """The server's worker processes: its children that listen on the port."""
    return {
        child.pid: child
        for child in psutil.Process(server.process.pid).children()
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("tcp"))
    }


def test_workers_share_connections_opened_at_once_and_a_dead_worker_is_replaced(world, tmp_path):
    server = start_server(world["settings"], tmp_path / "serve.log", workers=2)
    port = server.port
    try:
        deadline = time.monotonic() + 60
        while len(workers := _listening_workers(server, port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2
        # A client opening its pool at once: each worker must get some of the connections.
        clients = [server.client() for _ in range(32)]
        for client in clients:
            assert client.get("/healthz").status_code == 200
        held = {
            pid: sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in p.net_connections("tcp"))
            for pid, p in workers.items()
        }
        for client in clients:
            client.close()
        assert sum(held.values()) == 32 and min(held.values()) > 0, held

        dead = next(iter(workers))
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replaced = _listening_workers(server, port)
            if len(replaced) == 2 and dead not in replaced:
                break
            time.sleep(0.2)
        assert len(replaced) == 2 and dead not in replaced, replaced
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
    finally:
        stop_server(server)
    assert server.process.returncode == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in replaced.values())


def test_workers_that_exit_before_serving_stop_the_command_instead_of_restarting():
    workers = Workers("127.0.0.1", free_port(), 2, {"app": "ml.serving.no_such_module:app", "log_level": "critical"})
    assert workers.run() == STARTUP_FAILURE  # the worker's own exit code


def test_serve_refuses_a_port_in_use_with_workers(world, tmp_path):
    port = world["server"].port
    env = {**os.environ, "REKINDLE_HOME": str(world["settings"].home), "REKINDLE_API_KEYS": API_KEYS}
    env["REKINDLE_WAREHOUSE_URL"] = world["settings"].warehouse_url
    done = subprocess.run(
        [sys.executable, "-m", "ml.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_an_event_accepted_by_one_worker_adapts_and_invalidates_the_others(world, tmp_path):
    """Two server states on the warehouse, as two `--workers`: the second hears of the first's events (NOTIFY)."""
    settings = Settings.from_env(environ={"REKINDLE_API_KEYS": API_KEYS}, home=tmp_path, warehouse_url=world["url"])
    url = api_role_url(world["url"], settings)
    receiver, other = Server(settings, url), Server(settings, url)
    receiver.refresh_publication()
    other.refresh_publication()
    other.start_watching()
    user_id = _user(world, "new")
    try:
        assert other.listening.wait(30)
        before = recommend(other, user_id, 10, "discovery", None, None, set(), set(), 1.0, datetime.now(UTC))
        top = before["items"][0]["merchant_id"]
        other.cache.put(user_id, "any", before)
        order = _event(user_id, "checkout_completed", top, order_total=12)
        assert receive_events(receiver, EventBatch(events=[Event(**order)]))["accepted"] == 1
        deadline = time.monotonic() + 30
        while other.cache.get(user_id, "any") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        after = recommend(other, user_id, 10, "discovery", None, None, set(), set(), 1.0, datetime.now(UTC))
    finally:
        other.stop_watching()
    assert other.cache.get(user_id, "any") is None
    assert top not in {i["merchant_id"] for i in after["items"]}


def test_views_lift_the_viewed_merchants_neighbours(world):
    user_id = _user(world, "lapsed")
    path = f"/v1/users/{user_id}/recommendations"
    params = {"mode": "discovery", "n": 40, "diversity": 1}
    with world["server"].client(BOTH_KEY) as client:
        before = {i["merchant_id"]: i["score"] for i in client.get(path, params=params).json()["items"]}
        viewed = next(iter(before))
        neighbour = next(
            i["merchant_id"]
            for i in client.get(f"/v1/merchants/{viewed}/similar", params={"n": 50}).json()["items"]
            if i["merchant_id"] in before
        )
        views = [_event(user_id, "merchant_page_viewed", viewed) for _ in range(2)]
        client.post("/v1/events", json={"events": views})
        after = {i["merchant_id"]: i["score"] for i in client.get(path, params=params).json()["items"]}
    assert after[neighbour] > before[neighbour]


def test_schemathesis_finds_no_server_error(world, tmp_path):
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{world['server'].base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-H",
            f"Authorization: Bearer {BOTH_KEY}",
            "--max-examples",
            "25",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis writes its reports under the working directory
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_api_role_reads_crm_and_marts_and_only_inserts_events(world):
    settings = world["settings"]
    with psycopg.connect(world["url"], autocommit=True) as conn:
        ensure_api_role(conn, settings)  # again: idempotent
    with psycopg.connect(api_role_url(world["url"], settings), autocommit=True) as api:
        assert api.execute("SELECT count(*) FROM crm.recommendations").fetchone()[0] > 0
        assert api.execute("SELECT count(*) FROM marts.user_features").fetchone()[0] > 0
        for forbidden in (
            "SELECT user_id FROM raw.events",
            "SELECT * FROM raw.users",
            "DELETE FROM crm.recommendations",
            "CREATE TABLE public.t (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api.execute(forbidden)


def test_keys_file_is_private_and_its_keys_work(tmp_path):
    settings = Settings.from_env(environ={}, home=tmp_path)
    path = auth.ensure_keys_file(settings)
    assert path == tmp_path / "api_keys.json" and path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(path.read_text())
    keys = auth.KeyRing(auth.load_keys(settings))
    assert keys.scopes(stored["read"]) == {"read"} and keys.scopes(stored["write"]) == {"write"}
    assert keys.scopes("guess") is None
    assert auth.ensure_keys_file(settings) == path and json.loads(path.read_text()) == stored  # kept, not replaced
    with pytest.raises(auth.ApiKeyError, match="entry 2") as error:
        auth.parse_keys(("read:abc", "admin:secret"))
    assert "secret" not in str(error.value)


def test_serve_without_keys_writes_the_keys_file_and_prints_only_its_path(world, tmp_path):
    settings = Settings.from_env(environ={}, home=tmp_path / "home", warehouse_url=world["url"])
    server = start_server(settings, tmp_path / "serve.log", {"REKINDLE_API_KEYS": ""})
    try:
        keys = json.loads((settings.home / "api_keys.json").read_text())
        with server.client(keys["read"]) as client:
            assert client.get("/v1/users/nobody/offer").status_code == 200
    finally:
        stop_server(server)
    log = server.log.read_text()
    assert str(settings.home / "api_keys.json") in log and not any(key in log for key in keys.values())


def test_serving_readout_attributes_clicks_and_orders_to_the_variant_shown(world):
    since = datetime.now(UTC) - timedelta(seconds=1)
    users = world["users"]["user_id"]
    champions = [u for u in users if EXPERIMENT.variant(u) == "champion"][-3:]
    popular = [u for u in users if EXPERIMENT.variant(u) == "popularity"][-2:]
    events = []
    with world["server"].client(BOTH_KEY) as client:
        for user_id in champions + popular:
            shown = client.get(f"/v1/users/{user_id}/recommendations", params={"n": 2}).json()
            for item in shown["items"]:
                properties = {"recommendation_id": shown["recommendation_id"], "variant": shown["variant"]}
                events.append(
                    _event(
                        user_id,
                        "impression",
                        item["merchant_id"],
                        properties=properties | {"position": item["position"]},
                    )
                )
            first = shown["items"][0]["merchant_id"]
            attributed = {"properties": {"recommendation_id": shown["recommendation_id"]}}
            if user_id in champions[:2] or user_id == popular[0]:
                events.append(_event(user_id, "merchant_page_viewed", first, **attributed))
            if user_id == champions[0]:
                events.append(_event(user_id, "checkout_completed", first, order_total=20, **attributed))
        assert client.post("/v1/events", json={"events": events}).json()["accepted"] == len(events)
    with psycopg.connect(world["url"]) as conn:
        counts = serving_counts(conn, since)
    assert counts.loc["champion"].tolist() == [3, 2, 1]
    assert counts.loc["popularity"].tolist() == [2, 1, 0]
    readout = serving_readout(counts).set_index(["variant", "metric"])
    assert readout.loc[("champion", "click_through"), "rate"] == pytest.approx(2 / 3)
    assert readout.loc[("popularity", "click_through"), "lift_vs_champion"] == pytest.approx(1 / 2 - 2 / 3)
    assert 0 < readout.loc[("popularity", "order_conversion"), "p_value"] <= 1
    printed = subprocess.run(
        [sys.executable, "-m", "ml.cli", "readout", "--serving", "--since", since.date().isoformat()],
        env={**os.environ, "REKINDLE_HOME": str(world["settings"].home), "REKINDLE_WAREHOUSE_URL": world["url"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert any(line.split()[:3] == ["popularity", "click_through", "2"] for line in printed.stdout.splitlines())


def test_benchmark_serve_measures_open_loop_latency_and_counts_every_accepted_event(world):
    settings = world["settings"]
    env = {
        **os.environ,
        "REKINDLE_HOME": str(settings.home),
        "REKINDLE_WAREHOUSE_URL": world["url"],
        "REKINDLE_API_KEYS": API_KEYS,
    }
    result = subprocess.run(
        [sys.executable, "-m", "ml.cli", "benchmark", "serve", "--url", world["server"].base_url, "--rates", "40"]
        + ["--seconds", "2", "--event-seconds", "1", "--users", "50"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 40 |"))
    assert row.split("|")[2].strip() == "80" and row.split("|")[-2].strip() == "0"  # 80 requests, no errors
    events = next(line for line in result.stdout.splitlines() if line.startswith("events:"))
    assert "(0 lost)" in events and not events.startswith("events: 0 accepted")


def test_opt_outs_apply_at_once(world):
    """A marketing opt-out withdraws today's offer before the next publication; a personalisation opt-out turns
    the user's lists into the zone's popular merchants, saying so."""
    with world["server"].client(BOTH_KEY) as client:
        offered = sorted(world["offered"])[0]  # opted in, with a row in today's offers (an offer or the holdout)
        before = client.get(f"/v1/users/{offered}/offer").json()
        accepted = client.post("/v1/events", json={"events": [_event(offered, "marketing_opt_out")]}).json()
        withdrawn = client.get(f"/v1/users/{offered}/offer").json()

        user_id = _user(world, "active")
        path = f"/v1/users/{user_id}/recommendations"
        before = client.get(path, params={"mode": "winback"}).json()
        client.post("/v1/events", json={"events": [_event(user_id, "personalisation_opt_out")]})
        after = client.get(path, params={"mode": "winback"}).json()
    assert accepted["accepted"] == 1
    assert before.get("reason") != "opted out", before
    assert withdrawn["offer"] is None and withdrawn["reason"] == "opted out"
    assert before["personalised"] is True and after["personalised"] is False
    assert after["items"] and all("not personalised" in item["reason"] for item in after["items"])


def test_a_new_publication_is_served_without_a_restart(world):
    """Last: it changes the module's publication."""
    user_id = _user(world, "lapsed")
    next_day = RUN_DATE + timedelta(days=1)
    with world["server"].client() as client:
        assert client.get(f"/v1/users/{user_id}/recommendations").json()["run_date"] == "2026-11-01"
        publish_day(world["settings"], next_day, model_version="2")
        deadline = time.monotonic() + 30
        while client.get("/readyz").json().get("run_date") != next_day.isoformat() and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = client.get(f"/v1/users/{user_id}/recommendations").json()
    assert answer["run_date"] == next_day.isoformat() and answer["model_version"] == "2" and not answer["cached"]
