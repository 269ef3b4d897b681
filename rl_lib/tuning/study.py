"""The Optuna study: a pruned, resumable, parallel search over the DQN's hyperparameters.

One trial = one ordinary training run (:func:`rl_lib.training.train`) of ``timesteps_per_trial``
steps in ``STUDY_DIR/trials/trialN``, with the trial's hyperparameters on top of the base config.
It evaluates ``n_evaluations`` times on the validation days; each evaluation's mean reward is
reported to Optuna, and Optuna's MedianPruner stops the run (pruned) when the trial's best
evaluation so far is below the median of the completed trials' evaluations at the same step (after
``pruner_warmup_evaluations`` evaluations, once ``pruner_startup_trials`` trials have completed).
The trial's value is its best evaluation's mean reward, the score that selects a run's best model.
Test days are never seen by the tuner.

Sampler: TPE with an explicit seed, ``multivariate=True`` and ``constant_liar=True`` set
explicitly (Optuna 4 and 5 differ in defaults; the liar keeps parallel workers from sampling the
same point). Each worker seeds its sampler from (seed, worker index, trials already in the study),
so a resumed or parallel study never replays the random start-up points of another worker. With
one worker and no interruption a study is reproducible; with several, what TPE sees depends on
which trials have finished, as in any asynchronous search.

Storage: an RDB storage (SQLite file ``STUDY_DIR/study.db`` by default, or any SQLAlchemy URL such
as ``postgresql+psycopg://user@host/db`` shared by several machines or Kaggle kernels). RDB, not
the journal file, because it implements Optuna's heartbeats: every running trial records a
heartbeat; a trial whose worker was killed goes stale after ``grace_period`` seconds, is failed
and retried with the same hyperparameters, and the retry resumes the dead trial's run dir from its
latest checkpoint (same seed, same schedule). Completed trials are never rerun.

Budget: the study is complete when ``n_trials`` trials are complete, pruned, failed by divergence,
running or queued (trials failed by a dead or stopped worker are replaced, not counted). Local
workers check the budget and start a trial under one file lock, so they never overshoot it;
workers on other machines (PostgreSQL) can overshoot by at most one trial each.

A diverging trial (NaN loss or weights, evaluation collapse: the run's ``diverged`` status) is
recorded as FAIL with ``outcome = diverged``; the study goes on. SIGTERM / SIGINT / the wall-time
budget stop a worker cleanly: its trial's run dir keeps its latest checkpoint and the trial is
queued again, to resume there next time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import multiprocessing
import shutil
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from rl_lib.config import to_dict
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig
from rl_lib.io import atomic_write_csv
from rl_lib.training.run_record import COMPLETED, DIVERGED, EXIT_COMPLETED, EXIT_INTERRUPTED, INTERRUPTED
from rl_lib.tuning.settings import TuneSettings
from rl_lib.tuning.space import SearchSpace

#: Training seeds of the tuning runs: TUNING_SEEDS_START + the trial's run number. Re-training
#: (rl_lib.tuning.retrain) refuses these, so the confirmation never reuses a tuning seed.
TUNING_SEEDS_START = 1_000_000
MAX_RETRY = 3  # a trial whose worker dies more often than this is left failed
PRUNED = "pruned"  # the other trial outcomes are run statuses (rl_lib.training.run_record)


@dataclass(frozen=True)
class StudySpec:
    """Where a study lives and what it searches: everything a worker process needs."""

    name: str
    study_dir: Path
    storage_url: str
    base: ExperimentConfig
    space: SearchSpace
    settings: TuneSettings
    heartbeat_interval: int = 10
    grace_period: int = 60

    def __post_init__(self) -> None:
        available = self.base.scenario.splits.validation_days
        if self.settings.n_eval_episodes > available:
            raise UserError(f"{self.settings.n_eval_episodes} evaluation episodes per evaluation, but the "
                            f"validation split holds {available} days; lower --eval-episodes")  # fmt: skip

    @property
    def trials_dir(self) -> Path:
        return self.study_dir / "trials"


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def make_storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats (:func:`open_storage`)."""
    with quiet_experimental():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)
    return open_storage(spec.storage_url, heartbeat_interval=spec.heartbeat_interval,
                        grace_period=spec.grace_period, heartbeat_stale_trial_callback=retry)  # fmt: skip


def open_storage(url: str, **rdb: Any) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` (``rdb``: more RDBStorage arguments); a bad or unreachable URL, or a
    missing driver, is a one-line UserError."""
    import sqlalchemy.exc

    if url.startswith("sqlite"):
        engine: dict[str, Any] = {"connect_args": {"timeout": 120}}  # workers wait for the file lock
    else:
        engine = {"pool_pre_ping": True}
    try:
        with quiet_experimental():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **rdb)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as exc:
        raise UserError(f"the storage {url!r} is not a usable database URL ({exc}); "
                        "e.g. sqlite:///study.db or postgresql+psycopg://user@host/db") from None  # fmt: skip
    except ImportError as exc:  # e.g. postgresql:// names psycopg2, which is not installed
        raise UserError(f"the storage {url!r} needs a database driver that is not installed ({exc.name}); "
                        'pip install -e ".[postgresql]" and use postgresql+psycopg://') from None  # fmt: skip
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise UserError(f"cannot open the study storage {url!r}: {reason}") from None


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Heartbeats and stale-trial retries are 'experimental' in Optuna (since 2.8); we rely on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def study_attributes(spec: StudySpec) -> dict[str, Any]:
    """What a study is created with, stored in its user attributes and checked on every resume."""
    return {
        "base_config": to_dict(spec.base),
        "space": spec.space.spec,
        "settings": dataclasses.asdict(spec.settings),
    }


def load_study(spec: StudySpec, worker: int = 0) -> optuna.Study:
    """Create the study or load it (``load_if_exists``), refusing one made with other settings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(spec)
    s = spec.settings
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction="maximize",
        load_if_exists=True,
        sampler=None,
        pruner=_pruner(s),
    )
    attrs = study_attributes(spec)
    if not study.user_attrs:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    else:
        for key, value in attrs.items():
            if study.user_attrs.get(key) != _jsonable(value):
                raise UserError(
                    f"study {spec.name!r} in {spec.storage_url} was created with another "
                    f"{key.replace('_', ' ')}; "
                    "resume it with the same config, space and settings, or choose another --study name"
                )
    # The sampler is per worker and per session (see the module docstring).
    entropy = [s.seed, worker, len(study.get_trials(deepcopy=False))]
    sampler_seed = int(_seed_sequence(entropy))
    study.sampler = optuna.samplers.TPESampler(
        seed=sampler_seed,
        multivariate=True,
        constant_liar=True,
        n_startup_trials=s.n_startup_trials,
    )
    return study


def _pruner(s: TuneSettings) -> optuna.pruners.BasePruner:
    if not s.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=s.pruner_startup_trials,
        n_warmup_steps=s.pruner_warmup_evaluations * s.eval_freq,
        interval_steps=1,
    )


def _seed_sequence(entropy: list[int]) -> int:
    import numpy as np

    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial uses one unit of the study's budget (see the module docstring)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") == DIVERGED


def run_number(trial: optuna.Trial | FrozenTrial) -> int:
    """The number of the trial whose run dir this trial trains in: its own, or the one it resumes.

    A trial records it first thing; a retry of a stale trial inherits it with the user attributes,
    a trial queued by a stopped worker is created with it.
    """
    return int(trial.user_attrs.get("resumes", trial.number))


class TrialDiverged(Exception):
    """The trial's run diverged: recorded as FAIL, the study goes on."""


class WorkerStopped(Exception):
    """A signal or the wall-time budget stopped the worker; its trial is queued to resume."""


class BudgetLock:
    """An exclusive lock on the study folder, held from the budget check until the trial is asked."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")  # noqa: SIM115 (held for the worker's life)
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._file, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def trial_config(spec: StudySpec, params: dict[str, Any], number: int) -> ExperimentConfig:
    """The base config with the trial's hyperparameters and the tuning budget, seed and name."""
    from rl_lib.experiment import with_overrides

    s = spec.settings
    overrides: dict[str, Any] = {f"training.dqn.{k}": v for k, v in spec.space.to_dqn(params).items()}
    overrides.update({
        "training.name": f"trial{number}",
        "training.seed": TUNING_SEEDS_START + number,
        "training.total_timesteps": s.timesteps_per_trial,
        "training.checkpoints.eval_freq": s.eval_freq,
        "training.checkpoints.checkpoint_freq": min(s.eval_freq, _checkpoint_freq(s.timesteps_per_trial)),
        "training.checkpoints.n_eval_episodes": s.n_eval_episodes,
    })  # fmt: skip
    return with_overrides(spec.base, overrides)


def _checkpoint_freq(total: int) -> int:
    from rl_lib.training.checkpoints import adaptive_checkpoint_freq

    return adaptive_checkpoint_freq(total)


class Objective:
    """One trial: train, report each evaluation to the pruner, return the best evaluation."""

    def __init__(self, spec: StudySpec, lock: BudgetLock, deadline: float | None, device: str, log) -> None:
        self.spec, self.lock, self.deadline, self.device, self.log = spec, lock, deadline, device, log

    def __call__(self, trial: optuna.Trial) -> float:
        from rl_lib.training import STOPPED_BY_CALLER, train
        from rl_lib.training.run_record import COMPLETED as RUN_COMPLETED
        from rl_lib.training.run_record import DIVERGED as RUN_DIVERGED
        from rl_lib.training.run_record import read_metadata

        self.lock.release()  # the trial is asked: other workers may check the budget now
        number = run_number(trial)
        trial.set_user_attr("resumes", number)
        trial.set_user_attr("training_seed", TUNING_SEEDS_START + number)
        params = self.spec.space.suggest(trial)
        config = trial_config(self.spec, params, number)
        run_dir = self.spec.trials_dir / f"trial{number}"
        reported: set[int] = set()
        pruning = self.spec.settings.pruning

        def on_evaluation(record: dict, history: list[dict]) -> bool:
            for r in history:  # after a resume, the evaluations before the checkpoint come first
                if r["step"] not in reported:
                    reported.add(r["step"])
                    trial.report(r["mean_reward"], r["step"])
            return pruning and trial.should_prune()

        wall = None if self.deadline is None else max(self.deadline - time.monotonic(), 1.0)
        started = time.perf_counter()
        result = train(config, run_dir, max_wall_time=wall, device=self.device, on_evaluation=on_evaluation,
                       log=lambda *a: None)  # fmt: skip
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        meta = read_metadata(run_dir)
        best = meta.get("best") or {}
        if result.status == RUN_DIVERGED:
            trial.set_user_attr("outcome", DIVERGED)
            trial.set_user_attr("reason", str(result.reason))
            self.log(f"trial {trial.number}: diverged ({result.reason})")
            raise TrialDiverged(str(result.reason))
        if result.status != RUN_COMPLETED and result.reason == STOPPED_BY_CALLER:
            trial.set_user_attr("outcome", PRUNED)
            _drop_checkpoints(run_dir)
            self.log(f"trial {trial.number}: pruned at {result.timesteps} steps")
            raise optuna.TrialPruned()
        if result.status != RUN_COMPLETED:
            trial.set_user_attr("outcome", INTERRUPTED)
            trial.study.enqueue_trial(params, user_attrs={"resumes": number}, skip_if_exists=False)
            raise WorkerStopped(f"trial {trial.number} stopped at {result.timesteps} steps ({result.reason})")
        trial.set_user_attr("outcome", COMPLETED)
        trial.set_user_attr("best_step", best.get("step"))
        _drop_checkpoints(run_dir)
        value = float(best["mean_reward"])
        self.log(
            f"trial {trial.number}: completed, best validation reward {value:.1f} at step {best.get('step')}"
        )
        return value


def _drop_checkpoints(run_dir: Path) -> None:
    """A finished trial never resumes: its latest checkpoints (replay buffers) are only disk."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def run_worker(spec: StudySpec, n_trials: int, worker: int = 0, max_wall_time: float | None = None,
               device: str = "cpu", poll_s: float | None = None) -> int:  # fmt: skip
    """Run trials until the study's budget is used; returns an exit code (0 done, 3 stopped)."""
    import torch as th

    th.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(spec, worker)
    lock = BudgetLock(spec.study_dir / "budget.lock")
    deadline = None if max_wall_time is None else time.monotonic() + max_wall_time
    objective = Objective(
        spec, lock, deadline, device, log=lambda m: print(f"[worker {worker}] {m}", flush=True)
    )
    poll_s = poll_s if poll_s is not None else spec.heartbeat_interval
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return EXIT_INTERRUPTED
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        with lock.holding():
            if _has_work(study, n_trials):
                try:
                    study.optimize(objective, n_trials=1, catch=(TrialDiverged,))
                except WorkerStopped as exc:
                    print(
                        f"[worker {worker}] {exc}; it resumes from its latest checkpoint next time",
                        flush=True,
                    )
                    return EXIT_INTERRUPTED
                continue
        if not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            return EXIT_COMPLETED
        time.sleep(poll_s)  # another worker's trial, or a dead worker's waiting for its grace period


def _has_work(study: optuna.Study, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    return waiting or sum(counted(t) for t in trials) < n_trials


def optimize(spec: StudySpec, n_trials: int, workers: int = 1, max_wall_time: float | None = None,
             device: str = "cpu") -> int:  # fmt: skip
    """Run the study with ``workers`` processes on this machine; returns 0 (done) or 3 (stopped).

    Each worker is a spawned process with one torch thread; ``workers`` above the CPU count only
    slows every trial down. Writes ``STUDY_DIR/trials.csv`` at the end.
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise UserError(f"--trials must be a positive integer, got {n_trials!r}")
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers!r}")
    created = next((p for p in reversed([spec.study_dir, *spec.study_dir.parents]) if not p.exists()), None)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    try:
        load_study(spec)  # create it (and check a resumed one) once, before the workers race to
    except BaseException:
        if created is not None:  # a bad storage or setting leaves nothing behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    if workers == 1:
        code = run_worker(spec, n_trials, 0, max_wall_time, device)
    else:
        # spawn: each worker starts clean (no forked torch threads, SQLite connections or locks).
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(run_worker, spec, n_trials, i, max_wall_time, device) for i in range(workers)
            ]
            code = max(f.result() for f in futures)
    write_trials_table(spec)
    return code


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, outcome, value, seconds, run number, seed, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "outcome": t.user_attrs.get("outcome"),
            "value": t.value,
            "best_step": t.user_attrs.get("best_step"),
            "last_step": t.last_step,
            "seconds": t.user_attrs.get("seconds"),
            "run": t.user_attrs.get("resumes"),
            "training_seed": t.user_attrs.get("training_seed"),
            **{f"param_{k}": v for k, v in t.params.items()},
        })  # fmt: skip
    return pd.DataFrame(rows)


def write_trials_table(spec: StudySpec) -> pd.DataFrame:
    table = trials_table(load_study(spec))
    atomic_write_csv(table, spec.study_dir / "trials.csv")
    return table


def best_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best completed trials with distinct parameters, best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]  # fmt: skip
    done.sort(key=lambda t: (-t.value, t.number))
    chosen: list[FrozenTrial] = []
    for t in done:
        if all(t.params != c.params for c in chosen):
            chosen.append(t)
        if len(chosen) == k:
            break
    return chosen


def make_spec(
    config: str | Path | ExperimentConfig,
    study: str = "dqn",
    out: str | Path = "results/tune",
    storage: str | None = None,
    space: str | Path | None = None,
    settings: TuneSettings | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
) -> StudySpec:
    """A study's spec from user inputs: the folder is ``out/study``; storage defaults to SQLite there."""
    from rl_lib.experiment import load_experiment

    if not isinstance(study, str) or not study or not all(c.isalnum() or c in "-_." for c in study):
        raise UserError(f"--study {study!r}: use letters, digits, '-', '_' or '.'")
    base = config if isinstance(config, ExperimentConfig) else load_experiment(config)
    if base.training.algo != "dqn":
        raise UserError(f"the tuner searches DQN hyperparameters; {config} has algo {base.training.algo!r}")
    if not 0 < heartbeat_interval < grace_period:
        raise UserError("the heartbeat grace period must be positive and longer than the heartbeat interval")
    study_dir = Path(out) / study
    return StudySpec(
        name=study,
        study_dir=study_dir,
        storage_url=storage or default_storage_url(study_dir),
        base=base,
        space=SearchSpace.load(space),
        settings=settings or TuneSettings(),
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
