"""SB3 callbacks of a training run: KPI logging, stop requests, best model, latest checkpoints.

Evaluations and checkpoints happen at *rollout boundaries* (``_on_rollout_start``): there the
previous rollout's gradient steps are done and the next rollout has not begun, which is
exactly where a resumed run's first ``learn()`` call picks up. Saving anywhere else would make
the resumed run train on a different schedule than the uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from rl_lib.agents.maskable_dqn import DivergenceError
from rl_lib.diagnostics import evaluate_with_diagnostics
from rl_lib.envs import DispatchEnv
from rl_lib.evaluation import evaluate_agent
from rl_lib.training.checkpoints import BUFFER_SUFFIX, MODEL_SUFFIX, STATE_SUFFIX, CheckpointManager
from rl_lib.training.resume import capture, model_bytes, replay_buffer_snapshot, state_bytes


def crossed_a_multiple(step: int, last: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (``last``, ``step``]: an evaluation or a save is due.

    A rollout may step over the exact multiple (PPO's n_steps, DQN's train_freq): what counts is
    having crossed it since the last one.
    """
    return step // every > last // every


class StopRequest:
    """Why training should stop at the next boundary: a signal or the wall-time budget.

    :param max_wall_time_s: seconds this session may run; the stop is requested ``margin_s``
        before, so that the last checkpoint is on disk in time.
    """

    def __init__(self, max_wall_time_s: float | None = None, margin_s: float | None = None) -> None:
        self.started = time.monotonic()
        self.max_wall_time_s = max_wall_time_s
        if max_wall_time_s is not None and margin_s is None:
            margin_s = min(0.05 * max_wall_time_s, 300.0)
        self.margin_s = margin_s or 0.0
        self.reason: str | None = None

    @property
    def requested(self) -> bool:
        if self.reason is None and self.max_wall_time_s is not None:
            if time.monotonic() - self.started >= self.max_wall_time_s - self.margin_s:
                self.reason = f"wall-time budget of {self.max_wall_time_s:.0f} s reached"
        return self.reason is not None

    @contextmanager
    def catching_signals(self) -> Iterator[StopRequest]:
        """SIGTERM and SIGINT request a clean stop (a second SIGINT interrupts at once)."""

        def handler(signum, frame):
            if self.reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.reason = f"received {signal.Signals(signum).name}"

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class KPILoggerCallback(BaseCallback):
    """Logs each finished day's KPIs (completion, deadhead, lateness) to SB3's logger."""

    KPIS = {
        "completion_rate": "episode/completion_rate",
        "mean_deadhead_km": "episode/mean_deadhead_km",
        "mean_lateness_min": "episode/mean_lateness_min",
        "on_time_rate": "episode/on_time_rate",
    }

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            kpis = info.get("kpis")
            if kpis:
                for key, name in self.KPIS.items():
                    if not math.isnan(kpis[key]):
                        self.logger.record_mean(name, kpis[key])
        if hasattr(self.model, "exploration_rate"):
            self.logger.record("rollout/exploration_rate", self.model.exploration_rate)
        return True


class EvalCallback(BaseCallback):
    """Level 2: evaluate every ``eval_freq`` steps; replace best_model.zip only on improvement.

    Unlike SB3's EvalCallback, its state (best mean reward, evaluation history, collapse count)
    is part of every latest checkpoint, so a resumed run never overwrites a better best model.
    Raises :class:`DivergenceError` on non-finite weights or on a collapse: ``patience``
    evaluations in a row below ``best - drop * max(|best|, 1)``.
    """

    def __init__(
        self,
        eval_env: DispatchEnv,
        manager: CheckpointManager,
        eval_freq: int,
        n_episodes: int,
        on_evaluation: Callable[[dict], None],
        collapse_patience: int = 5,
        collapse_drop: float = 1.0,
    ) -> None:
        super().__init__()
        self.eval_env = eval_env
        self.manager = manager
        self.eval_freq = eval_freq
        self.n_episodes = n_episodes
        self.on_evaluation = on_evaluation
        self.collapse_patience = collapse_patience
        self.collapse_drop = collapse_drop
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.collapse_count = 0

    def state(self) -> dict[str, Any]:
        return {"history": list(self.history), "best": self.best, "collapse_count": self.collapse_count}

    def load_state(self, state: dict[str, Any], best_on_disk: dict[str, Any] | None) -> None:
        self.history = list(state["history"])
        self.collapse_count = state["collapse_count"]
        self.best = state["best"]
        self.adopt_best_on_disk(best_on_disk)

    def adopt_best_on_disk(self, best_on_disk: dict[str, Any] | None) -> None:
        """best_model.zip may hold a model evaluated after the checkpoint resumed from (or with no
        checkpoint at all): never let a worse model replace it."""
        if best_on_disk and (self.best is None or best_on_disk["mean_reward"] > self.best["mean_reward"]):
            self.best = {k: best_on_disk[k] for k in ("step", "mean_reward", "std_reward")}

    def due(self, step: int) -> bool:
        """True once ``step`` has crossed a multiple of eval_freq since the last evaluation."""
        return crossed_a_multiple(step, self.history[-1]["step"] if self.history else 0, self.eval_freq)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.due(self.num_timesteps):
            self.evaluate()

    def evaluate(self) -> None:
        check_finite_weights(self.model)
        step = self.num_timesteps
        start = time.perf_counter()
        diagnostics: dict[str, float] = {}
        if hasattr(self.model, "q_values"):  # a DQN: what its Q-values say (rl_lib.diagnostics)
            kpis, diagnostics = evaluate_with_diagnostics(self.model, self.eval_env, self.n_episodes)
        else:
            kpis = evaluate_agent(self.model, self.eval_env, self.n_episodes, deterministic=True)
        rewards = kpis["reward"].to_numpy()
        record = {
            "step": step,
            "mean_reward": float(rewards.mean()),
            "std_reward": float(rewards.std()),
            "completion_rate": float(kpis["completion_rate"].mean()),
            "n_episodes": len(rewards),
            "seconds": round(time.perf_counter() - start, 3),
            **diagnostics,
        }
        improved = self.best is None or record["mean_reward"] > self.best["mean_reward"]
        # After a resume, the evaluation that produced the best model on disk comes again: the same
        # event as in an uninterrupted run, with nothing to save.
        replayed = self.best is not None and (step, record["mean_reward"]) == (
            self.best["step"],
            self.best["mean_reward"],
        )
        if improved:  # on disk first: the record never names a best model that is not there
            best = {k: record[k] for k in ("step", "mean_reward", "std_reward")}
            self.manager.save_best(model_bytes(self.model), best)
            self.best = best
        record["new_best"] = improved or replayed
        self.history.append(record)
        self.logger.record("eval/mean_reward", record["mean_reward"])
        self.logger.record("eval/completion_rate", record["completion_rate"])
        for name, value in diagnostics.items():
            self.logger.record(f"diagnostics/{name}", value)
        self.logger.dump(step)  # written at the evaluation's own step, as SB3's EvalCallback does
        if improved or replayed:
            self.collapse_count = 0
        elif record["mean_reward"] < self.best["mean_reward"] - self.collapse_drop * max(
            abs(self.best["mean_reward"]), 1.0
        ):
            self.collapse_count += 1
        else:
            self.collapse_count = 0
        self.on_evaluation(record)
        if self.collapse_count >= self.collapse_patience:
            raise DivergenceError(
                f"evaluation reward collapsed: {self.collapse_count} evaluations in a row far below the best "
                f"({record['mean_reward']:.1f} vs {self.best['mean_reward']:.1f} at step {self.best['step']})"
            )


class CheckpointCallback(BaseCallback):
    """Level 1: a latest checkpoint every ``checkpoint_freq`` steps, and on a stop request.

    After saving for a stop request, the next step returns False, which ends ``learn()``.
    """

    def __init__(
        self, manager: CheckpointManager, checkpoint_freq: int, stop: StopRequest, eval_callback: EvalCallback
    ) -> None:
        super().__init__()
        self.manager = manager
        self.checkpoint_freq = checkpoint_freq
        self.stop = stop
        self.eval_callback = eval_callback
        self.last_saved_step: int | None = None
        self.halted = False
        self.stall_seconds = 0.0  # training-thread time spent saving (snapshot + waiting for the writer)

    def _on_training_start(self) -> None:
        self.last_saved_step = self.num_timesteps  # a resumed run starts on its checkpoint

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        stopping = self.stop.requested  # read once: a stop must never halt without this save
        due = crossed_a_multiple(step, self.last_saved_step or 0, self.checkpoint_freq)
        if due or (stopping and step != self.last_saved_step):
            self.save()
        self.halted = stopping

    def save(self) -> None:
        """Snapshot now (in memory), write in the background."""
        start = time.perf_counter()
        check_finite_weights(self.model)
        files = {MODEL_SUFFIX: model_bytes(self.model)}
        # The writer thread pickles the buffer while training goes on; it is joined at the next
        # save, at most a checkpoint interval (plus one rollout) later.
        buffer = replay_buffer_snapshot(self.model, rows_written_meanwhile=2 * self.checkpoint_freq + 1_000)
        if buffer is not None:
            files[BUFFER_SUFFIX] = buffer
        files[STATE_SUFFIX] = state_bytes(capture(self.model, {"eval": self.eval_callback.state()}))
        self.manager.save_latest(self.num_timesteps, files)
        self.last_saved_step = self.num_timesteps
        self.stall_seconds += time.perf_counter() - start

    def _on_step(self) -> bool:
        return not self.halted


def check_finite_weights(model) -> None:
    """Raise :class:`DivergenceError` if any parameter is NaN or infinite."""
    for name, param in model.policy.named_parameters():
        if not th.isfinite(param).all():
            raise DivergenceError(f"non-finite weights in {name} at step {model.num_timesteps}")
