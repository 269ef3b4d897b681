"""``rl-lib bench env``: DispatchEnv decision rate next to CartPole-v1, in one process.

The machines are shared and noisy, so the two envs are timed in alternating rounds and
the figure of merit is the median of the per-round ratios.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

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


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainRates:
    cartpole_dqn_steps_per_s: float
    dispatch_dqn_steps_per_s: float
    dispatch_maskable_dqn_steps_per_s: float
    dispatch_fleet_dqn_steps_per_s: float
    ratio: float  # median over rounds: plain DQN on DispatchEnv / DQN on CartPole
    masked_ratio: float  # MaskableDQN (MLP) on DispatchEnv / DQN on CartPole
    fleet_ratio: float  # MaskableDQN with the fleet network / with the MLP, both on DispatchEnv
    rounds: int
    steps_per_round: int


#: MaskableDQN's own arguments, which SB3's plain DQN does not take.
MASKABLE_ONLY = ("double_q", "reward_scale", "discount_tau_min")


def measure_train_rates(steps: int = 5_000, rounds: int = 3, dqn_config=None) -> TrainRates:
    """SB3 DQN steps/s on CartPole-v1 and on DispatchEnv (the MLP of ``dqn_config``, same settings),
    and MaskableDQN with the MLP and with the fleet network, interleaved rounds."""
    import dataclasses

    import torch as th
    from stable_baselines3 import DQN

    from rl_lib.agents import MaskableDQN, dqn_kwargs, policy_name
    from rl_lib.envs import DispatchEnv
    from rl_lib.experiment import DQNConfig

    th.set_num_threads(1)
    config = dqn_config or DQNConfig()
    mlp = {**dqn_kwargs(dataclasses.replace(config, network="mlp")), "device": "cpu", "seed": 0}
    fleet = {**dqn_kwargs(dataclasses.replace(config, network="fleet")), "device": "cpu", "seed": 0}
    # SB3's own n-step buffer refuses optimize_memory_usage: plain DQN keeps one-step returns.
    plain = {**{k: v for k, v in mlp.items() if k not in MASKABLE_ONLY}, "n_steps": 1}
    days = SyntheticScenario().split_days("train")

    def rate(algo, policy, env, kwargs) -> float:
        model = algo(policy, env, **kwargs)
        start = time.perf_counter()
        model.learn(steps)
        return steps / (time.perf_counter() - start)

    cp, dq, mq, fq = [], [], [], []
    for _ in range(rounds):
        cp.append(rate(DQN, "MlpPolicy", gym.make("CartPole-v1"), plain))
        dq.append(rate(DQN, "MlpPolicy", DispatchEnv(days=days), plain))
        mq.append(rate(MaskableDQN, "MlpPolicy", DispatchEnv(days=days), mlp))
        fq.append(rate(MaskableDQN, policy_name("fleet"), DispatchEnv(days=days), fleet))
    cp_, dq_, mq_, fq_ = (np.array(x) for x in (cp, dq, mq, fq))
    return TrainRates(
        float(np.median(cp_)), float(np.median(dq_)), float(np.median(mq_)), float(np.median(fq_)),
        float(np.median(dq_ / cp_)), float(np.median(mq_ / cp_)), float(np.median(fq_ / mq_)), rounds, steps,
    )  # fmt: skip


@dataclass(frozen=True)
class FullBufferCosts:
    buffer_mb: float
    snapshot_s: float  # training-thread stall per checkpoint (model + buffer + state to memory)
    write_s: float  # background write of that checkpoint (files, fsync, manifest)
    resume_s: float  # start-up: find and verify the latest checkpoint, load model + buffer, restore


def measure_full_buffer_costs(work_dir, buffer_size: int = 100_000) -> FullBufferCosts:
    """Checkpoint snapshot, write and resume start-up with a full replay buffer of the default agent."""
    from pathlib import Path

    from rl_lib.agents import build_model
    from rl_lib.config import from_dict
    from rl_lib.experiment import ExperimentConfig
    from rl_lib.training import load_checkpoint, make_eval_env, make_train_env
    from rl_lib.training.callbacks import CheckpointCallback, EvalCallback, StopRequest
    from rl_lib.training.checkpoints import CheckpointManager

    cfg = from_dict(ExperimentConfig, {"training": {"dqn": {"buffer_size": buffer_size}}})
    env = make_train_env(cfg)
    model = build_model(cfg.training, env, device="cpu")
    model.learn(200)  # a real _last_obs, env mid-episode
    buffer = model.replay_buffer
    rng = np.random.default_rng(0)
    # Every row written, as in a buffer that really filled (untouched pages would make the first copy
    # pay the page faults: 10x the stall of a real run's snapshot).
    buffer.observations[:] = rng.random(buffer.observations.shape, dtype=np.float32)
    if getattr(buffer, "next_observations", None) is not None:  # absent with optimize_memory_usage
        buffer.next_observations[:] = buffer.observations
    for name in ("actions", "rewards", "dones", "timeouts", "elapsed_min"):
        getattr(buffer, name)[:] = rng.integers(0, 2, getattr(buffer, name).shape)
    buffer.next_action_masks[:] = rng.random(buffer.next_action_masks.shape) < 0.5
    buffer.full = True
    manager = CheckpointManager(Path(work_dir), "bench")
    evaluator = EvalCallback(make_eval_env(cfg), manager, 1, 1, on_evaluation=lambda r: None)
    saver = CheckpointCallback(manager, 1, StopRequest(), evaluator)
    saver.init_callback(model)
    saver.save()
    snapshot_s = saver.stall_seconds
    manager.wait()
    write_s = manager.last_save_seconds
    size = manager.latest_valid().replay_buffer.stat().st_size / 1e6
    start = time.perf_counter()
    latest = manager.latest_valid()
    load_checkpoint(latest, make_train_env(cfg), "dqn", "cpu")
    resume_s = time.perf_counter() - start
    return FullBufferCosts(size, snapshot_s, write_s, resume_s)


@dataclass(frozen=True)
class TuneRun:
    label: str
    workers: int
    pruning: bool
    trials: int
    seconds: float
    pruned: int

    @property
    def trials_per_hour(self) -> float:
        return 3600 * self.trials / self.seconds


def measure_tuning_rates(config: str | Path, trials: int, timesteps_per_trial: int, work_dir: str | Path,
                         workers: int = 2, seed: int = 0) -> list[TuneRun]:  # fmt: skip
    """Wall time of the same trials run three ways, one after the other: 1 worker without pruning,
    ``workers`` without pruning, ``workers`` with pruning.

    The ``trials`` hyperparameter sets are drawn once from the search space (seeded random sampler)
    and queued in each fresh SQLite study in ``work_dir``, so every variant trains exactly the same
    configurations: the ratio of the first two is the parallel speed-up, the last two give trials per
    hour with and without pruning on the same work.
    """
    import optuna

    from rl_lib.tuning.study import TuneSettings, load_study, make_spec, optimize

    space = make_spec(config, out=work_dir).space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    param_sets = [space.suggest(draw.ask()) for _ in range(trials)]
    runs = []
    for label, n_workers, pruning in (("1 worker, no pruning", 1, False),
                                      (f"{workers} workers, no pruning", workers, False),
                                      (f"{workers} workers, pruning", workers, True)):  # fmt: skip
        settings = TuneSettings(timesteps_per_trial=timesteps_per_trial, seed=seed, pruning=pruning)
        spec = make_spec(config, f"bench_w{n_workers}_{'pruned' if pruning else 'full'}", work_dir,
                         settings=settings)  # fmt: skip
        spec.study_dir.mkdir(parents=True)
        study = load_study(spec)
        for params in param_sets:
            study.enqueue_trial(params)
        start = time.perf_counter()
        code = optimize(spec, trials, n_workers)
        seconds = time.perf_counter() - start
        finished = [t for t in load_study(spec).get_trials(deepcopy=False) if t.state.is_finished()]
        if code != 0 or len(finished) != trials:
            raise RuntimeError(f"{label}: {len(finished)} of {trials} trials finished (exit {code})")
        pruned = sum(t.state.name == "PRUNED" for t in finished)
        runs.append(TuneRun(label, n_workers, pruning, len(finished), seconds, pruned))
    return runs
