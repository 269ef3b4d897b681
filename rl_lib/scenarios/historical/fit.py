"""Fit the synthetic generator's demand and geography to a bookings table."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.cluster.vq import kmeans2

from rl_lib.config import from_dict, to_dict
from rl_lib.errors import UserError
from rl_lib.scenarios.config import Place, ScenarioConfig
from rl_lib.scenarios.historical.replay import booking_minutes
from rl_lib.scenarios.historical.schema import COORDS, MOBILITIES, PRIORITIES, WINDOW_RANGE
from rl_lib.scenarios.historical.sources import atomic_write


def fit_scenario(
    df: pd.DataFrame,
    base: ScenarioConfig,
    *,
    n_towns: int | None = None,
    max_facilities: int = 8,
    seed: int = 0,
) -> ScenarioConfig:
    """Fit the synthetic generator's demand and geography to a bookings table.

    Fleet, rules, service hours, travel parameters and depot stay those of ``base``; only
    bookings inside the service hours count (as in :func:`days_from_bookings`).

    - ``advance_per_day`` / ``same_day_per_day``: mean bookings per service date, divided by
      the share the fitted generator keeps inside the service hours (it drops the others),
      so regenerated days hold as many bookings as the table's.
    - ``pickup_hour_profile``: hours of the advance bookings' requested pickups;
      ``request_hour_profile``: hours of the same-day bookings' ``created_at``.
    - ``same_day_lead_min``: the uniform range whose 5th and 95th percentiles are those of
      the same-day leads (requested pickup - created_at).
    - ``windows_min`` / ``window_probs``: windows rounded to whole minutes and their shares;
      ``mobility_mix``, ``priority_mix``: shares.
    - Each trip's facility end is the end whose place (10 m grid) is the more frequent trip
      end in the table (a tie: the dropoff); ``outbound_share`` is the share of trips ending
      at their facility end. Facilities are the distinct facility places weighted by trips,
      or, beyond ``max_facilities`` of them, that many k-means clusters.
    - Towns: ``n_towns`` k-means clusters of the home ends; weight = cluster size, ``sigma_km``
      = per-axis spread around the centre. ``home_uniform_share`` is 0: the towns already
      cover every home. ``region_km`` grows to hold every point.

    A profile or lead with no data (e.g. no same-day booking) keeps the base's value.

    :param df: bookings as returned by :func:`read_bookings`.
    :param base: the scenario to start from.
    :param n_towns: town clusters; default: as many as ``base`` has.
    :param max_facilities: most facilities kept as distinct places before clustering.
    :param seed: k-means seed (the fit is deterministic).
    :return: a validated scenario named ``<base name>-fitted``.
    """
    t = booking_minutes(df, base)
    kept = df[t.in_hours]
    if kept.empty:
        raise UserError("no booking has a requested pickup within the service hours: nothing to fit")
    n_dates = df["service_date"].nunique()
    requested, known, advance = t.requested[t.in_hours], t.known[t.in_hours], t.advance[t.in_hours]
    d = base.demand

    pickup_profile = _hour_profile(requested[advance]) or d.pickup_hour_profile
    request_profile = _hour_profile(known[~advance]) or d.request_hour_profile
    leads = requested[~advance] - known[~advance]
    if len(leads):
        p5, p95 = np.percentile(leads, [5.0, 95.0])
        pad = (p95 - p5) * 0.05 / 0.90  # uniform: [p5, p95] holds the middle 90 %
        lead = (round(max(0.0, p5 - pad), 1), round(p95 + pad, 1))
    else:
        lead = d.same_day_lead_min
    start, end = base.day_start_min, base.day_end_min
    keep_adv = _kept_share(pickup_profile, (0.0, 0.0), start, end)
    keep_sd = _kept_share(request_profile, lead, start, end)

    windows = kept["window_min"].round().clip(*WINDOW_RANGE).value_counts(normalize=True).sort_index()
    mobility = kept["mobility"].value_counts(normalize=True).reindex(MOBILITIES, fill_value=0.0)
    priority = kept["priority"].value_counts(normalize=True).reindex(PRIORITIES, fill_value=0.0)
    pick = kept[list(COORDS[:2])].to_numpy(float)
    drop = kept[list(COORDS[2:])].to_numpy(float)
    outbound, facilities, towns = _fit_places(
        pick, drop, n_towns or len(base.geography.towns), max_facilities, seed
    )

    demand = replace(
        d,
        advance_per_day=_r(advance.sum() / n_dates / keep_adv, 2),
        same_day_per_day=_r((~advance).sum() / n_dates / keep_sd, 2),
        pickup_hour_profile=pickup_profile,
        request_hour_profile=request_profile,
        same_day_lead_min=lead,
        windows_min=tuple(float(w) for w in windows.index),
        window_probs=tuple(_r(p) for p in windows),
        mobility_mix=tuple(_r(p) for p in mobility),
        priority_mix=tuple(_r(p) for p in priority),
        outbound_share=_r(outbound),
    )
    extent = float(np.max(np.concatenate([pick, drop]))) if len(pick) else 0.0
    geography = replace(
        base.geography,
        region_km=float(max(base.geography.region_km, math.ceil(extent))),
        towns=towns,
        home_uniform_share=0.0,
        facilities=facilities,
        travel_matrix=None,
        facility_nodes=(),
    )
    fitted = replace(base, name=f"{base.name}-fitted", demand=demand, geography=geography)
    # Through the YAML-facing validation: the result saves and loads back unchanged.
    return from_dict(ScenarioConfig, to_dict(fitted), source="fitted scenario")


def _r(x: float, digits: int = 4) -> float:
    """Plain rounded float: readable YAML, and no numpy scalars in the config."""
    return round(float(x), digits)


def _hour_profile(minutes: np.ndarray) -> tuple[float, ...] | None:
    """Share of the times in each hour 0..23, or None without data."""
    if not len(minutes):
        return None
    counts = np.bincount((minutes // 60).astype(np.int64).clip(0, 23), minlength=24)
    return tuple(_r(c) for c in counts / counts.sum())


def _kept_share(profile: tuple[float, ...], lead: tuple[float, float], start: float, end: float) -> float:
    """Share of the generator's bookings with pickup in [start, end]: arrival by ``profile``
    (uniform within the hour), pickup a uniform ``lead`` later (integrated on a fine grid)."""
    weight = np.repeat(np.asarray(profile, float), 60)
    weight /= weight.sum()
    arrival = np.arange(1440) + 0.5
    offsets = np.linspace(lead[0], lead[1], 101)
    pickup = arrival[:, None] + offsets[None, :]
    share = float(weight @ ((pickup >= start) & (pickup <= end)).mean(axis=1))
    return max(share, 1e-9)


def _fit_places(
    pick: np.ndarray, drop: np.ndarray, n_towns: int, max_facilities: int, seed: int
) -> tuple[float, tuple[Place, ...], tuple[Place, ...]]:
    """Outbound share, facilities and towns from the trips' pickup and dropoff points."""
    ends = np.concatenate([pick, drop])
    # Places on a 10 m grid: the same address geocoded twice is one place.
    _, place, freq = np.unique(np.round(ends, 2), axis=0, return_inverse=True, return_counts=True)
    place = place.reshape(-1)
    n = len(pick)
    outbound = freq[place[n:]] >= freq[place[:n]]
    facility_xy = np.where(outbound[:, None], drop, pick)
    home_xy = np.where(outbound[:, None], pick, drop)

    points, counts = np.unique(np.round(facility_xy, 2), axis=0, return_counts=True)
    if len(points) > max_facilities:
        points, counts = _clusters(facility_xy, max_facilities, seed)[:2]
    facilities = tuple(Place(_r(x, 3), _r(y, 3), _r(c / n)) for (x, y), c in zip(points, counts, strict=True))
    centres, sizes, sigma = _clusters(home_xy, n_towns, seed)
    towns = tuple(
        Place(_r(x, 3), _r(y, 3), _r(c / n), _r(s, 3))
        for (x, y), c, s in zip(centres, sizes, sigma, strict=True)
    )
    return float(outbound.mean()), facilities, towns


def _clusters(xy: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means (k-means++ start, fixed seed): centres, sizes and per-axis spread of the non-empty clusters."""
    k = min(k, len(np.unique(xy, axis=0)))
    with warnings.catch_warnings():
        # Empty clusters are dropped below; kmeans2's advice to re-run does not apply.
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        _, label = kmeans2(xy, k, minit="++", rng=np.random.default_rng(seed))
    sizes = np.bincount(label, minlength=k)
    used = np.flatnonzero(sizes)
    centres = np.array([xy[label == c].mean(axis=0) for c in used])
    spread = np.array(
        [np.sqrt(((xy[label == c] - centres[i]) ** 2).sum(axis=1).mean() / 2) for i, c in enumerate(used)]
    )
    return centres, sizes[used], spread


def save_scenario(cfg: ScenarioConfig, path: str | Path) -> None:
    """Write ``cfg`` as an experiment YAML (``scenario:`` section), atomically.

    Every command takes it as ``--config``; ``load_experiment(path).scenario == cfg``.
    """
    text = yaml.safe_dump({"scenario": to_dict(cfg)}, sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
