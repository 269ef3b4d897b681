"""Baselines the RL agent must beat, all on the same simulation core and feasibility rules.

``BASELINES`` maps a name to ``run(day, core, seed) -> core`` (the core holds the day's KPIs
afterwards). The hindsight bound is not a policy but an upper bound: see
:mod:`rl_lib.policies.hindsight`.
"""

from __future__ import annotations

from collections.abc import Callable

from rl_lib.envs.core import DispatchCore
from rl_lib.envs.day import Day
from rl_lib.policies.batch_matching import run_batch_matching
from rl_lib.policies.heuristics import (
    REFUSE,
    InsertionPolicy,
    NearestPolicy,
    RandomPolicy,
    SequentialPolicy,
    run_sequential,
)

BaselineRun = Callable[[Day, DispatchCore, int], DispatchCore]

BASELINES: dict[str, BaselineRun] = {
    "random": lambda day, core, seed: run_sequential(RandomPolicy(), day, core, seed),
    "nearest": lambda day, core, seed: run_sequential(NearestPolicy(), day, core, seed),
    "insertion": lambda day, core, seed: run_sequential(InsertionPolicy(), day, core, seed),
    "batch_matching": lambda day, core, seed: run_batch_matching(day, core, delta_min=5.0),
}

__all__ = [
    "BASELINES", "REFUSE", "InsertionPolicy", "NearestPolicy", "RandomPolicy", "SequentialPolicy",
    "run_batch_matching", "run_sequential",
]  # fmt: skip
