"""The stakeholder dashboard (ml/dashboard/app.py) on a small real day: the daily DAG's steps run in-process on the
embedded warehouse (real ingest, dbt, GX, MLflow runs and registry, publish; without Airflow, which the dashboard never
reads and tests/test_pipeline_e2e.py covers), a campaign readout and a few API-tracked events. Each tab through
Streamlit's AppTest; all six in a real browser (Debian's chromium driven by playwright)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import streamlit as st
from conftest import new_database, run_daily_steps
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest, app_test

from ml.benchmarks.dashboard import WHOLE_APP
from ml.cli import main as rekindle
from ml.crm import segments
from ml.dashboard.app import TABS
from ml.experiments import readout
from ml.privacy.erasure import forget_users
from ml.privacy.roles import ensure_dashboard_role
from ml.recommend.modes import DISCOVERY, MODES, WINBACK
from ml.serving.variants import ServingExperiment
from ml.settings import PROJECT_ROOT, Settings
from ml.synthetic.marketplace import generate_marketplace

APP = PROJECT_ROOT / "ml" / "dashboard" / "app.py"
RUN_DATE = date(2026, 11, 1)
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = PROJECT_ROOT / "docs" / "dashboard"
# A row the load quarantines: its event_time is not a time.
BAD_EVENTS_CSV = (
    "event_id,user_id,event_type,event_time,merchant_id,merchant_name,order_total,platform,zone,properties\n"
    "bad-1,u-1,app_opened,yesterday,,,,ios,,\n"
)


@pytest.fixture(scope="module")
def day(postgres_server_url, tmp_path_factory):
    """One published day, shared by every test of the module; the environment points the app at it."""
    url = new_database(postgres_server_url, "dashboard")
    home = tmp_path_factory.mktemp("dashboard") / "home"
    settings = Settings.from_env(environ={}, home=home, warehouse_url=url)
    generate_marketplace(seed=5, days=30, end_date=RUN_DATE, n_users=400, n_merchants=50).write(
        settings.input_dir, ids="uuid"
    )
    (settings.input_dir / "events_bad.csv").write_text(BAD_EVENTS_CSV)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REKINDLE_HOME", str(home))
        env.setenv("REKINDLE_WAREHOUSE_URL", url)
        run_daily_steps(settings, RUN_DATE)
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_dashboard_role(conn, settings)
            (campaign_id,) = conn.execute(
                "SELECT DISTINCT campaign_id FROM crm.inactive_user_offers WHERE run_date = %s", (RUN_DATE,)
            ).fetchone()
            readout.write_results(
                conn,
                readout.readout(conn, campaign_id, settings.reactivation_window_days, settings.order_margin_rate),
            )
        impressions = _track_impressions(url, settings)
        yield {"settings": settings, "url": url, "campaign_id": campaign_id, "impressions": impressions}


def _track_impressions(url: str, settings: Settings) -> dict[str, int]:
    """Impressions as the API tracks them (the variant in the properties) for a few users; the first of them
    orders afterwards. Returns the users per variant."""
    experiment = ServingExperiment.from_settings(settings.serving_experiment, settings.serving_strategies)
    with psycopg.connect(url) as conn:
        users = [u for (u,) in conn.execute("SELECT user_id FROM marts.user_features ORDER BY user_id LIMIT 12")]
        seen = datetime(2026, 11, 1, 12, tzinfo=UTC)
        for number, user_id in enumerate(users):
            properties = json.dumps({"variant": experiment.variant(user_id), "position": 1})
            conn.execute(
                "INSERT INTO raw.events (event_id, user_id, event_type, event_time, properties, source_file) "
                "VALUES (%s, %s, 'merchant_page_viewed', %s, %s, 'api')",
                (f"impression-{number}", user_id, seen, properties),
            )
        conn.execute(
            "INSERT INTO raw.events (event_id, user_id, event_type, event_time, order_total, source_file) "
            "VALUES ('order-after-impression', %s, 'checkout_completed', %s, 25, 'api')",
            (users[0], seen.replace(hour=13)),
        )
    return pd.Series([experiment.variant(u) for u in users]).value_counts().to_dict()


def _app(day) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _tab(at: AppTest, label: str):
    return next(tab for tab in at.tabs if tab.label == label)


def _frames(block) -> list[pd.DataFrame]:
    return [frame.value for frame in block.dataframe]


def _query(day, query: str, *params) -> list[tuple]:
    with psycopg.connect(day["url"]) as conn:
        return conn.execute(query, params).fetchall()


def test_six_tabs_and_the_model_performance_tab(day):
    at = _app(day)

    assert [tab.label for tab in at.tabs] == list(TABS)
    tab = _tab(at, "Model performance")
    assert tab.radio(key="performance_mode").options == list(MODES)
    summary = _frames(tab)[0]
    assert {"ranker", "popularity", "random"} <= set(summary.index)
    assert summary.loc["ranker", "ndcg_at_10"] > summary.loc["random", "ndcg_at_10"]
    history = _frames(tab)[-1]
    assert history["version"].tolist() == ["1"] and history["promoted"].tolist() == ["True"]
    assert history["gate"].iloc[0] == "no champion yet: first version becomes champion"
    assert tab.caption[0].value.startswith("Champion ranker run: 2026-11-01 (v1; champion: v1)")

    at.radio(key="performance_mode").set_value(DISCOVERY).run()
    at.selectbox(key="performance_metric").set_value("recall").run()
    assert not at.exception
    discovery = _frames(_tab(at, "Model performance"))[0]
    assert discovery.loc["ranker", "ndcg_at_10"] != summary.loc["ranker", "ndcg_at_10"]


def test_user_lookup_shows_profile_lists_offer_and_variant(day):
    (user_id, event_type) = _query(
        day,
        "SELECT user_id, event_type FROM crm.inactive_user_offers WHERE run_date = %s AND NOT is_holdout "
        "AND event_type <> 'none' ORDER BY user_id LIMIT 1",
        RUN_DATE,
    )[0]
    at = _app(day)

    at.text_input(key="user_id").input(user_id).run()

    assert not at.exception
    tab = _tab(at, "User lookup")
    (segment,) = _query(day, "SELECT lifecycle_segment FROM marts.user_segments WHERE user_id = %s", user_id)[0]
    assert tab.metric[0].value == segment
    frames = _frames(tab)
    for mode, frame in zip((WINBACK, DISCOVERY), frames[2:4]):
        published = _query(
            day,
            "SELECT merchant_id FROM crm.recommendations WHERE run_date = %s AND user_id = %s AND mode = %s "
            "ORDER BY rank",
            RUN_DATE,
            user_id,
            mode,
        )
        assert frame["merchant_id"].tolist() == [m for (m,) in published]
        assert frame["merchant"].notna().all()
    assert event_type in tab.success[0].value
    variant = ServingExperiment.from_settings(
        day["settings"].serving_experiment, day["settings"].serving_strategies
    ).variant(user_id)
    assert any(f"**{variant}**" in m.value for m in tab.markdown)

    at.text_input(key="user_id").input("no-such-user").run()
    assert "Unknown user 'no-such-user'" in _tab(at, "User lookup").warning[0].value


def test_merchant_analysis_shows_prospects_superfans_and_neighbours(day):
    (merchant_id, prospects) = _query(
        day,
        "SELECT recommended_merchant_id, count(*) FROM crm.high_affinity_prospects WHERE run_date = %s "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
        RUN_DATE,
    )[0]
    at = _app(day)

    at.selectbox(key="merchant").set_value(merchant_id).run()

    assert not at.exception
    tab = _tab(at, "Merchant analysis")
    assert f"High-affinity prospects: {prospects} users" in [h.value for h in tab.subheader]
    similar, prospect_rows, superfans, _ = _frames(tab)
    assert len(similar) > 0 and merchant_id not in set(similar["merchant_id"])
    assert prospect_rows["score"].between(0, 1).all()
    fans = _query(
        day,
        "SELECT user_id FROM crm.merchant_superfans WHERE run_date = %s AND recommended_merchant_id = %s "
        "ORDER BY fan_rank",
        RUN_DATE,
        merchant_id,
    )
    assert superfans["user_id"].tolist() == [u for (u,) in fans]


@pytest.fixture
def media_stores(monkeypatch) -> list[MemoryMediaFileStorage]:
    """Each AppTest run's media store (Streamlit keeps a download's bytes there, not in the element; AppTest drops
    the store after the run), recorded so a test can read them."""
    stores = []

    class RecordedStore(MemoryMediaFileStorage):
        def __init__(self, media_endpoint: str):
            super().__init__(media_endpoint)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", RecordedStore)
    return stores


def _download_bytes(at: AppTest, stores: list[MemoryMediaFileStorage]) -> bytes:
    url = at.download_button(key="export_download").proto.url
    return stores[-1].get_file(url.rsplit("/", 1)[-1]).content


@pytest.mark.parametrize(
    ("segment", "filters", "arguments"),
    [
        ("lapsed_personalised", {}, []),
        ("lapsed", {}, []),  # a scored lifecycle segment's win-back lists (crm.segment_members)
        (
            "high_affinity_prospects",
            {"export_min_score": 0.6, "export_platform": "ios", "export_lifecycle": "active"},
            ["--min-score", "0.6", "--platform", "ios", "--lifecycle-segment", "active"],
        ),
    ],
)
def test_crm_export_download_is_what_rekindle_export_writes(day, media_stores, tmp_path, segment, filters, arguments):
    at = _app(day)
    at.selectbox(key="export_segment").set_value(segment).run()
    for key, value in filters.items():
        widget = at.number_input(key=key) if key == "export_min_score" else at.selectbox(key=key)
        widget.set_value(value).run()
    assert not at.exception

    downloaded = _download_bytes(at, media_stores)

    assert rekindle(["export", segment, "--out", str(tmp_path), *arguments]) == 0
    (written,) = tmp_path.iterdir()
    assert downloaded == written.read_bytes()
    rows = pd.read_csv(written)
    assert len(rows) > 0 and _tab(at, "CRM export").metric[0].value == str(len(rows))
    if filters:
        assert (rows["score"] >= 0.6).all()
        active = _query(day, "SELECT user_id FROM marts.user_segments WHERE lifecycle_segment = 'active'")
        assert set(rows["user_id"]) <= {u for (u,) in active}
        assert written.name == f"{segment}_{RUN_DATE}_min-score-0.6_platform-ios_lifecycle-segment-active.csv"


def test_an_erased_user_leaves_the_cached_merchant_view_and_export_at_once(
    postgres_server_url, tmp_path, monkeypatch, media_stores
):
    # A day of its own: the erasure changes the rows and the registry the module's other tests read.
    url = new_database(postgres_server_url, "dashboard_erasure")
    settings = Settings.from_env(environ={}, home=tmp_path / "home", warehouse_url=url)
    generate_marketplace(seed=6, days=20, end_date=RUN_DATE, n_users=200, n_merchants=20).write(
        settings.input_dir, ids="uuid"
    )
    monkeypatch.setenv("REKINDLE_HOME", str(settings.home))
    monkeypatch.setenv("REKINDLE_WAREHOUSE_URL", url)
    run_daily_steps(settings, RUN_DATE)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_dashboard_role(conn, settings)
        merchant_id, fan = conn.execute(
            "SELECT recommended_merchant_id, user_id FROM crm.merchant_superfans WHERE run_date = %s "
            "ORDER BY recommended_merchant_id, fan_rank LIMIT 1",
            (RUN_DATE,),
        ).fetchone()
    # The dashboard's caches are the process's: drop the module's day's (and, at the end, this one's).
    st.cache_data.clear()
    st.cache_resource.clear()
    try:
        at = _app(None)
        at.selectbox(key="merchant").set_value(merchant_id).run()
        at.selectbox(key="export_segment").set_value("merchant_superfans").run()
        assert fan in _frames(_tab(at, "Merchant analysis"))[2]["user_id"].tolist()
        assert fan in _download_bytes(at, media_stores).decode()

        forget_users(settings, [fan], "dashboard-erasure")
        at.run()  # the visitor's next click, within the same publication

        assert not at.exception
        assert fan not in _frames(_tab(at, "Merchant analysis"))[2]["user_id"].tolist()
        assert fan not in _download_bytes(at, media_stores).decode()
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()


def test_experiments_tab_shows_the_readout_and_the_serving_ab_test(day):
    at = _app(day)

    tab = _tab(at, "Experiments")
    readout_rows, serving = _frames(tab)
    assert set(readout_rows["arm"]) == {"personalised", "non_personalised", "holdout"}
    assert day["campaign_id"] in tab.markdown[0].value and "interim" not in tab.markdown[0].value
    assert readout_rows["reward_cost_per_user"].notna().all()
    assert dict(zip(serving["variant"], serving["users"])) == day["impressions"]
    assert serving["converted_users"].sum() == 1
    assert (serving["ci_low"] <= serving["conversion_rate"]).all()


def test_a_readout_taken_before_its_window_closed_is_marked_interim(day):
    with psycopg.connect(day["url"]) as conn:
        conn.execute(
            "CREATE TEMP TABLE interim AS SELECT * FROM crm.experiment_results WHERE campaign_id = %s",
            (day["campaign_id"],),
        )
        conn.execute(
            "UPDATE interim SET campaign_id = 'winback-interim', campaign_date = campaign_date + 1, "
            "window_end = now() + interval '3 days'"
        )
        conn.execute("INSERT INTO crm.experiment_results SELECT * FROM interim")
    try:
        st.cache_data.clear()
        tab = _tab(_app(day), "Experiments")
        interim, final = (block.value for block in tab.markdown[:2])
        assert interim.startswith("**winback-interim**") and ": **interim**, read out " in interim
        assert final.startswith(f"**{day['campaign_id']}**") and "interim" not in final
    finally:
        with psycopg.connect(day["url"]) as conn:
            conn.execute("DELETE FROM crm.experiment_results WHERE campaign_id = 'winback-interim'")
        st.cache_data.clear()


def test_pipeline_health_tab_shows_steps_checks_quarantine_and_freshness(day):
    at = _app(day)

    tab = _tab(at, "Pipeline health")
    steps, checks, quarantine, freshness = _frames(tab)
    assert {"load_events", "check_mart_quality", "train_ranker", "publish_segments"} <= set(steps["step"])
    assert (steps["seconds"] > 0).all()
    assert set(checks["check"]) == {"check_raw_quality", "check_mart_quality"}
    assert (checks["expectations passed"] > 0).all()
    quarantined = _query(day, "SELECT reason, count(*) FROM raw.quarantine GROUP BY 1")
    assert len(quarantined) > 0
    assert dict(zip(quarantine["reason"], quarantine["rows"])) == dict(quarantined)
    events = freshness.set_index("source").loc["raw.events"]
    assert pd.Timestamp(events["latest_record"]) == pd.Timestamp("2026-11-01 13:00", tz="UTC")


def test_pipeline_health_shows_the_dbt_builds_tasks_as_one_step(day):
    with psycopg.connect(day["url"]) as conn:
        for step, seconds in [("dbt_build.stg_users_model_build", 1.5), ("dbt_build.user_features_model_build", 2.0)]:
            conn.execute(
                "INSERT INTO ops.pipeline_steps (run_date, step, seconds, summary) VALUES (%s, %s, %s, '{}')",
                (RUN_DATE, step, seconds),
            )
    try:
        st.cache_data.clear()
        steps = _frames(_tab(_app(day), "Pipeline health"))[0].set_index("step")
        assert steps.loc["dbt_build", ["tasks", "seconds"]].tolist() == [2, 3.5]
        assert not steps.index.str.startswith("dbt_build.").any() and steps.loc["train_ranker", "tasks"] == 1
    finally:
        with psycopg.connect(day["url"]) as conn:
            conn.execute("DELETE FROM ops.pipeline_steps WHERE starts_with(step, 'dbt_build.')")
        st.cache_data.clear()


def test_benchmark_dashboard_prints_each_tabs_cold_and_warm_seconds(day, capsys):
    assert rekindle(["benchmark", "dashboard", "--runs", "1"]) == 0

    table = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert [cell.strip() for cell in header[:3]] == ["tab", "cold s", "warm s (median)"]
    assert [row[0].strip() for row in rows] == [*TABS, WHOLE_APP]
    for tab, cold, warm, *_ in rows:
        assert float(cold) > 0 and float(warm) > 0, tab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_every_tab_renders_in_a_real_browser(day, tmp_path):
    from playwright.sync_api import sync_playwright

    (user_id,) = _query(
        day, "SELECT user_id FROM crm.inactive_user_offers WHERE NOT is_holdout ORDER BY user_id LIMIT 1"
    )[0]
    port = _free_port()
    env = {**os.environ, "REKINDLE_HOME": str(day["settings"].home), "REKINDLE_WAREHOUSE_URL": day["url"]}
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "ml.cli", "dashboard", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    screenshots = os.environ.get("REKINDLE_DASHBOARD_SCREENSHOTS") == "1"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            deadline = time.monotonic() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=10_000)
                    break
                except Exception:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            page.get_by_role("tab", name=TABS[0]).wait_for(timeout=120_000)
            _wait_until_idle(page)
            for label in TABS:
                page.get_by_role("tab", name=label).click()
                if label == "User lookup":
                    page.get_by_label("User id").fill(user_id)
                    page.get_by_label("User id").press("Enter")
                    # The user's offer is the tab's last section: drawn, or an exception instead.
                    page.get_by_text("Today's offer").or_(page.locator('[data-testid="stException"]')).wait_for(
                        timeout=120_000
                    )
                if label == "CRM export":
                    with page.expect_download() as download:
                        page.get_by_role("button", name="Download CSV").click()
                    downloaded = Path(download.value.path()).read_bytes()
                _wait_until_idle(page)
                assert page.locator('[data-testid="stException"]').count() == 0, (
                    label,
                    page.locator('[data-testid="stException"]').all_inner_texts(),
                )
                if screenshots:
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=SCREENSHOTS / f"{label.lower().replace(' ', '_')}.png", full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    segment = next(iter(segments.SEGMENTS))  # the export tab's default: the first segment, the latest run date
    assert rekindle(["export", segment, "--out", str(tmp_path / "export")]) == 0
    (written,) = (tmp_path / "export").iterdir()
    assert downloaded == written.read_bytes()


def _wait_until_idle(page) -> None:
    """Until the app's script run has finished (Streamlit shows a running icon meanwhile) and every element has been
    drawn (no skeleton placeholder left)."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')
            && !document.querySelector('[data-testid="stSkeleton"]')""",
        timeout=120_000,
    )
