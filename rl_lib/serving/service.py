"""The dispatch service's logic, without HTTP: decide, log, monitor.

:class:`DispatchService` turns validated requests into decisions: the experiment gives each
request its unit and arm, the arm's policy decides on the env's own state
(:mod:`rl_lib.serving.fleet_state`), the decision is appended to the log (Redis or spool) **before**
it is answered, and the monitor counts it. A retried ``decision_id`` gets its first answer back and
is logged once. The model can be swapped while requests are in flight (:meth:`swap_model`): each
request reads the model once, so it finishes on the model it started with, and its response names
that model's version.

:class:`ProductionWatcher` swaps it when the service follows a model registry
(:mod:`rl_lib.serving.registry`): it polls the production pointer and swaps in each newly promoted
version once it has verified and loaded, so the experiment's ``model`` arm is always the production
model; a version that fails keeps the live model, and the stats and metrics say so.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rl_lib.serving.decision_log import DECISION_SCHEMA, OUTCOME_SCHEMA, DecisionLog, array_field
from rl_lib.serving.experiment import Experiment
from rl_lib.serving.fleet_state import FleetState, fleet_state
from rl_lib.serving.monitor import Monitor
from rl_lib.serving.policy import FALLBACK, Choice, ModelPolicy, heuristic_action
from rl_lib.serving.schemas import DecisionRequest, DecisionResponse, OutcomeRequest

ANSWERED_CACHE = 100_000  # decision ids remembered for idempotent retries


@dataclass(frozen=True)
class _Draft:
    """A decision made, its record not yet logged."""

    response: DecisionResponse
    record: dict
    choice: Choice
    seconds: float


class FleetSizeError(ValueError):
    """The model cannot read this fleet (the app answers 422 on the ``fleet`` field)."""


class RefusedDecisionError(ValueError):
    """An outcome for a refusal (the app answers 422 on ``decision_id``)."""


def response_from_record(record: dict) -> DecisionResponse:
    """The answer a logged decision record stands for (a retry gets the decision that was logged)."""
    assigned = record["vehicle_id"] is not None
    mask = record["mask"]["data"]
    return DecisionResponse(
        decision_id=record["decision_id"], booking_id=record["booking_id"],
        action="assign" if assigned else "refuse", vehicle_id=record["vehicle_id"],
        vehicle_index=record["action"] if assigned else None, arm=record["arm"], unit=record["unit"],
        policy=record["policy"], model_version=record["model_version"],
        feasible_vehicles=int(sum(mask[:-1])), decision_ms=record["decision_ms"],
    )  # fmt: skip


@dataclass
class DispatchService:
    model: ModelPolicy
    experiment: Experiment
    log: DecisionLog
    monitor: Monitor

    def __post_init__(self) -> None:
        self._answered: OrderedDict[str, DecisionResponse] = OrderedDict()
        self._outcomes_seen: OrderedDict[str, None] = OrderedDict()
        self.model_swaps = 0
        self.model_load_failures = 0
        self.model_update_error: str | None = None  # why the last model update failed, until one works
        self.watcher: ProductionWatcher | None = None
        # The feedback loop's figures (rl_lib.feedback.status.LoopFigures), in the stats when set.
        self.feedback_figures: Callable[[], dict] | None = None
        self._set_model_metric()

    # ------------------------------------------------------------------ model
    def swap_model(self, model: ModelPolicy) -> None:
        """Replace the model atomically (one reference assignment); in-flight requests keep theirs."""
        self.model = model
        self.model_swaps += 1
        self.model_update_error = None
        self.monitor.model_swaps.inc()
        self._set_model_metric()

    def model_update_failed(self, reason: str) -> None:
        """A new model did not load: the live one keeps deciding; counted, and shown in the stats."""
        self.model_load_failures += 1
        self.model_update_error = reason
        self.monitor.model_load_failures.inc()

    def close(self) -> None:
        """Stop following the registry (when it does) and close the decision log."""
        if self.watcher is not None:
            self.watcher.stop()
        self.log.close()

    def _set_model_metric(self) -> None:
        self.monitor.set_model(self.model.version or "none", self.model.ready)

    def check_fleet(self, request: DecisionRequest, model: ModelPolicy | None = None) -> None:
        model = model or self.model
        k = len(request.fleet)
        if model.ready and not model.accepts_fleet(k):
            raise FleetSizeError(f"the model takes {model.fleet_sizes()}, this fleet has {k}")

    # -------------------------------------------------------------- decisions
    def decide(self, requests: list[DecisionRequest]) -> list[DecisionResponse]:
        """Decide every request (the model's ones in one network call), log, then answer."""
        drafts, answers = self._decide(requests)
        for draft in drafts:
            self._settle(draft, self.log.append_decision(draft.record))
        return self._collect_answers(requests, answers)

    async def decide_async(self, requests: list[DecisionRequest]) -> list[DecisionResponse]:
        """:meth:`decide` for the event loop: the log appends of concurrent requests are written to
        Redis together (:meth:`DecisionLog.append_decision_async`), each request answered once its
        own record is durable."""
        drafts, answers = self._decide(requests)
        firsts = await asyncio.gather(*(self.log.append_decision_async(d.record) for d in drafts))
        for draft, first in zip(drafts, firsts, strict=True):
            self._settle(draft, first)
        return self._collect_answers(requests, answers)

    def _decide(self, requests: list[DecisionRequest]) -> tuple[list[_Draft], list[DecisionResponse | None]]:
        """The decisions of the requests not answered before, as drafts to log; the cached answers."""
        start = time.perf_counter()
        model = self.model  # one read: the whole batch decides on one model
        for request in requests:
            self.check_fleet(request, model)
        fresh, seen = [], set()
        for i, r in enumerate(requests):  # a retried (or repeated) decision id is answered once
            if r.decision_id is None or (r.decision_id not in self._answered and r.decision_id not in seen):
                fresh.append(i)
                seen.add(r.decision_id)
        scenario, weights = model.scenario, model.weights
        states = [fleet_state(requests[i], scenario, weights) for i in fresh]
        units = [self.experiment.unit_id(r.service_day, r.region, r.now_min, r.booking.booking_id)
                 for r in (requests[i] for i in fresh)]  # fmt: skip
        arms = [self.experiment.arm(u) for u in units]
        choices: list[Choice | None] = [None] * len(fresh)
        model_rows = [j for j, arm in enumerate(arms) if arm.policy == "model"]
        for j, choice in zip(model_rows, model.decide([states[j] for j in model_rows]), strict=True):
            choices[j] = choice
        for j, arm in enumerate(arms):
            if arm.policy != "model":
                choices[j] = Choice(heuristic_action(arm.policy, states[j]), arm.policy)
        per_request = (time.perf_counter() - start) / max(len(fresh), 1)
        drafts = [self._draft(requests[i], states[j], units[j], arms[j].name, choices[j], model, per_request)
                  for j, i in enumerate(fresh)]  # fmt: skip
        answers: list[DecisionResponse | None] = [None] * len(requests)
        for draft, i in zip(drafts, fresh, strict=True):
            answers[i] = draft.response
        return drafts, answers

    def _collect_answers(self, requests: list[DecisionRequest], answers: list) -> list[DecisionResponse]:
        # Repeats of an id are answered with what its first occurrence settled (logged) to.
        out = []
        for request, answer in zip(requests, answers, strict=True):
            known = request.decision_id is not None and request.decision_id in self._answered
            out.append(self._answered[request.decision_id] if known else answer)
        return out

    def _draft(self, request: DecisionRequest, state: FleetState, unit: str, arm: str, choice: Choice,
               model: ModelPolicy, seconds: float) -> _Draft:  # fmt: skip
        decision_id = request.decision_id or uuid.uuid4().hex
        k = state.n_vehicles
        assert state.mask[choice.action], "a policy chose a masked action"  # the heuristics never do
        assigned = choice.action < k
        vehicle = request.fleet[choice.action].vehicle_id if assigned else None
        ins, core = state.insertion, state.core
        if assigned:
            a = choice.action
            reward = float(core.serve_reward(0, ins.deadhead_km[a], ins.lateness[a]))
            planned = {"pickup_min": float(ins.pickup[a]), "lateness_min": float(ins.lateness[a]),
                       "deadhead_km": float(ins.deadhead_km[a]),
                       "dropoff_min": float(ins.dropoff_end[a])}  # fmt: skip
        else:
            reward, planned = -core.weights.refusal_penalty, None
        version = model.version if choice.policy in ("model", FALLBACK) else None
        response = DecisionResponse(
            decision_id=decision_id, booking_id=request.booking.booking_id,
            action="assign" if assigned else "refuse", vehicle_id=vehicle,
            vehicle_index=choice.action if assigned else None, arm=arm, unit=unit, policy=choice.policy,
            model_version=version, feasible_vehicles=int(ins.n_feasible), decision_ms=1e3 * seconds,
        )  # fmt: skip
        record = {
            "schema": DECISION_SCHEMA, "decision_id": decision_id, "time_unix": time.time(),
            "experiment": self.experiment.name,
            "service_day": request.service_day.isoformat(), "region": request.region,
            "now_min": float(request.now_min), "booking_id": request.booking.booking_id,
            "priority": request.booking.priority, "mobility": request.booking.mobility,
            "booking": request.booking.model_dump(mode="json"),  # what a replay or a fit needs
            "day_start_min": state.core.day.start_min, "day_end_min": state.core.day.end_min,
            "unit": unit, "arm": arm, "policy": choice.policy, "fallback_reason": choice.fallback_reason,
            "model_version": version, "n_vehicles": k, "action": int(choice.action),
            "vehicle_id": vehicle, "observation": array_field(state.observation),
            "mask": array_field(state.mask), "reward_at_decision": reward, "planned": planned,
            "decision_ms": 1e3 * seconds,
        }  # fmt: skip
        return _Draft(response, record, choice, seconds)

    def _settle(self, draft: _Draft, first: dict | None) -> None:
        """After the record is logged: remember the answer (the logged one for a retry this process
        did not remember) and count a new decision."""
        response = draft.response
        if first is not None:
            self._remember(self._answered, response.decision_id, response_from_record(first))
            return
        self._remember(self._answered, response.decision_id, response)
        c = draft.choice
        self.monitor.decided(c.policy, response.arm, draft.seconds, c.fallback_reason)
        self._sync_log_metrics()

    # --------------------------------------------------------------- outcomes
    def record_outcome(self, outcome: OutcomeRequest) -> bool:
        """Log an outcome; False when this decision's outcome was already recorded here.

        :raises RefusedDecisionError: the decision (known to this process) refused the booking.
        """
        record = self._outcome_record(outcome)
        if record is None:
            return False
        self.log.append_outcome(record)
        self._outcome_logged(outcome)
        return True

    async def record_outcome_async(self, outcome: OutcomeRequest) -> bool:
        """:meth:`record_outcome`, group-committed with the other records in flight."""
        record = self._outcome_record(outcome)
        if record is None:
            return False
        await self.log.append_outcome_async(record)
        self._outcome_logged(outcome)
        return True

    def _outcome_record(self, outcome: OutcomeRequest) -> dict | None:
        if outcome.decision_id in self._outcomes_seen:
            return None
        decided = self._answered.get(outcome.decision_id)
        if decided is not None and decided.action == "refuse":
            raise RefusedDecisionError(
                f"decision {outcome.decision_id} refused its booking: there is no trip"
            )
        return {"schema": OUTCOME_SCHEMA, "time_unix": time.time(), **outcome.model_dump(mode="json")}

    def _outcome_logged(self, outcome: OutcomeRequest) -> None:
        self._remember(self._outcomes_seen, outcome.decision_id, None)
        self.monitor.outcome(outcome.status)
        self._sync_log_metrics()

    # ------------------------------------------------------------------ views
    def stats(self) -> dict:
        lengths = self.log.stream_lengths()
        model = self.model  # one read: the figures describe one model
        return {
            **self.monitor.stats(),
            "model_version": model.version,
            "model_registry_version": model.registry_version,
            "model_ready": model.ready,
            "model_backend": model.backend if model.ready else None,
            "model_swaps": self.model_swaps,
            "model_load_failures": self.model_load_failures,
            "model_update_error": self.model_update_error,
            "experiment": self.experiment.name,
            "stream_length": {
                "decisions": lengths[self.log.decisions_stream],
                "outcomes": lengths[self.log.outcomes_stream],
            },  # fmt: skip
            "spool_backlog": self.log.backlog,
            "log": vars(self.log.counters).copy(),
            **({"feedback": self.feedback_figures()} if self.feedback_figures is not None else {}),
        }

    def _sync_log_metrics(self) -> None:
        c = self.log.counters
        self.monitor.sync_log(self.log.backlog, c.spooled, c.replayed)

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        while len(cache) > ANSWERED_CACHE:
            cache.popitem(last=False)


# -------------------------------------------------------------- registry watch
class Registry(Protocol):
    """What the service reads of a model registry (:class:`rl_lib.serving.registry.ModelRegistry`)."""

    def production(self) -> str | None: ...

    def version_dir(self, version: str) -> Path: ...

    def verify(self, version: str) -> str | None: ...


def load_version(registry: Registry, version: str, backend: str = "auto") -> ModelPolicy:
    """A registry version as the service's model: verified against its manifest, then loaded
    (:meth:`ModelPolicy.load`, sha256-checked); not ready, ``load_error`` saying why, when either fails."""
    try:
        source = registry.version_dir(version)
        problem = registry.verify(version)
    except Exception as exc:  # an unknown version, an unreadable folder
        return ModelPolicy(Path(version), backend, version, load_error=_one_line(exc))
    if problem is not None:
        return ModelPolicy(source, backend, version, load_error=f"{version} fails verification: {problem}")
    return ModelPolicy.load(source, backend, version)


class ProductionWatcher:
    """Follows a registry's production pointer and hot-swaps the service's model.

    A daemon thread reads the pointer every ``interval_s`` seconds (:meth:`check`). When it names a
    version other than the live one, that version is loaded (:func:`load_version`) beside the live
    model, and only if it loaded is it swapped in (:meth:`DispatchService.swap_model`). One that does
    not load is counted (``rl_lib_model_load_failures_total``, ``model_load_failures``), its reason is
    shown (``model_update_error``) and logged, and the live model keeps deciding; it is not tried again
    until the pointer moves (a version is immutable: it would fail again). An unreadable pointer is
    counted once, however many polls find it so.

    :param seen: the version the service started with (tried, loaded or not), None for none.
    :param log: receives one line per swap or failure.
    """

    def __init__(self, service: DispatchService, registry: Registry, interval_s: float = 2.0,
                 backend: str = "auto", seen: str | None = None,
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        if not interval_s > 0:
            raise ValueError(f"the registry poll interval must be positive, got {interval_s}")
        self.service, self.registry, self.interval_s, self.backend = service, registry, interval_s, backend
        self.log = log
        self._seen = seen
        self._failure: str | None = None  # the last failure counted, so a repeated one counts once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ProductionWatcher:
        self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop polling (a load in progress finishes first, up to ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def check(self) -> bool:
        """Read the pointer once and follow it; True when a new model was swapped in."""
        try:
            version = self.registry.production()
        except Exception as exc:  # a hand-edited pointer: the live model goes on
            self._fail(f"unreadable production pointer: {_one_line(exc)}")
            return False
        self._failure = None
        if version is None or version == self._seen:
            return False
        self._seen = version
        live = self.service.model
        if live.ready and live.registry_version == version:  # back to the live version (a rollback)
            self.service.model_update_error = None
            return False
        model = load_version(self.registry, version, self.backend)
        if not model.ready:
            self._fail(f"{version} not loaded, {live.version or 'the fallback'} still decides: "
                       f"{model.load_error}")  # fmt: skip
            return False
        self.service.swap_model(model)
        self.log(f"model: now {model.version} (was {live.version or 'the fallback'})")
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # the watcher outlives any one poll
                self._fail(f"registry poll failed: {_one_line(exc)}")

    def _fail(self, reason: str) -> None:
        if reason != self._failure:
            self._failure = reason
            self.service.model_update_failed(reason)
            self.log(f"model: {reason}")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
