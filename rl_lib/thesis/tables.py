r"""The Chapter 7 LaTeX tables and number macros, written from results files only.

Tables are bare ``tabular`` environments with booktabs rules (the chapter wraps them in its own
``table`` float, caption and label); numbers are plain, with a decimal point, in math mode (a true
minus sign). Each file starts with a comment naming the results files it was generated from, and
is written atomically. Every function takes ``out`` (a .tex path, or a folder: then the default name
given in its docstring, ``_en`` appended for English) and returns the path it wrote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rl_lib.io import atomic_write_text
from rl_lib.stats import HIGHER_IS_BETTER
from rl_lib.thesis.style import (
    aggregate_values,
    check_lang,
    display_scale,
    label,
    ordered_policies,
    output_path,
    policy_label,
    source_note,
    study_label,
)

BOUND = "hindsight_bound"
#: Default columns of :func:`kpi_table`.
TABLE_KPIS = ("reward_per_step", "completion_rate", "on_time_rate", "p95_lateness_min", "mean_deadhead_km")
#: Rows of :func:`baseline_vs_rl_table` (the thesis plan's "Baseline vs RL" table).
BASELINE_VS_RL_KPIS = ("reward_per_step", "completion_rate", "total_km", "mean_lateness_min", "decision_ms")
#: Columns of :func:`paired_differences_table`.
PAIRED_KPIS = ("reward_per_step", "completion_rate", "mean_deadhead_km", "p95_lateness_min")
#: Which way is better, for the verdicts: rl_lib.stats's directions, plus the decision latency.
BETTER_WHEN_HIGHER = {"decision_ms": False, **HIGHER_IS_BETTER}
MAX_DECIMALS = 3
LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$",
}  # fmt: skip
DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped; the Unicode minus (not in pdflatex's T1
    encoding) as a math minus."""
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def decimals(half_widths: np.ndarray, values: np.ndarray) -> int:
    """Decimals to show a group of numbers with, from their typical CI half-width.

    One significant digit of the median half-width, two when that digit is a 1 (0.13 -> 2 decimals,
    0.6 -> 1): the last digit shown is the first uncertain one. Without any interval, three
    significant digits of the values. Between 0 and :data:`MAX_DECIMALS`.

    :param half_widths: half-widths of the intervals (NaN or 0 where none).
    :param values: the point estimates.
    """
    widths = half_widths[np.isfinite(half_widths) & (half_widths > 0)]
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if widths.size:
        width = float(np.median(widths))
        exponent = math.floor(math.log10(width))
        digits = -exponent + (1 if width / 10**exponent < 2 else 0)
    elif magnitudes.size:
        digits = 2 - math.floor(math.log10(float(np.median(magnitudes))))
    else:
        digits = 0
    return int(np.clip(digits, 0, MAX_DECIMALS))


def number(value: float, digits: int, sign: bool = False) -> str:
    """``value`` rounded to ``digits`` decimals, with ``+`` when ``sign``; never ``-0.0``."""
    rounded = round(value, digits) or 0.0  # -0.0 is falsy: shown as 0.0
    return f"{rounded:{'+' if sign else ''}.{digits}f}"


def interval_cell(value: float, low: float, high: float, digits: int) -> str:
    """``value`` over ``[low, high]`` (smaller), top-aligned in the row; ``--`` without a value.

    Stacked rather than side by side: five KPI columns then fit the text width.
    """
    if not np.isfinite(value):
        return "--"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"${number(value, digits)}$"
    interval = rf"{{\footnotesize$[{number(low, digits)}, {number(high, digits)}]$}}"
    return rf"\begin{{tabular}}[t]{{@{{}}c@{{}}}}${number(value, digits)}$\\{interval}\end{{tabular}}"


def header_cell(text: str) -> str:
    """A column header, on two lines (at the space nearest its middle) when long."""
    spaces = [i for i, char in enumerate(text) if char == " "]
    if len(text) <= 10 or not spaces:
        return latex_escape(text)
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return two_lines(text[:cut], text[cut + 1 :])


def two_lines(top: str, bottom: str) -> str:
    """A header cell of two centred lines (plain text, escaped here)."""
    return rf"\shortstack{{{latex_escape(top)}\\{latex_escape(bottom)}}}"


def tabular(spec: str, header: Sequence[str], body: Sequence[str], notes: Sequence[str] = ()) -> list[str]:
    """A booktabs ``tabular``: header, rule, body rows (``\\midrule`` entries kept as they are), notes.

    :param body: rows as ``"a & b & c"`` (the ``\\\\`` is added), or ``"\\midrule"``.
    :param notes: lines after the bottom rule, each spanning every column.
    """
    rows = []
    for row in body:
        if row != r"\midrule" and rows and rows[-1] != r"\midrule":
            rows.append(r"\addlinespace[3pt]")  # air between rows of stacked (two-line) cells
        rows.append(row if row == r"\midrule" else rf"{row} \\")
    spanned = [rf"\multicolumn{{{len(header)}}}{{l}}{{\footnotesize {note}}} \\" for note in notes]
    return [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule", *rows,
            r"\bottomrule", *spanned, r"\end{tabular}"]  # fmt: skip


def write_tex(path: Path, comments: Sequence[str], lines: Sequence[str]) -> Path:
    """Write comment lines then ``lines`` to ``path`` atomically; returns ``path``."""
    atomic_write_text(path, "".join(f"% {c}\n" for c in comments) + "\n".join(lines) + "\n")
    return path


def kpi_table(
    aggregate: pd.DataFrame,
    out: str | Path,
    lang: str = "fr",
    *,
    sources: Sequence[str | Path],
    kpis: Sequence[str] = TABLE_KPIS,
    statistic: str = "mean",
) -> Path:
    """Every policy's KPIs as ``mean [95 % CI]`` (the interval under the mean): rows = policies,
    columns = KPIs.

    The hindsight bound comes last, under a rule, with its two KPIs (``--`` elsewhere). Each column
    is rounded to its typical interval half-width (:func:`decimals`).

    :param aggregate: ``rl_lib.stats.aggregate_table`` output (rates as fractions; shown in %).
    :param out: .tex path or folder (default name ``kpi_table.tex``).
    :param lang: ``"fr"`` or ``"en"``.
    :param sources: the results file(s) ``aggregate`` was read from (named in the file's first line).
    :param kpis: columns, in order.
    :param statistic: ``"mean"`` (default) or ``"iqm"``.
    :return: the .tex file written.
    :raises ValueError: bad aggregate table, or a KPI it does not have.
    """
    check_lang(lang)
    note = source_note("tables.kpi_table", sources)
    values = aggregate_values(aggregate, statistic)
    missing = [k for k in kpis if k not in values.index.get_level_values("kpi")]
    if missing:
        raise ValueError(f"aggregate table has no KPI {', '.join(missing)}; pass kpis=[...] it has")
    policies = ordered_policies(values.index.get_level_values("policy"))
    table = values.reindex(pd.MultiIndex.from_product([policies, kpis], names=["policy", "kpi"]))
    digits = {k: decimals(((table["high"] - table["low"]) / 2).xs(k, level="kpi").to_numpy(),
                          table["value"].xs(k, level="kpi").to_numpy()) for k in kpis}  # fmt: skip
    body = []
    for policy in policies:
        if policy == BOUND and len(policies) > 1:
            body.append(r"\midrule")
        cells = [interval_cell(*table.loc[(policy, k), ["value", "low", "high"]], digits[k]) for k in kpis]
        body.append(" & ".join([latex_escape(policy_label(policy, lang)), *cells]))
    header = [label("policy", lang), *(header_cell(label(k, lang)) for k in kpis)]
    described = f"Cells: {statistic} [95 % CI], rates in %."
    return write_tex(output_path(out, "kpi_table", lang, ".tex"), [note, described],
                     tabular("l" + "c" * len(kpis), header, body))  # fmt: skip


def verdict(kpi: str, difference: float, digits: int, lang: str) -> str:
    """``better``, ``worse`` or ``equal`` (at the shown precision) for the agent, in ``lang``."""
    if float(number(difference, digits)) == 0:
        return label("equal", lang)
    return label("better" if (difference > 0) == BETTER_WHEN_HIGHER[kpi] else "worse", lang)


def baseline_vs_rl_table(
    aggregate: pd.DataFrame,
    out: str | Path,
    lang: str = "fr",
    reference: str = "nearest",
    agent: str = "dqn",
    *,
    sources: Sequence[str | Path],
) -> Path:
    """The "Baseline vs RL" table: reward per decision, service rate, distance, lateness, latency.

    Columns: the reference baseline and the agent as ``mean [95 % CI]``, their difference (agent -
    reference) and a verdict (better / worse / equal for the agent, from each KPI's direction),
    marked with a dagger when the two intervals overlap. Every cell comes from ``aggregate``: there is
    no way to pass a target value, and a row where the agent is worse says so. The difference is one
    of means; its own interval needs the paired per-day scores (``rl_lib.stats.paired_differences``).

    :param aggregate: ``rl_lib.stats.aggregate_table`` output with the five KPIs for both policies
        (``decision_ms`` is not in aggregate_table's default KPIs: ask for it).
    :param out: .tex path or folder (default name ``baseline_vs_rl.tex``).
    :param lang: ``"fr"`` or ``"en"``.
    :param reference: the baseline policy.
    :param agent: the RL policy.
    :param sources: the results file(s) ``aggregate`` was read from (named in the file's first line).
    :return: the .tex file written.
    :raises ValueError: bad aggregate table, or a KPI missing (or NaN) for either policy.
    """
    check_lang(lang)
    note = source_note("tables.baseline_vs_rl_table", sources)
    values = aggregate_values(aggregate, "mean")
    wanted = [(p, k) for k in BASELINE_VS_RL_KPIS for p in (reference, agent)]
    missing = [
        f"{p}/{k}" for p, k in wanted if (p, k) not in values.index or np.isnan(values.loc[(p, k), "value"])
    ]
    if missing:
        raise ValueError(f"aggregate table has no measured value for {', '.join(missing)}; "
                         "the table is filled from measurements only")  # fmt: skip
    body, overlaps = [], False
    for kpi in BASELINE_VS_RL_KPIS:
        ref, ref_low, ref_high = values.loc[(reference, kpi), ["value", "low", "high"]]
        ag, ag_low, ag_high = values.loc[(agent, kpi), ["value", "low", "high"]]
        digits = decimals(np.array([ref_high - ref_low, ag_high - ag_low]) / 2, np.array([ref, ag]))
        difference = ag - ref
        word = verdict(kpi, difference, digits, lang)
        overlap = max(ref_low, ag_low) <= min(ref_high, ag_high) and word != label("equal", lang)
        overlaps |= overlap
        body.append(" & ".join([
            latex_escape(label(kpi, lang)),
            interval_cell(ref, ref_low, ref_high, digits),
            interval_cell(ag, ag_low, ag_high, digits),
            f"${number(difference, digits, sign=True)}$",
            latex_escape(word) + (r"\textsuperscript{\dag}" if overlap else ""),
        ]))  # fmt: skip
    header = [
        label("indicator", lang),
        two_lines(label("reference", lang), policy_label(reference, lang)),
        two_lines(label("agent", lang), policy_label(agent, lang)),
        two_lines(label("difference", lang), label("difference_of", lang)),
        label("verdict", lang),
    ]
    notes = [rf"\dag{{}} {latex_escape(label('ci_overlap', lang))}."] if overlaps else []
    described = "Cells: mean [95 % CI]; difference = agent - reference (means); rates in %."
    path = output_path(out, "baseline_vs_rl", lang, ".tex")
    return write_tex(path, [note, described], tabular("lcccl", header, body, notes))


def paired_differences_table(
    paired: pd.DataFrame,
    improvement: pd.DataFrame,
    out: str | Path,
    lang: str = "fr",
    *,
    sources: Sequence[str | Path],
    kpis: Sequence[str] = PAIRED_KPIS,
) -> Path:
    """Each policy minus the reference, day by day: ``mean difference [95 % CI]`` per KPI (an
    asterisk when the interval excludes 0), and the probability of improvement on the reward.

    :param paired: ``rl_lib.stats.paired_differences`` output.
    :param improvement: ``rl_lib.stats.probability_of_improvement`` output (one KPI).
    :param out: .tex path or folder (default name ``paired_differences.tex``).
    :param sources: the results files both frames were read from.
    :raises ValueError: a KPI the paired table does not have.
    """
    check_lang(lang)
    missing = [k for k in kpis if k not in set(paired["kpi"])]
    if missing:
        raise ValueError(f"paired differences have no KPI {', '.join(missing)}")
    policies = [p for p in ordered_policies(paired["policy"]) if p != BOUND]
    rows = paired.set_index(["policy", "kpi"])
    poi = improvement.set_index("policy")
    digits = {}
    for k in kpis:
        part = rows.xs(k, level="kpi").loc[policies]
        scale = display_scale(k)
        digits[k] = decimals(scale * (part["ci_high"] - part["ci_low"]).to_numpy() / 2,
                             scale * part["mean_diff"].to_numpy())  # fmt: skip
    body, starred = [], False
    for policy in policies:
        cells = [latex_escape(policy_label(policy, lang))]
        for k in kpis:
            r, scale = rows.loc[(policy, k)], display_scale(k)
            cell = interval_cell(scale * r["mean_diff"], scale * r["ci_low"], scale * r["ci_high"], digits[k])
            if bool(r["ci_excludes_zero"]):
                cell += r"\textsuperscript{*}"
                starred = True
            cells.append(cell)
        p = poi.loc[policy]
        cells.append(interval_cell(p["prob_improvement"], p["ci_low"], p["ci_high"], 2))
        body.append(" & ".join(cells))
    reference = policy_label(str(paired["reference"].iloc[0]), lang)
    header = [label("policy", lang), *(header_cell(label(k, lang)) for k in kpis),
              header_cell(label("prob_improvement", lang))]  # fmt: skip
    notes = [rf"* {latex_escape(label('ci_excludes_zero', lang))}."] if starred else []
    described = f"Cells: policy - {reference}, mean over days [95 % CI]; rates in %."
    return write_tex(output_path(out, "paired_differences", lang, ".tex"),
                     [source_note("tables.paired_differences_table", sources), described],
                     tabular("l" + "c" * (len(kpis) + 1), header, body, notes))  # fmt: skip


#: Rows of :func:`hyperparameters_table` (a DQN's, then a PPO's own): row key -> label.
HYPERPARAMETERS = {
    "net_arch": {"fr": "Réseau $Q_\\theta$ (ReLU)", "en": "$Q_\\theta$ network (ReLU)"},
    "double_q": {"fr": "Cible Double DQN", "en": "Double DQN target"},
    "reward_scale": {"fr": "Échelle des récompenses", "en": "Reward scale"},
    "n_steps": {"fr": "Retours à $n$ pas", "en": "$n$-step returns"},
    "discount": {"fr": "Actualisation", "en": "Discount"},
    "learning_rate": {"fr": "Taux d'apprentissage (Adam)", "en": "Learning rate (Adam)"},
    "gamma": {"fr": "Facteur d'actualisation $\\gamma$", "en": "Discount factor $\\gamma$"},
    "buffer_size": {"fr": "Mémoire de rejeu (transitions)", "en": "Replay buffer (transitions)"},
    "batch_size": {"fr": "Taille des mini-lots", "en": "Mini-batch size"},
    "learning_starts": {"fr": "Pas aléatoires avant apprentissage", "en": "Random steps before learning"},
    "train_freq": {"fr": "Pas entre deux mises à jour", "en": "Steps between updates"},
    "gradient_steps": {"fr": "Descentes de gradient par mise à jour", "en": "Gradient steps per update"},
    "target_update_interval": {"fr": "Copie du réseau cible (pas)", "en": "Target network copy (steps)"},
    "exploration": {"fr": "Exploration $\\varepsilon$", "en": "Exploration $\\varepsilon$"},
    "max_grad_norm": {"fr": "Norme maximale du gradient", "en": "Maximum gradient norm"},
    "total_timesteps": {"fr": "Pas d'entraînement", "en": "Training steps"},
    "actor_critic": {"fr": "Réseau acteur-critique", "en": "Actor-critic network"},
    "rollout_steps": {"fr": "Pas par collecte", "en": "Steps per rollout"},
    "n_epochs": {"fr": "Passes sur chaque collecte", "en": "Epochs per rollout"},
    "gae_lambda": {"fr": "$\\lambda$ de l'estimateur GAE", "en": "GAE $\\lambda$"},
    "clip_range": {"fr": "Écrêtage du rapport de probabilités", "en": "Probability ratio clip range"},
    "ent_coef": {"fr": "Coefficient d'entropie", "en": "Entropy coefficient"},
}


def hyperparameters_table(
    config: Mapping, out: str | Path, lang: str = "fr", *, sources: Sequence[str | Path]
) -> Path:
    """The agent's hyperparameters, read from the evaluated runs' recorded configuration: the DQN's
    or the MaskablePPO's (``training.algo``), with the training steps.

    :param config: a run's ``config`` (its metadata), i.e. ``rl_lib.config.to_dict(ExperimentConfig)``.
    :param out: .tex path or folder (default name ``hyperparameters.tex``).
    """
    check_lang(lang)
    training = config["training"]
    rows = _ppo_rows if training["algo"] == "maskable_ppo" else _dqn_rows
    values = {**rows(training, lang), "total_timesteps": str(int(training["total_timesteps"]))}
    body = [f"{HYPERPARAMETERS[k][lang]} & {v}" for k, v in values.items()]
    return write_tex(output_path(out, "hyperparameters", lang, ".tex"),
                     [source_note("tables.hyperparameters_table", sources)],
                     tabular("ll", [label("parameter", lang), label("value", lang)], body))  # fmt: skip


def _network(d: Mapping, lang: str) -> str:
    """The network of a DQN or PPO config section: the fleet network's width and context, or the MLP."""
    if d.get("network", "mlp") != "fleet":
        return "MLP " + "--".join(str(int(n)) for n in d["net_arch"])
    context = {"deepsets": "DeepSets", "attention": "attention"}[d["fleet_context"]]
    width = int(d["fleet_hidden"])
    return (rf"partagé par véhicule, largeur {width} ({context})" if lang == "fr"
            else rf"shared per vehicle, width {width} ({context})")  # fmt: skip


def _dqn_rows(training: Mapping, lang: str) -> dict[str, str]:
    d = training["dqn"]
    steps = "des pas" if lang == "fr" else "of steps"
    fleet = d.get("network", "mlp") == "fleet"
    yes, no = ("oui", "non") if lang == "fr" else ("yes", "no")
    tau = d.get("discount_tau_min")
    return {  # numbers only: LaTeX-ready as they are
        "net_arch": _network(d, lang) + (", " + (yes if d["dueling"] else no) + " duelling" if fleet else ""),
        "double_q": yes if d.get("double_q") else no,
        "reward_scale": f"{d.get('reward_scale', 1.0):g}",
        "n_steps": str(int(d.get("n_steps", 1))),
        "discount": (rf"$\gamma$ par {tau:g} min" if lang == "fr" else rf"$\gamma$ per {tau:g} min")
        if tau is not None
        else ("par décision" if lang == "fr" else "per decision"),
        "learning_rate": f"{d['learning_rate']:g}",
        "gamma": f"{d['gamma']:g}",
        "buffer_size": str(int(d["buffer_size"])),
        "batch_size": str(int(d["batch_size"])),
        "learning_starts": str(int(d["learning_starts"])),
        "train_freq": str(int(d["train_freq"])),
        "gradient_steps": str(int(d["gradient_steps"])),
        "target_update_interval": str(int(d["target_update_interval"])),
        "exploration": rf"${d['exploration_initial_eps']:g} \to {d['exploration_final_eps']:g}$, "
        rf"{100 * d['exploration_fraction']:g}~\% {steps}",
        "max_grad_norm": f"{d['max_grad_norm']:g}",
    }


def _ppo_rows(training: Mapping, lang: str) -> dict[str, str]:
    p = training["ppo"]
    return {
        "actor_critic": _network(p, lang),
        "learning_rate": f"{p['learning_rate']:g}",
        "rollout_steps": str(int(p["n_steps"])),
        "batch_size": str(int(p["batch_size"])),
        "n_epochs": str(int(p["n_epochs"])),
        "gamma": f"{p['gamma']:g}",
        "gae_lambda": f"{p['gae_lambda']:g}",
        "clip_range": f"{p['clip_range']:g}",
        "ent_coef": f"{p['ent_coef']:g}",
        "max_grad_norm": f"{p['max_grad_norm']:g}",
    }


def gap_to_bound_table(
    gap: pd.DataFrame, out: str | Path, lang: str = "fr", *, sources: Sequence[str | Path]
) -> Path:
    """Every policy's distance to the hindsight bound: the mean over test days of (bound - policy),
    absolute and relative to the bound, each with its 95 % CI (``evaluation/gap_to_bound.csv``,
    :func:`rl_lib.stats.gap_to_bound`). Relative gaps in %.

    :param gap: ``rl_lib.stats.gap_to_bound`` output (one KPI).
    :param out: .tex path or folder (default name ``gap_to_bound.tex``).
    :raises ValueError: a table without the gap columns, or with several KPIs.
    """
    check_lang(lang)
    columns = ("abs_gap", "rel_gap")
    missing = [f"{c}{end}" for c in columns for end in ("", "_ci_low", "_ci_high") if f"{c}{end}" not in gap]
    if missing or "kpi" not in gap or gap["kpi"].nunique() != 1:
        raise ValueError("expected the output of rl_lib.stats.gap_to_bound for one KPI"
                         + (f"; missing column(s) {', '.join(missing)}" if missing else ""))  # fmt: skip
    rows = gap.set_index("policy")
    policies = ordered_policies(rows.index)
    scale = {"abs_gap": 1.0, "rel_gap": 100.0}
    digits = {c: decimals(scale[c] * (rows[f"{c}_ci_high"] - rows[f"{c}_ci_low"]).to_numpy() / 2,
                          scale[c] * rows[c].to_numpy()) for c in columns}  # fmt: skip
    body = []
    for policy in policies:
        r = rows.loc[policy]
        cells = [interval_cell(scale[c] * r[c], scale[c] * r[f"{c}_ci_low"], scale[c] * r[f"{c}_ci_high"],
                               digits[c]) for c in columns]  # fmt: skip
        body.append(" & ".join([latex_escape(policy_label(policy, lang)), *cells]))
    kpi = str(gap["kpi"].iloc[0])
    header = [label("policy", lang), two_lines(label("abs_gap", lang), f"({label(kpi, lang)})"),
              header_cell(label("rel_gap", lang))]  # fmt: skip
    described = f"Cells: bound - policy on {kpi}, mean over the test days [95 % CI]; relative gap in %."
    return write_tex(output_path(out, "gap_to_bound", lang, ".tex"),
                     [source_note("tables.gap_to_bound_table", sources), described],
                     tabular("lcc", header, body))  # fmt: skip


def inference_table(
    latency: pd.DataFrame,
    throughput: pd.DataFrame,
    size: pd.DataFrame,
    agreement: pd.DataFrame,
    out: str | Path,
    lang: str = "fr",
    *,
    sources: Sequence[str | Path],
) -> Path:
    """One row per inference backend: latency p50 / p99 (ms), throughput at batch 1 and 256,
    model size and agreement with PyTorch, all from ``rl_lib.inference.benchmark``."""
    check_lang(lang)
    lat, size_, agree = (t.set_index("backend") for t in (latency, size, agreement))
    thr = throughput.set_index(["backend", "batch"])["decisions_per_s"]
    batches = sorted(throughput["batch"].unique())
    body = []
    for backend in lat.index:
        cells = [latex_escape(label(backend, lang)), number(lat.loc[backend, "p50_ms"], 3),
                 number(lat.loc[backend, "p99_ms"], 3)]  # fmt: skip
        cells += [f"{thr[(backend, b)]:,.0f}".replace(",", r"\,") for b in (batches[0], batches[-1])]
        cells += [number(size_.loc[backend, "bytes"] / 1e6, 2),
                  number(100 * agree.loc[backend, "agreement_with_torch"], 1)]  # fmt: skip
        body.append(" & ".join(cells))
    per_s = label("throughput", lang)
    batch = "lot" if lang == "fr" else "batch"
    header = [label("backend", lang), "p50 (ms)", "p99 (ms)", header_cell(f"{per_s}, {batch} {batches[0]}"),
              header_cell(f"{per_s}, {batch} {batches[-1]}"), header_cell(label("model_mb", lang)),
              header_cell(label("agreement", lang))]  # fmt: skip
    note = source_note("tables.inference_table", sources)
    return write_tex(
        output_path(out, "inference_table", lang, ".tex"), [note], tabular("lrrrrrr", header, body)
    )


def macro_name(key: str) -> str:
    """A LaTeX command name from ``key``: letters only, each word capitalised, digits spelt out.

    ``best_step`` -> ``BestStep``, ``DQN_completion`` -> ``DQNCompletion``, ``p95_lateness`` ->
    ``PNineFiveLateness``. Capitalised names stay clear of LaTeX's own (``\\day``, ``\\time``).

    :raises ValueError: ``key`` has no letter or digit.
    """
    parts = [DIGIT_WORDS[int(t)] if t.isdigit() else t for t in re.findall(r"[A-Za-z]+|[0-9]", key)]
    if not parts:
        raise ValueError(f"cannot make a LaTeX macro name from {key!r}")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def macro_value(value: float | str, significant: int) -> str:
    """A macro's body: strings escaped, integers as they are, floats to ``significant`` digits.

    :raises ValueError: NaN or infinite (a hole in the thesis text).
    """
    if isinstance(value, str):
        return latex_escape(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    digits = 0 if value == 0 else max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return number(value, digits)


def numbers_macros(
    values: Mapping[str, float | str], out: str | Path, *, sources: Sequence[str | Path], significant: int = 3
) -> Path:
    r"""``\newcommand`` macros for the numbers quoted in the chapter's text.

    ``{"DQN_completion": 73.41}`` gives ``\newcommand{\DQNCompletion}{73.4}``: the text says
    ``\DQNCompletion\,\%`` and never holds a number typed by hand. Values are written as given (no
    percent scaling); pass a string for any other formatting.

    :param values: key (sanitised with :func:`macro_name`) -> number or text.
    :param out: .tex path or folder (default name ``numbers.tex``).
    :param sources: the results file(s) the values were read from (named in the file's first line).
    :param significant: significant digits of floats (integers are never rounded).
    :return: the .tex file written.
    :raises ValueError: two keys giving one macro name, a key without letters or digits, a NaN value.
    """
    note = source_note("tables.numbers_macros", sources)
    names: dict[str, str] = {}
    lines = []
    for key, value in values.items():
        name = macro_name(key)
        if name in names:
            raise ValueError(f"keys {names[name]!r} and {key!r} both give the macro \\{name}")
        names[name] = key
        try:
            lines.append(rf"\newcommand{{\{name}}}{{{macro_value(value, significant)}}}")
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
    # The macros have no language: always the plain name, as latex/main.tex inputs it.
    return write_tex(output_path(out, "numbers", "fr", ".tex"), [note], lines)


#: Columns of :func:`ablation_tex`: ``rl_lib.ablation`` column -> display digits (None: from the CIs).
ABLATION_COLUMNS = ("reward", "diff_batch_matching", "diff_nearest", "p_beats_batch_matching", "gap_closed")


def ablation_tex(
    table: pd.DataFrame, out: str | Path, lang: str = "fr", *, reference: str = "dqn",
    sources: Sequence[str | Path],
) -> Path:  # fmt: skip
    """The agent study (``evaluation/ablation.csv``, :func:`rl_lib.ablation.ablation_table`): one row per
    variant with its reward, paired differences to batch matching and nearest, probability of beating
    batch matching and share of its gap to the bound closed, each with its 95 % CI (an asterisk when a
    difference's interval excludes 0).

    :param reference: the run name of the study's reference (every variant changes one ingredient of
        it), labelled "study reference" rather than by its algorithm.
    """
    check_lang(lang)
    rows = table.set_index("policy")
    policies = ordered_policies(rows.index)
    intervals = {"reward": "reward_ci", "diff_batch_matching": "diff_batch_matching_ci",
                 "diff_nearest": "diff_nearest_ci", "p_beats_batch_matching": "p_ci",
                 "gap_closed": "gap_closed_ci"}  # fmt: skip
    columns = [c for c in ABLATION_COLUMNS if c in rows.columns]
    scale = {c: 100.0 if c == "gap_closed" else 1.0 for c in columns}
    digits = {c: 2 if c == "p_beats_batch_matching" else
              decimals(scale[c] * (rows[f"{intervals[c]}_high"] - rows[f"{intervals[c]}_low"]).to_numpy() / 2,
                       scale[c] * rows[c].to_numpy()) for c in columns}  # fmt: skip
    body, starred = [], False
    for policy in policies:
        r = rows.loc[policy]
        cells = [latex_escape(study_label(policy, reference, lang))]
        for c in columns:
            low, high = r[f"{intervals[c]}_low"], r[f"{intervals[c]}_high"]
            cell = interval_cell(scale[c] * r[c], scale[c] * low, scale[c] * high, digits[c])
            if c.startswith("diff_") and (low > 0 or high < 0):
                cell += r"\textsuperscript{*}"
                starred = True
            cells.append(cell)
        cells.append(str(int(r["n_seeds"])))
        body.append(" & ".join(cells))
    header = [label("policy", lang), *(header_cell(label(c, lang)) for c in columns), label("n_seeds", lang)]
    notes = [rf"* {latex_escape(label('ci_excludes_zero', lang))}."] if starred else []
    described = "Cells: mean over the test days [95 % CI, paired two-level bootstrap]."
    return write_tex(output_path(out, "ablation", lang, ".tex"),
                     [source_note("tables.ablation_tex", sources), described],
                     tabular("l" + "c" * (len(columns) + 1), header, body, notes))  # fmt: skip
