"""The app event log's data contract: its vocabularies and the rules every event row obeys, defined once.

Three layers enforce it, each reading this module and nothing else for it:

* ingest (``ml/warehouse/ingest.py``) quarantines the rows that break a rule with an ``ingest_reason``;
* dbt staging (``stg_events_classified``) rejects the rows that break a rule with ``in_staging``, the rule's
  ``name`` being the ``reason`` in ``stg_events_rejected``. dbt gets the vocabularies and these rules as vars
  (:func:`dbt_vars`, passed by ``ml/warehouse/dbt_runner.settings_vars`` to every dbt invocation and the Cosmos
  task group);
* the Great Expectations suite on ``raw.events`` (``expectations/suites.py``) expects what ingest guarantees:
  one expectation per rule with an ``ingest_reason``, described by the rule's ``check``.

Adding an event type, or a rule, here changes all three (ingest refuses to import if it has no check for a rule
it is meant to apply). This module stays free of heavy imports: DAG files import it while Airflow parses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

CHECKOUT = "checkout_completed"
# Views of a merchant's or a product's page: the implicit-feedback signals besides checkouts.
VIEW_EVENT_TYPES = ("merchant_page_viewed", "product_page_viewed")
# A recommended merchant shown to the user (sent by the app: merchant_id, properties recommendation_id, variant and
# position): what `rekindle readout --serving` attributes clicks and orders to. The marts ignore it.
IMPRESSION = "impression"
# The user withdrew consent in the app (ml/privacy, docs/operations.md "Privacy"): to marketing (no offer, in no CRM
# segment or export from the next publication) or to personalisation (published lists are the zone's popular
# merchants). Recorded with its event_time; marts.user_features reads them.
MARKETING_OPT_OUT = "marketing_opt_out"
PERSONALISATION_OPT_OUT = "personalisation_opt_out"
EVENT_TYPES = (
    CHECKOUT,
    *VIEW_EVENT_TYPES,
    "app_opened",
    "campaign_opened",
    "reward_redeemed",
    IMPRESSION,
    MARKETING_OPT_OUT,
    PERSONALISATION_OPT_OUT,
)

# The arm of a campaign exposure that sends no offer (the control / holdout).
NO_OFFER = "none"
OFFER_EVENT_TYPES = ("free_delivery", "percent_discount", "cashback", "double_points", NO_OFFER)
ASSIGNMENTS = ("treatment", "holdout")

# Users and merchants keep their source system's ids (a UUID, an Amplitude id, a database's integer): an id is any
# string that is not empty after trimming whitespace, at most ID_MAX_LENGTH characters long, without control
# characters. An integer id is its decimal text, so 42 and "42" are the same user; "0042" is another one.
ID_COLUMNS = ("user_id", "merchant_id")
ID_MAX_LENGTH = 128

# Clocks on phones drift; anything further ahead than this is a bad timestamp, not skew.
FUTURE_TOLERANCE_MINUTES = 5
FUTURE_TOLERANCE = timedelta(minutes=FUTURE_TOLERANCE_MINUTES)


def sql_list(values: tuple[str, ...]) -> str:
    """``('a', 'b')``: a SQL list of string literals (the vocabularies hold no quotes)."""
    if any("'" in v for v in values):
        raise ValueError(f"a contract value may not contain a quote: {values}")
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


@dataclass(frozen=True)
class EventRule:
    """One rule on a ``raw.events`` row.

    ``violation`` is a SQL predicate over the row's ``raw.events`` columns (unqualified), true when the row breaks
    the rule; NULLs in it count as not broken, as in a ``CASE WHEN``.
    """

    name: str  # reason code: stg_events_rejected.reason, and how tests and docs name the rule
    check: str  # what every valid row satisfies, in words (the GX expectation's description)
    violation: str
    columns: tuple[str, ...]  # the columns it reads (shown with a failing row)
    ingest_reason: str | None = None  # raw.quarantine.reason; None: ingest lets the row through
    in_staging: bool = True  # dbt staging rejects the row


EVENT_RULES: tuple[EventRule, ...] = (
    EventRule(
        name="unknown_event_type",
        check="event_type is one of the contract's event types (exact spelling)",
        violation=f"event_type not in {sql_list(EVENT_TYPES)}",
        columns=("event_type",),
        ingest_reason="unknown event_type",
    ),
    EventRule(
        name="negative_order_total",
        check="order_total is not negative",
        violation="order_total < 0",
        columns=("order_total",),
        ingest_reason="negative order_total",
    ),
    EventRule(
        name="event_time_in_future",
        check="event_time is not in the future",
        violation=f"event_time > now() + interval '{FUTURE_TOLERANCE_MINUTES} minutes'",
        columns=("event_time",),
        ingest_reason="event_time in the future",
        # staging's after_run_date (event_time on or after run_date 00:00 UTC) is stricter for every run date
        # that has begun.
        in_staging=False,
    ),
    EventRule(
        name="missing_order_total",
        check="every checkout has an order_total",
        violation=f"event_type = '{CHECKOUT}' and order_total is null",
        columns=("event_type", "order_total"),
        # Loaded as it came, so the raw log keeps it; staging keeps it out of orders.
    ),
    EventRule(
        name="missing_merchant_id",
        check="every checkout names a merchant",
        violation=f"event_type = '{CHECKOUT}' and merchant_id is null",
        columns=("event_type", "merchant_id"),
        ingest_reason="checkout without merchant_id",
    ),
)
INGEST_EVENT_RULES = tuple(r for r in EVENT_RULES if r.ingest_reason is not None)
STAGING_EVENT_RULES = tuple(r for r in EVENT_RULES if r.in_staging)


def dbt_vars() -> dict:
    """The contract as dbt vars (read by dbt/macros/event_types.sql through ``contract_var``)."""
    return {
        "event_types": list(EVENT_TYPES),
        "view_event_types": list(VIEW_EVENT_TYPES),
        "marketing_opt_out_event_type": MARKETING_OPT_OUT,
        "personalisation_opt_out_event_type": PERSONALISATION_OPT_OUT,
        "offer_event_types": list(OFFER_EVENT_TYPES),
        "assignments": list(ASSIGNMENTS),
        "event_rules": [{"name": r.name, "violation": r.violation} for r in STAGING_EVENT_RULES],
    }
