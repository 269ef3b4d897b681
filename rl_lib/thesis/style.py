"""One look for every thesis figure and table: sizes, fonts, colours, labels, output files.

Figures are built inside ``with thesis_style():`` (a :func:`matplotlib.rc_context`, so nothing leaks
into a notebook's other plots) and written by :func:`save_figure`: vector PDF, fonts embedded as
TrueType (Type 42), written atomically, no creation date (the same inputs give the same bytes).
Labels are French by default (the thesis language); ``lang="en"`` gives English ones.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from rl_lib.io import atomic_write_bytes

# Width of the thesis text block, in inches: the one number to change if the layout changes. Get it
# from the thesis itself (put ``\the\textwidth`` in the text: it prints points), divide by 72.27 and
# set it here; every figure size follows, and figures included without ``width=`` keep 9 pt text.
# 6.3 in: A4 with 2.5 cm margins (latex/main.tex), 21 cm - 2 x 2.5 cm = 16 cm = 455 pt.
TEXT_WIDTH_IN = 6.3
ASPECT = 0.618  # height / width of a single panel (golden ratio)

# DejaVu Sans ships with matplotlib: every machine draws the same glyphs, French accents included.
FONT_FAMILY = "DejaVu Sans"

#: Policies in the order every figure and table lists them: RL agents, baselines, the bound.
POLICY_ORDER = ("dqn", "maskable_ppo", "batch_matching", "insertion", "nearest", "random", "hindsight_bound")

#: One colour per policy, the same in every figure (Okabe-Ito: distinguishable with colour blindness).
POLICY_COLORS: dict[str, str] = {
    "dqn": "#0072B2",
    "maskable_ppo": "#D55E00",
    "batch_matching": "#CC79A7",
    "insertion": "#009E73",
    "nearest": "#E69F00",
    "random": "#7F7F7F",
    "hindsight_bound": "#000000",
}
# Policies not listed above get one of these, chosen from their name: stable across figures.
SPARE_COLORS = ("#56B4E9", "#8C564B", "#BCBD22", "#17BECF", "#9467BD")

RC: dict[str, object] = {
    "font.family": "sans-serif",
    "font.sans-serif": [FONT_FAMILY],
    "mathtext.fontset": "dejavusans",
    # 9 pt text in a figure included at its natural width, next to 11 pt body text.
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "legend.frameon": False,
    "axes.unicode_minus": True,
    # The figure keeps exactly its size (no tight bbox): text stays 9 pt in the PDF.
    "figure.constrained_layout.use": True,
    "savefig.format": "pdf",
    "savefig.dpi": 300,
    # TrueType (Type 42) embedding: Type 3 fonts are rejected by some publishers and render badly.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "axes.prop_cycle": cycler(color=list(POLICY_COLORS.values())),
}

LANGS = ("fr", "en")

LABELS: dict[str, dict[str, str]] = {
    # Policies
    "dqn": {"fr": "DQN masqué", "en": "Masked DQN"},
    "maskable_ppo": {"fr": "PPO masqué", "en": "Masked PPO"},
    "random": {"fr": "Aléatoire", "en": "Random"},
    "nearest": {"fr": "Véhicule le plus proche", "en": "Nearest vehicle"},
    "insertion": {"fr": "Insertion gloutonne", "en": "Greedy insertion"},
    "batch_matching": {"fr": "Affectation par lots", "en": "Batch matching"},
    "hindsight_bound": {"fr": "Borne a posteriori", "en": "Hindsight bound"},
    # The agent study's variants (params/ablation.yaml): the default DQN with one ingredient changed
    "dqn_mlp": {"fr": "MLP du plan (512-256-128)", "en": "Plan's MLP (512-256-128)"},
    "dqn_no_double": {"fr": "sans Double DQN", "en": "without Double DQN"},
    "dqn_no_scale": {"fr": "récompenses non mises à l'échelle", "en": "unscaled rewards"},
    "dqn_per_decision_gamma": {"fr": "actualisation par décision", "en": "discount per decision"},
    "dqn_one_step": {"fr": "retours à 1 pas", "en": "one-step returns"},
    "dqn_dueling": {"fr": "avec tête duelling", "en": "with dueling head"},
    "dqn_attention": {"fr": "avec auto-attention", "en": "with self-attention"},
    # The run every variant changes one ingredient of: not the thesis default (which gained the
    # dueling head the study found), so its row must not read as "Masked DQN"
    "study_reference": {"fr": "Référence de l'étude", "en": "Study reference"},
    # KPIs, with their display units (rates are shown in %, see PERCENT_KPIS)
    "reward": {"fr": "Récompense par jour", "en": "Reward per day"},
    "reward_per_step": {"fr": "Récompense par décision", "en": "Reward per decision"},
    "completion_rate": {"fr": "Taux de service (%)", "en": "Service rate (%)"},
    "on_time_rate": {"fr": "Ponctualité (%)", "en": "On-time rate (%)"},
    "mean_lateness_min": {"fr": "Retard moyen (min)", "en": "Mean lateness (min)"},
    "p95_lateness_min": {"fr": "Retard p95 (min)", "en": "p95 lateness (min)"},
    "mean_deadhead_km": {"fr": "Kilomètres à vide par course", "en": "Deadhead km per trip"},
    "total_km": {"fr": "Distance totale (km/jour)", "en": "Total distance (km/day)"},
    "utilisation": {"fr": "Taux d'utilisation (%)", "en": "Utilisation (%)"},
    "decision_ms": {"fr": "Latence de décision (ms)", "en": "Decision latency (ms)"},
    # Axes and legends
    "step": {"fr": "Pas d'entraînement", "en": "Training steps"},
    "eval_reward": {"fr": "Récompense d'évaluation", "en": "Evaluation reward"},
    "eval_completion": {"fr": "Taux de service en évaluation (%)", "en": "Evaluation service rate (%)"},
    "iqm_ci": {"fr": "IQM sur les graines, IC à 95 %", "en": "IQM over seeds, 95 % CI"},
    "diff_batch_matching": {"fr": "Écart à l'affectation par lots", "en": "Difference to batch matching"},
    "diff_nearest": {"fr": "Écart au plus proche", "en": "Difference to nearest"},
    "p_beats_batch_matching": {"fr": "P(bat les lots)", "en": "P(beats batch)"},
    "gap_closed": {"fr": "Écart à la borne comblé (%)", "en": "Gap to bound closed (%)"},
    "abs_gap": {"fr": "Écart à la borne", "en": "Gap to the bound"},
    "rel_gap": {"fr": "Écart relatif à la borne (%)", "en": "Gap relative to the bound (%)"},
    "n_seeds": {"fr": "Graines", "en": "Seeds"},
    "seeds": {"fr": "graines : {n}", "en": "seeds: {n}"},
    "epsilon": {"fr": "Taux d'exploration ε", "en": "Exploration rate ε"},
    "loss": {"fr": "Perte d'entraînement", "en": "Training loss"},
    "mean_q": {"fr": "Valeur Q moyenne", "en": "Mean Q-value"},
    "not_logged": {"fr": "non enregistré par cet algorithme", "en": "not logged by this algorithm"},
    "saved": {"fr": "Sauvegarde (niveau 1)", "en": "Latest save (level 1)"},
    "rotated": {"fr": "Supprimée par rotation", "en": "Deleted by rotation"},
    "best": {"fr": "Nouveau meilleur modèle (niveau 2)", "en": "New best model (level 2)"},
    "final": {"fr": "Modèle final (niveau 3)", "en": "Final model (level 3)"},
    "level_latest": {"fr": "Dernier", "en": "Latest"},
    "level_best": {"fr": "Meilleur", "en": "Best"},
    "level_final": {"fr": "Final", "en": "Final"},
    # The tuning section (rl_lib.thesis.tuning)
    "validation_reward": {"fr": "Récompense de validation", "en": "Validation reward"},
    "trial": {"fr": "Essai", "en": "Trial"},
    "best_value": {"fr": "Meilleure valeur", "en": "Best value"},
    "importance": {"fr": "Importance ({evaluator})", "en": "Importance ({evaluator})"},
    "range_searched": {"fr": "Intervalle exploré", "en": "Range searched"},
    "default": {"fr": "Défaut", "en": "Default"},
    "candidate": {"fr": "Configuration", "en": "Configuration"},
    "reward_iqm": {"fr": "Récompense (IQM)", "en": "Reward (IQM)"},
    "diff_default": {"fr": "Écart au défaut", "en": "Difference to default"},
    "relative_gain": {"fr": "Gain relatif (%)", "en": "Relative gain (%)"},
    "plan_gain": {
        "fr": "Le plan initial espérait +{low} à {high} %.",
        "en": "The original plan hoped for +{low}-{high} %.",
    },
    "log": {"fr": "log", "en": "log"},
    # Tables
    "policy": {"fr": "Politique", "en": "Policy"},
    "indicator": {"fr": "Indicateur", "en": "Indicator"},
    "reference": {"fr": "Référence", "en": "Baseline"},
    "agent": {"fr": "Agent RL", "en": "RL agent"},
    "difference": {"fr": "Écart", "en": "Difference"},
    "prob_improvement": {"fr": "P(amélioration)", "en": "P(improvement)"},
    "torch": {"fr": "PyTorch", "en": "PyTorch"},
    "onnx": {"fr": "ONNX Runtime FP32", "en": "ONNX Runtime FP32"},
    "onnx-int8": {"fr": "ONNX Runtime INT8", "en": "ONNX Runtime INT8"},
    "onnx-int8-static": {"fr": "ONNX Runtime INT8 statique", "en": "ONNX Runtime static INT8"},
    "backend": {"fr": "Moteur d'inférence", "en": "Inference backend"},
    "latency_ms": {"fr": "Latence d'une décision (ms)", "en": "Latency of one decision (ms)"},
    "throughput": {"fr": "Décisions par seconde", "en": "Decisions per second"},
    "batch_size": {"fr": "Taille du lot", "en": "Batch size"},
    "model_mb": {"fr": "Taille (Mo)", "en": "Size (MB)"},
    "agreement": {"fr": "Accord avec PyTorch (%)", "en": "Agreement with PyTorch (%)"},
    "parameter": {"fr": "Paramètre", "en": "Parameter"},
    "value": {"fr": "Valeur", "en": "Value"},
    "ci_excludes_zero": {"fr": "l'intervalle à 95 % exclut 0", "en": "the 95 % interval excludes 0"},
    "difference_of": {"fr": "(agent − réf.)", "en": "(agent − baseline)"},
    "verdict": {"fr": "Verdict", "en": "Verdict"},
    "better": {"fr": "meilleur", "en": "better"},
    "worse": {"fr": "moins bon", "en": "worse"},
    "equal": {"fr": "égal", "en": "equal"},
    "ci_overlap": {"fr": "les IC à 95 % se chevauchent", "en": "the 95 % CIs overlap"},
    # The A/B report (rl_lib.serving.ab_report)
    "ab_reward": {"fr": "Récompense par unité", "en": "Reward per unit"},
    "ab_reward_per_decision": {"fr": "Récompense par décision", "en": "Reward per decision"},
    "ab_treatment": {"fr": "Traitement", "en": "Treatment"},
    "ab_control": {"fr": "Témoin", "en": "Control"},
    "ab_difference": {"fr": "Écart (traitement − témoin)", "en": "Difference (treatment − control)"},
    "ab_per_unit": {"fr": "Valeur par unité", "en": "Value per unit"},
    "ab_sd": {"fr": "Écart type", "en": "SD"},
    "ab_mde": {"fr": "Écart visé", "en": "Target difference"},
    "ab_needed": {"fr": "Unités par bras", "en": "Units per arm"},
    "ab_mdd": {"fr": "Écart détectable", "en": "Detectable difference"},
    "ab_cells": {
        "fr": "Unités : {n_t} (traitement), {n_c} (témoin) ; taux en %.",
        "en": "Units: {n_t} (treatment), {n_c} (control); rates in %.",
    },
    "ab_excludes_zero": {
        "fr": "l'intervalle à {level} % exclut 0",
        "en": "the {level} % interval excludes 0",
    },
    "ab_awaiting": {
        "fr": "{n} décisions attendent leur issue, hors des indicateurs.",
        "en": "{n} decisions await their outcome, left out of the KPIs.",
    },
    "ab_power_note": {
        "fr": "bilatéral, puissance {power} % ; écart visé : {mde} ; unités : {n_t} et {n_c}.",
        "en": "two-sided, power {power} %; target: {mde}; units: {n_t} and {n_c}.",
    },
    "ab_mde_share": {"fr": "{share} % de la moyenne du témoin", "en": "{share} % of the control mean"},
    "ab_mde_absolute": {"fr": "valeurs absolues données", "en": "absolute values given"},
    "ab_mde_mixed": {
        "fr": "{share} % de la moyenne du témoin, sauf {kpis}",
        "en": "{share} % of the control mean, except {kpis}",
    },
}

#: KPIs stored as fractions in the results files and shown in percent.
PERCENT_KPIS = frozenset({"completion_rate", "on_time_rate", "utilisation"})

STATISTICS = ("mean", "iqm")


def figure_size(width_fraction: float = 1.0, aspect: float = ASPECT) -> tuple[float, float]:
    """(width, height) in inches of a figure ``width_fraction`` of the text width wide.

    :param width_fraction: 1.0 for a full-width figure, 0.48 for one of two side by side.
    :param aspect: height / width.
    """
    width = width_fraction * TEXT_WIDTH_IN
    return width, width * aspect


@contextmanager
def thesis_style() -> Iterator[None]:
    """The thesis rcParams for the block only (figure creation *and* saving must be inside)."""
    with mpl.rc_context(RC):
        yield


def check_lang(lang: str) -> None:
    """:raises ValueError: ``lang`` is not one of :data:`LANGS`."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")


def label(key: str, lang: str = "fr") -> str:
    """The label of ``key`` in ``lang``.

    :param key: a key of :data:`LABELS` (policy, KPI, axis, legend or table word).
    :param lang: ``"fr"`` (default) or ``"en"``.
    :raises KeyError: unknown key (a typo would otherwise print a raw key in the thesis).
    """
    check_lang(lang)
    if key not in LABELS:
        raise KeyError(f"no thesis label for {key!r}; add it to rl_lib.thesis.style.LABELS")
    return LABELS[key][lang]


def policy_label(policy: str, lang: str = "fr") -> str:
    """A policy's label; a policy without one (a new ablation, say) shows its own name."""
    check_lang(lang)
    return LABELS[policy][lang] if policy in LABELS else policy


def study_label(policy: str, reference: str, lang: str = "fr") -> str:
    """A row label of the agent study: its ``reference`` run is named as such, any other policy as
    :func:`policy_label` names it."""
    return label("study_reference", lang) if policy == reference else policy_label(policy, lang)


def policy_color(policy: str) -> str:
    """A policy's colour: fixed for known policies, derived from the name for others."""
    if policy in POLICY_COLORS:
        return POLICY_COLORS[policy]
    return SPARE_COLORS[zlib.crc32(policy.encode()) % len(SPARE_COLORS)]


def ordered_policies(policies: Iterable[str]) -> list[str]:
    """Distinct ``policies`` in :data:`POLICY_ORDER`, unknown ones (in their given order) just before
    the hindsight bound, which always comes last."""
    distinct = list(dict.fromkeys(policies))
    known = [p for p in POLICY_ORDER[:-1] if p in distinct]
    bound = [p for p in POLICY_ORDER[-1:] if p in distinct]
    return known + [p for p in distinct if p not in POLICY_ORDER] + bound


def display_scale(kpi: str) -> float:
    """Factor from the results files' unit to the displayed one (fractions to percent)."""
    return 100.0 if kpi in PERCENT_KPIS else 1.0


def aggregate_values(aggregate: pd.DataFrame, statistic: str = "mean") -> pd.DataFrame:
    """An aggregate table (``rl_lib.stats.aggregate_table``) as display values.

    :param aggregate: rows (policy, kpi) with columns ``{statistic}``, ``{statistic}_ci_low``,
        ``{statistic}_ci_high``.
    :param statistic: ``"mean"`` or ``"iqm"``.
    :return: indexed by (policy, kpi), columns ``value``, ``low``, ``high``, in display units.
    :raises ValueError: unknown statistic, missing columns, duplicate (policy, kpi) rows.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    columns = ["policy", "kpi", statistic, f"{statistic}_ci_low", f"{statistic}_ci_high"]
    missing = [c for c in columns if c not in aggregate.columns]
    if missing:
        raise ValueError(f"aggregate table lacks column(s) {', '.join(missing)}; expected the output of "
                         "rl_lib.stats.aggregate_table")  # fmt: skip
    if aggregate.duplicated(["policy", "kpi"]).any():
        raise ValueError("aggregate table has several rows for one (policy, kpi)")
    values = aggregate[columns].set_axis(["policy", "kpi", "value", "low", "high"], axis=1)
    scale = values["kpi"].map(display_scale).to_numpy()
    values[["value", "low", "high"]] = values[["value", "low", "high"]].to_numpy(dtype=float) * scale[:, None]
    return values.set_index(["policy", "kpi"])


def output_path(out: str | Path, stem: str, lang: str, suffix: str) -> Path:
    """Where to write: ``out`` itself if it names a file, else ``out/{stem}{suffix}``.

    French (the thesis) gets the plain stem, the names latex/main.tex inputs; other languages get
    ``{stem}_{lang}``, so both can sit in one folder.

    :param out: a file path (with a suffix) or a folder (an existing one, or a path without suffix).
    """
    out = Path(out)
    if out.suffix and not out.is_dir():
        return out
    return out / (f"{stem}{suffix}" if lang == "fr" else f"{stem}_{lang}{suffix}")


def source_note(function: str, sources: Sequence[str | Path]) -> str:
    """One line saying what wrote a file and from which results files (traceability).

    :raises ValueError: no source: every thesis number must be traceable to a results file.
    """
    if not sources:
        raise ValueError(f"{function}: name the results file(s) the input came from (sources=...)")
    return f"Generated by rl_lib.thesis.{function} from {', '.join(str(s) for s in sources)}; do not edit."


def format_steps(ax: Axes) -> None:
    """Training steps on the x axis written 50k, 100k, ... (the same in French and English)."""
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def save_figure(fig: Figure, path: str | Path, note: str | None = None) -> Path:
    """Write ``fig`` as a vector PDF (Type 42 fonts) atomically, then close it.

    :param path: the .pdf file; its folder is created if needed.
    :param note: stored as the PDF's Subject (e.g. :func:`source_note`: the results files it shows).
    :return: ``path``.
    """
    path = Path(path)
    buffer = io.BytesIO()
    # No CreationDate: regenerating a figure from the same results gives the same bytes.
    metadata = {"Creator": "rl_lib.thesis", "CreationDate": None, "Subject": note}
    try:
        with thesis_style():  # the font type is read when saving, whoever built the figure
            fig.savefig(buffer, format="pdf", metadata=metadata)
    finally:
        if fig.canvas.manager is not None:  # made with pyplot (a notebook): drop it from pyplot's registry
            import matplotlib.pyplot as plt

            plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure outside pyplot's registry (no global state; nothing to close by hand)."""
    return Figure(figsize=size)
