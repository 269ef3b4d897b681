"""Exact resume: what a latest checkpoint holds beyond SB3's own zip and replay buffer.

SB3's zip already carries the weights, optimizer, ``num_timesteps``, ``_n_calls``,
``_n_updates``, the exploration and learning-rate schedules and ``_last_obs``. To continue
*exactly* (bitwise-equal weights on CPU) a run also needs the random streams (python, numpy,
torch), the training env's mid-episode state (its day, bookings decided so far, its own
random generator) and the Monitor wrapper's episode accumulators. They are captured here at
a rollout boundary and restored after ``Algo.load``.
"""

from __future__ import annotations

import io
import pickle
import random
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.monitor import Monitor

_MONITOR_FIELDS = (
    "rewards",
    "needs_reset",
    "episode_returns",
    "episode_lengths",
    "episode_times",
    "total_steps",
)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}
    if th.cuda.is_available():
        state["torch_cuda"] = th.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if "torch_cuda" in state and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["torch_cuda"])


def capture(model, extra: dict[str, Any]) -> dict[str, Any]:
    """Picklable state of the model's training envs and of every random stream."""
    vec_env = model.get_env()
    envs = []
    for env in vec_env.envs:
        monitor = env if isinstance(env, Monitor) else None
        envs.append(
            {
                "env": env.unwrapped.get_state(),
                "action_space": env.action_space.np_random.bit_generator.state,
                "monitor": {k: getattr(monitor, k) for k in _MONITOR_FIELDS} if monitor else None,
            }
        )
    return {
        "num_timesteps": model.num_timesteps,
        "rng": rng_state(),
        "model_action_space": model.action_space.np_random.bit_generator.state,
        "envs": envs,
        "extra": extra,
    }


def restore(model, state: dict[str, Any]) -> dict[str, Any]:
    """Put the envs and random streams back; returns the ``extra`` dict given to :func:`capture`."""
    if state["num_timesteps"] != model.num_timesteps:
        raise ValueError(
            f"checkpoint state is for step {state['num_timesteps']} but the model is at {model.num_timesteps}"
        )
    for env, saved in zip(model.get_env().envs, state["envs"], strict=True):
        env.unwrapped.set_state(saved["env"])
        env.action_space.np_random.bit_generator.state = saved["action_space"]
        if saved["monitor"] is not None:
            for key, value in saved["monitor"].items():
                setattr(env, key, value)
    model.action_space.np_random.bit_generator.state = state["model_action_space"]
    set_rng_state(state["rng"])  # last: loading and restoring above must not consume randomness after it
    return state["extra"]


def model_bytes(model) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def replay_buffer_snapshot(model, rows_written_meanwhile: int):
    """``(serialise, size_estimate)`` for the model's replay buffer, or None without one.

    ``serialise()`` produces what SB3's ``save_replay_buffer`` writes; it may run in another
    thread while training goes on (see :meth:`MaskableReplayBuffer.snapshot`).
    """
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    if hasattr(buffer, "snapshot"):
        twin = buffer.snapshot(rows_written_meanwhile)
    else:  # a plain SB3 buffer: serialise now
        data = pickle.dumps(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        return (lambda: data), len(data)
    size = sum(a.nbytes for a in vars(twin).values() if isinstance(a, np.ndarray))
    return (lambda: pickle.dumps(twin, protocol=pickle.HIGHEST_PROTOCOL)), size


def state_bytes(state: dict[str, Any]) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
