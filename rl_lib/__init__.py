"""rl_lib: reinforcement learning for non-emergency medical transport (NEMT) dispatch.

The names below load on first use (:func:`rl_lib.lazy.lazy_attributes`): every ``rl-lib`` command
imports this package first, and most of them need neither gymnasium nor the simulator. Importing
:mod:`rl_lib.envs` (or using one of these names) registers the gymnasium id ``rl_lib/Dispatch-v0``.
"""

from rl_lib.lazy import lazy_attributes

__version__ = "0.1.0"
_LAZY = {
    "ENV_ID": "rl_lib.envs",
    "DispatchEnv": "rl_lib.envs",
    "RewardWeights": "rl_lib.envs",
    "ScenarioConfig": "rl_lib.scenarios.config",
    "SyntheticScenario": "rl_lib.scenarios.synthetic",
}
__all__ = [*_LAZY, "__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
