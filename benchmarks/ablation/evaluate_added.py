"""Add newly completed runs of the agent study to its committed evaluation (what this session ran).

The evaluation of `params/ablation.yaml` (every run's best model, every baseline and the LP bound on
the same 100 test days) takes hours; a run finished later is evaluated alone on those days and its
rows joined to `benchmarks/results/ablation/per_episode.csv`, then every table is recomputed
(aggregate, paired differences against nearest and against the default, P(improvement), gap to the
bound, the study's table, runs.csv). VIEW gets symlinks to the runs the tables cover.

    python benchmarks/ablation/evaluate_added.py results/ablation_eval5 dqn_dueling_seed2 ...
    cp results/ablation_eval5/evaluation/*.csv benchmarks/results/ablation/
"""

import argparse
import shutil
from pathlib import Path

import pandas as pd

from rl_lib.evaluation import evaluate_runs
from rl_lib.io import atomic_write_csv
from rl_lib.pipeline import ablation_step, evaluation_tables, run_dirs, shared_experiment
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.stats import paired_differences
from rl_lib.training.run_record import EVALUATION, RUNS, read_metadata

COMMITTED = Path("benchmarks/results/ablation")
N_RESAMPLES = 2000

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("view", help="the folder the recomputed tables go to (VIEW/evaluation)")
    parser.add_argument("runs", nargs="+", help="run dir names under results/ablation/runs to add")
    parser.add_argument("--source", default="results/ablation/runs")
    args = parser.parse_args()
    old = pd.read_csv(COMMITTED / "per_episode.csv")
    evaluated = {
        (p, int(s)) for p, s in old[["policy", "seed"]].dropna().drop_duplicates().itertuples(index=False)
    }
    view = Path(args.view)
    (view / RUNS).mkdir(parents=True, exist_ok=True)
    for run in sorted(Path(args.source).iterdir()):
        meta = read_metadata(run)
        if meta["status"] == "completed" and (
            (meta["name"], meta["seed"]) in evaluated or run.name in args.runs
        ):
            link = view / RUNS / run.name
            if not link.exists():
                link.symlink_to(run.resolve())
    runs = run_dirs(view)
    config = shared_experiment(runs, [read_metadata(r) for r in runs])
    days = SyntheticScenario(config.scenario).days("test", old["day_id"].nunique())
    added = evaluate_runs([view / RUNS / name for name in args.runs], days, config.reward, "best")
    per_episode = pd.concat([old, added], ignore_index=True)
    out = view / EVALUATION
    tables = evaluation_tables(per_episode, N_RESAMPLES)  # the evaluation step's own tables
    tables["paired_differences_vs_default"] = paired_differences(per_episode, reference="dqn",
                                                                 n_resamples=N_RESAMPLES)  # fmt: skip
    rows = []
    for run in runs:
        meta = read_metadata(run)
        best = meta.get("best") or {}
        rows.append({"run": run.name, "name": meta["name"], "seed": meta["seed"],
                     "steps": meta["timesteps"]["done"], "best_step": best.get("step"),
                     "best_validation_reward": best.get("mean_reward"),
                     "wall_time_s": meta.get("wall_time_s"),
                     "git_commit": meta.get("git_commit")})  # fmt: skip
    tables["runs"] = pd.DataFrame(rows)
    for name, table in tables.items():
        atomic_write_csv(table, out / f"{name}.csv")
    for committed in COMMITTED.glob("inference_*.csv"):  # the default's seed 0: unchanged
        shutil.copy(committed, out / committed.name)
    print(ablation_step(view, N_RESAMPLES).to_string())
