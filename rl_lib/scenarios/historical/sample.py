"""A sample bookings table from the synthetic generator (``rl-lib data sample``), in the schema."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from rl_lib.errors import UserError
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.historical.schema import MOBILITIES, PRIORITIES
from rl_lib.scenarios.historical.sources import check_destination, write_table
from rl_lib.scenarios.synthetic import SyntheticScenario

# The sample's last service date: fixed, so `data sample` writes the same table everywhere.
SAMPLE_END = "2026-06-30"


def write_sample(path: str, days: int = 90, seed: int = 7, scenario: ScenarioConfig | None = None) -> int:
    """Write a sample bookings table from the synthetic generator, in the schema (:mod:`.schema`).

    The sample's service dates are the ``days`` dates ending on 2026-06-30; the bookings of
    date D are ``SyntheticScenario(replace(scenario, seed=seed)).make_day(D.toordinal())``
    (so a date holds the same bookings whatever ``days``), coordinates from ``day.coords_km``.
    Same-day bookings are created at their ``known_at`` minute, advance bookings at a
    seeded random time between 12:00 and 18:00 the day before.

    :param path: ``.csv`` or ``.parquet`` path, or SQLAlchemy URL (table ``bookings``,
        replaced if present). Written atomically: on any error nothing is left behind.
    :param days: number of service dates.
    :param seed: seed of the scenario and of the advance bookings' creation times.
    :param scenario: a planar scenario; default the built-in default scenario.
    :return: rows written.
    """
    if days < 1:
        raise UserError(f"days={days}: expected a positive number of days")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed: expected a non-negative integer, got {seed!r}")
    cfg = replace(scenario or ScenarioConfig(), seed=seed)
    if cfg.geography.travel_matrix is not None:
        raise UserError("a sample needs planar coordinates: use a scenario without geography.travel_matrix")
    check_destination(path)
    table = sample_table(cfg, days)
    write_table(table, path)
    return len(table)


def sample_table(cfg: ScenarioConfig, days: int) -> pd.DataFrame:
    """The sample of :func:`write_sample` as a frame in the file schema (``cfg.seed`` seeds it)."""
    gen = SyntheticScenario(cfg)
    frames = []
    for date in pd.date_range(end=SAMPLE_END, periods=days, freq="D"):
        day = gen.make_day(date.toordinal())
        b = day.bookings
        n = len(b)
        # Its own stream (tag 1): the generator's (seed, day_id) stream must not be reused.
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, date.toordinal(), 1]))
        created = np.where(b.advance, np.round(rng.uniform(-720.0, -360.0, n) * 60.0) / 60.0, b.known_at)
        pickup_xy, dropoff_xy = day.coords_km[b.pickup_node], day.coords_km[b.dropoff_node]
        frames.append(
            pd.DataFrame(
                {
                    "booking_id": [f"{date:%Y%m%d}-{k:04d}" for k in range(1, n + 1)],
                    "service_date": f"{date:%Y-%m-%d}",
                    "created_at": _at(date, created),
                    "requested_pickup": _at(date, b.requested_pickup),
                    "pickup_x_km": pickup_xy[:, 0],
                    "pickup_y_km": pickup_xy[:, 1],
                    "dropoff_x_km": dropoff_xy[:, 0],
                    "dropoff_y_km": dropoff_xy[:, 1],
                    "mobility": np.asarray(MOBILITIES)[b.mobility],
                    "priority": np.asarray(PRIORITIES)[b.priority],
                    "window_min": b.window_min,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _at(date: pd.Timestamp, minutes: np.ndarray) -> pd.Series:
    """Datetimes ``minutes`` after midnight of ``date``, to the microsecond."""
    return pd.Series(date + pd.to_timedelta(np.round(minutes * 60e6).astype(np.int64), unit="us"))
