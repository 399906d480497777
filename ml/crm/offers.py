"""crm.inactive_user_offers: today's offers, replaced per run_date."""

from __future__ import annotations

from datetime import date

import pandas as pd
import psycopg

from ml.crm.publish import analyze

OFFERS_SQL = """
CREATE SCHEMA IF NOT EXISTS crm;
CREATE TABLE IF NOT EXISTS crm.inactive_user_offers (
    run_date        date    NOT NULL,
    campaign_id     text    NOT NULL,
    user_id         bigint  NOT NULL,
    segment         text    NOT NULL,
    arm             text    NOT NULL,
    event_type      text    NOT NULL,
    reward_size     numeric(8, 2) NOT NULL,
    expected_uplift double precision NOT NULL,
    expected_cost   double precision NOT NULL,
    is_holdout      boolean NOT NULL,
    model_version   text    NOT NULL,
    PRIMARY KEY (run_date, user_id)
);
"""


def replace_offers(
    conn: psycopg.Connection, run_date: date, campaign_id: str, offers: pd.DataFrame, model_version: str
) -> None:
    """Replace run_date's offers; call inside the publishing transaction."""
    conn.execute(OFFERS_SQL)
    conn.execute("DELETE FROM crm.inactive_user_offers WHERE run_date = %s", (run_date,))
    columns = [
        "run_date",
        "campaign_id",
        "user_id",
        "segment",
        "arm",
        "event_type",
        "reward_size",
        "expected_uplift",
        "expected_cost",
        "is_holdout",
        "model_version",
    ]
    with conn.cursor() as cur:
        with cur.copy(f"COPY crm.inactive_user_offers ({', '.join(columns)}) FROM STDIN") as copy:
            for r in offers.itertuples(index=False):
                copy.write_row(
                    (
                        run_date,
                        campaign_id,
                        int(r.user_id),
                        r.segment,
                        r.arm,
                        r.event_type,
                        float(r.reward_size),
                        float(r.expected_uplift),
                        float(r.expected_cost),
                        bool(r.is_holdout),
                        model_version,
                    )
                )
    analyze(conn, "crm.inactive_user_offers")
