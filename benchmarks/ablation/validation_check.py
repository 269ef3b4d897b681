"""A variant of the agent study against its reference on validation days the checkpoint selection
never saw (what a default may be chosen on).

Each run's best model was chosen on the first `n_eval_episodes` (10) validation days; days 10-49 of
the validation split are held out from that choice and are not test days, so a default may be
chosen on them (rule: nothing is chosen on test days). The reference's rows are read from the
committed `validation_dueling_per_episode.csv` when its runs are not on this machine (evaluation
is deterministic: a greedy policy on fixed days; the dueling check evaluated them first).

    python benchmarks/ablation/validation_check.py dqn_dueling     # the check the default rests on
    python benchmarks/ablation/validation_check.py dqn_attention --runs /elsewhere/results/ablation/runs
"""

import argparse
from pathlib import Path

import pandas as pd

from rl_lib.evaluation import evaluate_runs
from rl_lib.io import atomic_write_csv
from rl_lib.pipeline import shared_experiment
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.stats import aggregate_table, paired_differences
from rl_lib.training.run_record import read_metadata

OUT = Path("benchmarks/results/ablation")
REFERENCE = "dqn"
COMMITTED_REFERENCE = OUT / "validation_dueling_per_episode.csv"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="the variant's run name, e.g. dqn_dueling")
    parser.add_argument("--runs", default="results/ablation/runs", help="folder of the study's run dirs")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    names = [REFERENCE, args.variant]
    local = [n for n in names if all((Path(args.runs) / f"{n}_seed{s}").is_dir() for s in range(args.seeds))]
    if args.variant not in local:
        parser.error(f"{args.variant}'s {args.seeds} run dirs are not under {args.runs}")
    runs = [Path(args.runs) / f"{n}_seed{s}" for n in local for s in range(args.seeds)]
    config = shared_experiment(runs, [read_metadata(r) for r in runs])
    selection = config.training.checkpoints.n_eval_episodes
    split = config.scenario.splits.validation_days
    days = SyntheticScenario(config.scenario).days("validation", split)[selection:]
    rows = evaluate_runs(runs, days, config.reward, "best")
    if REFERENCE not in local:
        committed = pd.read_csv(COMMITTED_REFERENCE)
        rows = pd.concat([committed[committed["policy"] == REFERENCE], rows], ignore_index=True)
    tag = args.variant.removeprefix("dqn_")
    atomic_write_csv(rows, OUT / f"validation_{tag}_per_episode.csv")
    diff = paired_differences(rows, reference=REFERENCE, n_resamples=2000)
    atomic_write_csv(diff, OUT / f"validation_{tag}_vs_default.csv")
    print(f"validation days {selection}-{split - 1} ({len(days)} days), best models, {args.seeds} seeds each")
    table = aggregate_table(rows, n_resamples=2000)
    print(table[table["kpi"] == "reward"][["policy", "mean", "mean_ci_low", "mean_ci_high"]].to_string())
    print(diff[diff["kpi"] == "reward"].to_string())
