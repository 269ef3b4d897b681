"""``rl-lib bench env``: DispatchEnv decision rate next to CartPole-v1, in one process.

The machines are shared and noisy, so the two envs are timed in alternating rounds and
the figure of merit is the median of the per-round ratios.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rl_lib.envs import ENV_ID
from rl_lib.scenarios.synthetic import SyntheticScenario


@dataclass(frozen=True)
class EnvRates:
    cartpole_steps_per_s: float
    dispatch_steps_per_s: float
    dispatch_masked_steps_per_s: float
    ratio: float  # median over rounds of dispatch / cartpole (random actions, as the target states)
    masked_ratio: float  # same with actions drawn among feasible ones (assignments, not refusals)
    rounds: int
    steps_per_round: int


def _rate(env: gym.Env, steps: int, masked: bool, rng: np.random.Generator) -> float:
    env.reset(seed=int(rng.integers(2**31)))
    env.action_space.seed(int(rng.integers(2**31)))
    inner = env.unwrapped
    start = time.perf_counter()
    for _ in range(steps):
        if masked:
            action = rng.choice(np.flatnonzero(inner.action_masks()))
        else:
            action = env.action_space.sample()
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def measure_env_rates(
    steps: int = 20_000,
    rounds: int = 5,
    n_days: int = 20,
    seed: int = 0,
    scenario: SyntheticScenario | None = None,
) -> EnvRates:
    """Steps per second of CartPole-v1 and DispatchEnv (both via ``gym.make``), interleaved."""
    rng = np.random.default_rng(seed)
    days = (scenario or SyntheticScenario()).days("train", n_days)
    cartpole = gym.make("CartPole-v1")
    dispatch = gym.make(ENV_ID, days=days)
    cp, dp, dm = [], [], []
    for _ in range(rounds):
        cp.append(_rate(cartpole, steps, False, rng))
        dp.append(_rate(dispatch, steps, False, rng))
        dm.append(_rate(dispatch, steps, True, rng))
    cp_, dp_, dm_ = np.array(cp), np.array(dp), np.array(dm)
    return EnvRates(
        cartpole_steps_per_s=float(np.median(cp_)),
        dispatch_steps_per_s=float(np.median(dp_)),
        dispatch_masked_steps_per_s=float(np.median(dm_)),
        ratio=float(np.median(dp_ / cp_)),
        masked_ratio=float(np.median(dm_ / cp_)),
        rounds=rounds,
        steps_per_round=steps,
    )


def machine_description() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
