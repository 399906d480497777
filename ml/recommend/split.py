"""Per-user temporal hold-out: each user's earliest interactions train, the latest are held out."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def temporal_split(
    interactions: pd.DataFrame,
    train_share: float = 0.8,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "event_time",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For a user with n interactions sorted by (time, item), the first ceil(train_share * n) train.

    Returns (train, held_out), both sorted by user, time and item.
    """
    ordered = interactions.sort_values([user_col, time_col, item_col], kind="mergesort")
    position = ordered.groupby(user_col, sort=False).cumcount().to_numpy()
    size = ordered.groupby(user_col, sort=False)[item_col].transform("size").to_numpy()
    in_train = position < train_size(size, train_share)
    return ordered[in_train], ordered[~in_train]


def train_size(interactions: np.ndarray | int, train_share: float) -> np.ndarray:
    """How many of a user's ``interactions`` ``temporal_split`` puts in train: ceil(train_share * n)."""
    # The epsilon keeps float error (0.8 * 15 = 12.000000000000002) from rounding up a whole interaction.
    return np.ceil(train_share * np.asarray(interactions) - 1e-9).astype(np.int64)


def fewest_to_hold_out(train_share: float) -> int:
    """The fewest interactions a user needs for ``temporal_split`` to hold one of them out."""
    if not 0.0 <= train_share < 1.0:
        raise ValueError(f"train_share must be at least 0 and below 1, got {train_share}")
    return next(n for n in itertools.count(1) if train_size(n, train_share) < n)


def unix_seconds(values: pd.Series) -> pd.Series:
    """Event times as float unix seconds, from numbers (seconds, or milliseconds, microseconds or nanoseconds
    since 1970, told apart by size), datetimes, or date-time strings (ISO-8601 first, then any format pandas
    reads)."""
    if pd.api.types.is_numeric_dtype(values):
        seconds = values.astype(np.float64)
        # Unix seconds stay below 1e11 until the year 5138, so larger values count smaller units.
        magnitude = float(np.nanmedian(np.abs(seconds))) if len(seconds) else 0.0
        return seconds / next((scale for scale in (1e9, 1e6, 1e3) if magnitude >= scale * 1e8), 1.0)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values
    else:
        try:
            stamps = pd.to_datetime(values, utc=True, format="ISO8601")
        except ValueError:
            stamps = pd.to_datetime(values, utc=True, format="mixed")
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
