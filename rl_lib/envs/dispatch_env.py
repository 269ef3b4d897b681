"""DispatchEnv: the gymnasium face of the NEMT dispatch simulation core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl_lib.envs.core import MISSED, REFUSED, SERVED, DispatchCore, Insertion, Outcome, RewardWeights
from rl_lib.envs.day import COMPATIBLE, Day, Mobility

# Normalisation scales: every observation field is divided by its scale and clipped to [0, 1].
MINUTES_PER_DAY = 1440.0
LEAD_SCALE_MIN = 180.0  # time to the requested pickup
WINDOW_SCALE_MIN = 60.0
TRIP_SCALE_KM = 50.0
ETA_SCALE_MIN = 180.0
LATENESS_SCALE_MIN = 60.0
DEADHEAD_SCALE_KM = 50.0
FREE_SCALE_MIN = 240.0
SHIFT_SCALE_MIN = 720.0
PENDING_SCALE = 150.0  # ~110 advance bookings are pending at the day start: 50 saturated
RECENT_SCALE = 20.0
UPCOMING_SCALE = 30.0

BOOKING_FEATURES = (
    "time_of_day", "lead_to_pickup", "window", "mobility_ambulatory", "mobility_wheelchair",
    "mobility_stretcher", "priority_normal", "priority_appointment", "priority_dialysis",
    "trip_km", "advance_booking",
)  # fmt: skip
VEHICLE_FEATURES = (
    "feasible", "compatible", "eta_to_pickup", "lateness_if_assigned", "deadhead_km",
    "time_until_free", "shift_remaining", "carries_wheelchair", "carries_stretcher",
)  # fmt: skip
GLOBAL_FEATURES = (
    "day_elapsed", "pending_bookings", "recent_requests", "upcoming_ambulatory", "upcoming_wheelchair",
    "upcoming_stretcher", "feasible_share",
)  # fmt: skip
N_BOOKING, N_VEHICLE, N_GLOBAL = len(BOOKING_FEATURES), len(VEHICLE_FEATURES), len(GLOBAL_FEATURES)


# Scales of the 7 per-decision vehicle fields (the two capability fields are 0/1 constants).
_ROW_SCALES = (
    1.0
    / np.array([1, 1, ETA_SCALE_MIN, LATENESS_SCALE_MIN, DEADHEAD_SCALE_KM, FREE_SCALE_MIN, SHIFT_SCALE_MIN])[
        :, None
    ]
)
N_DYNAMIC_VEHICLE = len(_ROW_SCALES)


class DispatchEnv(gym.Env):
    """Assign each incoming NEMT booking to a vehicle of the fleet, or refuse it.

    ## Description
    One episode is one service day. Bookings (advance ones known at the day start, same-day
    ones arriving through the day) come up for decision one at a time, in order of decision
    time: ``max(known_at, requested_pickup - dispatch_lead)``. The agent appends the booking to
    one vehicle's FIFO queue of committed trips, or refuses it. Travel is deterministic (a
    planar or matrix travel model with hourly congestion), so every commitment is served
    exactly as planned; see :mod:`rl_lib.envs.core` for the vehicle model.

    **Forced refusals are decided by the env.** A booking that no vehicle can serve (24 % of
    the default scenario's bookings) leaves no choice, and presenting it would only add noise
    to the agent's value targets. With ``auto_refuse_infeasible`` (the default) the env refuses
    it itself, recorded as *missed* with its ``refusal_penalty`` folded into the reward of the
    step that led to it (for bookings before the first decision: the first step's reward), so
    a day's total reward and KPIs are the same as when every booking is presented. Only the
    day's first booking can be presented without a feasible vehicle, when none of the day's
    bookings has one (every episode has at least one decision).

    ## Action Space
    ``Discrete(K + 1)`` with K the fleet size: action ``k < K`` appends the booking to vehicle
    ``k``; action ``K`` refuses it. A vehicle is *infeasible* (masked) when its type cannot
    carry the patient's mobility, it would pick up more than ``max_lateness_min`` after the
    window closes, or the trip would end after its shift. The mask is given by
    :meth:`action_masks` (the sb3-contrib convention) and ``info["action_mask"]``; refusing is
    always allowed. **Invalid action**: choosing a masked vehicle (or an out-of-range index)
    is recorded as a refusal, with ``invalid_action_penalty`` on top of the refusal penalty
    and ``info["invalid_action"] = True``; no vehicle state changes.

    ## Observation Space
    ``Box(0, 1, (11 + 9 K + 7,), float32)``; every field is divided by the scale given and
    clipped to [0, 1]. Booking block (11):

    | # | field | meaning |
    |---|-------|---------|
    | 0 | time_of_day | decision time / 1440 min |
    | 1 | lead_to_pickup | (requested pickup - now) / 180 min |
    | 2 | window | pickup window length / 60 min |
    | 3-5 | mobility_* | one-hot ambulatory, wheelchair, stretcher |
    | 6-8 | priority_* | one-hot normal, appointment, dialysis |
    | 9 | trip_km | pickup-to-dropoff road km / 50 |
    | 10 | advance_booking | 1 if known at the day start |

    Then 9 fields per vehicle, computed for *this* booking, field-major: field f of vehicle k
    is at index ``11 + f * K + k``:

    | # | field | meaning |
    |---|-------|---------|
    | 0 | feasible | 1 if the action is allowed (the mask) |
    | 1 | compatible | 1 if the vehicle type carries this mobility |
    | 2 | eta_to_pickup | (pickup time if assigned - now) / 180 min |
    | 3 | lateness_if_assigned | minutes after the window closes / 60 |
    | 4 | deadhead_km | empty km to the pickup / 50 |
    | 5 | time_until_free | (end of its committed queue, or its shift start if later, - now)^+ / 240 min |
    | 6 | shift_remaining | (shift end - now)^+ / 720 min |
    | 7 | carries_wheelchair | 1 if its type carries wheelchairs (van or stretcher unit) |
    | 8 | carries_stretcher | 1 if its type carries stretchers (stretcher unit) |

    Fields 7-8 tell the vehicle types apart whatever the booking: for an ambulatory booking a
    car and a stretcher unit are both *compatible*, but only one of them is scarce.

    Then the global block (7):

    | # | field | meaning |
    |---|-------|---------|
    | 0 | day_elapsed | (now - day start) / day length |
    | 1 | pending_bookings | known, not yet decided / 150 |
    | 2 | recent_requests | same-day requests in the last 60 min / 20 |
    | 3-5 | upcoming_* | known, undecided bookings of each mobility wanting a pickup within 120 min / 30 |
    | 6 | feasible_share | feasible vehicles / K |

    The vehicle block's layout does not depend on K beyond its length, so a network that
    scores each vehicle with shared weights (:mod:`rl_lib.agents.fleet`) reads any fleet size.

    ## Rewards
    Serving booking b: ``service_reward * priority_weight[b] - deadhead_per_km * deadhead_km -
    lateness_per_min * lateness_min``. Refusing, or missing a booking no vehicle could serve:
    ``-refusal_penalty``. Invalid action: ``-(refusal_penalty + invalid_action_penalty)``.
    Weights come from :class:`~rl_lib.envs.core.RewardWeights`.

    ## Starting State
    A day is drawn from ``days`` (uniformly with the env's ``np_random``, or in turn with
    ``day_sampling="cycle"``, or chosen with ``reset(options={"day_index": i})``); every
    vehicle waits at the depot for its shift, no booking is decided.

    ## Episode End
    Terminated after the day's last booking is decided. Never truncated.

    ## Info
    Every step: ``action_mask`` (for the returned observation), ``outcome`` (``served``,
    ``refused``, ``missed``, ``deadhead_km``, ``loaded_km``, ``lateness_min``: the step's KPI
    deltas, forced refusals included), ``auto_refused`` (bookings the env refused since the
    previous decision), ``elapsed_min`` (minutes from this decision to the next one, 0 at the
    end: what a time-aware discount needs), ``invalid_action``, ``day_id``. On the last step:
    ``kpis``, the day's KPIs (:data:`rl_lib.envs.core.KPI_DESCRIPTIONS`).

    ## Arguments
    :param days: the days to play (e.g. ``SyntheticScenario().days("train", 100)``), or None
        for the first ``n_default_days`` training days of the default scenario.
    :param reward: reward weights (default :class:`RewardWeights`).
    :param day_sampling: ``"random"`` or ``"cycle"``.
    :param render_mode: None or ``"ansi"`` (a one-line text summary of the pending decision).
    :param auto_refuse_infeasible: let the env refuse bookings no vehicle can serve (above);
        False presents every booking, as before.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        days: Sequence[Day] | None = None,
        reward: RewardWeights | None = None,
        day_sampling: str = "random",
        render_mode: str | None = None,
        n_default_days: int = 100,
        auto_refuse_infeasible: bool = True,
    ) -> None:
        if days is None:
            from rl_lib.scenarios.synthetic import SyntheticScenario

            days = SyntheticScenario().days("train", n_default_days)
        if len(days) == 0:
            raise ValueError("DispatchEnv needs at least one day")
        if day_sampling not in ("random", "cycle"):
            raise ValueError("day_sampling must be 'random' or 'cycle'")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}")
        # Any sequence works, e.g. SyntheticScenario.split_days(): days are then made on demand,
        # so a 1000-day training split costs no memory until it is played. Each day is checked
        # when it is drawn.
        self.days = days
        self.day_sampling = day_sampling
        self.render_mode = render_mode
        self.auto_refuse_infeasible = auto_refuse_infeasible
        self.core = DispatchCore(reward)
        self.n_vehicles = days[0].n_vehicles
        self.action_space = spaces.Discrete(self.n_vehicles + 1)
        n_obs = observation_size(self.n_vehicles)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_obs,), dtype=np.float32)
        self._obs = np.zeros(n_obs, dtype=np.float32)
        self._mask = np.ones(self.n_vehicles + 1, dtype=bool)  # last entry (refuse) stays True
        self._vehicle_rows = vehicle_rows(self._obs, self.n_vehicles)
        self._next_day = 0
        self._booking = 0
        self._insertion: Insertion | None = None
        self._carried: list[Outcome] = []  # forced refusals before the first decision

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "day_index" in options:
            index = int(options["day_index"]) % len(self.days)
        elif self.day_sampling == "cycle":
            index, self._next_day = self._next_day, (self._next_day + 1) % len(self.days)
        else:
            index = int(self.np_random.integers(len(self.days)))
        self._load_day(index)
        return self._observation(), {"action_mask": self.action_masks(), "day_id": self.day.day_id}

    def _load_day(self, index: int) -> None:
        day = self.days[index]
        if day.n_vehicles != self.n_vehicles:
            raise ValueError(f"day {day.day_id} has {day.n_vehicles} vehicles; this env's action space needs "
                             f"{self.n_vehicles}")  # fmt: skip
        if day.n_bookings == 0:
            raise ValueError(f"day {day.day_id} holds no booking; remove it from the env's days")
        self._day_index = index
        self.day = day
        self._n_bookings = day.n_bookings
        self._decision_time = day.bookings.decision_time.tolist()  # floats: cheaper per step
        self.core.reset(self.day)
        self._static = booking_features(self.day)
        self._capability = vehicle_capabilities(self.day)
        self._booking = 0
        self._insertion = self.core.evaluate(0, self._decision_time[0])
        # Forced refusals before the first decision (refusals leave the fleet as it is, so these
        # evaluations are the ones the refusals would make); their penalty goes to the first step.
        forced = []
        if self.auto_refuse_infeasible:
            while self._insertion.n_feasible == 0 and self._booking + 1 < self._n_bookings:
                forced.append(self._insertion)
                self._booking += 1
                self._insertion = self.core.evaluate(self._booking, self._decision_time[self._booking])
            if self._insertion.n_feasible == 0:  # no booking of the day is servable: present the first
                forced, self._booking = [], 0
                self._insertion = self.core.evaluate(0, self._decision_time[0])
        self._carried = [self.core.refuse(insertion) for insertion in forced]

    def step(self, action):
        insertion = self._insertion
        if insertion is None:
            raise RuntimeError("the episode is over: call reset() before step()")
        action = int(action)
        if action == self.n_vehicles:
            outcome = self.core.refuse(insertion)
        else:
            outcome = self.core.assign(insertion, action)
        self._booking += 1
        b = self._booking
        self._insertion = self.core.evaluate(b, self._decision_time[b]) if b < self._n_bookings else None
        outcomes = [*self._carried, outcome, *self._refuse_forced()]
        self._carried = []
        terminated = self._insertion is None
        statuses = [o.status for o in outcomes]
        info: dict[str, Any] = {
            "outcome": {
                "served": float(statuses.count(SERVED)),
                "refused": float(statuses.count(REFUSED)),
                "missed": float(statuses.count(MISSED)),
                "deadhead_km": outcome.deadhead_km,
                "loaded_km": outcome.loaded_km,
                "lateness_min": outcome.lateness_min,
            },
            "auto_refused": len(outcomes) - 1,
            "invalid_action": outcome.invalid_action,
            "day_id": self.day.day_id,
        }
        if terminated:
            obs = np.zeros(self.observation_space.shape, dtype=np.float32)
            info["action_mask"] = np.ones(self.n_vehicles + 1, dtype=bool)
            info["elapsed_min"] = 0.0
            info["kpis"] = self.core.kpis()
        else:
            obs = self._observation()
            info["action_mask"] = self.action_masks()
            info["elapsed_min"] = self._decision_time[self._booking] - insertion.now
        reward = outcome.reward if len(outcomes) == 1 else float(sum(o.reward for o in outcomes))
        return obs, reward, terminated, False, info

    def _refuse_forced(self) -> list[Outcome]:
        """Refuse the bookings from the pending one on that no vehicle can serve, up to the first
        that has a feasible vehicle (or the day's end, leaving ``_insertion`` None)."""
        outcomes = []
        if not self.auto_refuse_infeasible:
            return outcomes
        while self._insertion is not None and self._insertion.n_feasible == 0:
            outcomes.append(self.core.refuse(self._insertion))
            self._booking += 1
            b = self._booking
            self._insertion = self.core.evaluate(b, self._decision_time[b]) if b < self._n_bookings else None
        return outcomes

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this episode exactly (for checkpoints), picklable."""
        state: dict[str, Any] = {
            "np_random": self.np_random.bit_generator.state,
            "next_day": self._next_day,
            "day_index": getattr(self, "_day_index", None),
        }
        if state["day_index"] is not None:
            state.update(booking=self._booking, core=self.core.snapshot(), done=self._insertion is None,
                         carried=list(self._carried))  # fmt: skip
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state` (same days, same order)."""
        self.np_random.bit_generator.state = state["np_random"]
        self._next_day = state["next_day"]
        if state["day_index"] is None:
            return
        self._load_day(state["day_index"])
        self.core.restore(state["core"])
        self._booking = state["booking"]
        self._carried = list(state["carried"])
        self._insertion = (
            None
            if state["done"]
            else self.core.evaluate(self._booking, self.day.bookings.decision_time[self._booking])
        )

    @property
    def insertion(self) -> Insertion | None:
        """The core's evaluation of the pending booking against every vehicle (None after the end)."""
        return self._insertion

    def action_masks(self) -> np.ndarray:
        """Boolean mask over actions for the pending booking (refusal always allowed)."""
        if self._insertion is None:
            return np.ones(self.n_vehicles + 1, dtype=bool)
        self._mask[:-1] = self._insertion.feasible
        return self._mask.copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._insertion is None:
            return None
        b, ins = self._booking, self._insertion
        now = self.day.bookings.decision_time[b]
        return (
            f"day {self.day.day_id} {int(now // 60):02d}:{int(now % 60):02d} booking {b + 1}/"
            f"{self.day.n_bookings}: feasible vehicles {np.flatnonzero(ins.feasible).tolist()}"
        )

    # ------------------------------------------------------------ observation
    def _observation(self) -> np.ndarray:
        # Written into a preallocated buffer, then copied: this runs at every decision.
        write_observation(self._obs, self._static[self._booking], self._insertion, self.core.free_at,
                          self.day.fleet.shift_end, self._capability, self._vehicle_rows)  # fmt: skip
        return self._obs.copy()


def booking_features(day: Day) -> np.ndarray:
    """(n_bookings, 11 + 6) float32: the booking block and the first six global fields.

    They depend on the booking and the day only, so they are computed once per day.
    """
    bk = day.bookings
    n = day.n_bookings
    now = bk.decision_time
    rows = np.arange(n)
    feats = np.zeros((n, N_BOOKING + N_GLOBAL - 1), dtype=np.float32)
    feats[:, 0] = now / MINUTES_PER_DAY
    feats[:, 1] = (bk.requested_pickup - now) / LEAD_SCALE_MIN
    feats[:, 2] = bk.window_min / WINDOW_SCALE_MIN
    feats[rows, 3 + bk.mobility] = 1.0
    feats[rows, 6 + bk.priority] = 1.0
    feats[:, 9] = day.travel.distance_km[bk.pickup_node, bk.dropoff_node] / TRIP_SCALE_KM
    feats[:, 10] = bk.advance
    feats[:, 11] = (now - day.start_min) / (day.end_min - day.start_min)
    feats[:, 12] = day.pending_at_decision / PENDING_SCALE
    feats[:, 13] = day.recent_requests_at_decision / RECENT_SCALE
    feats[:, 14 : 14 + len(Mobility)] = day.upcoming_at_decision / UPCOMING_SCALE
    return np.clip(feats, 0.0, 1.0)


def vehicle_capabilities(day: Day) -> np.ndarray:
    """(2, K) float32: the vehicle fields carries_wheelchair and carries_stretcher (constant per day)."""
    carries = COMPATIBLE[day.fleet.vehicle_type]  # (K, mobility)
    return carries[:, [Mobility.WHEELCHAIR, Mobility.STRETCHER]].T.astype(np.float32)


def observation_size(n_vehicles: int) -> int:
    return N_BOOKING + N_VEHICLE * n_vehicles + N_GLOBAL


def vehicle_rows(obs: np.ndarray, n_vehicles: int) -> np.ndarray:
    """The (9, K) view of an observation vector's vehicle block (field-major)."""
    return obs[N_BOOKING : N_BOOKING + N_VEHICLE * n_vehicles].reshape(N_VEHICLE, n_vehicles)


def write_observation(
    obs: np.ndarray,
    static_row: np.ndarray,
    insertion: Insertion,
    free_at: np.ndarray,
    shift_end: np.ndarray,
    capability: np.ndarray,
    rows: np.ndarray | None = None,
) -> None:
    """Fill ``obs`` (float32) for one pending booking: the only code that builds observations.

    :param static_row: the booking's row of :func:`booking_features`.
    :param insertion: the core's evaluation of the booking against every vehicle.
    :param capability: the day's :func:`vehicle_capabilities`.
    :param rows: ``vehicle_rows(obs, K)`` when the caller keeps it (saves a reshape per call).
    """
    k = len(free_at)
    now = insertion.now
    obs[:N_BOOKING] = static_row[:N_BOOKING]  # booking fields and 6 global ones: precomputed
    obs[-N_GLOBAL:-1] = static_row[N_BOOKING:]
    obs[-1] = insertion.n_feasible / k
    rows = vehicle_rows(obs, k) if rows is None else rows
    rows[N_DYNAMIC_VEHICLE:] = capability
    rows = rows[:N_DYNAMIC_VEHICLE]
    rows[0] = insertion.feasible
    rows[1] = insertion.compatible
    np.subtract(insertion.pickup, now, out=rows[2])
    rows[3] = insertion.lateness
    rows[4] = insertion.deadhead_km
    np.subtract(free_at, now, out=rows[5])
    np.subtract(shift_end, now, out=rows[6])
    rows *= _ROW_SCALES
    np.minimum(rows, 1.0, out=rows)
    np.maximum(rows, 0.0, out=rows)
