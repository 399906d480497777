"""``rekindle forget | roles``: erase users everywhere the project writes them; create the least-privilege roles."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import psycopg

from ml.cli.options import UsageError, existing_path
from ml.settings import Settings
from ml.warehouse import postgres

# The column of a CSV that names the users (the exports' and the warehouse's name for it).
USER_ID = "user_id"


def cmd_forget(args: argparse.Namespace) -> int:
    from ml.privacy.erasure import forget_users

    user_ids = list(args.user_ids)
    if args.file is not None:
        user_ids += ids_in_file(args.file)
    if not user_ids:
        raise UsageError("name at least one USER_ID, or --file with one id per line")
    try:
        report = forget_users(Settings.from_env(), user_ids, args.request_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # The ids are not printed: the terminal's scroll-back and CI logs are places too.
    print(f"erasure request {report.request_id}: {report.users} user(s) forgotten in {report.seconds:.1f}s")
    for location, rows in report.rows_removed.items():
        if rows:
            print(f"  {location}: {rows:,} row(s)")
    print(f"  total: {report.total_rows:,} row(s); tombstoned in ops.erased_users, audited in ops.erasure_audit")
    return 0


def ids_in_file(path: Path) -> list[str]:
    """The user ids a file names: one per line, or the ``user_id`` column of a CSV whose header has one (a CRM
    export, a request list from a spreadsheet). A byte-order mark, Windows line ends and blank lines are not part of
    any id."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: save it as UTF-8, one user id per line") from None
    header = [name.strip().lower() for name in next(csv.reader(lines[:1]), [])]
    if USER_ID in header:
        column = header.index(USER_ID)
        rows = csv.reader(lines[1:])
        return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    return [line.strip() for line in lines if line.strip()]


def cmd_roles(args: argparse.Namespace) -> int:
    from ml.privacy.roles import ensure_roles

    settings = Settings.from_env()
    with psycopg.connect(postgres.start(settings)) as conn:
        roles = ensure_roles(conn, settings)
    for reader, role in roles.items():
        print(f"{reader:>9}: {role}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    forget = sub.add_parser(
        "forget",
        help="erase users from raw, every dbt model, crm, the CSV exports and the registered ranker; tombstone "
        "them so no later load brings them back",
    )
    forget.add_argument("user_ids", nargs="*", metavar="USER_ID", help="the users to forget")
    forget.add_argument(
        "--file",
        type=existing_path,
        default=None,
        help="a file of user ids: one per line, or a CSV with a user_id column (e.g. a CRM export)",
    )
    forget.add_argument(
        "--request-id", default=None, help="the erasure request's id, recorded in ops.erasure_audit (default: new)"
    )
    forget.set_defaults(func=cmd_forget)
    roles = sub.add_parser(
        "roles", help="create or reset the CRM, dashboard and API login roles (the daily publish does it too)"
    )
    roles.set_defaults(func=cmd_roles)
