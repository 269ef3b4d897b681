"""Agents: SB3 DQN with action masking, and sb3-contrib MaskablePPO for comparison."""

from __future__ import annotations

from pathlib import Path

from sb3_contrib import MaskablePPO
from stable_baselines3.common.base_class import BaseAlgorithm

from rl_lib.agents.fleet import FleetActorCriticPolicy, FleetDQNPolicy, FleetQNetwork
from rl_lib.agents.maskable_dqn import DivergenceError, MaskableDQN, MaskableReplayBuffer
from rl_lib.errors import UserError

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"dqn": MaskableDQN, "maskable_ppo": MaskablePPO}


def dqn_kwargs(d) -> dict:
    """SB3 DQN keyword arguments from a :class:`~rl_lib.experiment.DQNConfig`."""
    return {
        "learning_rate": d.learning_rate,
        "buffer_size": d.buffer_size,
        "learning_starts": d.learning_starts,
        "batch_size": d.batch_size,
        "gamma": d.gamma,
        "train_freq": d.train_freq,
        "gradient_steps": d.gradient_steps,
        "target_update_interval": d.target_update_interval,
        "exploration_fraction": d.exploration_fraction,
        "exploration_initial_eps": d.exploration_initial_eps,
        "exploration_final_eps": d.exploration_final_eps,
        "max_grad_norm": d.max_grad_norm,
        "optimize_memory_usage": d.optimize_memory_usage,
        # SB3 cannot combine optimize_memory_usage with timeout handling; DispatchEnv never truncates.
        "replay_buffer_kwargs": {"handle_timeout_termination": not d.optimize_memory_usage},
        "n_steps": d.n_steps,
        "double_q": d.double_q,
        "reward_scale": d.reward_scale,
        "discount_tau_min": d.discount_tau_min,
        "policy_kwargs": (
            {"hidden": d.fleet_hidden, "context": d.fleet_context, "dueling": d.dueling}
            if d.network == "fleet"
            else {"net_arch": list(d.net_arch)}
        ),
    }


def policy_name(network: str) -> str:
    """MaskableDQN's policy alias for a config's ``network``."""
    return "FleetPolicy" if network == "fleet" else "MlpPolicy"


def build_model(training, env, device: str = "auto", tensorboard_log: str | None = None) -> BaseAlgorithm:
    """A fresh agent from a :class:`~rl_lib.experiment.TrainingConfig` on a (vectorised) env."""
    common = {"seed": training.seed, "device": device, "tensorboard_log": tensorboard_log, "verbose": 0}
    if training.algo == "dqn":
        return MaskableDQN(policy_name(training.dqn.network), env, **dqn_kwargs(training.dqn), **common)
    p = training.ppo
    return MaskablePPO(
        FleetActorCriticPolicy if p.network == "fleet" else "MlpPolicy",  # sb3-contrib's class is not ours
        env,
        learning_rate=p.learning_rate,
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        gamma=p.gamma,
        gae_lambda=p.gae_lambda,
        clip_range=p.clip_range,
        ent_coef=p.ent_coef,
        max_grad_norm=p.max_grad_norm,
        policy_kwargs=(
            {"hidden": p.fleet_hidden, "context": p.fleet_context}
            if p.network == "fleet"
            else {"net_arch": list(p.net_arch)}
        ),
        **common,
    )


def load_model(run_dir: str | Path, which: str = "best", device: str = "auto") -> BaseAlgorithm:
    """Load a run's ``best``, ``final`` or ``latest`` model with the class its metadata names.

    :param which: ``"best"`` (what the thesis reports), ``"final"`` or ``"latest"``.
    """
    from rl_lib.training.checkpoints import CheckpointManager
    from rl_lib.training.run_record import read_metadata

    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    algo = ALGORITHMS[meta["algo"]]
    manager = CheckpointManager(run_dir, meta["name"])
    if which == "best":
        path = manager.best_dir / "best_model.zip"
    elif which == "final":
        path = manager.final_model
    elif which == "latest":
        latest = manager.latest_valid()
        path = latest.model if latest else run_dir / "missing-latest-checkpoint.zip"
    else:
        raise ValueError(f"which must be 'best', 'final' or 'latest', got {which!r}")
    if not path.is_file():
        raise UserError(f"{path}: no {which} model in this run dir")
    return algo.load(path, device=device)


__all__ = [
    "ALGORITHMS", "DivergenceError", "FleetActorCriticPolicy", "FleetDQNPolicy", "FleetQNetwork",
    "MaskableDQN", "MaskablePPO", "MaskableReplayBuffer", "build_model", "dqn_kwargs", "load_model",
    "policy_name",
]  # fmt: skip
