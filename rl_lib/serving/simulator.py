"""A production simulator: plays dispatch days against a running service, as a backend would.

For each day, bookings come up at their decision time; the simulator sends the booking with the
fleet as its own simulation core sees it (each vehicle's position and free time at the end of its
committed queue, its type and shift, its queue) and the demand counts it knows (pending, recent,
upcoming bookings), applies the service's answer to its core, and posts each served trip's outcome
(pickup time, lateness, deadhead km) when the trip ends on the simulated clock. Refusals need no
outcome: the decision record says it all. ``speed`` maps simulated minutes to wall time (600:
a 14-hour service day in 84 s); ``None`` plays as fast as the service answers.

Because the requests carry exactly the state the env would build, a day played through the service
with its model arm gives the KPIs of :meth:`rl_lib.inference.Dispatcher.play` on that day
(tests/test_serving.py).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rl_lib.envs.core import DispatchCore, RewardWeights
from rl_lib.envs.day import Day
from rl_lib.serving.schemas import MOBILITIES, PRIORITIES, VEHICLE_TYPES

Post = Callable[[str, dict], dict]  # (path, JSON body) -> JSON answer


def booking_id(day: Day, booking: int) -> str:
    return f"d{day.day_id}-b{booking}"


def decision_request(
    day: Day, core: DispatchCore, booking: int, service_day: str, region: str = "all"
) -> dict:
    """The JSON body of ``POST /v1/decisions`` for ``booking`` against the core's fleet."""
    if day.coords_km is None:
        raise ValueError(f"day {day.day_id} has no coordinates (a matrix travel model): the service prices "
                         "travel with the scenario's planar model")  # fmt: skip
    b, fleet = day.bookings, day.fleet
    xy = day.coords_km
    now = float(b.decision_time[booking])
    upcoming = day.upcoming_at_decision[booking]
    return {
        "decision_id": f"{service_day}-{booking_id(day, booking)}",
        "service_day": service_day,
        "region": region,
        "now_min": now,
        "day_start_min": float(day.start_min),
        "day_end_min": float(day.end_min),
        "booking": {
            "booking_id": booking_id(day, booking),
            "requested_pickup_min": float(b.requested_pickup[booking]),
            "window_min": float(b.window_min[booking]),
            "pickup": _point(xy[b.pickup_node[booking]]),
            "dropoff": _point(xy[b.dropoff_node[booking]]),
            "mobility": MOBILITIES[int(b.mobility[booking])],
            "priority": PRIORITIES[int(b.priority[booking])],
            "advance": bool(b.advance[booking]),
        },
        "fleet": [
            {
                "vehicle_id": f"v{k}",
                "type": VEHICLE_TYPES[int(fleet.vehicle_type[k])],
                "position": _point(xy[core.vehicle_node[k]]),
                "free_at_min": float(core.free_at[k]),
                "shift_start_min": float(fleet.shift_start[k]),
                "shift_end_min": float(fleet.shift_end[k]),
                "queue": [booking_id(day, q) for q in core.queues[k][-20:]],
            }
            for k in range(day.n_vehicles)
        ],
        "demand": {
            "pending_bookings": int(day.pending_at_decision[booking]),
            "recent_requests": int(day.recent_requests_at_decision[booking]),
            "upcoming_ambulatory": int(upcoming[0]),
            "upcoming_wheelchair": int(upcoming[1]),
            "upcoming_stretcher": int(upcoming[2]),
        },
    }


def _point(xy: np.ndarray) -> dict:
    return {"x_km": float(xy[0]), "y_km": float(xy[1])}


@dataclass
class DayResult:
    day_id: int | str
    service_day: str
    kpis: dict[str, float]
    arms: dict[str, int] = field(default_factory=dict)  # decisions per arm
    policies: dict[str, int] = field(default_factory=dict)
    outcomes_posted: int = 0


def play_day(
    day: Day,
    post: Post,
    service_day: str,
    weights: RewardWeights | None = None,
    speed: float | None = None,
    region: str = "all",
    cancel_share: float = 0.0,
    seed: int = 0,
) -> DayResult:
    """Play one day against the service; returns the day's KPIs as the simulator's core counts them.

    :param cancel_share: share of served trips reported as cancelled instead (exercises the outcome
        path; the core still counts them served, as the decision was).
    """
    rng = np.random.default_rng(seed)
    core = DispatchCore(weights)
    core.reset(day)
    result = DayResult(day.day_id, service_day, {})
    finishing: list[tuple[float, int, dict]] = []  # (dropoff time, booking, outcome body)
    clock = _Clock(speed, float(day.bookings.decision_time[0]) if day.n_bookings else 0.0)
    for booking in range(day.n_bookings):
        now = float(day.bookings.decision_time[booking])
        while finishing and finishing[0][0] <= now:
            result.outcomes_posted += _post_outcome(post, clock, heapq.heappop(finishing))
        clock.wait_until(now)
        answer = post("/v1/decisions", decision_request(day, core, booking, service_day, region))
        result.arms[answer["arm"]] = result.arms.get(answer["arm"], 0) + 1
        result.policies[answer["policy"]] = result.policies.get(answer["policy"], 0) + 1
        insertion = core.evaluate(booking, now)
        if answer["action"] == "refuse":
            core.refuse(insertion)
            continue
        vehicle = int(answer["vehicle_index"])
        if not insertion.feasible[vehicle]:
            raise RuntimeError(f"the service chose infeasible vehicle {vehicle} for booking {booking}")
        outcome = core.assign(insertion, vehicle)
        cancelled = cancel_share > 0 and rng.random() < cancel_share
        body = {"decision_id": answer["decision_id"], "status": "cancelled"} if cancelled else {
            "decision_id": answer["decision_id"], "status": "completed",
            "pickup_min": float(core.pickup_time[booking]), "dropoff_min": float(core.dropoff_time[booking]),
            "lateness_min": outcome.lateness_min, "deadhead_km": outcome.deadhead_km,
        }  # fmt: skip
        heapq.heappush(finishing, (float(core.dropoff_time[booking]), booking, body))
    while finishing:
        result.outcomes_posted += _post_outcome(post, clock, heapq.heappop(finishing))
    result.kpis = core.kpis()
    return result


def _post_outcome(post: Post, clock: _Clock, item: tuple[float, int, dict]) -> int:
    clock.wait_until(item[0])
    post("/v1/outcomes", item[2])
    return 1


class _Clock:
    """Simulated minutes -> wall time at ``speed`` simulated minutes per real minute."""

    def __init__(self, speed: float | None, start_min: float) -> None:
        self.speed, self.start_min, self.start = speed, start_min, time.monotonic()

    def wait_until(self, minute: float) -> None:
        if self.speed is None:
            return
        delay = (minute - self.start_min) * 60.0 / self.speed - (time.monotonic() - self.start)
        if delay > 0:
            time.sleep(delay)


def http_poster(url: str, token: str, timeout_s: float = 10.0, retries: int = 5) -> Post:
    """``post(path, body)`` over HTTP with the bearer token; retries connection errors (the same
    decision id makes a retry safe)."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    def post(path: str, body: dict) -> dict:
        for attempt in range(retries):
            try:
                response = client.post(path, json=body)
            except httpx.TransportError:
                if attempt == retries - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code >= 400:
                raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
            return response.json()
        raise AssertionError("unreachable")

    return post


def simulate(
    days: Sequence[Day],
    post: Post,
    first_service_day: str = "2027-01-04",
    weights: RewardWeights | None = None,
    speed: float | None = None,
    log: Callable[[str], None] = print,
) -> list[DayResult]:
    """Play ``days`` on consecutive service days from ``first_service_day``."""
    import datetime as dt

    start = dt.date.fromisoformat(first_service_day)
    results = []
    for i, day in enumerate(days):
        service_day = (start + dt.timedelta(days=i)).isoformat()
        result = play_day(day, post, service_day, weights, speed)
        kpis = result.kpis
        log(f"{service_day} (day {day.day_id}): reward {kpis['reward']:.1f}, completion "
            f"{kpis['completion_rate']:.3f}, arms {result.arms}, policies {result.policies}")  # fmt: skip
        results.append(result)
    return results
