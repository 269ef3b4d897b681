"""DispatchEnv: API checks, determinism, masking, invalid actions, KPIs in info."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rl_lib
from rl_lib.envs import ENV_ID, DispatchEnv
from rl_lib.envs.core import DispatchCore
from rl_lib.policies import NearestPolicy, run_sequential


@pytest.fixture
def env(test_days) -> DispatchEnv:
    return DispatchEnv(days=test_days)


def test_gymnasium_and_sb3_check_env_pass_without_warnings(test_days):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(gym.make(ENV_ID, days=test_days).unwrapped)  # made: has a spec
        sb3_check_env(DispatchEnv(days=test_days))


def test_registered_id_makes_the_env():
    made = gym.make(ENV_ID, n_default_days=2)
    assert isinstance(made.unwrapped, rl_lib.DispatchEnv)
    obs, info = made.reset(seed=0)
    assert made.observation_space.contains(obs)
    assert made.action_space.n == 13  # 12 vehicles of the default fleet + refuse


def rollout(env: DispatchEnv, seed: int, steps: int = 400):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    trace = [obs]
    rewards = []
    for _ in range(steps):
        action = rng.choice(np.flatnonzero(env.action_masks()))
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append(obs)
        rewards.append(reward)
        if terminated:
            obs, info = env.reset()
            trace.append(obs)
    return np.array(trace), np.array(rewards)


def test_deterministic_for_a_seed(test_days):
    a = rollout(DispatchEnv(days=test_days), seed=5)
    b = rollout(DispatchEnv(days=test_days), seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_observations_stay_in_the_space(env):
    trace, _ = rollout(env, seed=1, steps=600)
    assert trace.dtype == np.float32
    assert np.all(trace >= 0.0) and np.all(trace <= 1.0)


def test_mask_in_info_matches_action_masks_and_refusal_is_always_allowed(env):
    obs, info = env.reset(seed=0)
    for _ in range(200):
        mask = env.action_masks()
        np.testing.assert_array_equal(info["action_mask"], mask)
        assert mask[-1]
        # The observation's per-vehicle "feasible" column is the mask as well.
        np.testing.assert_array_equal(obs[11 : 11 + env.n_vehicles] == 1.0, mask[:-1])
        obs, _, terminated, _, info = env.step(int(np.flatnonzero(mask)[0]))
        if terminated:
            break


def test_invalid_action_is_a_penalised_refusal_and_leaves_vehicles_untouched(hand_day):
    env = DispatchEnv(days=[hand_day], auto_refuse_infeasible=False)
    env.reset(seed=0)
    for action in (0, 1, 3):  # b0 -> v0, b1 -> v1, b2 refused (no stretcher unit)
        env.step(action)
    free_at, nodes = env.core.free_at.copy(), env.core.vehicle_node.copy()
    assert not env.action_masks()[2]
    _, reward, terminated, _, info = env.step(2)  # v2 is off shift until 10:00: masked
    w = env.core.weights
    assert info["invalid_action"] and reward == -(w.refusal_penalty + w.invalid_action_penalty)
    assert info["outcome"]["refused"] == 1.0
    np.testing.assert_array_equal(env.core.free_at, free_at)
    np.testing.assert_array_equal(env.core.vehicle_node, nodes)
    assert terminated and info["kpis"]["served"] == 2


@pytest.mark.parametrize("auto", [False, True])
def test_hand_day_through_the_env_gives_the_hand_rewards(hand_day, auto):
    env = DispatchEnv(days=[hand_day], auto_refuse_infeasible=auto)
    env.reset(seed=0)
    rewards = []
    # b2 (a stretcher, no stretcher unit) has no feasible vehicle: with auto, the env refuses it and
    # its penalty is folded into the reward of b1's decision.
    for action in (0, 1, 0) if auto else (0, 1, 3, 0):
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    assert rewards == pytest.approx([9.5, 19.7 - 5.0, 13.0] if auto else [9.5, 19.7, -5.0, 13.0])
    assert terminated and not truncated
    assert info["kpis"]["reward"] == pytest.approx(37.2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_env_and_core_driver_agree(test_days):
    """Playing the nearest-vehicle policy through the env equals running it on the core."""
    day = test_days[0]
    env = DispatchEnv(days=[day])
    env.reset(seed=0)
    policy, total, terminated = NearestPolicy(), 0.0, False
    while not terminated:
        choice = policy.choose(env.core, env._insertion)
        _, reward, terminated, _, info = env.step(env.n_vehicles if choice < 0 else choice)
        total += reward
    expected = run_sequential(NearestPolicy(), day, DispatchCore()).kpis()
    assert info["kpis"] == expected
    assert total == pytest.approx(expected["reward"])


def test_day_sampling_cycle_and_day_index_option(test_days):
    env = DispatchEnv(days=test_days, day_sampling="cycle")
    ids = [env.reset()[1]["day_id"] for _ in range(4)]
    assert ids == [d.day_id for d in test_days] + [test_days[0].day_id]
    assert env.reset(options={"day_index": 2})[1]["day_id"] == test_days[2].day_id


def test_render_ansi_describes_the_pending_decision(test_days):
    env = DispatchEnv(days=test_days, render_mode="ansi")
    env.reset(seed=0)
    assert "booking 1/" in env.render()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"days": []}, "at least one day"), ({"day_sampling": "shuffle"}, "day_sampling"),
     ({"render_mode": "human"}, "render_mode")],
)  # fmt: skip
def test_bad_constructor_arguments_are_rejected(kwargs, message, test_days):
    kwargs = {"days": test_days, **kwargs}
    with pytest.raises(ValueError, match=message):
        DispatchEnv(**kwargs)


def test_forced_refusals_are_decided_by_the_env_with_the_same_day_total(test_days):
    """Bookings no vehicle can serve are refused by the env: fewer decisions, same reward and KPIs."""
    day = test_days[0]
    totals, kpis, decisions = {}, {}, {}
    for auto in (True, False):
        env = DispatchEnv(days=[day], auto_refuse_infeasible=auto)
        env.reset(seed=0)
        policy, total, terminated, n, forced = NearestPolicy(), 0.0, False, 0, 0
        while not terminated:
            assert not auto or env._insertion.n_feasible > 0  # every presented booking has a choice
            choice = policy.choose(env.core, env._insertion)
            _, reward, terminated, _, info = env.step(env.n_vehicles if choice < 0 else choice)
            total, n, forced = total + reward, n + 1, forced + info["auto_refused"]
            assert info["outcome"]["served"] + info["outcome"]["refused"] + info["outcome"]["missed"] == (
                1 + info["auto_refused"]
            )
        totals[auto], kpis[auto], decisions[auto] = total, info["kpis"], (n, forced)
    assert kpis[True] == kpis[False]
    assert totals[True] == pytest.approx(totals[False]) == pytest.approx(kpis[False]["reward"])
    n, forced = decisions[True]
    assert forced > 0 and n + forced == day.n_bookings == decisions[False][0]


def test_elapsed_minutes_and_vehicle_types_in_the_observation(hand_day):
    env = DispatchEnv(days=[hand_day], auto_refuse_infeasible=False)
    obs, _ = env.reset(seed=0)
    k = env.n_vehicles
    carries = obs[11 + 7 * k : 11 + 9 * k].reshape(2, k)  # fields 7-8: wheelchair, stretcher
    np.testing.assert_array_equal(carries, [[0, 1, 0], [0, 0, 0]])  # car, wheelchair van, car
    _, _, _, _, info = env.step(0)
    assert info["elapsed_min"] == pytest.approx(490.0 - 480.0)  # b0 decided at 480, b1 at 490


def test_upcoming_demand_counts_known_undecided_bookings_by_mobility(test_days):
    day = test_days[0]
    b = day.bookings
    i = day.n_bookings // 2
    now = b.decision_time[i]
    later = np.arange(day.n_bookings) > i
    soon = later & (b.known_at <= now) & (b.requested_pickup <= now + 120.0)
    expected = [int((soon & (b.mobility == m)).sum()) for m in range(3)]
    assert day.upcoming_at_decision[i].tolist() == expected
    assert sum(expected) > 0


def test_pending_bookings_no_longer_saturates(test_days):
    env = DispatchEnv(days=test_days, day_sampling="cycle")
    pending = []
    for _ in test_days:
        obs, _ = env.reset()
        terminated = False
        while not terminated:
            pending.append(obs[-6])
            obs, _, terminated, _, _ = env.step(env.n_vehicles)
    assert max(pending) < 1.0
