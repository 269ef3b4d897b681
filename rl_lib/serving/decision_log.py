"""The decision and outcome log: Redis Streams, with a local spool while Redis is unreachable.

Every record is versioned JSON (``schema: rl_lib.decision/1`` or ``rl_lib.outcome/1``; arrays carry
their dtype and shape), appended with ``XADD ... MAXLEN ~`` to ``{prefix}:decisions`` or
``{prefix}:outcomes`` under the field ``record``. Never pickle: whoever can write to Redis must not
be able to run code in the trainer that reads it.

**Exactly once.** An append is a Lua script that adds the entry only if ``{prefix}:seen:{key}`` does
not exist, then sets that key (with a TTL) to the new entry's id, atomically: a record replayed from
the spool, or a client retrying a decision id, is never in the stream twice. For a duplicate the
script returns the first entry's id, so the service can answer a retry (even one that reaches
another replica, or this one after a restart) with the decision that was logged, not a new one.

**Redis away.** When an append fails, the record goes to the spool (JSON lines, flushed and
fsynced before the request is answered) and so do all later records until the spool is empty
again, which keeps the order. A background thread retries every ``retry_s``; it replays the spool
through the same idempotent script, then rewrites it atomically without what landed. A crash
mid-replay replays again: the seen keys drop what already landed. A line torn by a crash mid-write
belongs to a request that was never answered; it is ended with a newline before anything else is
appended (so it cannot swallow the next record) and dropped at replay. Counters (spooled,
replayed, dropped duplicates, torn lines) feed the metrics. While Redis is away, a retried decision
id unknown to this process cannot be checked against the log: it is decided again, and the replay
keeps the first record.

**Group commit.** In the service's event loop, records go through :meth:`append_decision_async`:
the records of the requests in flight are written together (one Redis pipeline, or one spool
fsync) by a single writer thread, and each request resumes when its own record is durable. Order
is kept: one writer, batches in arrival order.

**Several processes** (uvicorn workers, replicas on one host) each spool to their own file,
``{spool_dir}/{prefix}-{pid}.jsonl``; a process that starts adopts the spool files of processes that
are gone (claimed by an atomic rename to ``...jsonl.claimed-{pid}``, so two never adopt the same
file; a claim whose claimer died is adopted in turn) and replays them first.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from rl_lib.io import atomic_write_text

DECISION_SCHEMA = "rl_lib.decision/1"
OUTCOME_SCHEMA = "rl_lib.outcome/1"
OUTCOME_STATUSES = ("completed", "cancelled", "no_show")
FACTS = ("pickup_min", "dropoff_min", "lateness_min", "deadhead_km")  # an outcome's, each >= 0 or null
COMPLETED_FACTS = ("pickup_min", "lateness_min", "deadhead_km")  # required of a completed trip

# KEYS[1] stream, KEYS[2] seen-key; ARGV[1] approximate maxlen, ARGV[2] record, ARGV[3] seen TTL (s).
# Returns {1, new entry id} or {0, the first entry's id}.
_APPEND = """
local first = redis.call('GET', KEYS[2])
if first then
  return {0, first}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[1]), '*', 'record', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[3]))
return {1, id}
"""


def array_field(values: np.ndarray) -> dict:
    """An array as explicit JSON: dtype, shape, values (float32 values round-trip exactly).

    :raises ValueError: a NaN or infinite value (JSON has none; the log must not hold a null).
    """
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError("an array field must be finite")
    return {"dtype": str(values.dtype), "shape": list(values.shape), "data": values.ravel().tolist()}


def read_array(data: dict) -> np.ndarray:
    """The inverse of :func:`array_field`; raises ValueError on a malformed field."""
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "data"}:
        raise ValueError("an array field needs exactly dtype, shape and data")
    if data["dtype"] not in ("float32", "float64", "bool", "int64"):
        raise ValueError(f"unsupported dtype {data['dtype']!r}")
    return np.asarray(data["data"], dtype=data["dtype"]).reshape(data["shape"])


def finite_number(value: object) -> bool:
    """An int or float (not a bool), finite: what a record's number fields hold."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_outcome(record: object) -> str | None:
    """Why an outcome record is not of the log's outcome schema, or None: one check for the monitor
    and the feedback loop's join (the A/B report's reader names the field and the file line)."""
    if not isinstance(record, dict):
        return "a record is a JSON object"
    if record.get("schema") != OUTCOME_SCHEMA:
        return f"schema {record.get('schema')!r}, expected {OUTCOME_SCHEMA!r}"
    missing = [k for k in ("decision_id", "time_unix", "status") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not isinstance(record["decision_id"], str) or not record["decision_id"]:
        return f"decision_id: a non-empty string, got {record['decision_id']!r}"
    if not finite_number(record["time_unix"]):
        return f"time_unix: a finite number, got {record['time_unix']!r}"
    if record["status"] not in OUTCOME_STATUSES:
        return f"status {record['status']!r}: one of {', '.join(OUTCOME_STATUSES)}"
    for key in FACTS:
        value = record.get(key)
        if value is not None and (not finite_number(value) or value < 0):
            return f"{key}: a finite number >= 0 or null, got {value!r}"
    if record["status"] == "completed":
        absent = [k for k in COMPLETED_FACTS if record.get(k) is None]
        if absent:
            return f"a completed trip needs {', '.join(absent)}"
    return None


@dataclass
class LogCounters:
    appended: int = 0
    spooled: int = 0
    replayed: int = 0
    duplicates: int = 0
    torn_lines: int = 0
    redis_errors: int = 0


@dataclass
class DecisionLog:
    """Appends records to Redis Streams, or to ``spool`` while Redis is away.

    :param connect: returns a redis-py client (None: no Redis configured, everything is spooled and
        replayed only when a later process has Redis).
    :param spool_dir: the folder of the spool files (JSON lines, one per process).
    :param prefix: stream key prefix.
    :param maxlen: approximate cap of each stream (``MAXLEN ~``).
    :param seen_ttl_s: how long a record key is remembered for exactly-once appends.
    :param retry_s: seconds between reconnection attempts while the spool holds records.
    """

    connect: Callable[[], object] | None
    spool_dir: Path
    prefix: str = "rl_lib"
    maxlen: int = 1_000_000
    seen_ttl_s: int = 7 * 24 * 3600
    retry_s: float = 1.0
    counters: LogCounters = field(default_factory=LogCounters)

    def __post_init__(self) -> None:
        self.spool_dir = Path(self.spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = self.spool_dir / f"{self.prefix}-{os.getpid()}.jsonl"
        self._adopt_orphans()
        _end_torn_line(self.spool)
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="decision-log")  # one writer: order kept
        self._queued: list[tuple[str, str, str, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._client = None
        self._sha: str | None = None  # of the append script, loaded on connect
        self._spooled_lines = _count_lines(self.spool)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._replay_loop, name="decision-log-replay", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- streams
    @property
    def decisions_stream(self) -> str:
        return f"{self.prefix}:decisions"

    @property
    def outcomes_stream(self) -> str:
        return f"{self.prefix}:outcomes"

    def append_decision(self, record: dict) -> dict | None:
        """Log a decision; returns the record logged first under its decision id when this one is a
        duplicate (None otherwise, or when Redis is away)."""
        return self._write_batch([self._entry(self.decisions_stream, "decision", record)])[0]

    def append_outcome(self, record: dict) -> None:
        self._write_batch([self._entry(self.outcomes_stream, "outcome", record)])

    async def append_decision_async(self, record: dict) -> dict | None:
        """:meth:`append_decision`, group-committed with the other records in flight."""
        return await self._enqueue(self._entry(self.decisions_stream, "decision", record))

    async def append_outcome_async(self, record: dict) -> None:
        await self._enqueue(self._entry(self.outcomes_stream, "outcome", record))

    @property
    def backlog(self) -> int:
        """Records waiting in the spool."""
        return self._spooled_lines

    def stream_lengths(self) -> dict[str, int | None]:
        """XLEN of both streams (None when Redis is unreachable)."""
        client = self.redis_client()
        out: dict[str, int | None] = {}
        for stream in (self.decisions_stream, self.outcomes_stream):
            try:
                out[stream] = int(client.xlen(stream)) if client is not None else None
            except Exception:
                out[stream] = None
        return out

    def redis_up(self) -> bool:
        client = self.redis_client()
        try:
            return client is not None and bool(client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._writer.shutdown(wait=True)

    # ---------------------------------------------------------------- internals
    def _adopt_orphans(self) -> None:
        """Append the spools of dead processes to ours (before any record of ours)."""
        own = re.compile(rf"{re.escape(self.prefix)}-(\d+)\.jsonl(?:\.claimed-(\d+))?")
        for path in sorted(self.spool_dir.iterdir()):
            match = own.fullmatch(path.name)
            if path == self.spool or match is None:
                continue
            owner = int(match.group(2) or match.group(1))  # a claim belongs to its claimer
            if owner == os.getpid() or _alive(owner):
                continue
            claimed = self.spool_dir / f"{self.prefix}-{match.group(1)}.jsonl.claimed-{os.getpid()}"
            try:
                os.replace(path, claimed)  # atomic: only one process wins a file
            except FileNotFoundError:
                continue
            _end_torn_line(self.spool)
            _end_torn_line(claimed)
            with self.spool.open("a", encoding="utf-8") as out:
                out.write(claimed.read_text(encoding="utf-8"))
                out.flush()
                os.fsync(out.fileno())
            claimed.unlink()

    @staticmethod
    def _entry(stream: str, kind: str, record: dict) -> tuple[str, str, str]:
        # orjson: 3 % of json.dumps's time on a record (benchmarks/serve_encoding.py); floats in their
        # shortest repr, so values round-trip exactly. Inputs are validated finite; array_field refuses NaN.
        return stream, f"{kind}:{record['decision_id']}", orjson.dumps(record).decode()

    async def _enqueue(self, entry: tuple[str, str, str]) -> dict | None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((*entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued[:256], self._queued[256:]
            try:
                results = await loop.run_in_executor(self._writer, self._write_batch, [b[:3] for b in batch])
            except Exception as exc:  # the spool itself failed (disk full): those requests fail
                for *_, future in batch:
                    future.set_exception(exc)
                continue
            for (*_, future), result in zip(batch, results, strict=True):
                future.set_result(result)

    def _write_batch(self, entries: list[tuple[str, str, str]]) -> list[dict | None]:
        """Append entries in order (one pipeline), or spool them all (one fsync); for each, the first
        record of its key when it was a duplicate."""
        with self._lock:
            if self._spooled_lines == 0:
                landed = self._try_append_many(entries)
                if landed is not None:
                    return [None if first == "" else self._first_record(stream, first)
                            for (stream, _, _), first in zip(entries, landed, strict=True)]  # fmt: skip
            with self.spool.open("a", encoding="utf-8") as f:
                for stream, key, text in entries:
                    f.write(orjson.dumps({"stream": stream, "key": key, "record": text}).decode() + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._spooled_lines += len(entries)
            self.counters.spooled += len(entries)
            return [None] * len(entries)

    def _try_append_many(self, entries: list[tuple[str, str, str]]) -> list[str] | None:
        """One pipeline of the idempotent script; None when Redis failed (then every entry is spooled:
        those that did land are dropped at replay by their seen keys)."""
        from redis.exceptions import NoScriptError

        client = self.redis_client()
        if client is None:
            return None
        try:
            try:
                results = self._append_pipeline(client, entries)
            except NoScriptError:  # a restarted Redis forgot the script: load it, then every entry again
                self._sha = client.script_load(_APPEND)
                results = self._append_pipeline(client, entries)
        except Exception:
            self.counters.redis_errors += 1
            self._client = None  # reconnect on the next attempt
            return None
        out = []
        for added, entry_id in results:
            if int(added):
                self.counters.appended += 1
                out.append("")
            else:
                self.counters.duplicates += 1
                out.append(str(entry_id))
        return out

    def _append_pipeline(self, client, entries: list[tuple[str, str, str]]) -> list:
        # EVALSHA, not redis-py's Script in a pipeline: that checks SCRIPT EXISTS on every execute,
        # a second round trip per batch. A NOSCRIPT fails every entry alike (none ran): retry is whole.
        pipe = client.pipeline(transaction=False)
        for stream, key, text in entries:
            seen = f"{self.prefix}:seen:{key}"
            pipe.evalsha(self._sha, 2, stream, seen, self.maxlen, text, self.seen_ttl_s)
        return pipe.execute()

    def _first_record(self, stream: str, entry_id: str) -> dict | None:
        try:
            entries = self._client.xrange(stream, entry_id, entry_id)
        except Exception:
            return None
        return orjson.loads(entries[0][1]["record"]) if entries else None  # None: trimmed by MAXLEN

    def redis_client(self):
        """The connected Redis client (its append script loaded), or None while Redis is unreachable:
        a new connection is tried at each call until one succeeds."""
        if self._client is None and self.connect is not None:
            try:
                client = self.connect()
                self._sha = client.script_load(_APPEND)
                self._client = client
            except Exception:
                self._client = None
        return self._client

    def _replay_loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            if self._spooled_lines:
                self.replay()

    def replay(self) -> int:
        """Move the spool into the streams; returns the records replayed (0 if Redis is still away)."""
        with self._lock:
            if not self.spool.is_file() or self.redis_client() is None:
                return 0
            lines = self.spool.read_text(encoding="utf-8").splitlines()
            done = 0
            while done < len(lines):
                chunk, entries = lines[done : done + 256], []
                for line in chunk:
                    try:
                        entry = orjson.loads(line)
                    except ValueError:  # torn by a crash mid-write: its request was never answered
                        self.counters.torn_lines += 1
                        entry = None
                    entries.append(entry)
                good = [(e["stream"], e["key"], e["record"]) for e in entries if e is not None]
                if good and self._try_append_many(good) is None:
                    break  # Redis went away again: the rest waits
                done += len(chunk)
            if done:
                rest = lines[done:]
                atomic_write_text(self.spool, "".join(line + "\n" for line in rest))
                self._spooled_lines = len(rest)
                self.counters.replayed += done
            return done


class LogTail:
    """The records appended to a log's streams since the last :meth:`read`: what the monitor's
    windows are made of (:mod:`rl_lib.serving.monitor`), the same for every process reading one Redis.

    The first read starts from the newest ``limit`` records of each stream; a later one takes at
    most the newest ``limit`` added since (a window needs no more). Outcomes are read before
    decisions: an outcome is posted after its decision was answered, hence logged, so every outcome
    read has its decision in the same read or an earlier one (unless that decision was spooled).
    """

    def __init__(self, log: DecisionLog, limit: int = 20_000) -> None:
        self.log, self.limit = log, limit
        self._last: dict[str, str | None] = {log.decisions_stream: None, log.outcomes_stream: None}
        self._lock = threading.Lock()  # concurrent refreshes must not read a record twice

    def read(self) -> tuple[list[dict | None], list[dict | None]]:
        """(decisions, outcomes), oldest first (None: an entry that is no record); nothing when Redis
        is unreachable."""
        with self._lock:
            client = self.log.redis_client()
            if client is None:
                return [], []
            try:
                outcomes = self._new(client, self.log.outcomes_stream)
                decisions = self._new(client, self.log.decisions_stream)
            except Exception:  # Redis went away: the next refresh reads on from the same ids
                return [], []
            log = self.log
            for stream, entries in (log.outcomes_stream, outcomes), (log.decisions_stream, decisions):
                if entries:  # both read: only now move on (a half read would lose records)
                    self._last[stream] = entries[0][0]
            return _records(decisions), _records(outcomes)

    def _new(self, client, stream: str) -> list:
        last = self._last[stream]
        return client.xrevrange(stream, "+", "-" if last is None else f"({last}", count=self.limit)


def _records(entries: list) -> list[dict | None]:
    """The entries' records, oldest first; None for an entry that is not a JSON object (whoever can
    write to Redis must not be able to stop the dashboard: the monitor counts and skips it)."""
    out: list[dict | None] = []
    for _, fields in reversed(entries):
        try:
            record = orjson.loads(fields["record"])
        except (KeyError, orjson.JSONDecodeError):
            record = None
        out.append(record if isinstance(record, dict) else None)
    return out


def _end_torn_line(path: Path) -> None:
    """End a last line torn by a crash, so the next record starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def redis_connector(
    url: str, username: str | None = None, password: str | None = None
) -> Callable[[], object]:
    """A function opening a redis-py client for ``url`` (``redis://``, ``rediss://``, ``unix://``),
    with short timeouts so a dead Redis costs a decision milliseconds, not seconds."""

    def connect():
        import redis

        client = redis.Redis.from_url(
            url, username=username, password=password, socket_timeout=0.5, socket_connect_timeout=0.5,
            decode_responses=True,
        )  # fmt: skip
        client.ping()
        return client

    return connect
