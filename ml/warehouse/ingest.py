"""Load files in the data contract's schema into ``raw.*``, idempotently by natural key.

Every row read ends up in exactly one place: loaded, skipped as a duplicate of a row already
there (same natural key, or an earlier row of the same file), or quarantined in ``raw.quarantine``
with the reason and source file.

Validation is vectorised (pandas / numpy); rows travel to Postgres as CSV written by Arrow and
streamed through ``COPY``. Only the natural keys are staged: one join against ``raw.<table>`` tells
which rows are already there, and the others are copied straight into the raw table.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import numbers
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from ml.privacy.tombstones import ErasedUsers
from ml.runtime import PROGRESS_LOGGER
from ml.warehouse import ddl
from ml.warehouse.bulk import copy_frame, copy_table
from ml.warehouse.contract import (
    ASSIGNMENTS,
    CHECKOUT,
    EVENT_TYPES,
    FUTURE_TOLERANCE,
    ID_COLUMNS,
    ID_MAX_LENGTH,
    INGEST_EVENT_RULES,
    OFFER_EVENT_TYPES,
)

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


@dataclass(frozen=True)
class TableContract:
    name: str
    key: tuple[str, ...]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    ids: tuple[str, ...] = ()  # user and merchant ids: text (see ID_COLUMNS in ml/warehouse/contract.py)
    integers: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    timestamps: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


CONTRACTS: dict[str, TableContract] = {
    "events": TableContract(
        name="events",
        key=("event_id",),
        required=("event_id", "user_id", "event_type", "event_time"),
        optional=("merchant_id", "merchant_name", "order_total", "platform", "zone", "properties"),
        ids=("user_id", "merchant_id"),
        floats=("order_total",),
        timestamps=("event_time",),
        json_columns=("properties",),
    ),
    "merchants": TableContract(
        name="merchants",
        key=("merchant_id",),
        required=("merchant_id", "merchant_name", "category", "zone", "opened_at"),
        optional=("lat", "lng", "price_level"),
        ids=("merchant_id",),
        integers=("price_level",),
        floats=("lat", "lng"),
        timestamps=("opened_at",),
    ),
    "users": TableContract(
        name="users",
        key=("user_id",),
        required=("user_id", "signup_at"),
        optional=("platform", "home_zone", "marketing_opt_in"),
        ids=("user_id",),
        timestamps=("signup_at",),
        booleans=("marketing_opt_in",),
    ),
    "campaign_exposures": TableContract(
        name="campaign_exposures",
        key=("campaign_id", "user_id"),
        required=("campaign_id", "user_id", "sent_at", "event_type", "reward_size", "assignment"),
        # The probability the offer was chosen (ml/offers/decide.py); files from before it load it as null.
        optional=("propensity",),
        ids=("user_id",),
        floats=("reward_size", "propensity"),
        timestamps=("sent_at",),
    ),
}
if any(set(c.ids) - set(ID_COLUMNS) for c in CONTRACTS.values()):
    raise ImportError(f"ml.warehouse.ingest: every id column must be one of the contract's ID_COLUMNS {ID_COLUMNS}")
# Load order matters only for readability of the summary; raw has no foreign keys on purpose.
TABLE_ORDER = ("users", "merchants", "events", "campaign_exposures")


class SchemaDriftError(ValueError):
    """A file is missing columns the contract requires; nothing from it is loaded."""


@dataclass
class LoadResult:
    table: str
    source_file: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_quarantined: int = 0
    rows_erased: int = 0  # rows of erased users (ops.erased_users), dropped without a trace
    seconds: float = 0.0  # the file from reading to commit; set by ingest_path

    @property
    def rows_per_second(self) -> int:
        return round(self.rows_read / self.seconds) if self.seconds > 0 else 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "rows_per_second": self.rows_per_second}


def has_events(url: str) -> bool:
    """Whether raw.events holds any row (False before the first load)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('raw.events') IS NULL").fetchone()[0]:
            return False
        return conn.execute("SELECT EXISTS (SELECT 1 FROM raw.events)").fetchone()[0]


def ensure_raw_schema(conn: psycopg.Connection) -> None:
    ddl.ensure(conn, "raw")


def table_for_file(path: Path) -> str:
    """``events.parquet``, ``events_2026-11-22.csv`` ... -> ``events``."""
    stem = path.name.split(".")[0]
    for table in sorted(CONTRACTS, key=len, reverse=True):
        if stem == table or stem.startswith(table + "_") or stem.startswith(table + "-"):
            return table
    raise ValueError(
        f"{path.name}: cannot tell which raw table this file is for; name it after one of "
        f"{', '.join(TABLE_ORDER)} (e.g. events_2026-11-22.csv)"
    )


def read_file(path: Path) -> pd.DataFrame:
    """Read a file's rows; typing happens in validation, so bad values can be quarantined.

    CSV is read as text ("00123" stays "00123"); Parquet and JSON lines keep their own types, and validation
    turns an integer id into its decimal text."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".parquet"):
        return pd.read_parquet(path)
    try:
        if suffixes.endswith(".csv") or suffixes.endswith(".csv.gz"):
            return _read_csv(path)
        if suffixes.endswith((".jsonl", ".ndjson", ".json")):
            return _read_json_lines(path)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        ) from None
    raise ValueError(f"{path.name}: unsupported file type; use .csv, .parquet or .jsonl")


# A spreadsheet saved where the decimal mark is a comma separates its CSV columns with ';'.
CSV_SEPARATORS = (",", ";", "\t", "|")


def csv_separator(path: Path) -> str | None:
    """Whichever of ``CSV_SEPARATORS`` the CSV's header holds most; None for an empty file."""
    with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rt", encoding="utf-8-sig") as file:
        header = file.readline()
    return max(CSV_SEPARATORS, key=header.count) if header.strip() else None


def _read_csv(path: Path) -> pd.DataFrame:
    """The file's rows as text; an empty file has none."""
    separator = csv_separator(path)
    if separator is None:
        return pd.DataFrame()
    return pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")


def _read_json_lines(path: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            # As text before pandas sees them: a column of integers with a gap would become floats.
            for column in ID_COLUMNS:
                if type(record.get(column)) is int:
                    record[column] = str(record[column])
        except ValueError as exc:
            record = {"__unparseable__": f"line {number}: {exc}: {line[:200]}"}
        records.append(record)
    return pd.DataFrame.from_records(records)


def validate(frame: pd.DataFrame, contract: TableContract, now: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a file's rows into typed good rows and bad rows with a ``reason`` (original values kept).

    A bad row's reason is the first rule it breaks, in the order they are checked here.
    """
    missing = [c for c in contract.required if c not in frame.columns]
    if missing:
        raise SchemaDriftError(
            f"{contract.name}: required column(s) missing: {', '.join(missing)}; "
            f"found: {', '.join(map(str, frame.columns))}"
        )
    original = frame.reset_index(drop=True)
    reasons: list[str] = []
    reason_codes = np.zeros(len(original), dtype=np.int16)  # 0: good, i: reasons[i - 1]

    def flag(mask: pd.Series, reason: str) -> None:
        hits = mask.fillna(False).to_numpy(dtype=bool) & (reason_codes == 0)
        if hits.any():
            reasons.append(reason)
            reason_codes[hits] = len(reasons)

    if "__unparseable__" in original.columns:
        flag(original["__unparseable__"].notna(), "unparseable record")

    typed = {}
    for column in contract.columns:
        if column in original.columns:
            raw = original[column]
        else:
            raw = pd.Series(None, index=original.index, dtype=object)
        if raw.dtype == object:
            undecodable = _undecodable_bytes(raw)
            if undecodable.any():
                flag(undecodable, f"{column} is not UTF-8 text")
                raw = raw.where(~undecodable)
        blank = _blank(raw)
        if column in contract.ids:
            typed[column] = _flag_ids(raw, blank, column, column in contract.required, flag)
            continue
        if column in contract.required:
            flag(blank, f"missing {column}")
        if column in contract.integers:
            values = pd.to_numeric(raw, errors="coerce")
            flag(~blank & (values.isna() | (values % 1 != 0)), f"{column} is not an integer")
            typed[column] = values.round().astype("Int64")
        elif column in contract.floats:
            values = pd.to_numeric(raw, errors="coerce")
            flag(~blank & values.isna(), f"{column} is not a number")
            typed[column] = values.astype(float)
        elif column in contract.timestamps:
            values = _to_utc(raw)
            flag(~blank & values.isna(), f"{column} is not a timestamp")
            typed[column] = values
        elif column in contract.booleans:
            text = raw.astype(str).str.strip().str.lower()
            values = text.map(
                {"true": True, "1": True, "t": True, "yes": True, "false": False, "0": False, "f": False, "no": False}
            )
            flag(~blank & values.isna(), f"{column} is not a boolean")
            typed[column] = values.astype("boolean")
        elif column in contract.json_columns:
            typed[column], bad = _json_object_text(raw, blank)
            flag(bad, f"{column} is not a JSON object")
        else:
            typed[column] = _text(raw, blank)
    typed = pd.DataFrame(typed, index=original.index)

    _flag_business_rules(typed, contract, now, flag)
    is_bad = reason_codes > 0
    bad = original[is_bad].assign(
        row_number=np.flatnonzero(is_bad) + 1,
        reason=np.array(reasons, dtype=object)[reason_codes[is_bad] - 1],
    )
    return typed[~is_bad], bad


def _flag_ids(raw: pd.Series, blank: pd.Series, column: str, required: bool, flag) -> pd.Series:
    """The ids of ``column`` as trimmed text (None where blank), flagging the rows that break the id contract.

    A required id that is absent is missing, one that is only whitespace is empty; a blank optional id is NULL.
    Each distinct value is checked once: a file holds far fewer ids than rows.
    """
    if required:
        flag(raw.isna(), f"missing {column}")
        flag(blank & raw.notna(), f"{column} is empty")
    values = _unless_blank(raw, blank)
    try:
        codes, distinct = pd.factorize(values)
    except TypeError:  # a JSON object or array among the ids cannot be hashed: check each row on its own
        codes, distinct = np.where(blank, -1, np.arange(len(values))), values.to_numpy()
    texts, problems = zip(*(_id_text(value) for value in distinct)) if len(distinct) else ((), ())
    problem = pd.Series(np.array([*problems, None], dtype=object)[codes], index=raw.index)
    for reason in set(problems) - {None}:
        flag(problem == reason, f"{column} {reason}")
    return pd.Series(np.array([*texts, None], dtype=object)[codes], index=raw.index)


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _id_text(value) -> tuple[str | None, str | None]:
    """An id value as its text, or what is wrong with it (completing "<column> ...")."""
    if isinstance(value, bool | np.bool_):
        return None, "is a boolean, not text or an integer"
    if isinstance(value, numbers.Integral):
        return str(int(value)), None
    if isinstance(value, numbers.Real):
        # Parquet and JSON store integer ids with gaps as floats; 123.0 is the id 123, 123.5 is no id.
        if not float(value).is_integer():
            return None, "is a number that is not an integer"
        return str(int(value)), None
    if not isinstance(value, str):
        return None, f"is a {type(value).__name__}, not text or an integer"
    text = value.strip()
    if len(text) > ID_MAX_LENGTH:
        return None, f"is longer than {ID_MAX_LENGTH} characters"
    if _CONTROL_CHARACTER.search(text):
        return None, "contains a control character"
    return text, None


def _blank(raw: pd.Series) -> pd.Series:
    """Missing, or text that is only whitespace (a value of another type is never blank)."""
    if isinstance(raw.dtype, pd.StringDtype):
        return raw.isna() | raw.str.strip().eq("")
    if raw.dtype != object:
        # Numbers and timestamps: only a missing value is blank. (A zone-aware timestamp column's numpy array is one
        # Timestamp object per row: seconds for a day's events.)
        return raw.isna()
    # On the numpy array, not the Series: pandas' per-operation cost dominates for a batch of a hundred rows.
    values = raw.to_numpy()
    # Python objects: checked one by one, not converted to an Arrow string column first (most of a small batch's
    # validation time).
    blank = pd.isna(values) | np.fromiter((_whitespace_only(value) for value in values), bool, len(values))
    return pd.Series(blank, index=raw.index)


def _unless_blank(raw: pd.Series, blank: pd.Series) -> pd.Series:
    """``raw`` with its blank values missing (NaN); Python objects through numpy, where pandas' ``where`` alone
    costs more than checking a batch of a hundred values."""
    if raw.dtype != object:
        return raw.where(~blank)
    return pd.Series(np.where(blank.to_numpy(), np.nan, raw.to_numpy()), index=raw.index, dtype=object)


def _text(raw: pd.Series, blank: pd.Series) -> pd.Series:
    """Each value as text, missing where blank. Python objects stay Python strings (object dtype): for a batch of a
    hundred, an Arrow string column costs more in every later operation than converting the values one by one."""
    if raw.dtype != object:
        return raw.where(~blank).astype(str)
    return pd.Series(
        [None if is_blank else _as_str(value) for value, is_blank in zip(raw.to_numpy(), blank.to_numpy())],
        index=raw.index,
        dtype=object,
    )


def _as_str(value) -> str:
    """A value's text as pandas' ``astype(str)`` gives it: bytes are UTF-8 text."""
    if type(value) is str:
        return value
    return value.decode() if isinstance(value, bytes) else str(value)


def _undecodable_bytes(raw: pd.Series) -> pd.Series:
    """Which values are bytes that are not UTF-8 text (a Parquet binary column can hold any bytes)."""
    return pd.Series([isinstance(value, bytes) and not _is_utf8(value) for value in raw.to_numpy()], index=raw.index)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _whitespace_only(value) -> bool:
    """Whether a value's text is only whitespace, as converting it to text sees it: bytes are UTF-8 text; numbers,
    booleans, objects and arrays never are."""
    if isinstance(value, bytes):
        value = value.decode()
    return isinstance(value, str) and not value.strip()


# The contract's event rules that ingest applies (ml/warehouse/contract.py), as vectorised checks on the typed
# frame: rows where the mask is True break the rule.
EVENT_RULE_CHECKS = {
    "unknown_event_type": lambda typed, future: ~typed["event_type"].isin(EVENT_TYPES) & typed["event_type"].notna(),
    "negative_order_total": lambda typed, future: typed["order_total"] < 0,
    "event_time_in_future": lambda typed, future: typed["event_time"] > future,
    "missing_merchant_id": lambda typed, future: (typed["event_type"] == CHECKOUT) & typed["merchant_id"].isna(),
}
if set(EVENT_RULE_CHECKS) != {rule.name for rule in INGEST_EVENT_RULES}:
    raise ImportError(
        "ml.warehouse.ingest checks event rules "
        f"{sorted(EVENT_RULE_CHECKS)} but the contract has ingest apply {sorted(r.name for r in INGEST_EVENT_RULES)}"
    )


def _flag_business_rules(typed: pd.DataFrame, contract: TableContract, now: datetime, flag) -> None:
    future = pd.Timestamp(now + FUTURE_TOLERANCE)
    if contract.name == "events":
        for rule in INGEST_EVENT_RULES:
            flag(EVENT_RULE_CHECKS[rule.name](typed, future), rule.ingest_reason)
    elif contract.name == "campaign_exposures":
        flag(~typed["event_type"].isin(OFFER_EVENT_TYPES), "unknown offer event_type")
        flag(~typed["assignment"].isin(ASSIGNMENTS), "unknown assignment")
        flag(typed["reward_size"] < 0, "negative reward_size")
        flag((typed["propensity"] <= 0) | (typed["propensity"] > 1), "propensity not in (0, 1]")
        flag(typed["sent_at"] > future, "sent_at in the future")
    elif contract.name == "users":
        flag(typed["signup_at"] > future, "signup_at in the future")


def _to_utc(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        values = pd.to_datetime(raw)
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")


def _json_object_text(raw: pd.Series, blank: pd.Series) -> tuple[pd.Series, pd.Series]:
    """JSON text per row (blank: ``{}``) and which rows are not a JSON object; parses each distinct value once."""
    values = _unless_blank(raw, blank)
    if values.dtype == object:
        # JSON-lines records carry nested objects and arrays as Python values.
        values = values.map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
    codes, distinct = pd.factorize(values)
    # One more entry for code -1 (blank), which is a valid empty object.
    is_object = np.array([_is_json_object(v) for v in distinct] + [True])
    bad = pd.Series(~is_object[codes], index=raw.index)
    return values.astype(object).fillna("{}"), bad


def _is_json_object(value) -> bool:
    try:
        return isinstance(json.loads(value), dict)
    except (TypeError, ValueError):
        return False


def load_frame(
    conn: psycopg.Connection,
    table: str,
    frame: pd.DataFrame,
    source_file: str,
    now: datetime | None = None,
    erased: ErasedUsers | None = None,
) -> LoadResult:
    """Validate and load one file's rows into ``raw.<table>`` inside the caller's transaction; rows of ``erased``
    users are dropped (counted, neither loaded nor quarantined)."""
    contract = CONTRACTS[table]
    now = now or datetime.now(UTC)
    result = LoadResult(table=table, source_file=source_file, rows_read=len(frame))
    if frame.empty and frame.columns.empty:  # an empty file: a day without rows
        log.warning("%s is empty: no rows to load", Path(source_file).name)
        return result
    good, bad = validate(frame, contract, now)
    if erased is not None and "user_id" in contract.ids:
        good_erased = erased.mask(good["user_id"])
        bad_ids = bad["user_id"] if "user_id" in bad.columns else pd.Series(None, index=bad.index, dtype=object)
        bad_erased = erased.mask(bad_ids.map(lambda value: _id_text(value)[0]))
        result.rows_erased = int(good_erased.sum() + bad_erased.sum())
        good, bad = good[~good_erased], bad[~bad_erased]
    result.rows_quarantined = _quarantine(conn, table, source_file, bad)
    result.rows_loaded = _insert_new(conn, contract, good, source_file)
    result.rows_duplicate = len(good) - result.rows_loaded
    return result


def _bytes_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Bytes values as text for the quarantined record's JSON; bytes that are not UTF-8 keep escapes (``\\xff``)."""
    as_text = {
        column: frame[column].map(lambda v: v.decode(errors="backslashreplace") if isinstance(v, bytes) else v)
        for column in frame.columns
        if frame[column].dtype == object
    }
    return frame.assign(**as_text)


def _quarantine(conn: psycopg.Connection, table: str, source_file: str, bad: pd.DataFrame) -> int:
    if bad.empty:
        return 0
    records = _bytes_as_text(bad.drop(columns=["row_number", "reason"])).to_json(
        orient="records", lines=True, date_format="iso", default_handler=str
    )
    rows = pd.DataFrame(
        {
            "table_name": table,
            "source_file": source_file,
            "row_number": bad["row_number"].to_numpy(),
            "reason": bad["reason"].to_numpy(),
            "record": records.splitlines(),
        }
    )
    conn.execute(
        "CREATE TEMP TABLE incoming_quarantine AS "
        "SELECT table_name, source_file, row_number, reason, record FROM raw.quarantine WITH NO DATA"
    )
    copy_frame(conn, "incoming_quarantine", rows)
    conn.execute(
        """INSERT INTO raw.quarantine (table_name, source_file, row_number, reason, record)
           SELECT table_name, source_file, row_number, reason, record FROM incoming_quarantine
           ON CONFLICT (table_name, source_file, row_number) DO UPDATE SET reason = EXCLUDED.reason"""
    )
    conn.execute("DROP TABLE incoming_quarantine")
    return len(bad)


def _insert_new(conn: psycopg.Connection, contract: TableContract, good: pd.DataFrame, source_file: str) -> int:
    """COPY the rows whose natural key is not in ``raw.<table>`` yet (the first of a file's copies wins)."""
    # In key order, the look-up and the primary key's inserts walk the index page after page instead
    # of at random (ids are often UUIDs): twice as fast, and it stays so as the index outgrows memory.
    if good.empty:
        return 0
    rows = _first_of_each_key(pa.Table.from_pandas(good, preserve_index=False), contract.key)
    # Nothing else may insert between the look-up and the COPY; readers are not blocked.
    conn.execute(f"LOCK TABLE raw.{contract.name} IN SHARE ROW EXCLUSIVE MODE")
    is_new = np.ones(rows.num_rows, dtype=bool)
    is_new[_already_loaded(conn, contract, rows)] = False
    new = rows.filter(pa.array(is_new)).select(list(contract.columns))
    if new.num_rows:
        copy_table(conn, f"raw.{contract.name}", new.append_column("source_file", pa.repeat(source_file, new.num_rows)))
    return new.num_rows


def _first_of_each_key(rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """``rows`` sorted by ``key`` (byte-wise, as the warehouse compares text), keeping only the first row, in the
    input's order, of each key. Arrow's stable sort takes a tenth of pandas' time on a million text ids."""
    order = pc.sort_indices(rows, sort_keys=[(column, "ascending") for column in key])
    keys = rows.select(list(key)).take(order)
    repeats = np.zeros(rows.num_rows, dtype=bool)
    if rows.num_rows > 1:
        same = [pc.equal(keys[column][1:], keys[column][:-1]) for column in key]
        repeats[1:] = functools.reduce(pc.and_, same).to_numpy(zero_copy_only=False)
    return rows.take(order.filter(pa.array(~repeats)))


def _already_loaded(conn: psycopg.Connection, contract: TableContract, rows: pa.Table) -> np.ndarray:
    """Positions in ``rows`` whose natural key is already in ``raw.<table>``; only the keys travel."""
    key = list(contract.key)
    conn.execute(
        f"CREATE TEMP TABLE incoming_keys AS "
        f"SELECT {', '.join(key)}, 0::bigint AS position FROM raw.{contract.name} WITH NO DATA"
    )
    copy_table(conn, "incoming_keys", rows.select(key).append_column("position", pa.array(np.arange(rows.num_rows))))
    # The planner weighs one primary-key probe per row against a pass over the whole table. It needs
    # the batch's size, and random reads priced as on an SSD with the index cached: at the default 4
    # it scans all of raw.events even for 50k keys, so the cost would grow with the table.
    conn.execute("ANALYZE incoming_keys")
    conn.execute("SET LOCAL random_page_cost = 1.1")
    same_key = " AND ".join(f"loaded.{c} = incoming.{c}" for c in key)
    # One text value rather than a row per match: fetching a million rows costs seconds of Python.
    [positions] = conn.execute(
        f"SELECT string_agg(incoming.position::text, ',') FROM incoming_keys incoming "
        f"WHERE EXISTS (SELECT FROM raw.{contract.name} loaded WHERE {same_key})"
    ).fetchone()
    conn.execute("DROP TABLE incoming_keys")
    return np.fromstring(positions or "", dtype=np.int64, sep=",")


def discover_files(path: Path) -> list[Path]:
    """A single file, or every contract file in a drop folder (users and merchants before events)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
    recognised = []
    for file in files:
        try:
            recognised.append((TABLE_ORDER.index(table_for_file(file)), file))
        except ValueError:
            log.warning("skipping %s: not named after a raw table", file.name)
    return [file for _, file in sorted(recognised)]


def ingest_path(url: str, path: Path, now: datetime | None = None, erasure_salt: str | None = None) -> list[LoadResult]:
    """Load a file or a drop folder; each file commits on its own, so a crash loses at most the file in flight.

    A file is recorded in ``raw.ingested_files`` in the transaction that loads its rows, and is skipped
    (no result for it) while its path, size and modification time are unchanged. A changed file is read
    again: rows already there come out as duplicates, so a re-sent file with a few new rows loads exactly
    those. A file that fails is not recorded, so the next run tries it again. Rows of users erased by
    ``ml.privacy`` (their ids' hashes under ``erasure_salt`` in ``ops.erased_users``) are dropped.
    """
    results = []
    with psycopg.connect(url) as conn:
        ensure_raw_schema(conn)
        files = discover_files(Path(path))
        recorded = recorded_files(conn, [str(file.resolve()) for file in files])
        erased = ErasedUsers.load(conn, erasure_salt)
        conn.commit()
        skipped = 0
        for file in files:
            source_file = str(file.resolve())
            # Before reading: a file rewritten while it is read gets a new mtime and is loaded again next run.
            stat = file.stat()
            size, modified_ns, loaded_at = recorded.get(source_file, (None, None, None))
            if (size, modified_ns) == (stat.st_size, stat.st_mtime_ns):
                log.debug("skipping %s: already loaded on %s", file.name, loaded_at.isoformat(timespec="seconds"))
                skipped += 1
                continue
            started = time.perf_counter()
            table = table_for_file(file)
            frame = read_file(file)
            with conn.transaction():
                result = load_frame(conn, table, frame, source_file, now=now, erased=erased)
                _record_file(conn, result, stat.st_size, stat.st_mtime_ns)
            result.seconds = time.perf_counter() - started
            progress.info(
                "%s -> raw.%s: %d read, %d loaded, %d duplicate, %d quarantined, %d erased in %.1fs (%s rows/s)",
                file.name,
                table,
                result.rows_read,
                result.rows_loaded,
                result.rows_duplicate,
                result.rows_quarantined,
                result.rows_erased,
                result.seconds,
                f"{result.rows_per_second:,}",
            )
            results.append(result)
        if any(result.table == "events" and result.rows_loaded for result in results):
            summarize_new_ranges(conn, "raw.events")
    if skipped:
        progress.info("skipped %d file(s) already loaded and unchanged", skipped)
    return results


def summarize_new_ranges(conn: psycopg.Connection, table: str) -> None:
    """Summarise the page ranges appended since the last vacuum in every BRIN index of ``table``.

    An unsummarised range matches every search of its index, so the readers of "the events loaded since load_xid X"
    (the raw gate, dbt's incremental staging) would read every day appended since autovacuum last ran, and it runs
    only after inserts of a fifth of the table (about 20 days of events at full scale): each day a little slower."""
    indexes = conn.execute(
        """SELECT index.indexrelid::regclass::text
           FROM pg_index AS index
           JOIN pg_class AS relation ON relation.oid = index.indexrelid
           JOIN pg_am AS method ON method.oid = relation.relam
           WHERE index.indrelid = %s::regclass AND method.amname = 'brin'""",
        (table,),
    ).fetchall()
    for (name,) in indexes:
        conn.execute("SELECT brin_summarize_new_values(%s::regclass)", (name,))


def recorded_files(conn: psycopg.Connection, source_files: list[str]) -> dict[str, tuple[int, int, datetime]]:
    """Size, modification time and load time of those of ``source_files`` already loaded."""
    rows = conn.execute(
        "SELECT source_file, size_bytes, modified_ns, loaded_at FROM raw.ingested_files WHERE source_file = ANY(%s)",
        (source_files,),
    ).fetchall()
    return {source_file: tuple(rest) for source_file, *rest in rows}


def _record_file(conn: psycopg.Connection, result: LoadResult, size: int, modified_ns: int) -> None:
    conn.execute(
        """INSERT INTO raw.ingested_files (source_file, size_bytes, modified_ns, table_name,
                                           rows_read, rows_loaded, rows_duplicate, rows_quarantined)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (source_file) DO UPDATE SET
               size_bytes = EXCLUDED.size_bytes, modified_ns = EXCLUDED.modified_ns,
               table_name = EXCLUDED.table_name, rows_read = EXCLUDED.rows_read,
               rows_loaded = EXCLUDED.rows_loaded, rows_duplicate = EXCLUDED.rows_duplicate,
               rows_quarantined = EXCLUDED.rows_quarantined, loaded_at = now()""",
        (
            result.source_file,
            size,
            modified_ns,
            result.table,
            result.rows_read,
            result.rows_loaded,
            result.rows_duplicate,
            result.rows_quarantined,
        ),
    )


SUMMARY_TOTALS = ["rows_read", "rows_loaded", "rows_duplicate", "rows_quarantined", "rows_erased", "seconds"]


def summarise(results: list[LoadResult]) -> pd.DataFrame:
    """Per table: the row counts, the seconds spent and the rate in rows read per second."""
    if not results:
        return pd.DataFrame(columns=["table", *SUMMARY_TOTALS, "rows_per_second"])
    frame = pd.DataFrame([r.as_dict() for r in results])
    totals = frame.groupby("table", sort=False)[SUMMARY_TOTALS].sum().reset_index()
    rate = (totals["rows_read"] / totals["seconds"]).where(totals["seconds"] > 0, 0)
    return totals.assign(seconds=totals["seconds"].round(2), rows_per_second=rate.round().astype(int))
