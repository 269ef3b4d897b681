"""Hindsight bound: an upper bound on a day's reward and service rate, every booking known.

No policy that drives the simulation core (random, nearest, insertion, batch matching, RL)
can do better on a day than the best offline schedule of that day, and no offline schedule
can do better than a *relaxation* of the offline problem. The exact offline problem (a
vehicle routing problem with time windows over ~180 trips) is too slow to solve, so
:func:`hindsight_bound` solves a relaxation of it, a small MILP (HiGHS, through
:func:`scipy.optimize.milp`), and reports an upper bound on the relaxation's optimum: the
LP optimum, tightened by the MILP solver's *dual* bound, which stays valid when the solver
stops on its time limit.

**The problem relaxed** is what the core (:mod:`rl_lib.envs.core`) allows for any sequence of
``evaluate`` / ``assign`` calls, in any order and at any decision times. Vehicle k starts at
the depot (node 0), becomes free no earlier than its shift start and serves one trip at a
time; for each trip b it serves, with pickup time p_b and dropoff end D_b:

(i)   k's type carries b's mobility (``COMPATIBLE``);
(ii)  t_req_b <= p_b <= t_req_b + w_b + max_lateness;
(iii) p_b >= F + ff[n, pickup_b] * c, where F is when k became free (its previous dropoff
      end, or its shift start), n where (that dropoff node, or the depot) and c the congestion
      factor of some hour in [hour(F), hour(p_b)];
(iv)  D_b = p_b + boarding_b + ff[pickup_b, dropoff_b] * c' + alighting_b <= shift_end_k, c'
      the factor of some hour in [hour(p_b), hour(p_b + boarding_b)];
(v)   serving b earns service_reward * priority_weight_b - deadhead_per_km * dist[n, pickup_b]
      - lateness_per_min * max(0, p_b - t_req_b - w_b); each booking not served costs
      refusal_penalty.

(The core prices the approach at the hour the vehicle becomes free and the ride at the hour
of pickup; the hour ranges in (iii) and (iv) also cover pricing at the hour of departure.)

**The relaxation** drops all time variables and routing. From (ii)-(iv) alone it computes,
per compatible (booking b, vehicle k), taking for every leg the smallest congestion factor
of the hours it can start in:

- e[b, k], earliest pickup: max(t_req_b, shift_start_k + shortest time from the depot to
  pickup_b through the nodes vehicles visit);
- r[b, k], shortest ride;  l[b, k], latest pickup: min(t_req_b + w_b + max_lateness,
  shift_end_k - boarding_b - r[b, k] - alighting_b);  the pair is kept only if e <= l;
- b' *may precede* b on k when e[b', k] + boarding_b' + r[b', k] + alighting_b' + (least
  time from dropoff_b' to pickup_b) <= l[b, k]: the trip served just before b in any
  schedule passes this test;
- a[b, k], shortest approach: from the depot or from the dropoff of a b' that may precede b;
  likewise the least deadhead km, and the least lateness max(0, e[b, k] - t_req_b - w_b).

It keeps a binary x[b, k] per kept pair and these constraints, each implied by every
schedule of the problem above:

1. each booking is served at most once: sum_k x[b, k] <= 1;
2. *energetic windows*: on vehicle k, trip b keeps the vehicle busy over I_b = [p_b - a[b, k],
   D_b), which starts after k became free (its approach takes at least a[b, k]) and ends when
   k is free again, so the I_b of one vehicle are pairwise disjoint. Hence, for every time
   window W, sum_b x[b, k] * |I_b cap W| <= |W|, where |I_b cap W| is replaced by its least
   value over p_b in [e, l] with D_b >= p_b + boarding + r + alighting (the overlap of a
   sliding interval with W is unimodal in its position: the least is at p_b = e or l). The
   whole shift is one window (the time-capacity constraint); windows of 30 min to 4 h
   starting every 15 min refine it;
3. *clique inequalities*: every possible I_b contains the mandatory part [l - a, e + boarding
   + r + alighting); trips whose mandatory parts share a point cannot share vehicle k, so for
   each such point, the sum of x[b, k] over the trips covering it is <= 1 (the maximal
   cliques of an interval graph, found at left end points).

The objective gives each pair the most that serving b with k can earn in (v): service value
minus the least deadhead and least lateness costs. Every schedule of the problem maps to a
feasible x earning at least its reward, so the relaxation's MILP optimum, any MILP dual
bound and the LP optimum (``relax=True``) all bound the day's reward from above. The served
bound is the same model maximising sum x, rounded down.

What the relaxation gives up, and what makes the bound loose: trips are not sequenced, so
each trip's approach and deadhead are those of its cheapest possible predecessor, not of its
actual one, and the trips of one vehicle interact only through the windows and cliques above.
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
#: every test leans the way that keeps a real schedule feasible.
TOL_MIN = 1e-6
#: Energetic windows: start grid and lengths (minutes), clipped to each shift.
WINDOW_STEP_MIN = 15.0
WINDOW_LENGTHS_MIN = (30.0, 60.0, 120.0, 240.0)
#: Hours covered by the congestion look-up (like the core, a week of hours).
_HOURS = 24 * 7


@dataclass(frozen=True)
class HindsightBound:
    """Upper bounds on what any policy can achieve on one day.

    :param reward_upper_bound: no policy's day reward exceeds this.
    :param served_upper_bound: no policy serves more bookings than this (a whole number).
    :param service_rate_upper_bound: ``served_upper_bound / n_bookings`` (nan for an empty day).
    :param optimal: both models were solved to optimality (the MILPs to a relative gap of 1e-4,
        or the LPs with ``relax``); if not, the bounds are the best ones the solver had at its
        time limit: still valid, a little looser.
    :param method: ``"milp-relaxation"`` or ``"lp-relaxation"``.
    :param solve_seconds: wall-clock time of building and solving the models.
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
    """The relaxation's model: one binary per possible (booking, vehicle) pair.

    :param booking: (m,) booking of each pair.
    :param vehicle: (m,) vehicle of each pair.
    :param value: (m,) upper bound on the reward of serving that booking with that vehicle.
    :param a_ub: (rows, m) constraint matrix of ``a_ub @ x <= b_ub`` (items 1-3 of the module doc).
    :param b_ub: (rows,) right-hand sides.
    """

    booking: np.ndarray
    vehicle: np.ndarray
    value: np.ndarray
    a_ub: sparse.csr_array
    b_ub: np.ndarray


def hindsight_bound(
    day: Day, weights: RewardWeights | None = None, time_limit_s: float = 5.0, relax: bool = False
) -> HindsightBound:
    """Upper bounds on the reward and the bookings served on ``day`` (see the module doc).

    :param day: the day, every booking known in advance.
    :param weights: the reward weights the policies are scored with.
    :param time_limit_s: wall-clock budget of the solves, half for the reward bound, half for
        the served bound. The MILP rarely closes its last gap, but its dual bound settles
        within a second or two; past the budget that bound is reported, ``optimal`` False.
    :param relax: report the LP relaxation only (faster, a little looser, still valid).
    """
    started = time.perf_counter()
    weights = weights or RewardWeights()
    n = day.n_bookings
    model = build_relaxation(day, weights)
    # Maximise sum x * (value + refusal_penalty); the reward is that minus refusal_penalty * n.
    gain, reward_optimal = _upper_bound(
        model, model.value + weights.refusal_penalty, started + time_limit_s / 2, relax
    )
    served, served_optimal = _upper_bound(model, np.ones_like(model.value), started + time_limit_s, relax)
    served = float(np.floor(served + 1e-4))  # a count: round down, past the solver tolerances
    return HindsightBound(
        day_id=day.day_id,
        reward_upper_bound=gain - weights.refusal_penalty * n,
        served_upper_bound=served,
        service_rate_upper_bound=served / n if n else float("nan"),
        n_bookings=n,
        optimal=reward_optimal and served_optimal,
        method="lp-relaxation" if relax else "milp-relaxation",
        solve_seconds=time.perf_counter() - started,
    )


def build_relaxation(day: Day, weights: RewardWeights) -> Relaxation:
    """Build the relaxation's pairs, pair values and constraints (see the module doc).

    :param day: the day.
    :param weights: reward weights, for the pair values.
    """
    b, fleet, rules, travel = day.bookings, day.fleet, day.rules, day.travel
    n, k_count = day.n_bookings, day.n_vehicles
    ff, dist = travel.free_flow_min, travel.distance_km
    min_factor = _range_min_table(travel.congestion)
    start, end = fleet.shift_start.astype(float), fleet.shift_end.astype(float)

    boarding = np.asarray(rules.boarding_min)[b.mobility]
    service = boarding + np.asarray(rules.alighting_min)[b.mobility]
    window_end = b.requested_pickup + b.window_min
    latest = window_end + rules.max_lateness_min  # (ii)
    # A vehicle reaches a pickup from the depot along a chain of visited nodes, each leg at
    # least its free-flow time times the smallest factor.
    from_depot = _shortest_from_depot(ff * travel.congestion.min(), b.pickup_node, b.dropoff_node)
    e = np.maximum(b.requested_pickup[:, None], start[None, :] + from_depot[:, None])  # (n, K)
    # The ride is priced at an hour between the earliest pickup and the latest departure.
    last_hour = np.maximum(_hour(latest + boarding)[:, None], _hour(e))
    ride = min_factor[_hour(e), last_hour] * ff[b.pickup_node, b.dropoff_node][:, None]
    l = np.minimum(latest[:, None], end[None, :] - service[:, None] - ride)  # noqa: E741
    possible = COMPATIBLE[fleet.vehicle_type][:, b.mobility].T & (e <= l + TOL_MIN)
    # An approach to b on k starts once k is free: between its shift start and b's latest pickup.
    approach_factor = min_factor[_hour(start)[None, :], _hour(np.maximum(l, start[None, :]))]

    approach = np.zeros((n, k_count))
    deadhead = np.zeros((n, k_count))
    leg_min = ff[b.dropoff_node][:, b.pickup_node]  # [b', b]: from the dropoff of b' to the pickup of b
    leg_km = dist[b.dropoff_node][:, b.pickup_node]
    for k in range(k_count):
        finish = e[:, k] + service + ride[:, k]
        may_precede = finish[:, None] + approach_factor[None, :, k] * leg_min <= l[None, :, k] + TOL_MIN
        may_precede &= possible[:, None, k] & possible[None, :, k]
        np.fill_diagonal(may_precede, False)
        from_pred = np.where(may_precede, leg_min, np.inf).min(axis=0, initial=np.inf)
        approach[:, k] = approach_factor[:, k] * np.minimum(ff[0, b.pickup_node], from_pred)
        km_pred = np.where(may_precede, leg_km, np.inf).min(axis=0, initial=np.inf)
        deadhead[:, k] = np.minimum(dist[0, b.pickup_node], km_pred)

    priority_weight = np.asarray(weights.priority_weights)[b.priority]
    value = (
        weights.service_reward * priority_weight[:, None]
        - weights.deadhead_per_km * deadhead
        - weights.lateness_per_min * np.maximum(e - window_end[:, None], 0.0)
    )

    booking, vehicle = np.nonzero(possible)
    column = np.full((n, k_count), -1)
    column[booking, vehicle] = np.arange(len(booking))
    rows, cols, vals = [booking], [column[booking, vehicle]], [np.ones(len(booking))]  # item 1
    rhs = [np.ones(n)]
    n_rows = n
    for k in range(k_count):
        on_k = np.flatnonzero(possible[:, k])
        busy_from = e[on_k, k] - approach[on_k, k]  # I_b for a pickup at e ...
        busy_to = e[on_k, k] + service[on_k] + ride[on_k, k]
        slack = l[on_k, k] - e[on_k, k]  # ... delayed by up to l - e
        for coef, limit in (
            _window_rows(busy_from, busy_to, slack, start[k], end[k]),
            _clique_rows(busy_from + slack, busy_to),
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
    busy_from: np.ndarray, busy_to: np.ndarray, slack: np.ndarray, shift_start: float, shift_end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Energetic rows of one vehicle (item 2): least overlap of each trip with each window, |W|.

    Trip i keeps the vehicle busy at least over [busy_from_i + d, busy_to_i + d), d in [0, slack_i].
    """
    t1 = np.repeat(np.arange(shift_start, shift_end, WINDOW_STEP_MIN), len(WINDOW_LENGTHS_MIN))
    t2 = np.minimum(t1 + np.resize(WINDOW_LENGTHS_MIN, len(t1)), shift_end)
    t1, t2 = np.append(t1, shift_start), np.append(t2, shift_end)  # and the whole shift

    def overlap(delay: np.ndarray | float) -> np.ndarray:
        lo = np.maximum((busy_from + delay)[None, :], t1[:, None])
        hi = np.minimum((busy_to + delay)[None, :], t2[:, None])
        return np.maximum(hi - lo, 0.0)

    coef = np.minimum(overlap(0.0), overlap(slack))
    # Keep windows that two or more trips could overfill; the others cannot bind.
    keep = (coef.sum(axis=1) > t2 - t1 + TOL_MIN) & ((coef > 0).sum(axis=1) >= 2)
    return coef[keep], t2[keep] - t1[keep] + TOL_MIN


def _clique_rows(mandatory_from: np.ndarray, mandatory_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clique rows of one vehicle (item 3): trips whose mandatory busy parts share a point."""
    lo, hi = mandatory_from + TOL_MIN, mandatory_to - TOL_MIN  # shrunk: touching is allowed
    has = np.flatnonzero(lo < hi)
    has = has[np.argsort(lo[has], kind="stable")]
    points = lo[has]
    cover = (lo[has][None, :] <= points[:, None]) & (points[:, None] < hi[has][None, :])
    # The clique at a start point is maximal unless the next start comes before any of its
    # trips ends: the next point's clique then contains it.
    first_end = np.where(cover, hi[has][None, :], np.inf).min(axis=1, initial=np.inf)
    next_point = np.append(points[1:], np.inf)
    keep = (next_point >= first_end) & (cover.sum(axis=1) >= 2)
    coef = np.zeros((int(keep.sum()), len(lo)))
    coef[:, has] = cover[keep]
    return coef, np.ones(len(coef))


def _upper_bound(model: Relaxation, gain: np.ndarray, deadline: float, relax: bool) -> tuple[float, bool]:
    """Upper bound on max gain @ x over the model, and whether it was solved to optimality.

    The LP optimum is a bound; the MILP's dual bound, when it is lower, is a tighter one.
    """
    if len(gain) == 0:
        return 0.0, True
    constraints = LinearConstraint(model.a_ub, -np.inf, model.b_ub)
    lp = milp(-gain, bounds=Bounds(0.0, 1.0), constraints=constraints,
              options={"time_limit": max(deadline - time.perf_counter(), 1.0)})  # fmt: skip
    # Without a solved LP (out of time on a loaded machine), each booking is still served at most
    # once: its best pair bounds what it adds (the box x <= 1 alone would count every pair).
    if lp.status == 0:
        bound = -float(lp.fun)
    else:
        best = np.zeros(int(model.booking.max()) + 1)
        np.maximum.at(best, model.booking, np.maximum(gain, 0.0))
        bound = float(best.sum())
    remaining = deadline - time.perf_counter()
    if relax or remaining <= 0:
        return bound, relax and lp.status == 0
    res = milp(-gain, integrality=np.ones(len(gain)), bounds=Bounds(0.0, 1.0), constraints=constraints,
               options={"time_limit": remaining, "mip_rel_gap": 1e-4})  # fmt: skip
    dual = getattr(res, "mip_dual_bound", None)
    if dual is not None and np.isfinite(dual):
        bound = min(bound, -float(dual))
    return bound, res.status == 0


def _range_min_table(congestion: np.ndarray) -> np.ndarray:
    """table[h1, h2]: smallest congestion factor of the hours h1..h2 (inf when h2 < h1)."""
    factors = np.tile(congestion, _HOURS // 24)
    h = np.arange(_HOURS)
    table = np.where(h[None, :] >= h[:, None], factors[None, :], np.inf)
    return np.minimum.accumulate(table, axis=1)


def _hour(minute: np.ndarray | float) -> np.ndarray:
    return np.clip(np.floor_divide(minute, 60.0).astype(np.intp), 0, _HOURS - 1)


def _shortest_from_depot(times: np.ndarray, pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
    """Shortest time from the depot to each booking's pickup, through the nodes vehicles visit.

    Travel matrices need not satisfy the triangle inequality, so the direct leg may not be
    the shortest way there.
    """
    nodes = np.unique(np.concatenate([[0], pickup, dropoff]))  # nodes[0] is the depot
    leg = times[np.ix_(nodes, nodes)]
    best = leg[0].copy()
    while True:  # Bellman-Ford on a dense matrix: relax every edge until nothing improves
        relaxed = np.minimum(best, (best[:, None] + leg).min(axis=0))
        if np.array_equal(relaxed, best):
            break
        best = relaxed
    return best[np.searchsorted(nodes, pickup)]
