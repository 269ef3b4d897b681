"""``train(config) -> run dir``: the whole training loop, top to bottom.

1. Resolve the run dir; if it already holds a run of this experiment, find its newest valid
   latest checkpoint (never the best) and refuse to resume a diverged run unless forced.
2. Build the training env (train days, drawn at random) and the evaluation env (the first
   validation days, always the same ones).
3. Build a fresh agent, or load the checkpoint and restore its random streams and the env's
   mid-episode state, so that the run continues exactly where it stopped. A fresh agent may start
   from another model's weights (``init_model``) and with experience already in its replay buffer
   (``prefill``): a retrain of a production model on logged experience (:mod:`rl_lib.feedback`).
   A resume ignores both: its checkpoint holds the weights and the buffer.
4. ``model.learn`` with three callbacks: KPI logging, level-2 evaluation (best model) and
   level-1 checkpoints; SIGTERM, SIGINT and the wall-time budget stop it cleanly at the next
   rollout boundary, after a checkpoint.
5. On completion: a last evaluation and checkpoint at the final step, the final model, and
   the metadata with status ``completed`` (``interrupted`` or ``diverged`` otherwise).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from rl_lib.agents import ALGORITHMS, DivergenceError, build_model
from rl_lib.config import to_dict
from rl_lib.envs import DispatchEnv
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.training.callbacks import CheckpointCallback, EvalCallback, KPILoggerCallback, StopRequest
from rl_lib.training.checkpoints import (
    Checkpoint,
    CheckpointManager,
    DiskBudgetExceeded,
    adaptive_checkpoint_freq,
    kaggle_disk_budget,
)
from rl_lib.training.resume import model_bytes, restore
from rl_lib.training.run_record import (
    COMPLETED,
    DIVERGED,
    EXIT_COMPLETED,
    EXIT_DISK_BUDGET,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    RunRecord,
    run_dir_name,
)

STOPPED_BY_CALLER = "stopped by on_evaluation"
DIVERGED_ADVICE = (
    "this run diverged (see stop_reason in its metadata); resuming would continue from unstable weights. "
    "Lower the learning rate and restart from scratch in a new --run-dir, or pass --force-resume"
)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    status: str
    timesteps: int
    target: int
    reason: str | None
    exit_code: int


def on_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def quick(config: ExperimentConfig) -> ExperimentConfig:
    """The ``--quick`` smoke test: 2 steps, a checkpoint and an evaluation at each."""
    t = config.training
    return dataclasses.replace(
        config,
        training=dataclasses.replace(
            t,
            total_timesteps=2,
            checkpoints=dataclasses.replace(t.checkpoints, checkpoint_freq=1, eval_freq=1),
            dqn=dataclasses.replace(t.dqn, learning_starts=1, train_freq=1),
            ppo=dataclasses.replace(t.ppo, n_steps=2, batch_size=2),
        ),
    )


def default_run_dir(config: ExperimentConfig) -> Path:
    return Path("runs") / run_dir_name(config.training.name, config.training.seed)


def make_train_env(config: ExperimentConfig) -> DummyVecEnv:
    days = SyntheticScenario(config.scenario).split_days("train")
    return DummyVecEnv([lambda: Monitor(DispatchEnv(days=days, reward=config.reward))])


def make_eval_env(config: ExperimentConfig) -> DispatchEnv:
    n = config.training.checkpoints.n_eval_episodes
    available = config.scenario.splits.validation_days
    if n > available:
        raise UserError(
            f"training.checkpoints.n_eval_episodes is {n} but the validation split holds {available} days; "
            "lower it or raise scenario.splits.validation_days"
        )
    return DispatchEnv(days=SyntheticScenario(config.scenario).days("validation", n), reward=config.reward)


def config_difference(recorded: dict, config: ExperimentConfig) -> str | None:
    """Where a run's recorded ``config`` (as :func:`rl_lib.config.to_dict` gives it) differs from
    ``config``: the first differing ``section.key``, or None for the same experiment.
    ``training.total_timesteps`` may differ (a new target continues the same run); a missing or
    malformed record differs in its first section."""
    recorded = recorded if isinstance(recorded, dict) else {}
    for section, values in to_dict(config).items():
        old, new = recorded.get(section), dict(values)
        old = dict(old) if isinstance(old, dict) else {}
        if section == "training":
            old.pop("total_timesteps", None)
            new.pop("total_timesteps", None)
        if old != new:
            return f"{section}.{next((k for k in new if old.get(k) != new[k]), '?')}"
    return None


def check_same_experiment(previous: dict, config: ExperimentConfig, run_dir: Path) -> None:
    """Refuse to resume a run dir made with another configuration (:func:`config_difference`)."""
    old = previous.get("config", {})
    differs = config_difference(old, config)
    if differs is not None:
        raise UserError(
            f"{run_dir} holds a run with a different configuration ({differs} differs); "
            "use another --run-dir for a new experiment"
        )
    old_target = old.get("training", {}).get("total_timesteps")
    if old_target != config.training.total_timesteps:
        warnings.warn(
            f"total_timesteps changes from {old_target} to {config.training.total_timesteps}: the schedules "
            "(epsilon, learning rate) stretch, so the continuation is not the run the old target planned",
            stacklevel=3,
        )


def load_checkpoint(
    checkpoint: Checkpoint, env: DummyVecEnv, algo: str, device: str
) -> tuple[BaseAlgorithm, dict]:
    """Load a latest checkpoint and put back everything an exact continuation needs."""
    # env=None, then set_env: loading with an env would reseed it and break the continuation.
    model = ALGORITHMS[algo].load(checkpoint.model, env=None, device=device)
    model.set_env(env, force_reset=False)
    if checkpoint.replay_buffer.is_file():
        model.load_replay_buffer(checkpoint.replay_buffer)
    extra = restore(model, pickle.loads(checkpoint.state.read_bytes()))
    return model, extra


def load_weights(model: BaseAlgorithm, path: Path) -> None:
    """Put a saved model's weights and optimizer state into ``model`` (same algo and network)."""
    if not path.is_file():
        raise UserError(f"init_model {path}: no such model file")
    try:
        model.set_parameters(str(path), exact_match=True, device=model.device)
    except (ValueError, RuntimeError, KeyError) as exc:  # other algo, other network or other sizes
        raise UserError(f"init_model {path} does not fit this config's agent ({str(exc).splitlines()[0]}); "
                        "start from a model of the same algo and network") from None  # fmt: skip


def train(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    max_wall_time: float | None = None,
    disk_budget: int | None = None,
    device: str = "auto",
    force_resume: bool = False,
    progress_bar: bool = False,
    torch_threads: int | None = 1,
    on_evaluation: Callable[[dict, list[dict]], bool] | None = None,
    init_model: str | Path | None = None,
    prefill: Callable[[BaseAlgorithm], int] | None = None,
    metadata: dict | None = None,
    log=print,
) -> TrainResult:
    """Train (or resume) the agent the config describes; see the module docstring.

    :param max_wall_time: seconds this session may run; it stops cleanly, interrupted, before.
    :param disk_budget: bytes the run dir may hold (default:
        :data:`~rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET`
        on Kaggle, unlimited elsewhere).
    :param torch_threads: torch CPU threads; 1 (default) is fastest for these small networks and
        immune to oversubscription on shared machines. None leaves torch's default.
    :param on_evaluation: called after each evaluation with its record and the whole history
        (resumed evaluations included); returning True stops the run as interrupted at the next
        checkpoint, with reason "stopped by on_evaluation" (the tuner's pruning).
    :param init_model: fresh runs only: a model ``.zip`` of the same algo and network whose weights
        (and optimizer state) the agent starts from; recorded as ``init_model``.
    :param prefill: fresh runs only: ``prefill(model)`` adds experience to the new agent's replay
        buffer before learning and returns how many transitions; recorded as ``prefilled_transitions``.
    :param metadata: fresh runs only: more fields for the metadata (e.g. a retrain's lineage).
    """
    if torch_threads is not None:
        th.set_num_threads(torch_threads)
    t = config.training
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    checkpoint_freq = t.checkpoints.checkpoint_freq or adaptive_checkpoint_freq(t.total_timesteps)
    eval_freq = t.checkpoints.eval_freq or 5 * checkpoint_freq
    if eval_freq < checkpoint_freq:
        raise UserError(f"eval_freq ({eval_freq}) must be >= checkpoint_freq ({checkpoint_freq})")
    if on_kaggle():
        disk_budget = kaggle_disk_budget(disk_budget)
    manager = CheckpointManager(run_dir, t.name, t.checkpoints.keep_latest, disk_budget)

    # 1. New run, or resume?
    previous = manager.read_metadata()
    latest = None
    if previous is None and run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists, is not empty and holds no {manager.metadata_path.name}; "
                        "choose an empty or new --run-dir")  # fmt: skip
    if previous is not None:
        check_same_experiment(previous, config, run_dir)
        if previous.get("status") == DIVERGED and not force_resume:
            raise UserError(DIVERGED_ADVICE)
        latest = manager.latest_valid()
        if previous.get("status") == COMPLETED and latest and latest.step >= t.total_timesteps:
            log(f"{run_dir}: already completed ({latest.step} / {t.total_timesteps} steps); nothing to do")
            return TrainResult(run_dir, COMPLETED, latest.step, t.total_timesteps, None, EXIT_COMPLETED)

    # 2. Envs.
    eval_env = make_eval_env(config)
    train_env = make_train_env(config)

    # 3. Agent.
    tensorboard = str(run_dir / "tensorboard")
    extra: dict = {}
    started: dict = {}  # what a fresh run records of how it started (a resume keeps the record's)
    if latest is not None:
        model, extra = load_checkpoint(latest, train_env, t.algo, device)
        model.tensorboard_log = tensorboard
        log(f"Resuming {run_dir} from its latest checkpoint: {model.num_timesteps} steps done, "
            f"{t.total_timesteps - model.num_timesteps} remaining")  # fmt: skip
    else:
        if previous is not None:
            log(f"{run_dir}: no valid checkpoint yet; starting from scratch")
        model = build_model(t, train_env, device, tensorboard)
        started = dict(metadata or {})
        if init_model is not None:
            load_weights(model, Path(init_model))
            started["init_model"] = str(init_model)
        if prefill is not None:
            started["prefilled_transitions"] = int(prefill(model))
    record = RunRecord.start(
        manager,
        previous,
        name=t.name,
        algo=t.algo,
        seed=t.seed,
        config=to_dict(config),
        device=str(model.device),
        timesteps={"done": model.num_timesteps, "target": t.total_timesteps},
        checkpoint_freq=checkpoint_freq,
        eval_freq=eval_freq,
        disk_budget_bytes=disk_budget,
        **started,
    )
    manager.on_event = record.checkpoint_event

    # 4. Learn under the three-level checkpoint callbacks.
    stop = StopRequest(max_wall_time)

    def evaluated(result: dict) -> None:
        record.evaluation(result, evaluator.history, evaluator.best)
        if on_evaluation is not None and on_evaluation(result, evaluator.history) and stop.reason is None:
            stop.reason = STOPPED_BY_CALLER

    evaluator = EvalCallback(
        eval_env,
        manager,
        eval_freq,
        t.checkpoints.n_eval_episodes,
        on_evaluation=evaluated,
        collapse_patience=t.checkpoints.collapse_patience,
        collapse_drop=t.checkpoints.collapse_drop,
    )
    if "eval" in extra:
        evaluator.load_state(extra["eval"], manager.read_best())
    elif previous is not None:  # no usable checkpoint, but maybe a best model already on disk
        evaluator.adopt_best_on_disk(manager.read_best())
    saver = CheckpointCallback(manager, checkpoint_freq, stop, evaluator)
    status, reason, code = COMPLETED, None, EXIT_COMPLETED
    with stop.catching_signals():
        try:
            model.learn(
                total_timesteps=t.total_timesteps - model.num_timesteps,
                callback=[KPILoggerCallback(), evaluator, saver],
                reset_num_timesteps=latest is None,
                tb_log_name=t.name,
                progress_bar=progress_bar,
            )
            if saver.halted:
                status, reason, code = INTERRUPTED, stop.reason, EXIT_INTERRUPTED
            else:
                # 5. Completed: evaluate and checkpoint the final step too, then the final model.
                if not evaluator.history or evaluator.history[-1]["step"] != model.num_timesteps:
                    evaluator.evaluate()
                if saver.last_saved_step != model.num_timesteps:
                    saver.save()
                manager.wait()
                manager.save_final(model_bytes(model))
        except DivergenceError as exc:
            status, reason, code = DIVERGED, str(exc), EXIT_DIVERGED
        except DiskBudgetExceeded as exc:
            status, reason, code = INTERRUPTED, str(exc), EXIT_DISK_BUDGET
        except BaseException as exc:  # a crash: record it, keep the checkpoints, re-raise
            manager.wait()
            record.finish(INTERRUPTED, saver.last_saved_step or 0, f"crashed: {exc!r}")
            raise
        finally:
            manager.wait()
    # After a stop, the steps taken since the last checkpoint are discarded: report what is saved.
    done = model.num_timesteps if status == COMPLETED else (saver.last_saved_step or 0)
    stalls = record.data.get("checkpoint_stall_s", 0.0) + saver.stall_seconds
    record.finish(status, done, reason, best=evaluator.best, evaluations=evaluator.history,
                  checkpoint_stall_s=round(stalls, 3), episodes=count_episodes(model))  # fmt: skip
    log(f"{run_dir}: {status} at {done} / {t.total_timesteps} steps" + (f" ({reason})" if reason else ""))
    return TrainResult(run_dir, status, done, t.total_timesteps, reason, code)


def count_episodes(model: BaseAlgorithm) -> int:
    """Training episodes finished so far, over every session (the Monitor state is checkpointed)."""
    return sum(len(env.get_episode_rewards()) for env in model.get_env().envs)


def seed_run_dir(results_dir: str | Path, config: ExperimentConfig, seed: int) -> Path:
    return Path(results_dir) / run_dir_name(config.training.name, seed)


def _train_one(
    config: ExperimentConfig, run_dir: Path, kwargs: dict, deadline: float | None = None
) -> TrainResult:
    """One run of :func:`train_seeds`; with a ``deadline``, its wall-time budget is what is left of it
    when the run starts (runs that wait for a free worker start later)."""
    if deadline is not None:
        left = max(deadline - time.time(), 1e-3)
        given = kwargs.get("max_wall_time")
        kwargs = {**kwargs, "max_wall_time": left if given is None else min(given, left)}
    return train(config, run_dir, **kwargs)


def train_seeds(
    config: ExperimentConfig,
    seeds: Sequence[int],
    results_dir: str | Path,
    workers: int | None = None,
    deadline: float | None = None,
    **train_kwargs,
) -> list[TrainResult]:
    """Train one run per seed, in parallel worker processes; each is a normal resumable run dir.

    Run dirs are ``results_dir/{name}_seed{seed}``; calling again resumes unfinished seeds and
    skips completed ones. ``workers`` defaults to one per CPU core (each run uses one torch
    thread).

    :param deadline: ``time.time()`` by which every run must have stopped (a session limit): each
        run's ``max_wall_time`` is cut to what is left of it when the run starts.
    :param train_kwargs: passed to :func:`train` (``max_wall_time``, ``disk_budget``, ``device``, ...);
        with several workers, ``log`` is ignored and each worker prints. On Kaggle, where every run
        shares one working dir, ``disk_budget`` defaults to
        :data:`~rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET` split evenly across the seeds (not the whole
        budget each).
    """
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    configs = [
        dataclasses.replace(config, training=dataclasses.replace(config.training, seed=int(s))) for s in seeds
    ]
    run_dirs = [seed_run_dir(results_dir, config, s) for s in seeds]
    if on_kaggle():  # the seeds share one working dir
        train_kwargs["disk_budget"] = kaggle_disk_budget(train_kwargs.get("disk_budget"), len(seeds))
    workers = max(1, min(workers or os.cpu_count() or 1, len(seeds)))
    if workers == 1:
        return [_train_one(c, d, train_kwargs, deadline) for c, d in zip(configs, run_dirs, strict=True)]
    train_kwargs.pop("log", None)  # worker processes print their progress (a callable may not pickle)
    # spawn: each worker starts clean (no forked torch threads or signal handlers).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_train_one, c, d, train_kwargs, deadline)
            for c, d in zip(configs, run_dirs, strict=True)
        ]
        return [f.result() for f in futures]
