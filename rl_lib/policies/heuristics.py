"""Online baselines that decide each booking when it comes up, like the RL agent does.

Each policy looks at the :class:`~rl_lib.envs.core.Insertion` the core computed for the
pending booking and returns a vehicle index, or :data:`REFUSE`. They only ever choose
feasible vehicles, so they obey the same rules as the masked agent.
"""

from __future__ import annotations

import numpy as np

from rl_lib.envs.core import DispatchCore, Insertion
from rl_lib.envs.day import Day

REFUSE = -1


class SequentialPolicy:
    """Base class: decide one booking at a time, in decision order."""

    name = "sequential"

    def reset(self, day: Day, seed: int) -> None:
        """Called at the start of each day (seeded policies reseed here)."""

    def choose(self, core: DispatchCore, insertion: Insertion) -> int:
        raise NotImplementedError


class RandomPolicy(SequentialPolicy):
    """A vehicle drawn uniformly among the feasible ones; refuses only when none is."""

    name = "random"

    def reset(self, day: Day, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, core: DispatchCore, insertion: Insertion) -> int:
        feasible = np.flatnonzero(insertion.feasible)
        return int(self.rng.choice(feasible)) if feasible.size else REFUSE


class NearestPolicy(SequentialPolicy):
    """The feasible vehicle with the fewest empty km to the pickup (ties: earliest pickup)."""

    name = "nearest"

    def choose(self, core: DispatchCore, insertion: Insertion) -> int:
        if not insertion.n_feasible:
            return REFUSE
        order = np.lexsort((insertion.pickup, insertion.deadhead_km, ~insertion.feasible))
        return int(order[0])


class InsertionPolicy(SequentialPolicy):
    """Greedy minimum-cost insertion at the end of a queue.

    Cost = ``lateness_per_min * lateness + deadhead_per_km * deadhead_km`` with the reward's
    own weights, i.e. the feasible vehicle with the best immediate reward.
    """

    name = "insertion"

    def choose(self, core: DispatchCore, insertion: Insertion) -> int:
        if not insertion.n_feasible:
            return REFUSE
        w = core.weights
        cost = w.lateness_per_min * insertion.lateness + w.deadhead_per_km * insertion.deadhead_km
        return int(np.argmin(np.where(insertion.feasible, cost, np.inf)))


def run_sequential(
    policy: SequentialPolicy, day: Day, core: DispatchCore | None = None, seed: int = 0
) -> DispatchCore:
    """Play ``day`` with ``policy`` on the core, one decision per booking; returns the core."""
    core = core or DispatchCore()
    core.reset(day)
    policy.reset(day, seed)
    decision_time = day.bookings.decision_time
    for booking in range(day.n_bookings):
        insertion = core.evaluate(booking, decision_time[booking])
        vehicle = policy.choose(core, insertion)
        if vehicle == REFUSE:
            core.refuse(insertion)
        else:
            core.assign(insertion, vehicle)
    return core
