"""Read and write a bookings table: CSV, Parquet or a SQL table (any SQLAlchemy URL), atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from rl_lib.errors import UserError
from rl_lib.io import fsync_dir
from rl_lib.scenarios.historical.schema import COLUMNS, ON_ERROR, ImportReport
from rl_lib.scenarios.historical.validation import parse_dates, validate

log = logging.getLogger("rl_lib.scenarios.historical")

_URL_HINT = "a .csv or .parquet path, or a SQLAlchemy URL such as sqlite:///bookings.db"


def read_bookings(
    source: str, *, table: str = "bookings", last_days: int | None = None, on_error: str = "raise"
) -> tuple[pd.DataFrame, ImportReport]:
    """Read and validate a bookings table (its schema: :mod:`rl_lib.scenarios.historical.schema`).

    :param source: a ``.csv`` or ``.parquet`` path, or a SQLAlchemy URL (``sqlite:///bookings.db``).
    :param table: for a URL, the table to read, or an SQL ``SELECT`` query.
    :param last_days: keep only the last N service dates present in the table (rows of older
        dates are left out, counted, and not validated).
    :param on_error: ``"raise"``: the first bad row is a :class:`UserError` naming its row and
        reason; ``"skip"``: bad rows are dropped and counted by reason (and a warning logged).
    :return: the valid rows (index: row number in the source; typed columns: datetimes for
        ``service_date`` (midnight), ``created_at`` and ``requested_pickup``, floats for
        coordinates and windows, lower-case text for mobility and priority), and the report.
    """
    if on_error not in ON_ERROR:
        raise UserError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
    if last_days is not None and last_days < 1:
        raise UserError(f"last_days={last_days}: expected a positive number of days")
    raw, label, is_csv = _read_source(source, table)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(
            f"{label}: missing column(s) {', '.join(missing)}; a bookings table needs {', '.join(COLUMNS)}"
        )
    if raw.empty:
        raise UserError(f"{label}: the table holds no rows")
    raw = raw.loc[:, list(COLUMNS)].reset_index(drop=True)
    raw.index = pd.RangeIndex(1, len(raw) + 1, name="row")
    rows_read = len(raw)

    date, date_ok = parse_dates(raw["service_date"])
    outside = pd.Series(False, index=raw.index)
    if last_days is not None:
        keep_dates = date[date_ok].drop_duplicates().nlargest(last_days)
        outside = date_ok & ~date.isin(keep_dates)
    raw, date, date_ok = raw[~outside], date[~outside], date_ok[~outside]

    df, reason, message = validate(raw, date, date_ok)
    bad = reason.notna()
    if bad.any() and on_error == "raise":
        row = int(bad.idxmax())
        where = f"row {row} (line {row + 1})" if is_csv else f"row {row}"
        raise UserError(
            f"{label} {where}: {message[row]}; {int(bad.sum())} bad row(s) in all: fix them, "
            "or skip bad rows (on_error='skip', CLI --on-error skip)"
        )
    skipped = {str(k): int(v) for k, v in reason[bad].value_counts().items()}
    df = df[~bad]
    if df.empty:
        raise UserError(f"{label}: no valid bookings left after skipping {int(bad.sum())} bad rows")
    report = ImportReport(
        source=label,
        rows_read=rows_read,
        rows_outside_last_days=int(outside.sum()),
        skipped=skipped,
        rows_kept=len(df),
        dates=int(df["service_date"].nunique()),
    )
    if skipped:
        log.warning("%s", report.summary())
    return df, report


def _read_source(source: str, table: str) -> tuple[pd.DataFrame, str, bool]:
    """The raw table, a label for messages and whether it came from a CSV."""
    if "://" in source:
        url = _parse_url(source)
        label = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # Connecting would create an empty database file: say what is wrong instead.
            if not Path(url.database).is_file():
                raise UserError(f"{label}: no such database file {url.database}")
        try:
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    if table.lstrip().lower().startswith("select"):
                        frame = pd.read_sql_query(sa.text(table), conn)
                    elif not sa.inspect(conn).has_table(table):
                        raise UserError(f"{label}: no table {table!r}; name it with --table (table=...)")
                    else:
                        frame = pd.read_sql_table(table, conn)
            finally:
                engine.dispose()
        except (sa.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise UserError(f"{label}: cannot read {table!r} ({_first_line(exc)})") from None
        return frame, label, False

    path = Path(source)
    kind = _file_kind(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if kind == "csv":
            # Everything as text: the validation parses each column and reports what it cannot.
            return pd.read_csv(path, dtype=str), str(path), True
        return pd.read_parquet(path), str(path), False
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read as {kind} ({_first_line(exc)})") from None


def _parse_url(source: str) -> sa.engine.URL:
    try:
        return sa.engine.make_url(source)
    except sa.exc.ArgumentError:
        raise UserError(f"{source!r}: not a valid SQLAlchemy URL; give {_URL_HINT}") from None


def _file_kind(path: Path) -> str:
    kind = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; give {_URL_HINT}")
    return kind


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def write_bookings(df: pd.DataFrame, dest: str) -> None:
    """Write a validated bookings frame back in the file schema (CSV, Parquet or SQL URL), atomically."""
    check_destination(dest)
    table = df.loc[:, list(COLUMNS)].reset_index(drop=True)
    table["service_date"] = table["service_date"].dt.strftime("%Y-%m-%d")
    write_table(table, dest)


def check_destination(dest: str) -> None:
    """Fail before any work on a destination that cannot be written."""
    if "://" in dest:
        _parse_url(dest)
        return
    _file_kind(Path(dest))
    if not Path(dest).parent.is_dir():
        raise UserError(f"{dest}: folder {Path(dest).parent} does not exist; create it first")


def write_table(table: pd.DataFrame, dest: str) -> None:
    """CSV / Parquet via a temporary file; SQL in one transaction (a new SQLite file via a temporary one)."""
    if "://" not in dest:
        path = Path(dest)
        if _file_kind(path) == "csv":
            atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f"))
        else:
            atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
        return
    url = _parse_url(dest)
    label = url.render_as_string(hide_password=True)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if database not in (None, "", ":memory:") and not Path(database).exists():
        atomic_write(Path(database), lambda tmp: _to_sql(table, url.set(database=str(tmp)), label))
    else:
        _to_sql(table, url, label)


def _to_sql(table: pd.DataFrame, url: sa.engine.URL, label: str) -> None:
    try:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                table.to_sql("bookings", conn, if_exists="replace", index=False)
        finally:
            engine.dispose()
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise UserError(f"{label}: cannot write table 'bookings' ({_first_line(exc)})") from None


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write ({exc.strerror}); check the folder exists and is writable"
        ) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:  # durable before it becomes visible, like rl_lib.io's writers
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
