"""The Chapter 7 figures, each drawn from results files and written as a vector PDF.

Every function takes ``out`` (a .pdf path, or a folder: then the default name given in its docstring,
with ``_en`` appended for English) and ``lang`` (``"fr"`` default, or ``"en"``), and returns the path
it wrote. The PDF's Subject names the results files the figure was drawn from.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from rl_lib.errors import UserError
from rl_lib.stats import iqm, stratified_bootstrap_ci
from rl_lib.thesis.style import (
    aggregate_values,
    check_lang,
    figure_size,
    format_steps,
    label,
    new_figure,
    ordered_policies,
    output_path,
    policy_color,
    policy_label,
    save_figure,
    source_note,
    study_label,
    thesis_style,
)
from rl_lib.training import run_record

BOUND = "hindsight_bound"
#: The four panels of :func:`kpi_comparison`.
COMPARISON_KPIS = ("completion_rate", "mean_deadhead_km", "on_time_rate", "p95_lateness_min")
#: TensorBoard scalars of :func:`training_diagnostics`, with their label keys.
DIAGNOSTIC_TAGS = {"rollout/exploration_rate": "epsilon", "train/loss": "loss", "train/mean_q": "mean_q"}
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def read_metadata(run_dir: Path) -> tuple[dict, Path]:
    """A run dir's metadata and the file it was read from (named in the figures it feeds)."""
    return run_record.read_metadata(run_dir), run_record.metadata_path(run_dir)


def evaluation_table(run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, list[Path]]:
    """Every evaluation of every run: columns policy (the run's ``training.name``), run, step,
    mean_reward, completion_rate.

    :return: the table and the metadata files it was read from.
    :raises UserError: a run without any evaluation (it would silently drop out of the curves).
    """
    frames, sources = [], []
    for run_dir in run_dirs:
        meta, path = read_metadata(run_dir)
        evaluations = meta.get("evaluations") or []
        if not evaluations:
            raise UserError(f"{run_dir}: no evaluation in its metadata yet; train it past eval_freq first")
        frame = pd.DataFrame(evaluations)[["step", "mean_reward", "completion_rate"]]
        frames.append(frame.assign(policy=meta["name"], run=str(run_dir)))
        sources.append(path)
    return pd.concat(frames, ignore_index=True), sources


def seed_curves(evaluations: pd.DataFrame, column: str) -> pd.DataFrame:
    """One algorithm's ``column`` as (steps, seeds), on the steps every seed has evaluated.

    Only common steps: an IQM over a set of seeds that changes along the curve would jump where a
    seed's run ends (a run still training, say).

    :raises UserError: the seeds share no evaluation step (different eval_freq, say).
    """
    wide = evaluations.pivot_table(index="step", columns="run", values=column, aggfunc="last").dropna()
    if wide.empty:
        raise UserError(f"the runs of {evaluations['policy'].iloc[0]} share no evaluation step; "
                        "compare runs trained with the same eval_freq")  # fmt: skip
    return wide


def plot_iqm_band(ax: Axes, wide: pd.DataFrame, algo: str, scale: float, name: str | None) -> None:
    """IQM curve of one algorithm over its seeds (columns of ``wide``), with its 95 % bootstrap band.

    At each step the seeds are the sample: :func:`rl_lib.stats.stratified_bootstrap_ci` on that step's
    (seeds x 1) score matrix, whose day draw is then void, so the band is the percentile interval of
    the IQM over seeds resampled with replacement (a single seed: the band is the curve itself).

    :param scale: display factor of the values (100 for a rate shown in %).
    :param name: legend label (None: not in the legend).
    """
    steps = wide.index.to_numpy()
    matrices = {
        str(step): values[:, np.newaxis] for step, values in zip(steps, wide.to_numpy(float), strict=True)
    }
    intervals = stratified_bootstrap_ci(matrices, iqm, BOOTSTRAP_RESAMPLES, 0.95, BOOTSTRAP_SEED)
    rows = np.array(list(intervals.values())) * scale
    color = policy_color(algo)
    ax.plot(steps, rows[:, 0], color=color, label=name)
    ax.fill_between(steps, rows[:, 1], rows[:, 2], color=color, alpha=0.2, linewidth=0)


def learning_curves(run_dirs: Sequence[str | Path], out: str | Path, lang: str = "fr") -> Path:
    """Evaluation reward and service rate against training steps, one line per algorithm.

    Runs are grouped by their ``training.name`` (an algorithm, or an ablation's variant); each line is
    the IQM over the group's seeds with a 95 % bootstrap band over seeds at each step (a single seed:
    the curve alone).

    :param run_dirs: run dirs made by ``rl-lib train`` (several seeds, one or more algorithms).
    :param out: .pdf path or folder (default name ``learning_curves.pdf``).
    :param lang: ``"fr"`` or ``"en"``.
    :return: the PDF written.
    :raises UserError: no run dir, a run dir without metadata or evaluations.
    """
    check_lang(lang)
    if not run_dirs:
        raise UserError("learning_curves: no run dir given")
    evaluations, sources = evaluation_table([Path(d) for d in run_dirs])
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.45))
        reward_ax, completion_ax = fig.subplots(1, 2, sharex=True)
        for algo in ordered_policies(evaluations["policy"]):
            runs = evaluations[evaluations["policy"] == algo]
            seeds = label("seeds", lang).format(n=runs["run"].nunique())
            name = f"{policy_label(algo, lang)} ({seeds})"
            plot_iqm_band(reward_ax, seed_curves(runs, "mean_reward"), algo, 1.0, name)
            plot_iqm_band(completion_ax, seed_curves(runs, "completion_rate"), algo, 100.0, None)
        reward_ax.set_ylabel(label("eval_reward", lang))
        completion_ax.set_ylabel(label("eval_completion", lang))
        for ax in (reward_ax, completion_ax):
            ax.set_xlabel(label("step", lang))
            format_steps(ax)
        fig.legend(title=label("iqm_ci", lang), loc="outside upper center", ncols=3)
        path = output_path(out, "learning_curves", lang, ".pdf")
        return save_figure(fig, path, source_note("figures.learning_curves", sources))


def kpi_comparison(
    aggregate: pd.DataFrame,
    out: str | Path,
    lang: str = "fr",
    *,
    sources: Sequence[str | Path],
    statistic: str = "mean",
) -> Path:
    """Service rate, deadhead km, on-time rate and p95 lateness of every policy, with 95 % CIs.

    One panel per KPI, one point per policy with its interval as an error bar; the hindsight bound,
    where it has the KPI (service rate), is a dashed vertical line with its interval shaded.

    :param aggregate: ``rl_lib.stats.aggregate_table`` output (rates as fractions).
    :param out: .pdf path or folder (default name ``kpi_comparison.pdf``).
    :param lang: ``"fr"`` or ``"en"``.
    :param sources: the results file(s) ``aggregate`` was read from (stored in the PDF).
    :param statistic: ``"mean"`` (default) or ``"iqm"``.
    :return: the PDF written.
    :raises ValueError: bad aggregate table, or none of the four KPIs in it.
    """
    check_lang(lang)
    note = source_note("figures.kpi_comparison", sources)
    values = aggregate_values(aggregate, statistic).dropna(subset=["value"])
    kpis = [k for k in COMPARISON_KPIS if k in values.index.get_level_values("kpi")]
    if not kpis:
        raise ValueError(f"aggregate table has none of the KPIs {', '.join(COMPARISON_KPIS)}")
    policies = [p for p in ordered_policies(values.index.get_level_values("policy")) if p != BOUND]
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.7))
        axes = fig.subplots(2, 2, sharey=True).ravel()
        bound_drawn = False
        for ax, kpi in zip(axes, kpis, strict=False):
            bound_label = None if bound_drawn else policy_label(BOUND, lang)  # one legend entry
            bound_drawn |= plot_policy_intervals(ax, values, kpi, policies, bound_label)
            ax.set_xlabel(label(kpi, lang))
        for ax in axes[len(kpis) :]:
            ax.set_visible(False)
        # Top policy first, as in the tables.
        axes[0].set_yticks(range(len(policies)), [policy_label(p, lang) for p in policies])
        axes[0].set_ylim(len(policies) - 0.5, -0.5)
        if bound_drawn:
            fig.legend(loc="outside lower center")
        return save_figure(fig, output_path(out, "kpi_comparison", lang, ".pdf"), note)


def plot_policy_intervals(
    ax: Axes, values: pd.DataFrame, kpi: str, policies: Sequence[str], bound_label: str | None
) -> bool:
    """One point and interval per policy on ``kpi``; the bound as a dashed line (if it has the KPI).

    :param bound_label: legend label of the bound's line (None: no legend entry).
    :return: whether the bound was drawn.
    """
    for row, policy in enumerate(policies):
        if (policy, kpi) not in values.index:
            continue  # the policy has no value on this KPI: its row stays empty
        value, low, high = values.loc[(policy, kpi), ["value", "low", "high"]]
        ax.errorbar(value, row, xerr=[[value - low], [high - value]], fmt="o", color=policy_color(policy),
                    capsize=2, elinewidth=1)  # fmt: skip
    if (BOUND, kpi) in values.index:
        value, low, high = values.loc[(BOUND, kpi), ["value", "low", "high"]]
        color = policy_color(BOUND)
        ax.axvline(value, color=color, linestyle="--", linewidth=1, label=bound_label)
        ax.axvspan(low, high, color=color, alpha=0.08, linewidth=0)
    ax.grid(axis="y", visible=False)
    return (BOUND, kpi) in values.index


def ablation_differences(table: pd.DataFrame, out: str | Path, lang: str = "fr", *, reference: str = "dqn",
                         sources: Sequence[str | Path]) -> Path:  # fmt: skip
    """The agent study: each variant's paired reward difference to batch matching and to nearest,
    one point and 95 % interval per variant, zero (the heuristic) as a vertical line.

    :param table: ``rl_lib.ablation.ablation_table`` output (``evaluation/ablation.csv``).
    :param reference: the run name of the study's reference, labelled as such.
    :return: the PDF written.
    """
    check_lang(lang)
    rows = table.set_index("policy")
    policies = ordered_policies(rows.index)
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.5))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, heuristic in zip(axes, ("batch_matching", "nearest"), strict=True):
            column = f"diff_{heuristic}"
            for row, policy in enumerate(policies):
                value, low, high = rows.loc[policy, [column, f"{column}_ci_low", f"{column}_ci_high"]]
                ax.errorbar(value, row, xerr=[[value - low], [high - value]], fmt="o",
                            color=policy_color(policy), capsize=2, elinewidth=1)  # fmt: skip
            ax.axvline(0.0, color=policy_color(heuristic), linestyle="--", linewidth=1)
            ax.set_xlabel(label(column, lang))
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(range(len(policies)), [study_label(p, reference, lang) for p in policies])
        axes[0].set_ylim(len(policies) - 0.5, -0.5)
        path = output_path(out, "ablation_differences", lang, ".pdf")
        return save_figure(fig, path, source_note("figures.ablation_differences", sources))


def checkpoint_timeline(run_dir: str | Path, out: str | Path, lang: str = "fr") -> Path:
    """The three-level checkpoint strategy of one run, on a step axis.

    Top: the evaluation reward at each evaluation, new best models marked on it. Bottom, one row
    per level: latest saves (ticks) and their deletions by rotation (crosses), best-model updates,
    the final model.

    :param run_dir: a run dir made by ``rl-lib train``.
    :param out: .pdf path or folder (default name ``checkpoint_timeline.pdf``).
    :param lang: ``"fr"`` or ``"en"``.
    :return: the PDF written.
    :raises UserError: no metadata, or no evaluation in it yet.
    """
    check_lang(lang)
    meta, source = read_metadata(Path(run_dir))
    evaluations = pd.DataFrame(meta.get("evaluations") or [])
    if evaluations.empty:
        raise UserError(f"{run_dir}: no evaluation in its metadata yet; nothing to draw")
    history = pd.DataFrame(meta.get("checkpoint_history") or [], columns=["event", "step"])

    def steps(event: str) -> np.ndarray:
        return history.loc[history["event"] == event, "step"].to_numpy(dtype=float)

    color = policy_color(meta["algo"])
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.55))
        reward_ax, level_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
        reward_ax.plot(evaluations["step"], evaluations["mean_reward"], color=color, marker=".",
                       label=label("eval_reward", lang))  # fmt: skip
        best = evaluations[evaluations["step"].isin(steps("best"))]
        reward_ax.plot(best["step"], best["mean_reward"], linestyle="none", marker="*", markersize=9,
                       color="#E69F00", markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip
        reward_ax.set_ylabel(label("eval_reward", lang))

        # Rows: 2 latest (level 1), 1 best (level 2), 0 final (level 3).
        level_ax.plot(steps("saved"), np.full(steps("saved").size, 2.0), linestyle="none", marker="|",
                      markersize=8, color="0.35", label=label("saved", lang))  # fmt: skip
        level_ax.plot(steps("rotated"), np.full(steps("rotated").size, 2.0), linestyle="none", marker="x",
                      markersize=4, color="#D55E00", label=label("rotated", lang))  # fmt: skip
        level_ax.plot(steps("best"), np.full(steps("best").size, 1.0), linestyle="none", marker="*",
                      markersize=9, color="#E69F00", markeredgecolor="black", markeredgewidth=0.4,
                      label=label("best", lang))  # fmt: skip
        level_ax.plot(steps("final"), np.zeros(steps("final").size), linestyle="none", marker="D",
                      markersize=5, color=color, label=label("final", lang))  # fmt: skip
        level_ax.set_yticks([2, 1, 0], [label(f"level_{k}", lang) for k in ("latest", "best", "final")])
        level_ax.set_ylim(-0.6, 2.6)
        level_ax.grid(axis="y", visible=False)
        level_ax.set_xlabel(label("step", lang))
        format_steps(level_ax)
        fig.legend(loc="outside upper center", ncols=2)
        path = output_path(out, "checkpoint_timeline", lang, ".pdf")
        return save_figure(fig, path, source_note("figures.checkpoint_timeline", [source]))


def tensorboard_scalars(run_dir: str | Path) -> tuple[dict[str, pd.Series], list[Path]]:
    """Every TensorBoard scalar of a run: tag -> values indexed by step.

    Reads each folder under ``run_dir/tensorboard`` with TensorBoard's EventAccumulator, which keeps
    every point (no sampling) and drops the points a resumed run logged again after its checkpoint.

    :return: the scalars and the event folders read.
    :raises UserError: no event file under ``run_dir/tensorboard``.
    """
    # Imported here: tensorboard takes a second to import, and only this figure needs it.
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    folders = sorted({p.parent for p in (Path(run_dir) / "tensorboard").rglob("events.out.tfevents.*")})
    if not folders:
        raise UserError(f"{run_dir}: no TensorBoard event file under {Path(run_dir) / 'tensorboard'}; "
                        "training diagnostics need a run trained with TensorBoard logging")  # fmt: skip
    points: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    scalars = {}
    for tag, pairs in points.items():
        series = pd.Series([v for _, v in pairs], index=[s for s, _ in pairs], name=tag)
        scalars[tag] = series[~series.index.duplicated(keep="last")].sort_index()
    return scalars, folders


def training_diagnostics(run_dir: str | Path, out: str | Path, lang: str = "fr") -> Path:
    """Exploration rate, training loss and mean Q-value against training steps (three panels).

    A panel whose scalar the algorithm does not log (PPO has no epsilon or Q-value) says so.

    :param run_dir: a run dir made by ``rl-lib train``.
    :param out: .pdf path or folder (default name ``training_diagnostics.pdf``).
    :param lang: ``"fr"`` or ``"en"``.
    :return: the PDF written.
    :raises UserError: the run has no TensorBoard events, or none of the three scalars.
    """
    check_lang(lang)
    scalars, folders = tensorboard_scalars(run_dir)
    if not any(tag in scalars for tag in DIAGNOSTIC_TAGS):
        raise UserError(f"{run_dir}: its TensorBoard events hold none of {', '.join(DIAGNOSTIC_TAGS)}")
    algo = read_metadata(Path(run_dir))[0]["algo"]
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.38))
        axes = fig.subplots(1, 3, sharex=True)
        for ax, (tag, key) in zip(axes, DIAGNOSTIC_TAGS.items(), strict=True):
            ax.set_title(label(key, lang))
            ax.set_xlabel(label("step", lang))
            format_steps(ax)
            if tag not in scalars:
                ax.text(0.5, 0.5, textwrap.fill(label("not_logged", lang), 18), transform=ax.transAxes,
                        ha="center", va="center", color="0.4")  # fmt: skip
                ax.set_yticks([])
                continue
            series = scalars[tag]
            ax.plot(series.index, series.to_numpy(), color=policy_color(algo), linewidth=0.9)
            if key == "loss" and (series > 0).all():
                ax.set_yscale("log")  # TD losses span orders of magnitude
        path = output_path(out, "training_diagnostics", lang, ".pdf")
        return save_figure(fig, path, source_note("figures.training_diagnostics", folders))


def inference_latency(latency: pd.DataFrame, throughput: pd.DataFrame, out: str | Path, lang: str = "fr", *,
                      sources: Sequence[str | Path]) -> Path:  # fmt: skip
    """Decision latency (p50, p95, p99) and batched throughput per inference backend, log scales.

    :param latency: ``rl_lib.inference.benchmark``'s latency table (backend, p50_ms, p95_ms, p99_ms).
    :param throughput: its throughput table (backend, batch, decisions_per_s).
    :param out: .pdf path or folder (default name ``inference_latency.pdf``).
    :param sources: the results files the tables were read from.
    """
    check_lang(lang)
    backends = list(dict.fromkeys(latency["backend"]))
    colors = dict(zip(backends, ("#0072B2", "#E69F00", "#009E73"), strict=False))
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.45))
        lat_ax, thr_ax = fig.subplots(1, 2)
        positions = np.arange(len(backends))
        quantiles = (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^"))
        for offset, (column, marker) in zip((-0.2, 0.0, 0.2), quantiles, strict=True):
            values = latency.set_index("backend").loc[backends, column]
            lat_ax.scatter(positions + offset, values, marker=marker, color=[colors[b] for b in backends],
                           label=column.split("_")[0])  # fmt: skip
        lat_ax.set_yscale("log")
        lat_ax.set_xticks(positions, [label(b, lang) for b in backends], rotation=15)
        lat_ax.set_ylabel(label("latency_ms", lang))
        lat_ax.legend(loc="upper right")
        for backend in backends:
            part = throughput[throughput["backend"] == backend].sort_values("batch")
            thr_ax.plot(part["batch"], part["decisions_per_s"], marker="o", color=colors[backend],
                        label=label(backend, lang))  # fmt: skip
        thr_ax.set_xscale("log")
        thr_ax.set_yscale("log")
        thr_ax.set_xlabel(label("batch_size", lang))
        thr_ax.set_ylabel(label("throughput", lang))
        thr_ax.legend(loc="lower right")
        path = output_path(out, "inference_latency", lang, ".pdf")
        return save_figure(fig, path, source_note("figures.inference_latency", sources))
