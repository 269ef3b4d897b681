"""Train params/ablation.yaml's runs in priority order on every core, resumably (what this session ran).

The pipeline's train step trains one config's seeds at a time, which leaves a core idle when the
seeds do not divide evenly; this queue keeps both cores busy. The run dirs are the pipeline's own
(results/ablation/runs/{name}_seed{seed}), so `rl-lib` and notebook 02 evaluate them as usual and a
rerun resumes or skips each run.

    python benchmarks/ablation/run.py [NAME:SEEDS ...]   # e.g. dqn:0-4 dqn_mlp:0-4 dqn_no_double:0-2
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from rl_lib.pipeline import load_configs
from rl_lib.training import seed_run_dir, train_seeds
from rl_lib.training.run_record import RUNS

if __name__ == "__main__":
    params = yaml.safe_load(Path("params/ablation.yaml").read_text())
    experiments = {e.training.name: e for e in load_configs(params["configs"], params["overrides"])}
    queue = []
    for item in sys.argv[1:]:
        name, seeds = item.split(":")
        low, _, high = seeds.partition("-")
        queue += [(name, s) for s in range(int(low), int(high or low) + 1)]
    runs = Path(params["results_dir"]) / RUNS
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_seeds, experiments[n], [s], runs, 1) for n, s in queue]
        for (name, seed), future in zip(queue, futures, strict=True):
            result = future.result()[0]
            print(
                f"{seed_run_dir(runs, experiments[name], seed)}: {result.status} {result.timesteps}",
                flush=True,
            )
