"""The dueling head against the default DQN on validation days the checkpoint selection never saw.

Each run's best model was chosen on the first `n_eval_episodes` (10) validation days; days 10-49 of
the validation split are held out from that choice and are not test days, so a default may be
chosen on them (rule: nothing is chosen on test days).

    python benchmarks/ablation/validation_dueling.py
"""

from pathlib import Path

from rl_lib.evaluation import evaluate_runs
from rl_lib.io import atomic_write_csv
from rl_lib.pipeline import shared_experiment
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.stats import aggregate_table, paired_differences
from rl_lib.training.run_record import read_metadata

OUT = Path("benchmarks/results/ablation")

if __name__ == "__main__":
    runs = [
        Path(f"results/ablation/runs/{name}_seed{seed}")
        for name in ("dqn", "dqn_dueling")
        for seed in range(5)
    ]
    config = shared_experiment(runs, [read_metadata(r) for r in runs])
    selection = config.training.checkpoints.n_eval_episodes
    split = config.scenario.splits.validation_days
    days = SyntheticScenario(config.scenario).days("validation", split)[selection:]
    rows = evaluate_runs(runs, days, config.reward, "best")
    atomic_write_csv(rows, OUT / "validation_dueling_per_episode.csv")
    diff = paired_differences(rows, reference="dqn", n_resamples=2000)
    atomic_write_csv(diff, OUT / "validation_dueling_vs_default.csv")
    print(f"validation days {selection}-{split - 1} ({len(days)} days), best models, 5 seeds each")
    table = aggregate_table(rows, n_resamples=2000)
    print(table[table["kpi"] == "reward"][["policy", "mean", "mean_ci_low", "mean_ci_high"]].to_string())
    print(diff[diff["kpi"] == "reward"].to_string())
