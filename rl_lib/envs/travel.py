"""Travel model: distances and congested travel times between the nodes of one day.

A day's locations are *nodes* (node 0 is the depot). Every travel question the
simulation asks is "from node i to node j, leaving at minute t": the model answers
with a distance in km and a time in minutes. Two ways to build one:

- :meth:`TravelModel.planar`: nodes are points in a plane (km); distance is the
  Euclidean distance times a road factor (roads are not straight lines), time is
  distance / speed.
- :meth:`TravelModel.from_matrices`: the user gives the distance (km) and
  free-flow time (min) matrices, e.g. from a routing engine.

Either way a time-of-day congestion profile (one multiplier per hour) scales the
free-flow time by an hour the caller chooses (the core uses the hour a vehicle can
first leave for an approach, and the pickup hour for a ride). A leg's time is fixed
when it is priced (no mid-trip profile changes), which keeps it cheap to evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Multiplier on free-flow travel time by hour of departure (0..23): morning and
#: evening peaks, a lighter midday, free flow at night.
DEFAULT_CONGESTION = (
    1.0, 1.0, 1.0, 1.0, 1.0, 1.05,  # 00-05
    1.15, 1.35, 1.40, 1.20, 1.10, 1.10,  # 06-11
    1.15, 1.10, 1.10, 1.20, 1.35, 1.40,  # 12-17
    1.25, 1.10, 1.05, 1.0, 1.0, 1.0,  # 18-23
)  # fmt: skip


@dataclass(frozen=True)
class TravelModel:
    """Distance (km) and free-flow time (min) between nodes, with hourly congestion.

    :param distance_km: (N, N) road distances in km.
    :param free_flow_min: (N, N) travel times in minutes without congestion.
    :param congestion: 24 multipliers (>= 0.1) applied by hour of departure.
    """

    distance_km: np.ndarray
    free_flow_min: np.ndarray
    congestion: np.ndarray

    def __post_init__(self) -> None:
        d, t, c = self.distance_km, self.free_flow_min, self.congestion
        if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape != t.shape:
            raise ValueError(
                f"distance and time matrices must be square and of equal shape, got {d.shape} and {t.shape}"
            )
        if c.shape != (24,) or np.any(c < 0.1):
            raise ValueError("congestion profile must hold 24 hourly multipliers, each >= 0.1")
        if np.any(~np.isfinite(d)) or np.any(d < 0) or np.any(~np.isfinite(t)) or np.any(t < 0):
            raise ValueError("distance and time matrices must be finite and non-negative")

    @classmethod
    def planar(
        cls,
        coords_km: np.ndarray,
        road_factor: float = 1.3,
        speed_kmh: float = 40.0,
        congestion: tuple[float, ...] | np.ndarray = DEFAULT_CONGESTION,
    ) -> TravelModel:
        """Build the model from (N, 2) node coordinates in km."""
        diff = coords_km[:, None, :] - coords_km[None, :, :]
        dist = road_factor * np.sqrt((diff**2).sum(axis=-1))
        return cls(dist, dist / speed_kmh * 60.0, np.asarray(congestion, dtype=float))

    @classmethod
    def from_matrices(
        cls,
        distance_km: np.ndarray,
        free_flow_min: np.ndarray,
        congestion: tuple[float, ...] | np.ndarray | None = None,
    ) -> TravelModel:
        """Build the model from user matrices; no congestion unless a profile is given."""
        profile = np.ones(24) if congestion is None else np.asarray(congestion, dtype=float)
        return cls(np.asarray(distance_km, float), np.asarray(free_flow_min, float), profile)

    @property
    def n_nodes(self) -> int:
        return int(self.distance_km.shape[0])

    def congestion_at(self, minute: np.ndarray | float) -> np.ndarray | float:
        """Congestion multiplier for a departure at ``minute`` (minutes since midnight)."""
        hour = (np.asarray(minute) // 60).astype(np.int64) % 24
        return self.congestion[hour]

    def travel_min(self, origin: np.ndarray | int, dest: np.ndarray | int, depart_min) -> np.ndarray:
        """Travel time in minutes, leaving ``origin`` for ``dest`` at ``depart_min``."""
        return self.free_flow_min[origin, dest] * self.congestion_at(depart_min)
