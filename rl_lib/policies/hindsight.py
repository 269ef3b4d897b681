"""Hindsight bound: an upper bound on a day's reward and service rate, every booking known.

No online policy (random, nearest, insertion, batch matching, RL) can do better on a day than
the best offline schedule of that day, and no offline schedule can do better than a
*relaxation* of the offline problem. Solving the exact offline problem (a vehicle routing
problem with time windows over ~180 trips) is too slow, so :func:`hindsight_bound` solves a
relaxation of it as a small MILP (HiGHS, via :func:`scipy.optimize.milp`) and reports the
solver's *dual* bound, which is an upper bound even when the solver stops on its time limit.

The problem relaxed is the one the simulation core (:mod:`rl_lib.envs.core`) imposes on any
sequence of ``evaluate`` / ``assign`` calls, in any order and at any times: vehicle k leaves
the depot (node 0) no earlier than its shift start, serves its trips one at a time, and for
each trip b, with p_b its pickup time and D_b its dropoff end,

(i)   k's type carries b's mobility;
(ii)  t_req_b <= p_b <= t_req_b + w_b + max_lateness;
(iii) p_b >= F + ff[n, pickup_b] * c, where F is when k became free (its previous dropoff
      end, or its shift start) at node n (that dropoff node, or the depot) and c is the
      congestion factor of an hour in [hour(F), hour(p_b)];
(iv)  D_b = p_b + boarding_b + ff[pickup_b, dropoff_b] * c' + alighting_b <= shift_end_k, c'
      the factor of an hour in [hour(p_b), hour(p_b + boarding_b)];
(v)   reward = service_reward * priority_weight_b - deadhead_per_km * dist[n, pickup_b]
      - lateness_per_min * max(0, p_b - t_req_b - w_b), and -refusal_penalty per unserved b.

(The core prices both legs at the hour the vehicle became free, resp. of the pickup; the
hour ranges in (iii)-(iv) cover that and a departure-hour reading alike.)

The relaxation keeps a binary x[b, k] per compatible pair and drops every time variable.
With lower bounds computed once per (b, k) from (ii)-(iv) alone, using the smallest
congestion factor of the hours the leg can start in:

- e[b, k], earliest pickup: max(t_req_b, shift_start_k + shortest depot-to-pickup time);
- r[b, k], shortest ride;  l[b, k], latest pickup: min(t_req_b + w_b + max_lateness,
  shift_end_k - boarding_b - r[b, k] - alighting_b);  the pair exists only if e <= l;
- b' *may precede* b on k when e[b', k] + service_b' + r[b', k] + (shortest leg from
  dropoff_b' to pickup_b) <= l[b, k]: a direct predecessor in any schedule passes this test;
- a[b, k], shortest approach to b: from the depot or from the dropoff of a b' that may
  precede it; likewise the least deadhead km, and the least lateness max(0, e - t_req - w);

the MILP keeps these constraints, each implied by every schedule of the problem above:

1. each booking is served at most once: sum_k x[b, k] <= 1;
2. *busy intervals are disjoint*: on vehicle k, trip b keeps the vehicle busy over
   I_b = [p_b - a[b, k], D_b), which starts after the vehicle became free (its approach
   takes at least a[b, k]) and ends when it is free again, inside the shift. Hence for every
   time window W of vehicle k, sum_b x[b, k] * |I_b cap W| <= |W|, with |I_b cap W| replaced
   by its minimum over p_b in [e, l] (at an end point: the overlap of a sliding interval
   with W is unimodal in its position). W = the whole shift gives the time-capacity
   constraint; windows of 30 min to 4 h on a 15 min grid refine it over the day;
3. *clique inequalities*: every possible I_b contains the mandatory part
   [l - a, e + boarding + r + alighting); bookings whose mandatory parts share a point cannot
   share vehicle k, so for every such point, sum of x[b, k] over those covering it <= 1
   (the maximal cliques of an interval graph, one per left end point);

with the objective per pair the reward bound of (v): service value minus the least deadhead
and least lateness cost (an upper bound on what serving b with k can earn in any schedule).
Every feasible schedule maps to a feasible x with at least its reward, so the MILP optimum,
and any dual bound of it (or the LP relaxation, ``relax=True``), bounds the day's reward.
The served bound is the same MILP maximising sum x.

What is given up, and makes the bound loose: routes are not sequenced (the deadhead and
approach of a trip are those of its cheapest possible predecessor, not of the actual one),
and time windows only interact through the constraints above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from rl_lib.envs.core import RewardWeights
from rl_lib.envs.day import COMPATIBLE, Day

#: Safety margin (minutes) against floating-point rounding in the core's time arithmetic:
#: every test is made in the direction that keeps a real schedule feasible.
TOL_MIN = 1e-6
#: Energetic windows: start grid and lengths (minutes), clipped to each shift.
WINDOW_STEP_MIN = 15.0
WINDOW_LENGTHS_MIN = (30.0, 60.0, 120.0, 240.0)
#: Hours covered by the congestion look-up (the core's week of hours).
_HOURS = 24 * 7


@dataclass(frozen=True)
class HindsightBound:
    """Upper bounds on what any policy can achieve on one day.

    :param reward_upper_bound: no policy's day reward exceeds this.
    :param served_upper_bound: no policy serves more bookings than this (an integer).
    :param service_rate_upper_bound: ``served_upper_bound / n_bookings`` (nan for an empty day).
    :param optimal: both MILPs were solved to proven optimality (else the bounds are the
        solver's dual bounds at its time limit: still valid, looser).
    :param method: ``"milp-relaxation"`` or ``"lp-relaxation"``.
    :param solve_seconds: wall-clock time of building and solving both models.
    """

    day_id: int | str
    reward_upper_bound: float
    served_upper_bound: float
    service_rate_upper_bound: float
    n_bookings: int
    optimal: bool
    method: str
    solve_seconds: float


@dataclass(frozen=True)
class Relaxation:
    """The relaxation's MILP: one binary per possible (booking, vehicle) pair.

    :param booking: (m,) booking of each pair.
    :param vehicle: (m,) vehicle of each pair.
    :param value: (m,) upper bound on the reward of serving that booking with that vehicle.
    :param a_ub: (rows, m) sparse matrix of the constraints ``a_ub @ x <= b_ub``.
    :param b_ub: (rows,) right-hand sides.
    """

    booking: np.ndarray
    vehicle: np.ndarray
    value: np.ndarray
    a_ub: sparse.csr_array
    b_ub: np.ndarray


def hindsight_bound(
    day: Day, weights: RewardWeights | None = None, time_limit_s: float = 20.0, relax: bool = False
) -> HindsightBound:
    """Upper bounds on the reward and the number of bookings served on ``day`` (see module doc).

    :param day: the day, every booking known in advance.
    :param weights: the reward weights the policies are scored with.
    :param time_limit_s: wall-clock limit of each of the two solves; past it the solver's dual
        bound is reported and ``optimal`` is False.
    :param relax: solve the LP relaxation instead of the MILP (faster, looser, still valid).
    """
    started = time.perf_counter()
    weights = weights or RewardWeights()
    n = day.n_bookings
    model = build_relaxation(day, weights)
    served_value = np.ones_like(model.value)
    # Objective: reward = sum x * (value + refusal_penalty) - refusal_penalty * n.
    reward_gain, reward_optimal = _maximise(model, model.value + weights.refusal_penalty, time_limit_s, relax)
    served, served_optimal = _maximise(model, served_value, time_limit_s, relax)
    served = float(np.floor(served + 1e-6))  # a count: round the bound down to an integer
    return HindsightBound(
        day_id=day.day_id,
        reward_upper_bound=reward_gain - weights.refusal_penalty * n,
        served_upper_bound=served,
        service_rate_upper_bound=served / n if n else float("nan"),
        n_bookings=n,
        optimal=reward_optimal and served_optimal,
        method="lp-relaxation" if relax else "milp-relaxation",
        solve_seconds=time.perf_counter() - started,
    )


def build_relaxation(day: Day, weights: RewardWeights) -> Relaxation:
    """Build the relaxation's pairs, pair values and constraints (module doc, items 1-3)."""
    b, fleet, rules, travel = day.bookings, day.fleet, day.rules, day.travel
    n, k_count = day.n_bookings, day.n_vehicles
    ff, dist = travel.free_flow_min, travel.distance_km
    min_factor = _range_min_table(travel.congestion)
    start, end = fleet.shift_start.astype(float), fleet.shift_end.astype(float)

    boarding = np.asarray(rules.boarding_min)[b.mobility]
    service = boarding + np.asarray(rules.alighting_min)[b.mobility]
    window_end = b.requested_pickup + b.window_min
    latest = window_end + rules.max_lateness_min  # (ii)
    # Earliest pickup: the vehicle reaches the pickup from the depot along some chain of
    # visited nodes, so no sooner than the shortest path over those nodes at the smallest factor.
    from_depot = _shortest_from_depot(ff * travel.congestion.min(), b.pickup_node, b.dropoff_node)
    e = np.maximum(b.requested_pickup[:, None], start[None, :] + from_depot[:, None])  # (n, K)
    ride_factor = min_factor[_hour(e), _hour(latest + boarding)[:, None]]
    ride = ride_factor * ff[b.pickup_node, b.dropoff_node][:, None]
    l = np.minimum(latest[:, None], end[None, :] - service[:, None] - ride)  # noqa: E741
    possible = COMPATIBLE[fleet.vehicle_type][:, b.mobility].T & (e <= l + TOL_MIN)
    # An approach to b on k starts once k is free, between its shift start and b's latest pickup.
    approach_factor = min_factor[_hour(start)[None, :], _hour(np.maximum(l, start[None, :]))]

    approach = np.zeros((n, k_count))
    deadhead = np.zeros((n, k_count))
    leg_min = ff[b.dropoff_node][:, b.pickup_node]  # (n, n): from dropoff of b' to pickup of b
    leg_km = dist[b.dropoff_node][:, b.pickup_node]
    for k in range(k_count):
        finish = e[:, k] + service + ride[:, k]
        may_precede = finish[:, None] + approach_factor[None, :, k] * leg_min <= l[None, :, k] + TOL_MIN
        may_precede &= possible[:, None, k] & possible[None, :, k]
        np.fill_diagonal(may_precede, False)
        approach[:, k] = np.minimum(ff[0, b.pickup_node], np.where(may_precede, leg_min, np.inf).min(axis=0))
        deadhead[:, k] = np.minimum(dist[0, b.pickup_node], np.where(may_precede, leg_km, np.inf).min(axis=0))
    approach *= approach_factor

    pw = np.asarray(weights.priority_weights)[b.priority]
    value = (
        weights.service_reward * pw[:, None]
        - weights.deadhead_per_km * deadhead
        - weights.lateness_per_min * np.maximum(e - window_end[:, None], 0.0)
    )

    booking, vehicle = np.nonzero(possible)
    column = np.full((n, k_count), -1)
    column[booking, vehicle] = np.arange(len(booking))
    rows: list[np.ndarray] = [booking]  # item 1: one row per booking
    cols: list[np.ndarray] = [column[booking, vehicle]]
    vals: list[np.ndarray] = [np.ones(len(booking))]
    rhs: list[np.ndarray] = [np.ones(n)]
    n_rows = n
    for k in range(k_count):
        on_k = np.flatnonzero(possible[:, k])
        busy_from_e = e[on_k, k] - approach[on_k, k]  # I_b when picked up at e ...
        busy_to_e = e[on_k, k] + service[on_k] + ride[on_k, k]
        shift = l[on_k, k] - e[on_k, k]  # ... and shifted by up to l - e
        for coef, limit in (
            _window_rows(busy_from_e, busy_to_e, shift, start[k], end[k]),
            _clique_rows(busy_from_e + shift, busy_to_e),
        ):
            r, c = np.nonzero(coef)
            rows.append(n_rows + r)
            cols.append(column[on_k[c], k])
            vals.append(coef[r, c])
            rhs.append(limit)
            n_rows += len(limit)
    a_ub = sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, len(booking))
    )
    return Relaxation(booking, vehicle, value[booking, vehicle], a_ub, np.concatenate(rhs))


def _window_rows(
    busy_from: np.ndarray, busy_to: np.ndarray, shift: np.ndarray, shift_start: float, shift_end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Energetic rows of one vehicle: per window W, least overlaps with W, and |W| (item 2).

    Trip i occupies [busy_from_i + s, busy_to_i + s) for some s in [0, shift_i].
    """
    t1 = np.arange(shift_start, shift_end, WINDOW_STEP_MIN)
    t1 = np.repeat(t1, len(WINDOW_LENGTHS_MIN))
    t2 = np.minimum(t1 + np.tile(WINDOW_LENGTHS_MIN, len(t1) // len(WINDOW_LENGTHS_MIN)), shift_end)
    t1, t2 = np.append(t1, shift_start), np.append(t2, shift_end)  # and the whole shift

    def overlap(offset: np.ndarray) -> np.ndarray:
        lo = np.maximum((busy_from + offset)[None, :], t1[:, None])
        hi = np.minimum((busy_to + offset)[None, :], t2[:, None])
        return np.maximum(hi - lo, 0.0)

    coef = np.minimum(overlap(0.0), overlap(shift))
    # Keep windows that can bind (their trips could overfill them) and have two or more trips.
    keep = (coef.sum(axis=1) > t2 - t1 + TOL_MIN) & ((coef > 0).sum(axis=1) >= 2)
    return coef[keep], t2[keep] - t1[keep] + TOL_MIN


def _clique_rows(mandatory_from: np.ndarray, mandatory_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clique rows of one vehicle: trips whose mandatory busy parts share a point (item 3)."""
    lo, hi = mandatory_from + TOL_MIN, mandatory_to - TOL_MIN  # shrunk: touching is allowed
    has = np.flatnonzero(lo < hi)
    order = has[np.argsort(lo[has], kind="stable")]
    points = lo[order]
    cover = (lo[None, :] <= points[:, None]) & (points[:, None] < hi[None, :])
    cover[:, np.setdiff1d(np.arange(len(lo)), has)] = False
    # The clique at a start point is maximal unless the next start comes before any of its
    # trips ends (then the next point's clique contains it).
    first_end = np.where(cover, hi[None, :], np.inf).min(axis=1)
    next_point = np.append(points[1:], np.inf)
    keep = (next_point >= first_end) & (cover.sum(axis=1) >= 2)
    return cover[keep].astype(float), np.ones(int(keep.sum()))


def _maximise(model: Relaxation, gain: np.ndarray, time_limit_s: float, relax: bool) -> tuple[float, bool]:
    """Upper bound on max gain @ x over the relaxation, and whether it was proven optimal."""
    trivial = float(np.maximum(gain, 0.0).sum())  # valid without any constraint but bounds
    if len(gain) == 0:
        return 0.0, True
    res = milp(
        -gain,
        integrality=np.zeros(len(gain)) if relax else np.ones(len(gain)),
        bounds=Bounds(0.0, 1.0),
        constraints=LinearConstraint(model.a_ub, -np.inf, model.b_ub),
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6},
    )
    if relax:
        # An LP stopped early has no valid bound; the trivial one always is.
        return (-res.fun, True) if res.status == 0 else (trivial, False)
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not np.isfinite(dual):
        return trivial, False
    return min(-float(dual), trivial), res.status == 0


def _range_min_table(congestion: np.ndarray) -> np.ndarray:
    """table[h1, h2] = smallest congestion factor of hours h1..h2 (inf when h2 < h1)."""
    factors = np.tile(congestion, _HOURS // 24)
    h = np.arange(_HOURS)
    table = np.where(h[None, :] >= h[:, None], factors[None, :], np.inf)
    return np.minimum.accumulate(table, axis=1)


def _hour(minute: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(minute) // 60).astype(np.intp), 0, _HOURS - 1)


def _shortest_from_depot(times: np.ndarray, pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
    """Shortest time from the depot to each booking's pickup over the nodes a vehicle visits."""
    nodes = np.unique(np.concatenate([[0], pickup, dropoff]))
    leg = times[np.ix_(nodes, nodes)]
    best = leg[0].copy()  # nodes[0] == 0, the depot
    while True:  # Bellman-Ford on a dense matrix: relax every edge until nothing improves
        relaxed = np.minimum(best, (best[:, None] + leg).min(axis=0))
        if np.array_equal(relaxed, best):
            break
        best = relaxed
    return best[np.searchsorted(nodes, pickup)]
