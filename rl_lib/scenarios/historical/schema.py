"""The bookings table's schema: its columns, categories and ranges, and the import report.


The counterpart of the original ``collect_historical_data.py --days 90``. A bookings table
(CSV, Parquet or a SQL table) holds one row per booking:

=================  ==========================================================================
column             meaning
=================  ==========================================================================
booking_id         text or integer, unique over the table (read as text).
service_date       ``YYYY-MM-DD``: the day the trip is served.
created_at         ISO 8601 local date-time (``2026-06-29T14:05:00``): when the booking was
                   made. Before the scenario's ``day_start_min`` on the service date (e.g.
                   the day before) means an *advance* booking, known at the day start;
                   otherwise a *same-day* request, known from that minute on.
requested_pickup   ISO 8601 local date-time on the service date: start of the pickup window.
pickup_x_km,       pickup point, km east / north of the region's south-west corner (the frame
pickup_y_km        of the scenario's ``region_km`` and ``depot``); finite and >= 0.
dropoff_x_km,      dropoff point, same frame.
dropoff_y_km
mobility           ``ambulatory`` | ``wheelchair`` | ``stretcher`` (case-insensitive).
priority           ``normal`` | ``appointment`` | ``dialysis`` (case-insensitive).
window_min         pickup window length in minutes, in [1, 240] (the scenario config's range):
                   the pickup window is [requested_pickup, requested_pickup + window_min].
=================  ==========================================================================

Other columns are ignored. Date-times are local wall-clock times: a text value with a UTC
offset (``+02:00``, ``Z``) is a bad row; typed time-zone-aware timestamps (Parquet, SQL) are
read as wall-clock time in their own zone. Rows are numbered from 1, the header not counted
(in a CSV, row r is line r + 1).

Bad rows (a missing or unparseable value, an unknown category, a window out of range, a
pickup not on its service date, a booking made after its pickup, a repeated booking_id) are
never dropped silently: ``on_error="raise"`` (the default) stops at the first with its row
number and reason; ``on_error="skip"`` drops them, counts them by reason in the
:class:`ImportReport` and logs a warning with the counts. A row with several problems is
counted once, under the first in the order above. Of repeated booking_ids the first valid
row is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl_lib.envs.day import Mobility, Priority
from rl_lib.scenarios.config import DemandConfig

COORDS = ("pickup_x_km", "pickup_y_km", "dropoff_x_km", "dropoff_y_km")
COLUMNS = (
    "booking_id",
    "service_date",
    "created_at",
    "requested_pickup",
    *COORDS,
    "mobility",
    "priority",
    "window_min",
)
MOBILITIES = tuple(m.name.lower() for m in Mobility)
PRIORITIES = tuple(p.name.lower() for p in Priority)
ON_ERROR = ("raise", "skip")

_WINDOW_META = {f.name: f.metadata for f in DemandConfig.__dataclass_fields__.values()}["windows_min"]
WINDOW_RANGE = (float(_WINDOW_META["min"]), float(_WINDOW_META["max"]))


@dataclass(frozen=True)
class ImportReport:
    """What :func:`read_bookings` did with a table.

    :param source: the source as given (a URL with its password hidden).
    :param rows_read: data rows in the table.
    :param rows_outside_last_days: rows of older service dates left out by ``last_days``.
    :param skipped: bad rows dropped (``on_error="skip"``), by reason.
    :param rows_kept: rows returned.
    :param dates: distinct service dates returned.
    """

    source: str
    rows_read: int
    rows_outside_last_days: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0
    dates: int = 0

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: rows read, kept, left out and skipped (by reason)."""
        text = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept} over {self.dates} dates"
        if self.rows_outside_last_days:
            text += f"; {self.rows_outside_last_days} rows of earlier dates left out (last_days)"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.items())
            text += f"; skipped {self.rows_skipped} bad rows ({reasons})"
        return text
