"""Crash-safe file writing: temporary name, fsync, rename, fsync of the folder.

A reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file, whatever kills the process in between.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of written files: what open() would give (mkstemp alone gives 0600).
FILE_MODE = 0o666 & ~_current_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(frame, path: Path) -> None:
    """A pandas DataFrame as CSV, atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def mismatched_file(folder: Path, entries: dict[str, tuple[int, str]]) -> str | None:
    """The first of ``entries`` (file name -> (bytes, sha256)) that is missing or differs under
    ``folder``, as a reason; None when they all match (a manifest's check)."""
    for name, (size, digest) in sorted(entries.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if sha256_file(path) != digest:
            return f"{name} does not match its sha256"
    return None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.*.tmp`` files a killed writer left behind; returns what was removed."""
    stale = list(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def folder_bytes(folder: Path) -> int:
    """Bytes used by the regular files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str | int | float) -> int:
    """``"20GB"``, ``"500 MiB"``, ``"1.5G"`` or a number of bytes -> bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a size must be positive, got {text}")
        return int(text)
    raw = str(text).strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 20GB, 500MB or 1.5GiB") from None
    if unit not in _UNITS or value <= 0:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 20GB, 500MB or 1.5GiB")
    return int(value * _UNITS[unit])
