"""Great Expectations suites, kept as code: one function per suite, each naming the table it guards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import great_expectations as gx
from great_expectations import expectations as gxe

from ml.warehouse.ingest import EVENT_TYPES

LIFECYCLE_SEGMENTS = ["new", "active", "at_risk", "lapsed", "dormant", "churned"]
VALUE_TIERS = ["high", "medium", "low"]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    schema: str
    table: str
    build: Callable[[], list[gx.expectations.Expectation]]


def raw_events() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="event_id"),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("event_id", "user_id", "event_type", "event_time")],
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeBetween(column="order_total", min_value=0),
        gxe.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=["BIGINT", "INTEGER"]),
        gxe.ExpectColumnValuesToBeInTypeList(column="event_time", type_list=["TIMESTAMP", "TIMESTAMP WITH TIME ZONE"]),
        gxe.UnexpectedRowsExpectation(
            description="event_time is not in the future",
            unexpected_rows_query="SELECT event_id, event_time FROM {batch} WHERE event_time > now() + interval '5 minutes'",
        ),
        gxe.UnexpectedRowsExpectation(
            description="every checkout names a merchant",
            unexpected_rows_query=(
                "SELECT event_id, merchant_id FROM {batch} "
                "WHERE event_type = 'checkout_completed' AND merchant_id IS NULL"
            ),
        ),
    ]


def user_segments() -> list:
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="lifecycle_segment"),
        gxe.ExpectColumnValuesToBeInSet(column="lifecycle_segment", value_set=LIFECYCLE_SEGMENTS),
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


RAW_SUITES = (SuiteSpec("raw_events", "raw", "events", raw_events),)
MART_SUITES = (
    SuiteSpec("marts_user_segments", "marts", "user_segments", user_segments),
    SuiteSpec("marts_user_features", "marts", "user_features", user_features),
    SuiteSpec("marts_merchant_features", "marts", "merchant_features", merchant_features),
)
