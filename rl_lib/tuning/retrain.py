"""The tuner's result is measured, not trusted: re-train the best trials and the default on fresh seeds.

The study picked its best trials on the validation days, each from one noisy run: their values are
biased upward (a maximum over many noisy scores). So the ``top`` best completed trials (distinct
parameters) and the base config ("default") are trained again, each with ``seeds`` fresh seeds that
no tuning run used, at the tuning budget (or ``timesteps``), in ordinary resumable run dirs under
``STUDY_DIR/retrain/runs``. Every best model then plays the same **confirmation days**: validation
days that neither the trials nor the re-trained runs evaluated on (those use the first
``n_eval_episodes`` validation days). The test days stay untouched: choosing a configuration on them
would make every later test-day result of the tuned config a selected one.

Comparison: mean and IQM of the reward with CIs (:func:`rl_lib.stats.aggregate_table`), and each
candidate's paired difference and relative gain against the default (paired two-level bootstrap over
days and seeds), at a Bonferroni-adjusted coverage ``1 - 0.05 / top`` since ``top`` candidates are
tested. The winner is the candidate with the largest mean difference among those whose interval lies
above zero; only then is its config written (``configs/dqn_tuned.yaml``). Otherwise nothing is
written and the decision says why. Either way ``decision.json`` records the measured gain next to the
original plan's hoped-for gain (:data:`PLAN_GAIN`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rl_lib.config import to_dict
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig
from rl_lib.io import atomic_write_csv, atomic_write_json, atomic_write_text
from rl_lib.training.run_record import COMPLETED, RUNS
from rl_lib.tuning.study import TUNING_SEEDS_START, StudySpec, best_trials, load_study, trial_config

DEFAULT = "default"
MIN_SEEDS = 5
PLAN_GAIN = (0.10, 0.15)  # the original plan's expectation (its auto-tuner week), for comparison only
RETRAIN = "retrain"


def candidates(spec: StudySpec, top: int, timesteps: int | None = None) -> dict[str, ExperimentConfig]:
    """The default and the ``top`` best trials' configs, named ``default`` / ``trialN``, same budget."""
    study = load_study(spec)
    best = best_trials(study, top)
    if not best:
        raise UserError(f"study {spec.name!r} has no completed trial yet; run the search first")
    configs = {DEFAULT: trial_config(spec, {}, 0)}
    for t in best:
        configs[f"trial{t.number}"] = trial_config(spec, t.params, t.number)
    out = {}
    for name, config in configs.items():
        training = dataclasses.replace(config.training, name=name, seed=0)
        if timesteps is not None:
            training = dataclasses.replace(training, total_timesteps=timesteps)
        out[name] = dataclasses.replace(config, training=training)
    return out


def check_fresh_seeds(seeds: Sequence[int]) -> None:
    if len(seeds) < MIN_SEEDS or len(set(seeds)) != len(seeds):
        raise UserError(f"re-training needs at least {MIN_SEEDS} distinct seeds, got {list(seeds)}")
    reused = sorted(s for s in seeds if s >= TUNING_SEEDS_START)  # every tuning run's seed is above it
    if reused:
        raise UserError(
            f"seeds {reused} are tuning seeds; re-train with fresh seeds below {TUNING_SEEDS_START}"
        )


def retrain(
    spec: StudySpec,
    top: int = 3,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n_days: int = 30,
    timesteps: int | None = None,
    workers: int | None = None,
    device: str = "cpu",
    n_resamples: int = 2000,
    tuned_config: str | Path | None = "configs/dqn_tuned.yaml",
) -> dict[str, Any]:
    """Re-train, evaluate on ``n_days`` confirmation days, decide; returns the decision (also
    ``decision.json``).

    Writes ``STUDY_DIR/retrain/``: ``per_episode.csv``, ``aggregate.csv``, ``paired_differences.csv``
    (reward against the default), ``relative_differences.csv``, ``decision.json``; and
    ``tuned_config`` only when a candidate beats the default with a CI that excludes zero.
    """
    from rl_lib.evaluation import evaluate_runs
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.stats import aggregate_table, paired_differences, relative_differences
    from rl_lib.training import train_seeds

    if not isinstance(top, int) or top < 1:
        raise UserError(f"--retrain-top must be a positive integer, got {top!r}")
    seeds = [int(s) for s in seeds]
    check_fresh_seeds(seeds)
    configs = candidates(spec, top, timesteps)
    seen = spec.settings.n_eval_episodes  # validation days the trials and the runs' best models saw
    available = spec.base.scenario.splits.validation_days - seen
    if not 0 < n_days <= available:
        raise UserError(f"--confirm-days must be between 1 and {available} (the validation days after the "
                        f"{seen} used for evaluations during training)")  # fmt: skip
    out = spec.study_dir / RETRAIN
    frames = []
    days = SyntheticScenario(spec.base.scenario).days("validation", seen + n_days)[seen:]
    for name, config in configs.items():
        results = train_seeds(config, seeds, out / RUNS, workers, device=device)
        stopped = [str(r.run_dir) for r in results if r.status != COMPLETED]
        if stopped:
            raise UserError(
                f"re-training runs did not complete: {', '.join(stopped)}; run again to resume them"
            )
        frame = evaluate_runs([r.run_dir for r in results], days, config.reward, which="best")
        frames.append(frame.assign(policy=name))
    per_episode = pd.concat(frames, ignore_index=True)
    aggregate = aggregate_table(per_episode, kpis=["reward", "completion_rate"], n_resamples=n_resamples)
    confidence = 1 - 0.05 / (len(configs) - 1)  # Bonferroni over the candidates tested
    paired = paired_differences(per_episode, reference=DEFAULT, kpis=["reward"], n_resamples=n_resamples,
                                confidence=confidence)  # fmt: skip
    relative = relative_differences(per_episode, reference=DEFAULT, n_resamples=n_resamples,
                                    confidence=confidence)  # fmt: skip
    for name, table in (("per_episode", per_episode), ("aggregate", aggregate),
                        ("paired_differences", paired), ("relative_differences", relative)):  # fmt: skip
        atomic_write_csv(table, out / f"{name}.csv")
    decision = decide(aggregate, paired, relative, configs, seeds, n_days, confidence, tuned_config)
    if decision["winner"] is not None and tuned_config is not None:
        write_tuned_config(configs[decision["winner"]], spec, decision, Path(tuned_config))
        decision["tuned_config"] = str(tuned_config)
    atomic_write_json(out / "decision.json", decision)
    return decision


def decide(
    aggregate: pd.DataFrame,
    paired: pd.DataFrame,
    relative: pd.DataFrame,
    configs: dict[str, ExperimentConfig],
    seeds: Sequence[int],
    n_days: int,
    confidence: float,
    tuned_config: str | Path | None,
) -> dict[str, Any]:
    """The winner (or None) and every candidate's measured gain; see the module docstring."""
    reward = aggregate[aggregate["kpi"] == "reward"].set_index("policy")
    rows = []
    for name in configs:
        if name == DEFAULT:
            continue
        diff = paired[paired["policy"] == name].iloc[0]
        rel = relative[relative["policy"] == name].iloc[0]
        rows.append({
            "candidate": name,
            "iqm": float(reward.at[name, "iqm"]),
            "iqm_ci": [float(reward.at[name, "iqm_ci_low"]), float(reward.at[name, "iqm_ci_high"])],
            "mean_diff": float(diff["mean_diff"]),
            "mean_diff_ci": [float(diff["ci_low"]), float(diff["ci_high"])],
            "relative_gain": float(rel["rel_diff"]),
            "relative_gain_ci": [float(rel["ci_low"]), float(rel["ci_high"])],
            "beats_default": bool(diff["ci_low"] > 0),
            "dqn": to_dict(configs[name].training.dqn),
        })  # fmt: skip
    winners = sorted((r for r in rows if r["beats_default"]), key=lambda r: -r["mean_diff"])
    winner = winners[0]["candidate"] if winners else None
    reason = (
        f"{winner} beats the default: its reward difference CI excludes zero"
        if winner
        else f"no candidate beats the default with a CI that excludes zero: {tuned_config or 'nothing'} "
        "not written"
    )
    return {
        "winner": winner,
        "reason": reason,
        "default_iqm": float(reward.at[DEFAULT, "iqm"]),
        "default_iqm_ci": [float(reward.at[DEFAULT, "iqm_ci_low"]), float(reward.at[DEFAULT, "iqm_ci_high"])],
        "candidates": rows,
        "seeds": list(seeds),
        "n_days": n_days,
        "days": "validation days after those seen during training (confirmation days)",
        "confidence": confidence,
        "timesteps": configs[DEFAULT].training.total_timesteps,
        "plan_gain": list(PLAN_GAIN),
    }


def _plan(decision: dict) -> str:
    low, high = decision["plan_gain"]
    return f"+{low:.0%} to +{high:.0%}"


def write_tuned_config(config: ExperimentConfig, spec: StudySpec, decision: dict, path: Path) -> None:
    """The winner's DQN hyperparameters on top of the base config (its budget, seed and checkpoints)."""
    row = next(r for r in decision["candidates"] if r["candidate"] == decision["winner"])
    base = to_dict(spec.base)
    base["training"]["name"] = "dqn_tuned"
    base["training"]["dqn"] = to_dict(config.training.dqn)
    low, high = row["relative_gain_ci"]
    header = (
        f"# Written by rl-lib tune on {dt.date.today().isoformat()}: study {spec.name!r} "
        f"({spec.study_dir}), {decision['winner']}.\n"
        f"# Measured on {decision['n_days']} confirmation (validation) days x {len(decision['seeds'])} fresh "
        f"seeds at {decision['timesteps']} steps: reward gain over the default {row['relative_gain']:+.1%} "
        f"[{low:+.1%}, {high:+.1%}] ({decision['confidence']:.1%} CI, Bonferroni; the plan hoped for "
        f"{_plan(decision)}).\n"
        "# Only the DQN hyperparameters come from the tuner; the rest is the base config.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(base, sort_keys=False))
