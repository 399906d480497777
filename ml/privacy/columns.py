"""Which columns hold a user's id: one rule for the warehouse's tables and the CSV exports."""

from __future__ import annotations

import re

# user_id, or a qualified one (referrer_user_id, ...).
USER_ID_COLUMN_PATTERN = r"(^|_)user_id$"


def is_user_id_column(name: str) -> bool:
    return re.search(USER_ID_COLUMN_PATTERN, name) is not None
