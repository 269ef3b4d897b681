"""The tuning section of Chapter 7: Optuna's own plots in the thesis style, and two LaTeX tables.

Figures come from ``optuna.visualization.matplotlib`` (optimisation history, parameter importances,
parallel coordinates), drawn inside :func:`rl_lib.thesis.style.thesis_style` at the thesis width and
saved by :func:`rl_lib.thesis.style.save_figure`. Optuna's functions switch matplotlib to its
"ggplot" style sheet first; that call is neutralised while they draw, so the thesis rcParams hold.

Importances use Optuna's PED-ANOVA evaluator (no scikit-learn needed, unlike fANOVA), named in the
figure's axis label, on the completed trials' values.

Tables: ``tuning_params.tex`` (the searched ranges, the default and the three best trials'
values) and ``tuning_retrain.tex`` (the re-training on fresh seeds: reward IQM with its CI, and
difference and relative gain against the default with their CIs, next to the plan's +10-15 %).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import optuna
import pandas as pd

from rl_lib.thesis.style import (
    check_lang,
    figure_size,
    label,
    output_path,
    save_figure,
    source_note,
    thesis_style,
)
from rl_lib.thesis.tables import interval_cell, latex_escape, number, tabular, write_tex
from rl_lib.tuning.study import quiet_experimental

IMPORTANCE_EVALUATOR = "PED-ANOVA"


@contextmanager
def _thesis_styled_optuna(size: tuple[float, float]) -> Iterator[None]:
    """Thesis rcParams at ``size`` while an Optuna plot draws, its ggplot switch disabled."""
    import matplotlib.pyplot as plt

    with (
        thesis_style(),
        mock.patch.object(plt.style, "use", lambda *args, **kwargs: None),
        quiet_experimental(),
    ):
        with plt.rc_context({"figure.figsize": size}):
            yield


def _clear_titles(ax) -> None:
    """Optuna titles its plots (left and centre); the chapter's captions do that."""
    for loc in ("left", "center"):
        ax.set_title("", loc=loc)
    ax.figure.suptitle("")


def optimization_history(study: optuna.Study, out: str | Path, lang: str = "fr", *,
                         sources: Sequence[str | Path]) -> Path:  # fmt: skip
    """Every trial's value and the best so far, by trial number (default name ``tuning_history.pdf``)."""
    from optuna.visualization.matplotlib import plot_optimization_history

    with _thesis_styled_optuna(figure_size(aspect=0.5)):
        ax = plot_optimization_history(study, target_name=label("validation_reward", lang))
        _clear_titles(ax)
        ax.set_xlabel(label("trial", lang))
        names = [label("validation_reward", lang), label("best_value", lang)]
        ax.legend(ax.get_legend_handles_labels()[0], names, loc="lower right")
        return save_figure(ax.figure, output_path(out, "tuning_history", lang, ".pdf"),
                           source_note("tuning.optimization_history", sources))  # fmt: skip


def param_importances(study: optuna.Study, out: str | Path, lang: str = "fr", *,
                      sources: Sequence[str | Path]) -> Path:  # fmt: skip
    """Hyperparameter importances for the validation reward, PED-ANOVA (``tuning_importances.pdf``)."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    with _thesis_styled_optuna(figure_size(aspect=0.5)):
        ax = plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                    target_name=label("validation_reward", lang))  # fmt: skip
        _clear_titles(ax)
        ax.get_legend().remove()
        ax.set_xlabel(label("importance", lang).format(evaluator=IMPORTANCE_EVALUATOR))
        ax.set_ylabel(label("parameter", lang))
        return save_figure(ax.figure, output_path(out, "tuning_importances", lang, ".pdf"),
                           source_note("tuning.param_importances", sources))  # fmt: skip


def parallel_coordinates(study: optuna.Study, out: str | Path, lang: str = "fr", *,
                         sources: Sequence[str | Path], n_params: int = 6) -> Path:  # fmt: skip
    """Each completed trial as a line across the ``n_params`` most important parameters (PED-ANOVA),
    coloured by value (``tuning_parallel.pdf``)."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with _thesis_styled_optuna(figure_size(aspect=0.55)):
        importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        ax = plot_parallel_coordinate(study, params=list(importances)[:n_params],
                                      target_name=label("validation_reward", lang))  # fmt: skip
        _clear_titles(ax)
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")
        return save_figure(ax.figure, output_path(out, "tuning_parallel", lang, ".pdf"),
                           source_note("tuning.parallel_coordinates", sources))  # fmt: skip


def params_table(study: optuna.Study, trials: pd.DataFrame, out: str | Path, lang: str = "fr", *,
                 sources: Sequence[str | Path], top: int = 3) -> Path:  # fmt: skip
    """Searched ranges, the default (base config) and the ``top`` best completed trials' values."""
    from rl_lib.tuning.space import SearchSpace
    from rl_lib.tuning.study import best_trials

    check_lang(lang)
    space = SearchSpace.from_dict(study.user_attrs["space"], "the study's search space")
    dqn = study.user_attrs["base_config"]["training"]["dqn"]
    defaults = {**dqn, "one_minus_gamma": 1 - dqn["gamma"], "net_width": dqn["net_arch"][0],
                "net_depth": len(dqn["net_arch"])}  # fmt: skip
    best = best_trials(study, top)
    header = [latex_escape(label(k, lang)) for k in ("parameter", "range_searched", "default")]
    header += [rf"\#{t.number}" for t in best]
    body = []
    for name, dist in space.spec.items():
        if dist["type"] == "categorical":
            searched = r"\{" + ", ".join(_value(c) for c in dist["choices"]) + r"\}"
        else:
            scale = f" ({label('log', lang)})" if dist.get("log") else ""
            searched = f"[{_value(dist['low'])}, {_value(dist['high'])}]{scale}"
        cells = [latex_escape(name), searched, _value(defaults.get(name))]
        cells += [_value(t.params.get(name)) for t in best]
        body.append(" & ".join(cells))
    values = [rf"\textbf{{{number(t.value, 1)}}}" for t in best]
    body += [r"\midrule", " & ".join([latex_escape(label("validation_reward", lang)), "", ""] + values)]
    completed = int((trials["state"] == "COMPLETE").sum())
    pruned = int((trials["state"] == "PRUNED").sum())
    note = (f"{len(trials)} essais : {completed} terminés, {pruned} élagués." if lang == "fr"
            else f"{len(trials)} trials: {completed} completed, {pruned} pruned.")  # fmt: skip
    return write_tex(output_path(out, "tuning_params", lang, ".tex"),
                     [source_note("tuning.params_table", sources)],
                     tabular("ll" + "r" * (1 + len(best)), header, body, [note]))  # fmt: skip


def _value(value: object) -> str:
    if value is None:
        return "--"
    if isinstance(value, float) and not float(value).is_integer():
        return f"${value:.3g}$"
    return f"${int(value)}$" if isinstance(value, (int, float)) else latex_escape(str(value))


def retrain_table(
    decision: dict, out: str | Path, lang: str = "fr", *, sources: Sequence[str | Path]
) -> Path:
    """The re-training on fresh seeds (``decision.json`` of rl_lib.tuning.retrain): one row per config."""
    check_lang(lang)
    low, high = decision["default_iqm_ci"]
    body = [rf"{label('default', lang)} & {interval_cell(decision['default_iqm'], low, high, 1)} & -- & --"]
    for row in decision["candidates"]:
        gain = [100 * v for v in (row["relative_gain"], *row["relative_gain_ci"])]
        name = row["candidate"].replace("trial", r"essai \#" if lang == "fr" else r"trial \#")
        if row["candidate"] == decision["winner"]:
            name = rf"\textbf{{{name}}}"
        body.append(" & ".join([
            name,
            interval_cell(row["iqm"], *row["iqm_ci"], 1),
            interval_cell(row["mean_diff"], *row["mean_diff_ci"], 1),
            interval_cell(gain[0], gain[1], gain[2], 1),
        ]))  # fmt: skip
    n_seeds, n_days, steps = len(decision["seeds"]), decision["n_days"], decision["timesteps"]
    level = f"{decision['confidence']:.1%}"
    plan_low, plan_high = (round(100 * g) for g in decision["plan_gain"])
    if lang == "fr":
        setting = (f"{n_seeds} graines neuves x {n_days} jours de validation réservés, {steps} pas par "
                   f"entraînement ; IC à {level} (Bonferroni).")  # fmt: skip
        verdict = (
            f"Retenue : {row_name(decision['winner'], lang)} (IC de l'écart au-dessus de 0)."
            if decision["winner"]
            else "Aucune configuration ne bat le défaut avec un IC qui exclut 0."
        )
    else:
        setting = (f"{n_seeds} fresh seeds x {n_days} held-out validation days, {steps} steps per "
                   f"training run; {level} CIs (Bonferroni).")  # fmt: skip
        verdict = (
            f"Kept: {row_name(decision['winner'], lang)} (difference CI above 0)."
            if decision["winner"]
            else "No configuration beats the default with a CI excluding 0."
        )
    header = [
        latex_escape(label(k, lang)) for k in ("candidate", "reward_iqm", "diff_default", "relative_gain")
    ]
    notes = [latex_escape(setting).replace(" x ", r" $\times$ "), latex_escape(verdict),
             latex_escape(label("plan_gain", lang).format(low=plan_low, high=plan_high))]  # fmt: skip
    note = source_note("tuning.retrain_table", sources)
    path = output_path(out, "tuning_retrain", lang, ".tex")
    return write_tex(path, [note], tabular("lccc", header, body, notes))


def row_name(candidate: str, lang: str) -> str:
    return candidate.replace("trial", "essai #" if lang == "fr" else "trial #")


def tuning_outputs(study_dir: str | Path, figures_dir: str | Path, tables_dir: str | Path,
                   lang: str = "fr", storage: str | None = None) -> list[Path]:  # fmt: skip
    """Every tuning figure and table from a study folder (``trials.csv``, ``retrain/decision.json``).

    :param storage: the study's storage URL, e.g. PostgreSQL's (default: the SQLite file in the folder).
    """
    from rl_lib.errors import UserError
    from rl_lib.tuning.study import default_storage_url, open_storage

    study_dir = Path(study_dir)
    decision_path, trials_path = study_dir / "retrain" / "decision.json", study_dir / "trials.csv"
    for path in (trials_path, decision_path):
        if not path.is_file():
            raise UserError(
                f"{path} is missing: run the tuning (rl-lib tune or notebooks/04_tune.ipynb) first"
            )
    url = storage or default_storage_url(study_dir)
    try:  # a study's folder is OUT/STUDY (rl_lib.tuning.study.make_spec): the name is the folder's
        study = optuna.load_study(study_name=study_dir.name, storage=open_storage(url))
    except KeyError:
        raise UserError(f"{url} holds no study named {study_dir.name!r}; pass the study's storage") from None
    trials = pd.read_csv(trials_path)
    figures = [f(study, figures_dir, lang, sources=[url])
               for f in (optimization_history, param_importances, parallel_coordinates)]  # fmt: skip
    decision = json.loads(decision_path.read_text())
    return [*figures, params_table(study, trials, tables_dir, lang, sources=[url, trials_path]),
            retrain_table(decision, tables_dir, lang, sources=[decision_path])]  # fmt: skip
