"""The FastAPI app of ``rekindle serve``: recommendations, offers, similar merchants, profiles, event tracking.

Responses come from the latest publication (the newest run_date in ``crm.recommendations``), re-scored for the
request's context and the user's events since then (``ml/serving/session.py``), and are cached per user
(``ml/serving/cache.py``). A watcher thread per process polls for a new publication and listens for events
other workers accepted (``NOTIFY rekindle_api_events``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import pandas as pd
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from ml.recommend.lifecycle import INACTIVE_SEGMENTS
from ml.recommend.modes import DISCOVERY, MODES, WINBACK
from ml.recommend.rerank import mmr_rerank
from ml.serving import auth
from ml.serving.cache import ResponseCache
from ml.serving.channel import EVENTS_CHANNEL, FORGET_LINE, payloads
from ml.serving.queries import DAY_PARTS, Catalogue, Warehouse, day_part_at, local_utc_offset_hours
from ml.serving.role import api_role_url
from ml.serving.session import SessionEvent, Sessions, adapts, needs_merchant
from ml.serving.variants import CHAMPION, COSINE, ServingExperiment
from ml.settings import Settings
from ml.warehouse import postgres
from ml.warehouse.contract import ID_MAX_LENGTH, NO_OFFER
from ml.warehouse.ingest import CONTRACTS, validate

log = logging.getLogger(__name__)

MAX_EVENTS = 1000
# An id as the data contract defines it (ml/warehouse/contract.py): 1-128 characters, not only whitespace, no
# control characters.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
UserId = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="opaque id")]
MerchantId = Annotated[
    str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="opaque merchant id")
]
NOT_PUBLISHED = "nothing is published yet: run `rekindle run` first"
BEARER = HTTPBearer(auto_error=False, description="an API key with the read or write scope")
OFFER_REASONS = ("holdout", "not inactive", "nothing profitable", "opted out", "unknown user")


def to_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return to_json(content)


# ---------------------------------------------------------------------------------------------------------------
# Response and request models (the OpenAPI schema; routes return plain dicts, not validated again)


class Item(BaseModel):
    merchant_id: str
    merchant_name: str | None
    score: float
    reason: str | None
    position: int


class Recommendations(BaseModel):
    user_id: str
    recommendation_id: str
    run_date: str
    mode: str
    model_version: str | None
    variant: str
    personalised: bool  # false after a personalisation opt-out: the zone's popular merchants
    cached: bool
    items: list[Item]


class Offer(BaseModel):
    campaign_id: str
    event_type: str
    reward_size: float
    expected_uplift: float
    valid_until: str


class OfferAnswer(BaseModel):
    user_id: str
    run_date: str
    offer: Offer | None
    reason: str | None = Field(description=f"why there is no offer: one of {', '.join(OFFER_REASONS)}")
    cached: bool


class Similar(BaseModel):
    merchant_id: str
    run_date: str
    items: list[Item]


class Event(BaseModel):
    """One event in the data contract's schema (``raw.events``). Values are checked by the same validation as
    ``rekindle ingest``; an event that breaks a rule is quarantined and reported, the others are loaded."""

    model_config = ConfigDict(extra="allow")
    event_id: str | int | None = None
    user_id: str | int | None = None
    event_type: str | None = None
    event_time: str | None = Field(default=None, description="ISO 8601; UTC when it has no offset")
    merchant_id: str | int | None = None
    merchant_name: str | None = None
    order_total: float | str | None = None
    platform: str | None = None
    zone: str | None = None
    properties: dict[str, Any] | None = Field(
        default=None, description="free-form; an impression carries recommendation_id, variant and position here"
    )


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventOutcome(BaseModel):
    index: int
    event_id: str | None
    status: str = Field(description="accepted, duplicate (event_id already loaded) or quarantined")
    reason: str | None


class EventsAnswer(BaseModel):
    accepted: int
    duplicate: int
    quarantined: int
    events: list[EventOutcome]


# ---------------------------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "rekindle_api_request_seconds",
            "Request latency by route and method",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.cache = Counter("rekindle_api_cache", "Response cache look-ups", ["result"], registry=self.registry)
        self.cache_hits = self.cache.labels("hit")
        self.cache_misses = self.cache.labels("miss")
        self.events = Counter("rekindle_api_events", "Events received by outcome", ["outcome"], registry=self.registry)


class LatencyMiddleware:
    """Pure ASGI (no per-request task): times every request by its route template."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            self.metrics.latency.labels(getattr(route, "path", "unmatched"), scope["method"]).observe(
                time.perf_counter() - started
            )


# The routes whose 200 answers are cached per user, by the last part of their path.
CACHED_ROUTES = {
    "recommendations": "/v1/users/{user_id}/recommendations",
    "offer": "/v1/users/{user_id}/offer",
}
USERS_PREFIX = "/v1/users/"


class CachedAnswers:
    """Pure ASGI, in front of FastAPI: answers a GET of a cached route from the bytes FastAPI's route stored for
    exactly this path and query string (``Server.cache``), once the request's key has the read scope
    (``auth.refusal``, as the routes check it). Everything else, misses and refused keys included, goes to FastAPI,
    so validation, errors and computing an answer happen there only."""

    def __init__(self, app, server: Server):
        self.app = app
        self.server = server
        self.latency = {name: server.metrics.latency.labels(route, "GET") for name, route in CACHED_ROUTES.items()}

    @staticmethod
    def key(scope) -> tuple[str, bytes]:
        return scope["path"], scope["query_string"]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(USERS_PREFIX):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        user_id, _, route = scope["path"][len(USERS_PREFIX) :].partition("/")
        body = self.server.cache.get(user_id, self.key(scope)) if route in CACHED_ROUTES else None
        if body is None or auth.refusal(self.server.keys, _bearer_key(scope), auth.READ) is not None:
            await self.app(scope, receive, send)
            return
        self.server.metrics.cache_hits.inc()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.latency[route].observe(time.perf_counter() - started)


def _bearer_key(scope) -> str | None:
    """The key of the first Authorization header, parsed as the routes' HTTPBearer parses it; None without one."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, key = get_authorization_scheme_param(value.decode("latin-1"))
            return key if scheme.lower() == "bearer" and key else None
    return None


# ---------------------------------------------------------------------------------------------------------------
# State


class Server:
    """What one server process holds: the warehouse, the current publication's catalogue, caches, sessions."""

    def __init__(self, settings: Settings, url: str):
        self.settings = settings
        self.warehouse = Warehouse(url)
        self.cache = ResponseCache(settings.api_cache_ttl_seconds, settings.api_cache_max_users)
        self.sessions = Sessions()
        self.experiment = ServingExperiment.from_settings(settings.serving_experiment, settings.serving_strategies)
        self.keys = auth.KeyRing(auth.load_keys(settings))
        self.metrics = Metrics()
        self.offset_hours = local_utc_offset_hours()
        self.origin = uuid.uuid4().hex
        self.catalogue: Catalogue | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.listening = threading.Event()  # set once the watcher hears other workers' events

    # publication ------------------------------------------------------------------------------------------------

    def refresh_publication(self) -> bool:
        """Load the newest publication's catalogue when it changed; True when it did."""
        run_date = self.warehouse.latest_run_date()
        if run_date is None or (self.catalogue is not None and self.catalogue.run_date == run_date):
            return False
        catalogue = self.warehouse.load_catalogue(run_date)
        self.sessions.start_publication(run_date)
        self.catalogue = catalogue
        self.cache.clear()
        log.info("serving the publication of %s (%d merchants)", run_date, len(catalogue.merchants))
        return True

    def start_watching(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="publication-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.warehouse.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self.settings.api_publication_poll_seconds):
                            self._apply_notification(note.payload)
                        self.refresh_publication()
            except psycopg.Error as exc:
                log.warning("publication watcher: %s; retrying", exc)
                self._stop.wait(self.settings.api_publication_poll_seconds)

    def _apply_notification(self, payload: str) -> None:
        origin, _, body = payload.partition("\n")
        if origin == self.origin:
            return
        for line in body.splitlines():
            if line.startswith(FORGET_LINE):
                self.forget(line.removeprefix(FORGET_LINE))
            else:
                self.apply(SessionEvent.decode(line))

    def forget(self, user_id: str) -> None:
        """Drop an erased user's cached responses and session events in this process."""
        self.cache.invalidate(user_id)
        self.sessions.forget(user_id)

    def apply(self, event: SessionEvent) -> None:
        if self.sessions.apply(event):
            self.cache.invalidate(event.user_id)

    def notifications(self, events: list[tuple[str, SessionEvent]]) -> Callable[[set[str]], list[tuple[str, str]]]:
        """NOTIFY payloads (origin, then one event per line) for the events that were new, chunked."""

        def notifications_of(inserted_ids: set[str]) -> list[tuple[str, str]]:
            lines = [event.encode() for event_id, event in events if event_id in inserted_ids]
            return [(EVENTS_CHANNEL, payload) for payload in payloads(self.origin, lines)]

        return notifications_of

    def require_catalogue(self) -> Catalogue:
        if self.catalogue is None:
            raise HTTPException(503, NOT_PUBLISHED)
        return self.catalogue


# ---------------------------------------------------------------------------------------------------------------
# Recommendations


def default_mode(user: dict | None) -> str:
    """winback for users in an inactive lifecycle segment (at_risk, lapsed, dormant, churned), discovery otherwise
    (new and active users, and users the marts do not know)."""
    return WINBACK if user and user["lifecycle_segment"] in INACTIVE_SEGMENTS else DISCOVERY


def share_of_best(scores: list[float]) -> list[float]:
    """Scores as a fraction of the best, measured from zero or from the lowest when negative (as the CRM
    segments normalise them, ml/crm/segments.py): 1 = the list's top pick."""
    if not scores:
        return []
    best, zero = max(scores), min(0.0, min(scores))
    spread = best - zero
    return [(s - zero) / spread if spread > 0 else 1.0 for s in scores]


def _split(text: str | None) -> set[str]:
    return {part.strip() for part in (text or "").split(",") if part.strip()}


def recommend(
    server: Server,
    user_id: str,
    n: int,
    mode: str | None,
    zone: str | None,
    day_part: str | None,
    categories: set[str],
    exclude: set[str],
    diversity: float,
    now: datetime,
) -> dict:
    catalogue = server.require_catalogue()
    user, published_rows, ordered_rows = server.warehouse.user_context(catalogue.run_date, user_id)
    mode = mode or default_mode(user)
    variant = server.experiment.variant(user_id)
    zone = zone or (user["home_zone"] if user else None)
    day_part = day_part or day_part_at(now, server.offset_hours)
    session = server.sessions.of(user_id)
    ordered = {row["merchant_id"]: row["merchant_name"] for row in ordered_rows}
    popular_reason = f"popular in {zone}" if zone else "popular"
    model_version = None
    personalised = not (session.personalisation_opt_out or (user or {}).get("personalisation_opt_out"))

    # (merchant, raw score, reason) from the user's variant.
    if not personalised:
        # Opted out of personalisation: the zone's popular merchants, nothing from the user's own history.
        candidates = []
        popular_reason = f"{popular_reason} (not personalised: you opted out of personalisation)"
        ordered, session = {}, type(session)()
    elif variant == CHAMPION:
        published = [r for r in published_rows if r["mode"] == mode]
        candidates = [(r["merchant_id"], r["score"], r["reason"]) for r in published]
        model_version = published[0]["model_version"] if published else None
    elif variant == COSINE:
        summed: dict[str, float] = {}
        because: dict[str, tuple[float, str]] = {}
        for source in ordered:
            for neighbour, similarity in catalogue.neighbours.get(source, []):
                summed[neighbour] = summed.get(neighbour, 0.0) + similarity
                if similarity > because.get(neighbour, (0.0, ""))[0]:
                    because[neighbour] = (similarity, source)
        candidates = [
            (m, s, f"because you ordered from {ordered[because[m][1]] or because[m][1]}") for m, s in summed.items()
        ]
        candidates.sort(key=lambda c: (-c[1], c[0]))
    else:
        candidates = []
    if not candidates:  # the popularity variant, and users no model knows
        candidates = [(m, count, popular_reason) for m, count in catalogue.popular(zone)[: 4 * n]]

    scored = dict(zip([c[0] for c in candidates], share_of_best([c[1] for c in candidates])))
    reasons = {c[0]: c[2] for c in candidates}
    # Views since the publication lift the viewed merchants' neighbours (and bring them in).
    for viewed, views in session.viewed.items():
        name = catalogue.merchants[viewed].name if viewed in catalogue.merchants else viewed
        for neighbour, similarity in catalogue.neighbours.get(viewed, [])[: 2 * n]:
            lift = server.settings.api_view_boost * similarity * views
            if neighbour not in scored:
                reasons[neighbour] = f"because you viewed {name}"
            scored[neighbour] = scored.get(neighbour, 0.0) + lift
    # Context: the request's zone and day-part.
    for merchant_id in scored:
        merchant = catalogue.merchants.get(merchant_id)
        if merchant is not None and zone is not None and merchant.zone == zone:
            scored[merchant_id] += server.settings.api_zone_boost
        share = catalogue.day_part_share.get(merchant_id)
        if share:
            scored[merchant_id] += server.settings.api_daypart_boost * share[day_part]

    def allowed(merchant_id: str) -> bool:
        merchant = catalogue.merchants.get(merchant_id)
        if merchant is None or merchant_id in exclude:
            return False
        if categories and merchant.category not in categories:
            return False
        if mode == DISCOVERY and (merchant_id in ordered or merchant_id in session.ordered):
            return False
        return True

    kept = {m: s for m, s in scored.items() if allowed(m)}
    if len(kept) < n:
        for merchant_id, _count in catalogue.popular(zone):
            if len(kept) >= n:
                break
            if merchant_id not in kept and allowed(merchant_id):
                kept[merchant_id] = 0.0
                reasons[merchant_id] = popular_reason
    ranked = sorted(kept.items(), key=lambda item: (-item[1], item[0]))[: 4 * n]
    items, scores = mmr_rerank(
        [m for m, _ in ranked],
        [s for _, s in ranked],
        {m: catalogue.merchants[m].category for m, _ in ranked},
        lam=diversity,
        n=n,
    )
    return {
        "user_id": user_id,
        "recommendation_id": uuid.uuid4().hex,
        "run_date": catalogue.run_date.isoformat(),
        "mode": mode,
        "model_version": model_version,
        "variant": variant,
        "personalised": personalised,
        "cached": False,
        "items": [
            {
                "merchant_id": str(m),
                "merchant_name": catalogue.merchants[m].name,
                "score": round(float(s), 6),
                "reason": reasons.get(m),
                "position": position,
            }
            for position, (m, s) in enumerate(zip(items, scores), start=1)
        ],
    }


# ---------------------------------------------------------------------------------------------------------------
# Offers and profiles


def offer_answer(server: Server, user_id: str) -> dict:
    catalogue = server.require_catalogue()
    row = server.warehouse.offer(catalogue.run_date, user_id)
    answer = {"user_id": user_id, "run_date": catalogue.run_date.isoformat(), "offer": None, "reason": None}
    if server.sessions.of(user_id).marketing_opt_out:
        answer["reason"] = "opted out"  # since the publication: today's offer is withdrawn at once
        return answer
    if row is not None and not row["is_holdout"] and row["event_type"] != NO_OFFER:
        valid_until = catalogue.run_date + pd.Timedelta(days=server.settings.reactivation_window_days)
        answer["offer"] = {
            "campaign_id": row["campaign_id"],
            "event_type": row["event_type"],
            "reward_size": float(row["reward_size"]),
            "expected_uplift": float(row["expected_uplift"]),
            "valid_until": valid_until.isoformat(),
        }
        return answer
    if row is not None:
        answer["reason"] = "holdout" if row["is_holdout"] else "nothing profitable"
        return answer
    user = server.warehouse.user(user_id)
    if user is None:
        answer["reason"] = "unknown user"
    elif user["lifecycle_segment"] not in INACTIVE_SEGMENTS:
        answer["reason"] = "not inactive"
    elif not user["marketing_opt_in"]:
        answer["reason"] = "opted out"
    else:
        answer["reason"] = "nothing profitable"
    return answer


def profile(server: Server, user_id: str) -> dict:
    catalogue = server.require_catalogue()
    user = server.warehouse.user(user_id)
    if user is None:
        raise HTTPException(404, f"unknown user {user_id!r}: not in marts.user_features")
    merchants = server.warehouse.user_merchants(user_id)
    offer = offer_answer(server, user_id)
    mode = default_mode(user)
    why = [
        f"lifecycle segment {user['lifecycle_segment']}: recommendations default to the {mode} list"
        + (" (favourites included)" if mode == WINBACK else " (merchants they never ordered from)"),
        f"serving variant {server.experiment.variant(user_id)}",
        f"offer: {offer['offer']['event_type']} {offer['offer']['reward_size']:g}"
        if offer["offer"]
        else f"no offer: {offer['reason']}",
    ]
    if user["taste_drift"]:
        why.append(f"taste drifting towards {user['recent_favourite_category']}")
    return {
        "user_id": user_id,
        "run_date": catalogue.run_date.isoformat(),
        "lifecycle_segment": user["lifecycle_segment"],
        "value_tier": user["value_tier"],
        "home_zone": user["home_zone"],
        "platform": user["platform"],
        "marketing_opt_in": user["marketing_opt_in"],
        "order_count": user["order_count"],
        "days_since_last_order": user["days_since_last_order"],
        "favourite_categories": [
            c for c in dict.fromkeys([user["favourite_category"], user["recent_favourite_category"]]) if c
        ],
        "recent_orders": [
            {
                "merchant_id": m["merchant_id"],
                "merchant_name": m["merchant_name"],
                "category": m["category"],
                "order_count": m["order_count"],
                "last_order_at": m["last_order_at"].isoformat(),
            }
            for m in merchants[:5]
        ],
        "default_mode": mode,
        "why": why,
    }


# ---------------------------------------------------------------------------------------------------------------
# Events


def receive_events(server: Server, batch: EventBatch) -> dict:
    """Validate a batch with ingest's own validation, insert the valid events (new event_ids only), quarantine
    the others with the reason, and apply the new ones to the sessions."""
    records = [event.model_dump(exclude_unset=True) for event in batch.events]
    contract = CONTRACTS["events"]
    # The contract's columns only (validate reads no others), None where an event lacks one: each event is then
    # quarantined for it, not the batch refused. Python objects as they came, not typed by pandas: an Arrow string
    # column costs validation more per operation than the hundred values take to check one by one.
    frame = pd.DataFrame(
        {column: [record.get(column) for record in records] for column in contract.columns}, dtype=object
    )
    good, bad = validate(frame, contract, datetime.now(UTC))
    source_file = f"api:{uuid.uuid4().hex}"
    bad_positions = (bad["row_number"] - 1).tolist()
    session_events = [
        (event_id, SessionEvent(user_id, event_type, merchant_id or "", event_time.to_pydatetime()))
        for event_id, user_id, event_type, merchant_id, event_time in zip(
            *(good[column].tolist() for column in ("event_id", "user_id", "event_type", "merchant_id", "event_time"))
        )
        if adapts(event_type) and (merchant_id is not None or not needs_merchant(event_type))
    ]
    quarantined = [
        (position + 1, reason, json.dumps(records[position], default=str))
        for position, reason in zip(bad_positions, bad["reason"].tolist())
    ]
    try:
        inserted = server.warehouse.load_events(good, quarantined, source_file, server.notifications(session_events))
    except (psycopg.DataError, UnicodeEncodeError) as exc:
        # Values the contract allows but the columns cannot hold (an order_total beyond numeric(12, 2), a NUL
        # character, a lone surrogate): nothing of the batch is loaded.
        raise HTTPException(422, f"the batch was not loaded: {str(exc).splitlines()[0]}") from None
    for event_id, event in session_events:
        if event_id in inserted:
            server.apply(event)
    outcomes: list[dict] = [{} for _ in records]
    for position, reason in zip(bad_positions, bad["reason"]):
        outcomes[position] = {"status": "quarantined", "reason": reason}
    for position, event_id in zip(good.index, good["event_id"]):
        outcomes[position] = {"status": "accepted" if event_id in inserted else "duplicate", "reason": None}
    counts = {"accepted": 0, "duplicate": 0, "quarantined": 0}
    for outcome in outcomes:
        counts[outcome["status"]] += 1
    for outcome, count in counts.items():
        server.metrics.events.labels(outcome).inc(count)
    return {
        **counts,
        "events": [
            {"index": i, "event_id": None if records[i].get("event_id") is None else str(records[i]["event_id"]), **o}
            for i, o in enumerate(outcomes)
        ],
    }


# ---------------------------------------------------------------------------------------------------------------
# The app


def create_app(settings: Settings, warehouse_url: str | None = None) -> FastAPI:
    """The API on the settings' warehouse, connected as the API role (``warehouse_url`` overrides the URL)."""
    url = warehouse_url or api_role_url(postgres.start(settings), settings)
    server = Server(settings, url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.refresh_publication()
        server.start_watching()
        yield
        server.stop_watching()

    app = FastAPI(
        title="Rekindle API",
        version="1",
        description="Recommendations and win-back offers on request, event tracking. See docs/api.md.",
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(LatencyMiddleware, metrics=server.metrics)
    app.add_middleware(CachedAnswers, server=server)

    def require(scope: str):
        async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
            refused = auth.refusal(server.keys, None if credentials is None else credentials.credentials, scope)
            if refused is not None:
                status, message = refused
                raise HTTPException(status, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None)

        return Depends(check)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        problems = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:20]]
        return OrjsonResponse({"detail": "; ".join(problems), "errors": problems}, status_code=422)

    @app.get("/healthz", include_in_schema=True, tags=["operations"])
    async def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["operations"], responses={503: {"description": "warehouse unreachable or nothing published"}}
    )
    def readyz():
        """The warehouse answers and a publication is being served."""
        try:
            run_date = server.warehouse.latest_run_date()
        except psycopg.Error as exc:
            return OrjsonResponse({"status": "unavailable", "reason": f"warehouse: {type(exc).__name__}"}, 503)
        if run_date is None or server.catalogue is None:
            return OrjsonResponse({"status": "unavailable", "reason": NOT_PUBLISHED}, 503)
        return {"status": "ready", "run_date": server.catalogue.run_date.isoformat()}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: latency per route, cache hits and misses, events by outcome (this process)."""
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def computed(request: Request, user_id: str, compute: Callable[[], dict]) -> OrjsonResponse:
        """A miss (CachedAnswers answered the hits before FastAPI saw them): read the warehouse on the thread pool
        and keep the answer, serialised as a hit sends it, under this exact path and query."""
        server.metrics.cache_misses.inc()
        answer = await run_in_threadpool(compute)
        server.cache.put(user_id, CachedAnswers.key(request.scope), to_json({**answer, "cached": True}))
        return OrjsonResponse(answer)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=None,
        responses={200: {"model": Recommendations}, 503: {"description": NOT_PUBLISHED}},
        dependencies=[require(auth.READ)],
        tags=["recommendations"],
    )
    async def recommendations(
        request: Request,
        user_id: UserId,
        n: Annotated[int, Query(ge=1, le=100, description="how many merchants")] = 10,
        mode: Annotated[
            str | None,
            Query(
                pattern=f"^({'|'.join(MODES)})$",
                description="winback (favourites included) or discovery (never ordered from); default: winback for "
                "at_risk, lapsed, dormant and churned users, discovery otherwise",
            ),
        ] = None,
        zone: Annotated[str | None, Query(max_length=100, description="default: the user's home zone")] = None,
        daypart: Annotated[
            str | None,
            Query(pattern=f"^({'|'.join(DAY_PARTS)})$", description="default: from the request time (local)"),
        ] = None,
        category: Annotated[str | None, Query(max_length=1000, description="keep only these (comma-separated)")] = None,
        exclude: Annotated[
            str | None, Query(max_length=10000, description="merchant ids to leave out, comma-separated")
        ] = None,
        diversity: Annotated[
            float | None, Query(ge=0.0, le=1.0, description="MMR lambda: 1 keeps the order, lower mixes categories")
        ] = None,
    ):
        """Today's list re-scored for context (zone, day-part) and the user's events since the publication,
        filtered, diversified."""
        lam = settings.diversity_lambda if diversity is None else diversity
        categories, excluded = _split(category), _split(exclude)
        now = datetime.now(UTC)
        return await computed(
            request, user_id, lambda: recommend(server, user_id, n, mode, zone, daypart, categories, excluded, lam, now)
        )

    @app.get(
        "/v1/users/{user_id}/offer",
        response_model=None,
        responses={200: {"model": OfferAnswer}, 503: {"description": NOT_PUBLISHED}},
        dependencies=[require(auth.READ)],
        tags=["offers"],
    )
    async def offer(request: Request, user_id: UserId):
        """Today's win-back offer, or null with the reason."""
        return await computed(request, user_id, lambda: {**offer_answer(server, user_id), "cached": False})

    @app.get(
        "/v1/merchants/{merchant_id}/similar",
        response_model=None,
        responses={
            200: {"model": Similar},
            404: {"description": "unknown merchant"},
            503: {"description": NOT_PUBLISHED},
        },
        dependencies=[require(auth.READ)],
        tags=["recommendations"],
    )
    async def similar(merchant_id: MerchantId, n: Annotated[int, Query(ge=1, le=50)] = 10):
        """The merchants most often ordered by the same customers: co-order cosine of the publication's marts."""
        catalogue = server.require_catalogue()
        if merchant_id not in catalogue.merchants:
            raise HTTPException(404, f"unknown merchant {merchant_id!r}")
        return {
            "merchant_id": merchant_id,
            "run_date": catalogue.run_date.isoformat(),
            "items": [
                {
                    "merchant_id": m,
                    "merchant_name": catalogue.merchants[m].name if m in catalogue.merchants else None,
                    "score": round(s, 6),
                    "reason": "ordered by the same customers",
                    "position": position,
                }
                for position, (m, s) in enumerate(catalogue.neighbours.get(merchant_id, [])[:n], start=1)
            ],
        }

    @app.get(
        "/v1/users/{user_id}/profile",
        response_model=None,
        responses={404: {"description": "unknown user"}, 503: {"description": NOT_PUBLISHED}},
        dependencies=[require(auth.READ)],
        tags=["users"],
    )
    def user_profile(user_id: UserId):
        """Lifecycle segment, value tier, favourite categories, recent orders, and why they get what they get."""
        return profile(server, user_id)

    @app.post(
        "/v1/events",
        response_model=None,
        responses={200: {"model": EventsAnswer}},
        dependencies=[require(auth.WRITE)],
        tags=["events"],
    )
    def events(batch: EventBatch):
        """1-1,000 events: valid ones loaded into raw.events (idempotent by event_id), the others quarantined
        with the reason; the outcome of every event in order."""
        return OrjsonResponse(receive_events(server, batch))

    @app.delete(
        "/v1/users/{user_id}",
        response_model=None,
        dependencies=[require(auth.WRITE)],
        tags=["users"],
    )
    def forget_user(
        user_id: UserId,
        request_id: Annotated[
            str | None, Query(min_length=1, max_length=200, description="the erasure request's id")
        ] = None,
    ):
        """Erase the user everywhere the project writes them (``ml.privacy.erasure.forget_users``: raw, every dbt
        model, crm, the CSV exports, the registered ranker; tombstoned and audited) and from every worker's cache and
        session. Runs as the pipeline's owner, not the API role; rows removed per place, never the id."""
        from ml.privacy.erasure import forget_users

        report = forget_users(settings, [user_id], request_id)  # which tells every worker, this one too
        server.forget(user_id)  # before answering, not when the notification comes back
        return report.as_dict()

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory for ``rekindle serve --workers N``: each worker builds the app from the environment."""
    return create_app(Settings.from_env())
