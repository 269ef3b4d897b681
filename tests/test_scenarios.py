"""Synthetic scenarios: seeded days, disjoint splits, validated configuration."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from rl_lib.config import from_dict, to_dict
from rl_lib.errors import ConfigError
from rl_lib.experiment import ExperimentConfig, load_experiment
from rl_lib.scenarios.config import ScenarioConfig, SplitConfig
from rl_lib.scenarios.synthetic import SPLITS, SyntheticScenario


def fingerprint(day) -> str:
    b = day.bookings
    h = hashlib.sha256()
    for arr in (b.requested_pickup, b.pickup_node, b.dropoff_node, day.travel.distance_km):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def test_splits_never_overlap_in_ids_or_content():
    scenario = SyntheticScenario(dataclasses.replace(ScenarioConfig(), splits=SplitConfig(40, 20, 20)))
    ids = {split: set(scenario.day_ids(split)) for split in SPLITS}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    prints = {split: {fingerprint(d) for d in scenario.days(split)} for split in SPLITS}
    assert len(prints["train"]) == 40  # every day differs
    assert not prints["train"] & prints["validation"]
    assert not prints["train"] & prints["test"]
    assert not prints["validation"] & prints["test"]


def test_resizing_the_training_split_keeps_the_test_days():
    small = SyntheticScenario(dataclasses.replace(ScenarioConfig(), splits=SplitConfig(10, 5, 5)))
    large = SyntheticScenario(dataclasses.replace(ScenarioConfig(), splits=SplitConfig(5000, 50, 5)))
    assert [fingerprint(d) for d in small.days("test")] == [fingerprint(d) for d in large.days("test")]


def test_days_are_deterministic_and_depend_on_the_seed():
    a = SyntheticScenario().day("test", 3)
    b = SyntheticScenario().day("test", 3)
    c = SyntheticScenario(dataclasses.replace(ScenarioConfig(), seed=1)).day("test", 3)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_default_day_is_plausible():
    days = SyntheticScenario().days("test", 5)
    for day in days:
        b = day.bookings
        assert day.n_vehicles == 12
        assert 120 < day.n_bookings < 240
        assert np.all(np.diff(b.decision_time) >= 0)
        assert np.all(b.decision_time <= b.requested_pickup)
        assert np.all((b.requested_pickup >= day.start_min) & (b.requested_pickup <= day.end_min))
        assert 0.4 < b.advance.mean() < 0.8
        assert set(np.unique(b.window_min)) <= {15.0, 20.0, 30.0}
        assert day.coords_km.min() >= 0 and day.coords_km.max() <= 25.0


def test_same_day_arrivals_follow_the_hourly_profile():
    days = SyntheticScenario().days("train", 60)
    known = np.concatenate([d.bookings.known_at[~d.bookings.advance] for d in days])
    hours = np.bincount((known // 60).astype(int), minlength=24)
    assert hours[:6].sum() == 0 and hours[18:].sum() == 0
    assert hours[9] > hours[16] > hours[17]  # morning peak, evening tail


def test_matrix_travel_model_replaces_the_planar_one(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 20, size=(30, 2))
    km = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.savez(tmp_path / "m.npz", distance_km=km, time_min=km * 1.5)
    cfg = from_dict(
        ScenarioConfig,
        {"geography": {"travel_matrix": str(tmp_path / "m.npz"), "facility_nodes": [1, 2]}},
    )
    day = SyntheticScenario(cfg).day("train", 0)
    assert day.travel.n_nodes == 30 and day.coords_km is None
    assert set(np.unique(np.concatenate([day.bookings.pickup_node, day.bookings.dropoff_node]))) >= {1, 2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scenario": {"fleet": {"n_carz": 3}}}, "scenario.fleet.n_carz: unknown key"),
        ({"scenario": {"fleet": {"n_cars": "six"}}}, "scenario.fleet.n_cars: expected an integer"),
        ({"scenario": {"demand": {"outbound_share": 1.5}}}, "outbound_share: 1.5 is above the maximum 1.0"),
        ({"scenario": {"rules": {"max_lateness_min": -1}}}, "max_lateness_min: -1.0 is below the minimum"),
        ({"scenario": {"demand": {"mobility_mix": [1, 2]}}}, "mobility_mix: expected 3 values"),
        (
            {"scenario": {"fleet": {"n_cars": 0, "n_wheelchair_vans": 0, "n_stretcher_units": 0}}},
            "at least one",
        ),
        ({"reward": {"deadhead_per_km": True}}, "reward.deadhead_per_km: expected a number"),
        ({"scenario": 3}, "scenario: expected a mapping"),
    ],
)
def test_bad_config_values_give_one_readable_line(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        from_dict(ExperimentConfig, data)
    assert "\n" not in str(info.value)


def test_config_round_trips_through_plain_data():
    cfg = ExperimentConfig()
    assert from_dict(ExperimentConfig, to_dict(cfg)) == cfg


def test_load_experiment_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    assert load_experiment(None) == ExperimentConfig()
