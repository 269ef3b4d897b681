"""The feedback loop's retrain and promotion gate: logged transitions into the replay buffer row for
row, a retrain's lineage and its resume from a checkpoint, the gate's verdicts on models known to be
worse, better or the same, and held-out days replayed from decision records."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch as th
from conftest import tiny_config

from rl_lib.agents import MaskableDQN, build_model
from rl_lib.config import to_dict
from rl_lib.envs import DispatchEnv
from rl_lib.errors import UserError
from rl_lib.feedback.gate import KEEP, PROMOTE, bookings_from_records, days_from_records, gate
from rl_lib.feedback.retrain import prefill_replay_buffer, retrain
from rl_lib.scenarios.historical import MOBILITIES, PRIORITIES
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.training import make_train_env, train
from rl_lib.training.run_record import read_metadata

QUIET = {"log": lambda *a: None}
SERVICE_DAYS = ("2026-06-01", "2026-06-02")


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A tiny trained DQN run (the production model), its config and two played days."""
    root = tmp_path_factory.mktemp("feedback")
    config = tiny_config()
    assert train(config, root / "parent", **QUIET).status == "completed"
    days = SyntheticScenario(config.scenario).days("train", len(SERVICE_DAYS))
    return {"root": root, "dir": root / "parent", "config": config, "days": days}


def logged_frame(config, days) -> pd.DataFrame:
    """The transitions the service would log for ``days`` (one per service day, random feasible
    actions), in the collected frame's columns."""
    env = DispatchEnv(days=list(days), reward=config.reward)
    rng = np.random.default_rng(0)
    rows = []
    for i, service_day in enumerate(SERVICE_DAYS):
        obs, info = env.reset(options={"day_index": i})
        done, j = False, 0
        while not done:
            mask = info["action_mask"]
            action = int(rng.choice(np.flatnonzero(mask)))
            next_obs, reward, done, _, info = env.step(action)
            rows.append(
                {
                    "decision_id": f"{service_day}-{j:03d}",
                    "service_day": service_day,
                    "region": "north",
                    "now_min": float(obs[0]) * 1440.0,
                    "model_version": "v0",
                    "arm": "agent",
                    "policy": "random",
                    "n_vehicles": env.n_vehicles,
                    "observation": obs,
                    "mask": mask,
                    "action": action,
                    "reward": float(reward),
                    "next_observation": next_obs,
                    "next_mask": info["action_mask"],
                    "done": bool(done),
                    "elapsed_min": float(info["elapsed_min"]),
                    "outcome_status": "served",
                    "schema_version": 1,
                }
            )
            obs, j = next_obs, j + 1
    return pd.DataFrame(rows)


def with_extras(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame`` with one row dropped mid-day (a gap in the log) and two rows of a 2-vehicle-larger
    fleet, shuffled; returns it and the label of the row before the gap."""
    gap = 5
    bigger = frame.iloc[:2].copy()
    pad = np.zeros(18, dtype=np.float32)  # 2 more vehicles: 9 fields each
    bigger["n_vehicles"] += 2
    bigger["observation"] = [np.concatenate([o, pad]) for o in bigger["observation"]]
    bigger["decision_id"] += "-big"
    logged = pd.concat([frame.drop(index=gap + 1), bigger], ignore_index=False)
    return logged.sample(frac=1.0, random_state=1), gap


def no_memory_trick(config):
    return dataclasses.replace(
        config,
        training=dataclasses.replace(
            config.training, dqn=dataclasses.replace(config.training.dqn, optimize_memory_usage=False)
        ),
    )


def test_prefill_puts_exactly_the_logged_transitions_in_the_buffer(parent):
    frame = logged_frame(parent["config"], parent["days"])
    logged, gap = with_extras(frame)
    config = no_memory_trick(parent["config"])
    model = build_model(config.training, make_train_env(config), "cpu")
    selection = prefill_replay_buffer(model, logged)

    expected = frame.drop(index=gap + 1)  # buffer order: by day, then decision time, the gap left out
    assert list(selection.frame.index) == list(expected.index)
    assert (selection.given, selection.used, selection.skipped_fleet_size) == (len(logged), len(expected), 2)
    b, n = model.replay_buffer, len(expected)
    assert b.pos == n and not b.full
    np.testing.assert_array_equal(b.observations[:n, 0], np.stack(expected["observation"]))
    np.testing.assert_array_equal(b.next_observations[:n, 0], np.stack(expected["next_observation"]))
    np.testing.assert_array_equal(b.next_action_masks[:n, 0], np.stack(expected["next_mask"]))
    np.testing.assert_array_equal(b.actions[:n, 0, 0], expected["action"])
    # Raw env units, as the buffer keeps env rewards (reward_scale applies in the TD target).
    np.testing.assert_array_equal(b.rewards[:n, 0], expected["reward"].to_numpy(np.float32))
    np.testing.assert_array_equal(b.dones[:n, 0], expected["done"])
    np.testing.assert_array_equal(b.elapsed_min[:n, 0], expected["elapsed_min"].to_numpy(np.float32))
    # The n-step windows stop at the gap only (the day ends are episode ends).
    at_gap = expected.index.get_loc(gap)
    assert np.flatnonzero(b.timeouts[:n, 0]).tolist() == [at_gap] == np.flatnonzero(selection.cut).tolist()
    sample = b._get_samples(np.array([at_gap - 1]))
    disc = b.step_discounts(np.array([at_gap - 1, at_gap]))
    row = expected.iloc[[at_gap - 1, at_gap]]
    want = row["reward"].iloc[0] + disc[0] * row["reward"].iloc[1]
    assert sample.rewards.item() == pytest.approx(want, rel=1e-5)
    np.testing.assert_array_equal(sample.next_observations[0].numpy(), row["next_observation"].iloc[1])
    assert sample.dones.item() == 0.0  # a cut bootstraps: the day goes on

    packed = build_model(parent["config"].training, make_train_env(parent["config"]), "cpu")
    with pytest.raises(UserError, match="optimize_memory_usage"):
        prefill_replay_buffer(packed, frame)


def records_of(days, scenario) -> list[dict]:
    """Decision records in the service's format for every booking of ``days`` (one per service day)."""
    records = []
    for day, service_day in zip(days, SERVICE_DAYS, strict=True):
        b, xy = day.bookings, day.coords_km
        for i in range(day.n_bookings):
            pickup, dropoff = xy[b.pickup_node[i]], xy[b.dropoff_node[i]]
            booking = {
                "booking_id": f"b{i}",
                "requested_pickup_min": float(b.requested_pickup[i]),
                "window_min": float(b.window_min[i]),
                "pickup": {"x_km": float(pickup[0]), "y_km": float(pickup[1])},
                "dropoff": {"x_km": float(dropoff[0]), "y_km": float(dropoff[1])},
                "mobility": MOBILITIES[b.mobility[i]],
                "priority": PRIORITIES[b.priority[i]],
                "advance": bool(b.advance[i]),
            }
            records.append(
                {
                    "service_day": service_day,
                    "region": "north",
                    "now_min": float(b.decision_time[i]),
                    "booking": booking,
                    "day_start_min": scenario.day_start_min,
                    "day_end_min": scenario.day_end_min,
                }
            )
    return records


def test_days_replayed_from_decision_records_are_the_days_decided(parent):
    scenario = parent["config"].scenario
    records = records_of(parent["days"], scenario)
    replayed = days_from_records(records + records[:3], scenario)  # a booking logged twice counts once
    assert [d.day_id for d in replayed] == list(SERVICE_DAYS)
    for day, again in zip(parent["days"], replayed, strict=True):
        b, r = day.bookings, again.bookings
        for field in ("decision_time", "requested_pickup", "window_min"):
            np.testing.assert_allclose(getattr(r, field), getattr(b, field), atol=1e-6)
        for field in ("mobility", "priority", "advance"):
            np.testing.assert_array_equal(getattr(r, field), getattr(b, field))
        np.testing.assert_allclose(again.coords_km[r.pickup_node], day.coords_km[b.pickup_node], atol=1e-9)
        np.testing.assert_array_equal(again.fleet.shift_end, day.fleet.shift_end)  # the scenario's fleet
    with pytest.raises(UserError, match="region"):
        bookings_from_records(records + [{**records[0], "region": "south"}])


def test_a_retrain_records_its_lineage_and_resumes_from_its_checkpoint(parent):
    frame = logged_frame(parent["config"], parent["days"])
    logged, gap = with_extras(frame)
    bookings = bookings_from_records(records_of(parent["days"], parent["config"].scenario))
    run_dir = parent["root"] / "retrain"
    args = (parent["dir"], logged, run_dir, 400)
    # Deterministic stop: at the first evaluation (step 200), as a killed worker's last checkpoint.
    first = retrain(
        *args, bookings=bookings, parent_version="prod-7", on_evaluation=lambda r, h: True, **QUIET
    )
    assert (first.status, first.timesteps) == ("interrupted", 200)

    meta = read_metadata(run_dir)
    lineage = meta["retrain"]
    assert lineage["parent_version"] == "prod-7"
    parent_zip = parent["dir"] / "best_model" / "best_model.zip"
    assert lineage["parent_model_sha256"] == hashlib.sha256(parent_zip.read_bytes()).hexdigest()
    assert meta["init_model"] == str(parent_zip)
    assert lineage["data_window"] == {
        "first_service_day": SERVICE_DAYS[0],
        "last_service_day": SERVICE_DAYS[-1],
    }
    used = len(frame) - 1
    assert lineage["logged_transitions"] | {"decision_ids_sha256": None} == {
        "given": len(logged),
        "used": used,
        "skipped_fleet_size": 2,
        "dropped_over_capacity": 0,
        "window_cuts": 1,
        "decision_ids_sha256": None,
    }
    assert meta["prefilled_transitions"] == used
    assert lineage["simulated_days"]["source"] == "fitted"
    assert meta["config"]["scenario"]["name"].endswith("-fitted")
    assert meta["config"]["training"]["total_timesteps"] == 400
    assert meta["config"]["reward"] == to_dict(parent["config"].reward)

    second = retrain(*args, bookings=bookings, parent_version="prod-7", **QUIET)
    assert (second.status, second.timesteps, second.lineage) == ("completed", 400, lineage)
    meta = read_metadata(run_dir)
    assert meta["resume_count"] == 1
    assert [s["from_step"] for s in meta["sessions"]] == [0, 200]  # continued, not from scratch
    assert meta["prefilled_transitions"] == used  # not loaded again
    buffer_file = sorted((run_dir / "checkpoints").glob("*_400_steps_replay_buffer.pkl"))
    buffer = pickle.loads(buffer_file[0].read_bytes())
    kept = frame.drop(index=gap + 1)
    np.testing.assert_array_equal(buffer.observations[:used, 0], np.stack(kept["observation"]))
    assert second.best_model.is_file()


def test_a_retrain_starts_from_the_parent_weights(parent):
    frame = logged_frame(parent["config"], parent["days"])
    # No gradient step in 100 steps: the final model is the parent's best model, weight for weight.
    result = retrain(
        parent["dir"],
        frame,
        parent["root"] / "frozen",
        100,
        overrides={"training.dqn.learning_starts": 1000},
        **QUIET,
    )
    assert result.lineage["simulated_days"]["source"] == "parent scenario"
    final = MaskableDQN.load(result.run_dir / "tiny_final.zip", device="cpu").q_net.state_dict()
    start = MaskableDQN.load(parent["dir"] / "best_model" / "best_model.zip", device="cpu").q_net.state_dict()
    assert all(th.equal(final[k], start[k]) for k in start)
    # A model of another network does not fit: one line saying so, before any step.
    mlp = tiny_config(dqn={"network": "mlp"})
    other = parent["root"] / "mlp.zip"
    build_model(mlp.training, make_train_env(mlp), "cpu").save(other)
    with pytest.raises(UserError, match="does not fit this config's agent"):
        train(parent["config"], parent["root"] / "misfit", init_model=other, **QUIET)
    assert not (parent["root"] / "misfit").exists()
    with pytest.raises(UserError, match="fleet of 4 vehicles"):
        retrain(parent["dir"], frame.assign(n_vehicles=9), parent["root"] / "none", 100, **QUIET)


# ------------------------------------------------------------------------------------------- gate
def handmade(parent, name: str, sign: float, edit=None):
    """A copy of the parent run whose best model scores each vehicle ``sign * (eta + deadhead)`` and
    never refuses (-1 the earliest, nearest vehicle: a sound heuristic; +1 the latest, farthest)."""
    run_dir = parent["root"] / name
    if not run_dir.exists():
        shutil.copytree(parent["dir"], run_dir)
        path = run_dir / "best_model" / "best_model.zip"
        model = MaskableDQN.load(path, device="cpu")
        net = model.q_net.q_net
        with th.no_grad():
            for p in net.parameters():
                p.zero_()
            net.encode_vehicle.weight[0, [2, 4]] = 1.0  # vehicle fields: eta_to_pickup, deadhead_km
            net.encode_out.weight[0, 0] = net.score_vehicle.weight[0, 0] = 1.0
            net.score_out.weight[0, 0] = sign
            net.refuse[2].bias.fill_(-1e3)
        model.save(path)
    return run_dir


@pytest.fixture(scope="module")
def held_out(parent):
    """Recent days replayed from the log and synthetic test days: the gate's held-out days."""
    scenario = parent["config"].scenario
    more = dataclasses.replace(scenario, splits=dataclasses.replace(scenario.splits, test_days=8))
    return days_from_records(records_of(parent["days"], scenario), scenario) + SyntheticScenario(more).days(
        "test"
    )


def test_the_gate_rejects_a_worse_candidate_and_says_why(parent, held_out):
    good, bad = handmade(parent, "good", -1.0), handmade(parent, "bad", 1.0)
    decision = gate(bad, good, held_out, n_resamples=500)
    assert not decision.promote and decision.verdict == KEEP
    failed = {d["kpi"] for d in decision.differences if not d["passed"]}
    assert failed == {"completion_rate", "on_time_rate", "reward"}
    assert decision.reason.startswith("keep production: completion_rate not shown non-inferior")
    assert "reward not shown better" in decision.reason
    assert decision.n_days == len(held_out) == 10

    # A trained model's sign-flipped copy (it prefers what it learned to avoid) is rejected too.
    flipped = parent["root"] / "flipped"
    shutil.copytree(parent["dir"], flipped)
    path = flipped / "best_model" / "best_model.zip"
    model = MaskableDQN.load(path, device="cpu")
    with th.no_grad():
        for layer in (model.q_net.q_net.score_out, model.q_net.q_net.refuse[2]):
            layer.weight.neg_()
            layer.bias.neg_()
    model.save(path)
    assert not gate(flipped, parent["dir"], held_out, n_resamples=500).promote


def test_the_gate_promotes_a_better_candidate(parent, held_out):
    good, bad = handmade(parent, "good", -1.0), handmade(parent, "bad", 1.0)
    decision = gate(good, bad, held_out, n_resamples=500)
    assert decision.promote and decision.verdict == PROMOTE, decision.reason
    by_kpi = {d["kpi"]: d for d in decision.differences}
    assert by_kpi["reward"]["ci_low"] > 0 and by_kpi["reward"]["test"] == "superiority"
    assert by_kpi["completion_rate"]["ci_low"] > -0.01 and by_kpi["on_time_rate"]["threshold"] == -0.01
    assert all(d["n_days"] == 10 for d in decision.differences)
    record = json.loads(json.dumps(decision.to_dict()))
    assert (
        record["verdict"] == PROMOTE and record["margin_completion"] == 0.01 and len(record["day_ids"]) == 10
    )
    assert record["candidate_sha256"] != record["production_sha256"] and "min_days" in record["rule"]
    # The same evidence over too few days is no evidence.
    few = gate(good, bad, held_out[:3], n_resamples=500)
    assert not few.promote and "3 days < min_days 5" in few.reason


def test_the_gate_does_not_promote_a_tie(parent, held_out):
    good = handmade(parent, "good", -1.0)
    decision = gate(good, good, held_out, n_resamples=500)
    assert not decision.promote
    assert all(d["mean_diff"] == 0.0 == d["ci_low"] == d["ci_high"] for d in decision.differences)
    assert (
        "reward not shown better" in decision.reason
        and "passed: completion_rate, on_time_rate" in decision.reason
    )
    with pytest.raises(UserError, match="distinct day_ids"):
        gate(good, good, held_out + held_out[:1])
