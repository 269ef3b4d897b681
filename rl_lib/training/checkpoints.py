"""The three-level checkpoint system: latest (rotating), best, final + metadata.

Layout of a run dir::

    checkpoints/   {name}_checkpoint_{N}_steps.zip            the model (SB3 zip)
                   {name}_checkpoint_{N}_steps_replay_buffer.pkl   its replay buffer (filled part)
                   {name}_checkpoint_{N}_steps_state.pkl      RNG, env and callback state
                   {name}_checkpoint_{N}_steps.manifest.json  sha256 of each file, written last
    best_model/    best_model.zip (+ best_model.json)        replaced only on improvement
    {name}_final.zip
    {name}_training_metadata.json

Level 1, *latest*: the only checkpoints training resumes from. Each is a complete snapshot
whose files are written under temporary names, fsynced and renamed; its manifest (sha256
of every file) is written last, so a checkpoint without a valid manifest is incomplete and
ignored. Only ``keep`` (2) are kept: the oldest is deleted after the new one is complete.

Saving is asynchronous: the training thread serialises the snapshot to memory (fast), a
writer thread puts it on disk while training goes on. Only one save is in flight; the next
one waits for it. The disk budget is checked before each save, against what the run dir
will hold at the peak (old checkpoints + the new one), and a save that would exceed it is
refused with :class:`DiskBudgetExceeded`.

Level 2, *best*: replaced atomically when an evaluation beats the best mean reward.
Level 3, *final*: the model when training completes, plus the metadata JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rl_lib.io import (
    atomic_write_bytes,
    atomic_write_json,
    folder_bytes,
    fsync_dir,
    mismatched_file,
    remove_stale_temporaries,
    sha256_bytes,
    sha256_file,
)

MODEL_SUFFIX = ".zip"
BUFFER_SUFFIX = "_replay_buffer.pkl"
STATE_SUFFIX = "_state.pkl"
MANIFEST_SUFFIX = ".manifest.json"
METADATA_SUFFIX = "_training_metadata.json"


def metadata_file(name: str) -> str:
    """The file name of run ``name``'s metadata (level 3) in its run dir."""
    return f"{name}{METADATA_SUFFIX}"


def adaptive_checkpoint_freq(total_timesteps: int) -> int:
    """Checkpoint frequency from the strategy document: short runs save more often."""
    if total_timesteps < 5_000:
        return 100
    if total_timesteps < 20_000:
        return 500
    return 1_000


#: Bytes a save must leave free on the disk, whatever the budget: a full disk loses more than a save.
FREE_DISK_MARGIN = 200 * 10**6
#: What the runs of one Kaggle session may hold together: /kaggle/working holds 20 GB, 2 GB stay spare.
KAGGLE_DISK_BUDGET = 20 * 10**9 - 2 * 10**9


def kaggle_disk_budget(disk_budget: int | None, runs: int = 1) -> int:
    """On Kaggle, the disk budget of each of ``runs`` runs sharing the working dir: ``disk_budget`` when
    given, else :data:`KAGGLE_DISK_BUDGET` split evenly across them (one working dir holds them all)."""
    return KAGGLE_DISK_BUDGET // runs if disk_budget is None else disk_budget


class DiskBudgetExceeded(RuntimeError):
    """A save would push the run dir beyond its disk budget."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete, verified latest checkpoint."""

    step: int
    stem: Path  # checkpoints/{name}_checkpoint_{N}_steps

    @property
    def model(self) -> Path:
        return self.stem.with_name(self.stem.name + MODEL_SUFFIX)

    @property
    def replay_buffer(self) -> Path:
        return self.stem.with_name(self.stem.name + BUFFER_SUFFIX)

    @property
    def state(self) -> Path:
        return self.stem.with_name(self.stem.name + STATE_SUFFIX)

    @property
    def manifest(self) -> Path:
        return self.stem.with_name(self.stem.name + MANIFEST_SUFFIX)


class CheckpointManager:
    """Writes and finds the checkpoints of one run dir.

    :param run_dir: the run folder.
    :param name: run name, the prefix of every file.
    :param keep: number of latest checkpoints kept (2).
    :param disk_budget_bytes: refuse a save that would make the run dir exceed this.
    :param on_event: called (from the writer thread) with ``(kind, step, info)`` for
        ``"saved"`` and ``"rotated"`` events, for the metadata's checkpoint history.
    """

    def __init__(
        self,
        run_dir: Path,
        name: str,
        keep: int = 2,
        disk_budget_bytes: int | None = None,
        on_event=None,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.run_dir = Path(run_dir)
        self.name = name
        self.keep = keep
        self.disk_budget_bytes = disk_budget_bytes
        self.on_event = on_event or (lambda kind, step, info: None)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.best_dir = self.run_dir / "best_model"
        self.final_model = self.run_dir / f"{name}_final.zip"
        self.metadata_path = self.run_dir / metadata_file(name)
        self._pattern = re.compile(rf"^{re.escape(name)}_checkpoint_(\d+)_steps{re.escape(MANIFEST_SUFFIX)}$")
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pending_bytes = 0
        self.last_save_seconds = 0.0

    # ------------------------------------------------------------------ finding
    def stem(self, step: int) -> Path:
        return self.checkpoint_dir / f"{self.name}_checkpoint_{step}_steps"

    def manifests(self) -> list[tuple[int, Path]]:
        """(step, manifest path) of every checkpoint with a manifest, newest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for path in self.checkpoint_dir.iterdir():
            match = self._pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    @staticmethod
    def manifest_entries(manifest: Path) -> dict[str, tuple[int, str]]:
        """The files a manifest lists (names in its folder) with their recorded size and sha256.

        :raises ValueError: the manifest cannot be read or does not have that shape.
        """
        try:
            recorded = json.loads(manifest.read_text())["files"]
            entries = {name: (int(e["bytes"]), str(e["sha256"])) for name, e in recorded.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable manifest ({exc!r})") from None
        return entries

    def verify(self, manifest: Path) -> str | None:
        """None when every file of the checkpoint matches its manifest, else the reason."""
        stem = manifest.name[: -len(MANIFEST_SUFFIX)]
        try:
            entries = self.manifest_entries(manifest)
        except ValueError as exc:
            return str(exc)
        for required in (stem + MODEL_SUFFIX, stem + STATE_SUFFIX):
            if required not in entries:
                return f"the manifest does not list {required}"
        return mismatched_file(manifest.parent, entries)

    def latest_valid(self) -> Checkpoint | None:
        """The newest checkpoint whose files match their manifest.

        A broken one is reported and deleted (it can never be resumed from, and it would otherwise
        count among the ``keep`` newest at the next rotation); the previous one is used.
        """
        remove_stale_temporaries(self.checkpoint_dir)
        for step, manifest in self.manifests():
            problem = self.verify(manifest)
            if problem is None:
                return Checkpoint(step, self.stem(step))
            warnings.warn(
                f"checkpoint at step {step} is not usable ({problem}); deleted, falling back to the "
                "previous one",
                stacklevel=2,
            )
            self._delete(step)
        return None

    # ------------------------------------------------------------------ saving
    def check_budget(self, new_bytes: int, what: str) -> None:
        """Refuse a save that would exceed the disk budget, or leave the disk nearly full."""
        existing = next(p for p in (self.run_dir, *self.run_dir.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if new_bytes + self._pending_bytes + FREE_DISK_MARGIN > free:
            raise DiskBudgetExceeded(
                f"saving {what} ({new_bytes / 1e6:.1f} MB) would leave less than "
                f"{FREE_DISK_MARGIN / 1e6:.0f} MB free on the disk ({free / 1e6:.0f} MB free); free space"
            )
        if self.disk_budget_bytes is None:
            return
        used = folder_bytes(self.run_dir) if self.run_dir.exists() else 0
        peak = used + self._pending_bytes + new_bytes
        if peak > self.disk_budget_bytes:
            mb, budget = 1e6, self.disk_budget_bytes
            raise DiskBudgetExceeded(
                f"saving {what} ({new_bytes / mb:.1f} MB) would bring the run dir to {peak / mb:.1f} MB, "
                f"over its disk budget ({budget / mb:.1f} MB); raise --disk-budget or free space"
            )

    def save_latest(self, step: int, files: dict[str, bytes | tuple[Callable[[], bytes], int]]) -> None:
        """Persist a latest checkpoint in the background.

        :param files: suffix (``MODEL_SUFFIX``, ``BUFFER_SUFFIX``, ``STATE_SUFFIX``) -> content, or
            ``(serialise, size_estimate)`` to serialise in the writer thread.
        """
        self.wait()
        size = sum(len(v) if isinstance(v, bytes) else v[1] for v in files.values())
        self.check_budget(size, f"the checkpoint at step {step}")
        self._pending_bytes = size
        self._writer = threading.Thread(
            target=self._write_latest, args=(step, files), name="checkpoint-writer", daemon=False
        )
        self._writer.start()

    def _write_latest(self, step: int, files: dict) -> None:
        try:
            start = time.perf_counter()
            stem = self.stem(step)
            entries = {}
            for suffix, content in files.items():
                data = content if isinstance(content, bytes) else content[0]()
                path = stem.with_name(stem.name + suffix)
                atomic_write_bytes(path, data)
                entries[path.name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            manifest = {"step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": entries}
            atomic_write_json(Checkpoint(step, stem).manifest, manifest)
            self.last_save_seconds = time.perf_counter() - start
            self.on_event("saved", step, {"bytes": sum(e["bytes"] for e in entries.values())})
            self._rotate()
        except BaseException as exc:  # reported on the training thread at the next wait()
            self._error = exc
        finally:
            self._pending_bytes = 0

    def _rotate(self) -> None:
        for step, _ in self.manifests()[self.keep :]:
            self._delete(step)
            self.on_event("rotated", step, {})

    def _delete(self, step: int) -> None:
        stem = self.stem(step)
        # Manifest first: a half-deleted checkpoint must never look complete.
        for suffix in (MANIFEST_SUFFIX, MODEL_SUFFIX, BUFFER_SUFFIX, STATE_SUFFIX):
            stem.with_name(stem.name + suffix).unlink(missing_ok=True)

    def wait(self) -> None:
        """Block until the save in flight is on disk; re-raise its error, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def save_best(self, model_zip: bytes, info: dict) -> None:
        """Replace best_model.zip atomically; best_model.json records its score and sha256.

        Order: the new record goes to ``best_model.json.pending``, then the zip is replaced, then
        the record is renamed into place; :meth:`read_best` completes an interrupted sequence.
        """
        self.check_budget(len(model_zip), "the best model")
        record = {**info, "sha256": sha256_bytes(model_zip)}
        pending = self.best_dir / "best_model.json.pending"
        atomic_write_json(pending, record)
        atomic_write_bytes(self.best_dir / "best_model.zip", model_zip)
        pending.replace(self.best_dir / "best_model.json")
        fsync_dir(self.best_dir)

    def read_best(self) -> dict | None:
        """The record (step, mean_reward, std_reward) of the model in best_model.zip, if known."""
        model = self.best_dir / "best_model.zip"
        if not model.is_file():
            return None
        digest = sha256_file(model)
        for name in ("best_model.json", "best_model.json.pending"):
            path = self.best_dir / name
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("sha256") == digest:
                if name.endswith(".pending"):
                    path.replace(self.best_dir / "best_model.json")
                return record
        warnings.warn(f"{model} has no matching best_model.json; its score is unknown", stacklevel=2)
        return None

    def save_final(self, model_zip: bytes) -> None:
        self.check_budget(len(model_zip), "the final model")
        atomic_write_bytes(self.final_model, model_zip)

    def write_metadata(self, metadata: dict) -> None:
        atomic_write_json(self.metadata_path, metadata)

    def read_metadata(self) -> dict | None:
        if not self.metadata_path.is_file():
            return None
        try:
            return json.loads(self.metadata_path.read_text())
        except ValueError:
            return None
