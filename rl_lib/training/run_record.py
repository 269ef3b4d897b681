"""Level 3 metadata: ``{name}_training_metadata.json``, the run's record of itself.

It says what was trained (config, seed, code and library versions, device), how far
(timesteps done / target, status), what the checkpoint system did (saves, rotations, best
updates, evaluations) and how long it took, in a form the thesis figures read back.
"""

from __future__ import annotations

import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from rl_lib.training.checkpoints import METADATA_SUFFIX, CheckpointManager

#: A results folder's layout: ``RESULTS/runs/{name}_seed{seed}/`` run dirs, ``RESULTS/evaluation/`` tables.
RUNS, EVALUATION = "runs", "evaluation"


def run_dir_name(name: str, seed: int) -> str:
    """The folder of run ``name`` trained with ``seed``: ``{name}_seed{seed}`` (under ``RESULTS/runs``)."""
    return f"{name}_seed{seed}"


STRATEGY = (
    "Three-level checkpoints. Level 1 (latest): a complete snapshot (model, replay buffer, random "
    "streams, environment state) every checkpoint_freq steps, written under temporary names, fsynced, "
    "renamed and sealed by a sha256 manifest; only the 2 newest are kept and training always resumes "
    "from the newest valid one, never from the best. Level 2 (best): every eval_freq steps the greedy "
    "policy (epsilon = 0) plays n_eval_episodes validation days; best_model/best_model.zip is replaced "
    "only when the mean reward improves, and that score survives resumes. Level 3 (final): the model at "
    "the end of training and this metadata. The thesis reports the best model."
)

RUNNING, COMPLETED, INTERRUPTED, DIVERGED = "running", "completed", "interrupted", "diverged"
#: Exit codes of a run (``rl-lib train``): completed, interrupted (a stop request), diverged, and
#: interrupted because a save would exceed the disk budget.
EXIT_COMPLETED, EXIT_INTERRUPTED, EXIT_DIVERGED, EXIT_DISK_BUDGET = 0, 3, 4, 5


def versions() -> dict[str, str]:
    import gymnasium
    import numpy
    import sb3_contrib
    import stable_baselines3
    import torch

    import rl_lib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "rl_lib": rl_lib.__version__,
    }


def git_commit() -> str | None:
    """The commit of the rl_lib checkout, with ``+dirty`` when it has local changes; None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def metadata_path(run_dir: str | Path) -> Path:
    """The ``*_training_metadata.json`` of a run dir (there is exactly one)."""
    from rl_lib.errors import UserError

    found = sorted(Path(run_dir).glob(f"*{METADATA_SUFFIX}"))
    if len(found) != 1:
        raise UserError(
            f"{run_dir}: expected one *{METADATA_SUFFIX}, found {len(found)}; is this a run dir "
            "written by rl-lib train?"
        )
    return found[0]


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """The metadata of a run dir."""
    import json

    return json.loads(metadata_path(run_dir).read_text())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunRecord:
    """The metadata dict and its atomic writes (thread-safe: the checkpoint writer reports too)."""

    def __init__(self, manager: CheckpointManager, data: dict[str, Any]) -> None:
        self.manager = manager
        self.data = data
        self._lock = threading.Lock()
        self._session_start = time.monotonic()
        self._wall_before = float(data.get("wall_time_s", 0.0))

    @classmethod
    def start(cls, manager: CheckpointManager, previous: dict | None, **fields: Any) -> RunRecord:
        """Open the record for a new session (a fresh run, or a resume of ``previous``)."""
        data = dict(previous or {})
        resumed = previous is not None
        data.update(fields)
        data.setdefault("created", now())
        data.setdefault("checkpoint_history", [])
        data.setdefault("sessions", [])
        data["description"] = STRATEGY
        data["status"] = RUNNING
        data["stop_reason"] = None
        data["resume_count"] = int(data.get("resume_count", -1)) + 1 if resumed else 0
        data["versions"] = versions()
        data["git_commit"] = git_commit()
        data["sessions"].append({"started": now(), "from_step": fields["timesteps"]["done"]})
        record = cls(manager, data)
        record.write()
        return record

    def write(self) -> None:
        with self._lock:
            self.data["updated"] = now()
            self.data["wall_time_s"] = round(self._wall_before + time.monotonic() - self._session_start, 3)
            self.manager.write_metadata(self.data)

    def _event(self, kind: str, step: int, **info: Any) -> None:
        # A resumed run replays the steps after its checkpoint: an event already recorded stays once.
        history = self.data["checkpoint_history"]
        if not any(e["event"] == kind and e["step"] == step for e in history):
            history.append({"event": kind, "step": step, "time": now(), **info})

    def checkpoint_event(self, kind: str, step: int, info: dict[str, Any]) -> None:
        with self._lock:
            self._event(kind, step, **info)
            if kind == "saved":  # what a resume would continue from
                self.data["timesteps"]["done"] = max(step, self.data["timesteps"]["done"])
        self.write()

    def evaluation(self, record: dict[str, Any], history: list[dict], best: dict | None) -> None:
        with self._lock:
            self.data["evaluations"] = history
            self.data["best"] = best
            if record.get("new_best"):
                self._event("best", record["step"], mean_reward=record["mean_reward"])
        self.write()

    def finish(self, status: str, step: int, reason: str | None = None, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self.data["status"] = status
            self.data["stop_reason"] = reason
            self.data["timesteps"]["done"] = step
            self.data["sessions"][-1].update(ended=now(), to_step=step, status=status)
            if status == COMPLETED:
                self._event("final", step)
        self.write()
