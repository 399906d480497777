"""Per-user response cache: a time to live, a bound on the users kept (least recently used go first), and
invalidation of one user (their events arrived) or of everyone (a new publication)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable


class ResponseCache:
    def __init__(self, ttl_seconds: float, max_users: int):
        if ttl_seconds < 0 or max_users < 0:
            raise ValueError(f"cache ttl and size must not be negative, got {ttl_seconds} s and {max_users} users")
        self.ttl_seconds = ttl_seconds
        self.max_users = max_users
        self._users: OrderedDict[str, dict[Hashable, tuple[float, object]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str, key: Hashable):
        """The cached response, or None when absent or expired."""
        with self._lock:
            entries = self._users.get(user_id)
            if entries is None or key not in entries:
                return None
            expires, value = entries[key]
            if expires < time.monotonic():
                del entries[key]
                return None
            self._users.move_to_end(user_id)
            return value

    def put(self, user_id: str, key: Hashable, value) -> None:
        if self.max_users == 0 or self.ttl_seconds == 0:
            return
        with self._lock:
            self._users.setdefault(user_id, {})[key] = (time.monotonic() + self.ttl_seconds, value)
            self._users.move_to_end(user_id)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._users.clear()

    def __len__(self) -> int:
        return len(self._users)
