"""Collect: the service's decision and outcome streams -> validated transitions -> the experience store.

:func:`collect` is one pass of the collector; run it periodically (a Celery beat, cron). It reads
``{prefix}:decisions`` and ``{prefix}:outcomes`` (:mod:`rl_lib.serving.decision_log`) through a Redis
consumer group and writes what is ready to an :class:`~rl_lib.feedback.store.ExperienceStore`:

1. **Group.** ``XGROUP CREATE ... 0 MKSTREAM`` on both streams when the group is absent: a new group
   starts from the streams' first entry.
2. **Claim.** When other consumers of the group hold pending entries, ``XAUTOCLAIM`` takes over those
   idle longer than ``claim_idle_ms`` (a collector that died, or a host that was replaced); they are
   counted as ``claimed``. Entries trimmed from a stream (``MAXLEN``) before anyone collected them
   come back from ``XAUTOCLAIM`` as deleted ids, or from the pending list without fields: they go to
   the dead letter, record empty, so a loss is visible.
3. **Read.** First this consumer's own pending entries (``XREADGROUP ... 0``, paged: the entries
   earlier passes left waiting, and any a crash left unacknowledged), then new ones (``>``), ``batch``
   entries per stream at a time, ``pause_s`` seconds apart (a rate limit).
4. **Validate.** Every record is decoded and checked (:func:`~rl_lib.feedback.transitions.check_decision`,
   :func:`~rl_lib.serving.decision_log.check_outcome`). A reject is never dropped silently: it is
   appended to ``{prefix}:dead_letter`` (fields ``stream``, ``entry_id``, ``record`` as it was,
   ``reason``) and acknowledged, in one ``MULTI``/``EXEC`` transaction, and counted as ``rejected``.
5. **Join.** After each page, valid records join the pass's working set (the entries read and not yet
   used) and :func:`~rl_lib.feedback.transitions.join` turns the ready decisions into transitions,
   with the store's :meth:`~rl_lib.feedback.store.ExperienceStore.history` of their days. The
   horizon (``no_outcome``, days closed by time) and ``close_days`` are applied only once the
   streams are drained, so a backlog read page by page is judged as a whole: an outcome further on
   in the backlog is never taken as missing. The join's own rejects (an outcome for a refused
   decision, a second outcome or decision record, a decision out of order) go to the dead letter.
6. **Write, then acknowledge.** The transitions are written to the store (durable: fsynced, renamed,
   deduplicated on decision id) and only **then** are the entries they were made of acknowledged
   (the decision, its outcome, the forced refusals folded into it), all in one transaction. A
   decision used as another's next state stays pending until its own transition is written.

**Waiting entries** (a decision whose outcome has not come, or whose next decision has not, an
outcome whose decision has not) are not acknowledged: they stay in this consumer's pending list and
the next pass reads them again in step 3. That is how they survive a crash, and why a pass keeps
nothing between runs but the store and the streams.

**Crash safety.** Killed anywhere, a pass loses nothing and duplicates nothing. Before the store
write: nothing was acknowledged, the next pass re-reads everything. Between the write and the
acknowledgement: the re-read entries make the same transitions (the join is a pure function of
the records, and the store's history marks them re-deliveries), and the store drops them as
duplicates (counted). A dead letter and its acknowledgement are one transaction. The store keeps the
first row written for a decision id (a re-delivered decision whose outcome came after it was
written as ``no_outcome`` keeps ``no_outcome``).

**One collector at a time** per group: the join needs a day's consecutive decisions in one working
set, which consumers sharing a group's entries would split. A second host takes over through the
claim step (give it another ``consumer`` name); set ``claim_idle_ms`` above the interval between
passes, as a live collector's pending entries are idle between its passes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Collection
from dataclasses import dataclass

from rl_lib.envs.core import RewardWeights
from rl_lib.feedback.store import ExperienceStore
from rl_lib.feedback.transitions import (
    HORIZON_MIN,
    DayHistory,
    check_decision,
    decode_record,
    join,
)
from rl_lib.serving.decision_log import check_outcome

TRIMMED = "the entry was trimmed from its stream (MAXLEN) before it was collected"


@dataclass
class CollectReport:
    """What one pass did (counts of stream entries, except ``written`` and ``duplicates``: rows).

    :param read: entries read (own pending ones included).
    :param written: transitions added to the store.
    :param duplicates: transitions the store dropped: their decision id was stored already.
    :param rejected: entries sent to the dead letter.
    :param waiting: entries left pending for the next pass.
    :param claimed: entries taken over from other consumers.
    """

    read: int = 0
    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    waiting: int = 0
    claimed: int = 0


def collect(
    client,
    store: ExperienceStore,
    prefix: str = "rl_lib",
    group: str = "feedback",
    consumer: str | None = None,
    weights: RewardWeights | None = None,
    horizon_min: float = HORIZON_MIN,
    batch: int = 500,
    claim_idle_ms: int = 3_600_000,
    close_days: Collection[str] = (),
    now_unix: float | None = None,
    pause_s: float = 0.0,
) -> CollectReport:
    """One collection pass (module docstring).

    :param client: a redis-py client (``decode_responses`` either way).
    :param store: where transitions go.
    :param prefix: the service's stream prefix.
    :param group: the consumer group.
    :param consumer: this collector's name in the group (default: the host name; keep it stable, as
        a pass reads its own pending entries).
    :param weights: reward weights of the transitions (default :class:`RewardWeights`).
    :param horizon_min: minutes after which a decision without outcome becomes ``no_outcome`` and a
        (service day, region) without a new decision is closed (its last decision becomes ``done``).
    :param batch: entries read per stream and call.
    :param claim_idle_ms: idle time after which another consumer's pending entries are taken over.
    :param close_days: service days (``YYYY-MM-DD``) to close now, whatever the horizon says.
    :param now_unix: the time the horizon is measured to (default: now).
    :param pause_s: seconds to wait after each page (a rate limit on the reads and writes of a pass).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if not pause_s >= 0:
        raise ValueError(f"pause_s must be >= 0, got {pause_s}")
    now = time.time() if now_unix is None else now_unix
    consumer = consumer or socket.gethostname()
    return _Pass(client, store, prefix, group, consumer, weights, horizon_min, batch, claim_idle_ms,
                 set(close_days), now, pause_s).run()  # fmt: skip


@dataclass
class _Pass:
    """One pass: its settings and its working set (per stream, entry id -> record, in stream order)."""

    client: object
    store: ExperienceStore
    prefix: str
    group: str
    consumer: str
    weights: RewardWeights | None
    horizon_min: float
    batch: int
    claim_idle_ms: int
    close_days: set[str]
    now_unix: float
    pause_s: float

    def __post_init__(self) -> None:
        self.decision_stream, self.outcome_stream = f"{self.prefix}:decisions", f"{self.prefix}:outcomes"
        self.dead_letter = f"{self.prefix}:dead_letter"
        self.working: dict[str, dict[str, dict]] = {self.decision_stream: {}, self.outcome_stream: {}}
        self.texts: dict[tuple[str, str], str] = {}  # the records as read, for the dead letter
        self.rejects: list[tuple[str, str, str, str]] = []  # (stream, entry id, record, reason)
        self.history: dict[tuple[str, str], DayHistory] = {}
        self.history_days: set[str] = set()
        self.report = CollectReport()

    def run(self) -> CollectReport:
        streams = (self.decision_stream, self.outcome_stream)
        for stream in streams:
            self._ensure_group(stream)
        for stream in streams:
            self._claim(stream)
        self._read({s: "0" for s in streams}, pending=True)
        self._read({s: ">" for s in streams}, pending=False)
        self._step(final=True)
        self.report.waiting = sum(len(w) for w in self.working.values())
        return self.report

    # ---------------------------------------------------------------------------- redis
    def _ensure_group(self, stream: str) -> None:
        import redis

        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim(self, stream: str) -> None:
        summary = self.client.xpending(stream, self.group)
        if not any(_s(c["name"]) != self.consumer for c in summary.get("consumers") or ()):
            return
        ours = self._own_pending(stream)
        cursor = "0-0"
        while True:
            cursor, entries, deleted = self.client.xautoclaim(
                stream, self.group, self.consumer, self.claim_idle_ms, cursor, count=self.batch
            )
            self.report.claimed += sum(1 for entry_id, _ in entries if _s(entry_id) not in ours)
            self.rejects += [(stream, _s(entry_id), "", TRIMMED) for entry_id in deleted]
            if _s(cursor) == "0-0":
                break

    def _own_pending(self, stream: str) -> set[str]:
        ids: set[str] = set()
        low = "-"
        while True:
            page = self.client.xpending_range(
                stream, self.group, low, "+", self.batch, consumername=self.consumer
            )
            ids.update(_s(e["message_id"]) for e in page)
            if len(page) < self.batch:
                return ids
            low = "(" + _s(page[-1]["message_id"])

    def _read(self, cursors: dict[str, str], pending: bool) -> None:
        """Read pages until every stream is drained; join after each page."""
        while cursors:
            reply = self.client.xreadgroup(self.group, self.consumer, cursors, count=self.batch)
            pairs = reply.items() if isinstance(reply, dict) else reply  # RESP3 or RESP2
            got = {_s(stream): entries for stream, entries in pairs if entries}
            for stream in list(cursors):
                if stream not in got:
                    del cursors[stream]
                elif pending:
                    cursors[stream] = _s(got[stream][-1][0])
            if not got:
                return
            for stream, entries in got.items():
                self._take(stream, entries)
            self._step(final=False)
            if self.pause_s:
                time.sleep(self.pause_s)

    def _take(self, stream: str, entries) -> None:
        check = check_decision if stream == self.decision_stream else check_outcome
        for raw_id, raw_fields in entries:
            self.report.read += 1
            entry_id = _s(raw_id)
            fields = {_s(k): _s(v) for k, v in (raw_fields or {}).items()}
            if not fields:
                self.rejects.append((stream, entry_id, "", TRIMMED))
                continue
            text = fields.get("record")
            if text is None:
                self.rejects.append(
                    (stream, entry_id, "", f"no 'record' field (fields: {', '.join(fields)})")
                )
                continue
            try:
                record = decode_record(text)
            except ValueError as exc:
                self.rejects.append((stream, entry_id, text, str(exc)))
                continue
            reason = check(record)
            if reason is not None:
                self.rejects.append((stream, entry_id, text, reason))
                continue
            self.working[stream][entry_id] = record
            self.texts[(stream, entry_id)] = text

    # ---------------------------------------------------------------------------- join, write, ack
    def _step(self, final: bool) -> None:
        decisions, outcomes = self.working[self.decision_stream], self.working[self.outcome_stream]
        days = {r["service_day"] for r in decisions.values()} - self.history_days
        if days:
            self.history.update(self.store.history(days))
            self.history_days |= days
        result = join(decisions, outcomes, weights=self.weights, now_unix=self.now_unix if final else None,
                      horizon_min=self.horizon_min, closed_days=self.close_days if final else (),
                      history=self.history)  # fmt: skip
        if result.transitions:
            written = self.store.write(result.transitions)  # durable before anything is acknowledged
            self.report.written += written.written
            self.report.duplicates += written.duplicates
            for t in result.transitions:
                covered = self.history.setdefault((t.service_day, t.region), DayHistory()).covered
                covered[t.decision_id] = t.covers_until
        for stream, rejected in ((self.decision_stream, result.rejected_decisions),
                                 (self.outcome_stream, result.rejected_outcomes)):  # fmt: skip
            self.rejects += [(stream, e, self.texts[(stream, e)], reason) for e, reason in rejected.items()]
        used = {self.decision_stream: result.used_decisions, self.outcome_stream: result.used_outcomes}
        self._acknowledge(used)
        for stream, ids in used.items():
            for entry_id in ids:
                del self.working[stream][entry_id]
                del self.texts[(stream, entry_id)]

    def _acknowledge(self, used: dict[str, list[str]]) -> None:
        """Dead-letter the rejects and acknowledge them and ``used``, in one transaction."""
        if not self.rejects and not any(used.values()):
            return
        pipe = self.client.pipeline(transaction=True)
        ack = {stream: list(ids) for stream, ids in used.items()}
        for stream, entry_id, text, reason in self.rejects:
            pipe.xadd(
                self.dead_letter, {"stream": stream, "entry_id": entry_id, "record": text, "reason": reason}
            )
            ack[stream].append(entry_id)
        for stream, ids in ack.items():
            if ids:
                pipe.xack(stream, self.group, *ids)
        pipe.execute()
        self.report.rejected += len(self.rejects)
        for stream, entry_id, _, _ in self.rejects:
            self.working[stream].pop(entry_id, None)
            self.texts.pop((stream, entry_id), None)
        self.rejects = []


def _s(value) -> str:
    """A reply value as text, whatever the client's ``decode_responses``."""
    return value.decode() if isinstance(value, bytes) else value
