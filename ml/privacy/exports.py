"""Erasure in the CSV exports: every file is rewritten without the erased users' rows, atomically."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ml.privacy.columns import is_user_id_column


def remove_users(exports_dir: Path, user_ids: set[str]) -> dict[str, int]:
    """Rewrite every CSV export holding one of ``user_ids`` in a user id column without those rows (a temporary
    file beside it, renamed over it, so a reader sees the old file or the new one). Rows removed per
    ``exports/<file name>``, for the files that held any; files without them are left untouched."""
    removed = {}
    if not exports_dir.is_dir():
        return removed
    for path in sorted(exports_dir.rglob("*.csv")):
        if path.name.startswith("."):  # a writer's partial file (ml/crm/export.py)
            continue
        rows = _rewrite_without(path, user_ids)
        if rows:
            removed[f"exports/{path.relative_to(exports_dir)}"] = rows
    return removed


def _rewrite_without(path: Path, user_ids: set[str]) -> int:
    partial = path.with_name(f".{path.name}.{os.getpid()}.erasure.partial")
    removed = 0
    try:
        with path.open(newline="") as source:
            reader = csv.reader(source)
            header = next(reader, None)
            id_positions = [i for i, name in enumerate(header or []) if is_user_id_column(name)]
            if not id_positions:
                return 0
            with partial.open("w", newline="") as target:
                writer = csv.writer(target, lineterminator="\n")
                writer.writerow(header)
                for row in reader:
                    if any(i < len(row) and row[i].strip() in user_ids for i in id_positions):
                        removed += 1
                    else:
                        writer.writerow(row)
        if removed:
            os.chmod(partial, path.stat().st_mode & 0o777)
            partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return removed
