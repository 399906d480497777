"""Great Expectations suites, kept as code: one function per suite, each naming the table it guards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import great_expectations as gx
from great_expectations import expectations as gxe

from ml.recommend.lifecycle import LIFECYCLE_SEGMENTS
from ml.warehouse.contract import EVENT_TYPES, ID_COLUMNS, ID_MAX_LENGTH, INGEST_EVENT_RULES, EventRule

VALUE_TIERS = ["high", "medium", "low"]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    schema: str
    table: str
    build: Callable[[], list[gx.expectations.Expectation]]
    # The id of the transaction that wrote each row (raw.events.load_xid): the suite then validates the rows that
    # arrived since its last passing run (ml/warehouse/quality.py), so a daily gate reads a day's rows, not the log.
    arrival_column: str | None = None


def raw_events_table() -> list:
    """raw.events as a whole: events were loaded (a day without new ones is fine), with the contract's column types."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=["TEXT"]),
        gxe.ExpectColumnValuesToBeInTypeList(column="event_time", type_list=["TIMESTAMP", "TIMESTAMP WITH TIME ZONE"]),
    ]


def raw_events() -> list:
    """What ingest guarantees about each raw.events row: its shape, then one expectation per event rule ingest
    applies (ml/warehouse/contract.py), so a row written by anything else that breaks one fails the gate."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("event_id", "user_id", "event_type", "event_time")],
        *[gxe.ExpectColumnValueLengthsToBeBetween(column=c, min_value=1, max_value=ID_MAX_LENGTH) for c in ID_COLUMNS],
        *[event_rule_expectation(rule) for rule in INGEST_EVENT_RULES],
    ]


def event_rule_expectation(rule: EventRule) -> gx.expectations.Expectation:
    """The expectation a contract event rule makes on raw.events, described by the rule's ``check``.

    A rule on one column's values is the matching column expectation (its report counts and lists the bad values);
    any other rule is its SQL ``violation`` as unexpected rows.
    """
    if rule.name == "unknown_event_type":
        return gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES), description=rule.check)
    if rule.name == "negative_order_total":
        return gxe.ExpectColumnValuesToBeBetween(column="order_total", min_value=0, description=rule.check)
    columns = ", ".join(("event_id", *rule.columns))
    return gxe.UnexpectedRowsExpectation(
        description=rule.check,
        unexpected_rows_query=f"SELECT {columns} FROM {{batch}} WHERE {rule.violation}",
    )


def user_segments() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="lifecycle_segment"),
        gxe.ExpectColumnValuesToBeInSet(column="lifecycle_segment", value_set=list(LIFECYCLE_SEGMENTS)),
        gxe.ExpectColumnValuesToBeInSet(column="value_tier", value_set=VALUE_TIERS),
        # One row per user is what guarantees nobody sits in two lifecycle segments.
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
    ]


def user_features() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        gxe.ExpectColumnValuesToBeBetween(column="order_count", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="order_value", min_value=0),
    ]


def merchant_features() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="merchant_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="category"),
    ]


RAW_SUITES = (
    SuiteSpec("raw_events_table", "raw", "events", raw_events_table),
    SuiteSpec("raw_events", "raw", "events", raw_events, arrival_column="load_xid"),
)
MART_SUITES = (
    SuiteSpec("marts_user_segments", "marts", "user_segments", user_segments),
    SuiteSpec("marts_user_features", "marts", "user_features", user_features),
    SuiteSpec("marts_merchant_features", "marts", "merchant_features", merchant_features),
)
