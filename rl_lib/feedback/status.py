"""The feedback loop's figures, for the service's dashboard and the demo's report.

:class:`LoopFigures` is the provider the service calls in its stats (``stats()["feedback"]``, shown by
:func:`rl_lib.serving.dashboard._loop_section`) when it is given the loop's settings
(``rl-lib serve --feedback-settings FILE``). It reads, each time it is called:

- from Redis: the consumer group's ``lag`` (entries not yet delivered to the collector) and
  ``pending`` (delivered, not acknowledged: waiting for their outcome or their next decision) on both
  streams (``XINFO GROUPS``), the dead letters (``XLEN {prefix}:dead_letter``), the transitions written
  per UTC hour (the collect task's counters), the last collect and retrain runs and how many there
  were (:mod:`rl_lib.feedback.tasks`);
- from the registry: the gate decisions (the newest :data:`GATES_SHOWN`), how many promoted, and the
  lineage of the production model (each version back to the first, with its training days).

Every value is a scalar (``None`` when unknown, e.g. Redis away), keyed by name, so the dashboard shows
each under its key path. A Redis failure is reported in ``redis_error`` and never raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from rl_lib.feedback.settings import FeedbackSettings, hour_bucket
from rl_lib.serving.registry import LINEAGE, ModelRegistry

HOURS_SHOWN = 12
GATES_SHOWN = 5
STREAMS = ("decisions", "outcomes")


class LoopFigures:
    """``figures()`` -> the loop's figures (module docstring).

    :param settings: the loop's settings (registry, stream prefix, group).
    :param connect: opens a redis-py client with text replies (e.g. the service's
        :func:`~rl_lib.serving.decision_log.redis_connector`); called again after a failure.
    """

    def __init__(self, settings: FeedbackSettings, connect: Callable[[], object]) -> None:
        self.settings, self.connect = settings, connect
        self.registry = ModelRegistry(settings.registry)
        self._client = None

    def __call__(self) -> dict:
        return self.figures()

    def figures(self, now_unix: float | None = None) -> dict:
        """The figures now (module docstring); ``now_unix`` picks the hours shown (default: now)."""
        now = time.time() if now_unix is None else now_unix
        return {"group": self.settings.group, **self._redis_figures(now), **self._registry_figures()}

    # ------------------------------------------------------------------ redis
    def _redis_figures(self, now: float) -> dict:
        hours = [hour_bucket(now - 3600 * i) for i in reversed(range(HOURS_SHOWN))]
        blank = {
            "lag": dict.fromkeys(STREAMS),
            "pending": dict.fromkeys(STREAMS),
            "dead_letters": None,
            "collected_per_hour": dict.fromkeys(hours),
            "collect_runs": None,
            "last_collect": dict.fromkeys(("time", "written", "duplicates", "rejected", "waiting", "wall_s")),
            "retrain_runs": None,
            "last_retrain": dict.fromkeys(("time", "status", "version", "steps", "retrain_wall_s")),
            "redis_error": None,
        }
        try:
            client = self._client = self._client or self.connect()
            figures = self._read(client, blank, hours)
        except Exception as exc:  # Redis away or refusing: the registry's figures still show
            self._client = None
            return {**blank, "redis_error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        return figures

    def _read(self, client, figures: dict, hours: list[str]) -> dict:
        import redis

        s = self.settings
        for name in STREAMS:
            try:
                groups = client.xinfo_groups(f"{s.stream_prefix}:{name}")
            except redis.exceptions.ResponseError:  # no such stream yet
                groups = []
            group = next((g for g in groups if g["name"] == s.group), None)
            if group is not None:
                figures["lag"][name] = group.get("lag")  # None when Redis cannot tell (a trimmed stream)
                figures["pending"][name] = group["pending"]
        figures["dead_letters"] = client.xlen(f"{s.stream_prefix}:dead_letter")
        counts = client.hmget(s.key("collected"), hours)
        figures["collected_per_hour"] = {h: int(n or 0) for h, n in zip(hours, counts, strict=True)}
        for kind, fields in (("collect", figures["last_collect"]), ("retrain", figures["last_retrain"])):
            key = s.key(f"{kind}_runs")
            figures[f"{kind}_runs"] = client.llen(key)
            last = client.lindex(key, 0)
            if last is not None:
                run = json.loads(last)
                figures[f"last_{kind}"] = {k: run.get(k) for k in fields}
        return figures

    # ------------------------------------------------------------------ registry
    def _registry_figures(self) -> dict:
        gates = [d for d in self.registry.decisions() if d.get("kind") == "gate"]
        shown = {}
        for d in gates[-GATES_SHOWN:][::-1]:
            reward = next((x for x in d.get("differences") or () if x.get("kpi") == "reward"), {})
            shown[str(d["sequence"])] = {
                "time": d.get("time"),
                "version": d.get("version"),
                "parent": d.get("parent"),
                "verdict": d.get("verdict"),
                "n_days": d.get("n_days"),
                "reward_diff": reward.get("mean_diff"),
                "reward_ci_low": reward.get("ci_low"),
                "reward_ci_high": reward.get("ci_high"),
            }
        production = self.registry.production()
        return {
            "production": production,
            "gates": len(gates),
            "promotions": sum(1 for d in gates if d.get("promote")),
            "gate_decisions": shown,
            "lineage": lineage(self.registry, production),
        }


def lineage(registry: ModelRegistry, version: str | None) -> dict[str, dict]:
    """``version`` and its ancestors, newest first: created, parent, first and last training day."""
    out: dict[str, dict] = {}
    while version is not None and version not in out:  # a cycle cannot be written, but never loop
        try:
            data = json.loads((registry.root / version / LINEAGE).read_text())
        except (OSError, ValueError):
            out[version] = dict.fromkeys(("created", "parent", "first_day", "last_day"))
            break
        window = data.get("data_window") or {}
        out[version] = {
            "created": data.get("created"),
            "parent": data.get("parent"),
            "first_day": window.get("first_service_day"),
            "last_day": window.get("last_service_day"),
        }
        version = data.get("parent")
    return out
