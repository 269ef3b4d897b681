"""Inside a Kaggle kernel: paths, session budgets, and resuming from the previous version's output.

A kernel version ends after about 12 hours; only ``/kaggle/working`` (at most 20 GB) survives, as
that version's output. The kernel lists itself among its ``kernel_sources``, so the next version
finds the previous output mounted somewhere under ``/kaggle/input`` (the mount layout differs
between Kaggle versions: ``/kaggle/input/SLUG/...``, ``/kaggle/input/notebooks/OWNER/SLUG/...``).

:func:`prepare_session` is what :func:`rl_lib.pipeline.train_step` calls on Kaggle, before training:

1. every run the step will train (``{name}_seed{seed}``) is searched for recursively under the
   input, among copies of the same configuration (another kernel's output mounted as input may hold
   a run of the same name); of the copies found, the one whose
   newest checkpoint is verified against its sha256 manifest and furthest along wins, and is copied
   into ``results_dir/runs/`` under the working dir (run files, metadata, best model and that one
   checkpoint; the manifest copied last and verified again), unless the working dir already holds
   that run as far along;
2. the wall-time budget becomes a deadline: ``max_wall_time`` seconds from now, by default the
   session limit minus a safety margin (:data:`SESSION_LIMIT_S` - :data:`SESSION_MARGIN_S`);
3. the disk budget is for the whole working dir (``/kaggle/working`` holds 20 GB for everything):
   by default :data:`rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET`; the caller splits it evenly across the
   runs, since they all share it.

For tests (and emulation on any machine), the paths come from ``RL_LIB_KAGGLE_INPUT`` and
``RL_LIB_KAGGLE_WORKING`` when set; "on Kaggle" is :func:`rl_lib.training.on_kaggle`
(``KAGGLE_KERNEL_RUN_TYPE`` is set in every kernel).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rl_lib.errors import UserError
from rl_lib.kaggle import swap_into_place
from rl_lib.training.checkpoints import Checkpoint, CheckpointManager, kaggle_disk_budget, metadata_file
from rl_lib.training.run_record import RUNS, run_dir_name

if TYPE_CHECKING:
    from rl_lib.experiment import ExperimentConfig

INPUT_ENV, WORKING_ENV = "RL_LIB_KAGGLE_INPUT", "RL_LIB_KAGGLE_WORKING"
DEFAULT_INPUT, DEFAULT_WORKING = "/kaggle/input", "/kaggle/working"
#: A GPU kernel session ends after 12 hours.
SESSION_LIMIT_S = 12 * 3600.0
#: Kept back from the session limit: the offline install, the copy from the input, imports, the
#: last checkpoint and Kaggle's saving of the output all happen outside the training budget.
SESSION_MARGIN_S = 30 * 60.0
#: Folders of a run dir that hold nothing to search for (pruned from the walk of the input).
_PRUNED = {"checkpoints", "tensorboard", "best_model", "__pycache__"}


def input_dir() -> Path:
    """``/kaggle/input``, or ``$RL_LIB_KAGGLE_INPUT``."""
    return Path(os.environ.get(INPUT_ENV) or DEFAULT_INPUT)


def working_dir() -> Path:
    """``/kaggle/working``, or ``$RL_LIB_KAGGLE_WORKING``."""
    return Path(os.environ.get(WORKING_ENV) or DEFAULT_WORKING)


def default_wall_time() -> float:
    """Seconds a session may train: the session limit minus the safety margin (11.5 h)."""
    return SESSION_LIMIT_S - SESSION_MARGIN_S


def newest_verified_step(run_dir: Path, name: str) -> int | None:
    """Step of the newest checkpoint of ``run_dir`` whose files match its manifest, or None.

    Read-only (unlike :meth:`CheckpointManager.latest_valid`, which deletes broken checkpoints):
    the input is a read-only mount.
    """
    manager = CheckpointManager(run_dir, name)
    for step, manifest in manager.manifests():
        if manager.verify(manifest) is None:
            return step
    return None


def find_run_copies(
    root: Path,
    name: str,
    seed: int,
    config: ExperimentConfig,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Every folder under ``root`` named ``{name}_seed{seed}`` holding this run's metadata.

    The metadata must parse and name the same run (``name`` and ``seed``), and record ``config``
    (:func:`rl_lib.training.config_difference`); anything else is skipped. Another kernel's output
    mounted as input may hold a run of the same name but another configuration: such copies are logged.
    """
    from rl_lib.training import config_difference

    wanted_dir, metadata = run_dir_name(name, seed), metadata_file(name)
    found: list[Path] = []
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _PRUNED)
        if Path(folder).name != wanted_dir or metadata not in files:
            continue
        try:
            data = json.loads((Path(folder) / metadata).read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(data, dict) and data.get("name") == name and data.get("seed") == seed):
            continue
        differs = config_difference(data.get("config"), config)
        if differs is not None:
            log(f"Kaggle: ignored {folder}: a {wanted_dir} of another configuration ({differs} differs)")
            continue
        found.append(Path(folder))
    return found


@dataclass(frozen=True)
class BroughtRun:
    """A run copied from the input into the working dir."""

    run: str
    source: Path
    step: int | None  # its newest verified checkpoint (None: metadata only, no checkpoint yet)


def _copy_run(source: Path, target: Path, name: str, step: int | None) -> None:
    """Copy a run dir with only the checkpoint at ``step``; staged next to ``target``, then renamed."""
    staging = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or rel.parts[0] == "checkpoints" or path.name.endswith(".tmp"):
            continue
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, staging / rel)
    if step is not None:
        manager = CheckpointManager(source, name)
        manifest = Checkpoint(step, manager.stem(step)).manifest
        files = list(manager.manifest_entries(manifest))  # verified by the caller: readable
        (staging / "checkpoints").mkdir()
        for filename in files:
            shutil.copyfile(manifest.parent / filename, staging / "checkpoints" / filename)
        copied = staging / "checkpoints" / manifest.name
        shutil.copyfile(manifest, copied)  # last: a checkpoint without its manifest is incomplete
        problem = CheckpointManager(staging, name).verify(copied)
        if problem is not None:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"copying the checkpoint of {source} at step {step} failed: {problem}")
    swap_into_place(staging, target)


def bring_run_from_input(
    runs_dir: Path,
    name: str,
    seed: int,
    config: ExperimentConfig,
    log: Callable[[str], None] = print,
) -> BroughtRun | None:
    """Bring the furthest verified copy of run ``{name}_seed{seed}`` from the input into ``runs_dir``.

    Only copies of ``config`` count (:func:`find_run_copies`). Nothing is copied when no copy is
    found, or when ``runs_dir`` already holds the run with a verified checkpoint at least as far along
    (a second training call in the same session).
    """
    candidates = []
    for copy in find_run_copies(input_dir(), name, seed, config, log):
        step = newest_verified_step(copy, name)
        candidates.append((-1 if step is None else step, str(copy), copy))
    if not candidates:
        return None
    best_step, _, source = max(candidates)
    target = runs_dir / run_dir_name(name, seed)
    if (target / metadata_file(name)).is_file():
        here = newest_verified_step(target, name)
        if (-1 if here is None else here) >= best_step:
            return None
    step = None if best_step < 0 else best_step
    _copy_run(source, target, name, step)
    where = f"its checkpoint at step {step} verified" if step is not None else "no checkpoint yet"
    log(f"Kaggle: brought {target.name} from {source} ({where}) into {target}")
    return BroughtRun(target.name, source, step)


@dataclass(frozen=True)
class KaggleSession:
    """What :func:`prepare_session` decided for this kernel session."""

    runs_dir: Path  # results_dir/runs under the working dir
    deadline: float  # time.time() by which every run must have stopped
    disk_budget: int  # bytes for all the runs together
    brought: tuple[BroughtRun, ...]


def prepare_session(
    results_dir: str,
    runs: Sequence[tuple[str, int]],
    max_wall_time: float | None = None,
    disk_budget: int | None = None,
    log: Callable[[str], None] = print,
    *,
    configs: Mapping[str, ExperimentConfig],
) -> KaggleSession:
    """Resume-from-input and budgets of one kernel session; see the module docstring.

    :param results_dir: the results folder; a relative one (without ``..``) lies under the working dir.
    :param runs: ``(name, seed)`` of every run the step trains.
    :param max_wall_time: seconds the whole step may train (default: :func:`default_wall_time`).
    :param disk_budget: bytes all runs may hold together (default:
        :data:`~rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET`).
    :param configs: run name -> its experiment config, for every run of ``runs``: a run is brought
        only from copies of its configuration (:func:`find_run_copies`).
    """
    base = Path(results_dir)
    if base.is_absolute():
        working = working_dir().resolve()
        if not base.resolve().is_relative_to(working):
            raise UserError(f"parameter results_dir: {base} is outside {working}, which alone survives "
                            "the session; use a relative path")  # fmt: skip
    elif ".." in base.parts:
        raise UserError(f"parameter results_dir: {results_dir!r} climbs out with '..'; it must lie under "
                        f"{working_dir()}, which alone survives the session")  # fmt: skip
    else:
        base = working_dir() / base
    runs_dir = base / RUNS
    budget = kaggle_disk_budget(disk_budget)
    wall = default_wall_time() if max_wall_time is None else max_wall_time
    deadline = time.time() + wall
    brought = tuple(
        b for name, seed in runs if (b := bring_run_from_input(runs_dir, name, seed, configs[name], log=log))
    )
    log(f"Kaggle session: {len(runs)} run(s) in {runs_dir}, {len(brought)} brought from {input_dir()}; "
        f"training stops within {wall / 3600:.2f} h; {budget / 1e9:.2f} GB of disk for all runs")  # fmt: skip
    return KaggleSession(runs_dir, deadline, budget, brought)
