"""What the API tests share: a small published day on the embedded warehouse (real ingest, real dbt build, the
pipeline's own publish writers) and ``rekindle serve`` in a subprocess on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pandas as pd
import psycopg
from conftest import database_url, new_database

from ml.crm import publish
from ml.crm.segments import ensure_tables
from ml.recommend.modes import DISCOVERY, WINBACK
from ml.settings import Settings
from ml.synthetic.marketplace import generate_marketplace
from ml.warehouse import ddl, ingest
from ml.warehouse.dbt_runner import run_dbt, write_profile

RUN_DATE = date(2026, 11, 1)
READ_KEY = "read-key-for-tests"
WRITE_KEY = "write-key-for-tests"
BOTH_KEY = "both-scopes-key-for-tests"
API_KEYS = f"read:{READ_KEY},write:{WRITE_KEY},read:{BOTH_KEY},write:{BOTH_KEY}"


def build_published_day(settings: Settings, run_date: date = RUN_DATE, top_n: int = 10) -> None:
    """Generate a small marketplace, ingest it, build the marts with dbt and publish run_date: winback lists of
    each user's most ordered merchants, discovery lists of the most popular merchants they never ordered from
    (the model is not under test here; the publish writers are the pipeline's own)."""
    url = settings.warehouse_url
    market = generate_marketplace(seed=11, days=30, end_date=run_date, n_users=300, n_merchants=40)
    market.write(settings.input_dir, ids="uuid")
    with psycopg.connect(url) as conn:
        ddl.ensure(conn)
    ingest.ingest_path(url, settings.input_dir)
    write_profile(settings, url)
    run_dbt(settings, url, ["build", "--exclude", "test_type:unit"], run_date)
    publish_day(settings, run_date, top_n)


# Server URL -> (database, home) that build_published_day filled once this session: a template for copies.
_published_templates: dict[str, tuple[str, Path]] = {}


def copy_of_published_day(server_url: str, home: Path) -> Settings:
    """Settings for a new database on ``server_url`` holding build_published_day's result, with a copy of its drop
    folder under ``home``. The day is built once per server into a template database that every caller copies
    (CREATE DATABASE ... TEMPLATE), so callers may change their copy freely."""
    if server_url not in _published_templates:
        template_url = new_database(server_url, "published_day")
        name = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
        template_home = home.parent / f"{name}_home"
        build_published_day(Settings.from_env(environ={}, home=template_home, warehouse_url=template_url))
        _published_templates[server_url] = (name, template_home)
    template, template_home = _published_templates[server_url]
    name = f"{template}_copy_{os.urandom(4).hex()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    settings = Settings.from_env(environ={}, home=home, warehouse_url=database_url(server_url, name))
    shutil.copytree(Settings.from_env(environ={}, home=template_home).input_dir, settings.input_dir)
    return settings


def publish_day(settings: Settings, run_date: date, top_n: int = 10, model_version: str = "1") -> pd.DataFrame:
    with psycopg.connect(settings.warehouse_url) as conn:
        ensure_tables(conn)
        ddl.ensure(conn, "ops")
        pairs = pd.DataFrame(
            conn.execute(
                "SELECT user_id, merchant_id, order_count FROM marts.user_merchant_orders "
                "ORDER BY user_id, order_count DESC, merchant_id"
            ).fetchall(),
            columns=["user_id", "merchant_id", "order_count"],
        )
        members = pd.DataFrame(
            conn.execute("SELECT user_id, lifecycle_segment FROM marts.user_segments").fetchall(),
            columns=["user_id", "segment"],
        )
        names = pd.DataFrame(
            conn.execute("SELECT merchant_id, merchant_name FROM marts.merchant_features").fetchall(),
            columns=["merchant_id", "merchant_name"],
        )
        popularity = pairs.groupby("merchant_id").size().reindex(names["merchant_id"], fill_value=0)
        popular = popularity.sort_values(ascending=False, kind="stable").index.tolist()
        rows = []
        for user_id in members["user_id"]:
            own = pairs.loc[pairs["user_id"] == user_id, "merchant_id"].tolist()
            lists = {
                WINBACK: (own + [m for m in popular if m not in own])[:top_n],
                DISCOVERY: [m for m in popular if m not in own][:top_n],
            }
            for mode, merchants in lists.items():
                rows += [
                    (
                        user_id,
                        mode,
                        rank,
                        m,
                        float(top_n - rank + 1),
                        "because you ordered there" if m in own else "popular",
                    )
                    for rank, m in enumerate(merchants, start=1)
                ]
        recommendations = pd.DataFrame(rows, columns=["user_id", "mode", "rank", "merchant_id", "score", "reason"])
        recommendations = recommendations.merge(names, on="merchant_id", how="left")[publish.RECOMMENDATION_COLUMNS]
        publish.stage_shard(conn, run_date, 1, 0, recommendations, len(members), model_version)
        with conn.transaction():
            publish.replace_run(conn, run_date, 1, ("lapsed", "dormant"), model_version)
        publish.clear_staged(conn, run_date)
    return recommendations


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    base_url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def client(self, key: str | None = READ_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def start_server(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None, workers: int = 1
) -> RunningServer:
    """``rekindle serve`` in a subprocess; returns once /healthz answers (or fails with the server's log)."""
    port = free_port()
    env = {
        **os.environ,
        "REKINDLE_HOME": str(settings.home),
        "REKINDLE_WAREHOUSE_URL": settings.warehouse_url,
        "REKINDLE_API_KEYS": API_KEYS,
        **(extra_env or {}),
    }
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ml.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rekindle serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return RunningServer(process, base_url, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"rekindle serve did not answer within 120 s:\n{log.read_text()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
