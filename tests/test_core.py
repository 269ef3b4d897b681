"""The simulation core: hand-worked KPIs, feasibility soundness, baselines respect the mask."""

from __future__ import annotations

import numpy as np
import pytest

from rl_lib.envs.core import COMPATIBLE, DispatchCore, Status
from rl_lib.envs.travel import TravelModel
from rl_lib.policies import BASELINES, RandomPolicy, run_sequential


def play(core: DispatchCore, day, choices):
    core.reset(day)
    outcomes = []
    for b, vehicle in enumerate(choices):
        ins = core.evaluate(b, day.bookings.decision_time[b])
        outcomes.append(core.refuse(ins) if vehicle is None else core.assign(ins, vehicle))
    return outcomes


def test_hand_day_kpis_match_hand_computation(hand_day):
    core = DispatchCore()
    outcomes = play(core, hand_day, [0, 1, None, 0])
    # b0 on v0: leaves 490, picks up 500 (on time), drops off 500+2+12+2 = 516; 5 km empty.
    # b1 on v1: leaves 504, picks up 510, drops off 510+5+8+5 = 528; 3 km empty.
    # b2: stretcher, no compatible vehicle -> missed.
    # b3 on v0 (at B since 516): leaves 530, 16 min to C -> pickup 546, window closed 540 -> 6 min late;
    #     drops off 546+2+6+2 = 556; 8 km empty.
    assert [o.reward for o in outcomes] == pytest.approx([9.5, 19.7, -5.0, 13.0])
    assert [o.status for o in outcomes] == [Status.SERVED, Status.SERVED, Status.MISSED, Status.SERVED]
    np.testing.assert_allclose(core.pickup_time[[0, 1, 3]], [500.0, 510.0, 546.0])
    np.testing.assert_allclose(core.dropoff_time[[0, 1, 3]], [516.0, 528.0, 556.0])
    k = core.kpis()
    expected = {
        "reward": 37.2,
        "n_bookings": 4,
        "served": 3,
        "completion_rate": 0.75,
        "refusal_rate": 0.0,
        "missed_rate": 0.25,
        "on_time_rate": 2 / 3,
        "mean_lateness_min": 2.0,
        "p95_lateness_min": 5.4,  # linear interpolation in [0, 0, 6] at rank 1.9
        "mean_deadhead_km": 16 / 3,
        "total_km": 29.0,  # 16 empty + 13 loaded
        "utilisation": 76 / 600,  # busy 26 + 24 + 26 min over shifts 240 + 240 + 120
    }
    assert k == pytest.approx(expected)


def test_hand_day_feasibility(hand_day):
    core = DispatchCore()
    play(core, hand_day, [0, 1, None])
    ins = core.evaluate(3, 530.0)
    # v2's shift starts at 10:00: it would pick up at 606, 66 min late > 15 allowed.
    assert ins.feasible.tolist() == [True, True, False]
    assert ins.lateness[2] == pytest.approx(66.0)
    assert not core.evaluate(2, 520.0).compatible.any()


def test_refusal_with_a_feasible_vehicle_is_a_refusal_not_a_miss(hand_day):
    core = DispatchCore()
    outcomes = play(core, hand_day, [None])
    assert outcomes[0].status == Status.REFUSED
    assert core.kpis()["refusal_rate"] == 0.25


def test_invalid_assignment_is_a_penalised_refusal_and_changes_no_vehicle(hand_day):
    core = DispatchCore()
    play(core, hand_day, [0, 1, None])
    before = core.snapshot()
    ins = core.evaluate(3, 530.0)
    outcome = core.assign(ins, 2)  # v2 is masked for b3
    assert outcome.invalid_action and outcome.status == Status.REFUSED
    assert outcome.reward == -(core.weights.refusal_penalty + core.weights.invalid_action_penalty)
    for key in ("vehicle_node", "free_at", "busy_min"):
        np.testing.assert_array_equal(getattr(core, key), before[key])
    with pytest.raises(ValueError, match="already decided"):
        core.assign(ins, 0)


def test_unmasked_vehicles_never_break_a_window_beyond_the_allowed_lateness(test_days):
    """Serve random feasible choices on real days, then audit every schedule from scratch."""
    for day in test_days:
        core = run_sequential(RandomPolicy(), day, seed=1)
        b = day.bookings
        served = np.flatnonzero(core.status == Status.SERVED)
        assert served.size > 0
        late = core.pickup_time[served] - (b.requested_pickup[served] + b.window_min[served])
        assert np.all(late <= day.rules.max_lateness_min + 1e-9)
        assert np.all(core.pickup_time[served] >= b.requested_pickup[served] - 1e-9)
        vehicles = core.vehicle_of[served]
        assert np.all(COMPATIBLE[day.fleet.vehicle_type[vehicles], b.mobility[served]])
        assert np.all(core.dropoff_time[served] <= day.fleet.shift_end[vehicles] + 1e-9)
        for k, queue in enumerate(core.queues):
            node, free = 0, day.fleet.shift_start[k]
            for trip in queue:  # one trip at a time: each pickup reachable after the previous dropoff
                travel = day.travel.free_flow_min[node, b.pickup_node[trip]] * min(day.travel.congestion)
                assert core.pickup_time[trip] >= free + travel - 1e-9
                node, free = b.dropoff_node[trip], core.dropoff_time[trip]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_no_baseline_ever_chooses_a_masked_vehicle(name, test_days, monkeypatch):
    chosen = []
    original = DispatchCore.assign

    def spy(self, insertion, vehicle):
        chosen.append(bool(insertion.feasible[vehicle]))
        return original(self, insertion, vehicle)

    monkeypatch.setattr(DispatchCore, "assign", spy)
    for day in test_days[:2]:
        BASELINES[name](day, DispatchCore(), 0)
    assert chosen and all(chosen)


def test_every_booking_is_decided_exactly_once_by_every_baseline(test_days):
    for name, run in BASELINES.items():
        core = run(test_days[0], DispatchCore(), 0)
        assert not np.any(core.status == Status.UNDECIDED), name
        assert sum(len(q) for q in core.queues) == int((core.status == Status.SERVED).sum()), name


def test_baselines_are_deterministic_for_a_seed(test_days):
    for name, run in BASELINES.items():
        a = run(test_days[0], DispatchCore(), 3).kpis()
        b = run(test_days[0], DispatchCore(), 3).kpis()
        assert a == b, name


def test_planar_travel_model_applies_road_factor_and_congestion():
    coords = np.array([[0.0, 0.0], [3.0, 4.0]])
    congestion = np.ones(24)
    congestion[8] = 1.5
    model = TravelModel.planar(coords, road_factor=1.2, speed_kmh=60.0, congestion=congestion)
    assert model.distance_km[0, 1] == pytest.approx(6.0)
    assert model.travel_min(0, 1, 7 * 60.0) == pytest.approx(6.0)
    assert model.travel_min(0, 1, 8 * 60.0 + 30) == pytest.approx(9.0)


def test_travel_matrix_must_be_square_and_non_negative():
    with pytest.raises(ValueError, match="square"):
        TravelModel.from_matrices(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        TravelModel.from_matrices(-np.ones((2, 2)), np.ones((2, 2)))
