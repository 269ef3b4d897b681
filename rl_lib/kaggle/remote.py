"""The Kaggle API boundary: upload the code data set, push, status, pull, run.

Every function takes the API object (a ``kaggle.api.kaggle_api_extended.KaggleApi``, or a fake in
tests) and calls only these methods of it: ``dataset_status``, ``dataset_create_new``,
``dataset_create_version``, ``kernels_push``, ``kernels_status``, ``kernels_output`` and
``get_config_value``. :func:`connect` is the one place that imports the kaggle package, after
:func:`rl_lib.kaggle.credentials.require_credentials` (the package authenticates on import).

- :func:`push`: build the kernel folder (:func:`build_for_push`); upload the code data set when its
  code hash differs from the last upload (create it, or a new version), wait until it is ready;
  validate; push the kernel (:func:`push_built`).
- :func:`wait`: poll ``kernels_status`` until complete or error, or the timeout;
  :func:`latest_state` also tells a kernel never pushed (404).
- :func:`pull`: the kernel's output into ``results/NAME`` (the results folder: ``runs/``, ...):
  metadata, evaluations, the newest checkpoint of each run (the files its manifest lists, verified
  against it), best and final models, tensorboard logs, and the kernel log under ``kaggle_logs/``;
  staged, then renamed into place.
- :func:`run`: push, wait, pull, and push again while a run is interrupted, until every run is
  completed, one diverged, a version makes no progress, or ``max_versions``; a version already
  queued, running or ended is waited for and pulled first instead of pushing over it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_lib.errors import UserError
from rl_lib.io import atomic_write_json
from rl_lib.kaggle import swap_into_place
from rl_lib.kaggle.kernel import (
    BuiltKernel,
    build_kernel,
    read_record,
    validate_kernel_folder,
)
from rl_lib.training.checkpoints import MANIFEST_SUFFIX, METADATA_SUFFIX, CheckpointManager, metadata_file
from rl_lib.training.run_record import EXIT_COMPLETED, EXIT_DIVERGED, EXIT_INTERRUPTED, RUNS

QUEUED, RUNNING, COMPLETE, ERROR = "queued", "running", "complete", "error"
#: KernelWorkerStatus (kagglesdk) -> what we report.
STATES = {"queued": QUEUED, "new_script": QUEUED, "running": RUNNING, "cancel_requested": RUNNING,
          "complete": COMPLETE, "error": ERROR, "cancel_acknowledged": ERROR}  # fmt: skip
UPLOADS = ".code_dataset_uploads.json"
#: DatabundleVersionStatus names (lowercased, as ``dataset_status`` returns them) that never become ready.
DATASET_FAILED = ("failed", "deleted", "error")
#: Output files pulled in the first pass (the newest checkpoint of each run follows in a second).
PULL_PATTERN = (
    rf"({re.escape(METADATA_SUFFIX)}|/best_model/best_model\.(zip|json)|_final\.zip|{re.escape(MANIFEST_SUFFIX)}"
    r"|/evaluations?/[^/]+\.(csv|json)|/tensorboard/.+)$"
)
#: Exit codes of :func:`run` besides those it shares with ``rl-lib train`` (completed 0, interrupted 3,
#: diverged 4).
EXIT_KERNEL_ERROR, EXIT_NO_PROGRESS = 1, 5
#: How long :func:`upload_code_dataset` waits for Kaggle to process an upload, and how often it asks.
DATASET_TIMEOUT_S, DATASET_POLL_S = 600.0, 10.0


class KaggleError(UserError):
    """Kaggle refused or failed something; the message says what it said."""


class NoOutput(KaggleError):
    """A kernel version's output holds no results folder (it failed before training wrote any)."""


def connect() -> Any:
    """An authenticated ``KaggleApi``; :class:`UserError` (nothing pushed) without credentials."""
    from rl_lib.kaggle.credentials import HELP, require_credentials

    sources = require_credentials()
    # The package authenticates on import and KaggleApi.authenticate() prints its multi-line help
    # before exit(1); both are captured, so that a failure is the one line below.
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise UserError(f"cannot import the kaggle package ({exc}); pip install -e '.[kaggle]'") from None
    except SystemExit:
        raise UserError(f"Kaggle did not accept the credentials in {', '.join(sources)}: {HELP}") from None
    except Exception as exc:  # network errors while checking a token
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise KaggleError(f"authenticating with Kaggle failed ({first}); check the network") from None
    print(said.getvalue(), end="")
    return api


def _status_code(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _check_response(response: Any, what: str) -> Any:
    error = getattr(response, "error", None)
    if error:
        raise KaggleError(f"{what}: Kaggle answered {error!r}")
    return response


def upload_code_dataset(
    api: Any,
    dataset: Any,
    uploads_file: Path,
    *,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Create or version the code data set unless its code hash was the last one uploaded.

    :return: True when something was uploaded. It then waits until Kaggle says ``ready`` (at most
        :data:`DATASET_TIMEOUT_S`, asking every :data:`DATASET_POLL_S` seconds).
    """
    uploads = json.loads(uploads_file.read_text()) if uploads_file.is_file() else {}
    if uploads.get(dataset.ref) == dataset.code_hash:
        return False
    try:
        api.dataset_status(dataset.ref)
        exists = True
    except Exception as exc:  # the kaggle client raises requests' HTTPError
        if _status_code(exc) != 404:
            raise KaggleError(f"checking the data set {dataset.ref}: {exc}") from None
        exists = False
    if exists:
        response = api.dataset_create_version(
            str(dataset.folder),
            version_notes=f"rl_lib code {dataset.code_hash[:12]}",
            quiet=True,
            dir_mode="skip",
        )
    else:
        response = api.dataset_create_new(str(dataset.folder), public=False, quiet=True, dir_mode="skip")
    _check_response(response, f"uploading the code data set {dataset.ref}")
    log(f"code data set {dataset.ref}: {'new version' if exists else 'created'} ({dataset.code_hash[:12]})")
    waited = 0.0
    while (status := str(api.dataset_status(dataset.ref)).lower()) != "ready":
        if status in DATASET_FAILED or waited >= DATASET_TIMEOUT_S:
            raise KaggleError(
                f"the code data set {dataset.ref} is {status!r} after {waited:.0f} s; see kaggle.com"
            )
        sleep(DATASET_POLL_S)
        waited += DATASET_POLL_S
    atomic_write_json(uploads_file, {**uploads, dataset.ref: dataset.code_hash})
    return True


@dataclass(frozen=True)
class Pushed:
    kernel: BuiltKernel
    version: int | None
    url: str


def build_for_push(
    api: Any, name: str, params_file: str | None = None, *, log: Callable[[str], None] = print, **build: Any
) -> BuiltKernel:
    """Build ``kaggle_kernels/NAME`` from ``params_file``, else from the one of its last build.

    :param build: passed to :func:`rl_lib.kaggle.kernel.build_kernel` (``owner``, ``kernels_dir``, ...);
        the owner defaults to the authenticated user.
    """
    kernels_dir = Path(build.pop("kernels_dir", "kaggle_kernels"))
    if params_file is None:
        params_file = read_record(kernels_dir / name)["params_file"]
    owner = build.pop("owner", None)
    if owner is None:
        from rl_lib.kaggle.kernel import load_params

        owner = load_params(params_file)[1].owner or api.get_config_value("username")
    return build_kernel(name, params_file, owner=owner, kernels_dir=kernels_dir, log=log, **build)


def push_built(api: Any, kernel: BuiltKernel, *, log: Callable[[str], None] = print) -> Pushed:
    """Upload the code data set of a built kernel if it changed, validate it, push a new version."""
    upload_code_dataset(api, kernel.dataset, kernel.folder.parent / UPLOADS, log=log)
    validate_kernel_folder(kernel.folder)
    response = _check_response(api.kernels_push(str(kernel.folder)), f"pushing {kernel.kernel_id}")
    invalid = [s for s in getattr(response, "invalid_kernel_sources", None) or [] if s != kernel.kernel_id]
    invalid += list(getattr(response, "invalid_dataset_sources", None) or [])
    if invalid:
        raise KaggleError(f"pushing {kernel.kernel_id}: Kaggle does not know the sources {invalid}")
    version = getattr(response, "version_number", None) or None
    url = getattr(response, "url", "") or ""
    log(f"pushed {kernel.kernel_id} version {version or '?'}: {url}")
    return Pushed(kernel, version, url)


def push(
    api: Any, name: str, params_file: str | None = None, *, log: Callable[[str], None] = print, **build: Any
) -> Pushed:
    """Build ``kaggle_kernels/NAME`` (:func:`build_for_push`), upload the code data set if it changed,
    and push a new kernel version (:func:`push_built`)."""
    return push_built(api, build_for_push(api, name, params_file, log=log, **build), log=log)


def status(api: Any, kernel_id: str) -> tuple[str, str]:
    """``(queued | running | complete | error, failure message)`` of the kernel's latest version."""
    response = api.kernels_status(kernel_id)
    raw = getattr(response, "status", "")
    key = str(getattr(raw, "name", raw)).lower().rsplit(".", 1)[-1]
    if key not in STATES:
        raise KaggleError(f"{kernel_id}: unknown kernel status {raw!r}")
    return STATES[key], str(getattr(response, "failure_message", "") or "")


def latest_state(api: Any, kernel_id: str) -> tuple[str, str] | None:
    """:func:`status`, or None when the kernel was never pushed (the client raises requests'
    ``HTTPError`` with status 404); any other failure is a :class:`KaggleError`."""
    try:
        return status(api, kernel_id)
    except KaggleError:
        raise
    except Exception as exc:  # HTTPError; ValueError for 401 / 403 (a private or mistyped kernel)
        if _status_code(exc) == 404:
            return None
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise KaggleError(f"asking Kaggle for the status of {kernel_id} failed: {first}") from None


def wait(
    api: Any,
    kernel_id: str,
    timeout_s: float,
    interval_s: float = 60.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Poll :func:`status` every ``interval_s`` until complete or error; after ``timeout_s`` seconds of
    waiting, the last state (queued or running). Each change of state is printed."""
    waited, last = 0.0, None
    while True:
        state, message = status(api, kernel_id)
        if state != last:
            log(f"{kernel_id}: {state}" + (f" ({message})" if message else ""))
            last = state
        if state in (COMPLETE, ERROR) or waited >= timeout_s:
            return state, message
        step = min(interval_s, timeout_s - waited)
        sleep(step)
        waited += step


def _newest_checkpoints(staging: Path) -> list[tuple[CheckpointManager, Path]]:
    """The newest checkpoint manifest of each run dir under ``staging`` (a folder holding a run's
    metadata), with the run's checkpoint manager; every other manifest is deleted."""
    newest = []
    for metadata in sorted(staging.rglob(f"*{METADATA_SUFFIX}")):
        manager = CheckpointManager(metadata.parent, metadata.name.removesuffix(METADATA_SUFFIX))
        manifests = manager.manifests()
        if manifests:
            newest.append((manager, manifests[0][1]))
    keep = {manifest for _, manifest in newest}
    for manifest in staging.rglob(f"*{MANIFEST_SUFFIX}"):
        if manifest not in keep:
            manifest.unlink()
    return newest


def _listed_files(manifest: Path) -> list[str]:
    """The files a manifest lists beside it; none when it is unreadable (its verification says why)."""
    try:
        return [f for f in CheckpointManager.manifest_entries(manifest) if "/" not in f]
    except ValueError:
        return []


def pull(
    api: Any,
    name: str,
    *,
    kernels_dir: str | Path = "kaggle_kernels",
    results_root: str | Path = "results",
    log: Callable[[str], None] = print,
) -> Path:
    """The latest version's output into ``results_root/NAME``; see the module docstring."""
    record = read_record(Path(kernels_dir) / name)
    kernel_id, results_dir = record["kernel"], Path(record["results_dir"])
    target = Path(results_root) / name
    staging = Path(results_root) / f".{name}.pull"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        api.kernels_output(kernel_id, str(staging), file_pattern=PULL_PATTERN, force=True, quiet=True)
        newest = _newest_checkpoints(staging)
        if newest:
            files = sorted((m.parent / f).relative_to(staging).as_posix() for _, m in newest
                           for f in _listed_files(m))  # fmt: skip
            pattern = rf"^({'|'.join(re.escape(f) for f in files)})$"
            api.kernels_output(kernel_id, str(staging), file_pattern=pattern, force=True, quiet=True)
        for manager, manifest in newest:  # a torn download must not pass for a checkpoint
            problem = manager.verify(manifest)
            if problem is not None:
                raise KaggleError(f"{kernel_id}: the pulled checkpoint {manifest.relative_to(staging)} is "
                                  f"broken ({problem}); pull again")  # fmt: skip
        pulled = staging / results_dir
        if not pulled.is_dir():
            raise NoOutput(f"{kernel_id}: its output holds no {results_dir}/; did the version run? "
                              "(rl-lib kaggle status)")  # fmt: skip
        logs = pulled / "kaggle_logs"
        for log_file in staging.glob("*.log"):
            logs.mkdir(exist_ok=True)
            log_file.replace(logs / log_file.name)
        swap_into_place(pulled, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"pulled {kernel_id} into {target}")
    return target


@dataclass(frozen=True)
class Progress:
    """Where the runs of a kernel stand, from the pulled metadata."""

    statuses: dict[str, str]  # run -> completed | interrupted | diverged | running | not started
    done: int
    target: int
    reasons: dict[str, str]

    @property
    def completed(self) -> bool:
        return all(s == "completed" for s in self.statuses.values())

    @property
    def diverged(self) -> list[str]:
        return [r for r, s in self.statuses.items() if s == "diverged"]

    def line(self) -> str:
        counts: dict[str, int] = {}
        for s in self.statuses.values():
            counts[s] = counts.get(s, 0) + 1
        share = 100 * self.done / self.target if self.target else 0.0
        runs = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"{self.done:,} / {self.target:,} timesteps ({share:.1f} %); runs: {runs}"


def progress(results: Path, record: dict) -> Progress:
    """The :class:`Progress` of the runs a kernel record names, in a pulled results folder."""
    statuses, reasons, done, target = {}, {}, 0, 0
    for run in record["runs"]:
        path = Path(results) / RUNS / run["run"] / metadata_file(run["name"])
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            meta = {}
        statuses[run["run"]] = meta.get("status", "not started")
        if meta.get("stop_reason"):
            reasons[run["run"]] = str(meta["stop_reason"])
        done += int(meta.get("timesteps", {}).get("done", 0))
        target += int(run["target"])
    return Progress(statuses, done, target, reasons)


def run(
    api: Any,
    name: str,
    params_file: str | None = None,
    *,
    max_versions: int | None = None,
    interval_s: float = 60.0,
    kernels_dir: str | Path = "kaggle_kernels",
    results_root: str | Path = "results",
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
    **build: Any,
) -> int:
    """Push, wait, pull, and push the next version until done; returns the exit code.

    Safe to restart at any time: before its first push it asks for the kernel's latest version
    (:func:`latest_state`). Never pushed: push. Queued or running: no push; that version is waited
    for and pulled as if this call had pushed it. Complete or error: pulled first, and a new version
    is pushed only when its metadata leaves runs to train (not when every run completed or one
    diverged; an error alone is no reason to stop: the next version resumes from the checkpoints).

    0: every run completed; 1: a version ended in error; 3: ``max_versions`` (pushed by this call)
    reached with runs still interrupted; 4: a run diverged; 5: a version made no progress (e.g. the
    disk budget refused a save).
    """

    kernel = build_for_push(api, name, params_file, log=log, kernels_dir=kernels_dir, **build)
    record, kernel_id = kernel.record, kernel.kernel_id
    versions = max_versions or int(record["max_versions"])
    hours = record["version_timeout_h"]
    latest = latest_state(api, kernel_id)
    if latest is None:
        log(f"{kernel_id}: no version yet")
    elif latest[0] in (QUEUED, RUNNING):
        log(f"{kernel_id}: the latest version is {latest[0]}; waiting for it instead of pushing another")
    before, round_ = -1, 0
    while True:
        ended_before = latest is not None and latest[0] in (COMPLETE, ERROR)
        if latest is None:
            round_ += 1
            if round_ > 1:  # later rounds rebuild from the same parameter file
                kernel = build_for_push(api, name, None, log=log, kernels_dir=kernels_dir, **build)
                record, kernel_id = kernel.record, kernel.kernel_id
            pushed = push_built(api, kernel, log=log)
            label = f"version {pushed.version or round_} ({round_} of at most {versions})"
        else:
            label = "the latest version (pushed before this call)"
        latest = None  # from here on, each round pushes
        state, message = wait(api, kernel_id, 3600 * float(hours), interval_s, sleep=sleep, log=log)
        if state not in (COMPLETE, ERROR):
            raise KaggleError(f"{kernel_id} is still {state} after {hours} h; check it on kaggle.com, "
                              f"then `rl-lib kaggle pull {name}`")  # fmt: skip
        try:
            target = pull(api, name, kernels_dir=kernels_dir, results_root=results_root, log=log)
        except NoOutput:
            if not (ended_before and state == ERROR):
                raise
            log(f"{label} ended in error without results ({message or 'no message'}); pushing the next")
            continue
        now = progress(target, record)
        log(f"{label}: {state}; {now.line()}")
        if state == ERROR and not ended_before:
            log(f"{kernel_id} failed: {message or 'see ' + str(target / 'kaggle_logs')}")
            return EXIT_KERNEL_ERROR
        if now.completed:
            log(f"all runs completed; results in {target}")
            return EXIT_COMPLETED
        if now.diverged:
            log(f"diverged: {', '.join(now.diverged)} (see stop_reason in their metadata); stopping")
            return EXIT_DIVERGED
        if now.done <= before:
            why = "; ".join(f"{r}: {s}" for r, s in now.reasons.items()) or "no reason recorded"
            log(f"no progress in this version ({why}); stopping")
            return EXIT_NO_PROGRESS
        before = now.done
        if round_ >= versions:
            log(f"{versions} versions pushed and runs still unfinished; `rl-lib kaggle run {name}` goes on")
            return EXIT_INTERRUPTED
