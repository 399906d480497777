"""What every command shares: settings from the command-line flags, today's date."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from ml.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        seed=getattr(args, "seed", None), scale=getattr(args, "scale", None), days=getattr(args, "days", None)
    )


def today() -> date:
    return datetime.now(UTC).date()
