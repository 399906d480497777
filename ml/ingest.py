"""Load files in the data contract's schema into ``raw.*``, idempotently by natural key.

Every row read ends up in exactly one place: loaded, skipped as a duplicate of a row already
there (same natural key), or quarantined in ``raw.quarantine`` with the reason and source file.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "checkout_completed",
    "merchant_page_viewed",
    "product_page_viewed",
    "app_opened",
    "campaign_opened",
    "reward_redeemed",
)
OFFER_EVENT_TYPES = ("free_delivery", "percent_discount", "cashback", "double_points", "none")
ASSIGNMENTS = ("treatment", "holdout")
# Clocks on phones drift; anything further ahead than this is a bad timestamp, not skew.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class TableContract:
    name: str
    key: tuple[str, ...]
    required: tuple[str, ...]
    optional: tuple[str, ...]
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
        integers=("user_id", "merchant_id"),
        floats=("order_total",),
        timestamps=("event_time",),
        json_columns=("properties",),
    ),
    "merchants": TableContract(
        name="merchants",
        key=("merchant_id",),
        required=("merchant_id", "merchant_name", "category", "zone", "opened_at"),
        optional=("lat", "lng", "price_level"),
        integers=("merchant_id", "price_level"),
        floats=("lat", "lng"),
        timestamps=("opened_at",),
    ),
    "users": TableContract(
        name="users",
        key=("user_id",),
        required=("user_id", "signup_at"),
        optional=("platform", "home_zone", "marketing_opt_in"),
        integers=("user_id",),
        timestamps=("signup_at",),
        booleans=("marketing_opt_in",),
    ),
    "campaign_exposures": TableContract(
        name="campaign_exposures",
        key=("campaign_id", "user_id"),
        required=("campaign_id", "user_id", "sent_at", "event_type", "reward_size", "assignment"),
        optional=(),
        integers=("user_id",),
        floats=("reward_size",),
        timestamps=("sent_at",),
    ),
}
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def ensure_raw_schema(conn: psycopg.Connection) -> None:
    conn.execute(resources.files("ml").joinpath("sql/raw_schema.sql").read_text())


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
    """Read every column as text (typing happens in validation, so bad values can be quarantined)."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".parquet"):
        frame = pd.read_parquet(path)
        return frame
    if suffixes.endswith(".csv") or suffixes.endswith(".csv.gz"):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if suffixes.endswith((".jsonl", ".ndjson", ".json")):
        return _read_json_lines(path)
    raise ValueError(f"{path.name}: unsupported file type; use .csv, .parquet or .jsonl")


def _read_json_lines(path: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            record = {"__unparseable__": f"line {number}: {exc}: {line[:200]}"}
        records.append(record)
    return pd.DataFrame.from_records(records)


def validate(frame: pd.DataFrame, contract: TableContract, now: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a file's rows into typed good rows and bad rows with a ``reason`` (original values kept)."""
    missing = [c for c in contract.required if c not in frame.columns]
    if missing:
        raise SchemaDriftError(
            f"{contract.name}: required column(s) missing: {', '.join(missing)}; "
            f"found: {', '.join(map(str, frame.columns))}"
        )
    original = frame.reset_index(drop=True).copy()
    original["row_number"] = np.arange(1, len(original) + 1)
    reasons = pd.Series([""] * len(original), dtype=object)

    def flag(mask: pd.Series, reason: str) -> None:
        mask = mask.fillna(False).to_numpy(dtype=bool) & (reasons == "").to_numpy()
        reasons[mask] = reason

    if "__unparseable__" in original.columns:
        flag(original["__unparseable__"].notna(), "unparseable record")

    typed = pd.DataFrame(index=original.index)
    for column in contract.columns:
        raw = original[column] if column in original.columns else pd.Series([None] * len(original))
        blank = raw.isna() | (raw.astype(str).str.strip() == "")
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
            values = text.map({"true": True, "1": True, "t": True, "yes": True, "false": False, "0": False, "f": False, "no": False})
            flag(~blank & values.isna(), f"{column} is not a boolean")
            typed[column] = values.astype("boolean")
        elif column in contract.json_columns:
            typed[column], bad = _to_json_text(raw)
            flag(bad, f"{column} is not a JSON object")
        else:
            typed[column] = raw.where(~blank, None).map(lambda v: None if v is None else str(v))

    _flag_business_rules(typed, contract, now, flag)
    good = typed[reasons == ""].copy()
    good["row_number"] = original.loc[good.index, "row_number"]
    bad = original[reasons != ""].copy()
    bad["reason"] = reasons[reasons != ""]
    return good, bad


def _flag_business_rules(typed: pd.DataFrame, contract: TableContract, now: datetime, flag) -> None:
    future = pd.Timestamp(now + FUTURE_TOLERANCE)
    if contract.name == "events":
        flag(~typed["event_type"].isin(EVENT_TYPES) & typed["event_type"].notna(), "unknown event_type")
        flag(typed["order_total"] < 0, "negative order_total")
        flag(typed["event_time"] > future, "event_time in the future")
        flag((typed["event_type"] == "checkout_completed") & typed["merchant_id"].isna(), "checkout without merchant_id")
    elif contract.name == "campaign_exposures":
        flag(~typed["event_type"].isin(OFFER_EVENT_TYPES), "unknown offer event_type")
        flag(~typed["assignment"].isin(ASSIGNMENTS), "unknown assignment")
        flag(typed["reward_size"] < 0, "negative reward_size")
        flag(typed["sent_at"] > future, "sent_at in the future")
    elif contract.name == "users":
        flag(typed["signup_at"] > future, "signup_at in the future")


def _to_utc(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        values = pd.to_datetime(raw)
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")


def _to_json_text(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    texts, bad = [], []
    for value in raw:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            texts.append("{}")
            bad.append(False)
            continue
        try:
            parsed = value if isinstance(value, dict) else json.loads(value)
            ok = isinstance(parsed, dict)
        except (TypeError, ValueError):
            ok = False
        texts.append(json.dumps(parsed) if ok else None)
        bad.append(not ok)
    return pd.Series(texts, index=raw.index, dtype=object), pd.Series(bad, index=raw.index)


def load_frame(
    conn: psycopg.Connection, table: str, frame: pd.DataFrame, source_file: str, now: datetime | None = None
) -> LoadResult:
    """Validate and load one file's rows into ``raw.<table>`` inside the caller's transaction."""
    contract = CONTRACTS[table]
    now = now or datetime.now(timezone.utc)
    result = LoadResult(table=table, source_file=source_file, rows_read=len(frame))
    good, bad = validate(frame, contract, now)
    result.rows_quarantined = _quarantine(conn, table, source_file, bad)
    if not good.empty:
        result.rows_loaded = _insert_new(conn, contract, good, source_file)
    result.rows_duplicate = len(good) - result.rows_loaded
    return result


def _quarantine(conn: psycopg.Connection, table: str, source_file: str, bad: pd.DataFrame) -> int:
    if bad.empty:
        return 0
    records = bad.drop(columns=["row_number", "reason"]).astype(object).where(bad.notna(), None)
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO raw.quarantine (table_name, source_file, row_number, reason, record)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (table_name, source_file, row_number) DO UPDATE SET reason = EXCLUDED.reason""",
            [
                (table, source_file, int(n), reason, json.dumps(rec, default=str))
                for n, reason, rec in zip(bad["row_number"], bad["reason"], records.to_dict("records"))
            ],
        )
    return len(bad)


def _insert_new(conn: psycopg.Connection, contract: TableContract, good: pd.DataFrame, source_file: str) -> int:
    """COPY into a temp table, then insert rows whose natural key is new (first occurrence in file wins)."""
    columns = list(contract.columns)
    staging = f"incoming_{contract.name}"
    conn.execute(f"DROP TABLE IF EXISTS {staging}")
    conn.execute(
        f"CREATE TEMP TABLE {staging} ON COMMIT DROP AS "
        f"SELECT {', '.join(columns)}, 0::bigint AS row_number FROM raw.{contract.name} WITH NO DATA"
    )
    buffer = io.StringIO()
    good[columns + ["row_number"]].to_csv(buffer, index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
    buffer.seek(0)
    with conn.cursor() as cur:
        with cur.copy(f"COPY {staging} ({', '.join(columns)}, row_number) FROM STDIN WITH (FORMAT csv)") as copy:
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        key = ", ".join(contract.key)
        cur.execute(
            f"""INSERT INTO raw.{contract.name} ({', '.join(columns)}, source_file)
                SELECT DISTINCT ON ({key}) {', '.join(columns)}, %s FROM {staging}
                ORDER BY {key}, row_number
                ON CONFLICT ({key}) DO NOTHING""",
            (source_file,),
        )
        loaded = cur.rowcount
    conn.execute(f"DROP TABLE {staging}")
    return loaded


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


def ingest_path(url: str, path: Path, now: datetime | None = None) -> list[LoadResult]:
    """Load a file or a drop folder; each file commits on its own, so a crash loses at most the file in flight."""
    results = []
    with psycopg.connect(url) as conn:
        ensure_raw_schema(conn)
        conn.commit()
        for file in discover_files(Path(path)):
            table = table_for_file(file)
            frame = read_file(file)
            with conn.transaction():
                result = load_frame(conn, table, frame, str(file.resolve()), now=now)
            log.info(
                "%s -> raw.%s: %d read, %d loaded, %d duplicate, %d quarantined",
                file.name, table, result.rows_read, result.rows_loaded, result.rows_duplicate, result.rows_quarantined,
            )
            results.append(result)
    return results


def summarise(results: list[LoadResult]) -> pd.DataFrame:
    if not results:
        return pd.DataFrame(columns=["table", "rows_read", "rows_loaded", "rows_duplicate", "rows_quarantined"])
    frame = pd.DataFrame([r.as_dict() for r in results])
    return frame.groupby("table", sort=False)[["rows_read", "rows_loaded", "rows_duplicate", "rows_quarantined"]].sum().reset_index()
