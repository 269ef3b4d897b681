"""Evaluate policies on a set of days: per-episode KPI rows and a summary with 95 % CIs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rl_lib.envs.core import DispatchCore, RewardWeights
from rl_lib.envs.day import Day
from rl_lib.policies import BASELINES

HINDSIGHT = "hindsight_bound"
SUMMARY_KPIS = (
    "reward", "completion_rate", "on_time_rate", "mean_lateness_min", "p95_lateness_min",
    "mean_deadhead_km", "total_km", "utilisation",
)  # fmt: skip


def evaluate_baselines(
    days: Sequence[Day],
    policies: Iterable[str] | None = None,
    weights: RewardWeights | None = None,
    seeds: Sequence[int] = (0,),
    hindsight: bool = True,
    hindsight_time_limit_s: float = 5.0,
    hindsight_relax: bool = True,
) -> pd.DataFrame:
    """One row per (policy, day, seed) with the day's KPIs.

    The hindsight bound adds one row per day (seed -1) whose ``reward`` and
    ``completion_rate`` are upper bounds; its other KPIs are NaN (it builds no schedule).
    By default it is the LP relaxation's bound: deterministic, so a rerun gives the same number on
    any machine. The MILP's dual bound (``hindsight_relax=False``) is at most ~1 % tighter on default
    days but depends on how far HiGHS gets within its time limit, i.e. on the machine's speed.
    """
    names = list(BASELINES) if policies is None else list(policies)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; choose among {', '.join(BASELINES)}")
    core = DispatchCore(weights)
    rows = []
    for day in days:
        for name in names:
            for seed in seeds:
                start = time.perf_counter()
                kpis = BASELINES[name](day, core, seed).kpis()
                rows.append(episode_row(name, seed, day, kpis, time.perf_counter() - start))
        if hindsight:
            from rl_lib.policies.hindsight import hindsight_bound

            bound = hindsight_bound(day, weights, time_limit_s=hindsight_time_limit_s, relax=hindsight_relax)
            bound_kpis = {
                "reward": bound.reward_upper_bound,
                "n_bookings": float(bound.n_bookings),
                "served": bound.served_upper_bound,
                "completion_rate": bound.service_rate_upper_bound,
            }
            rows.append(episode_row(HINDSIGHT, -1, day, bound_kpis, None))
    return pd.DataFrame(rows)


def episode_row(policy: str, seed: int, day: Day, kpis: dict, seconds: float | None) -> dict:
    """One per-episode row: the day's KPIs, reward per decision, and wall ms per decision.

    ``decision_ms`` is the whole day's wall time (evaluating candidates, choosing, applying)
    divided by its bookings, the same measure for baselines and agents; None for the bound.
    """
    n = day.n_bookings
    return {
        "policy": policy,
        "seed": seed,
        "day_id": day.day_id,
        **kpis,
        "reward_per_step": kpis["reward"] / n,
        "decision_ms": float("nan") if seconds is None else 1000.0 * seconds / n,
    }


def summarize(per_episode: pd.DataFrame, kpis: Sequence[str] = SUMMARY_KPIS) -> pd.DataFrame:
    """Per policy and KPI: mean and 95 % CI, from the evaluation protocol's paired bootstrap
    (:func:`rl_lib.stats.aggregate_table`: the one interval method of the project)."""
    from rl_lib.stats import aggregate_table

    table = aggregate_table(per_episode, kpis=[k for k in kpis if k in per_episode.columns])
    return table.rename(columns={"mean_ci_low": "ci_low", "mean_ci_high": "ci_high"})


def format_table(summary: pd.DataFrame) -> str:
    """A wide text table, one row per policy: ``mean [low, high]`` per KPI."""

    def cell(r: pd.Series) -> str:
        if np.isnan(r["mean"]):
            return "n/a"
        digits = 3 if abs(r["mean"]) < 10 else 1
        return f"{r['mean']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"

    cells = summary.assign(cell=summary.apply(cell, axis=1))
    wide = cells.pivot(index="policy", columns="kpi", values="cell")
    order = list(dict.fromkeys(summary["policy"]))
    columns = [k for k in dict.fromkeys(summary["kpi"]) if k in wide.columns]
    return wide.loc[order, columns].to_string()


def run_agent_episode(
    model, env, day_index: int, deterministic: bool = True
) -> tuple[dict[str, float], float]:
    """Play one day with a masked SB3 agent (MaskableDQN or MaskablePPO).

    :param env: a plain (non-vectorised) :class:`~rl_lib.envs.DispatchEnv`.
    :return: the day's KPIs and the episode's wall time in seconds (after the reset).
    """
    obs, info = env.reset(options={"day_index": day_index})
    terminated = False
    start = time.perf_counter()
    while not terminated:
        action, _ = model.predict(obs, deterministic=deterministic, action_masks=env.action_masks())
        obs, _, terminated, truncated, info = env.step(int(action))
        if truncated:
            raise RuntimeError("DispatchEnv episodes are never truncated")
    return info["kpis"], time.perf_counter() - start


def evaluate_agent(
    model, env, n_episodes: int, deterministic: bool = True, policy: str = "agent", seed: int = 0
) -> pd.DataFrame:
    """One row of KPIs per day for the first ``n_episodes`` days of ``env`` (each day once)."""
    rows = []
    for i in range(min(n_episodes, len(env.days))):
        kpis, seconds = run_agent_episode(model, env, i, deterministic)
        rows.append(episode_row(policy, seed, env.days[i], kpis, seconds))
    return pd.DataFrame(rows)


def evaluate_runs(run_dirs: Sequence[Path], days: Sequence[Day], weights: RewardWeights | None = None,
                  which: str = "best") -> pd.DataFrame:  # fmt: skip
    """Each run's ``which`` model on ``days``; policy = its ``training.name``, seed = its training seed."""
    from rl_lib.agents import load_model
    from rl_lib.envs import DispatchEnv
    from rl_lib.training.run_record import read_metadata

    frames = []
    for run_dir in run_dirs:
        meta = read_metadata(run_dir)
        model = load_model(run_dir, which, device="cpu")
        env = DispatchEnv(days=list(days), reward=weights)
        frames.append(evaluate_agent(model, env, len(days), policy=meta["name"], seed=int(meta["seed"])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
