"""A decision request -> the simulation core's state, insertion and observation.

The service must show the agent exactly what the env showed it in training, so nothing here
re-implements a rule: a request becomes a one-booking :class:`~rl_lib.envs.day.Day` (nodes: the
pickup, the dropoff and each vehicle's position, priced by the scenario's planar travel model), a
:class:`~rl_lib.envs.core.DispatchCore` whose vehicles stand where and when their committed queues
end, and the env's own :func:`~rl_lib.envs.dispatch_env.write_observation`. The demand counts the
env derives from the whole day (pending, recent, upcoming bookings) come from the request, since
only the dispatch backend knows them. A day played through the service therefore gets the
observations, masks and rewards of the env, bit for bit (tests/test_serving.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl_lib.envs.core import DispatchCore, Insertion, RewardWeights
from rl_lib.envs.day import Bookings, Day, Fleet
from rl_lib.envs.dispatch_env import (
    N_BOOKING,
    PENDING_SCALE,
    RECENT_SCALE,
    UPCOMING_SCALE,
    booking_features,
    observation_size,
    vehicle_capabilities,
    write_observation,
)
from rl_lib.envs.travel import TravelModel
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.serving.schemas import MOBILITIES, PRIORITIES, VEHICLE_TYPES, DecisionRequest

PICKUP, DROPOFF, FIRST_VEHICLE = 0, 1, 2  # node indices of the request's day


@dataclass(frozen=True)
class FleetState:
    """One request on the simulation core: its insertion (feasibility, pickup, lateness, deadhead
    of every vehicle), observation and mask (``mask[K]``, refuse, is always True)."""

    core: DispatchCore
    insertion: Insertion
    observation: np.ndarray
    mask: np.ndarray

    @property
    def n_vehicles(self) -> int:
        return len(self.mask) - 1


def fleet_state(request: DecisionRequest, scenario: ScenarioConfig, weights: RewardWeights) -> FleetState:
    """Evaluate ``request``'s booking against its fleet, with the scenario's travel model and rules."""
    geo = scenario.geography
    b, fleet = request.booking, request.fleet
    # One pass over the fleet (this runs at every request): x, y, type, shift start / end, free at.
    vehicles = np.array(
        [(v.position.x_km, v.position.y_km, VEHICLE_TYPES.index(v.type), v.shift_start_min,
          v.shift_end_min, v.free_at_min) for v in fleet],
        dtype=float,
    )  # fmt: skip
    coords = np.concatenate(
        [[[b.pickup.x_km, b.pickup.y_km], [b.dropoff.x_km, b.dropoff.y_km]], vehicles[:, :2]]
    )
    now = float(request.now_min)
    bookings = Bookings(
        known_at=np.array([now]),
        decision_time=np.array([now]),
        requested_pickup=np.array([float(b.requested_pickup_min)]),
        window_min=np.array([float(b.window_min)]),
        pickup_node=np.array([PICKUP]),
        dropoff_node=np.array([DROPOFF]),
        mobility=np.array([MOBILITIES.index(b.mobility)]),
        priority=np.array([PRIORITIES.index(b.priority)]),
        advance=np.array([b.advance]),
    )
    day = Day(
        day_id=str(request.service_day),
        start_min=scenario.day_start_min if request.day_start_min is None else float(request.day_start_min),
        end_min=scenario.day_end_min if request.day_end_min is None else float(request.day_end_min),
        fleet=Fleet(
            vehicle_type=vehicles[:, 2].astype(np.int64),
            shift_start=vehicles[:, 3].copy(),
            shift_end=vehicles[:, 4].copy(),
        ),
        bookings=bookings,
        travel=TravelModel.planar(coords, geo.road_factor, geo.speed_kmh, geo.congestion),
        rules=scenario.rules,
        coords_km=coords,
    )
    core = DispatchCore(weights)
    core.reset(day)
    core.vehicle_node[:] = FIRST_VEHICLE + np.arange(len(fleet))
    # The core's free_at starts at the shift start and only grows: a queue never ends before it.
    core.free_at[:] = np.maximum(core.free_at, vehicles[:, 5])
    insertion = core.evaluate(0, now)

    static = booking_features(day)[0]
    demand = request.demand
    global_counts = np.array(
        [
            demand.pending_bookings / PENDING_SCALE,
            demand.recent_requests / RECENT_SCALE,
            demand.upcoming_ambulatory / UPCOMING_SCALE,
            demand.upcoming_wheelchair / UPCOMING_SCALE,
            demand.upcoming_stretcher / UPCOMING_SCALE,
        ]  # fmt: skip
    )
    # booking_features' global columns after day_elapsed are the day-wide counts: the request's.
    static[N_BOOKING + 1 :] = np.clip(global_counts, 0.0, 1.0)
    k = len(fleet)
    obs = np.zeros(observation_size(k), dtype=np.float32)
    write_observation(obs, static, insertion, core.free_at, day.fleet.shift_end, vehicle_capabilities(day))
    mask = np.ones(k + 1, dtype=bool)
    mask[:k] = insertion.feasible
    return FleetState(core, insertion, obs, mask)
