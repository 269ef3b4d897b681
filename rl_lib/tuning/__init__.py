"""Optuna hyperparameter search for the DQN (space, study, re-training of the best trials).

The names below load on first use (:func:`rl_lib.lazy.lazy_attributes`): ``rl-lib --help`` imports
:mod:`rl_lib.tuning.cli`, and with it this package, which must not pull Optuna and torch.
"""

from rl_lib.lazy import lazy_attributes

_LAZY = {
    "DEFAULT_SPACE": "rl_lib.tuning.space",
    "SearchSpace": "rl_lib.tuning.space",
    "StudySpec": "rl_lib.tuning.study",
    "TuneSettings": "rl_lib.tuning.settings",
    "load_study": "rl_lib.tuning.study",
    "optimize": "rl_lib.tuning.study",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
