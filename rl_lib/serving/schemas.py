"""Request and response models of the dispatch service, with explicit bounds.

Times are minutes since midnight of the service day (as in :mod:`rl_lib.envs.day`), positions are
planar coordinates in km in the frame of the model's scenario (its travel model prices every leg:
road factor, speed, hourly congestion). A vehicle is described by where and when its committed
queue ends: travel is deterministic, so that is all the next decision depends on (the vehicle model
of :mod:`rl_lib.envs.core`). Anything out of bounds is a 422 that names the field.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rl_lib.serving.decision_log import COMPLETED_FACTS, OUTCOME_STATUSES

#: Latest time a request may mention (two days after midnight, as the simulation core allows).
MAX_TIME_MIN = 2880.0
MAX_COORD_KM = 10_000.0
MAX_FLEET = 256
MAX_BATCH = 256
MAX_QUEUE = 200

VEHICLE_TYPES = ("car", "wheelchair_van", "stretcher_unit")  # rl_lib.envs.day.VehicleType order
MOBILITIES = ("ambulatory", "wheelchair", "stretcher")  # rl_lib.envs.day.Mobility order
PRIORITIES = ("normal", "appointment", "dialysis")  # rl_lib.envs.day.Priority order

Minute = Annotated[float, Field(ge=0.0, le=MAX_TIME_MIN, allow_inf_nan=False)]
Coordinate = Annotated[float, Field(ge=-MAX_COORD_KM, le=MAX_COORD_KM, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Count = Annotated[int, Field(ge=0, le=100_000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(Strict):
    x_km: Coordinate
    y_km: Coordinate


class Vehicle(Strict):
    """One vehicle: its type, shift, and where / when its committed queue ends."""

    vehicle_id: Identifier
    type: Literal["car", "wheelchair_van", "stretcher_unit"]
    position: Point = Field(description="where the vehicle is free next: the last dropoff of its queue")
    free_at_min: Minute = Field(description="when its committed queue ends (before its shift: the start)")
    shift_start_min: Minute
    shift_end_min: Minute
    queue: list[Identifier] = Field(default_factory=list, max_length=MAX_QUEUE,
                                    description="committed booking ids, in service order")  # fmt: skip

    @model_validator(mode="after")
    def _shift(self) -> Vehicle:
        if self.shift_end_min <= self.shift_start_min:
            raise ValueError("shift_end_min must be after shift_start_min")
        return self


class Booking(Strict):
    booking_id: Identifier
    requested_pickup_min: Minute
    window_min: Annotated[float, Field(ge=0.0, le=240.0, allow_inf_nan=False)]
    pickup: Point
    dropoff: Point
    mobility: Literal["ambulatory", "wheelchair", "stretcher"]
    priority: Literal["normal", "appointment", "dialysis"] = "normal"
    advance: bool = Field(False, description="known at the start of the service day")


class Demand(Strict):
    """What the dispatch backend knows of the demand around this decision (the env's global fields)."""

    pending_bookings: Count = Field(0, description="known bookings not decided yet")
    recent_requests: Count = Field(0, description="same-day requests received in the last 60 min")
    upcoming_ambulatory: Count = Field(0, description="known, undecided, pickup within 120 min")
    upcoming_wheelchair: Count = 0
    upcoming_stretcher: Count = 0


class DecisionRequest(Strict):
    """One booking to decide now, against the fleet as it stands."""

    decision_id: Identifier | None = Field(
        None, description="idempotency key: a retry with the same id gets the same answer, logged once"
    )
    service_day: dt.date
    region: Identifier = "all"
    now_min: Minute
    day_start_min: Minute | None = Field(None, description="default: the model's scenario")
    day_end_min: Minute | None = None
    booking: Booking
    fleet: list[Vehicle] = Field(min_length=1, max_length=MAX_FLEET)
    demand: Demand = Field(default_factory=Demand)

    @field_validator("fleet")
    @classmethod
    def _unique_ids(cls, fleet: list[Vehicle]) -> list[Vehicle]:
        ids = [v.vehicle_id for v in fleet]
        if len(set(ids)) != len(ids):
            raise ValueError("vehicle_id values must be unique")
        return fleet

    @model_validator(mode="after")
    def _times(self) -> DecisionRequest:
        if self.now_min > self.booking.requested_pickup_min:
            raise ValueError("now_min must not be after booking.requested_pickup_min")
        start, end = self.day_start_min, self.day_end_min
        if start is not None and end is not None and end <= start:
            raise ValueError("day_end_min must be after day_start_min")
        return self


class BatchRequest(Strict):
    """Independent decisions (each against its own fleet state), answered in one network call."""

    requests: list[DecisionRequest] = Field(min_length=1, max_length=MAX_BATCH)


class DecisionResponse(BaseModel):
    decision_id: str
    booking_id: str
    action: Literal["assign", "refuse"]
    vehicle_id: str | None
    vehicle_index: int | None
    arm: str
    unit: str
    policy: str = Field(description="what decided: model, fallback (insertion when the model failed), "
                                    "or a control heuristic")  # fmt: skip
    model_version: str | None
    feasible_vehicles: int
    decision_ms: float


class BatchResponse(BaseModel):
    decisions: list[DecisionResponse]


class OutcomeRequest(Strict):
    """What happened to a decided booking."""

    decision_id: Identifier
    status: Literal[OUTCOME_STATUSES]  # the log's statuses: one list for the API and its readers
    pickup_min: Minute | None = None
    dropoff_min: Minute | None = None
    lateness_min: Annotated[float, Field(ge=0.0, le=MAX_TIME_MIN, allow_inf_nan=False)] | None = None
    deadhead_km: Annotated[float, Field(ge=0.0, le=MAX_COORD_KM, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _completed_has_facts(self) -> OutcomeRequest:
        if self.status == "completed":
            missing = [k for k in COMPLETED_FACTS if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a completed trip needs {', '.join(missing)}")
        return self


class OutcomeResponse(BaseModel):
    decision_id: str
    recorded: bool = Field(description="False when this outcome was already recorded (not counted twice)")
