"""The experience store: transitions as Parquet files, one folder per service day.

Layout: ``{root}/experience/day=YYYY-MM-DD/part-{sha256}.parquet``, columns
:data:`~rl_lib.feedback.transitions.COLUMNS` typed by :data:`SCHEMA` (observations and masks as
Parquet lists). No pickle: a part is plain Parquet that any reader can open.

**Durable and atomic.** A part is serialised in memory, written to a temporary name in its day's
folder, fsynced, renamed and its folder fsynced (:func:`rl_lib.io.atomic_write_bytes`; a new day's
folder is fsynced into its parent too): once :meth:`ExperienceStore.write` returns, its rows survive a
power cut, and a reader never sees half a part. Temporaries a killed writer left behind are deleted
at the next write of their day.

**Deduplicated on decision_id.** A transition whose decision id is already in its day's partition
(or earlier in the same batch) is dropped and counted, so a re-delivered batch adds nothing. A
part's name is the sha256 of its bytes, so writing the same rows again names the same file.

**One writer at a time** (one collector): the check for existing ids and the write are not atomic
between two concurrent writers.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rl_lib.feedback.transitions import COLUMNS, DayHistory, Transition
from rl_lib.io import atomic_write_bytes, fsync_dir, remove_stale_temporaries

_FLOATS, _BOOLS = pa.list_(pa.float32()), pa.list_(pa.bool_())
_TYPES = {
    "decision_id": pa.string(), "service_day": pa.string(), "region": pa.string(), "now_min": pa.float64(),
    "time_unix": pa.float64(), "model_version": pa.string(), "arm": pa.string(), "policy": pa.string(),
    "n_vehicles": pa.int32(), "observation": _FLOATS, "mask": _BOOLS, "action": pa.int32(),
    "reward": pa.float64(), "next_observation": _FLOATS, "next_mask": _BOOLS, "done": pa.bool_(),
    "elapsed_min": pa.float64(), "outcome_status": pa.string(), "schema_version": pa.int32(),
}  # fmt: skip
#: The Arrow schema of a part; only ``model_version`` may be null (a control heuristic decided).
SCHEMA = pa.schema([pa.field(c, _TYPES[c], nullable=c == "model_version") for c in COLUMNS])
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Row order of :meth:`ExperienceStore.read`: each (day, region)'s decisions as they were taken.
ORDER = ["service_day", "region", "now_min", "time_unix"]


@dataclass(frozen=True)
class WriteResult:
    written: int  # new rows
    duplicates: int  # rows dropped: their decision id was already stored (or earlier in the batch)
    parts: tuple[Path, ...]  # the files written


class ExperienceStore:
    """Transitions on disk (module docstring).

    :param root: the store's root folder (created on the first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.folder = self.root / "experience"

    # ----------------------------------------------------------------------------- writing
    def write(self, rows: Iterable[Transition | Mapping[str, Any]]) -> WriteResult:
        """Add ``rows`` (transitions, or mappings with every column), each day to its partition,
        dropping decision ids already stored; durable when it returns."""
        by_day: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            row = row.row() if isinstance(row, Transition) else row
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise ValueError(f"a transition row lacks {', '.join(missing)}")
            by_day.setdefault(_checked_day(row["service_day"]), []).append(row)
        written, duplicates, parts = 0, 0, []
        for day, day_rows in sorted(by_day.items()):
            folder = self._day_folder(day)
            seen = set(self._column(day, "decision_id"))
            fresh = []
            for row in day_rows:
                if row["decision_id"] in seen:
                    duplicates += 1
                else:
                    seen.add(row["decision_id"])
                    fresh.append(row)
            if not fresh:
                continue
            data = _parquet_bytes(_table(fresh))
            self._make_folder(folder)
            remove_stale_temporaries(folder)
            path = folder / f"part-{hashlib.sha256(data).hexdigest()[:32]}.parquet"
            atomic_write_bytes(path, data)
            written += len(fresh)
            parts.append(path)
        return WriteResult(written, duplicates, tuple(parts))

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` (and the store's folders) durably: each new entry fsynced into its parent."""
        missing = [p for p in (self.root, self.folder, folder) if not p.is_dir()]
        for path in missing:
            path.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent)

    # ----------------------------------------------------------------------------- reading
    def days(self) -> list[str]:
        """The service days holding at least one part, in date order."""
        if not self.folder.is_dir():
            return []
        found = (p.name.removeprefix("day=") for p in self.folder.glob("day=*") if p.is_dir())
        return sorted(d for d in found if _DAY.match(d) and self._parts(d))

    def read(
        self, days: Iterable[str] | None = None, start: str | None = None, end: str | None = None
    ) -> pd.DataFrame:
        """The transitions of ``days`` and / or the inclusive range ``start`` .. ``end`` (all days when
        none is given), in :data:`ORDER`.

        Columns as :data:`SCHEMA`; each ``observation`` / ``next_observation`` cell is a float32
        numpy array and each ``mask`` / ``next_mask`` cell a bool one; a null ``model_version`` is
        missing (``pd.isna``).
        """
        parts = [p for day in self._select(days, start, end) for p in self._parts(day)]
        if not parts:
            return SCHEMA.empty_table().to_pandas()
        table = pa.concat_tables([pq.ParquetFile(p).read().cast(SCHEMA) for p in parts])
        frame = table.to_pandas()
        return frame.sort_values(ORDER, kind="mergesort").reset_index(drop=True)

    def count(
        self, days: Iterable[str] | None = None, start: str | None = None, end: str | None = None
    ) -> int:
        """Rows of the selected days (as :meth:`read` selects them), from the parts' footers."""
        return sum(
            pq.ParquetFile(p).metadata.num_rows
            for d in self._select(days, start, end)
            for p in self._parts(d)
        )

    def history(self, days: Iterable[str]) -> dict[tuple[str, str], DayHistory]:
        """What is stored of each (service_day, region) of ``days`` (:class:`DayHistory`: what the
        join needs to tell a re-delivery from a decision that arrived out of order)."""
        out: dict[tuple[str, str], DayHistory] = {}
        columns = ["decision_id", "region", "now_min", "elapsed_min", "done"]
        for day in sorted({_checked_day(d) for d in days}):
            for part in self._parts(day):
                t = pq.ParquetFile(part).read(columns=columns).to_pydict()
                for did, region, now, elapsed, done in zip(*(t[c] for c in columns), strict=True):
                    covers = math.inf if done else now + elapsed
                    out.setdefault((day, region), DayHistory()).covered[did] = covers
        return out

    # ----------------------------------------------------------------------------- internals
    def _day_folder(self, day: str) -> Path:
        return self.folder / f"day={day}"

    def _parts(self, day: str) -> list[Path]:
        return sorted(self._day_folder(day).glob("part-*.parquet"))

    def _column(self, day: str, column: str) -> list:
        return [
            v for p in self._parts(day) for v in pq.ParquetFile(p).read(columns=[column])[column].to_pylist()
        ]

    def _select(self, days: Iterable[str] | None, start: str | None, end: str | None) -> list[str]:
        chosen = self.days()
        if days is not None:
            wanted = {_checked_day(d) for d in days}
            chosen = [d for d in chosen if d in wanted]
        if start is not None:
            chosen = [d for d in chosen if d >= _checked_day(start)]
        if end is not None:
            chosen = [d for d in chosen if d <= _checked_day(end)]
        return chosen


def _checked_day(day: Any) -> str:
    if not isinstance(day, str) or not _DAY.match(day):
        raise ValueError(f"a service day is a date YYYY-MM-DD, got {day!r}")
    return day


def _table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        values = [row[field.name] for row in rows]
        if pa.types.is_list(field.type):
            dtype = field.type.value_type.to_pandas_dtype()
            values = [np.asarray(v, dtype=dtype) for v in values]
        array = pa.array(values, type=field.type)
        if not field.nullable and array.null_count:
            raise ValueError(f"a transition row has no {field.name}")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
