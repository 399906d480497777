"""What a day's run leaves for its readers, in a comparable form: every crm table, the export files, the aliases.

Re-run and crash tests compare these between two runs of the same day."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import psycopg


def crm_tables(url: str) -> dict[str, pd.DataFrame]:
    """Every table of schema crm with all its columns but the write-time stamps (those defaulting to now(), such
    as published_at and computed_at), rows in a fixed order."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            """SELECT table_name, column_name FROM information_schema.columns
               WHERE table_schema = 'crm' AND coalesce(column_default, '') NOT LIKE '%%now()%%'
               ORDER BY table_name, ordinal_position"""
        ).fetchall()
        tables: dict[str, list[str]] = {}
        for table, column in columns:
            tables.setdefault(table, []).append(column)
        snapshot = {}
        for table, names in tables.items():
            quoted = ", ".join(f'"{name}"' for name in names)
            rows = conn.execute(f'SELECT {quoted} FROM crm."{table}" ORDER BY {quoted}').fetchall()
            snapshot[table] = pd.DataFrame(rows, columns=names)
    return snapshot


def export_files(exports_dir: Path) -> dict[str, bytes]:
    """Every file in the exports folder, hidden ones (a partial write left behind) included, by name."""
    if not exports_dir.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(exports_dir.iterdir()) if path.is_file()}


def assert_same_crm_tables(actual: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    assert sorted(actual) == sorted(expected)
    for table, rows in expected.items():
        assert len(actual[table]) == len(rows), table
        pd.testing.assert_frame_equal(actual[table], rows, obj=f"crm.{table}")


def assert_same_exports(actual: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(actual) == sorted(expected)
    different = [name for name, content in expected.items() if actual[name] != content]
    assert not different, f"export files with other bytes: {different}"
