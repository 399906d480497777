"""crm.inactive_user_offers (ml/warehouse/schema/crm.sql): today's offers, replaced per run_date."""

from __future__ import annotations

from datetime import date

import pandas as pd
import psycopg

from ml.crm.publish import analyze
from ml.warehouse import ddl


def replace_offers(
    conn: psycopg.Connection, run_date: date, campaign_id: str, offers: pd.DataFrame, model_version: str
) -> None:
    """Replace run_date's offers; call inside the publishing transaction."""
    ddl.ensure(conn, "crm")
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
        "explored",
        "propensity",
        "model_version",
    ]
    with conn.cursor() as cur:
        with cur.copy(f"COPY crm.inactive_user_offers ({', '.join(columns)}) FROM STDIN") as copy:
            for r in offers.itertuples(index=False):
                copy.write_row(
                    (
                        run_date,
                        campaign_id,
                        str(r.user_id),
                        r.segment,
                        r.arm,
                        r.event_type,
                        float(r.reward_size),
                        float(r.expected_uplift),
                        float(r.expected_cost),
                        bool(r.is_holdout),
                        bool(r.explored),
                        float(r.propensity),
                        model_version,
                    )
                )
    analyze(conn, "crm.inactive_user_offers")
