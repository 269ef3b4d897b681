"""The feedback loop's Celery app: ``collect`` hourly, ``retrain`` daily, Redis as broker and backend.

Ordinary Celery processes run it (``make feedback`` starts a local set, ``rl-lib feedback run``)::

    export RL_LIB_FEEDBACK_SETTINGS=configs/feedback.yaml   # plus RL_LIB_REDIS_PASSWORD if any
    celery -A rl_lib.feedback.tasks worker --pool prefork --concurrency 1
    celery -A rl_lib.feedback.tasks beat
    celery -A rl_lib.feedback.tasks flower                  # Celery's monitoring UI, unchanged

More workers on more machines (same settings, the registry, store and work folders shared) scale it
with nothing else to change. The settings (:mod:`rl_lib.feedback.settings`) are read and validated
when this module is imported: a bad value stops a worker at its start, with one line.

**Delivery.** JSON only, for tasks, results and accepted content (no pickle); beat keeps its schedule
in memory (Celery's base scheduler: no shelve file). ``task_acks_late`` with
``task_reject_on_worker_lost``: a task is acknowledged when it has returned, so a worker that dies
mid-task leaves it to be delivered again, to a restarted or another worker (at once when only the
pool process died; after the broker's visibility timeout when the whole worker did).
``worker_prefetch_multiplier=1``: a worker holds no task beyond those it runs. The visibility timeout
is validated to exceed both tasks' hard time limits, so a task is never delivered again while it may
still be running.

**Locks.** Each task holds a Redis lock (redis-py ``Lock``, its timeout the task's time limit) whose
token is the task id: a second ``retrain`` while one runs returns ``skipped: another retrain holds the
lock``, and so does a second ``collect`` (the join and the store take one writer); a redelivered task,
the same id, takes back the lock its killed delivery left.

**collect** (:func:`run_collect`) is one pass of :func:`rl_lib.feedback.collect.collect`: exactly once
by construction (acknowledged after the durable write, deduplicated on decision id). Its figures go to
Redis for the dashboard (:mod:`rl_lib.feedback.status`): the written count to the hour's counter
(the hash ``{prefix}:feedback:collected``, field ``YYYY-MM-DDTHH`` in UTC; a pass killed between its
write and this count is not counted, the store is the truth) and the report to the list
``{prefix}:feedback:collect_runs``.

**retrain** (:func:`run_retrain`), idempotent step by step:

1. The production version; without one, nothing to do (said so).
2. The plan, fixed at the first delivery and kept in Redis under the task id, so a redelivery follows
   it whatever was collected since: of the store's service days, the newest ``gate_log_days`` are held
   out for the gate (always leaving one to learn from) and the ``window_days`` before them are learnt
   from; the run's name is ``{parent}-{first day}_{last day}-{digest}``, the digest of what the
   training depends on (days, budget, overrides, region), so the same training is the same run dir.
3. Its inputs, copied once to ``{work_dir}/{name}/inputs/`` (the window's store parts; the decision
   records of the window and of the held-out days, from the stream): a resumed run sees the inputs
   it started with, whatever the store and the stream hold now.
4. :func:`rl_lib.feedback.retrain.retrain` of the production model into ``{work_dir}/{name}/run``: the
   window's transitions in the replay buffer, the simulated days fitted to the window's bookings. A run
   dir with a checkpoint resumes from it; a completed one is not trained again. A run stopped by its
   wall-time budget is gated as it stands; one stopped by a signal is retried (and resumes).
5. :func:`rl_lib.feedback.gate.gate`: its best model against production's on the held-out days
   replayed from their decision records (:func:`~rl_lib.feedback.gate.days_from_records`) and
   ``gate_test_days`` synthetic test days of the scenario (split ids no training touches).
6. Registered with the gate decision and the retrain's figures as metrics, its data window and parent
   in the lineage, unless a version of that run dir's model exists (the registry's lineage says so):
   then that version and the decision in its metrics are taken, nothing is measured twice.
7. The gate decision recorded with :meth:`~rl_lib.serving.registry.ModelRegistry.record_decision`
   (``kind="gate"``: verdict, reason, every difference with its CI), once per version.
8. Promoted only if the gate says so, production is still the parent it was gated against, and the
   version was never promoted before (a rollback is not undone by a redelivery).

Each run's summary goes to the list ``{prefix}:feedback:retrain_runs`` (skips included).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from celery import Celery
from celery.utils.log import get_task_logger

from rl_lib.errors import UserError
from rl_lib.feedback.settings import FeedbackSettings, hour_bucket, load_settings, redis_client

COLLECT, RETRAIN = "rl_lib.feedback.collect", "rl_lib.feedback.retrain"
QUEUE = "rl_lib.feedback"
RUNS_KEPT = 200  # entries of the collect_runs and retrain_runs lists
COUNTER_TTL_S = 3 * 86400  # the hourly counters outlive the hours the dashboard shows
PLAN_TTL_S = 30 * 86400
RESULT_TTL_S = 7 * 86400
RETRY_COUNTDOWN_S = 5.0

# Statuses of the tasks' results.
SKIPPED, COLLECTED = "skipped", "collected"
NO_PRODUCTION, NO_DATA, FAILED, DIVERGED = "no production", "no data", "failed", "diverged"
NO_CANDIDATE, KEPT, PROMOTED, INTERRUPTED = "no candidate", "kept production", "promoted", "interrupted"
WALL_TIME_STOP = "wall-time budget"  # how rl_lib.training.callbacks.StopRequest words a budget stop
REPLAY_FIELDS = ("decision_id", "service_day", "region", "now_min", "booking", "day_start_min", "day_end_min")

logger = get_task_logger(__name__)


def celery_config(settings: FeedbackSettings) -> dict:
    """The Celery configuration of ``settings`` (module docstring: delivery, schedule)."""
    url = settings.celery_url()
    # kombu restores unacknowledged tasks in periodic sweeps: make them frequent enough for the timeout.
    sweep = max(1, min(10, int(settings.visibility_timeout_s // 10)))
    return {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": sweep,
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "result_expires": timedelta(seconds=RESULT_TTL_S),
        "result_extended": True,
        "task_track_started": True,
        "worker_send_task_events": True,  # Flower sees the tasks without being asked to enable events
        "task_send_sent_event": True,
        "task_default_queue": QUEUE,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_scheduler": "celery.beat:Scheduler",
        # A task still queued when the next one is sent is superseded by it: it expires unrun.
        "beat_schedule": {
            "collect": {
                "task": COLLECT,
                "schedule": timedelta(seconds=settings.collect_period_s),
                "options": {"expires": settings.collect_period_s},
            },
            "retrain": {
                "task": RETRAIN,
                "schedule": timedelta(seconds=settings.retrain_period_s),
                "options": {"expires": settings.retrain_period_s},
            },
        },
    }


def make_app(settings: FeedbackSettings) -> Celery:
    """A Celery app of ``settings`` with the ``collect`` and ``retrain`` tasks (``app.feedback_settings``)."""
    app = Celery("rl_lib.feedback")
    app.conf.update(celery_config(settings))
    app.feedback_settings = settings

    @app.task(bind=True, name=COLLECT, time_limit=settings.collect_time_limit_s)
    def collect(self, close_days: list[str] | None = None) -> dict:
        """One collection pass (:func:`run_collect`); ``close_days`` closes those service days now."""
        return run_collect(settings, self.request.id, close_days or ())

    @app.task(bind=True, name=RETRAIN, time_limit=settings.retrain_time_limit_s, max_retries=3)
    def retrain(self) -> dict:
        """Retrain production on logged days, gate, register, promote on evidence (:func:`run_retrain`)."""
        result = run_retrain(settings, self.request.id)
        if result["status"] == INTERRUPTED:  # a signal stopped the training: the retry resumes it
            raise self.retry(countdown=RETRY_COUNTDOWN_S)
        return result

    return app


# ---------------------------------------------------------------------------------------- locks
@contextmanager
def task_lock(client, name: str, owner: str, timeout_s: float) -> Iterator[bool]:
    """Hold the Redis lock ``name`` with token ``owner`` (True), or learn that another owner holds it
    (False). A lock ``owner`` already holds (its earlier delivery, killed) is taken back, its timeout
    renewed. Released on exit (a lock that expired meanwhile has nothing to release)."""
    from redis.exceptions import LockError

    lock = client.lock(name, timeout=timeout_s, thread_local=False)
    held = lock.acquire(blocking=False, token=owner)
    if not held:
        lock.local.token = client.get_encoder().encode(owner)
        try:
            held = lock.owned() and lock.reacquire()
        except LockError:  # expired between the two calls
            held = lock.acquire(blocking=False, token=owner)
        if not held:
            lock.local.token = None
    try:
        yield held
    finally:
        if held:
            try:
                lock.release()
            except LockError:
                logger.warning("lock %s expired before its task ended", name)


# ---------------------------------------------------------------------------------------- collect
def run_collect(settings: FeedbackSettings, owner: str, close_days: Iterable[str] = (), client=None) -> dict:
    """One collection pass under the collect lock; returns its report as a JSON-able dict.

    :param owner: the lock's token (the task id).
    :param close_days: service days to close now, whatever the horizon says.
    """
    from rl_lib.feedback.collect import collect
    from rl_lib.feedback.store import ExperienceStore

    client = client or redis_client(settings)
    with task_lock(client, settings.key("collect:lock"), owner, settings.collect_time_limit_s) as held:
        if not held:
            return {"status": SKIPPED, "message": "skipped: another collect holds the lock"}
        started = time.monotonic()
        report = collect(
            client,
            ExperienceStore(settings.store),
            prefix=settings.stream_prefix,
            group=settings.group,
            consumer=settings.consumer_name,
            weights=reward_weights(settings),
            horizon_min=settings.horizon_min,
            batch=settings.collect_batch,
            claim_idle_ms=settings.claim_idle_ms,
            close_days=list(close_days),
            pause_s=settings.collect_pause_s,
        )
        result = {
            "status": COLLECTED,
            "message": f"collected: {report.written} transitions written, {report.duplicates} duplicates, "
            f"{report.rejected} rejected, {report.waiting} entries waiting",
            "time": _utc_now(),
            "consumer": settings.consumer_name,
            "wall_s": round(time.monotonic() - started, 3),
            **dataclasses.asdict(report),
        }
        pipe = client.pipeline(transaction=True)
        pipe.hincrby(settings.key("collected"), hour_bucket(time.time()), report.written)
        pipe.expire(settings.key("collected"), COUNTER_TTL_S)
        _push_run(pipe, settings.key("collect_runs"), result)
        pipe.execute()
        return result


def reward_weights(settings: FeedbackSettings):
    """The reward weights of the transitions: ``settings.config``'s, else the production model's (a
    retrain keeps its parent's), else the defaults."""
    from rl_lib.envs.core import RewardWeights

    if settings.config is not None:
        from rl_lib.experiment import load_experiment

        return load_experiment(settings.config).reward
    from rl_lib.serving.registry import ModelRegistry

    production = ModelRegistry(settings.registry).production_dir()
    return _config_of(production).reward if production is not None else RewardWeights()


# ---------------------------------------------------------------------------------------- retrain
def run_retrain(
    settings: FeedbackSettings, owner: str, client=None, log: Callable[[str], None] = logger.info
) -> dict:
    """One retrain under the retrain lock (module docstring); returns its summary as a JSON-able dict
    (``status``, ``message`` and what it did), also pushed to ``{prefix}:feedback:retrain_runs``.

    :param owner: the lock's token and the plan's key (the task id: a redelivery is the same).
    """
    client = client or redis_client(settings)
    started = time.time()
    with task_lock(client, settings.key("retrain:lock"), owner, settings.retrain_time_limit_s) as held:
        if not held:
            result = {"status": SKIPPED, "message": "skipped: another retrain holds the lock"}
        else:
            try:
                result = _Retrain(settings, client, owner, log).run()
            except UserError as exc:  # bad data or settings: retrying would fail the same way
                result = {"status": FAILED, "message": f"failed: {exc}"}
    result = {"time": _utc_now(), "started_unix": started, "task_id": owner, **result}
    if result["status"] != INTERRUPTED:
        pipe = client.pipeline(transaction=True)
        _push_run(pipe, settings.key("retrain_runs"), result)
        pipe.execute()
    log(result["message"])
    return result


@dataclasses.dataclass
class _Retrain:
    """One retrain's steps (module docstring), the lock held."""

    settings: FeedbackSettings
    client: object
    owner: str
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        from rl_lib.serving.registry import ModelRegistry

        self.registry = ModelRegistry(self.settings.registry)

    def run(self) -> dict:
        parent = self.registry.production()
        if parent is None:
            return {
                "status": NO_PRODUCTION,
                "message": f"no production version in {self.registry.root} yet: "
                "nothing to retrain (rl-lib registry promote V)",
            }
        plan = self._plan(parent)
        if plan is None:
            return {
                "status": NO_DATA,
                "parent": parent,
                "message": f"no logged transitions in {self.settings.store} yet: nothing to retrain on",
            }
        from rl_lib.feedback.retrain import retrain  # torch and SB3: only once there is work
        from rl_lib.feedback.store import ExperienceStore
        from rl_lib.io import sha256_file
        from rl_lib.serving.registry import MODEL_ZIP
        from rl_lib.training.run_record import read_metadata

        parent = plan["parent"]  # the plan's, should production have moved since it was made
        folder = Path(self.settings.work_dir) / plan["name"]
        records = self._inputs(plan, folder / "inputs")
        transitions = ExperienceStore(folder / "inputs").read()
        if self.settings.region is not None:
            transitions = transitions[transitions["region"] == self.settings.region]
        window = [r for day in plan["train_days"] for r in records[day]]
        summary = {
            "parent": parent,
            "run": plan["name"],
            "train_days": plan["train_days"],
            "held_out_days": plan["held_out_days"],
        }

        started = time.monotonic()
        result = retrain(
            self.registry.version_dir(parent),
            transitions,
            folder / "run",
            self.settings.retrain_budget_steps,
            max_wall_time=self.settings.retrain_wall_s,
            simulated_days=self.settings.simulated_days,
            bookings=self._bookings(window),
            parent_version=parent,
            overrides=dict(self.settings.retrain_overrides) or None,
            device="cpu",
            log=self.log,
        )
        meta = read_metadata(result.run_dir)
        summary.update(
            {
                "retrain_status": result.status,
                "retrain_reason": result.reason,
                "steps": result.timesteps,
                "target": result.target,
                "resume_count": int(meta.get("resume_count", 0)),
                "retrain_wall_s": round(time.monotonic() - started, 3),
                "logged_transitions": result.lineage["logged_transitions"]["used"],
            }
        )
        if result.status == "diverged":
            return {"status": DIVERGED, "message": f"diverged: {result.reason}", **summary}
        if result.status != "completed" and not (result.reason or "").startswith(WALL_TIME_STOP):
            return {"status": INTERRUPTED, "message": f"interrupted ({result.reason}): retried", **summary}
        if not (result.run_dir / MODEL_ZIP).is_file():
            return {
                "status": NO_CANDIDATE,
                "message": f"no candidate: {result.run_dir} has no best model ({result.reason})",
                **summary,
            }

        version, decision, gate_s = self._gated(
            plan, result, records, sha256_file(result.run_dir / MODEL_ZIP)
        )
        summary.update(
            {
                "version": version,
                "gate_wall_s": gate_s,
                "verdict": decision["verdict"],
                "reason": decision["reason"],
                "differences": decision["differences"],
                "n_days": decision["n_days"],
            }
        )
        if not any(d["kind"] == "gate" and d.get("version") == version for d in self.registry.decisions()):
            details = {k: v for k, v in decision.items() if k != "reason"}
            self.registry.record_decision(
                "gate",
                version,
                decision["reason"],
                parent=parent,
                run=plan["name"],
                train_days=plan["train_days"],
                **details,
            )
        promoted, note = self._promote(version, parent, decision)
        message = f"{version} (from {parent}): {decision['reason']}" + (f"; {note}" if note else "")
        return {"status": PROMOTED if promoted else KEPT, "message": message, "promoted": promoted, **summary}

    # ---------------------------------------------------------------- the plan and its inputs
    def _plan(self, parent: str) -> dict | None:
        """This task's plan: the one its first delivery made, else a new one (None: no logged day)."""
        from rl_lib.feedback.store import ExperienceStore

        key = self.settings.key(f"retrain:plan:{self.owner}")
        if (text := self.client.get(key)) is not None:
            return json.loads(text)
        days = ExperienceStore(self.settings.store).days()
        if not days:
            return None
        held = min(self.settings.gate_log_days, len(days) - 1)
        learnt = days[: len(days) - held][-self.settings.window_days :]
        trained_on = {
            "parent": parent,
            "days": learnt,
            "budget_steps": self.settings.retrain_budget_steps,
            "overrides": self.settings.retrain_overrides,
            "simulated_days": self.settings.simulated_days,
            "region": self.settings.region,
        }
        digest = hashlib.sha256(json.dumps(trained_on, sort_keys=True).encode()).hexdigest()[:8]
        plan = {
            "name": f"{parent}-{learnt[0]}_{learnt[-1]}-{digest}",
            "parent": parent,
            "train_days": learnt,
            "held_out_days": days[len(days) - held :],
            "planned": _utc_now(),
        }
        self.client.set(key, json.dumps(plan), nx=True, ex=PLAN_TTL_S)
        return json.loads(self.client.get(key))

    def _inputs(self, plan: dict, folder: Path) -> dict[str, list[dict]]:
        """Copy the plan's inputs into ``folder`` once (``inputs.json`` marks them complete); returns
        the decision records by service day."""
        from rl_lib.feedback.store import ExperienceStore
        from rl_lib.io import atomic_write_bytes, atomic_write_json, atomic_write_text

        marker, records_file = folder / "inputs.json", folder / "records.jsonl"
        if not marker.is_file():
            store = ExperienceStore(self.settings.store)
            for day in plan["train_days"]:  # parts are immutable and named by their content
                for part in sorted((store.folder / f"day={day}").glob("part-*.parquet")):
                    target = folder / "experience" / f"day={day}" / part.name
                    atomic_write_bytes(target, part.read_bytes())
            records = decision_records(
                self.client,
                f"{self.settings.stream_prefix}:decisions",
                [*plan["train_days"], *plan["held_out_days"]],
                self.settings.region,
            )
            lines = "".join(
                json.dumps(r, separators=(",", ":")) + "\n" for day in records.values() for r in day
            )
            atomic_write_text(records_file, lines)
            atomic_write_json(
                marker,
                {
                    "plan": plan,
                    "records": {d: len(r) for d, r in records.items()},
                    "transitions": ExperienceStore(folder).count(),
                },
            )
        by_day: dict[str, list[dict]] = {d: [] for d in (*plan["train_days"], *plan["held_out_days"])}
        for line in records_file.read_text().splitlines():
            record = json.loads(line)
            by_day[record["service_day"]].append(record)
        return by_day

    def _bookings(self, records: list[dict]):
        """The window's bookings to fit the simulated days to (None without records: the parent's)."""
        from rl_lib.feedback.gate import bookings_from_records

        return bookings_from_records(records, self.settings.region) if records else None

    # ---------------------------------------------------------------- gate, register, promote
    def _gated(
        self, plan: dict, result, records: dict[str, list[dict]], model_sha256: str
    ) -> tuple[str, dict, float | None]:
        """The version of the run's model and its gate decision: an existing version's (its metrics),
        else the gate's now, registered with it."""
        from rl_lib.feedback.gate import gate

        version = self._registered(result.run_dir, model_sha256)
        if version is not None:
            self.log(f"{result.run_dir}: its model is {version} already; its recorded gate decision stands")
            metrics = self.registry.show(version)["metrics"]
            return version, metrics["gate"], None
        parent = plan["parent"]
        production_dir = self.registry.version_dir(parent)
        days = self._held_out_days(plan, records, production_dir)
        started = time.monotonic()
        decision = gate(
            result.run_dir,
            production_dir,
            days,
            margin_completion=self.settings.margin_completion,
            margin_on_time=self.settings.margin_on_time,
            n_resamples=self.settings.gate_resamples,
            seed=0,
            min_days=self.settings.gate_min_days,
        ).to_dict()
        gate_s = round(time.monotonic() - started, 3)
        window = dict(
            result.lineage["data_window"],
            service_days=plan["train_days"],
            held_out_days=plan["held_out_days"],
        )
        metrics = {
            "gate": decision,
            "retrain": {
                "run": plan["name"],
                "status": result.status,
                "reason": result.reason,
                "steps": result.timesteps,
                "target": result.target,
                "gate_wall_s": gate_s,
                "logged_transitions": result.lineage["logged_transitions"],
            },
        }
        version = self.registry.register(result.run_dir, parent=parent, data_window=window, metrics=metrics)
        self.log(f"registered {version} from {result.run_dir} (parent {parent})")
        return version, decision, gate_s

    def _registered(self, run_dir: Path, model_sha256: str) -> str | None:
        """The version registered from ``run_dir``'s current best model, if any (from the lineages)."""
        from rl_lib.serving.registry import LINEAGE

        source = str(run_dir.resolve())
        for version in self.registry.versions():
            try:
                lineage = json.loads((self.registry.root / version / LINEAGE).read_text())
            except (OSError, ValueError):
                continue
            if lineage.get("source_run_dir") == source and lineage.get("model_sha256") == model_sha256:
                return version
        return None

    def _held_out_days(self, plan: dict, records: dict[str, list[dict]], production_dir: Path) -> list:
        """The held-out days replayed from their records, then the scenario's synthetic test days."""
        from rl_lib.feedback.gate import days_from_records
        from rl_lib.scenarios.synthetic import SyntheticScenario

        scenario = _scenario(self.settings, production_dir)
        held = [r for day in plan["held_out_days"] for r in records[day]]
        days = days_from_records(held, scenario, self.settings.region) if held else []
        if self.settings.gate_test_days:
            # Test split ids start at a fixed offset: a longer split adds days no training ever drew.
            n = max(scenario.splits.test_days, self.settings.gate_test_days)
            longer = dataclasses.replace(scenario, splits=dataclasses.replace(scenario.splits, test_days=n))
            days += SyntheticScenario(longer).days("test", self.settings.gate_test_days)
        if not days:
            raise UserError("no held-out day for the gate: raise gate_test_days or gate_log_days")
        return days

    def _promote(self, version: str, parent: str, decision: dict) -> tuple[bool, str]:
        """Promote ``version`` when the gate says so and it is safe (module docstring, step 8); returns
        whether it is production and, when the gate's verdict alone does not say why, why."""
        if not decision["promote"]:
            return False, ""
        now = self.registry.production()
        if now == version:
            return True, "in production already"
        if any(d["kind"] == "promote" and d.get("version") == version for d in self.registry.decisions()):
            return False, f"promoted once before, production is now {now}: not promoted again"
        if now != parent:
            return False, f"production moved from {parent} to {now} meanwhile: not promoted"
        self.registry.promote(version, reason=f"gate: {decision['reason']}")
        return True, ""


def decision_records(
    client, stream: str, days: Iterable[str], region: str | None = None
) -> dict[str, list[dict]]:
    """The decision records of ``days`` (and ``region``) in ``stream``, in stream order, by service day,
    each cut to what a replay needs (:data:`REPLAY_FIELDS`); entries that do not decode or lack those
    fields are left out (the collector dead-letters them)."""
    from rl_lib.feedback.transitions import decode_record

    out: dict[str, list[dict]] = {day: [] for day in days}
    low, page_size = "-", 1000
    while True:
        page = client.xrange(stream, low, "+", count=page_size)
        for _, fields in page:
            try:
                record = decode_record(fields.get("record", ""))
            except ValueError:
                continue
            if record.get("service_day") not in out or (
                region is not None and record.get("region") != region
            ):
                continue
            if all(k in record for k in REPLAY_FIELDS):
                out[record["service_day"]].append({k: record[k] for k in REPLAY_FIELDS})
        if len(page) < page_size:
            return out
        low = "(" + page[-1][0]


# ---------------------------------------------------------------------------------------- helpers
def _config_of(run_dir: Path):
    from rl_lib.config import from_dict
    from rl_lib.experiment import ExperimentConfig
    from rl_lib.training.run_record import read_metadata

    return from_dict(ExperimentConfig, read_metadata(run_dir)["config"], source=str(run_dir))


def _scenario(settings: FeedbackSettings, production_dir: Path):
    """The gate's scenario: ``settings.config``'s, else the production model's."""
    if settings.config is not None:
        from rl_lib.experiment import load_experiment

        return load_experiment(settings.config).scenario
    return _config_of(production_dir).scenario


def _push_run(pipe, key: str, result: dict) -> None:
    pipe.lpush(key, json.dumps(result, separators=(",", ":"), default=str))
    pipe.ltrim(key, 0, RUNS_KEPT - 1)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


#: The app of the environment's settings: what ``celery -A rl_lib.feedback.tasks`` runs.
app = make_app(load_settings())
