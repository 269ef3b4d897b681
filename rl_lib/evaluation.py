"""Evaluate policies on a set of days: per-episode KPI rows and a summary with 95 % CIs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

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
) -> pd.DataFrame:
    """One row per (policy, day, seed) with the day's KPIs.

    The hindsight bound adds one row per day (seed -1) whose ``reward`` and
    ``completion_rate`` are upper bounds; its other KPIs are NaN (it builds no schedule).
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
                kpis = BASELINES[name](day, core, seed).kpis()
                rows.append({"policy": name, "day_id": day.day_id, "seed": seed, **kpis})
        if hindsight:
            from rl_lib.policies.hindsight import hindsight_bound

            bound = hindsight_bound(day, weights, time_limit_s=hindsight_time_limit_s)
            rows.append(
                {
                    "policy": HINDSIGHT,
                    "day_id": day.day_id,
                    "seed": -1,
                    "reward": bound.reward_upper_bound,
                    "n_bookings": float(bound.n_bookings),
                    "served": bound.served_upper_bound,
                    "completion_rate": bound.service_rate_upper_bound,
                }
            )
    return pd.DataFrame(rows)


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean (NaNs ignored)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    mean = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return mean, mean, mean
    low, high = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


def summarize(per_episode: pd.DataFrame, kpis: Sequence[str] = SUMMARY_KPIS) -> pd.DataFrame:
    """Per policy and KPI: mean, 95 % CI bounds and the number of episodes."""
    rows = []
    for policy, group in per_episode.groupby("policy", sort=False):
        for kpi in kpis:
            mean, low, high = mean_ci(group[kpi].to_numpy())
            rows.append({"policy": policy, "kpi": kpi, "mean": mean, "ci_low": low, "ci_high": high,
                         "n": int(group[kpi].notna().sum())})  # fmt: skip
    return pd.DataFrame(rows)


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


def run_agent_episode(model, env, day_index: int, deterministic: bool = True) -> dict[str, float]:
    """Play one day with a masked SB3 agent (MaskableDQN or MaskablePPO); returns its KPIs.

    :param env: a plain (non-vectorised) :class:`~rl_lib.envs.DispatchEnv`.
    """
    obs, info = env.reset(options={"day_index": day_index})
    terminated = False
    while not terminated:
        action, _ = model.predict(obs, deterministic=deterministic, action_masks=env.action_masks())
        obs, _, terminated, truncated, info = env.step(int(action))
        if truncated:
            raise RuntimeError("DispatchEnv episodes are never truncated")
    return {"day_id": info["day_id"], **info["kpis"]}


def evaluate_agent(model, env, n_episodes: int, deterministic: bool = True) -> pd.DataFrame:
    """One row of KPIs per day for the first ``n_episodes`` days of ``env`` (each day once)."""
    n = min(n_episodes, len(env.days))
    return pd.DataFrame([run_agent_episode(model, env, i, deterministic) for i in range(n)])
