"""The agent study: every trained variant next to the strongest heuristics, on the same test days.

:func:`ablation_table` turns a per-episode table (a results folder's ``evaluation/per_episode.csv``:
``params/ablation.yaml`` through the pipeline's train and evaluate steps; the evaluate step writes
the table to ``evaluation/ablation.csv``, see :func:`rl_lib.pipeline.ablation_step`) into one row
per agent (its ``training.name``), with

- its mean reward per test day with the 95 % CI of the paired two-level bootstrap;
- the paired difference to batch matching and to nearest feasible, with 95 % CIs;
- the probability that it beats batch matching on a day, with its CI;
- the share of batch matching's gap to the hindsight bound it closes, with its CI;
- the seeds and days behind each row, and the step of each seed's best model as a share of its run
  (a learning curve that peaks in its first 10 % has not learned).

Every number comes from :mod:`rl_lib.stats`, the one interval method of the project.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rl_lib.errors import UserError

BASELINE_NAMES = ("random", "nearest", "insertion", "batch_matching", "hindsight_bound")
REFERENCES = ("batch_matching", "nearest")


def ablation_table(per_episode: pd.DataFrame, runs: dict[str, list[dict]] | None = None,
                   n_resamples: int = 2000) -> pd.DataFrame:  # fmt: skip
    """The study's table (module docstring) from a per-episode table.

    :param runs: agent name -> the metadata of its runs (for the best-model step); optional.
    """
    from rl_lib.stats import aggregate_table, gap_closed, paired_differences, probability_of_improvement

    agents = [p for p in dict.fromkeys(per_episode["policy"]) if p not in BASELINE_NAMES]
    missing = [r for r in REFERENCES if r not in set(per_episode["policy"])]
    if not agents or missing:
        raise UserError("the evaluation holds no agent or lacks a baseline (" + ", ".join(missing) + "); "
                        "run the evaluation step with every baseline first")  # fmt: skip
    reward = per_episode[["policy", "seed", "day_id", "reward"]]
    kept = reward[reward["policy"].isin([*agents, *REFERENCES, "hindsight_bound"])]
    aggregate = aggregate_table(kept, kpis=["reward"], n_resamples=n_resamples).set_index("policy")
    table = pd.DataFrame({"policy": agents}).set_index("policy")
    table["reward"] = aggregate.loc[agents, "mean"]
    table["reward_ci_low"] = aggregate.loc[agents, "mean_ci_low"]
    table["reward_ci_high"] = aggregate.loc[agents, "mean_ci_high"]
    for reference in REFERENCES:
        diff = paired_differences(kept, reference, ["reward"], agents, n_resamples).set_index("policy")
        table[f"diff_{reference}"] = diff["mean_diff"]
        table[f"diff_{reference}_ci_low"] = diff["ci_low"]
        table[f"diff_{reference}_ci_high"] = diff["ci_high"]
    poi = probability_of_improvement(kept, "batch_matching", policies=agents, n_resamples=n_resamples)
    poi = poi.set_index("policy")
    table["p_beats_batch_matching"] = poi["prob_improvement"]
    table["p_ci_low"], table["p_ci_high"] = poi["ci_low"], poi["ci_high"]
    if "hindsight_bound" in set(per_episode["policy"]):
        closed = gap_closed(kept, "batch_matching", policies=agents, n_resamples=n_resamples).set_index(
            "policy"
        )
        table["gap_closed"] = closed["gap_closed"]
        table["gap_closed_ci_low"], table["gap_closed_ci_high"] = closed["ci_low"], closed["ci_high"]
    counts = per_episode[per_episode["policy"].isin(agents)].groupby("policy")
    table["n_seeds"] = counts["seed"].nunique()
    table["n_days"] = counts["day_id"].nunique()
    if runs:
        # The earliest best model over the seeds, as a share of the run: a curve that peaks in its
        # first 10 % has not learned.
        table["best_step_share_min"] = pd.Series(
            {
                name: min(m["best"]["step"] / m["timesteps"]["target"] for m in metas)
                for name, metas in runs.items()
            }
        )
    return table.reset_index()


def format_ablation(table: pd.DataFrame) -> str:
    """The table as text: ``mean [low, high]`` cells."""

    def cell(row, column: str, digits: int = 1) -> str:
        value, low, high = row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"]
        if np.isnan(value):
            return "n/a"
        return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"

    lines = []
    for _, r in table.iterrows():
        parts = [
            f"{r['policy']:<24}",
            f"reward {r['reward']:7.1f}",
            f"vs batch {cell(r, 'diff_batch_matching')}",
            f"vs nearest {cell(r, 'diff_nearest')}",
            f"P(beats batch) {r['p_beats_batch_matching']:.2f} [{r['p_ci_low']:.2f}, {r['p_ci_high']:.2f}]",
        ]
        if "gap_closed" in r:
            parts.append(f"gap closed {cell(r, 'gap_closed', 3)}")
        parts.append(f"{int(r['n_seeds'])} seeds x {int(r['n_days'])} days")
        lines.append("  ".join(parts))
    return "\n".join(lines)
