"""Retrain the production model on logged experience: ``retrain(parent_dir, transitions, run_dir, budget)``.

A retrain is an ordinary resumable run dir (:func:`rl_lib.training.train`) whose agent starts from
the parent run's best model, with two sources of experience:

a. **Logged transitions** (the service's decisions, one row each; columns in :data:`COLUMNS`),
   loaded into the replay buffer as off-policy data before learning, through
   :class:`~rl_lib.agents.MaskableReplayBuffer`'s own ``add``: observation, next observation,
   action, reward, done, the next state's mask (``info["action_mask"]``) and the minutes to the
   next decision (``info["elapsed_min"]``), exactly as the env's step would give them. Rewards stay
   in raw env units, as the buffer keeps env rewards: the agent multiplies by ``reward_scale`` in its
   TD target. Rows of another fleet size than the model's are skipped and counted. The buffer holds
   a row per transition with its own next observation (``training.dqn.optimize_memory_usage`` is set
   to false: logged rows are not one contiguous stream); rows are laid out day by day and region by
   region in decision order, and the n-step windows are cut (as a time limit: the return bootstraps
   from the row's own next observation) wherever a row's successor in the buffer is not its next
   state, so a window never runs across a gap in the log, into another day, or into the env's rows.
   If there are more rows than the buffer holds, the oldest are dropped and counted.
b. **Simulated days** for the training env. Given a ``bookings`` table (the historical schema of
   :mod:`rl_lib.scenarios.historical`, e.g. from
   :func:`rl_lib.feedback.gate.bookings_from_records`), the parent's scenario is fitted to its
   bookings of the transitions' data window (:func:`~rl_lib.scenarios.historical.fit_scenario`:
   demand and geography from the table; fleet, rules, hours and travel from the parent). Without one,
   the parent's scenario is kept (transitions alone cannot rebuild the bookings). The run's
   evaluations (and so its best model) use that scenario's validation days.

Everything else is the parent's config (scenario, reward, DQN settings; ``overrides`` on top), with
``total_timesteps`` = the budget. That includes the exploration schedule and ``learning_starts``
(counted in env steps: the logged rows do not count), which a fine-tune may want lower, e.g.
``overrides={"training.dqn.exploration_initial_eps": 0.2, "training.dqn.learning_starts": 0}``.
The run's metadata records the lineage under ``"retrain"``: parent dir, model and version (sha256
of its best model, or the version given), data window, transitions given / used / skipped / dropped
and a sha256 of the used decision ids, and the simulated days' source. Calling :func:`retrain` again
with the same arguments and run dir continues a stopped retrain from its latest checkpoint (the
checkpoint holds the weights and the buffer; the transitions passed then are not loaded again).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rl_lib.agents import MaskableReplayBuffer
from rl_lib.config import from_dict
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig, with_overrides
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.historical import fit_scenario
from rl_lib.training import TrainResult, train
from rl_lib.training.checkpoints import CheckpointManager
from rl_lib.training.run_record import read_metadata

#: The transition columns a retrain reads (the collected frame has a few more).
COLUMNS = (
    "decision_id",
    "service_day",
    "region",
    "now_min",
    "n_vehicles",
    "observation",
    "action",
    "reward",
    "next_observation",
    "next_mask",
    "done",
    "elapsed_min",
)
EPISODE = ("service_day", "region")  # one fleet's day: the rows of one chain of decisions


@dataclass(frozen=True)
class Selection:
    """The logged transitions a buffer of ``n_vehicles`` + 1 actions takes, in buffer order.

    :param frame: the rows kept, sorted by service day, region, ``now_min`` and ``time_unix`` if
        present (ties keep the frame's order); the index is the input frame's.
    :param cut: per row, whether its n-step window ends there without an episode end (its successor
        in the buffer is not its next state).
    :param given: rows in the input frame.
    :param skipped_fleet_size: rows of another fleet size.
    :param dropped_over_capacity: the oldest rows left out because the buffer holds fewer.
    """

    frame: pd.DataFrame
    cut: np.ndarray
    given: int
    skipped_fleet_size: int
    dropped_over_capacity: int

    @property
    def used(self) -> int:
        return len(self.frame)

    def record(self) -> dict:
        """The lineage fields of this selection (JSON-able)."""
        days = self.frame["service_day"]
        ids = "\n".join(map(str, self.frame["decision_id"]))
        return {
            "data_window": {"first_service_day": str(days.min()), "last_service_day": str(days.max())},
            "logged_transitions": {
                "given": self.given,
                "used": self.used,
                "skipped_fleet_size": self.skipped_fleet_size,
                "dropped_over_capacity": self.dropped_over_capacity,
                "window_cuts": int(self.cut.sum()),
                "decision_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
            },
        }


def select_transitions(transitions: pd.DataFrame, n_vehicles: int, capacity: int) -> Selection:
    """The rows of ``transitions`` for a fleet of ``n_vehicles``, in buffer order, at most ``capacity``
    (the newest); see :class:`Selection`."""
    missing = [c for c in COLUMNS if c not in transitions.columns]
    if missing:
        raise UserError(
            f"logged transitions lack column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}"
        )
    fits = transitions["n_vehicles"].to_numpy() == n_vehicles
    # Decision order, as the collector's store keeps it (ties by time_unix when the frame has it).
    order = [*EPISODE, "now_min", *(["time_unix"] if "time_unix" in transitions.columns else [])]
    frame = transitions[fits].sort_values(order, kind="mergesort")
    dropped = max(0, len(frame) - capacity)
    frame = frame.iloc[dropped:]
    return Selection(frame, _window_cuts(frame), len(transitions), int((~fits).sum()), dropped)


def _window_cuts(frame: pd.DataFrame) -> np.ndarray:
    """Rows, not episode ends, whose successor is another episode's or not their next observation."""
    chained = np.zeros(len(frame), dtype=bool)
    same = np.ones(max(len(frame) - 1, 0), dtype=bool)
    for column in EPISODE:
        values = frame[column].to_numpy()
        same &= values[1:] == values[:-1]
    obs, nxt = frame["observation"].to_numpy(), frame["next_observation"].to_numpy()
    chained[:-1] = same & np.array(
        [np.array_equal(a, b) for a, b in zip(nxt[:-1], obs[1:], strict=True)], dtype=bool
    )
    return ~frame["done"].to_numpy(bool) & ~chained


def add_transitions(buffer: MaskableReplayBuffer, selection: Selection) -> int:
    """Add the selected rows to ``buffer`` in order, through its own ``add``; returns how many.

    :raises UserError: a buffer that stores next observations in the following row
        (``optimize_memory_usage``), or a row whose observation or mask has the wrong size.
    """
    if buffer.optimize_memory_usage or not buffer.handle_timeout_termination:
        raise UserError(
            "logged transitions need a replay buffer with its own next observation per row and the "
            "time-limit flag: set training.dqn.optimize_memory_usage to false"
        )
    n_actions = int(buffer.action_space.n)
    rows = selection.frame.itertuples(index=False)
    for row, cut in zip(rows, selection.cut, strict=True):
        obs = np.asarray(row.observation, dtype=np.float32)
        next_obs = np.asarray(row.next_observation, dtype=np.float32)
        next_mask = np.asarray(row.next_mask, dtype=bool)
        if (
            obs.shape != buffer.obs_shape
            or next_obs.shape != buffer.obs_shape
            or next_mask.shape != (n_actions,)
        ):
            raise UserError(
                f"logged transition {row.decision_id}: observations of {obs.shape} / {next_obs.shape} and "
                f"a mask of {next_mask.shape} fields; this model takes {buffer.obs_shape} and ({n_actions},)"
            )
        info = {
            "action_mask": next_mask,
            "elapsed_min": float(row.elapsed_min),
            "TimeLimit.truncated": bool(cut),
        }
        buffer.add(
            obs[None],
            next_obs[None],
            np.array([[int(row.action)]]),
            np.array([float(row.reward)]),
            np.array([bool(row.done)]),
            [info],
        )
    return selection.used


def prefill_replay_buffer(model, transitions: pd.DataFrame) -> Selection:
    """Load logged transitions into a fresh MaskableDQN's replay buffer (module docstring, a.)."""
    buffer = model.replay_buffer
    selection = select_transitions(transitions, int(model.action_space.n) - 1, buffer.buffer_size)
    add_transitions(buffer, selection)
    return selection


@dataclass(frozen=True)
class RetrainResult(TrainResult):
    """What :func:`retrain` did: the training result and the lineage recorded in the run's metadata."""

    lineage: dict

    @property
    def best_model(self) -> Path:
        return self.run_dir / "best_model" / "best_model.zip"


def retrain(
    parent_dir: str | Path,
    transitions: pd.DataFrame,
    run_dir: str | Path,
    budget_steps: int,
    *,
    max_wall_time: float | None = None,
    simulated_days: int | None = None,
    bookings: pd.DataFrame | None = None,
    parent_version: str | None = None,
    overrides: dict | None = None,
    on_evaluation: Callable[[dict, list[dict]], bool] | None = None,
    device: str = "auto",
    log=print,
) -> RetrainResult:
    """Retrain the parent run's best model on logged transitions and simulated days (module docstring).

    :param parent_dir: the production model's run dir (``*_training_metadata.json`` with its config,
        ``best_model/best_model.zip``); a DQN run.
    :param transitions: logged transitions, one per row (:data:`COLUMNS` at least).
    :param run_dir: the retrain's run dir; the same one again resumes it.
    :param budget_steps: env steps of the retrain (its ``total_timesteps``).
    :param max_wall_time: seconds this session may run; it stops cleanly (interrupted) before.
    :param simulated_days: days of the training split (default: the parent's).
    :param bookings: a bookings table (historical schema, typed as ``read_bookings`` returns it) to fit
        the simulated days to; its service dates outside the transitions' window are left out.
    :param parent_version: the parent's version name (default: the sha256 of its best model).
    :param overrides: dotted-key config overrides on the parent's config
        (``{"training.dqn.exploration_initial_eps": 0.1}``).
    :param on_evaluation: passed to :func:`~rl_lib.training.train` (True stops the run, resumable).
    """
    parent_dir = Path(parent_dir)
    meta = read_metadata(parent_dir)
    if meta.get("algo") != "dqn":
        raise UserError(
            f"{parent_dir}: a {meta.get('algo')} run; a retrain on logged transitions needs a DQN run"
        )
    parent_model = CheckpointManager(parent_dir, meta["name"]).best_dir / "best_model.zip"
    if not parent_model.is_file():
        raise UserError(f"{parent_model}: the parent run has no best model to start from")
    if budget_steps < 1:
        raise UserError(f"budget_steps={budget_steps}: expected a positive number of steps")
    config = with_overrides(from_dict(ExperimentConfig, meta["config"], source=str(parent_dir)), overrides)

    selection = select_transitions(transitions, config.scenario.fleet.size, config.training.dqn.buffer_size)
    if selection.used == 0:
        raise UserError(
            f"none of the {selection.given} logged transitions is for this model's fleet of "
            f"{config.scenario.fleet.size} vehicles: nothing to retrain on"
        )
    scenario, simulated = _simulated_days(config.scenario, bookings, selection)
    fixed = {"training.total_timesteps": budget_steps, "training.dqn.optimize_memory_usage": False}
    if simulated_days is not None:
        fixed["scenario.splits.train_days"] = simulated_days
    config = with_overrides(dataclasses.replace(config, scenario=scenario), fixed)
    sha = hashlib.sha256(parent_model.read_bytes()).hexdigest()
    lineage = {
        "parent_dir": str(parent_dir),
        "parent_model": str(parent_model),
        "parent_model_sha256": sha,
        "parent_version": parent_version or sha,
        **selection.record(),
        "simulated_days": {**simulated, "train_days": config.scenario.splits.train_days},
    }

    result = train(
        config,
        run_dir,
        max_wall_time=max_wall_time,
        device=device,
        on_evaluation=on_evaluation,
        init_model=parent_model,
        metadata={"retrain": lineage},
        prefill=lambda model: add_transitions(model.replay_buffer, selection),
        log=log,
    )
    recorded = read_metadata(result.run_dir).get("retrain", lineage)
    if recorded != lineage:
        log(
            f"{result.run_dir}: resumed a retrain that started from other data or another parent; its "
            "buffer and weights are those it started with (see 'retrain' in its metadata)"
        )
    return RetrainResult(
        **{f.name: getattr(result, f.name) for f in dataclasses.fields(result)}, lineage=recorded
    )


def _simulated_days(
    base: ScenarioConfig, bookings: pd.DataFrame | None, selection: Selection
) -> tuple[ScenarioConfig, dict]:
    """The training scenario and its record: ``base`` fitted to the bookings of the selection's
    service days, or ``base``."""
    if bookings is None:
        return base, {
            "source": "parent scenario",
            "scenario": base.name,
            "note": "no bookings table given: the parent's scenario, not fitted to the window",
        }
    window = selection.record()["data_window"]
    first, last = pd.Timestamp(window["first_service_day"]), pd.Timestamp(window["last_service_day"])
    if "service_date" not in bookings.columns:
        raise UserError(
            "bookings lack column service_date; read them with rl_lib.scenarios.historical.read_bookings"
        )
    inside = bookings[bookings["service_date"].between(first, last)]
    if inside.empty:
        raise UserError(
            f"no booking in the transitions' window {window['first_service_day']} .. "
            f"{window['last_service_day']}: nothing to fit the simulated days to"
        )
    fitted = fit_scenario(inside, base)
    return fitted, {
        "source": "fitted",
        "scenario": fitted.name,
        "bookings": len(inside),
        "service_dates": int(inside["service_date"].nunique()),
        "method": "rl_lib.scenarios.historical.fit_scenario on the window's bookings",
    }
