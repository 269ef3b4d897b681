"""Training: the loop and the three-level checkpoint system it runs on.

==================  ===========================================================================
``loop``            ``train(config) -> run dir``, top to bottom; several seeds (``train_seeds``)
``callbacks``       KPI logging, level-2 evaluation (best model), level-1 checkpoints, stop requests
``checkpoints``     the checkpoint manager: 2 rotating latest (with replay buffer), best, final;
                    sha256 manifests, the disk budget
``resume``          what exact resume restores: random streams, the env mid-episode, the buffer
``run_record``      the run dir's names, its metadata (config, code commit, history), exit codes
==================  ===========================================================================

The loop's names load on first use (:func:`rl_lib.lazy.lazy_attributes`): the run record and the
checkpoint manager are read by evaluation, serving and Kaggle tooling, which must not pay for torch
and Stable-Baselines3 to read a run's metadata.
"""

from rl_lib.lazy import lazy_attributes

_LAZY = {
    name: "rl_lib.training.loop"
    for name in (
        "DIVERGED_ADVICE", "STOPPED_BY_CALLER", "TrainResult", "check_same_experiment",
        "config_difference", "count_episodes", "default_run_dir", "load_checkpoint", "load_weights",
        "make_eval_env", "make_train_env", "on_kaggle", "quick", "seed_run_dir", "train", "train_seeds",
    )
}  # fmt: skip
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
