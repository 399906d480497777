"""API keys with scopes: ``Authorization: Bearer <key>``; 401 without a known key, 403 without the scope.

Keys come from ``REKINDLE_API_KEYS`` (``scope:key``, comma-separated; list a key twice to give it both scopes)
or, when that is empty, from ``<home>/api_keys.json``, which ``rekindle serve`` writes with one generated key
per scope (mode 0600). Keys are compared in constant time and never logged or printed.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

from ml.settings import Settings

READ = "read"
WRITE = "write"
SCOPES = (READ, WRITE)


class ApiKeyError(ValueError):
    """A malformed REKINDLE_API_KEYS entry or keys file (the message never contains a key)."""


def parse_keys(entries: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """``("read:abc", "write:xyz")`` -> {key: scopes}."""
    keys: dict[str, set[str]] = {}
    for number, entry in enumerate(entries, start=1):
        scope, sep, key = entry.partition(":")
        if not sep or scope not in SCOPES or not key:
            raise ApiKeyError(
                f"REKINDLE_API_KEYS entry {number} is not scope:key with scope one of {', '.join(SCOPES)}"
            )
        keys.setdefault(key, set()).add(scope)
    return {key: frozenset(scopes) for key, scopes in keys.items()}


def keys_file(settings: Settings) -> Path:
    return settings.home / "api_keys.json"


def ensure_keys_file(settings: Settings) -> Path:
    """Write one generated key per scope to the keys file unless it exists (readable by its owner only)."""
    path = keys_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = {scope: secrets.token_urlsafe(32) for scope in SCOPES}
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(keys, handle, indent=2)
    os.chmod(path, 0o600)
    return path


def load_keys(settings: Settings) -> dict[str, frozenset[str]]:
    """The configured keys: REKINDLE_API_KEYS, else the keys file."""
    if settings.api_keys:
        return parse_keys(settings.api_keys)
    path = keys_file(settings)
    if not path.exists():
        raise ApiKeyError(f"no API keys: set REKINDLE_API_KEYS or run `rekindle serve` once to write {path}")
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        raise ApiKeyError(f"{path} is not JSON: delete it and `rekindle serve` writes new keys") from None
    if not isinstance(stored, dict):
        raise ApiKeyError(f"{path} is not a JSON object of scope -> key")
    return parse_keys(tuple(f"{scope}:{key}" for scope, key in stored.items()))


class KeyRing:
    def __init__(self, keys: dict[str, frozenset[str]]):
        self._keys = list(keys.items())

    def scopes(self, presented: str) -> frozenset[str] | None:
        """The scopes of a presented key, or None when it is not one of ours (every key compared)."""
        found = None
        for key, scopes in self._keys:
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = scopes
        return found


def refusal(keys: KeyRing, presented: str | None, scope: str) -> tuple[int, str] | None:
    """Why a request presenting this key (None: no key) may not use ``scope``, as (status, message); None when it
    may."""
    if presented is None:
        return 401, "missing API key: send Authorization: Bearer <key>"
    scopes = keys.scopes(presented)
    if scopes is None:
        return 401, "unknown API key"
    if scope not in scopes:
        return 403, f"this API key lacks the {scope} scope"
    return None
