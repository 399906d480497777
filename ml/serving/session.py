"""In-session adaptation: what each user did since the last publication, applied to their next response.

An order takes the merchant out of the user's discovery list; a view of a merchant lifts its co-order
neighbours; an opt-out (marketing or personalisation) applies at once, before the next publication's marts
record it. Only events since the publication's run_date count (earlier ones are in the marts already); a new
publication drops the rest. The state lives in each server process: the worker that accepts an event applies it
at once, the others when the warehouse notifies them (``ml/serving/app.py``).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from ml.warehouse.contract import CHECKOUT, MARKETING_OPT_OUT, PERSONALISATION_OPT_OUT, VIEW_EVENT_TYPES

# Views of one merchant counted towards its neighbours' lift: a user browsing one page cannot flood the list.
MAX_VIEWS_COUNTED = 3


@dataclass(frozen=True)
class SessionEvent:
    user_id: str
    event_type: str
    merchant_id: str  # "" for events without a merchant (opt-outs)
    event_time: datetime

    def encode(self) -> str:
        return "\t".join((self.user_id, self.event_type, self.merchant_id, self.event_time.isoformat()))

    @classmethod
    def decode(cls, line: str) -> SessionEvent:
        user_id, event_type, merchant_id, event_time = line.split("\t")
        return cls(user_id, event_type, merchant_id, datetime.fromisoformat(event_time))


OPT_OUTS = (MARKETING_OPT_OUT, PERSONALISATION_OPT_OUT)


def adapts(event_type: str) -> bool:
    """Whether an event of this type changes the user's session (orders, merchant or product views, opt-outs)."""
    return event_type == CHECKOUT or event_type in VIEW_EVENT_TYPES or event_type in OPT_OUTS


def needs_merchant(event_type: str) -> bool:
    return event_type not in OPT_OUTS


@dataclass
class UserSession:
    ordered: dict[str, datetime] = field(default_factory=dict)
    viewed: Counter = field(default_factory=Counter)
    opted_out: dict[str, datetime] = field(default_factory=dict)  # opt-out event type -> when

    @property
    def marketing_opt_out(self) -> bool:
        return MARKETING_OPT_OUT in self.opted_out

    @property
    def personalisation_opt_out(self) -> bool:
        return PERSONALISATION_OPT_OUT in self.opted_out


class Sessions:
    def __init__(self):
        self._users: dict[str, UserSession] = defaultdict(UserSession)
        self._lock = threading.Lock()
        self._since: datetime | None = None

    def start_publication(self, run_date: date) -> None:
        """Forget what the publication of ``run_date`` already knows: events before its day began."""
        since = datetime(run_date.year, run_date.month, run_date.day, tzinfo=UTC)
        with self._lock:
            self._since = since
            for user_id in list(self._users):
                session = self._users[user_id]
                session.ordered = {m: t for m, t in session.ordered.items() if t >= since}
                session.opted_out = {kind: t for kind, t in session.opted_out.items() if t >= since}
                if not session.ordered and not session.opted_out:
                    del self._users[user_id]
            # View counts carry no times: a new publication starts them again.
            for session in self._users.values():
                session.viewed.clear()

    def apply(self, event: SessionEvent) -> bool:
        """Record one event; False when it does not change the session (too old or not an adapting type)."""
        if not adapts(event.event_type) or (self._since is not None and event.event_time < self._since):
            return False
        with self._lock:
            session = self._users[event.user_id]
            if event.event_type in OPT_OUTS:
                session.opted_out[event.event_type] = event.event_time
            elif event.event_type == CHECKOUT:
                session.ordered[event.merchant_id] = event.event_time
            elif session.viewed[event.merchant_id] < MAX_VIEWS_COUNTED:
                session.viewed[event.merchant_id] += 1
        return True

    def forget(self, user_id: str) -> None:
        """Drop everything held about the user (an erasure)."""
        with self._lock:
            self._users.pop(user_id, None)

    def of(self, user_id: str) -> UserSession:
        with self._lock:
            session = self._users.get(user_id)
            if session is None:
                return UserSession()
            return UserSession(dict(session.ordered), Counter(session.viewed), dict(session.opted_out))
