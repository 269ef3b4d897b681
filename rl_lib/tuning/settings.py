"""What every trial of a tuning study runs (:class:`TuneSettings`), the one place its defaults live.

Light on purpose (no Optuna, no torch): ``rl-lib tune --help`` shows these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl_lib.errors import UserError


@dataclass(frozen=True)
class TuneSettings:
    """What every trial of a study runs; fixed at creation (a resumed study must match).

    :param timesteps_per_trial: training steps of one trial (the default budget: 50 trials run in
        under an hour on a 2-core CPU with 2 workers; see BENCHMARKS.md).
    :param n_evaluations: evaluations per trial, each reported to the pruner.
    :param n_eval_episodes: validation days per evaluation.
    :param seed: the sampler's seed.
    :param pruning: MedianPruner on (True) or no pruning (False, the benchmark's reference).
    :param n_startup_trials: TPE's random start-up trials.
    :param pruner_startup_trials: trials completed before the pruner prunes anything.
    :param pruner_warmup_evaluations: evaluations of a trial before it can be pruned.
    """

    timesteps_per_trial: int = 20_000
    n_evaluations: int = 10
    n_eval_episodes: int = 5
    seed: int = 0
    pruning: bool = True
    n_startup_trials: int = 10
    pruner_startup_trials: int = 5
    pruner_warmup_evaluations: int = 3

    def __post_init__(self) -> None:
        for name in ("timesteps_per_trial", "n_evaluations", "n_eval_episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(
                    f"tuning setting {name} must be a positive integer, got {getattr(self, name)!r}"
                )
        for name in ("seed", "n_startup_trials", "pruner_startup_trials", "pruner_warmup_evaluations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise UserError(f"tuning setting {name} must be a non-negative integer")
        if self.timesteps_per_trial < 2 * self.n_evaluations:
            raise UserError(
                f"timesteps_per_trial ({self.timesteps_per_trial}) is too small for {self.n_evaluations} "
                "evaluations per trial; raise it or lower n_evaluations"
            )

    @property
    def eval_freq(self) -> int:
        return self.timesteps_per_trial // self.n_evaluations

    @classmethod
    def given(cls, **values: Any) -> TuneSettings:
        """Settings with ``values`` where they are not None and the defaults elsewhere: what a command
        line or a notebook left unset takes the default above, written nowhere else."""
        return cls(**{name: value for name, value in values.items() if value is not None})
