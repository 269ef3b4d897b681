"""The experiment configuration file: scenario, reward weights and training (YAML).

```yaml
scenario: {...}   # rl_lib.scenarios.config.ScenarioConfig; omitted keys keep their defaults
reward: {...}     # rl_lib.envs.core.RewardWeights
training: {...}   # TrainingConfig below (agent hyperparameters, checkpoints, evaluation)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_lib.config import bounded, from_dict, load_yaml, to_dict
from rl_lib.envs.core import RewardWeights
from rl_lib.errors import UserError
from rl_lib.scenarios.config import ScenarioConfig

NETWORKS = ("fleet", "mlp")
FLEET_CONTEXTS = ("deepsets", "attention")


@dataclass(frozen=True)
class DQNConfig:
    """Stable-Baselines3 DQN hyperparameters (:class:`~rl_lib.agents.MaskableDQN`).

    The original plan's settings are kept where they do no harm: replay buffer 100k, gamma
    0.99, learning rate 1e-3, target network updated every ``target_update_interval`` steps,
    epsilon decaying linearly from ``exploration_initial_eps`` to ``exploration_final_eps`` over
    ``exploration_fraction`` of the run. What makes the agent learn (BENCHMARKS.md, "An agent
    that learns"): ``network: fleet`` (:mod:`rl_lib.agents.fleet`, one scorer shared by every
    vehicle; ``mlp`` is the plan's 512-256-128 MLP on the flat vector, kept as the ablation's
    baseline), ``reward_scale`` 0.1, the Double DQN target, 3-step returns, a discount per 5 minutes of
    service day and a dueling head (better on held-out validation days; the agent study's reference,
    ``configs/ablation/dqn_reference.yaml``, has none).
    """

    network: str = bounded("fleet", choices=NETWORKS)
    #: Width of every layer of the fleet network (``network: fleet``).
    fleet_hidden: int = bounded(64, min=4, max=4096)
    fleet_context: str = bounded("deepsets", choices=FLEET_CONTEXTS)
    dueling: bool = True
    double_q: bool = True
    reward_scale: float = bounded(0.1, min=1e-6, max=1e6)
    #: n-step returns (1: one-step TD), masked and cut at episode ends by the replay buffer.
    n_steps: int = bounded(3, min=1, max=100)
    #: None: gamma per decision; else gamma per this many minutes of service day (time-aware).
    discount_tau_min: float | None = bounded(5.0, min=1e-3, max=1e4)

    learning_rate: float = bounded(1e-3, min=1e-7, max=1.0)
    buffer_size: int = bounded(100_000, min=1, max=100_000_000)
    learning_starts: int = bounded(1_000, min=0)
    batch_size: int = bounded(64, min=1, max=65_536)
    gamma: float = bounded(0.99, min=0.0, max=1.0)
    train_freq: int = bounded(4, min=1)
    gradient_steps: int = bounded(1, min=1)
    target_update_interval: int = bounded(1_000, min=1)
    exploration_fraction: float = bounded(0.3, min=0.0, max=1.0)
    exploration_initial_eps: float = bounded(1.0, min=0.0, max=1.0)
    exploration_final_eps: float = bounded(0.05, min=0.0, max=1.0)
    max_grad_norm: float = bounded(10.0, min=0.0)
    #: Hidden layers of the MLP (``network: mlp``).
    net_arch: tuple[int, ...] = bounded((512, 256, 128), min=1, max=65_536)
    #: Store each observation once (next observation = the following row): half the replay memory
    #: and checkpoint size. Exact here because DispatchEnv episodes are never truncated.
    optimize_memory_usage: bool = True


@dataclass(frozen=True)
class PPOConfig:
    """sb3-contrib MaskablePPO hyperparameters (SB3 defaults).

    ``network: fleet`` gives per-vehicle logits and a pooled critic
    (:class:`~rl_lib.agents.fleet.FleetActorCriticPolicy`); ``mlp`` SB3's MLP (``net_arch``).
    """

    network: str = bounded("fleet", choices=NETWORKS)
    fleet_hidden: int = bounded(64, min=4, max=4096)
    fleet_context: str = bounded("deepsets", choices=FLEET_CONTEXTS)

    learning_rate: float = bounded(3e-4, min=1e-7, max=1.0)
    n_steps: int = bounded(2048, min=2)
    batch_size: int = bounded(64, min=2)
    n_epochs: int = bounded(10, min=1)
    gamma: float = bounded(0.99, min=0.0, max=1.0)
    gae_lambda: float = bounded(0.95, min=0.0, max=1.0)
    clip_range: float = bounded(0.2, min=0.0, max=1.0)
    ent_coef: float = bounded(0.0, min=0.0, max=1.0)
    max_grad_norm: float = bounded(0.5, min=0.0)
    net_arch: tuple[int, ...] = bounded((256, 256), min=1, max=65_536)


@dataclass(frozen=True)
class CheckpointConfig:
    """The three-level checkpoint strategy (see :mod:`rl_lib.training.checkpoints`).

    ``checkpoint_freq`` None is adaptive (< 5 000 total steps: 100, < 20 000: 500, else 1 000);
    ``eval_freq`` None is 5 x checkpoint_freq and must be >= checkpoint_freq. An evaluation runs
    ``n_eval_episodes`` deterministic episodes on the first validation days. Training stops as
    *diverged* on a non-finite loss or weights, or when ``collapse_patience`` evaluations in a row
    fall below ``best - collapse_drop * max(|best|, 1)``.
    """

    checkpoint_freq: int | None = bounded(None, min=1)
    eval_freq: int | None = bounded(None, min=1)
    n_eval_episodes: int = bounded(10, min=1, max=10_000)
    keep_latest: int = bounded(2, min=1, max=100)
    collapse_patience: int = bounded(5, min=1)
    collapse_drop: float = bounded(1.0, min=0.0)


@dataclass(frozen=True)
class TrainingConfig:
    name: str = "dqn"
    algo: str = bounded("dqn", choices=("dqn", "maskable_ppo"))
    seed: int = bounded(0, min=0, max=2**32 - 1)
    total_timesteps: int = bounded(100_000, min=1)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            raise ValueError(f"name {self.name!r} must be non-empty letters, digits, '_', '-' or '.'")
        c = self.checkpoints
        if c.checkpoint_freq and c.eval_freq and c.eval_freq < c.checkpoint_freq:
            raise ValueError("checkpoints.eval_freq must be >= checkpoints.checkpoint_freq")


@dataclass(frozen=True)
class ExperimentConfig:
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def load_experiment(path: str | Path | None) -> ExperimentConfig:
    """Load and validate an experiment YAML; None gives the built-in defaults."""
    if path is None:
        return ExperimentConfig()
    return from_dict(ExperimentConfig, load_yaml(path), source=str(path))


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any] | None) -> ExperimentConfig:
    """Apply dotted-key overrides (``{"training.total_timesteps": 3000}``), validated like a file."""
    if not overrides:
        return config
    if not isinstance(overrides, dict):
        raise UserError(
            f"parameter overrides: expected a mapping of dotted keys to values, got {overrides!r}"
        )
    data = to_dict(config)
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UserError(f"parameter overrides: {key!r} does not name a config section")
            node = node[part]
        node[leaf] = value
    return from_dict(ExperimentConfig, data, source="parameter overrides")
