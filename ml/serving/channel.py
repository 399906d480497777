"""The warehouse channel the API's workers listen on (``LISTEN rekindle_api_events``).

Each payload is its sender's origin, then one line per message: an event a worker accepted (``SessionEvent.encode``),
for the other workers' sessions, or an erased user (``FORGET_LINE`` + the id), whom every worker drops from its
response cache and sessions. Any process with a warehouse connection may send on it: ``forget_users`` does, so
``rekindle forget`` reaches the running API too. Listeners hear a payload when its transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

EVENTS_CHANNEL = "rekindle_api_events"
FORGET_LINE = "forget\t"
# NOTIFY payloads must stay below 8000 bytes.
NOTIFY_PAYLOAD_BYTES = 7000
# The origin of erasures; a worker's own origin is a random hex id, so no worker takes an erasure for its own.
ERASURE_ORIGIN = "erasure"


def payloads(origin: str, lines: Iterable[str]) -> list[str]:
    """``lines`` as payloads of at most about ``NOTIFY_PAYLOAD_BYTES``, each opening with ``origin``."""
    chunks: list[list[str]] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > NOTIFY_PAYLOAD_BYTES:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        chunks.append(chunk)
    return ["\n".join([origin, *chunk]) for chunk in chunks]


def notify_forgotten(conn: psycopg.Connection, user_ids: Iterable[str]) -> None:
    """Tell every API worker, when ``conn``'s transaction commits, to drop these users' cached answers and sessions."""
    for payload in payloads(ERASURE_ORIGIN, (FORGET_LINE + user_id for user_id in user_ids)):
        conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, payload))
