"""Optuna hyperparameter search for the DQN (space, study, re-training of the best trials)."""

from rl_lib.tuning.space import DEFAULT_SPACE, SearchSpace
from rl_lib.tuning.study import StudySpec, TuneSettings, load_study, optimize

__all__ = ["DEFAULT_SPACE", "SearchSpace", "StudySpec", "TuneSettings", "load_study", "optimize"]
