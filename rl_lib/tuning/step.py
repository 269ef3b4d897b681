"""The tuning step of the thesis pipeline (notebooks/04_tune.ipynb): search, re-train, figures.

Files in, files out, like :mod:`rl_lib.pipeline`: the study lives in ``results_dir/tuning/STUDY``
(SQLite storage, trial run dirs, ``trials.csv``, ``retrain/``), the figures and tables of the
chapter's tuning section go to ``figures_dir`` and ``tables_dir``. Running it again resumes the
study, skips completed trials and re-training runs, and regenerates the outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rl_lib.errors import UserError

TUNING = "tuning"


def tune_step(
    config: str,
    results_dir: str,
    n_trials: int = 50,
    workers: int = 1,
    timesteps_per_trial: int | None = None,
    evaluations_per_trial: int | None = None,
    eval_episodes: int | None = None,
    seed: int | None = None,
    pruning: bool | None = None,
    overrides: dict[str, Any] | None = None,
    space: str | None = None,
    study: str = "dqn",
    storage: str | None = None,
    retrain_top: int = 3,
    retrain_seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4),
    retrain_timesteps: int | None = None,
    confirm_days: int = 30,
    tuned_config: str | None = "configs/dqn_tuned.yaml",
    figures_dir: str = "thesis_figures",
    tables_dir: str = "latex/generated",
    lang: str = "fr",
    max_wall_time: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run (or resume) the study, re-train its best trials on fresh seeds, write the tuning outputs.

    :param timesteps_per_trial: training steps of one trial; this and the next four are the study's
        :class:`~rl_lib.tuning.settings.TuneSettings` (``evaluations_per_trial`` its ``n_evaluations``,
        ``eval_episodes`` its ``n_eval_episodes``), None taking its default.
    :param overrides: dotted-key overrides of the base config (the quick scale), as in ``train_step``.
    :param tuned_config: where a proven winner's config is written (None: nowhere).
    :return: ``trials`` (one row per trial), ``decision`` (the re-training's), ``outputs`` (paths).
    """
    from rl_lib.experiment import load_experiment, with_overrides
    from rl_lib.thesis.tuning import tuning_outputs
    from rl_lib.training.run_record import EXIT_COMPLETED
    from rl_lib.tuning.retrain import retrain
    from rl_lib.tuning.settings import TuneSettings
    from rl_lib.tuning.study import make_spec, optimize

    for name, value in (("n_trials", n_trials), ("workers", workers), ("retrain_top", retrain_top)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"parameter {name}: expected a positive integer, got {value!r}")
    settings = TuneSettings.given(
        timesteps_per_trial=timesteps_per_trial,
        n_evaluations=evaluations_per_trial,
        n_eval_episodes=eval_episodes,
        seed=seed,
        pruning=pruning,
    )
    base = with_overrides(load_experiment(config), overrides)
    spec = make_spec(base, study, Path(results_dir) / TUNING, storage, space, settings)
    if optimize(spec, n_trials, workers, max_wall_time, device) != EXIT_COMPLETED:
        raise UserError("the tuning stopped before its budget was used; run the step again to resume it")
    decision = retrain(spec, retrain_top, list(retrain_seeds), confirm_days, retrain_timesteps,
                       workers, device, tuned_config=tuned_config)  # fmt: skip
    outputs = tuning_outputs(spec.study_dir, figures_dir, tables_dir, lang, storage)
    return {"trials": pd.read_csv(spec.study_dir / "trials.csv"), "decision": decision, "outputs": outputs}
