"""rl_lib: reinforcement learning for non-emergency medical transport (NEMT) dispatch."""

from rl_lib.envs import ENV_ID, DispatchEnv, RewardWeights
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.synthetic import SyntheticScenario

__version__ = "0.1.0"
__all__ = ["ENV_ID", "DispatchEnv", "RewardWeights", "ScenarioConfig", "SyntheticScenario", "__version__"]
