"""Seconds to render each tab of `rekindle dashboard` (Streamlit's AppTest) against the current home, cold and warm.

Each tab renders alone (the app's page with that one tab's view), the way tests/test_dashboard.py drives it: User
lookup with a user id who has an offer in the latest publication typed in, Merchant analysis and CRM export with
their default selections (the first merchant, the first segment). Cold: the first render after every Streamlit
cache is cleared, as for the first visitor after a publication (the caches are keyed by the publication's run
date). Warm: a new visitor's render afterwards (the median of --runs), what every later visitor waits for. The
last row renders the whole app (all six tabs, as each visit's script run does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from ml.cli.options import positive_int
from ml.privacy.roles import ensure_dashboard_role
from ml.settings import Settings
from ml.warehouse import postgres

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

WHOLE_APP = "Whole app (all six tabs)"
TARGET_SECONDS = 1.0
# The seconds of each render, appended by the script: timed inside the script run, because AppTest's own set-up
# (its first run of each AppTest scans every installed package for Streamlit components) is not the app's cost and
# a running dashboard does it once at start.
RENDER_SECONDS: list[float] = []
# A render of a tab at full scale takes seconds, not minutes; AppTest's default of 3 s would cut off a cold one.
RENDER_TIMEOUT_SECONDS = 300
USER_WITH_OFFER_SQL = """
SELECT user_id FROM crm.inactive_user_offers
WHERE run_date = (SELECT max(run_date) FROM crm.inactive_user_offers) AND NOT is_holdout AND event_type <> 'none'
ORDER BY user_id LIMIT 1"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=positive_int, default=5, help="warm renders per tab (default: 5)")


def render_tab(label: str) -> None:
    """The app's page with one tab's view: the header main() draws, then the view."""
    from ml.dashboard import app

    app.TAB_VIEWS[label](app.page_header())


def timed_render(label: str) -> None:
    """Render one tab (or the whole app, as `streamlit run` does: app.main()) and record the seconds it took."""
    from ml.dashboard import app

    started = time.perf_counter()
    try:
        if label == WHOLE_APP:
            app.main()
        else:
            render_tab(label)
    finally:
        RENDER_SECONDS.append(time.perf_counter() - started)


def timed_script(label: str) -> None:
    """AppTest's script (AppTest runs this function's body as the app)."""
    from ml.benchmarks.dashboard import timed_render

    timed_render(label)


@dataclass(frozen=True)
class TabTiming:
    tab: str
    cold_seconds: float
    warm_seconds: list[float]
    rows: int
    selection: str

    @property
    def warm_median(self) -> float:
        return statistics.median(self.warm_seconds)


def _new_app(label: str) -> AppTest:
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(timed_script, kwargs={"label": label}, default_timeout=RENDER_TIMEOUT_SECONDS)


def _checked(at: AppTest, label: str) -> AppTest:
    if at.exception:
        raise RuntimeError(f"{label}: the app raised {[e.value for e in at.exception]}")
    return at


def _render(label: str, user_id: str) -> tuple[float, AppTest]:
    """Seconds of the run that draws the tab for its selection: a new visitor's page, and for User lookup the
    run after typing the user id (the page before it shows only a prompt)."""
    at = _new_app(label)
    if label == "User lookup":
        _checked(at.run(), label)
        at.text_input(key="user_id").input(user_id)
    _checked(at.run(), label)
    return RENDER_SECONDS[-1], at


def _rows_and_selection(at: AppTest, label: str, user_id: str) -> tuple[int, str]:
    rows = sum(len(frame.value) for frame in at.dataframe)
    if label == "User lookup":
        return rows, f"user {user_id}"
    if label == "Merchant analysis":
        return rows, f"merchant {at.selectbox(key='merchant').value}"
    if label == "CRM export":
        # The tab reads the whole export and shows its first rows: the export's rows are what it read.
        return int(at.metric[0].value), f"segment {at.selectbox(key='export_segment').value} (rows exported)"
    return rows, ""


def measure(label: str, user_id: str, runs: int) -> TabTiming:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    cold, at = _render(label, user_id)
    rows, selection = _rows_and_selection(at, label, user_id)
    warm = [_render(label, user_id)[0] for _ in range(runs)]
    return TabTiming(label, cold, warm, rows, selection)


def markdown_table(timings: list[TabTiming]) -> str:
    lines = [
        "| tab | cold s | warm s (median) | rows | selection |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {t.tab} | {t.cold_seconds:.3f} | {t.warm_median:.3f} | {t.rows:,} | {t.selection} |" for t in timings]
    return "\n".join(lines)


@contextmanager
def _app_environment(url: str) -> Iterator[None]:
    """The app reads its settings from the environment, as under `rekindle dashboard`: the running warehouse."""
    previous = os.environ.get("REKINDLE_WAREHOUSE_URL")
    os.environ["REKINDLE_WAREHOUSE_URL"] = url
    try:
        yield
    finally:
        if previous is None:
            del os.environ["REKINDLE_WAREHOUSE_URL"]
        else:
            os.environ["REKINDLE_WAREHOUSE_URL"] = previous


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    url = postgres.start(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_dashboard_role(conn, settings)
        (published,) = conn.execute("SELECT to_regclass('crm.inactive_user_offers')").fetchone()
        found = conn.execute(USER_WITH_OFFER_SQL).fetchone() if published else None
    if found is None:
        print("Nothing published with an offer yet: run `rekindle run` first.")
        return 1
    (user_id,) = found
    # Imported only now: its cached functions warn, once each, that no Streamlit runtime runs them.
    from ml.dashboard import app

    with _app_environment(url):
        timings = [measure(label, user_id, args.runs) for label in (*app.TABS, WHOLE_APP)]
    print(f"Dashboard renders (Streamlit AppTest), {args.runs} warm run(s) per tab; warehouse of {settings.home}\n")
    print(markdown_table(timings))
    slow = [t.tab for t in timings if t.warm_median > TARGET_SECONDS]
    print(f"\nwarm over {TARGET_SECONDS:g} s: {', '.join(slow) if slow else 'none'}")
    return 0
