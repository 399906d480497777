"""Tombstones of erased users: a salted hash of each id in ``ops.erased_users``, never the id in clear.

Ingest (``ml/warehouse/ingest.py``) drops every row whose user_id hashes to a tombstone, so re-loading an old file
never brings an erased user back. The hash is HMAC-SHA256 keyed by the salt (``Settings.erasure_salt``, else a
random one generated once into ``<home>/erasure_salt``): without the salt a tombstone cannot be tested against a
guessed id. Every process that ingests must use the same salt (set ``REKINDLE_ERASURE_SALT`` when they do not
share the home folder).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

from ml.settings import Settings

SALT_FILE = "erasure_salt"


def ensure_tables(conn: psycopg.Connection) -> None:
    """Create ``ops.erased_users`` and ``ops.erasure_audit`` if missing (idempotent)."""
    conn.execute(resources.files("ml.privacy").joinpath("schema.sql").read_text())


# The transaction-level advisory lock an erasure and the daily publish both take: a publish sees every erasure that
# committed before it, and an erasure waits for a publish in flight, then removes what that publish wrote.
ERASURE_LOCK_KEY = 7_265_107_110_100_108  # any bigint no other lock of this database uses


def hold_erasure_lock(conn: psycopg.Connection) -> None:
    """Take the erasure lock until the end of ``conn``'s transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ERASURE_LOCK_KEY,))


def salt_file(settings: Settings) -> Path:
    return settings.home / SALT_FILE


def erasure_salt(settings: Settings) -> str:
    """``settings.erasure_salt``, else the one in ``<home>/erasure_salt``, generated (mode 0600) on first use."""
    if settings.erasure_salt:
        return settings.erasure_salt
    path = salt_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process generated it first: use theirs
            pass
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
    salt = path.read_text().strip()
    if not salt:
        raise ValueError(f"{path} is empty: delete it to have a new salt generated, or set REKINDLE_ERASURE_SALT")
    return salt


def user_hash(salt: str, user_id: str) -> str:
    """The tombstone of one user id (as the warehouse holds it: trimmed text)."""
    return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ErasedUsers:
    """The tombstones, loaded once per ingest, and the salt to test ids against them."""

    salt: str | None
    hashes: frozenset[str]

    @classmethod
    def load(cls, conn: psycopg.Connection, salt: str | None) -> ErasedUsers:
        ensure_tables(conn)
        hashes = frozenset(h for (h,) in conn.execute("SELECT user_hash FROM ops.erased_users"))
        if hashes and not salt:
            raise ValueError(
                f"{len(hashes)} user(s) were erased, and ingest was given no erasure salt to recognise their rows "
                "by: pass the settings' salt (ml.privacy.tombstones.erasure_salt)"
            )
        return cls(salt, hashes)

    def mask(self, user_ids: pd.Series) -> np.ndarray:
        """True for the rows whose user id (canonical text; None for none) belongs to an erased user. Each
        distinct id is hashed once."""
        if not self.hashes or user_ids.empty:
            return np.zeros(len(user_ids), dtype=bool)
        codes, distinct = pd.factorize(user_ids)
        erased = np.array(
            [isinstance(u, str) and user_hash(self.salt, u) in self.hashes for u in distinct] + [False], dtype=bool
        )
        return erased[codes]


# Rows the API inserts (POST /v1/events) carry this source_file prefix (ml/serving/app.py receive_events).
API_SOURCE_PREFIX = "api:"


def purge_api_rows(conn: psycopg.Connection, erased: ErasedUsers) -> int:
    """Delete the events and quarantined records the API inserted for erased users (the API role cannot read the
    tombstones, so the daily load drops them after the fact); returns the rows deleted."""
    if not erased.hashes:
        return 0
    users = pd.Series(
        [
            u
            for (u,) in conn.execute(
                "SELECT DISTINCT user_id FROM raw.events WHERE starts_with(source_file, %(api)s) "
                "UNION SELECT DISTINCT btrim(record ->> 'user_id') FROM raw.quarantine "
                "WHERE starts_with(source_file, %(api)s)",
                {"api": API_SOURCE_PREFIX},
            )
        ],
        dtype=object,
    )
    gone = users[erased.mask(users)].tolist()
    if not gone:
        return 0
    events = conn.execute(
        "DELETE FROM raw.events WHERE starts_with(source_file, %s) AND user_id = ANY(%s)", (API_SOURCE_PREFIX, gone)
    ).rowcount
    quarantined = conn.execute(
        "DELETE FROM raw.quarantine WHERE starts_with(source_file, %s) AND btrim(record ->> 'user_id') = ANY(%s)",
        (API_SOURCE_PREFIX, gone),
    ).rowcount
    return events + quarantined
