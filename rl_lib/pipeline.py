"""The steps the notebooks run (and ``make quickstart`` / ``make thesis`` through them).

``train_step`` -> ``evaluate_step`` -> ``figures_step``, each reading and writing files under one
results folder, so that every number downstream is traceable to a file::

    results_dir/runs/{name}_seed{seed}/       run dirs (three-level checkpoints, metadata)
    results_dir/evaluation/per_episode.csv    every policy x test day x seed
    results_dir/evaluation/*.csv              aggregate, paired differences, P(improvement), gap

Notebook parameters arrive untyped (papermill, YAML): each step checks them first and
raises :class:`~rl_lib.errors.UserError` with one line naming the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rl_lib.config import from_dict, to_dict
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig, load_experiment

RUNS, EVALUATION = "runs", "evaluation"


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise UserError(f"parameter {name}: expected {expected}, got {value!r}")


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any] | None) -> ExperimentConfig:
    """Apply dotted-key overrides (``{"training.total_timesteps": 3000}``), validated like a file."""
    if not overrides:
        return config
    _check("overrides", overrides, isinstance(overrides, dict), "a mapping of dotted keys to values")
    data = to_dict(config)
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UserError(f"parameter overrides: {key!r} does not name a config section")
            node = node[part]
        node[leaf] = value
    return from_dict(ExperimentConfig, data, source="parameter overrides")


def train_step(
    configs: Sequence[str],
    seeds: Sequence[int],
    results_dir: str,
    overrides: dict[str, Any] | None = None,
    workers: int | None = None,
    max_wall_time: float | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """Train every config for every seed (in parallel workers); resumes unfinished runs.

    :param configs: experiment YAML paths (e.g. ``["configs/dqn.yaml", "configs/maskable_ppo.yaml"]``).
    :param overrides: dotted-key overrides applied to every config (the quick / thesis scale).
    :return: one row per run: run dir, status, timesteps, target, exit code.
    """
    from rl_lib.training import train_seeds

    _check("configs", configs, isinstance(configs, (list, tuple)) and len(configs) > 0 and
           all(isinstance(c, str) for c in configs), "a non-empty list of YAML paths")  # fmt: skip
    _check("seeds", seeds, isinstance(seeds, (list, tuple)) and len(seeds) > 0 and
           all(isinstance(s, int) and s >= 0 for s in seeds) and len(set(seeds)) == len(seeds),
           "a non-empty list of distinct non-negative integers")  # fmt: skip
    _check("results_dir", results_dir, isinstance(results_dir, str) and results_dir != "", "a folder path")
    _check(
        "workers",
        workers,
        workers is None or (isinstance(workers, int) and workers > 0),
        "a positive integer",
    )
    experiments = [with_overrides(load_experiment(path), overrides) for path in configs]
    rows = []
    for experiment in experiments:
        results = train_seeds(
            experiment,
            list(seeds),
            Path(results_dir) / RUNS,
            workers,
            max_wall_time=max_wall_time,
            device=device,
        )
        rows += [dataclasses.asdict(r) for r in results]
    return pd.DataFrame(rows)


def run_dirs(results_dir: str | Path) -> list[Path]:
    """The run dirs under ``results_dir/runs``, sorted."""
    root = Path(results_dir) / RUNS
    found = sorted(p.parent for p in root.glob("*/*_training_metadata.json"))
    if not found:
        raise UserError(f"{root}: no run dir; run the training step (notebook 01_train) first")
    return found
