"""Score segment members with the champion model in user hash shards, stage each shard in ``ops``, and publish
the staged shards to ``crm`` atomically per run_date."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from ml.experiments.assignment import hash_units
from ml.privacy.tombstones import ErasedUsers
from ml.recommend.modes import MODES, WINBACK
from ml.runtime import PROGRESS_LOGGER
from ml.warehouse import marts
from ml.warehouse.bulk import copy_frame

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

# Who marketing may reach: the users marts.user_features marks as opted in (no answer counts as no). Every
# marketing output keeps only them, through marts.MARKETABLE_USERS_SQL: crm.segment_members, the crm segment
# tables (ml/crm/segments.py), the win-back offers and their experiment arms (marts.load_inactive_users) and
# every CSV export (ml/crm/export.py), which reads consent when it is written so a user who has opted out since
# is left out of an earlier day's file. The tables are in ml/warehouse/schema/crm.sql.


# Which list each CRM output uses (ml/recommend/modes.py): crm.segment_members scores the lifecycle segments a
# win-back campaign targets, so it takes the winback list; the segment tables name their own (ml/crm/segments.py).
SEGMENT_MEMBERS_MODE = WINBACK
RECOMMENDATION_COLUMNS = ["user_id", "mode", "rank", "merchant_id", "merchant_name", "score", "reason"]

# The key of the seeded hash that puts users in scoring shards: a user's shard depends on their id and the number
# of shards only, never on who else is scored.
SHARD_KEY = "score-shards"


def recommend_all(
    recommender,
    user_ids: list,
    names: pd.DataFrame,
    n: int,
    modes=tuple(MODES),
    batch_users: int = 2_500,
    workers: int = 1,
) -> pd.DataFrame:
    """Top-n merchants in each of ``modes`` (with names and a short reason where the model gives one) for every
    user, scored in batches with progress in the log.

    ``workers`` threads score batches side by side: the heavy steps (top-n selection, sparse products, LightGBM)
    release the GIL, and the recommender is only read. The result does not depend on ``workers``.
    """
    started = time.perf_counter()
    starts = range(0, len(user_ids), batch_users)

    def score(start: int) -> pd.DataFrame:
        return recommender.recommend_modes(user_ids[start : start + batch_users], n=n, modes=modes)

    batches = []
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        for start, batch in zip(starts, pool.map(score, starts)):
            batches.append(batch)
            done = min(start + batch_users, len(user_ids))
            progress.info(
                "scored %s / %s users in %s (%s users/s)",
                f"{done:,}",
                f"{len(user_ids):,}",
                " and ".join(modes),
                f"{done / max(time.perf_counter() - started, 1e-9):,.0f}",
            )
    if not batches:
        return pd.DataFrame(columns=RECOMMENDATION_COLUMNS)
    recs = pd.concat(batches, ignore_index=True)
    if "reason" not in recs.columns:
        recs["reason"] = None
    recs = recs.merge(names, on="merchant_id", how="left")
    return recs[RECOMMENDATION_COLUMNS]


def shard_of(user_ids, shard_count: int) -> np.ndarray:
    """Each user's scoring shard, in order: ``int(hash_unit(SHARD_KEY, user_id) * shard_count)``."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    return (hash_units(SHARD_KEY, user_ids) * shard_count).astype(int)


class ShardsNotReadyError(RuntimeError):
    """publish_segments found the day's scoring shards incomplete or scored by another model version."""


def stage_shard(
    conn: psycopg.Connection,
    run_date: date,
    shard_count: int,
    shard: int,
    recommendations: pd.DataFrame,
    users: int,
    model_version: str,
) -> None:
    """Replace one scoring shard's staged recommendations and its ``ops.scored_shards`` row in one transaction:
    a re-run of the shard replaces its rows, never adds to them."""
    key = (run_date, shard_count, shard)
    with conn.transaction():
        for table in ("ops.staged_recommendations", "ops.scored_shards"):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE run_date = %s AND shard_count = %s AND shard = %s").format(
                    sql.Identifier(*table.split("."))
                ),
                key,
            )
        copy_frame(
            conn,
            "ops.staged_recommendations",
            _typed(recommendations[RECOMMENDATION_COLUMNS]).assign(
                run_date=run_date, shard_count=shard_count, shard=shard
            ),
        )
        conn.execute(
            "INSERT INTO ops.scored_shards (run_date, shard_count, shard, users, model_version) "
            "VALUES (%s, %s, %s, %s, %s)",
            (*key, users, model_version),
        )


def check_staged(
    conn: psycopg.Connection,
    run_date: date,
    shard_count: int,
    model_version: str,
    users: int,
    replaced_versions: frozenset[str] = frozenset(),
) -> None:
    """``ShardsNotReadyError`` naming what is missing or different unless all ``shard_count`` shards of run_date
    are staged with ``model_version`` (or one of the ``replaced_versions`` an erasure refitted into it) and together
    they scored ``users`` users."""
    staged = {
        shard: (scored, version)
        for shard, scored, version in conn.execute(
            "SELECT shard, users, model_version FROM ops.scored_shards WHERE run_date = %s AND shard_count = %s",
            (run_date, shard_count),
        ).fetchall()
    }
    missing = [shard for shard in range(shard_count) if shard not in staged]
    if missing:
        raise ShardsNotReadyError(
            f"shards {missing} of {shard_count} for {run_date} are not scored: run score_shard for them first"
        )
    accepted = {model_version, *replaced_versions}
    other_versions = {shard: version for shard, (_, version) in staged.items() if version not in accepted}
    if other_versions:
        raise ShardsNotReadyError(
            f"shards of {run_date} scored by another ranker version than @champion v{model_version}: "
            + ", ".join(f"shard {shard} by v{version}" for shard, version in sorted(other_versions.items()))
            + "; run score_shard for them again"
        )
    scored = sum(count for count, _ in staged.values())
    if scored != users:
        raise ShardsNotReadyError(
            f"the {shard_count} shards of {run_date} scored {scored} users but the marts now have {users} "
            "lifecycle members (rebuilt since): run score_shard again"
        )


def staged_versions(conn: psycopg.Connection, run_date: date) -> set[str]:
    """The ranker versions that scored run_date's staged shards."""
    rows = conn.execute("SELECT DISTINCT model_version FROM ops.scored_shards WHERE run_date = %s", (run_date,))
    return {version for (version,) in rows}


def uncount_staged(conn: psycopg.Connection, user_ids: list[str]) -> None:
    """Take the users out of their staged shards' counts (``ops.scored_shards.users``), before their staged rows are
    deleted: ``check_staged`` compares the counts with the marts' members, which lose erased users too."""
    conn.execute(
        """UPDATE ops.scored_shards AS s SET users = s.users - erased.users
           FROM (SELECT run_date, shard_count, shard, count(DISTINCT user_id) AS users
                 FROM ops.staged_recommendations WHERE user_id = ANY(%s)
                 GROUP BY run_date, shard_count, shard) AS erased
           WHERE (s.run_date, s.shard_count, s.shard) = (erased.run_date, erased.shard_count, erased.shard)""",
        (user_ids,),
    )


def drop_erased_staged(conn: psycopg.Connection, run_date: date, erased: ErasedUsers) -> int:
    """Delete run_date's staged rows of erased users (a shard scored from marts read before an erasure); returns
    the users dropped. Call holding the erasure lock, so no erasure commits between this and the publish."""
    if not erased.hashes:
        return 0
    users = pd.Series(
        [
            u
            for (u,) in conn.execute(
                "SELECT DISTINCT user_id FROM ops.staged_recommendations WHERE run_date = %s", (run_date,)
            )
        ],
        dtype=object,
    )
    gone = users[erased.mask(users)].tolist()
    if gone:
        uncount_staged(conn, gone)
        conn.execute(
            "DELETE FROM ops.staged_recommendations WHERE run_date = %s AND user_id = ANY(%s)", (run_date, gone)
        )
    return len(gone)


def clear_staged(conn: psycopg.Connection, run_date: date) -> int:
    """Delete run_date's staged shards (of any shard count); returns the recommendation rows deleted."""
    conn.execute("DELETE FROM ops.scored_shards WHERE run_date = %s", (run_date,))
    return conn.execute("DELETE FROM ops.staged_recommendations WHERE run_date = %s", (run_date,)).rowcount


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The recommendation columns present in ``frame`` with the warehouse's types (ids as text, missing names and
    reasons as NULL), ready for ``copy_frame``."""
    types = {"user_id": str, "merchant_id": str, "rank": "int64", "score": "float64"}
    typed = frame.astype({column: kind for column, kind in types.items() if column in frame})
    texts = [column for column in ("merchant_name", "reason", "mode", "segment") if column in frame]
    return typed.assign(**{column: typed[column].astype(object).where(typed[column].notna(), None) for column in texts})


# Enough for what the segment queries plan on: each run_date's share (one of up to crm_retention_days values) and
# user_id's spread.
ANALYZE_STATISTICS_TARGET = 10


def analyze(conn: psycopg.Connection, *tables: str) -> None:
    """Refresh the planner's statistics of ``tables`` (``schema.name``) right after a bulk write.

    Run it inside the writing transaction, before anything reads the new rows: autovacuum sees them only
    after the commit, and once a table holds weeks of history one day is below its 10% change threshold,
    so the statistics would miss the newest run_date for days (its rows estimated at a handful, and
    nested loops over them).

    The sample is ANALYZE_STATISTICS_TARGET * 300 rows, read from as many pages: with Postgres' default (100:
    30,000 pages) the demo world's tables stay below it for weeks, so each day's ANALYZE read every page
    published so far and publishing grew with the days retained (BENCHMARKS.md, Daily operation).
    """
    conn.execute(sql.SQL("SET LOCAL default_statistics_target = {}").format(sql.Literal(ANALYZE_STATISTICS_TARGET)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)))
    conn.execute("RESET default_statistics_target")


def drop_expired(conn: psycopg.Connection, run_date: date, retention_days: int) -> dict[str, int]:
    """Delete the rows with run_date before ``run_date - retention_days`` from every ``crm`` table that has a
    run_date column; call inside the publishing transaction. Returns the rows deleted per table."""
    cutoff = run_date - timedelta(days=retention_days)
    tables = conn.execute(
        """SELECT c.table_name FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = 'crm' AND c.column_name = 'run_date' AND t.table_type = 'BASE TABLE'
           ORDER BY c.table_name"""
    ).fetchall()
    return {
        f"crm.{name}": conn.execute(
            sql.SQL("DELETE FROM {} WHERE run_date < %s").format(sql.Identifier("crm", name)), (cutoff,)
        ).rowcount
        for (name,) in tables
    }


def replace_run(
    conn: psycopg.Connection,
    run_date: date,
    shard_count: int,
    segments: tuple[str, ...],
    model_version: str,
) -> tuple[int, dict[str, dict[str, int]]]:
    """Replace run_date's recommendations (every user's, every mode) with its ``shard_count`` staged shards, and
    its scored segment members (only users marketing may reach, see ``marts.MARKETABLE_USERS_SQL``, with their
    ``SEGMENT_MEMBERS_MODE`` list); call inside a transaction, after ``check_staged``. The rows move inside the
    warehouse: a day's million recommendations never travel through Python.

    Returns the recommendations written, and the segment_members written per segment: users and rows.
    """
    params = {
        "run_date": run_date,
        "shard_count": shard_count,
        "model_version": model_version,
        "mode": SEGMENT_MEMBERS_MODE,
        "segments": list(segments),
    }
    conn.execute("DELETE FROM crm.recommendations WHERE run_date = %(run_date)s", params)
    conn.execute("DELETE FROM crm.segment_members WHERE run_date = %(run_date)s", params)
    recommendations = conn.execute(
        """INSERT INTO crm.recommendations
               (run_date, user_id, mode, rank, merchant_id, merchant_name, score, reason, model_version)
           SELECT run_date, user_id, mode, rank, merchant_id, merchant_name, score, reason, %(model_version)s
           FROM ops.staged_recommendations
           WHERE run_date = %(run_date)s AND shard_count = %(shard_count)s""",
        params,
    ).rowcount
    conn.execute(
        sql.SQL(
            """INSERT INTO crm.segment_members
               (run_date, segment, user_id, rank, merchant_id, merchant_name, score, model_version)
           SELECT r.run_date, s.lifecycle_segment, r.user_id, r.rank, r.merchant_id, r.merchant_name, r.score,
                  %(model_version)s
           FROM ops.staged_recommendations r
           JOIN marts.user_segments s ON s.user_id = r.user_id
           WHERE r.run_date = %(run_date)s AND r.shard_count = %(shard_count)s AND r.mode = %(mode)s
             AND s.lifecycle_segment = ANY(%(segments)s)
             AND r.user_id IN ({marketable})"""
        ).format(marketable=sql.SQL(marts.MARKETABLE_USERS_SQL)),
        params,
    )
    analyze(conn, "crm.recommendations", "crm.segment_members")
    rows = conn.execute(
        """SELECT segment, count(DISTINCT user_id), count(*) FROM crm.segment_members
           WHERE run_date = %(run_date)s GROUP BY segment ORDER BY segment""",
        params,
    ).fetchall()
    return recommendations, {segment: {"users": users, "rows": count} for segment, users, count in rows}
