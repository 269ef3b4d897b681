"""A DQN trained on the default 12-vehicle fleet dispatches a 16-vehicle fleet (no retraining).

The fleet network scores each vehicle with shared weights, so it reads any fleet size
(rl_lib.agents.fleet); the Dispatcher builds each decision's observation with the env's own code.
The 16-vehicle scenario is the default with a third more vehicles (8 cars, 5 wheelchair vans, 3
stretcher units) and a third more demand; its test days are played by every trained run given and by
the baselines, and the per-day rewards are compared with rl_lib.stats (paired bootstrap).

    python benchmarks/fleet_transfer.py OUT.csv RUN_DIR... [--days 30]
"""

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from rl_lib.evaluation import episode_row, evaluate_baselines
from rl_lib.inference import Dispatcher
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.stats import aggregate_table, paired_differences
from rl_lib.training.run_record import read_metadata


def scenario_16() -> ScenarioConfig:
    base = ScenarioConfig()
    fleet = dataclasses.replace(base.fleet, n_cars=8, n_wheelchair_vans=5, n_stretcher_units=3)
    demand = dataclasses.replace(base.demand, advance_per_day=base.demand.advance_per_day * 16 / 12,
                                 same_day_per_day=base.demand.same_day_per_day * 16 / 12)  # fmt: skip
    return dataclasses.replace(base, name="fleet16", fleet=fleet, demand=demand)


if __name__ == "__main__":
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    days = SyntheticScenario(scenario_16()).days("test", args.days)
    rows = []
    for run in args.runs:
        meta = read_metadata(Path(run))
        dispatcher = Dispatcher(run, "torch")
        for day in days:
            start = time.perf_counter()
            kpis = dispatcher.play(day)
            rows.append(episode_row(f"{meta['name']} (12 -> 16)", int(meta["seed"]), day, kpis,
                                    time.perf_counter() - start))  # fmt: skip
    episodes = pd.concat([pd.DataFrame(rows), evaluate_baselines(days, hindsight=False)], ignore_index=True)
    episodes.to_csv(args.out, index=False)
    aggregate = aggregate_table(episodes, kpis=["reward", "completion_rate"])
    print(aggregate[["policy", "kpi", "mean", "mean_ci_low", "mean_ci_high"]].to_string(index=False))
    for reference in ("batch_matching", "nearest"):
        diff = paired_differences(episodes, reference, ["reward"])
        print(diff[["policy", "reference", "mean_diff", "ci_low", "ci_high"]].to_string(index=False))
