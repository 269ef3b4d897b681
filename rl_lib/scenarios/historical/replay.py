"""Replay a validated bookings table as dispatch days (:class:`~rl_lib.envs.day.Day`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rl_lib.envs.day import Bookings, Day
from rl_lib.envs.travel import TravelModel
from rl_lib.errors import UserError
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.historical.schema import COLUMNS, COORDS, MOBILITIES, PRIORITIES
from rl_lib.scenarios.synthetic import SyntheticScenario

log = logging.getLogger("rl_lib.scenarios.historical")


@dataclass(frozen=True)
class BookingMinutes:
    """Booking times in minutes since midnight of the service date, and the in-hours mask."""

    requested: np.ndarray
    known: np.ndarray
    advance: np.ndarray
    in_hours: np.ndarray


def booking_minutes(df: pd.DataFrame, scenario: ScenarioConfig) -> BookingMinutes:
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
    return BookingMinutes(requested, known, advance, in_hours)


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
    t = booking_minutes(df, scenario)
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
