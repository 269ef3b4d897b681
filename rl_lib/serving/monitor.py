"""What the service measures: Prometheus metrics and the live figures of the dashboard.

:class:`Monitor` owns the Prometheus metrics of its process (``GET /metrics``) and bounded windows
for the dashboard and ``GET /v1/stats``: decisions per minute by arm and by deciding policy, decision
latency percentiles, and per arm, each with a 95 % bootstrap interval from :mod:`rl_lib.stats` (one
interval method in the project):

- ``assignment_rate``: decisions that assigned a vehicle (known at once, for every decision);
- ``completion_rate``: assigned trips reported completed, among those with an outcome (not among
  all decisions: refusals are final at once, trips only when they end, so mixing them would read
  low while trips are on the road);
- ``on_time_rate`` and ``deadhead_km`` of the completed trips.

**The windows are read from the decision log**, not from what this process decided: at each
refresh the monitor takes the records appended to the streams since its last read
(:class:`~rl_lib.serving.decision_log.LogTail`). So every uvicorn worker and every replica writing
to one Redis shows the same figures, those of the whole service, and an outcome posted to another
worker than its decision still finds its arm. A record still in a spool (Redis away) counts once it
is replayed; the backlog is shown meanwhile. With several worker processes, ``GET /metrics``
aggregates them through prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``).

The windows are bounded (``window`` recent decisions and outcomes; intervals over the last
``ci_window`` values), so memory and the cost of a refresh stay flat however long the service
runs; the streams keep the full history. The figures are recomputed at most every ``refresh_s``
seconds (each dashboard refresh would otherwise pay the read and the bootstrap again).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rl_lib.serving.decision_log import DECISION_SCHEMA, check_outcome, finite_number

#: New decision and outcome records of the log since the last call (oldest first).
RecordSource = Callable[[], tuple[list[dict | None], list[dict | None]]]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class DecisionFacts:
    """What the monitor keeps of a decision until its outcome arrives."""

    arm: str
    assigned: bool


class Monitor:
    """Metrics of one service process, live figures of the whole service.

    :param source: the log's new records (a :class:`~rl_lib.serving.decision_log.LogTail`); None:
        no log to read (the figures stay empty).
    :param window: decisions and outcomes kept for the live figures.
    :param n_resamples: bootstrap replicates of the live intervals.
    :param ci_window: most recent values per arm and KPI the intervals are drawn from.
    :param refresh_s: the figures are reused for this long.
    """

    def __init__(self, source: RecordSource | None = None, window: int = 20_000, n_resamples: int = 500,
                 ci_window: int = 2_000, refresh_s: float = 1.0) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("rl_lib_decisions", "Decisions answered", ["arm", "policy"], registry=r)
        self.fallbacks = Counter("rl_lib_fallbacks", "Decisions the model could not make", ["reason"],
                                 registry=r)  # fmt: skip
        self.latency = Histogram("rl_lib_decision_seconds", "Decision time in the service (s)",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.outcomes = Counter("rl_lib_outcomes", "Outcomes recorded", ["status"], registry=r)
        self.rejected = Counter("rl_lib_rejected_requests", "Requests refused (4xx)", ["status"], registry=r)
        # Gauges of several workers (multiprocess mode): the live processes' sum, or their largest.
        self.spool_backlog = Gauge("rl_lib_spool_backlog", "Log records waiting in the local spool",
                                   registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.spooled = Gauge("rl_lib_spooled_records", "Log records ever spooled", registry=r,
                             multiprocess_mode="sum")  # fmt: skip
        self.replayed = Gauge("rl_lib_replayed_records", "Spooled records replayed into Redis", registry=r,
                              multiprocess_mode="sum")  # fmt: skip
        self.model_info = Gauge("rl_lib_model_loaded", "1 when the model decides", ["version"], registry=r,
                                multiprocess_mode="livemax")  # fmt: skip
        self.skipped_records = Counter("rl_lib_log_records_skipped",
                                       "Stream entries the live figures left out: not of the log's schema",
                                       registry=r)  # fmt: skip
        self.model_swaps = Counter("rl_lib_model_swaps", "Models swapped in while serving", registry=r)
        self.model_load_failures = Counter("rl_lib_model_load_failures",
                                           "Promoted models that failed to load (the live one kept)",
                                           registry=r)  # fmt: skip
        self._source = source
        self._model_version: str | None = None
        self._lock = threading.Lock()
        self._n_resamples, self._ci_window, self._refresh_s = n_resamples, ci_window, refresh_s
        self._cached: tuple[float, dict] | None = None
        self._times: deque[tuple[float, str, str]] = deque(maxlen=window)  # (unix time, arm, policy)
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._pending: OrderedDict[str, DecisionFacts] = OrderedDict()
        self._orphans: OrderedDict[str, dict] = OrderedDict()  # outcomes read before their decision
        self._window = window
        self._assigned: dict[str, deque[float]] = {}  # arm -> 1.0 / 0.0 per decision
        self._trips: dict[str, deque[tuple[float, float, float]]] = {}  # arm -> (completed, on_time, km)

    def decided(self, policy: str, arm: str, seconds: float, fallback_reason: str | None) -> None:
        """Count a decision of this process (its metrics; the live figures come from the log)."""
        self.decisions.labels(arm, policy).inc()
        self.latency.observe(seconds)
        if fallback_reason is not None:
            self.fallbacks.labels(_reason_label(fallback_reason)).inc()

    def set_model(self, version: str, ready: bool) -> None:
        """``rl_lib_model_loaded{version}``: 1 for the live model, 0 for the one it replaced (not
        removed: multiprocess mode cannot remove a label)."""
        previous = self._model_version
        if previous is not None and previous != version:
            self.model_info.labels(previous).set(0.0)
        self.model_info.labels(version).set(1.0 if ready else 0.0)
        self._model_version = version

    def outcome(self, status: str) -> None:
        """Count an outcome this process recorded."""
        self.outcomes.labels(status).inc()

    def absorb(self, decisions: list[dict | None], outcomes: list[dict | None]) -> None:
        """Add log records (oldest first) to the windows; an outcome whose decision is not read yet
        (it was spooled, and is replayed later) waits for it, within the window. A record not of
        the log's schema (someone else wrote to the stream) is left out and counted
        (``rl_lib_log_records_skipped_total``): it must not stop the dashboard."""
        good_decisions = [r for r in decisions if _is_decision(r)]
        good_outcomes = [r for r in outcomes if _is_outcome(r)]
        with self._lock:
            skipped = len(decisions) + len(outcomes) - len(good_decisions) - len(good_outcomes)
            for record in good_decisions:
                arm, assigned = record["arm"], record["vehicle_id"] is not None
                self._times.append((record["time_unix"], arm, record["policy"]))
                self._latency_ms.append(record["decision_ms"])
                self._pending[record["decision_id"]] = DecisionFacts(arm, assigned)
                while len(self._pending) > 5 * self._window:
                    self._pending.popitem(last=False)
                self._assigned.setdefault(arm, deque(maxlen=self._window)).append(float(assigned))
            waiting, self._orphans = self._orphans, OrderedDict()
            for record in [*waiting.values(), *good_outcomes]:
                facts = self._pending.pop(record["decision_id"], None)
                if facts is None:
                    self._orphans[record["decision_id"]] = record
                    continue
                if record["status"] == "completed":
                    row = (1.0, float(record["lateness_min"] <= 1e-9), float(record["deadhead_km"]))
                else:
                    row = (0.0, np.nan, np.nan)
                self._trips.setdefault(facts.arm, deque(maxlen=self._window)).append(row)
            while len(self._orphans) > self._window:
                self._orphans.popitem(last=False)
        if skipped:
            self.skipped_records.inc(skipped)

    def metrics_text(self) -> bytes:
        """``GET /metrics``: this process's metrics, or every worker's in multiprocess mode."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def stats(self) -> dict:
        """The dashboard's figures (``GET /v1/stats``), at most ``refresh_s`` old."""
        now = time.time()
        cached = self._cached
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[1]
        if self._source is not None:
            self.absorb(*self._source())
        figures = self._compute(now)
        self._cached = (now, figures)
        return figures

    def _compute(self, now: float) -> dict:
        from rl_lib.stats import stratified_bootstrap_ci

        with self._lock:
            times = list(self._times)
            latency = np.array(self._latency_ms)
            assigned = {arm: np.array(values, dtype=float) for arm, values in self._assigned.items()}
            trips = {arm: np.array(rows, dtype=float).reshape(-1, 3) for arm, rows in self._trips.items()}
        last_minute = [(arm, policy) for t, arm, policy in times if t >= now - 60.0]
        per_minute: dict[str, dict[str, int]] = {"by_arm": {}, "by_policy": {}}
        for arm, policy in last_minute:
            per_minute["by_arm"][arm] = per_minute["by_arm"].get(arm, 0) + 1
            per_minute["by_policy"][policy] = per_minute["by_policy"].get(policy, 0) + 1
        pct = {f"p{q}": float(np.percentile(latency, q)) if latency.size else None for q in (50, 95, 99)}
        arms = {}
        for arm in sorted(assigned):
            rows = trips.get(arm, np.zeros((0, 3)))
            columns = {"assignment_rate": assigned[arm], "completion_rate": rows[:, 0],
                       "on_time_rate": rows[:, 1], "deadhead_km": rows[:, 2]}  # fmt: skip
            kpis = {}
            for name, values in columns.items():
                values = values[~np.isnan(values)][-self._ci_window :]
                if values.size == 0:
                    kpis[name] = {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
                    continue
                mean, low, high = stratified_bootstrap_ci({arm: values[None, :]}, np.mean,
                                                          self._n_resamples)[arm]  # fmt: skip
                kpis[name] = {"mean": mean, "ci_low": low, "ci_high": high, "n": int(values.size)}
            arms[arm] = kpis
        return {
            "decisions_last_minute": per_minute,
            "decisions_in_window": len(times),
            "latency_ms": pct,
            "arms": arms,
        }

    def sync_log(self, backlog: int, spooled: int, replayed: int) -> None:
        self.spool_backlog.set(backlog)
        self.spooled.set(spooled)
        self.replayed.set(replayed)


def _is_decision(record: dict | None) -> bool:
    if not isinstance(record, dict):
        return False
    try:
        return (record["schema"] == DECISION_SCHEMA and isinstance(record["arm"], str)
                and isinstance(record["policy"], str) and isinstance(record["decision_id"], str)
                and finite_number(record["time_unix"]) and finite_number(record["decision_ms"])
                and (record["vehicle_id"] is None or isinstance(record["vehicle_id"], str)))  # fmt: skip
    except KeyError:
        return False


def _is_outcome(record: dict | None) -> bool:
    return check_outcome(record) is None


def _reason_label(reason: str) -> str:
    """A low-cardinality label: the reason's first words (no ids, no paths)."""
    head = reason.split(":")[0]
    return head if head in ("model not loaded", "model failed") else "wrong fleet size"
