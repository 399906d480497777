"""crm.inactive_user_offers (ml/warehouse/schema/crm.sql): today's offers, replaced per run_date."""

from __future__ import annotations

from datetime import date

import pandas as pd
import psycopg

from ml.crm.publish import analyze
from ml.warehouse import ddl
from ml.warehouse.bulk import copy_frame


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
    typed = offers.astype(
        {
            "user_id": str,
            "reward_size": "float64",
            "expected_uplift": "float64",
            "expected_cost": "float64",
            "is_holdout": bool,
            "explored": bool,
            "propensity": "float64",
        }
    )
    copy_frame(
        conn,
        "crm.inactive_user_offers",
        typed.assign(run_date=run_date, campaign_id=campaign_id, model_version=model_version)[columns],
    )
    analyze(conn, "crm.inactive_user_offers")
