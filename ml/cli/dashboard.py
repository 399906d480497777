"""``rekindle dashboard``: the stakeholder dashboard (Streamlit) on the pipeline's warehouse and MLflow store."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg

from ml.cli.options import check_serving_strategies, ensure_free_port, port
from ml.privacy.roles import ensure_dashboard_role
from ml.settings import Settings, redact
from ml.warehouse import postgres

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def streamlit_command(host: str, listen_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        f"--server.address={host}",
        f"--server.port={listen_port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        # Stakeholders get the app without Streamlit's developer menu (deploy, rerun settings).
        "--client.toolbarMode=viewer",
    ]


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    ensure_free_port(args.host, args.port)
    check_serving_strategies(settings)
    url = postgres.start(settings)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_dashboard_role(conn, settings)
    print(f"warehouse: {redact(url)}, crm and marts as role {settings.dashboard_role} (read-only sessions)")
    print(f"dashboard on http://{args.host}:{args.port}", flush=True)
    # The app process reads its settings from the environment: the running warehouse, and no telemetry.
    os.environ["REKINDLE_WAREHOUSE_URL"] = url
    os.environ["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    command = streamlit_command(args.host, args.port)
    os.execv(command[0], command)


def register(sub: argparse._SubParsersAction) -> None:
    dashboard = sub.add_parser(
        "dashboard", help="the stakeholder dashboard: model performance, users, merchants, CRM export, experiments"
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=port, default=8501, help="TCP port (default: 8501)")
    dashboard.set_defaults(func=cmd_dashboard)
