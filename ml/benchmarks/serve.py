"""Open-loop load on a running `rekindle serve`: recommendation latency at fixed arrival rates, event throughput.

Requests leave on a fixed schedule (request i at start + i / rate) whatever the server's answers, and each
latency is measured from the request's scheduled send time: when the server (or the generator) falls behind,
the queue shows up in the latencies instead of slowing the arrivals. Users are drawn at random from the latest
publication. Events go in batches of 100 from a few concurrent senders; afterwards every event the server acknowledged must be
in ``raw.events`` (counted by the run's event_id prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import psycopg

from ml.cli.options import UsageError, non_negative_int, positive_int
from ml.crm.export import latest_run_date
from ml.serving import auth
from ml.settings import Settings
from ml.warehouse import postgres

DEFAULT_RATES = (250, 500, 1000, 2000)
EVENT_BATCH = 100
EVENT_SENDERS = 8
P99_TARGET_MS = 10.0
TARGET_RATE = 1000
EVENTS_TARGET_PER_SECOND = 5000


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be at least 1 request/s")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running server (default: %(default)s)")
    parser.add_argument("--rates", type=_rates, default=DEFAULT_RATES, help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=positive_int, default=30, help="seconds per rate (default: 30)")
    parser.add_argument("--event-seconds", type=positive_int, default=30, help="seconds of event load (default: 30)")
    parser.add_argument("--users", type=positive_int, default=5000, help="published users to draw from")
    parser.add_argument("--seed", type=non_negative_int, default=0)


def _keys(settings: Settings) -> tuple[str, str]:
    """A read key and a write key from the server's configuration (REKINDLE_API_KEYS or the keys file)."""
    try:
        keys = auth.load_keys(settings)
    except auth.ApiKeyError as exc:
        raise UsageError(str(exc)) from None
    scoped = {scope: [key for key, scopes in keys.items() if scope in scopes] for scope in (auth.READ, auth.WRITE)}
    missing = [scope for scope, listed in scoped.items() if not listed]
    if missing:
        raise UsageError(
            f"the server's API keys have none with the {' or '.join(missing)} scope; the benchmark needs both"
        )
    return scoped[auth.READ][0], scoped[auth.WRITE][0]


async def _open_loop(session, url: str, users: list[str], rate: int, seconds: int, rng: random.Random) -> dict:
    total = rate * seconds
    latencies = np.full(total, np.nan)
    errors = 0
    # perf_counter, not loop.time(): uvloop's loop clock is libuv's cached millisecond time, which would round
    # every latency to whole milliseconds.
    start = time.perf_counter() + 0.1

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        try:
            async with session.get(f"{url}/v1/users/{rng.choice(users)}/recommendations") as response:
                await response.read()
                if response.status != 200:
                    errors += 1
        except Exception:  # a refused or dropped connection is an error of the run, not of the generator
            errors += 1
        latencies[i] = time.perf_counter() - scheduled

    # Only the requests in flight are held: keeping every finished task made each of the generator's full garbage
    # collections walk tens of thousands of them, pauses that showed up as the server's p99.
    in_flight: set[asyncio.Future] = set()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - start
    ms = latencies * 1000
    return {
        "rate": rate,
        "requests": total,
        "achieved_rate": round(total / elapsed),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "errors": errors,
    }


async def _events(session, url: str, users: list[str], merchants: list[str], seconds: int, prefix: str) -> dict:
    accepted = duplicate = sent = errors = 0
    counter = 0
    deadline = time.monotonic() + seconds

    async def sender(rng: random.Random) -> None:
        nonlocal accepted, duplicate, sent, errors, counter
        while time.monotonic() < deadline:
            now = datetime.now(UTC).isoformat()
            batch = []
            for _ in range(EVENT_BATCH):
                counter += 1
                viewed = rng.random() < 0.8
                batch.append(
                    {
                        "event_id": f"{prefix}-{counter}",
                        "user_id": rng.choice(users),
                        "event_type": "merchant_page_viewed" if viewed else "app_opened",
                        "event_time": now,
                        "merchant_id": rng.choice(merchants) if viewed else None,
                        "platform": "web",
                    }
                )
            async with session.post(f"{url}/v1/events", data=json.dumps({"events": batch})) as response:
                sent += len(batch)
                if response.status != 200:
                    errors += 1
                    continue
                answer = await response.json()
                accepted += answer["accepted"]
                duplicate += answer["duplicate"]

    started = time.monotonic()
    await asyncio.gather(*(sender(random.Random(i)) for i in range(EVENT_SENDERS)))
    elapsed = time.monotonic() - started
    return {
        "sent": sent,
        "accepted": accepted,
        # Each event_id is sent once, so a duplicate is a batch the client sent again after a dropped connection
        # whose first attempt the server had loaded.
        "duplicate": duplicate,
        "failed_batches": errors,
        "events_per_second": round(accepted / elapsed),
    }


async def _run_load(args, read_key: str, write_key: str, users: list[str], merchants: list[str], prefix: str):
    import aiohttp

    rng = random.Random(args.seed)
    connector = aiohttp.TCPConnector(limit=1000)
    headers = {"Authorization": f"Bearer {read_key}"}
    results = []
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for rate in args.rates:
            results.append(await _open_loop(session, args.url, users, rate, args.seconds, rng))
            print(_row(results[-1]), flush=True)
    write_headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), headers=write_headers) as session:
        events = await _events(session, args.url, users, merchants, args.event_seconds, prefix)
    return results, events


def _row(result: dict) -> str:
    return (
        f"| {result['rate']:,} | {result['requests']:,} | {result['achieved_rate']:,} | {result['p50_ms']} | "
        f"{result['p90_ms']} | {result['p99_ms']} | {result['max_ms']} | {result['errors']} |"
    )


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    read_key, write_key = _keys(settings)
    owner_url = postgres.start(settings)
    with psycopg.connect(owner_url) as conn:
        run_date = latest_run_date(conn)
        if run_date is None:
            print("nothing published: run `rekindle run` first")
            return 1
        users = [
            u
            for (u,) in conn.execute(
                "SELECT DISTINCT user_id FROM crm.recommendations WHERE run_date = %s ORDER BY 1 LIMIT %s",
                (run_date, args.users),
            )
        ]
        merchants = [m for (m,) in conn.execute("SELECT merchant_id FROM marts.merchant_features ORDER BY 1")]
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    print(
        f"open loop against {args.url}: {len(users):,} users of the {run_date} publication, {args.seconds} s per rate"
    )
    print("| req/s | requests | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results, events = asyncio.run(_run_load(args, read_key, write_key, users, merchants, prefix))
    with psycopg.connect(owner_url) as conn:
        stored = conn.execute("SELECT count(*) FROM raw.events WHERE event_id LIKE %s", (f"{prefix}-%",)).fetchone()[0]
    acknowledged = events["accepted"] + events["duplicate"]
    print(
        f"\nevents: {events['accepted']:,} accepted ({events['duplicate']:,} more answered as already loaded) of "
        f"{events['sent']:,} sent in batches of {EVENT_BATCH} by "
        f"{EVENT_SENDERS} senders, {events['events_per_second']:,} events/s, {events['failed_batches']} failed "
        f"batches; {stored:,} in raw.events ({acknowledged - stored:,} lost)"
    )
    at_target = next((r for r in results if r["rate"] == TARGET_RATE), None)
    if at_target is not None:
        met = at_target["p99_ms"] <= P99_TARGET_MS and at_target["errors"] == 0
        print(
            f"target p99 <= {P99_TARGET_MS:g} ms at {TARGET_RATE:,} req/s with no errors: {'met' if met else 'NOT met'}"
        )
    met = events["events_per_second"] >= EVENTS_TARGET_PER_SECOND and stored == acknowledged
    print(f"target >= {EVENTS_TARGET_PER_SECOND:,} events/s with none lost: {'met' if met else 'NOT met'}")
    return 0
