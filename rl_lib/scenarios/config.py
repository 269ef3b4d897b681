"""Scenario configuration: fleet, demand, geography, service rules and day splits.

The defaults are the built-in default scenario: a 25 x 25 km region around a central
depot, 12 vehicles (6 cars, 4 wheelchair vans, 2 stretcher units) and about 180
bookings a day (110 advance, 70 same-day), enough that capacity binds in the peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl_lib.config import bounded
from rl_lib.envs.day import ServiceRules
from rl_lib.envs.travel import DEFAULT_CONGESTION

# Day ids of each split start at fixed offsets, so resizing one split never moves
# another: the test days stay the test days.
SPLIT_OFFSETS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
MAX_DAYS_PER_SPLIT = 1_000_000

#: Relative weight of requested pickup hours for advance bookings (hours 0..23).
ADVANCE_PICKUP_PROFILE = (
    0, 0, 0, 0, 0, 0, 0, 3, 8, 10, 9, 7,
    5, 6, 8, 7, 5, 3, 1, 0, 0, 0, 0, 0,
)  # fmt: skip
#: Relative intensity of same-day requests by hour of arrival (non-homogeneous Poisson).
SAME_DAY_REQUEST_PROFILE = (
    0, 0, 0, 0, 0, 0, 2, 6, 9, 10, 9, 8,
    7, 7, 6, 5, 3, 1, 0, 0, 0, 0, 0, 0,
)  # fmt: skip


@dataclass(frozen=True)
class Place:
    """A point of the region (km); ``sigma_km`` spreads homes around a town centre."""

    x: float = bounded(0.0, min=0.0)
    y: float = bounded(0.0, min=0.0)
    weight: float = bounded(1.0, min=0.0)
    sigma_km: float = bounded(0.0, min=0.0)


@dataclass(frozen=True)
class FleetConfig:
    """Fleet composition; shifts (start, end minutes) are dealt to vehicles in turn."""

    n_cars: int = bounded(6, min=0, max=500)
    n_wheelchair_vans: int = bounded(4, min=0, max=500)
    n_stretcher_units: int = bounded(2, min=0, max=500)
    shifts: tuple[tuple[float, float], ...] = bounded(
        ((360.0, 900.0), (420.0, 960.0), (600.0, 1140.0), (660.0, 1200.0)), min=0.0, max=1440.0
    )

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("the fleet needs at least one vehicle")
        if not self.shifts or any(end <= start for start, end in self.shifts):
            raise ValueError("shifts must be a non-empty list of [start, end] with end > start")

    @property
    def size(self) -> int:
        return self.n_cars + self.n_wheelchair_vans + self.n_stretcher_units


@dataclass(frozen=True)
class DemandConfig:
    """Bookings per day and their attributes.

    Advance bookings: a Poisson number, requested pickup hour drawn from
    ``pickup_hour_profile``. Same-day requests: a non-homogeneous Poisson process whose
    intensity follows ``request_hour_profile`` and integrates to ``same_day_per_day``; each
    asks for a pickup ``same_day_lead_min`` (uniform range) after it arrives.
    """

    advance_per_day: float = bounded(110.0, min=0.0, max=100_000.0)
    same_day_per_day: float = bounded(70.0, min=0.0, max=100_000.0)
    pickup_hour_profile: tuple[float, ...] = bounded(ADVANCE_PICKUP_PROFILE, min=0.0)
    request_hour_profile: tuple[float, ...] = bounded(SAME_DAY_REQUEST_PROFILE, min=0.0)
    same_day_lead_min: tuple[float, float] = bounded((45.0, 180.0), min=0.0, max=1440.0)
    windows_min: tuple[float, ...] = bounded((15.0, 20.0, 30.0), min=1.0, max=240.0)
    window_probs: tuple[float, ...] = bounded((0.3, 0.4, 0.3), min=0.0)
    mobility_mix: tuple[float, float, float] = bounded((0.6, 0.3, 0.1), min=0.0)
    priority_mix: tuple[float, float, float] = bounded((0.55, 0.25, 0.2), min=0.0)
    outbound_share: float = bounded(0.5, min=0.0, max=1.0)

    def __post_init__(self) -> None:
        for name in ("pickup_hour_profile", "request_hour_profile"):
            profile = getattr(self, name)
            if len(profile) != 24 or sum(profile) <= 0:
                raise ValueError(f"{name} needs 24 hourly weights, not all zero")
        if len(self.window_probs) != len(self.windows_min) or sum(self.window_probs) <= 0:
            raise ValueError("window_probs needs one positive weight per entry of windows_min")
        if sum(self.mobility_mix) <= 0 or sum(self.priority_mix) <= 0:
            raise ValueError("mobility_mix and priority_mix need a positive weight")
        if self.same_day_lead_min[1] < self.same_day_lead_min[0]:
            raise ValueError("same_day_lead_min must be [low, high] with low <= high")


@dataclass(frozen=True)
class GeographyConfig:
    """Where patients live and go, and how fast vehicles get there.

    Homes are drawn around ``towns`` (Gaussian, ``sigma_km``) or, with probability
    ``home_uniform_share``, anywhere in the square region; trips link a home and one of
    the ``facilities`` (hospital, dialysis centre, ...), outbound or back.
    ``travel_matrix`` (an .npz with ``distance_km`` and ``time_min``, node 0 the depot)
    replaces the planar model: facilities are then the nodes ``facility_nodes`` and homes
    are drawn among the other nodes.
    """

    region_km: float = bounded(25.0, min=1.0, max=1000.0)
    depot: tuple[float, float] = bounded((12.5, 12.5), min=0.0)
    towns: tuple[Place, ...] = (
        Place(6.0, 7.0, 1.0, 2.5),
        Place(19.0, 6.0, 0.8, 2.5),
        Place(7.0, 19.0, 0.8, 2.5),
        Place(18.5, 18.5, 1.0, 3.0),
        Place(12.5, 12.5, 1.5, 3.0),
    )
    home_uniform_share: float = bounded(0.2, min=0.0, max=1.0)
    facilities: tuple[Place, ...] = (
        Place(12.0, 13.5, 0.40),
        Place(5.0, 12.0, 0.20),
        Place(18.0, 10.0, 0.25),
        Place(15.0, 20.0, 0.15),
    )
    road_factor: float = bounded(1.3, min=1.0, max=5.0)
    speed_kmh: float = bounded(40.0, min=1.0, max=200.0)
    congestion: tuple[float, ...] = bounded(DEFAULT_CONGESTION, min=0.1, max=10.0)
    travel_matrix: str | None = None
    facility_nodes: tuple[int, ...] = bounded((), min=1)

    def __post_init__(self) -> None:
        if len(self.congestion) != 24:
            raise ValueError("congestion needs 24 hourly multipliers")
        if self.travel_matrix is None and (not self.facilities or not self.towns):
            raise ValueError("the planar model needs at least one town and one facility")
        if self.travel_matrix is not None and not self.facility_nodes:
            raise ValueError("with a travel_matrix, list the facility_nodes (node 0 is the depot)")


@dataclass(frozen=True)
class SplitConfig:
    """How many days each split holds (train, validation, test never overlap)."""

    train_days: int = bounded(1000, min=1, max=MAX_DAYS_PER_SPLIT)
    validation_days: int = bounded(50, min=1, max=MAX_DAYS_PER_SPLIT)
    test_days: int = bounded(100, min=1, max=MAX_DAYS_PER_SPLIT)


@dataclass(frozen=True)
class ScenarioConfig:
    """A complete synthetic scenario. ``seed`` fixes every day of every split."""

    name: str = "default"
    seed: int = bounded(2026, min=0)
    day_start_min: float = bounded(360.0, min=0.0, max=1440.0)
    day_end_min: float = bounded(1200.0, min=0.0, max=1440.0)
    dispatch_lead_min: float = bounded(60.0, min=0.0, max=1440.0)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    demand: DemandConfig = field(default_factory=DemandConfig)
    geography: GeographyConfig = field(default_factory=GeographyConfig)
    rules: ServiceRules = field(default_factory=ServiceRules)
    splits: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.day_end_min <= self.day_start_min:
            raise ValueError("day_end_min must be after day_start_min")
