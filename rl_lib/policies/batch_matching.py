"""Batch matching: every ``delta_min`` minutes, match the waiting bookings to vehicles at once.

This baseline makes bookings *wait*: a booking becomes due at its decision time but is only
dispatched at the next batch epoch. That is a different protocol from the one-decision-per-
booking gym env, so it drives the simulation core directly rather than bending the env.

At each epoch t (multiples of ``delta_min`` from the day start, plus one final epoch after
the last decision time), every waiting booking is evaluated against every vehicle at time t.
A rectangular assignment problem (``scipy.optimize.linear_sum_assignment``) pairs bookings
with vehicles, at most one booking per vehicle per epoch, minimising the same cost as the
insertion heuristic (``lateness_per_min * lateness + deadhead_per_km * deadhead_km``) minus
the service value, so that serving is always preferred to leaving a booking waiting.
Infeasible pairs are forbidden. A booking with no feasible vehicle left is missed; a
matchable booking that lost the matching waits for the next epoch, unless it is its last
chance, i.e. waiting another ``delta_min`` would make every vehicle infeasible — in that case
it is refused (the core records it as refused, not missed, since a vehicle was available).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from rl_lib.envs.core import DispatchCore
from rl_lib.envs.day import Day

FORBIDDEN = 1e9  # cost of an infeasible pair: never chosen while any feasible pair exists


def run_batch_matching(day: Day, core: DispatchCore | None = None, delta_min: float = 5.0) -> DispatchCore:
    """Play ``day`` with batch matching every ``delta_min`` minutes; returns the core.

    :param delta_min: minutes between two matching epochs (> 0).
    """
    if delta_min <= 0:
        raise ValueError("delta_min must be positive")
    core = core or DispatchCore()
    core.reset(day)
    due = day.bookings.decision_time
    waiting: list[int] = []
    next_booking = 0
    epoch = day.start_min
    while next_booking < day.n_bookings or waiting:
        while next_booking < day.n_bookings and due[next_booking] <= epoch:
            waiting.append(next_booking)
            next_booking += 1
        if waiting:
            insertions = [core.evaluate(b, epoch) for b in waiting]
            feasible = np.array([ins.feasible for ins in insertions])
            reward = np.array([core.serve_reward(b, ins.deadhead_km, ins.lateness)
                               for b, ins in zip(waiting, insertions, strict=True)])  # fmt: skip
            cost = np.where(feasible, -reward, FORBIDDEN)
            rows, cols = linear_sum_assignment(cost)
            matched = {}
            for r, c in zip(rows, cols, strict=True):
                if feasible[r, c]:
                    matched[r] = c
            still_waiting = []
            for r, (b, ins) in enumerate(zip(waiting, insertions, strict=True)):
                if r in matched:
                    core.assign(ins, int(matched[r]))
                elif not ins.n_feasible or not core.evaluate(b, epoch + delta_min).n_feasible:
                    core.refuse(ins)
                else:
                    still_waiting.append(b)
            waiting = still_waiting
        epoch += delta_min
    return core
