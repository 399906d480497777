"""Score segment members with the champion model and publish them to ``crm`` atomically per run_date."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg

log = logging.getLogger(__name__)

CRM_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS crm;
CREATE TABLE IF NOT EXISTS crm.segment_members (
    run_date      date    NOT NULL,
    segment       text    NOT NULL,
    user_id       bigint  NOT NULL,
    rank          integer NOT NULL,
    merchant_id   bigint  NOT NULL,
    merchant_name text,
    score         double precision NOT NULL,
    model_version text    NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_date, segment, user_id, rank)
);
"""
EXPORT_COLUMNS = ["user_id", "segment", "rank", "merchant_id", "merchant_name", "score", "run_date", "model_version"]


def segment_members(conn: psycopg.Connection, segments: tuple[str, ...]) -> pd.DataFrame:
    rows = conn.execute(
        "SELECT user_id, lifecycle_segment AS segment FROM marts.user_segments "
        "WHERE lifecycle_segment = ANY(%s) ORDER BY user_id",
        (list(segments),),
    ).fetchall()
    return pd.DataFrame(rows, columns=["user_id", "segment"])


def merchant_names(conn: psycopg.Connection) -> pd.DataFrame:
    rows = conn.execute("SELECT merchant_id, merchant_name FROM marts.merchant_features").fetchall()
    return pd.DataFrame(rows, columns=["merchant_id", "merchant_name"])


def score_members(recommender, members: pd.DataFrame, names: pd.DataFrame, n: int) -> pd.DataFrame:
    recs = recommender.recommend(members["user_id"].tolist(), n=n)
    scored = members.merge(recs, on="user_id", how="inner").merge(names, on="merchant_id", how="left")
    return scored[["segment", "user_id", "rank", "merchant_id", "merchant_name", "score"]]


def publish(conn: psycopg.Connection, run_date: date, scored: pd.DataFrame, model_version: str) -> dict[str, int]:
    """Replace run_date's rows in one transaction: readers see the old rows or the new ones, never a mix."""
    conn.execute(CRM_SCHEMA_SQL)
    with conn.transaction():
        conn.execute("DELETE FROM crm.segment_members WHERE run_date = %s", (run_date,))
        with conn.cursor() as cur:
            with cur.copy(
                "COPY crm.segment_members (run_date, segment, user_id, rank, merchant_id, merchant_name, score, model_version) "
                "FROM STDIN"
            ) as copy:
                for row in scored.itertuples(index=False):
                    copy.write_row(
                        (run_date, row.segment, int(row.user_id), int(row.rank), int(row.merchant_id),
                         row.merchant_name, float(row.score), model_version)
                    )
    counts = scored.groupby("segment")["user_id"].nunique().to_dict()
    return {segment: int(count) for segment, count in counts.items()}


def export_csv(conn: psycopg.Connection, run_date: date, exports_dir: Path) -> dict[str, Path]:
    """One CSV per segment, ``{segment}_{run_date}.csv``, from what was published (not from memory)."""
    exports_dir.mkdir(parents=True, exist_ok=True)
    rows = conn.execute(
        f"SELECT {', '.join(EXPORT_COLUMNS)} FROM crm.segment_members WHERE run_date = %s "
        "ORDER BY segment, user_id, rank",
        (run_date,),
    ).fetchall()
    frame = pd.DataFrame(rows, columns=EXPORT_COLUMNS)
    paths = {}
    for segment, members in frame.groupby("segment"):
        path = exports_dir / f"{segment}_{run_date.isoformat()}.csv"
        tmp = path.with_suffix(".csv.tmp")
        members.to_csv(tmp, index=False)
        tmp.replace(path)
        paths[segment] = path
    return paths
