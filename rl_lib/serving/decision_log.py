"""The decision and outcome log: Redis Streams, with a local spool while Redis is unreachable.

Every record is versioned JSON (``schema: rl_lib.decision/1`` or ``rl_lib.outcome/1``; arrays carry
their dtype and shape), appended with ``XADD ... MAXLEN ~`` to ``{prefix}:decisions`` or
``{prefix}:outcomes`` under the field ``record``. Never pickle: whoever can write to Redis must not
be able to run code in the trainer that reads it.

**Exactly once.** An append is a Lua script that sets ``{prefix}:seen:{key}`` (NX, with a TTL) and
adds the entry only if that key was new, atomically: a record replayed from the spool, or a client
retrying a decision id, is never in the stream twice.

**Redis away.** When an append fails, the record goes to the spool (JSON lines, flushed and
fsynced before the request is answered) and so do all later records until the spool is empty
again, which keeps the order. A background thread retries every ``retry_s``; it replays the spool
through the same idempotent script, then truncates it. A crash mid-replay replays again: the seen
keys drop what already landed. Counters (spooled, replayed, dropped duplicates) feed the metrics.

**Several processes** (uvicorn workers, replicas on one host) each spool to their own file,
``{spool_dir}/{prefix}-{pid}.jsonl``; a process that starts adopts the spool files of processes that
are gone (claimed by an atomic rename, so two never adopt the same file) and replays them first.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DECISION_SCHEMA = "rl_lib.decision/1"
OUTCOME_SCHEMA = "rl_lib.outcome/1"

# KEYS[1] stream, KEYS[2] seen-key; ARGV[1] approximate maxlen, ARGV[2] record, ARGV[3] seen TTL (s).
_APPEND = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[3])) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[1]), '*', 'record', ARGV[2])
end
return false
"""


def array_field(values: np.ndarray) -> dict:
    """An array as explicit JSON: dtype, shape, values (float32 values round-trip exactly)."""
    values = np.asarray(values)
    return {"dtype": str(values.dtype), "shape": list(values.shape), "data": values.ravel().tolist()}


def read_array(data: dict) -> np.ndarray:
    """The inverse of :func:`array_field`; raises ValueError on a malformed field."""
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "data"}:
        raise ValueError("an array field needs exactly dtype, shape and data")
    if data["dtype"] not in ("float32", "float64", "bool", "int64"):
        raise ValueError(f"unsupported dtype {data['dtype']!r}")
    return np.asarray(data["data"], dtype=data["dtype"]).reshape(data["shape"])


@dataclass
class LogCounters:
    appended: int = 0
    spooled: int = 0
    replayed: int = 0
    duplicates: int = 0
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
        self._lock = threading.Lock()
        self._client = None
        self._script = None
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

    def append_decision(self, record: dict) -> None:
        self._append(self.decisions_stream, f"decision:{record['decision_id']}", record)

    def append_outcome(self, record: dict) -> None:
        self._append(self.outcomes_stream, f"outcome:{record['decision_id']}", record)

    @property
    def backlog(self) -> int:
        """Records waiting in the spool."""
        return self._spooled_lines

    def stream_lengths(self) -> dict[str, int | None]:
        """XLEN of both streams (None when Redis is unreachable)."""
        client = self._redis()
        out: dict[str, int | None] = {}
        for stream in (self.decisions_stream, self.outcomes_stream):
            try:
                out[stream] = int(client.xlen(stream)) if client is not None else None
            except Exception:
                out[stream] = None
        return out

    def redis_up(self) -> bool:
        client = self._redis()
        try:
            return client is not None and bool(client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # ---------------------------------------------------------------- internals
    def _adopt_orphans(self) -> None:
        """Append the spools of dead processes to ours (before any record of ours)."""
        for path in sorted(self.spool_dir.glob(f"{self.prefix}-*.jsonl")):
            pid = path.stem.rsplit("-", 1)[-1]
            if path == self.spool or not pid.isdigit() or _alive(int(pid)):
                continue
            claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}")
            try:
                os.replace(path, claimed)  # atomic: only one process wins a file
            except FileNotFoundError:
                continue
            with self.spool.open("a", encoding="utf-8") as out:
                out.write(claimed.read_text(encoding="utf-8"))
                out.flush()
                os.fsync(out.fileno())
            claimed.unlink()

    def _append(self, stream: str, key: str, record: dict) -> None:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        with self._lock:
            if self._spooled_lines == 0 and self._try_append(stream, key, text):
                return
            with self.spool.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"stream": stream, "key": key, "record": text}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._spooled_lines += 1
            self.counters.spooled += 1

    def _try_append(self, stream: str, key: str, text: str) -> bool:
        client = self._redis()
        if client is None:
            return False
        try:
            added = self._script(keys=[stream, f"{self.prefix}:seen:{key}"],
                                 args=[self.maxlen, text, self.seen_ttl_s])  # fmt: skip
        except Exception:
            self.counters.redis_errors += 1
            self._client = None  # reconnect on the next attempt
            return False
        if added is None:
            self.counters.duplicates += 1
        else:
            self.counters.appended += 1
        return True

    def _redis(self):
        if self._client is None and self.connect is not None:
            try:
                client = self.connect()
                self._script = client.register_script(_APPEND)
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
            if not self.spool.is_file() or self._redis() is None:
                return 0
            lines = self.spool.read_text(encoding="utf-8").splitlines()
            done = 0
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line torn by a crash mid-write: its request was never answered
                    done += 1
                    continue
                if not self._try_append(entry["stream"], entry["key"], entry["record"]):
                    break
                done += 1
            if done:
                rest = lines[done:]
                tmp = self.spool.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in rest), encoding="utf-8")
                os.replace(tmp, self.spool)
                self._spooled_lines = len(rest)
                self.counters.replayed += done
            return done


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
