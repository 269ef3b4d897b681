"""A/B experiments: arms, allocation, the randomisation unit and sticky assignment.

``experiments/*.yaml`` (validated like every config, one line per mistake)::

    name: agent-vs-insertion
    salt: ab-2026-12          # change it to re-randomise; keep it to keep every assignment
    unit: switchback          # or: booking
    block_hours: 24           # switchback blocks: 24 = whole service days, or blocks of N hours
    by_region: true           # one unit per (block, region)
    arms:
      - {name: agent, policy: model, weight: 0.5}
      - {name: control, policy: insertion, weight: 0.5}

**Why switchback is the default.** Randomising each booking (the plan's design) lets both arms share
one fleet: a vehicle the agent commits is busy for the control's next booking, so each arm's choices
change the other's state, and the difference measured is not the difference either policy would make
on its own (interference; SUTVA fails). A switchback unit (a block of service time in one region)
gives the whole fleet to one arm for the whole block; units are then independent samples of each
arm's effect, at the price of fewer units (days instead of bookings) and thus wider intervals:
``rl-lib ab report`` gives the power calculation.

**Assignment** is a pure function of (salt, unit id): the first 8 bytes of sha256(salt:unit) as a
uniform number in [0, 1), mapped onto the cumulative arm weights. The same unit gets the same arm
after a restart, on every replica, without shared state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from rl_lib.config import bounded, from_dict, load_yaml
from rl_lib.errors import ConfigError
from rl_lib.serving.policy import POLICIES

UNITS = ("switchback", "booking")


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str = bounded("model", choices=POLICIES)
    weight: float = bounded(0.5, min=0.0, max=1.0)


@dataclass(frozen=True)
class Experiment:
    """An A/B experiment (see the module docstring); the default is one arm, the model, everywhere."""

    name: str = "model-only"
    salt: str = "rl-lib"
    unit: str = bounded("switchback", choices=UNITS)
    block_hours: float = bounded(24.0, min=0.25, max=24.0)
    by_region: bool = True
    arms: tuple[Arm, ...] = (Arm("agent", "model", 1.0),)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if not self.arms or len(set(names)) != len(names):
            raise ValueError("arms: give at least one arm, with distinct names")
        if abs(sum(a.weight for a in self.arms) - 1.0) > 1e-9:
            raise ValueError(f"arms: weights must sum to 1, got {sum(a.weight for a in self.arms):g}")
        if (24.0 / self.block_hours) % 1 > 1e-9:
            raise ValueError("block_hours must divide 24 (blocks must not straddle midnight)")

    def unit_id(self, service_day: dt.date, region: str, now_min: float, booking_id: str) -> str:
        """The randomisation unit of a decision."""
        if self.unit == "booking":
            return f"{service_day.isoformat()}/booking/{booking_id}"
        block = int(now_min // (self.block_hours * 60.0))
        where = region if self.by_region else "all"
        return f"{service_day.isoformat()}/{where}/block{block}"

    def arm(self, unit_id: str) -> Arm:
        """The arm of a unit: sticky (a pure function of the salt and the unit id)."""
        digest = hashlib.sha256(f"{self.salt}:{unit_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        cumulative = 0.0
        for arm in self.arms:
            cumulative += arm.weight
            if u < cumulative:
                return arm
        return self.arms[-1]

    @property
    def needs_model(self) -> bool:
        return any(a.policy == "model" for a in self.arms)


def load_experiment_file(path: str | Path | None) -> Experiment:
    """The experiment of a YAML file (its keys at the top level); None: the model-only default."""
    if path is None:
        return Experiment()
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of experiment keys")
    return from_dict(Experiment, data, source=str(path))
