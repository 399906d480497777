"""Run the Great Expectations suites in ``expectations/`` as checkpoints against the warehouse."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ml.runtime import disable_telemetry
from ml.settings import Settings
from ml.warehouse import ddl
from ml.warehouse.postgres import sqlalchemy_url

log = logging.getLogger(__name__)


# Counts, never values: GX writes every result into its validation store and data docs under the home, and a failed
# expectation on a user id column would list the ids there, out of erasure's reach (docs/operations.md, Privacy).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


class DataQualityError(RuntimeError):
    """A checkpoint failed: the message names each failed expectation, its table, column and count of bad rows
    (and example rows of a rule written as SQL, read from the warehouse, never from GX's results)."""


@dataclass
class CheckpointReport:
    checkpoint: str
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    data_docs: Path | None = None


def _context(settings: Settings):
    disable_telemetry()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # The file context holds only generated state (data docs, validation results); suites live in expectations/.
    root = settings.home / "gx"
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_checkpoint(settings: Settings, url: str, name: str, suites) -> CheckpointReport:
    """Validate each suite's table; raise DataQualityError if any expectation fails."""
    import great_expectations as gx

    context = _context(settings)
    datasource = context.data_sources.add_or_update_sql(name="warehouse", connection_string=sqlalchemy_url(url))
    arrival_suites = [spec.name for spec in suites if spec.arrival_column]
    seen_through = _snapshot_xmin(url) if arrival_suites else None
    validations = []
    batches: dict[str, tuple[str, str]] = {}  # asset name -> (the table it reads, its rows as SQL)
    for spec in suites:
        table = f"{spec.schema}.{spec.table}"
        if spec.arrival_column:
            query = _arrived_rows_query(url, spec, table)
            asset = _replace_query_asset(datasource, f"{table} since the last gate", query)
            batches[asset.name] = (table, f"({query}) AS batch")
        else:
            try:
                asset = datasource.get_asset(table)
            except LookupError:
                asset = datasource.add_table_asset(name=table, table_name=spec.table, schema_name=spec.schema)
            batches[asset.name] = (table, table)
        batch_definition = _whole_table(asset)
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=spec.name, expectations=spec.build()))
        validations.append(
            context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=spec.name, data=batch_definition, suite=suite)
            )
        )
    _drop_old_results(context, [spec.name for spec in suites], keep=settings.quality_results_kept - 1)
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=validations,
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format=RESULT_FORMAT,
        )
    )
    result = checkpoint.run()
    report = CheckpointReport(
        checkpoint=name, success=bool(result.success), evaluated=0, data_docs=_data_docs_index(settings)
    )
    for validation_result in result.run_results.values():
        table, rows = batches.get(_asset_of(validation_result), ("?", "?"))
        for expectation_result in validation_result.results:
            report.evaluated += 1
            if not expectation_result.success:
                report.failed.append(_describe_failure(url, table, rows, expectation_result))
    if not report.success:
        raise DataQualityError(
            f"checkpoint {name} failed {len(report.failed)} of {report.evaluated} expectations:\n  "
            + "\n  ".join(report.failed)
            + (f"\nData docs: {report.data_docs}" if report.data_docs else "")
        )
    _record_arrivals_validated(url, arrival_suites, seen_through)
    log.info("checkpoint %s: %d expectations passed", name, report.evaluated)
    return report


def _drop_old_results(context, suites: list[str], keep: int) -> None:
    """Delete all but the newest ``keep`` stored validation results of each suite; the data-docs build that follows
    deletes their pages. That build reads every stored result for its index, so a store that only grew would make
    each day's gate slower than the last."""
    store = context.validation_results_store
    by_suite: dict[str, list] = {name: [] for name in suites}
    for key in store.list_keys():
        by_suite.get(key.expectation_suite_identifier.name, []).append(key)
    dropped = 0
    for keys in by_suite.values():
        for key in sorted(keys, key=lambda key: key.run_id.run_time, reverse=True)[keep:]:
            store.remove_key(key)
            dropped += 1
    if dropped:
        log.info("deleted %d validation results older than the newest %d of each suite", dropped, keep)


def _snapshot_xmin(url: str) -> int:
    """Every transaction below this id has ended: its rows are visible to the validation that follows."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0]


def _arrived_rows_query(url: str, spec, table: str) -> str:
    """The suite's rows that arrived since its last passing run (all of them before its first): those written by
    a transaction that had not ended when that run began (``raw.events.load_xid``, see ml/warehouse/schema/raw.sql)."""
    with psycopg.connect(url) as conn:
        ddl.ensure(conn, "ops")
        found = conn.execute(
            "SELECT validated_through_xid FROM ops.quality_gates WHERE suite = %s", (spec.name,)
        ).fetchone()
    if found is None:
        return f"SELECT * FROM {table}"
    return f"SELECT * FROM {table} WHERE {spec.arrival_column} >= {int(found[0])}"


def _replace_query_asset(datasource, name: str, query: str):
    try:
        datasource.delete_asset(name)
    except LookupError:
        pass
    return datasource.add_query_asset(name=name, query=query)


def _record_arrivals_validated(url: str, suites: list[str], through_xid: int | None) -> None:
    if not suites:
        return
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            """INSERT INTO ops.quality_gates (suite, validated_through_xid) VALUES (%s, %s)
               ON CONFLICT (suite) DO UPDATE SET validated_through_xid = EXCLUDED.validated_through_xid""",
            [(suite, through_xid) for suite in suites],
        )


def _whole_table(asset):
    try:
        return asset.get_batch_definition("whole_table")
    except (KeyError, LookupError, ValueError):
        return asset.add_batch_definition_whole_table("whole_table")


def _asset_of(validation_result) -> str:
    return str(validation_result.meta.get("active_batch_definition", {}).get("data_asset_name", "?"))


def _describe_failure(url: str, table: str, rows: str, expectation_result) -> str:
    config = expectation_result.expectation_config
    kwargs = config.kwargs
    what = config.description or config.type
    details = expectation_result.result or {}
    count = details.get("unexpected_count")
    examples = None
    if kwargs.get("unexpected_rows_query"):
        count = details.get("observed_value")
        examples = _example_rows(url, kwargs["unexpected_rows_query"].replace("{batch}", rows))
    elif "observed_value" in details:
        examples = f"observed {details['observed_value']}"
    parts = [f"{table}: {what}"]
    if kwargs.get("column"):
        parts.append(f"column {kwargs['column']}")
    if count is not None:
        parts.append(f"{count} bad row(s)")
    if examples is not None:
        parts.append(f"e.g. {_short(examples)}")
    return " | ".join(parts)


def _example_rows(url: str, query: str, limit: int = 5) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM ({query}) AS bad LIMIT {limit}").fetchall()


def _short(value, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _data_docs_index(settings: Settings) -> Path | None:
    index = settings.home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return index if index.exists() else None


def check_raw(settings: Settings, url: str) -> CheckpointReport:
    from expectations.suites import RAW_SUITES

    return run_checkpoint(settings, url, "raw_gate", RAW_SUITES)


def check_marts(settings: Settings, url: str) -> CheckpointReport:
    from expectations.suites import MART_SUITES

    return run_checkpoint(settings, url, "marts_gate", MART_SUITES)
