"""``rekindle serve``: the real-time API (FastAPI on uvicorn) on the pipeline's warehouse."""

from __future__ import annotations

import argparse
import os

import psycopg

from ml.cli.options import UsageError, check_serving_strategies, ensure_free_port, port, positive_int
from ml.serving import auth
from ml.serving.workers import PortInUseError, Workers
from ml.settings import Settings, redact
from ml.warehouse import postgres


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ml.serving.role import ensure_api_role

    settings = Settings.from_env()
    ensure_free_port(args.host, args.port)
    check_serving_strategies(settings)
    if settings.api_keys:
        try:
            auth.parse_keys(settings.api_keys)
        except auth.ApiKeyError as exc:
            raise UsageError(str(exc)) from None
        print("API keys: from REKINDLE_API_KEYS")
    else:
        print(f"API keys: {auth.ensure_keys_file(settings)} (readable by you only)")
    owner_url = postgres.start(settings)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        try:
            ensure_api_role(conn, settings)
        except psycopg.errors.InsufficientPrivilege as exc:
            # An external warehouse whose administrator made the role: connect as it all the same.
            print(f"could not create or grant role {settings.api_role} ({exc.diag.message_primary}); using it as it is")
    print(f"warehouse: {redact(owner_url)} as role {settings.api_role}")
    print(f"serving on http://{args.host}:{args.port} (OpenAPI: /docs)", flush=True)
    # Workers are separate processes: each builds the app from the environment (ml.serving.app).
    os.environ["REKINDLE_WAREHOUSE_URL"] = owner_url
    uvicorn_options = {
        "app": "ml.serving.app:app_from_environment",
        "factory": True,
        "log_level": "warning",
        "access_log": False,
    }
    if args.workers == 1:
        uvicorn.run(host=args.host, port=args.port, **uvicorn_options)
        return 0
    try:
        return Workers(args.host, args.port, args.workers, uvicorn_options).run()
    except PortInUseError as exc:
        raise UsageError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="the real-time API: recommendations, offers, event tracking (OpenAPI at /docs)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--workers", type=positive_int, default=1, help="server processes (default: 1)")
    serve.set_defaults(func=cmd_serve)
