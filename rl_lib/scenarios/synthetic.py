"""Synthetic day generator, the built-in default scenario.

``SyntheticScenario(config).day(split, i)`` is a pure function of (config.seed, split, i):
the same day comes back on every machine and in every process, whatever else was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from rl_lib.envs.day import Bookings, Day, Fleet, VehicleType
from rl_lib.envs.travel import TravelModel
from rl_lib.errors import ConfigError
from rl_lib.scenarios.config import SPLIT_OFFSETS, ScenarioConfig

SPLITS = tuple(SPLIT_OFFSETS)


class SyntheticScenario:
    """Seeded generator of dispatch days with disjoint train / validation / test splits.

    :param config: the scenario; ``ScenarioConfig()`` is the built-in default.
    """

    def __init__(self, config: ScenarioConfig | None = None) -> None:
        self.config = config or ScenarioConfig()

    # ------------------------------------------------------------------ splits
    def day_ids(self, split: str) -> range:
        """Global day ids of a split (disjoint across splits by construction)."""
        sizes = self.config.splits
        n = {"train": sizes.train_days, "validation": sizes.validation_days, "test": sizes.test_days}
        if split not in n:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + n[split])

    def day(self, split: str, index: int) -> Day:
        """The ``index``-th day of ``split``."""
        ids = self.day_ids(split)
        if not 0 <= index < len(ids):
            raise IndexError(f"{split} split has {len(ids)} days; index {index} is out of range")
        return self.make_day(ids[index])

    def days(self, split: str, n: int | None = None) -> list[Day]:
        """The first ``n`` days of ``split`` (all when None), generated now."""
        ids = self.day_ids(split)
        return [self.make_day(i) for i in ids[: len(ids) if n is None else n]]

    def split_days(self, split: str, n: int | None = None) -> LazyDays:
        """The same days as :meth:`days`, generated on access (with a small cache)."""
        ids = self.day_ids(split)
        return LazyDays(self, ids[: len(ids) if n is None else n])

    # ------------------------------------------------------------------ a day
    def make_day(self, day_id: int) -> Day:
        """Generate the day with global id ``day_id``."""
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, day_id]))
        d = cfg.demand

        # Advance bookings: known at the day start, pickups spread by the pickup profile.
        n_adv = rng.poisson(d.advance_per_day)
        t_adv = self._sample_hours(rng, d.pickup_hour_profile, n_adv)
        # Same-day requests: non-homogeneous Poisson arrivals, pickup some lead time later.
        n_sd = rng.poisson(d.same_day_per_day)
        known_sd = self._sample_hours(rng, d.request_hour_profile, n_sd)
        t_sd = known_sd + rng.uniform(*d.same_day_lead_min, size=n_sd)

        t_req = np.concatenate([t_adv, t_sd])
        # A request made before the service day starts is known at its start, like any
        # advance booking (and the importer's rule: created before the day start = advance).
        early = known_sd < cfg.day_start_min
        known = np.concatenate([np.full(n_adv, cfg.day_start_min), np.maximum(known_sd, cfg.day_start_min)])
        advance = np.concatenate([np.ones(n_adv, bool), early])
        # Keep requests whose pickup falls inside the service day (a thinning of the process).
        keep = (t_req >= cfg.day_start_min) & (t_req <= cfg.day_end_min) & (known <= t_req)
        t_req, known, advance = t_req[keep], known[keep], advance[keep]
        n = len(t_req)

        windows = rng.choice(np.asarray(d.windows_min), size=n, p=_normalise(d.window_probs))
        mobility = rng.choice(3, size=n, p=_normalise(d.mobility_mix))
        priority = rng.choice(3, size=n, p=_normalise(d.priority_mix))
        outbound = rng.random(n) < d.outbound_share
        home, facility, travel, coords = self._places(rng, n)
        pickup = np.where(outbound, home, facility)
        dropoff = np.where(outbound, facility, home)

        decision = np.maximum(known, t_req - cfg.dispatch_lead_min)
        order = np.lexsort((t_req, decision))
        bookings = Bookings(
            known_at=known[order],
            decision_time=decision[order],
            requested_pickup=t_req[order],
            window_min=windows[order].astype(float),
            pickup_node=pickup[order],
            dropoff_node=dropoff[order],
            mobility=mobility[order],
            priority=priority[order],
            advance=advance[order],
        )
        return Day(
            day_id=day_id,
            start_min=cfg.day_start_min,
            end_min=cfg.day_end_min,
            fleet=self.fleet,
            bookings=bookings,
            travel=travel,
            rules=cfg.rules,
            coords_km=coords,
        )

    @cached_property
    def fleet(self) -> Fleet:
        f = self.config.fleet
        types = np.repeat(
            [VehicleType.CAR, VehicleType.WHEELCHAIR_VAN, VehicleType.STRETCHER_UNIT],
            [f.n_cars, f.n_wheelchair_vans, f.n_stretcher_units],
        )
        shifts = np.array([f.shifts[k % len(f.shifts)] for k in range(f.size)], dtype=float)
        return Fleet(vehicle_type=types.astype(np.int64), shift_start=shifts[:, 0], shift_end=shifts[:, 1])

    @cached_property
    def _matrix(self) -> TravelModel | None:
        geo = self.config.geography
        if geo.travel_matrix is None:
            return None
        path = Path(geo.travel_matrix)
        try:
            with np.load(path) as data:
                model = TravelModel.from_matrices(data["distance_km"], data["time_min"], geo.congestion)
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"{path}: cannot use as travel_matrix ({exc}); give an .npz with square arrays "
                "'distance_km' and 'time_min'"
            ) from None
        if max(geo.facility_nodes) >= model.n_nodes or model.n_nodes <= len(geo.facility_nodes) + 1:
            raise ConfigError(f"{path}: facility_nodes must index nodes of the matrix and leave home nodes")
        return model

    def _places(self, rng: np.random.Generator, n: int):
        """Home and facility node of each booking, the travel model and coordinates."""
        geo = self.config.geography
        if self._matrix is not None:
            facility_nodes = np.asarray(geo.facility_nodes)
            homes = np.setdiff1d(np.arange(1, self._matrix.n_nodes), facility_nodes)
            return rng.choice(homes, size=n), rng.choice(facility_nodes, size=n), self._matrix, None

        fac_xy = np.array([[p.x, p.y] for p in geo.facilities])
        towns = geo.towns
        town = rng.choice(len(towns), size=n, p=_normalise([t.weight for t in towns]))
        centre = np.array([[t.x, t.y] for t in towns])[town]
        sigma = np.array([t.sigma_km for t in towns])[town]
        home_xy = centre + rng.normal(size=(n, 2)) * sigma[:, None]
        uniform = rng.random(n) < geo.home_uniform_share
        home_xy[uniform] = rng.uniform(0.0, geo.region_km, size=(int(uniform.sum()), 2))
        home_xy = np.clip(home_xy, 0.0, geo.region_km)
        facility = rng.choice(len(fac_xy), size=n, p=_normalise([p.weight for p in geo.facilities]))

        # Nodes: 0 depot, 1..F facilities, then one home node per booking.
        coords = np.vstack([np.asarray(geo.depot, float)[None, :], fac_xy, home_xy])
        travel = TravelModel.planar(coords, geo.road_factor, geo.speed_kmh, geo.congestion)
        return 1 + len(fac_xy) + np.arange(n), 1 + facility, travel, coords

    @staticmethod
    def _sample_hours(rng: np.random.Generator, profile, n: int) -> np.ndarray:
        """Minutes since midnight: hour by the profile, uniform within the hour."""
        hours = rng.choice(24, size=n, p=_normalise(profile))
        return (hours + rng.random(n)) * 60.0


class LazyDays(Sequence[Day]):
    """A read-only sequence of generated days, made when indexed; recent ones are cached."""

    def __init__(self, scenario: SyntheticScenario, day_ids: range, cache_size: int = 64) -> None:
        self.scenario = scenario
        self.day_ids = day_ids
        self._cached = lru_cache(maxsize=cache_size)(scenario.make_day)

    def __len__(self) -> int:
        return len(self.day_ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._cached(self.day_ids[index])


def _normalise(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()
