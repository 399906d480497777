"""``rekindle readout --serving``: click-through and order conversion per serving variant, each against champion.

The unit is the user (the serving variant is drawn per user): a user counts as shown a variant when an
``impression`` event carries it, as clicking when they viewed a merchant shown to them with that
``recommendation_id``, as converting when they ordered from one. Read from ``raw.events``, not the marts: the
test's events since the last dbt build count too, and the marts keep no impressions.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import psycopg

from ml.experiments.statistics import compare_proportions, wilson_interval
from ml.serving.variants import CHAMPION
from ml.warehouse.contract import CHECKOUT, IMPRESSION, VIEW_EVENT_TYPES

SERVING_READOUT_SQL = """
WITH impressions AS (
    SELECT DISTINCT user_id, properties->>'variant' AS variant, properties->>'recommendation_id' AS recommendation_id,
                    merchant_id
    FROM raw.events
    WHERE event_type = %(impression)s AND event_time >= %(since)s AND properties ? 'variant'
),
responses AS (
    SELECT user_id, event_type, properties->>'recommendation_id' AS recommendation_id, merchant_id
    FROM raw.events
    WHERE event_type = ANY(%(responses)s) AND event_time >= %(since)s AND properties ? 'recommendation_id'
)
SELECT i.variant,
       count(DISTINCT i.user_id) AS users,
       count(DISTINCT r.user_id) FILTER (WHERE r.event_type <> %(checkout)s) AS clicked_users,
       count(DISTINCT r.user_id) FILTER (WHERE r.event_type = %(checkout)s) AS ordering_users
FROM impressions i
LEFT JOIN responses r
    ON r.user_id = i.user_id AND r.recommendation_id = i.recommendation_id AND r.merchant_id = i.merchant_id
GROUP BY i.variant
ORDER BY i.variant"""
METRICS = {"click_through": "clicked_users", "order_conversion": "ordering_users"}


def serving_counts(conn: psycopg.Connection, since: datetime) -> pd.DataFrame:
    rows = conn.execute(
        SERVING_READOUT_SQL,
        {"impression": IMPRESSION, "since": since, "responses": [CHECKOUT, *VIEW_EVENT_TYPES], "checkout": CHECKOUT},
    ).fetchall()
    return pd.DataFrame(rows, columns=["variant", "users", "clicked_users", "ordering_users"]).set_index("variant")


def serving_readout(counts: pd.DataFrame) -> pd.DataFrame:
    """Per variant and metric: the rate with its 95% Wilson interval and, against champion, the absolute lift with
    its Newcombe interval and the two-proportion z-test's p-value (``ml.experiments.statistics``)."""
    rows = []
    for variant, row in counts.iterrows():
        for metric, column in METRICS.items():
            x, n = int(row[column]), int(row["users"])
            interval = wilson_interval(x, n)
            record = {
                "variant": variant,
                "metric": metric,
                "users": n,
                "successes": x,
                "rate": x / n,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "lift_vs_champion": None,
                "lift_ci_low": None,
                "lift_ci_high": None,
                "p_value": None,
            }
            if variant != CHAMPION and CHAMPION in counts.index:
                base = counts.loc[CHAMPION]
                comparison = compare_proportions(x, n, int(base[column]), int(base["users"]))
                record.update(
                    lift_vs_champion=comparison.absolute_lift,
                    lift_ci_low=comparison.absolute_ci.low,
                    lift_ci_high=comparison.absolute_ci.high,
                    p_value=comparison.p_value,
                )
            rows.append(record)
    return pd.DataFrame(rows)


def format_readout(readout: pd.DataFrame) -> str:
    lines = [
        f"{'variant':<12}{'metric':<18}{'users':>7}{'rate':>8}{'95% CI':>18}{'lift vs champion':>18}{'95% CI':>20}{'p':>8}"
    ]
    for r in readout.itertuples(index=False):
        lift = "-" if r.lift_vs_champion is None else f"{r.lift_vs_champion:+.2%}"
        lift_ci = "-" if r.lift_vs_champion is None else f"[{r.lift_ci_low:+.2%}, {r.lift_ci_high:+.2%}]"
        p_value = "-" if r.p_value is None else f"{r.p_value:.3f}"
        lines.append(
            f"{r.variant:<12}{r.metric:<18}{r.users:>7,}{r.rate:>8.2%}{f'[{r.ci_low:.2%}, {r.ci_high:.2%}]':>18}"
            f"{lift:>18}{lift_ci:>20}{p_value:>8}"
        )
    return "\n".join(lines)
