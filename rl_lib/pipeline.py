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

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rl_lib.config import from_dict
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig, load_experiment, with_overrides
from rl_lib.training.checkpoints import METADATA_SUFFIX
from rl_lib.training.run_record import EVALUATION, RUNS


def use_repository_root() -> Path:
    """Run from the repository root when rl_lib is an editable checkout (interactive Jupyter starts
    in notebooks/, papermill and nbval wherever they were called); elsewhere (an installed wheel,
    Kaggle) stay put. Returns the working directory."""
    import rl_lib

    root = Path(rl_lib.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
        os.chdir(root)
    return Path.cwd()


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise UserError(f"parameter {name}: expected {expected}, got {value!r}")


def load_configs(configs: Sequence[str | dict], overrides: dict[str, Any] | None) -> list[ExperimentConfig]:
    """The experiments of the ``configs`` parameter, each with the ``overrides`` applied.

    An entry is a YAML path, or a config mapping as ``rl-lib kaggle build`` inlines it into a
    kernel notebook (validated like a file); two experiments may not share a run name.
    """
    _check("configs", configs, isinstance(configs, (list, tuple)) and len(configs) > 0 and
           all(isinstance(c, (str, dict)) for c in configs),
           "a non-empty list of YAML paths (or config mappings)")  # fmt: skip
    experiments = [
        with_overrides(
            load_experiment(c)
            if isinstance(c, str)
            else from_dict(ExperimentConfig, c, source=f"configs[{i}]"),
            overrides,
        )
        for i, c in enumerate(configs)
    ]
    names = [e.training.name for e in experiments]
    if len(set(names)) != len(names):
        raise UserError(f"parameter configs: two experiments share a training.name ({names}); their run "
                        "dirs would collide, rename one")  # fmt: skip
    return experiments


def check_seeds(seeds: Any) -> None:
    _check("seeds", seeds, isinstance(seeds, (list, tuple)) and len(seeds) > 0 and
           all(isinstance(s, int) and s >= 0 for s in seeds) and len(set(seeds)) == len(seeds),
           "a non-empty list of distinct non-negative integers")  # fmt: skip


def check_train_parameters(
    seeds: Any, results_dir: Any, workers: Any = None, max_wall_time: Any = None, disk_budget: Any = None
) -> int | None:
    """The checks of :func:`train_step` on its parameters besides the configs (``rl-lib kaggle build``
    makes them too, before a kernel runs them); returns the disk budget in bytes (None: unlimited)."""
    check_seeds(seeds)
    _check("results_dir", results_dir, isinstance(results_dir, str) and results_dir != "", "a folder path")
    _check(
        "workers",
        workers,
        workers is None or (isinstance(workers, int) and workers > 0),
        "a positive integer",
    )
    wall_ok = max_wall_time is None or (isinstance(max_wall_time, (int, float)) and max_wall_time > 0)
    _check("max_wall_time", max_wall_time, wall_ok, "a positive number of seconds")
    return parse_disk_budget(disk_budget)


def parse_disk_budget(disk_budget: Any) -> int | None:
    """The ``disk_budget`` parameter (bytes, or a size such as ``"5GB"``) in bytes; None stays None."""
    from rl_lib.io import parse_size

    if disk_budget is None:
        return None
    try:
        return parse_size(disk_budget)
    except ValueError as exc:
        raise UserError(f"parameter disk_budget: {exc}") from None


def train_step(
    configs: Sequence[str | dict],
    seeds: Sequence[int],
    results_dir: str,
    overrides: dict[str, Any] | None = None,
    workers: int | None = None,
    max_wall_time: float | None = None,
    device: str = "auto",
    disk_budget: int | str | None = None,
) -> pd.DataFrame:
    """Train every config for every seed (in parallel workers); resumes unfinished runs.

    On Kaggle (:func:`rl_lib.training.on_kaggle`), :func:`rl_lib.kaggle.session.prepare_session`
    runs first: a relative ``results_dir`` lies under the working dir, each run is brought from the
    previous kernel version's output (its newest verified checkpoint) when the input holds it,
    ``max_wall_time`` is for the whole step (default: the session limit minus a margin) and every
    run stops by that deadline, and ``disk_budget`` defaults to
    :data:`rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET`.

    :param configs: experiment YAML paths (e.g. ``["configs/dqn.yaml", "configs/maskable_ppo.yaml"]``),
        or config mappings.
    :param overrides: dotted-key overrides applied to every config (the quick / thesis scale).
    :param max_wall_time: seconds per run and session (on Kaggle: for the whole step).
    :param disk_budget: bytes (or a size such as ``"5GB"``) that all the runs may hold together, split
        evenly across them; default unlimited (on Kaggle,
        :data:`~rl_lib.training.checkpoints.KAGGLE_DISK_BUDGET`).
    :return: one row per run: run dir, status, timesteps, target, exit code.
    """
    from rl_lib.training import on_kaggle, train_seeds

    budget = check_train_parameters(seeds, results_dir, workers, max_wall_time, disk_budget)
    experiments = load_configs(configs, overrides)
    runs_dir, deadline = Path(results_dir) / RUNS, None
    if on_kaggle():
        from rl_lib.kaggle.session import prepare_session

        runs = [(e.training.name, int(s)) for e in experiments for s in seeds]
        configs_by_name = {e.training.name: e for e in experiments}  # only copies of these runs resume
        session = prepare_session(results_dir, runs, max_wall_time, budget, configs=configs_by_name)
        runs_dir, deadline, budget, max_wall_time = (
            session.runs_dir,
            session.deadline,
            session.disk_budget,
            None,
        )
    per_run = None if budget is None else budget // (len(experiments) * len(seeds))
    rows = []
    for experiment in experiments:
        results = train_seeds(
            experiment,
            list(seeds),
            runs_dir,
            workers,
            deadline,
            max_wall_time=max_wall_time,
            device=device,
            disk_budget=per_run,
        )
        rows += [dataclasses.asdict(r) for r in results]
    return pd.DataFrame(rows)


def run_dirs(results_dir: str | Path) -> list[Path]:
    """The run dirs under ``results_dir/runs``, sorted."""
    root = Path(results_dir) / RUNS
    found = sorted(p.parent for p in root.glob(f"*/*{METADATA_SUFFIX}"))
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
    (against the nearest-vehicle baseline), ``gap_to_bound.csv``, and ``ablation.csv`` when the runs hold
    several DQN variants (:mod:`rl_lib.ablation`).
    """
    from rl_lib.evaluation import evaluate_baselines, evaluate_runs
    from rl_lib.io import atomic_write_csv
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.training.run_record import read_metadata

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
    tables = evaluation_tables(per_episode, n_resamples)
    # The default DQN ("dqn") first when an ablation holds several DQN variants.
    dqn_runs = sorted((m["name"] != "dqn", m["seed"], run) for run, m in zip(runs, metas, strict=True)
                      if m["algo"] == "dqn")  # fmt: skip
    if dqn_runs:  # the fast inference path, on the lowest-seed DQN and the first 3 test days
        from rl_lib.inference import benchmark, export_onnx

        exported = "best" if which == "latest" else which  # a latest checkpoint is not exported
        export_onnx(dqn_runs[0][-1], exported, int8=True)
        # 3 days (~540 decisions, as `rl-lib bench inference`): enough for a full batch of 256.
        for name, table in benchmark(dqn_runs[0][-1], days[:3], exported).items():
            tables[f"inference_{name}"] = table
    out = Path(results_dir) / EVALUATION
    for name, table in tables.items():
        atomic_write_csv(table, out / f"{name}.csv")
    if len({m["name"] for m in metas if m["algo"] == "dqn"}) > 1:  # an agent study (params/ablation.yaml)
        tables["ablation"] = ablation_step(results_dir, n_resamples)
    return tables


def evaluation_tables(per_episode: pd.DataFrame, n_resamples: int = 2000) -> dict[str, pd.DataFrame]:
    """The evaluation's tables from its per-episode rows: ``per_episode``, ``aggregate``,
    ``paired_differences`` and ``probability_of_improvement`` (against nearest), and ``gap_to_bound``
    when the rows hold the hindsight bound."""
    from rl_lib.stats import aggregate_table, gap_to_bound, paired_differences, probability_of_improvement

    tables = {
        "per_episode": per_episode,
        "aggregate": aggregate_table(per_episode, n_resamples=n_resamples),
        "paired_differences": paired_differences(per_episode, reference="nearest", n_resamples=n_resamples),
        "probability_of_improvement": probability_of_improvement(
            per_episode, reference="nearest", n_resamples=n_resamples
        ),  # fmt: skip
    }
    if (per_episode["policy"] == "hindsight_bound").any():
        agents = [p for p in dict.fromkeys(per_episode["policy"]) if p != "hindsight_bound"]
        tables["gap_to_bound"] = gap_to_bound(per_episode, policies=agents, n_resamples=n_resamples)
    return tables


def ablation_step(results_dir: str | Path, n_resamples: int = 2000) -> pd.DataFrame:
    """The agent study's table (:func:`rl_lib.ablation.ablation_table`) of a results folder's
    evaluation, written to ``evaluation/ablation.csv``."""
    from rl_lib.ablation import ablation_table
    from rl_lib.io import atomic_write_csv
    from rl_lib.training.run_record import read_metadata

    path = Path(results_dir) / EVALUATION / "per_episode.csv"
    if not path.is_file():
        raise UserError(f"{path}: missing; run the evaluation step (notebook 02_evaluate) first")
    runs: dict[str, list[dict]] = {}
    for run in run_dirs(results_dir):
        meta = read_metadata(run)
        if meta.get("best"):
            runs.setdefault(meta["name"], []).append(meta)
    table = ablation_table(pd.read_csv(path), runs, n_resamples)
    atomic_write_csv(table, Path(results_dir) / EVALUATION / "ablation.csv")
    return table


def figures_step(
    results_dir: str,
    lang: str = "fr",
    figures_dir: str = "thesis_figures",
    tables_dir: str = "latex/generated",
    agent: str = "dqn",
    tuning: str | None = None,
    tuning_storage: str | None = None,
) -> list[Path]:
    """Every Chapter 7 figure and table from the results of :func:`train_step` and :func:`evaluate_step`,
    and of a tuning study when there is one.

    Rule 5: the inputs are checked first (evaluation tables, run dirs, the agent's runs, the study
    folder), and everything is written to staging folders that replace files in ``figures_dir`` and
    ``tables_dir`` only once all is written, so a bad input is one :class:`UserError` and leaves both
    folders as they were. The checkpoint timeline, the training diagnostics and the hyperparameters
    show the agent's lowest-seed run; the numbers quoted in the chapter's text go to ``numbers.tex``
    as macros. The gap to the hindsight bound (``gap_to_bound.csv``) and the agent study
    (``ablation.csv``) are reported when the evaluation wrote them.

    :param agent: the RL policy (its runs' ``training.name``: a DQN or a MaskablePPO) of the
        Baseline-vs-RL table, the hyperparameters and the run shown.
    :param tuning: the folder of a study run by ``rl-lib tune`` (``OUT/STUDY``); default:
        ``results_dir/tuning/STUDY`` when the results folder holds one (notebook 04 writes it).
    :param tuning_storage: the study's storage URL (e.g. ``postgresql+psycopg://user@host/db``); default:
        the SQLite file in the study folder.
    """
    from rl_lib.thesis import figures, tables
    from rl_lib.thesis.style import check_lang
    from rl_lib.training.checkpoints import KAGGLE_DISK_BUDGET
    from rl_lib.training.run_record import metadata_path, read_metadata

    try:
        check_lang(lang)
    except ValueError as exc:
        raise UserError(f"parameter lang: {exc}") from None
    evaluation = Path(results_dir) / EVALUATION
    names = ("aggregate", "paired_differences", "probability_of_improvement")
    inference_names = ("latency", "throughput", "size", "agreement")
    files = {name: evaluation / f"{name}.csv" for name in names}
    inference = {n: evaluation / f"inference_{n}.csv" for n in inference_names}
    for path in files.values():
        if not path.is_file():
            raise UserError(f"{path}: missing; run the evaluation step (notebook 02_evaluate) first")
    for path in inference.values():
        if not path.is_file():
            raise UserError(f"{path}: missing; the evaluation step writes it when a DQN run is evaluated")
    runs = run_dirs(results_dir)
    metas = {run: read_metadata(run) for run in runs}
    agent_runs = sorted((m["seed"], run) for run, m in metas.items() if m["name"] == agent)
    if not agent_runs:
        raise UserError(f"parameter agent: no {agent!r} run under {Path(results_dir) / RUNS}")
    shown = agent_runs[0][1]
    targets = {metas[run]["timesteps"]["target"] for _, run in agent_runs}
    if len(targets) != 1:
        raise UserError(
            f"the {agent} runs have different step targets {sorted(targets)}; evaluate them apart"
        )
    study = _tuning_study(results_dir, tuning)
    gap, ablation = evaluation / "gap_to_bound.csv", evaluation / "ablation.csv"
    aggregate, paired, improvement = (pd.read_csv(files[n]) for n in names)
    frames = {n: pd.read_csv(p) for n, p in inference.items()}

    completion = aggregate.set_index(["policy", "kpi"])["mean"]
    shown_meta = metas[shown]

    def percent(policy: str) -> str:  # the French chapter prints a decimal comma (text mode)
        if (policy, "completion_rate") not in completion.index:
            raise UserError(f"{files['aggregate']}: no completion_rate of {policy}; evaluate it again")
        text = f"{100 * completion[(policy, 'completion_rate')]:.1f}"
        return text.replace(".", ",") if lang == "fr" else text

    numbers = {
        "NumDays": int(aggregate["n_days"].max()),
        "NumSeeds": len(agent_runs),
        "DQNCompletion": percent(agent),  # the agent's, whatever its algorithm (the chapter's name)
        "NearestCompletion": percent("nearest"),
        "BestStep": int(shown_meta["best"]["step"]),
        "TotalSteps": int(shown_meta["timesteps"]["target"]),
        "EvalFreq": int(shown_meta["eval_freq"]),
        "NumEvalDays": int(shown_meta["config"]["training"]["checkpoints"]["n_eval_episodes"]),
        "KaggleDiskBudgetGB": KAGGLE_DISK_BUDGET // 10**9,
    }
    with _staged(Path(figures_dir), Path(tables_dir)) as staging:
        figures_out, tables_out = staging[Path(figures_dir)], staging[Path(tables_dir)]
        try:
            written = [
                figures.learning_curves(runs, figures_out, lang),
                figures.kpi_comparison(aggregate, figures_out, lang, sources=[files["aggregate"]]),
                figures.checkpoint_timeline(shown, figures_out, lang),
                figures.training_diagnostics(shown, figures_out, lang),
                tables.kpi_table(aggregate, tables_out, lang, sources=[files["aggregate"]]),
                tables.baseline_vs_rl_table(aggregate, tables_out, lang, agent=agent,
                                            sources=[files["aggregate"]]),
                tables.paired_differences_table(paired, improvement, tables_out, lang, sources=[
                    files["paired_differences"], files["probability_of_improvement"]]),
                tables.hyperparameters_table(shown_meta["config"], tables_out, lang,
                                             sources=[metadata_path(shown)]),
                tables.numbers_macros(numbers, tables_out,
                                      sources=[files["aggregate"], metadata_path(shown)]),
                figures.inference_latency(frames["latency"], frames["throughput"], figures_out, lang,
                                          sources=list(inference.values())),
                tables.inference_table(*frames.values(), tables_out, lang, sources=list(inference.values())),
            ]  # fmt: skip
            if gap.is_file():  # the evaluation ran the hindsight bound
                written.append(tables.gap_to_bound_table(pd.read_csv(gap), tables_out, lang, sources=[gap]))
            if ablation.is_file():  # the agent study (`rl-lib ablation`, params/ablation.yaml)
                table = pd.read_csv(ablation)
                # The study's reference is the run named like the thesis agent (params/ablation.yaml)
                shown_study = {"reference": agent, "sources": [ablation]}
                written.append(figures.ablation_differences(table, figures_out, lang, **shown_study))
                written.append(tables.ablation_tex(table, tables_out, lang, **shown_study))
            if study is not None:
                from rl_lib.thesis.tuning import tuning_outputs

                written += tuning_outputs(study, figures_out, tables_out, lang, tuning_storage)
        except ValueError as exc:  # a results file without what its table shows
            raise UserError(f"{results_dir}: {exc}") from None
    destination = {folder: final for final, folder in staging.items()}
    return [destination[path.parent] / path.name for path in written]


def _tuning_study(results_dir: str, tuning: str | None) -> Path | None:
    """The study folder the chapter shows: ``tuning``, else the one of ``results_dir/tuning`` (if any)."""
    if tuning is not None:
        return Path(tuning)
    studies = sorted(p.parent for p in (Path(results_dir) / "tuning").glob("*/trials.csv"))
    if len(studies) > 1:
        raise UserError(f"{Path(results_dir) / 'tuning'} holds several studies; the chapter shows one "
                        "(pass tuning=STUDY_DIR, rl-lib thesis --tuning)")  # fmt: skip
    return studies[0] if studies else None


@contextlib.contextmanager
def _staged(*destinations: Path) -> Iterator[dict[Path, Path]]:
    """Destination folder -> a hidden staging folder beside it (one for a folder named twice).

    When the block ends without an error, each staged file replaces its namesake in its destination
    (created then; a rename, on the same file system); on an error nothing is created or replaced.
    The staging folders are removed either way.
    """
    staging: dict[Path, Path] = {}
    try:
        for destination in dict.fromkeys(destinations):
            parent = next(p for p in (destination.parent, *destination.parent.parents) if p.is_dir())
            staging[destination] = Path(tempfile.mkdtemp(prefix=f".{destination.name}-staged-", dir=parent))
        yield staging
        for destination, folder in staging.items():
            destination.mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.iterdir()):
                os.replace(path, destination / path.name)
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
