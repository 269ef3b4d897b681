"""The data of one dispatch day: fleet, bookings, service rules and travel model.

Everything here is plain data (numpy arrays, struct-of-arrays) and knows nothing of
gymnasium. Times are minutes since midnight of the service day; locations are node
indices into the day's :class:`~rl_lib.envs.travel.TravelModel`, node 0 being the depot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from rl_lib.config import bounded
from rl_lib.envs.travel import TravelModel

#: Latest time (minutes since midnight of the service day) a day may mention.
MAX_TIME_MIN = 2880.0
#: Look-ahead of :attr:`Day.upcoming_at_decision` (minutes after the decision time).
UPCOMING_HORIZON_MIN = 120.0


class Mobility(IntEnum):
    """What the patient needs on board."""

    AMBULATORY = 0
    WHEELCHAIR = 1
    STRETCHER = 2


MOBILITY_CODES = np.arange(len(Mobility))  # broadcast against a mobility column: one-hot by mobility


class VehicleType(IntEnum):
    CAR = 0
    WHEELCHAIR_VAN = 1
    STRETCHER_UNIT = 2


class Priority(IntEnum):
    """Clinical priority; weights the service reward (dialysis cannot be missed lightly)."""

    NORMAL = 0
    APPOINTMENT = 1
    DIALYSIS = 2


#: COMPATIBLE[vehicle_type, mobility]: a car carries ambulatory patients only, a wheelchair
#: van also wheelchairs, a stretcher unit everything.
COMPATIBLE = np.array(
    [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
)


@dataclass(frozen=True)
class ServiceRules:
    """How trips are served.

    :param boarding_min: boarding time at pickup, per mobility (ambulatory, wheelchair, stretcher).
    :param alighting_min: alighting time at dropoff, per mobility.
    :param max_lateness_min: a vehicle is feasible only if it picks up no later than this many
        minutes after the pickup window closes.
    """

    boarding_min: tuple[float, float, float] = bounded((2.0, 5.0, 10.0), min=0.0, max=120.0)
    alighting_min: tuple[float, float, float] = bounded((2.0, 5.0, 10.0), min=0.0, max=120.0)
    max_lateness_min: float = bounded(15.0, min=0.0, max=240.0)


@dataclass(frozen=True)
class Fleet:
    """K vehicles, all starting their shift at the depot (node 0)."""

    vehicle_type: np.ndarray  # (K,) VehicleType values
    shift_start: np.ndarray  # (K,) minutes
    shift_end: np.ndarray  # (K,) minutes

    def __post_init__(self) -> None:
        k = len(self.vehicle_type)
        if k == 0 or len(self.shift_start) != k or len(self.shift_end) != k:
            raise ValueError("fleet arrays must be non-empty and of equal length")
        if np.any(self.shift_end <= self.shift_start):
            raise ValueError("every shift must end after it starts")

    @property
    def size(self) -> int:
        return len(self.vehicle_type)


@dataclass(frozen=True)
class Bookings:
    """Bookings of one day, sorted by decision time.

    ``known_at`` is when the booking enters the system (the day start for advance bookings);
    ``decision_time`` is when the dispatcher must commit it: ``max(known_at, requested pickup
    - dispatch lead)``. Decisions are made one booking at a time in this order.
    """

    known_at: np.ndarray
    decision_time: np.ndarray
    requested_pickup: np.ndarray
    window_min: np.ndarray  # pickup window is [requested_pickup, requested_pickup + window_min]
    pickup_node: np.ndarray
    dropoff_node: np.ndarray
    mobility: np.ndarray
    priority: np.ndarray
    advance: np.ndarray  # bool: known at the start of the day

    def __len__(self) -> int:
        return len(self.decision_time)


@dataclass(frozen=True)
class Day:
    """One service day: what the simulation core replays.

    :param day_id: identifier (the generator's day index, or a date for imported days).
    :param start_min: start of the service day (advance bookings are known from here).
    :param coords_km: (N, 2) node coordinates when known (planar model, plots), else None.
    """

    day_id: int | str
    start_min: float
    end_min: float
    fleet: Fleet
    bookings: Bookings
    travel: TravelModel
    rules: ServiceRules = field(default_factory=ServiceRules)
    coords_km: np.ndarray | None = None
    # Derived once per day, read at every decision (see __post_init__).
    pending_at_decision: np.ndarray = field(init=False, repr=False)
    recent_requests_at_decision: np.ndarray = field(init=False, repr=False)
    upcoming_at_decision: np.ndarray = field(init=False, repr=False)  # (n, 3): by mobility

    def __post_init__(self) -> None:
        b = self.bookings
        n = len(b)
        for name in Bookings.__dataclass_fields__:
            if len(getattr(b, name)) != n:
                raise ValueError(f"booking field {name!r} has {len(getattr(b, name))} rows, expected {n}")
        if n and (b.decision_time[1:] < b.decision_time[:-1]).any():
            raise ValueError("bookings must be sorted by decision_time")
        nodes = np.concatenate([b.pickup_node, b.dropoff_node]) if n else np.zeros(0, int)
        if n and (nodes.min() < 0 or nodes.max() >= self.travel.n_nodes):
            raise ValueError(f"booking nodes must lie in [0, {self.travel.n_nodes})")
        if n and np.any(b.decision_time > b.requested_pickup + 1e-9):
            raise ValueError("a booking's decision time must not be after its requested pickup")
        if n and max(b.requested_pickup.max(), self.fleet.shift_end.max()) > MAX_TIME_MIN:
            raise ValueError(f"times must not pass {MAX_TIME_MIN:.0f} min (two days after midnight)")
        if self.travel.free_flow_min.max() * self.travel.congestion.max() > MAX_TIME_MIN:
            raise ValueError(f"congested travel times must stay under {MAX_TIME_MIN:.0f} min")
        now = b.decision_time
        later = np.arange(n)[None, :] > np.arange(n)[:, None]
        known = b.known_at[None, :] <= now[:, None]
        recent = known & (b.known_at[None, :] > now[:, None] - 60.0) & ~b.advance[None, :]
        object.__setattr__(self, "pending_at_decision", (later & known).sum(axis=1))
        object.__setattr__(self, "recent_requests_at_decision", recent.sum(axis=1))
        # Known, undecided bookings wanting a pickup within the next UPCOMING_HORIZON_MIN, per
        # mobility: the demand the fleet must keep room for (what anticipation needs).
        soon = later & known & (b.requested_pickup[None, :] <= now[:, None] + UPCOMING_HORIZON_MIN)
        by_mobility = soon[:, :, None] & (b.mobility[None, :, None] == MOBILITY_CODES)
        object.__setattr__(self, "upcoming_at_decision", by_mobility.sum(axis=1))

    @property
    def n_vehicles(self) -> int:
        return self.fleet.size

    @property
    def n_bookings(self) -> int:
        return len(self.bookings)
