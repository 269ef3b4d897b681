"""Logged decision and outcome records -> validated transitions, as the env would have given them.

**Records.** The service logs one ``rl_lib.decision/1`` record per decision and one
``rl_lib.outcome/1`` record per outcome (:mod:`rl_lib.serving.decision_log`, fields written by
:class:`rl_lib.serving.service.DispatchService`). :func:`decode_record` reads one from its JSON
text (NaN and infinities are not JSON and are refused); :func:`check_decision` and
:func:`~rl_lib.serving.decision_log.check_outcome` (the log's, shared with the monitor) return
why a record cannot be learnt from, or None:

- a decision needs its schema, ``decision_id``, ``service_day`` (``YYYY-MM-DD``), ``region``,
  ``now_min`` (>= 0), ``time_unix``, ``arm``, ``policy``, ``model_version`` (a string or null), a
  ``priority`` the reward knows, ``n_vehicles`` K >= 1, an ``action`` in [0, K] that its mask allows,
  a float32 ``observation`` of the env's length 11 + 9K + 7 with finite values in [0, 1] (the env's
  observation space) whose *feasible* fields equal the mask, a bool ``mask`` of K + 1 entries whose
  last (refuse) is True, and for an assignment the ``planned`` pickup, lateness and deadhead
  (finite, >= 0: the reward when no outcome comes);
- an outcome needs its schema, ``decision_id``, ``time_unix`` and a ``status`` among completed,
  cancelled and no_show; a completed trip needs ``pickup_min``, ``lateness_min`` and
  ``deadhead_km``; every fact given is finite and >= 0.

The checks between records are the join's: an outcome for a decision that refused its booking, a
second outcome for one decision and a second record of one decision id are rejected.

**Transitions** (:data:`COLUMNS`, one per *presented* decision). The env (:class:`DispatchEnv
<rl_lib.envs.dispatch_env.DispatchEnv>`) presents only bookings that some vehicle can serve; the
service is asked about every booking, so a decision whose mask allows only refusal (a *forced
refusal*) is not a transition: its ``-refusal_penalty`` is folded into the reward of the presented
decision before it, as the env folds it into the step that led to it (forced refusals before a
(service day, region)'s first presented decision go to that first one; a day where no booking has a
feasible vehicle presents its first decision, as the env does). A transition's reward is its own
reward plus those penalties, summed in decision order as the env sums them:

=============  =========================================================================================
outcome_status own reward
=============  =========================================================================================
completed      ``service_reward * priority_weight - deadhead_per_km * deadhead_km - lateness_per_min *
               lateness_min``, with the outcome's deadhead and lateness (the env's serve reward)
refused        ``-refusal_penalty`` (the action was refuse; no outcome comes)
cancelled,     0: the trip did not happen, nothing was served and nothing refused
no_show
no_outcome     no outcome within ``horizon_min`` of the decision: the serve reward with the decision's
               *planned* deadhead and lateness, which is what the env's deterministic travel gives
=============  =========================================================================================

``next_observation`` / ``next_mask`` are the next presented decision's observation and mask, and
``elapsed_min`` the minutes to it; the last presented decision of its (service_day, region) is
``done``, with a zero observation, an all-True mask and 0 minutes, as the env's last step. Rewards
come from the :class:`~rl_lib.envs.core.RewardWeights` given, not from the weights the service
logged its ``reward_at_decision`` with.

**The join** (:func:`join`) is pure: records in, transitions and the fate of every record out. A
(service_day, region)'s decisions are taken in ``now_min`` order (ties by ``time_unix``, then by the
order given: the stream's). A decision becomes a transition when it is **ready**: its fate is known
(it refused; its outcome arrived; it is older than ``horizon_min``: ``no_outcome``) **and** its next
presented decision is there or its day is **closed** (``horizon_min`` has passed since the day's last
decision, or the day is named in ``closed_days``), and every earlier decision of its day is ready
too: transitions are made in decision order, so a decision's forced refusals and its next decision
are always still at hand. The rest wait. With ``now_unix`` None nothing is judged by time: no
``no_outcome``, no closing by the horizon.

``history`` says what earlier joins already turned into stored transitions (:class:`DayHistory`). A
decision already there is a re-delivery (its fate counts as known: its row is stored and the new one
will be dropped). A decision that is not, but comes before what the stored transitions already
cover (their next decision), arrived out of order and is rejected, as is one for a day whose last
transition (``done``) is stored: either would silently change a reward or a next state already
learnt from. An outcome whose decision is not among the records is waited for until it is older
than the horizon, then rejected (its decision was collected without it, refused, or never logged).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rl_lib.envs.core import RewardWeights
from rl_lib.envs.day import Priority
from rl_lib.envs.dispatch_env import N_BOOKING, observation_size
from rl_lib.serving.decision_log import (
    COMPLETED_FACTS,
    DECISION_SCHEMA,
    finite_number,
    read_array,
)

TRANSITION_SCHEMA_VERSION = 1
#: The columns of a transition row, in store order.
COLUMNS = (
    "decision_id", "service_day", "region", "now_min", "time_unix", "model_version", "arm", "policy",
    "n_vehicles", "observation", "mask", "action", "reward", "next_observation", "next_mask", "done",
    "elapsed_min", "outcome_status", "schema_version",
)  # fmt: skip
#: Outcomes come when a trip ends, a few hours after its decision (an hour before the pickup).
HORIZON_MIN = 360.0
PRIORITIES = tuple(p.name.lower() for p in Priority)  # the service's names, in the env's order
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIE_MIN = 1e-6  # minutes: float noise in now_min + elapsed_min, far below any real gap


# ------------------------------------------------------------------------------------------ records
def decode_record(text: str | bytes) -> dict:
    """The record in a stream entry's ``record`` field; raises ValueError saying why it is unreadable."""

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a finite number")

    try:
        record = json.loads(text, parse_constant=refuse_constant)
    except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
    return record


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _array(
    record: dict, key: str, dtype: str, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str | None]:
    try:
        values = read_array(record[key])
    except (ValueError, TypeError) as exc:
        return None, f"{key}: {exc}"
    if values.dtype != np.dtype(dtype):
        return None, f"{key}: dtype {values.dtype}, expected {dtype}"
    if values.shape != shape:
        return None, f"{key}: shape {list(values.shape)}, expected {list(shape)} for its n_vehicles"
    return values, None


def check_decision(record: Any) -> str | None:
    """Why a decision record cannot become a transition (module docstring), or None."""
    if not isinstance(record, dict):
        return "a record is a JSON object"
    if record.get("schema") != DECISION_SCHEMA:
        return f"schema {record.get('schema')!r}, expected {DECISION_SCHEMA!r}"
    required = ("decision_id", "service_day", "region", "now_min", "time_unix", "arm", "policy",
                "model_version", "priority", "n_vehicles", "action", "observation", "mask")  # fmt: skip
    missing = [k for k in required if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for key in ("decision_id", "region", "arm", "policy"):
        if not _text(record[key]):
            return f"{key}: a non-empty string, got {record[key]!r}"
    if record["model_version"] is not None and not isinstance(record["model_version"], str):
        return f"model_version: a string or null, got {record['model_version']!r}"
    day = record["service_day"]
    try:
        if not (isinstance(day, str) and _DAY.match(day)):
            raise ValueError
        dt.date.fromisoformat(day)
    except ValueError:
        return f"service_day: a date YYYY-MM-DD, got {day!r}"
    if not finite_number(record["now_min"]) or record["now_min"] < 0:
        return f"now_min: a finite number >= 0, got {record['now_min']!r}"
    if not finite_number(record["time_unix"]):
        return f"time_unix: a finite number, got {record['time_unix']!r}"
    if record["priority"] not in PRIORITIES:
        return f"priority {record['priority']!r}: one of {', '.join(PRIORITIES)} (the reward needs it)"
    k, action = record["n_vehicles"], record["action"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return f"n_vehicles: an integer >= 1, got {k!r}"
    if not isinstance(action, int) or isinstance(action, bool) or not 0 <= action <= k:
        return f"action: an integer in [0, {k}], got {action!r}"
    obs, problem = _array(record, "observation", "float32", (observation_size(k),))
    if problem:
        return problem
    if not np.isfinite(obs).all():
        return "observation: non-finite values"
    if obs.min() < 0.0 or obs.max() > 1.0:
        return "observation: values outside [0, 1] (the env's observation space)"
    mask, problem = _array(record, "mask", "bool", (k + 1,))
    if problem:
        return problem
    if not all(isinstance(v, bool) for v in record["mask"]["data"]):
        return "mask: values must be true or false"
    if not mask[k]:
        return "mask: refusing (the last action) must always be allowed"
    if not np.array_equal(obs[N_BOOKING : N_BOOKING + k] == 1.0, mask[:k]):
        return "observation: its feasible fields disagree with the mask"
    if not mask[action]:
        return f"action {action} is masked (not allowed by its mask)"
    if action < k:
        planned = record.get("planned")
        if not isinstance(planned, dict):
            return "planned: an assignment needs its planned pickup, lateness and deadhead"
        for key in COMPLETED_FACTS:
            if not finite_number(planned.get(key)) or planned[key] < 0:
                return f"planned.{key}: a finite number >= 0, got {planned.get(key)!r}"
    return None


def serve_reward(weights: RewardWeights, priority: str, deadhead_km: float, lateness_min: float) -> float:
    """The env's reward for serving a booking (:meth:`rl_lib.envs.core.DispatchCore.serve_reward`),
    with the same floating-point operations in the same order, so it is bit for bit the env's."""
    value = weights.service_reward * float(weights.priority_weights[PRIORITIES.index(priority)])
    return float(value - weights.deadhead_per_km * deadhead_km - weights.lateness_per_min * lateness_min)


# ------------------------------------------------------------------------------------------ the join
@dataclass(frozen=True)
class Transition:
    """One presented decision as a replay-buffer row (:data:`COLUMNS`; module docstring).

    ``time_unix`` is the decision record's wall-clock time: it orders decisions taken at the same
    ``now_min``, as the join does, so a reader can restore each day's decision order.
    """

    decision_id: str
    service_day: str
    region: str
    now_min: float
    time_unix: float
    model_version: str | None
    arm: str
    policy: str
    n_vehicles: int
    observation: np.ndarray
    mask: np.ndarray
    action: int
    reward: float
    next_observation: np.ndarray
    next_mask: np.ndarray
    done: bool
    elapsed_min: float
    outcome_status: str
    schema_version: int = TRANSITION_SCHEMA_VERSION

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}

    @property
    def covers_until(self) -> float:
        """The minute up to which this transition accounts for its day: its next decision's."""
        return math.inf if self.done else self.now_min + self.elapsed_min


@dataclass
class DayHistory:
    """A (service_day, region)'s stored transitions: decision id -> :attr:`Transition.covers_until`."""

    covered: dict[str, float] = field(default_factory=dict)


@dataclass
class JoinResult:
    """What :func:`join` made of its records; every record given is in exactly one of the lists.

    ``used_*``: the records the transitions were made of (decisions, their outcomes, the forced
    refusals folded in); ``rejected_*``: record key -> reason; ``waiting_*``: the rest.
    """

    transitions: list[Transition] = field(default_factory=list)
    used_decisions: list[Hashable] = field(default_factory=list)
    used_outcomes: list[Hashable] = field(default_factory=list)
    rejected_decisions: dict[Hashable, str] = field(default_factory=dict)
    rejected_outcomes: dict[Hashable, str] = field(default_factory=dict)
    waiting_decisions: list[Hashable] = field(default_factory=list)
    waiting_outcomes: list[Hashable] = field(default_factory=list)


def join(
    decisions: Mapping[Hashable, dict],
    outcomes: Mapping[Hashable, dict],
    *,
    weights: RewardWeights | None = None,
    now_unix: float | None = None,
    horizon_min: float = HORIZON_MIN,
    closed_days: Collection[str] = (),
    history: Mapping[tuple[str, str], DayHistory] | None = None,
) -> JoinResult:
    """Turn the ready decisions into transitions (module docstring).

    :param decisions: key (e.g. a stream entry id) -> a decision record that passed
        :func:`check_decision`, in stream order.
    :param outcomes: key -> an outcome record that passed :func:`check_outcome`, in stream order.
    :param weights: the reward weights (default :class:`RewardWeights`).
    :param now_unix: the wall-clock time the horizon is measured to (None: no judgement by time).
    :param horizon_min: minutes after which a decision without outcome is ``no_outcome`` and a day
        without a new decision is closed.
    :param closed_days: service days (``YYYY-MM-DD``) closed now, in every region.
    :param history: (service_day, region) -> what is already stored.
    """
    weights = weights or RewardWeights()
    history = history or {}
    horizon_s = 60.0 * horizon_min
    result = JoinResult()

    def expired(record: dict) -> bool:
        return now_unix is not None and now_unix - record["time_unix"] > horizon_s

    first: dict[str, Hashable] = {}  # decision id -> key of its first record
    for key, record in decisions.items():
        did = record["decision_id"]
        if did in first:
            result.rejected_decisions[key] = f"a second record of decision {did} (the first is kept)"
        else:
            first[did] = key
    outcome_of: dict[str, Hashable] = {}
    for key, record in outcomes.items():
        did = record["decision_id"]
        decision = decisions[first[did]] if did in first else None
        if did in outcome_of:
            result.rejected_outcomes[key] = f"a second outcome for decision {did} (the first is kept)"
        elif decision is not None and decision["action"] == decision["n_vehicles"]:
            result.rejected_outcomes[key] = f"an outcome for decision {did}, which refused its booking"
        elif decision is not None:
            outcome_of[did] = key
        elif expired(record):
            result.rejected_outcomes[key] = (
                f"no decision {did} among the pending records {horizon_min:g} min after the outcome "
                "(collected without it, or never logged)"
            )
        else:
            result.waiting_outcomes.append(key)

    days: dict[tuple[str, str], list[Hashable]] = {}
    for key in first.values():
        record = decisions[key]
        days.setdefault((record["service_day"], record["region"]), []).append(key)
    for day, keys in days.items():
        keys.sort(key=lambda k: (decisions[k]["now_min"], decisions[k]["time_unix"]))  # stable: stream order
        stored = history[day].covered if day in history else {}
        here = {decisions[k]["decision_id"] for k in keys}
        frontier = max((c for did, c in stored.items() if did not in here), default=-math.inf)
        chain = []
        for key in keys:
            record = decisions[key]
            if record["decision_id"] in stored or record["now_min"] >= frontier - _TIE_MIN:
                chain.append(key)
            elif frontier == math.inf:
                result.rejected_decisions[key] = (
                    f"arrived after {day[0]} {day[1]} was closed (its last transition is stored)"
                )
            else:
                result.rejected_decisions[key] = (
                    f"out of order: decided at minute {record['now_min']:g}, before minute {frontier:g} "
                    f"up to which {day[0]} {day[1]} is already collected"
                )
        last = max((decisions[k] for k in chain), key=lambda r: r["time_unix"], default=None)
        closed = day[0] in closed_days or (last is not None and expired(last))
        _join_day(chain, decisions, outcomes, outcome_of, stored, frontier, weights, expired, closed, result)
    for did, key in outcome_of.items():
        if first[did] in result.rejected_decisions:
            reason = result.rejected_decisions[first[did]]
            result.rejected_outcomes[key] = f"its decision {did} was rejected: {reason}"
        elif key not in result.used_outcomes:
            result.waiting_outcomes.append(key)
    return result


def _join_day(chain, decisions, outcomes, outcome_of, stored, frontier, weights, expired, closed,
              result: JoinResult) -> None:  # fmt: skip
    """The transitions of one (service_day, region)'s decisions in order (``chain``), up to the first
    that is not ready; the rest wait."""

    def presented(key) -> bool:
        record = decisions[key]
        return bool(read_array(record["mask"])[: record["n_vehicles"]].any())

    steps = [i for i, key in enumerate(chain) if presented(key)]
    if not steps and closed and chain:
        if frontier > -math.inf:  # the decision these follow is stored: nothing left to fold them into
            for key in chain:
                result.rejected_decisions[key] = "a forced refusal after its day's last stored transition"
            return
        steps = [0]  # no booking of the day had a feasible vehicle: the env presents the first
    done_until = 0
    for j, i in enumerate(steps):
        nxt = steps[j + 1] if j + 1 < len(steps) else None
        if nxt is None and not closed:
            break
        record = decisions[chain[i]]
        fate = _fate(record, outcomes, outcome_of, stored, weights, expired)
        if fate is None:
            break
        status, own = fate
        folded = chain[done_until:i] + chain[i + 1 : len(chain) if nxt is None else nxt]
        before, penalty = i - done_until, -weights.refusal_penalty
        rewards = [penalty] * before + [own] + [penalty] * (len(folded) - before)
        reward = float(sum(rewards))  # summed in the env's order: bit for bit its step reward
        obs, mask = read_array(record["observation"]), read_array(record["mask"])
        if nxt is None:
            next_obs, next_mask, elapsed = np.zeros_like(obs), np.ones_like(mask), 0.0
        else:
            following = decisions[chain[nxt]]
            next_obs, next_mask = read_array(following["observation"]), read_array(following["mask"])
            elapsed = float(following["now_min"]) - float(record["now_min"])
        result.transitions.append(Transition(
            decision_id=record["decision_id"], service_day=record["service_day"], region=record["region"],
            now_min=float(record["now_min"]), time_unix=float(record["time_unix"]),
            model_version=record["model_version"], arm=record["arm"], policy=record["policy"],
            n_vehicles=record["n_vehicles"], observation=obs, mask=mask, action=record["action"],
            reward=reward, next_observation=next_obs, next_mask=next_mask, done=nxt is None,
            elapsed_min=elapsed, outcome_status=status,
        ))  # fmt: skip
        result.used_decisions += [chain[i], *folded]
        if record["decision_id"] in outcome_of:
            result.used_outcomes.append(outcome_of[record["decision_id"]])
        done_until = len(chain) if nxt is None else nxt
    result.waiting_decisions += chain[done_until:]


def _fate(record, outcomes, outcome_of, stored, weights, expired) -> tuple[str, float] | None:
    """(outcome_status, own reward) of a decision, or None while it is not known."""
    k = record["n_vehicles"]
    if record["action"] == k:
        return "refused", -weights.refusal_penalty
    did = record["decision_id"]
    if did in outcome_of:
        outcome = outcomes[outcome_of[did]]
        if outcome["status"] != "completed":
            return outcome["status"], 0.0
        return "completed", serve_reward(weights, record["priority"], outcome["deadhead_km"],
                                         outcome["lateness_min"])  # fmt: skip
    if did in stored or expired(record):
        planned = record["planned"]
        return "no_outcome", serve_reward(weights, record["priority"], planned["deadhead_km"],
                                          planned["lateness_min"])  # fmt: skip
    return None
