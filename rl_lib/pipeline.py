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


def use_repository_root() -> Path:
    """Run from the repository root when rl_lib is an editable checkout (interactive Jupyter starts
    in notebooks/, papermill and nbval wherever they were called); elsewhere (an installed wheel,
    Kaggle) stay put. Returns the working directory."""
    import os

    import rl_lib

    root = Path(rl_lib.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
        os.chdir(root)
    return Path.cwd()


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


def shared_experiment(runs: Sequence[Path], metas: Sequence[dict]) -> ExperimentConfig:
    """The config of runs to be compared: they must share one scenario and one reward."""
    scenario, reward = metas[0]["config"]["scenario"], metas[0]["config"]["reward"]
    for run, meta in zip(runs, metas, strict=True):
        if meta["config"]["scenario"] != scenario or meta["config"]["reward"] != reward:
            raise UserError(f"{run} was trained on another scenario or reward than {runs[0]}; evaluate apart")
    return from_dict(ExperimentConfig, metas[0]["config"], source=str(runs[0]))


def evaluate_step(
    results_dir: str,
    n_test_days: int = 30,
    hindsight: bool = True,
    which: str = "best",
    hindsight_time_limit_s: float = 5.0,
    n_resamples: int = 2000,
    allow_unfinished: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every run's model, every baseline and the hindsight bound on the same held-out test days.

    Writes ``results_dir/evaluation/``: ``per_episode.csv`` (policy x seed x day), ``aggregate.csv``
    (mean and IQM with 95 % CIs), ``paired_differences.csv`` and ``probability_of_improvement.csv``
    (against the nearest-vehicle baseline), ``gap_to_bound.csv``.
    """
    from rl_lib.evaluation import evaluate_baselines, evaluate_runs
    from rl_lib.io import atomic_write_csv
    from rl_lib.run_record import read_metadata
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.stats import aggregate_table, gap_to_bound, paired_differences, probability_of_improvement

    _check("n_test_days", n_test_days, isinstance(n_test_days, int) and n_test_days > 0, "a positive integer")
    _check("which", which, which in ("best", "final", "latest"), "'best', 'final' or 'latest'")
    _check("hindsight", hindsight, isinstance(hindsight, bool), "true or false")
    runs = run_dirs(results_dir)
    metas = [read_metadata(d) for d in runs]
    unfinished = [f"{run.name} ({meta['status']})" for run, meta in zip(runs, metas, strict=True)
                  if meta["status"] != "completed"]  # fmt: skip
    if unfinished and not allow_unfinished:
        raise UserError(f"runs not completed: {', '.join(unfinished)}; finish them (rerun the training "
                        "step) or pass allow_unfinished=True")  # fmt: skip
    config = shared_experiment(runs, metas)
    available = config.scenario.splits.test_days
    if n_test_days > available:
        raise UserError(f"parameter n_test_days: the test split holds {available} days, got {n_test_days}")
    days = SyntheticScenario(config.scenario).days("test", n_test_days)
    per_episode = pd.concat(
        [evaluate_runs(runs, days, config.reward, which),
         evaluate_baselines(days, weights=config.reward, hindsight=hindsight,
                            hindsight_time_limit_s=hindsight_time_limit_s)],
        ignore_index=True,
    )  # fmt: skip
    tables = {
        "per_episode": per_episode,
        "aggregate": aggregate_table(per_episode, n_resamples=n_resamples),
        "paired_differences": paired_differences(per_episode, reference="nearest", n_resamples=n_resamples),
        "probability_of_improvement": probability_of_improvement(
            per_episode, reference="nearest", n_resamples=n_resamples
        ),  # fmt: skip
    }
    if hindsight:
        agents = [p for p in dict.fromkeys(per_episode["policy"]) if p != "hindsight_bound"]
        tables["gap_to_bound"] = gap_to_bound(per_episode, policies=agents, n_resamples=n_resamples)
    dqn_runs = sorted((m["seed"], run) for run, m in zip(runs, metas, strict=True) if m["algo"] == "dqn")
    if dqn_runs:  # the fast inference path, on the lowest-seed DQN and the first test day
        from rl_lib.inference import benchmark, export_onnx

        export_onnx(dqn_runs[0][1], which, int8=True)
        for name, table in benchmark(dqn_runs[0][1], days[:1], which).items():
            tables[f"inference_{name}"] = table
    out = Path(results_dir) / EVALUATION
    for name, table in tables.items():
        atomic_write_csv(table, out / f"{name}.csv")
    return tables


def figures_step(
    results_dir: str,
    lang: str = "fr",
    figures_dir: str = "thesis_figures",
    tables_dir: str = "latex/generated",
    agent: str = "dqn",
) -> list[Path]:
    """Every Chapter 7 figure and table from the results of :func:`train_step` and :func:`evaluate_step`.

    The checkpoint timeline and the training diagnostics show the agent's lowest-seed run; the
    numbers quoted in the chapter's text go to ``numbers.tex`` as macros.
    """
    from rl_lib.run_record import metadata_path, read_metadata
    from rl_lib.thesis import figures, tables
    from rl_lib.thesis.style import check_lang

    try:
        check_lang(lang)
    except ValueError as exc:
        raise UserError(f"parameter lang: {exc}") from None
    evaluation = Path(results_dir) / EVALUATION
    names = ("aggregate", "paired_differences", "probability_of_improvement")
    files = {name: evaluation / f"{name}.csv" for name in names}
    for path in files.values():
        if not path.is_file():
            raise UserError(f"{path}: missing; run the evaluation step (notebook 02_evaluate) first")
    aggregate, paired, improvement = (pd.read_csv(files[n]) for n in names)
    runs = run_dirs(results_dir)
    metas = {run: read_metadata(run) for run in runs}
    agent_runs = sorted((m["seed"], run) for run, m in metas.items() if m["algo"] == agent)
    if not agent_runs:
        raise UserError(f"parameter agent: no {agent!r} run under {Path(results_dir) / RUNS}")
    shown = agent_runs[0][1]
    targets = {metas[run]["timesteps"]["target"] for _, run in agent_runs}
    if len(targets) != 1:
        raise UserError(
            f"the {agent} runs have different step targets {sorted(targets)}; evaluate them apart"
        )
    figures_out, tables_out = Path(figures_dir), Path(tables_dir)
    written = [
        figures.learning_curves(runs, figures_out, lang),
        figures.kpi_comparison(aggregate, figures_out, lang, sources=[files["aggregate"]]),
        figures.checkpoint_timeline(shown, figures_out, lang),
        figures.training_diagnostics(shown, figures_out, lang),
        tables.kpi_table(aggregate, tables_out, lang, sources=[files["aggregate"]]),
        tables.baseline_vs_rl_table(aggregate, tables_out, lang, agent=agent, sources=[files["aggregate"]]),
        tables.paired_differences_table(paired, improvement, tables_out, lang, sources=[
            files["paired_differences"], files["probability_of_improvement"]]),
        tables.hyperparameters_table(metas[shown]["config"], tables_out, lang,
                                     sources=[metadata_path(shown)]),
    ]  # fmt: skip
    completion = aggregate.set_index(["policy", "kpi"])["mean"]
    shown_meta = metas[shown]

    def percent(policy: str) -> str:  # the French chapter prints a decimal comma (text mode)
        text = f"{100 * completion[(policy, 'completion_rate')]:.1f}"
        return text.replace(".", ",") if lang == "fr" else text

    numbers = {
        "NumDays": int(aggregate["n_days"].max()),
        "NumSeeds": len(agent_runs),
        "DQNCompletion": percent(agent),
        "NearestCompletion": percent("nearest"),
        "BestStep": int(shown_meta["best"]["step"]),
        "TotalSteps": int(shown_meta["timesteps"]["target"]),
        "EvalFreq": int(shown_meta["eval_freq"]),
        "NumEvalDays": int(shown_meta["config"]["training"]["checkpoints"]["n_eval_episodes"]),
    }
    written.append(
        tables.numbers_macros(numbers, tables_out, sources=[files["aggregate"], metadata_path(shown)])
    )
    inference = {n: evaluation / f"inference_{n}.csv" for n in ("latency", "throughput", "size", "agreement")}
    missing = [str(p) for p in inference.values() if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: missing; the evaluation step writes it when a DQN run is evaluated")
    frames = {n: pd.read_csv(p) for n, p in inference.items()}
    sources = list(inference.values())
    written.append(figures.inference_latency(frames["latency"], frames["throughput"], figures_out, lang,
                                             sources=sources))  # fmt: skip
    written.append(tables.inference_table(*frames.values(), tables_out, lang, sources=sources))
    return written
