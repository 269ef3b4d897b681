"""Parse and check a raw bookings table row by row (the schema: :mod:`.schema`)."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from rl_lib.scenarios.historical.schema import COORDS, MOBILITIES, PRIORITIES, WINDOW_RANGE

# A time part followed by a UTC offset or "Z": such values are rejected, not silently shifted.
_OFFSET = re.compile(r"[T ]\d{1,2}:\d{2}.*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")


def parse_dates(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Service dates (midnight datetimes) and which rows hold a valid ``YYYY-MM-DD``."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(col.dtype):
        # A typed date column: valid only without a time of day.
        date = col.where(col == col.dt.normalize())
    else:
        date = pd.to_datetime(col.astype("str"), format="%Y-%m-%d", errors="coerce")
    return date, date.notna()


def _parse_times(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Naive datetimes (NaT where unparseable) and which text values carry a UTC offset."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return col, pd.Series(False, index=col.index)
    text = col.astype("str")
    zoned = text.str.contains(_OFFSET, na=False)
    return pd.to_datetime(text.mask(zoned), format="ISO8601", errors="coerce"), zoned


def validate(
    raw: pd.DataFrame, date: pd.Series, date_ok: pd.Series
) -> tuple[pd.DataFrame, pd.Series, dict[int, str]]:
    """Typed columns, each row's first problem (NaN if none) and a message for the first row of each."""
    ids = raw["booking_id"].astype("str").str.strip()
    created, created_zoned = _parse_times(raw["created_at"])
    pickup, pickup_zoned = _parse_times(raw["requested_pickup"])
    coords = {c: pd.to_numeric(raw[c], errors="coerce") for c in COORDS}
    mobility = raw["mobility"].astype("str").str.strip().str.lower()
    priority = raw["priority"].astype("str").str.strip().str.lower()
    window = pd.to_numeric(raw["window_min"], errors="coerce")
    lo, hi = WINDOW_RANGE

    def value(col: str, row: int) -> str:
        return f"{col} {raw.at[row, col]!r}"

    # (reason, bad mask, message for one row), in order: a row's first matching reason is its problem.
    checks: list[tuple[str, pd.Series, Callable[[int], str]]] = [
        ("missing booking_id", ids.isna() | (ids == ""), lambda r: "booking_id is empty"),
        ("bad service_date", ~date_ok, lambda r: f"{value('service_date', r)} is not a date YYYY-MM-DD"),
    ]
    for col, parsed, zoned in (
        ("created_at", created, created_zoned),
        ("requested_pickup", pickup, pickup_zoned),
    ):
        checks += [
            (
                f"UTC offset in {col}",
                zoned,
                lambda r, c=col: f"{value(c, r)} has a UTC offset; give local time",
            ),
            (f"bad {col}", parsed.isna(), lambda r, c=col: f"{value(c, r)} is not an ISO 8601 date-time"),
        ]
    for col, number in coords.items():
        bad = ~(np.isfinite(number) & number.ge(0))
        checks.append((f"bad {col}", bad, lambda r, c=col: f"{value(c, r)} is not a number >= 0"))
    checks += [
        (
            "unknown mobility",
            ~mobility.isin(MOBILITIES),
            lambda r: f"unknown {value('mobility', r)} (expected {', '.join(MOBILITIES)})",
        ),
        (
            "unknown priority",
            ~priority.isin(PRIORITIES),
            lambda r: f"unknown {value('priority', r)} (expected {', '.join(PRIORITIES)})",
        ),
        (
            "bad window_min",
            ~window.between(lo, hi),
            lambda r: f"{value('window_min', r)} is not a number of minutes in [{lo:g}, {hi:g}]",
        ),
        (
            "requested_pickup not on service_date",
            pickup.dt.normalize() != date,
            lambda r: f"requested_pickup {pickup[r]} is not on service_date {date[r]:%Y-%m-%d}",
        ),
        (
            "created_at after requested_pickup",
            created > pickup,
            lambda r: f"created_at {created[r]} is after requested_pickup {pickup[r]}",
        ),
    ]
    reason = pd.Series(np.nan, index=raw.index, dtype=object)
    message: dict[int, str] = {}
    for name, bad, describe in checks:
        new = bad & reason.isna()
        if new.any():
            reason[new] = name
            # Only the first row of each reason needs words: it is the one a raise can report.
            first = int(new.idxmax())
            message[first] = describe(first)
    # A booking_id repeating an otherwise valid row's: the first stays.
    valid = reason.isna()
    repeat = ids[valid].duplicated().reindex(raw.index, fill_value=False)
    if repeat.any():
        reason[repeat] = "duplicate booking_id"
        row = int(repeat.idxmax())
        message[row] = f"booking_id {ids[row]!r} repeats row {ids[valid & (ids == ids[row])].index[0]}"

    df = pd.DataFrame(
        {
            "booking_id": ids,
            "service_date": date,
            "created_at": created,
            "requested_pickup": pickup,
            **{c: coords[c].astype(float) for c in COORDS},
            "mobility": mobility,
            "priority": priority,
            "window_min": window.astype(float),
        },
        index=raw.index,
    )
    return df, reason, message
