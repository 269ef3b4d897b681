"""The model registry: immutable model versions, the production pointer, and a record of every decision.

Layout of a registry folder::

    v0001/ v0002/ ...     one immutable version each (below)
    production.json       the production pointer {version, since, previous, history, decision}, replaced
                          atomically; ``history`` lists the earlier production versions, oldest first
                          (``previous`` is its last), ``decision`` names the record that moved it
    decisions/            one JSON record per promotion, rollback or gate decision, written atomically
                          and never rewritten: ``{UTC time}-{sequence}-{kind}.json``
    .lock                 serialises the writers (``flock``)
    .staging-{pid}-{id}/  a version being built: invisible, and removed once its process is gone

A version folder holds the serving subset of the run dir it came from, in the run dir's own layout,
so :meth:`rl_lib.serving.policy.ModelPolicy.load` serves it unchanged::

    {name}_training_metadata.json
    best_model/best_model.zip      the run's best model, checked against best_model.json on register
    best_model/best_model.json
    inference/best_q_fp32.onnx     exported from that very zip (copied from the run, else exported)
    metrics.json                   what the registering caller measured (e.g. the gate's results)
    lineage.json                   parent version, data window, source run dir and model, code commit,
                                   creation time
    manifest.json                  sha256 and bytes of every other file; written last

A version is built under a staging name and renamed into place under the lock: a reader sees it
whole or not at all, and concurrent registers get distinct numbers. A version whose files do not
match its manifest (a file missing, changed or added) is refused by :meth:`ModelRegistry.promote`,
:meth:`ModelRegistry.rollback` and the service's watcher (:class:`rl_lib.serving.service.ProductionWatcher`).
A promotion or rollback writes its decision record before it moves the pointer: a crash in between
leaves a record of a move the pointer does not show, never a move without its record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rl_lib.errors import UserError
from rl_lib.io import FILE_MODE, atomic_write_json, fsync_dir, mismatched_file, sha256_file
from rl_lib.training.checkpoints import METADATA_SUFFIX

POINTER, DECISIONS, LOCK = "production.json", "decisions", ".lock"
MANIFEST, METRICS, LINEAGE = "manifest.json", "metrics.json", "lineage.json"
MODEL_ZIP, MODEL_RECORD = "best_model/best_model.zip", "best_model/best_model.json"
ONNX_FP32 = "inference/best_q_fp32.onnx"  # rl_lib.inference.onnx_path(version_dir, "best")
MANIFEST_SCHEMA = "rl_lib.registry.manifest/1"
DECISION_SCHEMA = "rl_lib.registry.decision/1"
DECISION_KINDS = ("promote", "rollback", "gate")
STAGING_PREFIX = ".staging-"

_VERSION = re.compile(r"v(\d{4,})")
_DECISION = re.compile(r"\d{8}T\d{6}Z-(\d{6,})-([a-z]+)\.json")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def is_registry(path: str | Path) -> bool:
    """True for a registry folder (one that has a pointer, a lock or a version), False for a run dir."""
    path = Path(path)
    if not path.is_dir() or any(path.glob(f"*{METADATA_SUFFIX}")):
        return False
    if (path / POINTER).is_file() or (path / LOCK).is_file():
        return True
    return any(_VERSION.fullmatch(p.name) and p.is_dir() for p in path.iterdir())


class ModelRegistry:
    """A registry folder (created by the first write; reading an absent one finds no version).

    :param root: the registry folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --------------------------------------------------------------- versions
    def versions(self) -> list[str]:
        """Every published version, oldest first (valid or not: see :meth:`verify`)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.root.iterdir() if (m := _VERSION.fullmatch(p.name))]
        return [name for _, name in sorted(found)]

    def version_dir(self, version: str) -> Path:
        """The folder of ``version``; :class:`UserError` when there is no such version."""
        folder = self.root / str(version)
        if not _VERSION.fullmatch(str(version)) or not folder.is_dir():
            raise UserError(f"{version}: no such version in {self.root} (see rl-lib registry list)")
        return folder

    def verify(self, version: str) -> str | None:
        """None when every file of ``version`` matches its manifest and none is missing or added,
        else the reason (the manifest is recomputed: every file is hashed)."""
        folder = self.root / str(version)
        if not _VERSION.fullmatch(str(version)) or not folder.is_dir():
            return f"{version}: no such version"
        try:
            recorded = json.loads((folder / MANIFEST).read_text())["files"]
            expected = {str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in recorded.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"unreadable {MANIFEST} ({type(exc).__name__}: {exc})".splitlines()[0]
        required = {MODEL_ZIP, MODEL_RECORD, ONNX_FP32, METRICS, LINEAGE}
        if missing := sorted(required - expected.keys()):
            return f"the manifest does not list {', '.join(missing)}"
        if not any("/" not in name and name.endswith(METADATA_SUFFIX) for name in expected):
            return f"the manifest does not list a *{METADATA_SUFFIX}"
        present = set(_files(folder))
        if added := sorted(present - expected.keys()):
            return f"{', '.join(added)}: not in the manifest (a version is immutable)"
        return mismatched_file(folder, expected)

    def register(
        self,
        run_dir: str | Path,
        parent: str | None = None,
        data_window: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> str:
        """Publish a DQN run dir's best model as the next version; returns its name (``v0001``...).

        The best model must match its record (``best_model.json``); its ONNX FP32 graph is copied
        when the run exported it from that very zip, else exported on the copy.

        :param parent: the version this one was trained from (must exist and verify).
        :param data_window: the experience it was trained on (e.g. first and last service day).
        :param metrics: what the caller measured (e.g. the gate's results), stored as ``metrics.json``.
        """
        from rl_lib.training.run_record import git_commit, metadata_path

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a folder (register takes a DQN run dir)")
        meta_path = metadata_path(run_dir)
        meta = json.loads(meta_path.read_text())
        digest = _checked_model_digest(run_dir)
        if parent is not None:
            self._require_valid(parent)
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_orphaned_staging()
        stage = self.root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        stage.mkdir()
        try:
            for name in (meta_path.name, MODEL_ZIP, MODEL_RECORD):
                _copy_durably(run_dir / name, stage / name)
            # A run still training replaces its best model at any time: vouch for the copy itself.
            copied = sha256_file(stage / MODEL_ZIP), _read_json(stage / MODEL_RECORD).get("sha256")
            if copied != (digest, digest):
                raise UserError(f"{run_dir}: its best model changed while it was copied (is it still "
                                "training?); register it again")  # fmt: skip
            if (run_dir / ONNX_FP32).is_file():
                _copy_durably(run_dir / ONNX_FP32, stage / ONNX_FP32)
            if not _exported_from(stage / ONNX_FP32, digest):  # none, or exported from another zip
                from rl_lib.inference import export_onnx

                export_onnx(stage)
            atomic_write_json(stage / METRICS, metrics or {})
            atomic_write_json(stage / LINEAGE, {
                "parent": parent, "data_window": data_window, "source_run_dir": str(run_dir.resolve()),
                "model": f"{meta['name']}-seed{meta['seed']}@{digest[:12]}", "model_sha256": digest,
                "training_git_commit": meta.get("git_commit"), "code_commit": git_commit(),
                "created": _utc_now().isoformat(timespec="seconds"),
            })  # fmt: skip
            files = {name: {"sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
                     for name in _files(stage)}  # fmt: skip
            atomic_write_json(stage / MANIFEST, {"schema": MANIFEST_SCHEMA, "files": files})
            for folder in (stage / "best_model", stage / "inference", stage):
                fsync_dir(folder)
            with self._locked():
                version = version_name(self._last_number() + 1)
                os.rename(stage, self.root / version)  # the one step that makes it visible
                fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return version

    def list(self) -> list[dict[str, Any]]:
        """One row per version, oldest first: version, production, problem (None when it verifies),
        created, model, parent, source run dir."""
        production = self.production()
        rows = []
        for version in self.versions():
            problem = self.verify(version)
            lineage = _read_json(self.root / version / LINEAGE) if problem is None else {}
            described = {k: lineage.get(k) for k in ("created", "model", "parent", "source_run_dir")}
            rows.append({"version": version, "production": version == production, "problem": problem,
                         **described})  # fmt: skip
        return rows

    def show(self, version: str) -> dict[str, Any]:
        """Everything known of ``version``: problem, production, lineage, metrics, files, decisions."""
        folder = self.version_dir(version)
        manifest = _read_json(folder / MANIFEST)
        return {
            "version": version,
            "production": version == self.production(),
            "problem": self.verify(version),
            "lineage": _read_json(folder / LINEAGE),
            "metrics": _read_json(folder / METRICS),
            "files": manifest.get("files"),
            "decisions": [d for d in self.decisions() if version in (d.get("version"), d.get("from"))],
        }

    # ------------------------------------------------------------- production
    def production(self) -> str | None:
        """The production version, or None before the first promotion."""
        pointer = self._read_pointer()
        return pointer["version"] if pointer else None

    def production_dir(self) -> Path | None:
        version = self.production()
        return self.version_dir(version) if version else None

    def pointer(self) -> dict[str, Any] | None:
        """The production pointer as written (None before the first promotion)."""
        return self._read_pointer()

    def promote(self, version: str, reason: str = "") -> dict[str, Any]:
        """Make ``version`` production (it must verify); returns the decision record."""
        with self._locked():
            self._require_valid(version)
            pointer = self._read_pointer()
            if pointer is not None and pointer["version"] == version:
                raise UserError(f"{version} is already in production (since {pointer['since']})")
            history = [*pointer["history"], pointer["version"]] if pointer else []
            return self._move("promote", version, pointer, history, reason)

    def rollback(self, reason: str = "") -> dict[str, Any]:
        """Put the previous production version back (it must verify); returns the decision record."""
        with self._locked():
            pointer = self._read_pointer()
            if pointer is None:
                raise UserError(f"{self.root}: no production version, so nothing to roll back")
            if not pointer["history"]:
                raise UserError(f"{pointer['version']} is the first production version: there is no "
                                "previous one to roll back to")  # fmt: skip
            target = pointer["history"][-1]
            if problem := self.verify(target):
                raise UserError(f"cannot roll back to {target}: {problem}; promote another version instead")
            return self._move("rollback", target, pointer, pointer["history"][:-1], reason)

    # -------------------------------------------------------------- decisions
    def record_decision(self, kind: str, version: str | None = None, reason: str = "",
                        **details: Any) -> dict[str, Any]:  # fmt: skip
        """Append a decision record (e.g. the gate's: ``kind="gate"``, its evidence in ``details``)."""
        if kind not in DECISION_KINDS:
            raise ValueError(f"decision kind {kind!r}: choose one of {', '.join(DECISION_KINDS)}")
        with self._locked():
            return self._append_decision(kind, version, reason, details)[1]

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision record, in the order they were made."""
        folder = self.root / DECISIONS
        if not folder.is_dir():
            return []
        found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _DECISION.fullmatch(p.name)))
        return [json.loads(path.read_text()) for _, path in found]

    # --------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock (an flock on ``.lock``: between threads and processes alike)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases it

    def _require_valid(self, version: str) -> None:
        self.version_dir(version)
        if problem := self.verify(version):
            raise UserError(f"{version} fails verification ({problem}): it is refused")

    def _last_number(self) -> int:
        versions = self.versions()
        return int(versions[-1][1:]) if versions else 0

    def _read_pointer(self) -> dict[str, Any] | None:
        path = self.root / POINTER
        try:
            pointer = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable ({exc}); it is only written by rl-lib registry") from None
        if not (isinstance(pointer, dict) and _VERSION.fullmatch(str(pointer.get("version")))
                and isinstance(pointer.get("history"), list)):  # fmt: skip
            raise UserError(f"{path}: not a production pointer; it is only written by rl-lib registry")
        return pointer

    def _move(self, kind: str, version: str, pointer: dict | None, history: list[str], reason: str) -> dict:
        """Record the decision, then replace the pointer (the lock is held)."""
        current = pointer["version"] if pointer else None
        name, record = self._append_decision(kind, version, reason, {"from": current})
        atomic_write_json(self.root / POINTER, {
            "version": version, "since": record["time"], "previous": history[-1] if history else None,
            "history": history, "decision": name,
        })  # fmt: skip
        return record

    def _append_decision(self, kind: str, version: str | None, reason: str,
                         details: dict[str, Any]) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """Write the next decision record (the lock is held); returns its file name and the record."""
        folder = self.root / DECISIONS
        folder.mkdir(exist_ok=True)
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _DECISION.fullmatch(p.name))]
        sequence = max(numbers, default=0) + 1
        when = _utc_now()
        name = f"{when:%Y%m%dT%H%M%SZ}-{sequence:06d}-{kind}.json"
        record = {"schema": DECISION_SCHEMA, "sequence": sequence, "time": when.isoformat(timespec="seconds"),
                  "kind": kind, "version": version, "reason": reason, **details, "user": _user(),
                  "host": socket.gethostname()}  # fmt: skip
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write((json.dumps(record, indent=2, default=str) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, folder / name)  # unlike a rename, a link never replaces an existing record
        finally:
            Path(tmp).unlink(missing_ok=True)
        fsync_dir(folder)
        return name, record

    def _remove_orphaned_staging(self) -> None:
        """Delete the staging folders of writers that died (a live writer's is left alone)."""
        for path in self.root.glob(f"{STAGING_PREFIX}*"):
            pid = path.name[len(STAGING_PREFIX) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _files(folder: Path) -> list[str]:
    """The files of a version folder, relative and sorted, the manifest excluded."""
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST
    )


def _checked_model_digest(run_dir: Path) -> str:
    """The sha256 of the run's best model, after checking it against its record."""
    model, record = run_dir / MODEL_ZIP, run_dir / MODEL_RECORD
    if not model.is_file():
        raise UserError(f"{model}: missing; a run dir registers its best model")
    if not record.is_file():
        raise UserError(f"{record}: missing, so {model.name} cannot be verified")
    digest = sha256_file(model)
    if _read_json(record).get("sha256") != digest:
        raise UserError(f"{model}: sha256 {digest[:12]} does not match its record; refusing to register it")
    return digest


def _exported_from(onnx_file: Path, digest: str) -> bool:
    """True when ``onnx_file`` exists and was exported from the zip of ``digest``."""
    if not onnx_file.is_file():
        return False
    from rl_lib.inference import onnx_metadata

    try:
        return onnx_metadata(onnx_file).get("source_sha256") == digest
    except Exception:  # an unreadable graph is exported again
        return False


def _copy_durably(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing or unreadable (:meth:`verify` says why)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
