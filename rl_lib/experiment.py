"""The experiment configuration file: a scenario and the reward weights (YAML).

```yaml
scenario: {...}   # rl_lib.scenarios.config.ScenarioConfig; omitted keys keep their defaults
reward: {...}     # rl_lib.envs.core.RewardWeights
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rl_lib.config import from_dict, load_yaml
from rl_lib.envs.core import RewardWeights
from rl_lib.scenarios.config import ScenarioConfig


@dataclass(frozen=True)
class ExperimentConfig:
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)


def load_experiment(path: str | Path | None) -> ExperimentConfig:
    """Load and validate an experiment YAML; None gives the built-in default scenario."""
    if path is None:
        return ExperimentConfig()
    return from_dict(ExperimentConfig, load_yaml(path), where=str(path))
