"""The hindsight bound is never beaten by a policy on the core, and is exact where the answer is known."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from rl_lib.envs.core import DispatchCore, Insertion, RewardWeights
from rl_lib.envs.day import Bookings, Day, Fleet, Mobility, Priority, ServiceRules, VehicleType
from rl_lib.envs.travel import TravelModel
from rl_lib.policies.hindsight import HindsightBound, build_relaxation, hindsight_bound
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.synthetic import SyntheticScenario

REFUSE = -1
# Rounding slack when a policy's reward meets the bound exactly.
EPS = 1e-6

Chooser = Callable[[Insertion, np.random.Generator], int]


def nearest(ins: Insertion, rng: np.random.Generator) -> int:
    if not ins.feasible.any():
        return REFUSE
    return int(np.argmin(np.where(ins.feasible, ins.deadhead_km, np.inf)))


def random_feasible(ins: Insertion, rng: np.random.Generator) -> int:
    feasible = np.flatnonzero(ins.feasible)
    return int(rng.choice(feasible)) if feasible.size else REFUSE


def run_core(
    day: Day, choose: Chooser, weights: RewardWeights | None = None, seed: int = 0, offline: bool = False
) -> dict[str, float]:
    """Drive the core with ``choose``: online (decision order, at decision times), or offline
    (requested-pickup order, every booking decided at the day start)."""
    core = DispatchCore(weights)
    core.reset(day)
    rng = np.random.default_rng(seed)
    b = day.bookings
    order = np.argsort(b.requested_pickup, kind="stable") if offline else range(day.n_bookings)
    for booking in order:
        ins = core.evaluate(int(booking), day.start_min if offline else b.decision_time[booking])
        vehicle = choose(ins, rng)
        if vehicle == REFUSE:
            core.refuse(ins)
        else:
            core.assign(ins, vehicle)
    return core.kpis()


def assert_not_beaten(bound: HindsightBound, kpis: dict[str, float]) -> None:
    assert kpis["reward"] <= bound.reward_upper_bound + EPS
    assert kpis["served"] <= bound.served_upper_bound
    assert kpis["completion_rate"] <= bound.service_rate_upper_bound + EPS


# ------------------------------------------------------------ synthetic days
def small_config() -> ScenarioConfig:
    """A third of the default scenario (~60 bookings, 4 vehicles), for fast solves."""
    cfg = ScenarioConfig()
    demand = dataclasses.replace(cfg.demand, advance_per_day=37.0, same_day_per_day=23.0)
    fleet = dataclasses.replace(cfg.fleet, n_cars=2, n_wheelchair_vans=1, n_stretcher_units=1)
    return dataclasses.replace(cfg, demand=demand, fleet=fleet)


@pytest.fixture(scope="module")
def small_days() -> list[Day]:
    return SyntheticScenario(small_config()).days("test", 3)


@pytest.fixture(scope="module")
def small_bounds(small_days: list[Day]) -> list[HindsightBound]:
    return [hindsight_bound(day, time_limit_s=2.0) for day in small_days]


def test_bound_is_not_beaten_by_online_or_offline_greedy_runs(small_days, small_bounds) -> None:
    for day, bound in zip(small_days, small_bounds, strict=True):
        assert bound.n_bookings == day.n_bookings > 0
        assert bound.method == "milp-relaxation"
        assert_not_beaten(bound, run_core(day, nearest))
        assert_not_beaten(bound, run_core(day, nearest, offline=True))
        for seed in range(3):
            assert_not_beaten(bound, run_core(day, random_feasible, seed=seed))
        # A whole count of bookings, and the rate agrees with it.
        assert bound.served_upper_bound == int(bound.served_upper_bound) <= day.n_bookings
        assert bound.service_rate_upper_bound == bound.served_upper_bound / day.n_bookings


def test_bound_holds_for_other_reward_weights(small_days) -> None:
    # Costly deadhead and lateness, no refusal penalty: some trips are not worth serving.
    weights = RewardWeights(deadhead_per_km=2.0, lateness_per_min=1.0, refusal_penalty=0.0)
    day = small_days[0]
    bound = hindsight_bound(day, weights, time_limit_s=2.0)
    assert_not_beaten(bound, run_core(day, nearest, weights))
    assert_not_beaten(bound, run_core(day, random_feasible, weights, seed=1))


def test_lp_relaxation_is_looser_than_milp(small_days, small_bounds) -> None:
    for day, milp_bound in zip(small_days[:2], small_bounds[:2], strict=True):
        lp_bound = hindsight_bound(day, relax=True)
        assert lp_bound.method == "lp-relaxation"
        assert lp_bound.reward_upper_bound >= milp_bound.reward_upper_bound - EPS
        assert lp_bound.served_upper_bound >= milp_bound.served_upper_bound


def test_default_scenario_day_is_bounded() -> None:
    day = SyntheticScenario().day("test", 0)
    bound = hindsight_bound(day, relax=True)
    assert bound.solve_seconds < 10.0
    assert_not_beaten(bound, run_core(day, nearest))
    assert_not_beaten(bound, run_core(day, random_feasible, seed=0))


# ----------------------------------------------------------- hand-built days
def tiny_day(mobility: tuple[int, ...], requested: tuple[float, ...], pickup: tuple[int, ...]) -> Day:
    """Two cars on shift 07:00-15:00; 1 km = 1 min, no congestion; nodes: depot (0, 0),
    A (4, 0), B (0, 3), far away F (60, 0). Booking i goes from ``pickup[i]`` to A (i even) or B."""
    coords = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [60.0, 0.0]])
    travel = TravelModel.planar(coords, road_factor=1.0, speed_kmh=60.0, congestion=np.ones(24))
    fleet = Fleet(
        vehicle_type=np.array([VehicleType.CAR, VehicleType.CAR]),
        shift_start=np.array([420.0, 420.0]),
        shift_end=np.array([900.0, 900.0]),
    )
    n = len(mobility)
    t_req = np.asarray(requested, dtype=float)
    order = np.argsort(t_req, kind="stable")
    bookings = Bookings(
        known_at=np.full(n, 360.0),
        decision_time=(t_req - 60.0)[order],
        requested_pickup=t_req[order],
        window_min=np.full(n, 15.0),
        pickup_node=np.asarray(pickup, dtype=np.int64)[order],
        dropoff_node=np.where(np.arange(n) % 2 == 0, 1, 2)[order],
        mobility=np.asarray(mobility, dtype=np.int64)[order],
        priority=np.array([Priority.NORMAL, Priority.DIALYSIS, Priority.NORMAL][:n], dtype=np.int64)[order],
        advance=np.ones(n, bool),
    )
    return Day("tiny", 360.0, 900.0, fleet, bookings, travel, ServiceRules(), coords)


AMB, STRETCHER = int(Mobility.AMBULATORY), int(Mobility.STRETCHER)


def test_tiny_day_all_servable() -> None:
    day = tiny_day((AMB, AMB, AMB), (480.0, 480.0, 600.0), (0, 0, 0))
    bound = hindsight_bound(day)
    kpis = run_core(day, nearest)
    assert kpis["served"] == bound.served_upper_bound == 3
    assert bound.service_rate_upper_bound == 1.0
    # Both cars start at the depot; the third trip needs a 3 or 4 km return the bound cannot see.
    assert bound.reward_upper_bound == pytest.approx(10.0 + 20.0 + 10.0)
    assert kpis["reward"] <= bound.reward_upper_bound
    assert bound.optimal


def test_tiny_day_stretcher_patient_with_only_cars_is_not_counted() -> None:
    day = tiny_day((AMB, AMB, STRETCHER), (480.0, 480.0, 600.0), (0, 0, 0))
    bound = hindsight_bound(day)
    assert bound.served_upper_bound == 2
    assert bound.service_rate_upper_bound == pytest.approx(2 / 3)
    # Exact here: both trips start at the depot on time; the stretcher booking is refused.
    assert bound.reward_upper_bound == pytest.approx(10.0 + 20.0 - 5.0)
    assert run_core(day, nearest)["reward"] == pytest.approx(bound.reward_upper_bound)
    assert (build_relaxation(day, RewardWeights()).booking != 2).all()


def test_tiny_day_unreachable_pickup_is_not_counted() -> None:
    # Pickup 60 min from the depot, wanted 5 min into the shift: 15 min window + 15 min lateness
    # are not enough, whatever the schedule.
    day = tiny_day((AMB, AMB, AMB), (480.0, 480.0, 425.0), (0, 0, 3))
    bound = hindsight_bound(day)
    assert bound.served_upper_bound == 2
    assert run_core(day, nearest)["served"] == 2


def test_empty_day() -> None:
    day = tiny_day((), (), ())
    bound = hindsight_bound(day)
    assert bound.reward_upper_bound == 0.0 and bound.served_upper_bound == 0.0
    assert np.isnan(bound.service_rate_upper_bound)


# --------------------------------------------- exhaustive search, random tiny days
def random_tiny_day(rng: np.random.Generator, n: int = 4) -> Day:
    """Random 2-vehicle day with random congestion, service times, types and shifts; half of
    them on an asymmetric travel matrix that breaks the triangle inequality."""
    coords = rng.uniform(0.0, 10.0, size=(5, 2))
    congestion = rng.uniform(0.8, 1.8, size=24)
    if rng.random() < 0.5:
        travel = TravelModel.planar(coords, congestion=congestion)
    else:
        minutes = rng.uniform(0.0, 40.0, size=(5, 5)) * (rng.random((5, 5)) < 0.8)
        travel = TravelModel.from_matrices(minutes * 0.5, minutes, congestion)
    start = rng.uniform(400.0, 480.0, size=2)
    fleet = Fleet(rng.integers(0, 3, size=2), start, start + rng.uniform(90.0, 300.0, size=2))
    t_req = np.sort(rng.uniform(420.0, 560.0, size=n))
    bookings = Bookings(
        known_at=np.full(n, 360.0),
        decision_time=t_req - 30.0,
        requested_pickup=t_req,
        window_min=rng.choice([5.0, 15.0, 30.0], size=n),
        pickup_node=rng.integers(0, 5, size=n),
        dropoff_node=rng.integers(0, 5, size=n),
        mobility=rng.integers(0, 3, size=n),
        priority=rng.integers(0, 3, size=n),
        advance=np.ones(n, bool),
    )
    rules = ServiceRules(
        boarding_min=tuple(rng.uniform(0.0, 6.0, size=3)),
        alighting_min=tuple(rng.uniform(0.0, 6.0, size=3)),
        max_lateness_min=float(rng.choice([0.0, 10.0, 20.0])),
    )
    return Day("random", 360.0, 900.0, fleet, bookings, travel, rules, coords)


def best_schedule(day: Day) -> tuple[float, int]:
    """Best reward and most served over every order, vehicle choice and decision time (the
    earliest possible, or the booking's own) that the core allows."""
    core = DispatchCore()
    core.reset(day)
    penalty = core.weights.refusal_penalty
    best = [-np.inf, 0]

    def search(remaining: frozenset[int]) -> None:
        best[0] = max(best[0], core.total_reward - penalty * len(remaining))
        best[1] = max(best[1], day.n_bookings - len(remaining))
        for booking in remaining:
            for now in (0.0, float(day.bookings.decision_time[booking])):
                ins = core.evaluate(booking, now)
                for vehicle in np.flatnonzero(ins.feasible):
                    state = core.snapshot()
                    core.assign(ins, int(vehicle))
                    search(remaining - {booking})
                    core.restore(state)

    search(frozenset(range(day.n_bookings)))
    return float(best[0]), int(best[1])


def test_bound_is_not_beaten_by_exhaustive_search_on_random_tiny_days() -> None:
    rng = np.random.default_rng(7)
    n_served = 0
    for _ in range(20):
        day = random_tiny_day(rng)
        reward, served = best_schedule(day)
        bound = hindsight_bound(day)
        assert reward <= bound.reward_upper_bound + EPS
        assert served <= bound.served_upper_bound
        n_served += served
    assert n_served > 0  # the random days are not all trivially empty


def test_a_bound_out_of_solver_time_still_counts_each_booking_once(test_days, monkeypatch):
    """When the LP runs out of time (a loaded machine), the fallback bound takes each booking's best
    pair, not every pair: the served bound stays at most the day's bookings."""
    import time as time_module

    from rl_lib.policies import hindsight

    class Unsolved:
        status, fun = 1, float("nan")

    monkeypatch.setattr(hindsight, "milp", lambda *args, **kwargs: Unsolved())
    day = test_days[0]
    model = hindsight.build_relaxation(day, hindsight.RewardWeights())
    served, optimal = hindsight._upper_bound(
        model, np.ones_like(model.value), time_module.perf_counter(), True
    )
    assert not optimal and served == len(np.unique(model.booking)) <= day.n_bookings < len(model.value)
