"""The loop's processes on one machine: a Celery worker and beat (``rl-lib feedback run``, the demo).

Each runs ``python -m celery -A rl_lib.feedback.tasks ...`` in its own session (so it is stopped as a
group, pool processes included), with the settings file in ``RL_LIB_FEEDBACK_SETTINGS``. Stopping
asks politely first (SIGTERM: beat stops, the worker finishes its running task) and kills after
``timeout_s``: a task killed mid-run is delivered again later and resumes (:mod:`rl_lib.feedback.tasks`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rl_lib.feedback.settings import SETTINGS_ENV

APP = "rl_lib.feedback.tasks"


def celery_args(*args: str) -> list[str]:
    """The command line of a Celery process of the loop (``args``: ``worker ...``, ``beat``, ``flower``)."""
    return [sys.executable, "-m", "celery", "-A", APP, *args]


def worker_args(name: str = "worker", concurrency: int = 2) -> tuple[str, ...]:
    """A prefork worker; two processes by default, so an hourly collect never waits for a retrain."""
    return ("worker", "--pool", "prefork", "--concurrency", str(concurrency), "--hostname", f"{name}@%h")


BEAT_ARGS = ("beat",)


def start(
    args: tuple[str, ...],
    settings_path: str | Path | None,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``celery -A rl_lib.feedback.tasks *args`` with the settings of ``settings_path`` (None: those
    of the environment); output appended to ``log_file``, else inherited."""
    environ = dict(env if env is not None else os.environ)
    if settings_path is not None:
        environ[SETTINGS_ENV] = str(settings_path)
    if log_file is None:
        return subprocess.Popen(celery_args(*args, "--loglevel", "INFO"), env=environ, start_new_session=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            celery_args(*args, "--loglevel", "INFO"),
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> int | None:
    """SIGTERM to the process's group, SIGKILL after ``timeout_s``; returns its exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGKILL)  # whatever of its group is left (pool processes)
    return process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM exits (``SystemExit``) like Ctrl-C does, so the processes started in their own
    sessions are stopped on the way out instead of being left behind."""

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def worker_and_beat(
    settings_path: str | Path | None,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    stop_timeout_s: float = 30.0,
) -> Iterator[dict[str, subprocess.Popen]]:
    """A worker and beat running while inside (logs to ``log_dir``/worker.log and beat.log, else
    inherited); both stopped on exit, beat first."""
    with ExitStack() as stack:
        processes = {}
        for kind, args in (("worker", worker_args()), ("beat", BEAT_ARGS)):
            log_file = log_dir / f"{kind}.log" if log_dir is not None else None
            processes[kind] = start(args, settings_path, log_file, env)
            stack.callback(stop, processes[kind], stop_timeout_s)
        yield processes
