"""Shared fixtures: a hand-built 3-vehicle day and a few default-scenario days."""

from __future__ import annotations

import numpy as np
import pytest

from rl_lib.envs.day import Bookings, Day, Fleet, Mobility, Priority, ServiceRules, VehicleType
from rl_lib.envs.travel import TravelModel
from rl_lib.scenarios.synthetic import SyntheticScenario

# Four nodes: 0 depot, 1 A, 2 B, 3 C. Free-flow time = 2 min per km, no congestion.
HAND_KM = np.array(
    [
        [0.0, 5.0, 10.0, 3.0],
        [5.0, 0.0, 6.0, 4.0],
        [10.0, 6.0, 0.0, 8.0],
        [3.0, 4.0, 8.0, 0.0],
    ]
)


def make_hand_day() -> Day:
    """The day whose KPIs tests/test_core.py works out by hand.

    Vehicles: v0 car [08:00, 12:00], v1 wheelchair van [08:00, 12:00], v2 car [10:00, 12:00].
    Bookings (decision time, requested pickup, window, pickup -> dropoff, mobility, priority):
      b0: 480, 500, 15, A -> B, ambulatory, normal
      b1: 490, 510, 15, C -> A, wheelchair, dialysis
      b2: 520, 540, 15, B -> C, stretcher, normal   (no stretcher unit: always missed)
      b3: 530, 535,  5, C -> depot, ambulatory, appointment
    """
    fleet = Fleet(
        vehicle_type=np.array([VehicleType.CAR, VehicleType.WHEELCHAIR_VAN, VehicleType.CAR]),
        shift_start=np.array([480.0, 480.0, 600.0]),
        shift_end=np.array([720.0, 720.0, 720.0]),
    )
    decision = np.array([480.0, 490.0, 520.0, 530.0])
    bookings = Bookings(
        known_at=decision.copy(),
        decision_time=decision,
        requested_pickup=np.array([500.0, 510.0, 540.0, 535.0]),
        window_min=np.array([15.0, 15.0, 15.0, 5.0]),
        pickup_node=np.array([1, 3, 2, 3]),
        dropoff_node=np.array([2, 1, 3, 0]),
        mobility=np.array(
            [Mobility.AMBULATORY, Mobility.WHEELCHAIR, Mobility.STRETCHER, Mobility.AMBULATORY]
        ),
        priority=np.array([Priority.NORMAL, Priority.DIALYSIS, Priority.NORMAL, Priority.APPOINTMENT]),
        advance=np.array([True, False, False, False]),
    )
    travel = TravelModel.from_matrices(HAND_KM, 2.0 * HAND_KM)
    return Day("hand", 480.0, 720.0, fleet, bookings, travel, ServiceRules(), None)


@pytest.fixture
def hand_day() -> Day:
    return make_hand_day()


@pytest.fixture(scope="session")
def test_days() -> list[Day]:
    return SyntheticScenario().days("test", 3)


#: A small experiment that trains in seconds: 4 vehicles, ~30 bookings a day, a tiny network.
TINY_EXPERIMENT = {
    "scenario": {
        "demand": {"advance_per_day": 20, "same_day_per_day": 10},
        "fleet": {"n_cars": 2, "n_wheelchair_vans": 1, "n_stretcher_units": 1},
        "splits": {"train_days": 20, "validation_days": 3, "test_days": 3},
    },
    "training": {
        "name": "tiny",
        "total_timesteps": 600,
        "dqn": {
            "net_arch": [32, 32],
            "learning_starts": 50,
            "buffer_size": 1000,
            "target_update_interval": 100,
            "batch_size": 16,
            "train_freq": 2,
        },
        "checkpoints": {"checkpoint_freq": 100, "eval_freq": 200, "n_eval_episodes": 2},
    },
}


def tiny_config(**training):
    """The tiny experiment, with ``training`` keys overridden (nested dicts merge one level)."""
    import copy

    from rl_lib.config import from_dict
    from rl_lib.experiment import ExperimentConfig

    data = copy.deepcopy(TINY_EXPERIMENT)
    for key, value in training.items():
        if isinstance(value, dict):
            data["training"].setdefault(key, {}).update(value)
        else:
            data["training"][key] = value
    return from_dict(ExperimentConfig, data)


@pytest.fixture
def tiny_yaml(tmp_path):
    """Write the tiny experiment (optionally overridden) to a YAML file; returns its path."""
    import yaml

    from rl_lib.config import to_dict

    def write(**training):
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(to_dict(tiny_config(**training))))
        return path

    return write
