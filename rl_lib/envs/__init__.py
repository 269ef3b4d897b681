"""Simulation core (no gymnasium) and its gymnasium face, registered as ``rl_lib/Dispatch-v0``."""

from gymnasium.envs.registration import register, registry

from rl_lib.envs.core import KPI_DESCRIPTIONS, DispatchCore, Insertion, Outcome, RewardWeights, Status
from rl_lib.envs.day import Bookings, Day, Fleet, Mobility, Priority, ServiceRules, VehicleType
from rl_lib.envs.dispatch_env import DispatchEnv
from rl_lib.envs.travel import TravelModel

ENV_ID = "rl_lib/Dispatch-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="rl_lib.envs.dispatch_env:DispatchEnv")

__all__ = [
    "ENV_ID", "KPI_DESCRIPTIONS", "Bookings", "Day", "DispatchCore", "DispatchEnv", "Fleet",
    "Insertion", "Mobility", "Outcome", "Priority", "RewardWeights", "ServiceRules", "Status",
    "TravelModel", "VehicleType",
]  # fmt: skip
