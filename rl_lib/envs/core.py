"""Simulation core: fleet state, the assign / refuse primitives, rewards and KPI accounting.

The core knows nothing of gymnasium. The gym env, the sequential baselines, the batch
matcher and the hindsight bound all drive this one class, so they share one set of
feasibility rules, one reward and one set of KPIs.

Vehicle model. A vehicle serves one trip at a time and holds a FIFO queue of committed
trips. Because travel times are deterministic, a committed queue is already a schedule:
what matters for the next decision is where the vehicle ends (``vehicle_node``) and when
(``free_at``). A trip appended at time ``now`` is served as follows:

- earliest departure ``t0 = max(free_at, now)`` (``free_at`` starts at the shift start);
- ``travel`` is the approach time priced at the congestion of ``t0``'s hour;
- the vehicle leaves just in time, ``depart = max(t0, requested_pickup - travel)``, so an
  early vehicle waits where it is, not at the patient's door;
- ``pickup = depart + travel`` (never before the requested pickup time);
- ``lateness = max(0, pickup - (requested_pickup + window))``;
- ``dropoff_end = pickup + boarding + ride + alighting``, the ride priced at the pickup hour;
  the vehicle is then free there.

Pricing the approach at ``t0`` rather than at the (later) just-in-time departure is a
deliberate one-pass approximation: the departure depends on the travel time, so the exact
rule would need a fixed point per vehicle and decision. The hindsight bound covers both
readings.

A vehicle is *feasible* for a booking when its type carries the patient's mobility, the
lateness is at most ``rules.max_lateness_min`` and the trip ends before its shift does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from rl_lib.config import bounded
from rl_lib.envs.day import COMPATIBLE, Day


class Status(IntEnum):
    """Fate of a booking."""

    UNDECIDED = 0
    SERVED = 1
    REFUSED = 2  # refused although some vehicle could have served it
    MISSED = 3  # no vehicle could serve it when it was decided


@dataclass(frozen=True)
class RewardWeights:
    """Reward of one decision.

    Serving booking b with vehicle k earns
    ``service_reward * priority_weight[b] - deadhead_per_km * deadhead_km - lateness_per_min * lateness``;
    refusing or missing a booking costs ``refusal_penalty``; choosing a masked vehicle counts
    as a refusal and costs ``invalid_action_penalty`` on top.
    """

    service_reward: float = bounded(10.0, min=0.0)
    priority_weights: tuple[float, float, float] = bounded((1.0, 1.5, 2.0), min=0.0)
    deadhead_per_km: float = bounded(0.1, min=0.0)
    lateness_per_min: float = bounded(0.2, min=0.0)
    refusal_penalty: float = bounded(5.0, min=0.0)
    invalid_action_penalty: float = bounded(5.0, min=0.0)


@dataclass(slots=True)
class Insertion:
    """What appending one booking to each vehicle's queue would give, per vehicle (K,).

    Read-only by convention; a plain slotted class because one is built at every decision.
    """

    booking: int
    now: float
    compatible: np.ndarray
    feasible: np.ndarray
    approach_min: np.ndarray  # travel time to the pickup; the vehicle leaves at pickup - approach
    pickup: np.ndarray
    lateness: np.ndarray
    deadhead_km: np.ndarray
    dropoff_end: np.ndarray
    loaded_km: float
    n_feasible: int


@dataclass(slots=True)
class Outcome:
    """The result of one decision, with the KPI deltas it caused."""

    booking: int
    vehicle: int  # -1 when refused or missed
    status: int  # a Status value
    reward: float
    deadhead_km: float = 0.0
    loaded_km: float = 0.0
    lateness_min: float = 0.0
    invalid_action: bool = False


# Plain ints on the hot path: numpy comparisons against Enum members are slow.
UNDECIDED, SERVED, REFUSED, MISSED = (int(s) for s in Status)


@functools.lru_cache(maxsize=16)
def congestion_by_minute(hourly: bytes) -> np.ndarray:
    """The hourly congestion profile (float64 bytes) by whole minute, over a week, read-only.

    Indexing it by int(t) equals indexing the hourly profile by t // 60, in one operation fewer;
    Day validation keeps every time the core looks up (departures, pickups) within 6 days. Cached
    because the service builds a core per request, all with the scenario's one profile.
    """
    minute = np.repeat(np.tile(np.frombuffer(hourly, dtype=float), 7), 60)
    minute.flags.writeable = False
    return minute


class DispatchCore:
    """Replays one :class:`~rl_lib.envs.day.Day`, one decision at a time.

    :param weights: reward weights shared by every policy.
    """

    def __init__(self, weights: RewardWeights | None = None) -> None:
        self.weights = weights or RewardWeights()
        self._priority_weights = np.asarray(self.weights.priority_weights, dtype=float)
        self.day: Day | None = None

    # ------------------------------------------------------------------ state
    def reset(self, day: Day) -> None:
        """Put every vehicle at the depot at its shift start, every booking undecided."""
        self.day = day
        k, n = day.n_vehicles, day.n_bookings
        b = day.bookings
        self.vehicle_node = np.zeros(k, dtype=np.int64)
        self.free_at = day.fleet.shift_start.astype(float).copy()
        self.busy_min = np.zeros(k)
        self.queues: list[list[int]] = [[] for _ in range(k)]
        self.status = np.full(n, UNDECIDED, dtype=np.int8)
        self.vehicle_of = np.full(n, -1, dtype=np.int64)
        self.pickup_time = np.full(n, np.nan)
        self.dropoff_time = np.full(n, np.nan)
        self.lateness = np.zeros(n)
        self.deadhead_km = np.zeros(n)
        self.loaded_km = np.zeros(n)
        self.total_reward = 0.0
        # Per-booking constants used at every evaluation.
        boarding = np.asarray(day.rules.boarding_min)[b.mobility]
        alighting = np.asarray(day.rules.alighting_min)[b.mobility]
        self._service_min = (boarding + alighting).tolist()
        self._compatible = COMPATIBLE[day.fleet.vehicle_type][:, b.mobility].T  # (n, K)
        self._ride_free_min = day.travel.free_flow_min[b.pickup_node, b.dropoff_node].tolist()
        self._ride_km = day.travel.distance_km[b.pickup_node, b.dropoff_node].tolist()
        self._window_end = (b.requested_pickup + b.window_min).tolist()
        self._requested = b.requested_pickup.tolist()
        self._pickup_node = b.pickup_node.tolist()
        # Transposed copies: row j holds the times / distances *to* node j, contiguous.
        self._free_flow_to = np.ascontiguousarray(day.travel.free_flow_min.T)
        self._distance_to = np.ascontiguousarray(day.travel.distance_km.T)
        hourly = np.asarray(day.travel.congestion, dtype=float)  # the cache key is its float64 bytes
        self._congestion_by_minute = congestion_by_minute(hourly.tobytes())
        self._shift_end = day.fleet.shift_end
        self._max_lateness = day.rules.max_lateness_min

    def snapshot(self) -> dict:
        """Copy of the mutable state, for :meth:`restore` (baselines that look ahead)."""
        keys = ("vehicle_node", "free_at", "busy_min", "status", "vehicle_of", "pickup_time",
                "dropoff_time", "lateness", "deadhead_km", "loaded_km")  # fmt: skip
        state = {key: getattr(self, key).copy() for key in keys}
        state["queues"] = [list(q) for q in self.queues]
        state["total_reward"] = self.total_reward
        return state

    def restore(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value.copy() if isinstance(value, np.ndarray) else value)
        self.queues = [list(q) for q in state["queues"]]

    # ------------------------------------------------------------- primitives
    def evaluate(self, booking: int, now: float) -> Insertion:
        """Evaluate appending ``booking`` to every vehicle's queue at time ``now``."""
        # free_at starts at the shift start and only grows, so it already bounds departure.
        t0 = np.maximum(self.free_at, now)
        pickup_node = self._pickup_node[booking]
        approach = self._free_flow_to[pickup_node].take(self.vehicle_node)
        approach *= self._congestion_by_minute.take(t0.astype(np.intp))
        t0 += approach
        pickup = np.maximum(t0, self._requested[booking], out=t0)  # leave just in time
        lateness = pickup - self._window_end[booking]
        np.maximum(lateness, 0.0, out=lateness)
        dropoff_end = self._congestion_by_minute.take(pickup.astype(np.intp))
        dropoff_end *= self._ride_free_min[booking]
        dropoff_end += pickup
        dropoff_end += self._service_min[booking]
        compatible = self._compatible[booking]
        feasible = (lateness <= self._max_lateness) & (dropoff_end <= self._shift_end)
        feasible &= compatible
        return Insertion(
            booking,
            now,
            compatible,
            feasible,
            approach,
            pickup,
            lateness,
            self._distance_to[pickup_node].take(self.vehicle_node),
            dropoff_end,
            self._ride_km[booking],
            int(np.count_nonzero(feasible)),
        )

    def serve_reward(self, booking: int, deadhead_km, lateness_min):
        w = self.weights
        value = w.service_reward * self._priority_weights[self.day.bookings.priority[booking]]
        return value - w.deadhead_per_km * deadhead_km - w.lateness_per_min * lateness_min

    def assign(self, insertion: Insertion, vehicle: int) -> Outcome:
        """Append the evaluated booking to ``vehicle``'s queue.

        A vehicle that is not feasible is never assigned: the booking is refused instead,
        with the invalid-action penalty, and the state stays consistent.
        """
        booking = insertion.booking
        self._check_undecided(booking)
        if not (0 <= vehicle < len(insertion.feasible)) or not insertion.feasible[vehicle]:
            return self._refuse(insertion, invalid=True)
        deadhead = float(insertion.deadhead_km[vehicle])
        lateness = float(insertion.lateness[vehicle])
        depart = insertion.pickup[vehicle] - insertion.approach_min[vehicle]
        self.busy_min[vehicle] += insertion.dropoff_end[vehicle] - depart
        self.free_at[vehicle] = insertion.dropoff_end[vehicle]
        self.vehicle_node[vehicle] = self.day.bookings.dropoff_node[booking]
        self.queues[vehicle].append(booking)
        self.status[booking] = SERVED
        self.vehicle_of[booking] = vehicle
        self.pickup_time[booking] = insertion.pickup[vehicle]
        self.dropoff_time[booking] = insertion.dropoff_end[vehicle]
        self.lateness[booking] = lateness
        self.deadhead_km[booking] = deadhead
        self.loaded_km[booking] = insertion.loaded_km
        reward = float(self.serve_reward(booking, deadhead, lateness))
        self.total_reward += reward
        return Outcome(booking, vehicle, SERVED, reward, deadhead, insertion.loaded_km, lateness)

    def refuse(self, insertion: Insertion) -> Outcome:
        """Refuse the booking (recorded as missed when no vehicle was feasible)."""
        self._check_undecided(insertion.booking)
        return self._refuse(insertion, invalid=False)

    def _refuse(self, insertion: Insertion, invalid: bool) -> Outcome:
        status = REFUSED if insertion.n_feasible else MISSED
        reward = -self.weights.refusal_penalty - (self.weights.invalid_action_penalty if invalid else 0.0)
        self.status[insertion.booking] = status
        self.total_reward += reward
        return Outcome(insertion.booking, -1, status, reward, invalid_action=invalid)

    def _check_undecided(self, booking: int) -> None:
        if self.status[booking] != UNDECIDED:
            raise ValueError(f"booking {booking} was already decided ({Status(self.status[booking]).name})")

    # -------------------------------------------------------------------- KPIs
    def kpis(self) -> dict[str, float]:
        """Day KPIs over every booking (undecided ones count as not served)."""
        return compute_kpis(self)


def compute_kpis(core: DispatchCore) -> dict[str, float]:
    """KPIs of the core's current state; see :data:`KPI_DESCRIPTIONS`."""
    day = core.day
    n = day.n_bookings
    served = core.status == Status.SERVED
    n_served = int(served.sum())
    late = core.lateness[served]
    shift_min = float((day.fleet.shift_end - day.fleet.shift_start).sum())

    def mean_or_nan(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    return {
        "reward": float(core.total_reward),
        "n_bookings": float(n),
        "served": float(n_served),
        "completion_rate": n_served / n if n else float("nan"),
        "refusal_rate": float((core.status == Status.REFUSED).sum()) / n if n else float("nan"),
        "missed_rate": float((core.status == Status.MISSED).sum()) / n if n else float("nan"),
        "on_time_rate": mean_or_nan(late <= 1e-9),
        "mean_lateness_min": mean_or_nan(late),
        "p95_lateness_min": float(np.percentile(late, 95)) if late.size else float("nan"),
        "mean_deadhead_km": mean_or_nan(core.deadhead_km[served]),
        "total_km": float(core.deadhead_km.sum() + core.loaded_km.sum()),
        "utilisation": float(core.busy_min.sum()) / shift_min,
    }


KPI_DESCRIPTIONS = {
    "reward": "sum of the day's decision rewards",
    "n_bookings": "bookings in the day",
    "served": "bookings served",
    "completion_rate": "served / bookings",
    "refusal_rate": "refused although a vehicle was feasible / bookings",
    "missed_rate": "refused because no vehicle was feasible / bookings",
    "on_time_rate": "served bookings picked up within their window",
    "mean_lateness_min": "mean minutes after the window closed, over served bookings",
    "p95_lateness_min": "95th percentile of that lateness",
    "mean_deadhead_km": "mean empty km driven to reach the pickup, per served booking",
    "total_km": "empty + loaded km (the final return to the depot is not counted)",
    "utilisation": "vehicle busy minutes (driving and boarding) / shift minutes",
}
