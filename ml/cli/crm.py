"""``rekindle export``: one CRM segment as CSV.

Without filters it writes the day's file, ``{segment}_{date}.csv`` (the name the daily publish writes); with
``--min-score``, ``--platform`` or ``--zone`` the file name carries them, so an ad-hoc export never replaces the
day's file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import psycopg

from ml.cli.options import fail, iso_date
from ml.crm import segments
from ml.crm.export import EXPORTABLE_SEGMENTS, UnknownSegmentError, export_segment, is_published, latest_run_date
from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS
from ml.settings import Settings
from ml.warehouse import postgres

PROG = "rekindle export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "segment",
        metavar="SEGMENT",
        help=f"one of: {', '.join(segments.SEGMENTS)}; or a scored lifecycle segment (lapsed, dormant: "
        "crm.segment_members, the win-back lists)",
    )
    parser.add_argument(
        "--date", type=iso_date, default=None, help="run date YYYY-MM-DD (default: the latest published)"
    )
    parser.add_argument("--min-score", type=float, default=None, help="keep rows with a normalised score >= this (0-1)")
    parser.add_argument("--platform", default=None, help="keep users who signed up on this platform")
    parser.add_argument("--zone", default=None, help="keep users whose home zone is this")
    parser.add_argument(
        "--lifecycle-segment",
        choices=LIFECYCLE_SEGMENTS,
        default=None,
        help="keep users in this lifecycle segment (as of the latest marts build)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default: the exports folder under REKINDLE_HOME)"
    )


def cmd_export(args: argparse.Namespace) -> int:
    if args.segment not in EXPORTABLE_SEGMENTS:
        return fail(PROG, str(UnknownSegmentError(args.segment)))
    settings = Settings.from_env()
    with psycopg.connect(postgres.start(settings)) as conn:
        latest = latest_run_date(conn)
        if latest is None:
            return fail(PROG, "nothing published to crm yet: run `rekindle run` first")
        run_date = args.date or latest
        if run_date != latest and not is_published(conn, run_date):
            # Else the export would be a header without rows, as for a segment nobody is in that day.
            return fail(
                PROG,
                f"nothing published to crm for {run_date}: the latest publication is {latest}, and "
                f"publications older than {settings.crm_retention_days} days before it are deleted "
                "(REKINDLE_CRM_RETENTION_DAYS)",
            )
        try:
            path = export_segment(
                conn,
                args.segment,
                run_date,
                args.out or settings.exports_dir,
                args.min_score,
                args.platform,
                args.zone,
                args.lifecycle_segment,
            )
        except ValueError as exc:
            return fail(PROG, str(exc))
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export", help="write one CRM segment as CSV ({segment}_{date}.csv; filters add their values to the name)"
    )
    add_arguments(exp)
    exp.set_defaults(func=cmd_export)
