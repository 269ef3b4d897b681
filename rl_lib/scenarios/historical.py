"""Historical bookings: import a bookings table, replay it as dispatch days, fit the generator to it.

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

import argparse
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
import yaml
from scipy.cluster.vq import kmeans2

from rl_lib.config import from_dict, to_dict
from rl_lib.envs.day import Bookings, Day, Mobility, Priority
from rl_lib.envs.travel import TravelModel
from rl_lib.errors import UserError
from rl_lib.io import fsync_dir
from rl_lib.scenarios.config import DemandConfig, Place, ScenarioConfig
from rl_lib.scenarios.synthetic import SyntheticScenario

log = logging.getLogger(__name__)

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
# The sample's last service date: fixed, so `data sample` writes the same table everywhere.
SAMPLE_END = "2026-06-30"
ON_ERROR = ("raise", "skip")

_WINDOW_META = {f.name: f.metadata for f in DemandConfig.__dataclass_fields__.values()}["windows_min"]
WINDOW_RANGE = (float(_WINDOW_META["min"]), float(_WINDOW_META["max"]))
# A time part followed by a UTC offset or "Z": such values are rejected, not silently shifted.
_OFFSET = re.compile(r"[T ]\d{1,2}:\d{2}.*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")
_URL_HINT = "a .csv or .parquet path, or a SQLAlchemy URL such as sqlite:///bookings.db"


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


# ---------------------------------------------------------------------------------------- reading
def read_bookings(
    source: str, *, table: str = "bookings", last_days: int | None = None, on_error: str = "raise"
) -> tuple[pd.DataFrame, ImportReport]:
    """Read and validate a bookings table (schema: see the module docstring).

    :param source: a ``.csv`` or ``.parquet`` path, or a SQLAlchemy URL (``sqlite:///bookings.db``).
    :param table: for a URL, the table to read, or an SQL ``SELECT`` query.
    :param last_days: keep only the last N service dates present in the table (rows of older
        dates are left out, counted, and not validated).
    :param on_error: ``"raise"``: the first bad row is a :class:`UserError` naming its row and
        reason; ``"skip"``: bad rows are dropped and counted by reason (and a warning logged).
    :return: the valid rows (index: row number in the source; typed columns: datetimes for
        ``service_date`` (midnight), ``created_at`` and ``requested_pickup``, floats for
        coordinates and windows, lower-case text for mobility and priority), and the report.
    """
    if on_error not in ON_ERROR:
        raise UserError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
    if last_days is not None and last_days < 1:
        raise UserError(f"last_days={last_days}: expected a positive number of days")
    raw, label, is_csv = _read_source(source, table)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(
            f"{label}: missing column(s) {', '.join(missing)}; a bookings table needs {', '.join(COLUMNS)}"
        )
    if raw.empty:
        raise UserError(f"{label}: the table holds no rows")
    raw = raw.loc[:, list(COLUMNS)].reset_index(drop=True)
    raw.index = pd.RangeIndex(1, len(raw) + 1, name="row")
    rows_read = len(raw)

    date, date_ok = _parse_dates(raw["service_date"])
    outside = pd.Series(False, index=raw.index)
    if last_days is not None:
        keep_dates = date[date_ok].drop_duplicates().nlargest(last_days)
        outside = date_ok & ~date.isin(keep_dates)
    raw, date, date_ok = raw[~outside], date[~outside], date_ok[~outside]

    df, reason, message = _validate(raw, date, date_ok)
    bad = reason.notna()
    if bad.any() and on_error == "raise":
        row = int(bad.idxmax())
        where = f"row {row} (line {row + 1})" if is_csv else f"row {row}"
        raise UserError(
            f"{label} {where}: {message[row]}; {int(bad.sum())} bad row(s) in all: fix them, "
            "or skip bad rows (on_error='skip', CLI --on-error skip)"
        )
    skipped = {str(k): int(v) for k, v in reason[bad].value_counts().items()}
    df = df[~bad]
    if df.empty:
        raise UserError(f"{label}: no valid bookings left after skipping {int(bad.sum())} bad rows")
    report = ImportReport(
        source=label,
        rows_read=rows_read,
        rows_outside_last_days=int(outside.sum()),
        skipped=skipped,
        rows_kept=len(df),
        dates=int(df["service_date"].nunique()),
    )
    if skipped:
        log.warning("%s", report.summary())
    return df, report


def _read_source(source: str, table: str) -> tuple[pd.DataFrame, str, bool]:
    """The raw table, a label for messages and whether it came from a CSV."""
    if "://" in source:
        url = _parse_url(source)
        label = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # Connecting would create an empty database file: say what is wrong instead.
            if not Path(url.database).is_file():
                raise UserError(f"{label}: no such database file {url.database}")
        try:
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    if table.lstrip().lower().startswith("select"):
                        frame = pd.read_sql_query(sa.text(table), conn)
                    elif not sa.inspect(conn).has_table(table):
                        raise UserError(f"{label}: no table {table!r}; name it with --table (table=...)")
                    else:
                        frame = pd.read_sql_table(table, conn)
            finally:
                engine.dispose()
        except (sa.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise UserError(f"{label}: cannot read {table!r} ({_first_line(exc)})") from None
        return frame, label, False

    path = Path(source)
    kind = _file_kind(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if kind == "csv":
            # Everything as text: the validation parses each column and reports what it cannot.
            return pd.read_csv(path, dtype=str), str(path), True
        return pd.read_parquet(path), str(path), False
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read as {kind} ({_first_line(exc)})") from None


def _parse_url(source: str) -> sa.engine.URL:
    try:
        return sa.engine.make_url(source)
    except sa.exc.ArgumentError:
        raise UserError(f"{source!r}: not a valid SQLAlchemy URL; give {_URL_HINT}") from None


def _file_kind(path: Path) -> str:
    kind = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; give {_URL_HINT}")
    return kind


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _parse_dates(col: pd.Series) -> tuple[pd.Series, pd.Series]:
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


def _validate(
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


# ---------------------------------------------------------------------------------------- replay
@dataclass(frozen=True)
class _Minutes:
    """Booking times in minutes since midnight of the service date, and the in-hours mask."""

    requested: np.ndarray
    known: np.ndarray
    advance: np.ndarray
    in_hours: np.ndarray


def _minutes(df: pd.DataFrame, scenario: ScenarioConfig) -> _Minutes:
    """Times of ``df`` relative to its service dates; logs the rows outside the service hours."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"bookings frame lacks column(s) {', '.join(missing)}; read it with read_bookings")
    minute = pd.Timedelta(minutes=1)
    requested = ((df["requested_pickup"] - df["service_date"]) / minute).to_numpy(float)
    created = ((df["created_at"] - df["service_date"]) / minute).to_numpy(float)
    advance = created < scenario.day_start_min
    known = np.where(advance, scenario.day_start_min, created)
    in_hours = (requested >= scenario.day_start_min) & (requested <= scenario.day_end_min)
    if not in_hours.all():
        log.warning(
            "%d of %d bookings have a requested pickup outside the service hours [%s, %s] "
            "(scenario day_start_min/day_end_min) and are left out",
            int((~in_hours).sum()),
            len(in_hours),
            _clock(scenario.day_start_min),
            _clock(scenario.day_end_min),
        )
    return _Minutes(requested, known, advance, in_hours)


def _clock(minutes: float) -> str:
    return f"{int(minutes // 60):02d}:{int(minutes % 60):02d}"


def days_from_bookings(df: pd.DataFrame, scenario: ScenarioConfig) -> list[Day]:
    """Replay each service date of a validated bookings table as a :class:`Day`.

    Fleet, service rules, depot, travel-model parameters (road factor, speed, congestion),
    day start/end and dispatch lead come from ``scenario``; places from the table. A booking
    made before ``day_start_min`` on its service date is an advance booking known at the day
    start; any other is known from its ``created_at`` minute. Decision times and the order
    are the generator's: ``max(known, requested - dispatch_lead_min)``, sorted by decision
    time, then requested pickup, then table order. Nodes: 0 the depot, then the distinct
    trip-end points of the day. Bookings whose requested pickup is outside
    [day_start_min, day_end_min] are left out with a logged warning, as the generator never
    makes them; so are dates left with no booking (a day needs one).

    :param df: bookings as returned by :func:`read_bookings`.
    :param scenario: a planar scenario (the table holds coordinates, not matrix nodes).
    :return: one day per service date, in date order; ``day_id`` is the date ``YYYY-MM-DD``.
    """
    geo = scenario.geography
    if geo.travel_matrix is not None:
        raise UserError(
            "the scenario uses a travel_matrix, but imported bookings carry planar coordinates; "
            "replay them with a planar scenario (no geography.travel_matrix)"
        )
    t = _minutes(df, scenario)
    fleet = SyntheticScenario(scenario).fleet
    depot = np.asarray(geo.depot, float)[None, :]
    kept = df[t.in_hours]
    dates = kept["service_date"].dt.strftime("%Y-%m-%d").to_numpy()
    empty = df["service_date"].nunique() - len(np.unique(dates))
    if empty:
        log.warning("%d service dates have no booking within the service hours and are left out", empty)
    requested, known, advance = t.requested[t.in_hours], t.known[t.in_hours], t.advance[t.in_hours]
    mobility = kept["mobility"].map({m: i for i, m in enumerate(MOBILITIES)}).to_numpy(np.int64)
    priority = kept["priority"].map({p: i for i, p in enumerate(PRIORITIES)}).to_numpy(np.int64)
    window = kept["window_min"].to_numpy(float)
    ends = np.stack([kept[list(COORDS[:2])].to_numpy(float), kept[list(COORDS[2:])].to_numpy(float)], axis=1)
    decision = np.maximum(known, requested - scenario.dispatch_lead_min)

    days = []
    for date in np.unique(dates):
        rows = np.flatnonzero(dates == date)
        order = rows[np.lexsort((requested[rows], decision[rows]))]
        points, node = np.unique(ends[order].reshape(-1, 2), axis=0, return_inverse=True)
        node = 1 + node.reshape(-1, 2)
        coords = np.vstack([depot, points])
        bookings = Bookings(
            known_at=known[order],
            decision_time=decision[order],
            requested_pickup=requested[order],
            window_min=window[order],
            pickup_node=node[:, 0],
            dropoff_node=node[:, 1],
            mobility=mobility[order],
            priority=priority[order],
            advance=advance[order],
        )
        try:
            travel = TravelModel.planar(coords, geo.road_factor, geo.speed_kmh, geo.congestion)
            day = Day(
                str(date),
                scenario.day_start_min,
                scenario.day_end_min,
                fleet,
                bookings,
                travel,
                scenario.rules,
                coords,
            )
        except ValueError as exc:
            raise UserError(f"service date {date}: cannot replay ({exc})") from None
        days.append(day)
    return days


# ---------------------------------------------------------------------------------------- fitting
def fit_scenario(
    df: pd.DataFrame,
    base: ScenarioConfig,
    *,
    n_towns: int | None = None,
    max_facilities: int = 8,
    seed: int = 0,
) -> ScenarioConfig:
    """Fit the synthetic generator's demand and geography to a bookings table.

    Fleet, rules, service hours, travel parameters and depot stay those of ``base``; only
    bookings inside the service hours count (as in :func:`days_from_bookings`).

    - ``advance_per_day`` / ``same_day_per_day``: mean bookings per service date, divided by
      the share the fitted generator keeps inside the service hours (it drops the others),
      so regenerated days hold as many bookings as the table's.
    - ``pickup_hour_profile``: hours of the advance bookings' requested pickups;
      ``request_hour_profile``: hours of the same-day bookings' ``created_at``.
    - ``same_day_lead_min``: the uniform range whose 5th and 95th percentiles are those of
      the same-day leads (requested pickup - created_at).
    - ``windows_min`` / ``window_probs``: windows rounded to whole minutes and their shares;
      ``mobility_mix``, ``priority_mix``: shares.
    - Each trip's facility end is the end whose place (10 m grid) is the more frequent trip
      end in the table (a tie: the dropoff); ``outbound_share`` is the share of trips ending
      at their facility end. Facilities are the distinct facility places weighted by trips,
      or, beyond ``max_facilities`` of them, that many k-means clusters.
    - Towns: ``n_towns`` k-means clusters of the home ends; weight = cluster size, ``sigma_km``
      = per-axis spread around the centre. ``home_uniform_share`` is 0: the towns already
      cover every home. ``region_km`` grows to hold every point.

    A profile or lead with no data (e.g. no same-day booking) keeps the base's value.

    :param df: bookings as returned by :func:`read_bookings`.
    :param base: the scenario to start from.
    :param n_towns: town clusters; default: as many as ``base`` has.
    :param max_facilities: most facilities kept as distinct places before clustering.
    :param seed: k-means seed (the fit is deterministic).
    :return: a validated scenario named ``<base name>-fitted``.
    """
    t = _minutes(df, base)
    kept = df[t.in_hours]
    if kept.empty:
        raise UserError("no booking has a requested pickup within the service hours: nothing to fit")
    n_dates = df["service_date"].nunique()
    requested, known, advance = t.requested[t.in_hours], t.known[t.in_hours], t.advance[t.in_hours]
    d = base.demand

    pickup_profile = _hour_profile(requested[advance]) or d.pickup_hour_profile
    request_profile = _hour_profile(known[~advance]) or d.request_hour_profile
    leads = requested[~advance] - known[~advance]
    if len(leads):
        p5, p95 = np.percentile(leads, [5.0, 95.0])
        pad = (p95 - p5) * 0.05 / 0.90  # uniform: [p5, p95] holds the middle 90 %
        lead = (round(max(0.0, p5 - pad), 1), round(p95 + pad, 1))
    else:
        lead = d.same_day_lead_min
    start, end = base.day_start_min, base.day_end_min
    keep_adv = _kept_share(pickup_profile, (0.0, 0.0), start, end)
    keep_sd = _kept_share(request_profile, lead, start, end)

    windows = kept["window_min"].round().clip(*WINDOW_RANGE).value_counts(normalize=True).sort_index()
    mobility = kept["mobility"].value_counts(normalize=True).reindex(MOBILITIES, fill_value=0.0)
    priority = kept["priority"].value_counts(normalize=True).reindex(PRIORITIES, fill_value=0.0)
    pick = kept[list(COORDS[:2])].to_numpy(float)
    drop = kept[list(COORDS[2:])].to_numpy(float)
    outbound, facilities, towns = _fit_places(
        pick, drop, n_towns or len(base.geography.towns), max_facilities, seed
    )

    demand = replace(
        d,
        advance_per_day=_r(advance.sum() / n_dates / keep_adv, 2),
        same_day_per_day=_r((~advance).sum() / n_dates / keep_sd, 2),
        pickup_hour_profile=pickup_profile,
        request_hour_profile=request_profile,
        same_day_lead_min=lead,
        windows_min=tuple(float(w) for w in windows.index),
        window_probs=tuple(_r(p) for p in windows),
        mobility_mix=tuple(_r(p) for p in mobility),
        priority_mix=tuple(_r(p) for p in priority),
        outbound_share=_r(outbound),
    )
    extent = float(np.max(np.concatenate([pick, drop]))) if len(pick) else 0.0
    geography = replace(
        base.geography,
        region_km=float(max(base.geography.region_km, math.ceil(extent))),
        towns=towns,
        home_uniform_share=0.0,
        facilities=facilities,
        travel_matrix=None,
        facility_nodes=(),
    )
    fitted = replace(base, name=f"{base.name}-fitted", demand=demand, geography=geography)
    # Through the YAML-facing validation: the result saves and loads back unchanged.
    return from_dict(ScenarioConfig, to_dict(fitted), source="fitted scenario")


def _r(x: float, digits: int = 4) -> float:
    """Plain rounded float: readable YAML, and no numpy scalars in the config."""
    return round(float(x), digits)


def _hour_profile(minutes: np.ndarray) -> tuple[float, ...] | None:
    """Share of the times in each hour 0..23, or None without data."""
    if not len(minutes):
        return None
    counts = np.bincount((minutes // 60).astype(np.int64).clip(0, 23), minlength=24)
    return tuple(_r(c) for c in counts / counts.sum())


def _kept_share(profile: tuple[float, ...], lead: tuple[float, float], start: float, end: float) -> float:
    """Share of the generator's bookings with pickup in [start, end]: arrival by ``profile``
    (uniform within the hour), pickup a uniform ``lead`` later (integrated on a fine grid)."""
    weight = np.repeat(np.asarray(profile, float), 60)
    weight /= weight.sum()
    arrival = np.arange(1440) + 0.5
    offsets = np.linspace(lead[0], lead[1], 101)
    pickup = arrival[:, None] + offsets[None, :]
    share = float(weight @ ((pickup >= start) & (pickup <= end)).mean(axis=1))
    return max(share, 1e-9)


def _fit_places(
    pick: np.ndarray, drop: np.ndarray, n_towns: int, max_facilities: int, seed: int
) -> tuple[float, tuple[Place, ...], tuple[Place, ...]]:
    """Outbound share, facilities and towns from the trips' pickup and dropoff points."""
    ends = np.concatenate([pick, drop])
    # Places on a 10 m grid: the same address geocoded twice is one place.
    _, place, freq = np.unique(np.round(ends, 2), axis=0, return_inverse=True, return_counts=True)
    place = place.reshape(-1)
    n = len(pick)
    outbound = freq[place[n:]] >= freq[place[:n]]
    facility_xy = np.where(outbound[:, None], drop, pick)
    home_xy = np.where(outbound[:, None], pick, drop)

    points, counts = np.unique(np.round(facility_xy, 2), axis=0, return_counts=True)
    if len(points) > max_facilities:
        points, counts = _clusters(facility_xy, max_facilities, seed)[:2]
    facilities = tuple(Place(_r(x, 3), _r(y, 3), _r(c / n)) for (x, y), c in zip(points, counts, strict=True))
    centres, sizes, sigma = _clusters(home_xy, n_towns, seed)
    towns = tuple(
        Place(_r(x, 3), _r(y, 3), _r(c / n), _r(s, 3))
        for (x, y), c, s in zip(centres, sizes, sigma, strict=True)
    )
    return float(outbound.mean()), facilities, towns


def _clusters(xy: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means (k-means++ start, fixed seed): centres, sizes and per-axis spread of the non-empty clusters."""
    k = min(k, len(np.unique(xy, axis=0)))
    with warnings.catch_warnings():
        # Empty clusters are dropped below; kmeans2's advice to re-run does not apply.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        _, label = kmeans2(xy, k, minit="++", rng=np.random.default_rng(seed))
    sizes = np.bincount(label, minlength=k)
    used = np.flatnonzero(sizes)
    centres = np.array([xy[label == c].mean(axis=0) for c in used])
    spread = np.array(
        [np.sqrt(((xy[label == c] - centres[i]) ** 2).sum(axis=1).mean() / 2) for i, c in enumerate(used)]
    )
    return centres, sizes[used], spread


def save_scenario(cfg: ScenarioConfig, path: str | Path) -> None:
    """Write ``cfg`` as an experiment YAML (``scenario:`` section), atomically.

    Every command takes it as ``--config``; ``load_experiment(path).scenario == cfg``.
    """
    text = yaml.safe_dump({"scenario": to_dict(cfg)}, sort_keys=False)
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------------------------------- writing
def write_sample(path: str, days: int = 90, seed: int = 7, scenario: ScenarioConfig | None = None) -> int:
    """Write a sample bookings table from the synthetic generator, in the schema above.

    The sample's service dates are the ``days`` dates ending on 2026-06-30; the bookings of
    date D are ``SyntheticScenario(replace(scenario, seed=seed)).make_day(D.toordinal())``
    (so a date holds the same bookings whatever ``days``), coordinates from ``day.coords_km``.
    Same-day bookings are created at their ``known_at`` minute, advance bookings at a
    seeded random time between 12:00 and 18:00 the day before.

    :param path: ``.csv`` or ``.parquet`` path, or SQLAlchemy URL (table ``bookings``,
        replaced if present). Written atomically: on any error nothing is left behind.
    :param days: number of service dates.
    :param seed: seed of the scenario and of the advance bookings' creation times.
    :param scenario: a planar scenario; default the built-in default scenario.
    :return: rows written.
    """
    if days < 1:
        raise UserError(f"days={days}: expected a positive number of days")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed: expected a non-negative integer, got {seed!r}")
    cfg = replace(scenario or ScenarioConfig(), seed=seed)
    if cfg.geography.travel_matrix is not None:
        raise UserError("a sample needs planar coordinates: use a scenario without geography.travel_matrix")
    _check_destination(path)
    table = sample_table(cfg, days)
    _write_table(table, path)
    return len(table)


def sample_table(cfg: ScenarioConfig, days: int) -> pd.DataFrame:
    """The sample of :func:`write_sample` as a frame in the file schema (``cfg.seed`` seeds it)."""
    gen = SyntheticScenario(cfg)
    frames = []
    for date in pd.date_range(end=SAMPLE_END, periods=days, freq="D"):
        day = gen.make_day(date.toordinal())
        b = day.bookings
        n = len(b)
        # Its own stream (tag 1): the generator's (seed, day_id) stream must not be reused.
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, date.toordinal(), 1]))
        created = np.where(b.advance, np.round(rng.uniform(-720.0, -360.0, n) * 60.0) / 60.0, b.known_at)
        pickup_xy, dropoff_xy = day.coords_km[b.pickup_node], day.coords_km[b.dropoff_node]
        frames.append(
            pd.DataFrame(
                {
                    "booking_id": [f"{date:%Y%m%d}-{k:04d}" for k in range(1, n + 1)],
                    "service_date": f"{date:%Y-%m-%d}",
                    "created_at": _at(date, created),
                    "requested_pickup": _at(date, b.requested_pickup),
                    "pickup_x_km": pickup_xy[:, 0],
                    "pickup_y_km": pickup_xy[:, 1],
                    "dropoff_x_km": dropoff_xy[:, 0],
                    "dropoff_y_km": dropoff_xy[:, 1],
                    "mobility": np.asarray(MOBILITIES)[b.mobility],
                    "priority": np.asarray(PRIORITIES)[b.priority],
                    "window_min": b.window_min,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _at(date: pd.Timestamp, minutes: np.ndarray) -> pd.Series:
    """Datetimes ``minutes`` after midnight of ``date``, to the microsecond."""
    return pd.Series(date + pd.to_timedelta(np.round(minutes * 60e6).astype(np.int64), unit="us"))


def write_bookings(df: pd.DataFrame, dest: str) -> None:
    """Write a validated bookings frame back in the file schema (CSV, Parquet or SQL URL), atomically."""
    _check_destination(dest)
    table = df.loc[:, list(COLUMNS)].reset_index(drop=True)
    table["service_date"] = table["service_date"].dt.strftime("%Y-%m-%d")
    _write_table(table, dest)


def _check_destination(dest: str) -> None:
    """Fail before any work on a destination that cannot be written."""
    if "://" in dest:
        _parse_url(dest)
        return
    _file_kind(Path(dest))
    if not Path(dest).parent.is_dir():
        raise UserError(f"{dest}: folder {Path(dest).parent} does not exist; create it first")


def _write_table(table: pd.DataFrame, dest: str) -> None:
    """CSV / Parquet via a temporary file; SQL in one transaction (a new SQLite file via a temporary one)."""
    if "://" not in dest:
        path = Path(dest)
        if _file_kind(path) == "csv":
            _atomic_write(
                path, lambda tmp: table.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
            )
        else:
            _atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
        return
    url = _parse_url(dest)
    label = url.render_as_string(hide_password=True)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if database not in (None, "", ":memory:") and not Path(database).exists():
        _atomic_write(Path(database), lambda tmp: _to_sql(table, url.set(database=str(tmp)), label))
    else:
        _to_sql(table, url, label)


def _to_sql(table: pd.DataFrame, url: sa.engine.URL, label: str) -> None:
    try:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                table.to_sql("bookings", conn, if_exists="replace", index=False)
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise UserError(f"{label}: cannot write table 'bookings' ({_first_line(exc)})") from None


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write ({exc.strerror}); check the folder exists and is writable"
        ) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:  # durable before it becomes visible, like rl_lib.io's writers
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------- CLI
def add_data_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data sample`` and ``data import`` on the CLI's sub-command parsers."""
    from rl_lib.argtypes import positive_int

    data = subparsers.add_parser("data", help="historical bookings: write a sample, import a table")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("sample", help="write a sample bookings table from the default scenario")
    p.add_argument("--out", required=True, help="output: .csv, .parquet or SQLAlchemy URL (sqlite:///x.db)")
    p.add_argument(
        "--days", type=positive_int, default=90, help="service dates, ending 2026-06-30 (default 90)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the sample (default 7)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("import", help="validate a bookings table; replay it as days or fit a scenario to it")
    p.add_argument("source", help="bookings: .csv, .parquet or SQLAlchemy URL (sqlite:///bookings.db)")
    p.add_argument("--table", default="bookings", help="SQL table name or SELECT query (default bookings)")
    p.add_argument("--days", type=positive_int, help="keep the last N service dates (default: all)")
    p.add_argument(
        "--on-error", choices=ON_ERROR, default="raise", help="bad rows: stop (default) or skip and count"
    )
    p.add_argument(
        "--mode", choices=("replay", "fit"), default="replay", help="replay days (default) or fit a scenario"
    )
    p.add_argument(
        "--config", help="experiment YAML whose scenario gives fleet, hours, travel (default: built-in)"
    )
    p.add_argument(
        "--out", help="replay: write the validated table (.csv/.parquet); fit: the scenario YAML (required)"
    )
    p.set_defaults(func=_cmd_import)


def _cmd_sample(args: argparse.Namespace) -> int:
    rows = write_sample(args.out, days=args.days, seed=args.seed)
    print(f"wrote {rows} bookings over {args.days} service dates (ending {SAMPLE_END}) to {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from rl_lib.experiment import load_experiment

    if args.mode == "fit":
        if not args.out or Path(args.out).suffix.lower() not in (".yaml", ".yml"):
            raise UserError("--mode fit writes the fitted scenario: give --out PATH.yaml")
        if not Path(args.out).parent.is_dir():
            raise UserError(f"{args.out}: folder {Path(args.out).parent} does not exist; create it first")
    elif args.out:
        _check_destination(args.out)
    scenario = load_experiment(args.config).scenario
    df, report = read_bookings(args.source, table=args.table, last_days=args.days, on_error=args.on_error)
    print(report.summary())
    if args.mode == "fit":
        fitted = fit_scenario(df, scenario)
        save_scenario(fitted, args.out)
        dm = fitted.demand
        print(
            f"fitted: {dm.advance_per_day:g} advance + {dm.same_day_per_day:g} same-day bookings a day, "
            f"{len(fitted.geography.facilities)} facilities, {len(fitted.geography.towns)} towns; "
            f"wrote {args.out}"
        )
        return 0
    days = days_from_bookings(df, scenario)
    print(f"{'date':<12}{'bookings':>9}{'advance':>9}")
    for day in days:
        print(f"{day.day_id:<12}{day.n_bookings:>9}{day.bookings.advance.mean():>9.1%}")
    total = sum(d.n_bookings for d in days)
    advance = sum(int(d.bookings.advance.sum()) for d in days)
    print(f"{len(days)} days, {total} bookings, {advance / max(total, 1):.1%} advance")
    if args.out:
        write_bookings(df, args.out)
        print(f"wrote the validated table ({len(df)} rows) to {args.out}")
    return 0
