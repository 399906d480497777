"""``rekindle generate | ingest | warehouse``: data in, and the warehouse it lands in."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ml.cli.options import (
    UsageError,
    existing_path,
    fail,
    iso_date,
    non_negative_int,
    positive_int,
    settings_from,
    today,
)
from ml.settings import redact
from ml.synthetic.marketplace import ID_FORMATS, TABLE_FILES, TRUTH_FOLDER
from ml.warehouse import postgres

# What `rekindle generate` wrote, so that it never writes a second world over the first.
WORLD_FILE = f"{TRUTH_FOLDER}/world.json"


def cmd_generate(args: argparse.Namespace) -> int:
    from ml.synthetic.marketplace import generate_marketplace

    settings = settings_from(args)
    out = Path(args.out) if args.out else settings.input_dir
    end_date = args.end_date or today()
    world = {
        "scale": settings.scale,
        "seed": settings.seed,
        "days": settings.days,
        "end_date": end_date.isoformat(),
        "ids": args.ids,
    }
    there = _world_in(out)
    if there is not None and there != world:
        if args.keep_existing:
            print(f"{out} already holds a synthetic world ({_describe(there)}): kept it")
            return 0
        raise UsageError(
            f"{out} already holds a synthetic world ({_describe(there)}); another one written over it would be "
            "loaded beside it (new event ids, the same users), mixing the two. Keep it (--keep-existing, as `make "
            "run` does), write elsewhere (--out DIR), or start a new home (REKINDLE_HOME=DIR)"
        )
    started = time.perf_counter()
    print(f"generating the {settings.scale} marketplace (seed {settings.seed}, {settings.days} days) ...", flush=True)
    market = generate_marketplace(
        scale=settings.scale,
        seed=settings.seed,
        days=settings.days,
        end_date=end_date,
    )
    market.write(out, ids=args.ids)
    (out / WORLD_FILE).write_text(json.dumps(world, indent=2) + "\n")
    print(
        f"wrote {len(market.users):,} users, {len(market.merchants):,} merchants, {len(market.events):,} events, "
        f"{len(market.campaign_exposures):,} campaign exposures ({args.ids} ids) to {out} "
        f"(ground truth in {out / 'ground_truth'}) in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _world_in(folder: Path) -> dict | None:
    """The parameters of the synthetic world ``rekindle generate`` wrote to ``folder``; None where it wrote none
    (an unknown world, if its events are there, is reported as such)."""
    if (folder / WORLD_FILE).is_file():
        return json.loads((folder / WORLD_FILE).read_text())
    return {"unknown": True} if (folder / TABLE_FILES["events"]).is_file() else None


def _describe(world: dict) -> str:
    if world.get("unknown"):
        return "written before its parameters were recorded"
    return f"{world['scale']}, seed {world['seed']}, {world['days']} days to {world['end_date']}, {world['ids']} ids"


def cmd_ingest(args: argparse.Namespace) -> int:
    from ml.privacy.tombstones import erasure_salt
    from ml.warehouse import ingest

    settings = settings_from(args)
    url = postgres.start(settings)
    try:
        results = ingest.ingest_path(url, args.path, erasure_salt=erasure_salt(settings))
    except (ingest.SchemaDriftError, ValueError, FileNotFoundError) as exc:
        return fail("rekindle ingest", str(exc))
    # Each file's counts went to the progress log as it loaded.
    if results:
        print(
            f"{len(results)} file(s): {sum(r.rows_read for r in results):,} rows read, "
            f"{sum(r.rows_loaded for r in results):,} loaded, {sum(r.rows_duplicate for r in results):,} duplicate, "
            f"{sum(r.rows_quarantined for r in results):,} quarantined, {sum(r.rows_erased for r in results):,} erased"
        )
    quarantined = sum(r.rows_quarantined for r in results)
    if quarantined:
        print(
            f"{quarantined:,} row(s) quarantined: SELECT table_name, reason, count(*) FROM raw.quarantine GROUP BY 1, 2;"
        )
    return 0


def cmd_warehouse(args: argparse.Namespace) -> int:
    if args.extra_arguments and args.action != "psql":
        raise UsageError(f"unrecognized arguments: {' '.join(args.extra_arguments)} (only psql passes them on)")
    settings = settings_from(args)
    if args.action == "start":
        print(f"warehouse running: {redact(postgres.start(settings))}")
    elif args.action == "stop":
        print("stopped" if postgres.stop(settings) else "not running")
    elif args.action == "url":
        print(postgres.start(settings))
    elif args.action == "psql":
        return postgres.psql(postgres.start(settings), args.extra_arguments)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="write a synthetic marketplace (events, merchants, users, campaigns)")
    gen.add_argument("--scale", choices=["demo", "full"], default=None, help="demo ≈ 5k users; full ≈ 55k users")
    gen.add_argument("--seed", type=non_negative_int, default=None)
    gen.add_argument("--days", type=positive_int, default=None)
    gen.add_argument(
        "--end-date", type=iso_date, default=None, help="last day is the day before this (default: today, UTC)"
    )
    gen.add_argument("--out", default=None, help="folder (default: the drop folder the daily DAG loads)")
    gen.add_argument(
        "--keep-existing",
        action="store_true",
        help="if the folder already holds another world, keep it and write nothing (without it: an error)",
    )
    gen.add_argument(
        "--ids",
        choices=ID_FORMATS,
        default="integer",
        help="name users and merchants by integers or by UUIDs derived from them (rekindle simulate needs integer)",
    )
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="load a CSV / Parquet / JSON-lines file or a drop folder into raw.*")
    ing.add_argument("path", type=existing_path, help="a file, or a folder of files")
    ing.set_defaults(func=cmd_ingest)

    wh = sub.add_parser(
        "warehouse",
        help="the embedded PostgreSQL warehouse",
        epilog="psql passes any further arguments on to psql, e.g. "
        "rekindle warehouse psql -c 'SELECT count(*) FROM crm.segment_members'",
    )
    wh.add_argument("action", choices=["start", "stop", "url", "psql"])
    wh.set_defaults(func=cmd_warehouse, takes_extra_arguments=True)
