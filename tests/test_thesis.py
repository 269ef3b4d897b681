"""Thesis output: figures are vector PDFs with embedded TrueType fonts, tables are well-formed
booktabs LaTeX holding the measured numbers (and nothing else), labels switch language."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from rl_lib.errors import UserError
from rl_lib.thesis import (
    baseline_vs_rl_table,
    checkpoint_timeline,
    kpi_comparison,
    kpi_table,
    label,
    learning_curves,
    numbers_macros,
    save_figure,
    thesis_style,
    training_diagnostics,
)
from rl_lib.thesis.style import LABELS, new_figure, ordered_policies, output_path, policy_color
from rl_lib.thesis.tables import macro_name
from rl_lib.training import train

LANGS = ("fr", "en")
SOURCES = ["results/evaluation/aggregate.csv"]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    """Two real (tiny) training runs: seeds 0 and 1."""
    root = tmp_path_factory.mktemp("runs")
    dirs = [root / f"tiny_seed{seed}" for seed in (0, 1)]
    for seed, run_dir in zip((0, 1), dirs, strict=True):
        train(tiny_config(seed=seed), run_dir, log=lambda *a: None)
    return dirs


def aggregate_row(policy: str, kpi: str, mean: float, half_width: float) -> dict:
    """One row of rl_lib.stats.aggregate_table output (the IQM set equal to the mean)."""
    low, high = mean - half_width, mean + half_width
    return {"policy": policy, "kpi": kpi, "mean": mean, "mean_ci_low": low, "mean_ci_high": high,
            "iqm": mean, "iqm_ci_low": low, "iqm_ci_high": high, "n_seeds": 3, "n_days": 30}  # fmt: skip


MEASURED_KPIS = ("reward_per_step", "completion_rate", "on_time_rate", "p95_lateness_min", "mean_deadhead_km",
                 "total_km", "mean_lateness_min", "decision_ms")  # fmt: skip
#: (mean, CI half-width) per policy and KPI (in MEASURED_KPIS order), in the results files' units.
MEASURED = {
    policy: dict(zip(MEASURED_KPIS, values, strict=True))
    for policy, values in {
        "dqn": [(6.812, 0.041), (0.7412, 0.0061), (0.8123, 0.012), (12.34, 0.81), (1.234, 0.052),
                (2310.0, 41.0), (3.21, 0.22), (0.412, 0.013)],
        "nearest": [(6.501, 0.038), (0.7201, 0.0058), (0.7012, 0.011), (16.52, 0.92), (0.987, 0.047),
                    (2250.0, 39.0), (4.45, 0.25), (0.051, 0.002)],
        "random": [(4.102, 0.061), (0.6034, 0.0092), (0.5021, 0.015), (25.11, 1.42), (2.511, 0.083),
                   (2701.0, 52.0), (8.12, 0.41), (0.032, 0.001)],
    }.items()
}  # fmt: skip
BOUND = {"reward_per_step": (7.903, 0.035), "completion_rate": (0.9012, 0.0043)}


def measured_aggregate(measured: dict = MEASURED) -> pd.DataFrame:
    rows = [aggregate_row(p, k, m, h) for p, kpis in measured.items() for k, (m, h) in kpis.items()]
    rows += [aggregate_row("hindsight_bound", k, m, h) for k, (m, h) in BOUND.items()]
    return pd.DataFrame(rows)


def assert_vector_pdf_with_type42_fonts(path: Path) -> None:
    """A PDF whose every font is embedded TrueType: Type0/CIDFontType2 or TrueType with a FontFile2.

    Matplotlib writes its font dictionaries uncompressed, so their subtypes can be read from the
    bytes; Type 3 (matplotlib's default) or Type 1 fonts would show up there.
    """
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 2000
    subtypes = set(re.findall(rb"/Type\s*/Font\s*/Subtype\s*/(\w+)", data))
    subtypes |= set(re.findall(rb"/Subtype\s*/(\w+)\s*/Type\s*/Font\b", data))
    assert subtypes, "no font in the PDF"
    assert subtypes <= {b"Type0", b"CIDFontType2", b"TrueType"}, subtypes
    assert b"/FontFile2" in data
    assert not re.search(rb"/Subtype\s*/Type[13]\b", data)
    assert b"/Subtype /Image" not in data  # vector only: nothing rasterised


#: A stacked cell (mean over interval): a one-column tabular inside a cell.
STACKED = re.compile(r"\\begin\{tabular\}\[t\]\{@\{\}c@\{\}\}(.*?)\\\\(.*?)\\end\{tabular\}")


def tabular_rows(tex: str) -> tuple[str, list[list[str]]]:
    """The column spec and the cells of every row (header included) of the file's one outer tabular.

    Stacked cells are flattened to ``mean interval``.
    """
    tex = STACKED.sub(r"\1 \2", tex)
    assert tex.count(r"\begin{tabular}") == 1 and tex.count(r"\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    inside = tex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    lines = [ln.strip() for ln in inside.splitlines()[1:] if ln.strip().endswith(r"\\")]
    rows = [re.split(r"(?<!\\)&", ln[: -len(r"\\")]) for ln in lines if not ln.startswith(r"\multicolumn")]
    return spec, rows


def assert_well_formed(tex: str) -> None:
    unescaped = re.sub(r"\\[\\{}%]", "", tex)  # a line break, or an escaped brace or percent
    depth = 0
    for char in unescaped:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, "closing brace without an opening one"
    assert depth == 0, "unbalanced braces"
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    first = tex.splitlines()[0]
    assert first.startswith("% Generated by rl_lib.thesis.") and SOURCES[0] in first


# Style ---------------------------------------------------------------------------------------------


def test_labels_are_french_by_default_with_an_english_switch():
    assert label("completion_rate") == "Taux de service (%)"
    assert label("completion_rate", "en") == "Service rate (%)"
    assert label("mean_deadhead_km") == "Kilomètres à vide par course"
    assert label("p95_lateness_min") == "Retard p95 (min)"
    assert label("on_time_rate") == "Ponctualité (%)"
    assert label("reward_per_step") == "Récompense par décision"
    assert label("step") == "Pas d'entraînement"
    assert all(set(entry) == set(LANGS) for entry in LABELS.values())
    with pytest.raises(KeyError, match="no thesis label"):
        label("completion_rat")
    with pytest.raises(ValueError, match="lang"):
        label("step", "de")


def test_style_is_scoped_and_colours_are_stable():
    before = mpl.rcParams["pdf.fonttype"]
    with thesis_style():
        assert mpl.rcParams["pdf.fonttype"] == 42 and mpl.rcParams["ps.fonttype"] == 42
    assert mpl.rcParams["pdf.fonttype"] == before
    assert policy_color("dqn") == "#0072B2" != policy_color("nearest")
    # An unknown policy gets a spare colour from a stable hash of its name (crc32, not Python's
    # salted hash()): the same colour in every process and every figure.
    assert policy_color("some_new_policy") == "#BCBD22"


def test_policies_keep_one_order_with_the_bound_last():
    given = ["hindsight_bound", "new_ablation", "random", "dqn", "nearest"]
    assert ordered_policies(given) == ["dqn", "nearest", "random", "new_ablation", "hindsight_bound"]


def test_save_figure_writes_atomically_a_type42_pdf(tmp_path):
    fig = new_figure((3, 2))
    fig.subplots().plot([0, 1], [1, 0], label="é")
    path = save_figure(fig, tmp_path / "sub" / "f.pdf", note="from x.csv")
    assert_vector_pdf_with_type42_fonts(path)
    assert b"from x.csv" in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["f.pdf"]  # no temporary file left


def test_save_figure_closes_a_pyplot_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    save_figure(fig, tmp_path / "f.pdf")
    assert not plt.fignum_exists(fig.number)


def test_output_names_default_to_the_french_stem(tmp_path):
    assert output_path(tmp_path, "kpi_table", "fr", ".tex") == tmp_path / "kpi_table.tex"
    assert output_path(tmp_path, "kpi_table", "en", ".tex") == tmp_path / "kpi_table_en.tex"
    assert output_path(tmp_path / "x.tex", "kpi_table", "en", ".tex") == tmp_path / "x.tex"


# Figures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_learning_curves(run_dirs, tmp_path, lang):
    path = learning_curves(run_dirs, tmp_path, lang)
    assert path.name == ("learning_curves.pdf" if lang == "fr" else "learning_curves_en.pdf")
    assert_vector_pdf_with_type42_fonts(path)
    assert str(run_dirs[1].name).encode() in path.read_bytes()  # its sources, in the PDF's Subject


def test_learning_curves_draw_one_line_per_algorithm(run_dirs, tmp_path):
    other = tmp_path / "ppo_like"
    shutil.copytree(run_dirs[0], other)
    meta_path = next(other.glob("*_training_metadata.json"))
    meta = json.loads(meta_path.read_text())
    meta["algo"] = "maskable_ppo"
    meta_path.write_text(json.dumps(meta))
    assert_vector_pdf_with_type42_fonts(learning_curves([*run_dirs, other], tmp_path / "two.pdf"))


def test_learning_curves_refuse_a_run_without_evaluations(run_dirs, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(run_dirs[0], empty)
    meta_path = next(empty.glob("*_training_metadata.json"))
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "evaluations": []}))
    with pytest.raises(UserError, match="no evaluation"):
        learning_curves([run_dirs[0], empty], tmp_path)


@pytest.mark.parametrize("lang", LANGS)
def test_checkpoint_timeline(run_dirs, tmp_path, lang):
    assert_vector_pdf_with_type42_fonts(checkpoint_timeline(run_dirs[0], tmp_path, lang))


@pytest.mark.parametrize("lang", LANGS)
def test_training_diagnostics(run_dirs, tmp_path, lang):
    assert_vector_pdf_with_type42_fonts(training_diagnostics(run_dirs[0], tmp_path, lang))


def test_training_diagnostics_without_events_is_a_clear_error(run_dirs, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dirs[0], bare, ignore=shutil.ignore_patterns("tensorboard"))
    with pytest.raises(UserError, match="no TensorBoard event file"):
        training_diagnostics(bare, tmp_path)


@pytest.mark.parametrize("lang", LANGS)
def test_kpi_comparison(tmp_path, lang):
    path = kpi_comparison(measured_aggregate(), tmp_path, lang, sources=SOURCES)
    assert path.name == ("kpi_comparison.pdf" if lang == "fr" else "kpi_comparison_en.pdf")
    assert_vector_pdf_with_type42_fonts(path)


def test_kpi_comparison_needs_a_source_and_the_aggregate_columns(tmp_path):
    with pytest.raises(ValueError, match="sources"):
        kpi_comparison(measured_aggregate(), tmp_path, sources=[])
    with pytest.raises(ValueError, match="mean_ci_low"):
        kpi_comparison(measured_aggregate().drop(columns="mean_ci_low"), tmp_path, sources=SOURCES)


# Tables --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_kpi_table_holds_the_measured_numbers(tmp_path, lang):
    path = kpi_table(measured_aggregate(), tmp_path, lang, sources=SOURCES)
    tex = path.read_text()
    assert_well_formed(tex)
    spec, rows = tabular_rows(tex)
    assert spec == "lccccc"
    assert len(rows) == 1 + 4  # header, dqn, nearest, random, the bound
    assert all(len(row) == 6 for row in rows)
    dqn = dict(zip(("policy", "reward", "completion", "on_time", "p95", "deadhead"), rows[1], strict=True))
    assert label("dqn", lang) in dqn["policy"]
    # Each column rounded to its median CI half-width: 0.0395, 0.595 points, 1.2 points, 0.92, 0.052.
    assert dqn["reward"].strip() == r"$6.81$ {\footnotesize$[6.77, 6.85]$}"
    assert "$74.1$" in dqn["completion"] and "[73.5, 74.7]" in dqn["completion"]
    assert "$81.2$" in dqn["on_time"] and "$12.3$" in dqn["p95"] and "$1.23$" in dqn["deadhead"]
    bound = rows[-1]
    assert label("hindsight_bound", lang) in bound[0] and "$90.1$" in bound[2] and bound[3].strip() == "--"
    assert "do not edit" in tex.splitlines()[0]


def table_numbers(tex: str) -> set[str]:
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    body = re.sub(r"\\addlinespace\[\w+\]", "", body)  # row spacing, not a number of the table
    return set(re.findall(r"[+-]?\d+\.\d+|[+-]?\d+", body))


def baseline_vs_rl_numbers(measured: dict) -> set[str]:
    """Every number the table may hold: the two policies' rounded means and bounds, and differences."""
    expected = set()
    # Decimals per row: from the median CI half-width (0.0395, 0.595 points, 40, 0.235, 0.0075).
    for kpi, digits in [("reward_per_step", 2), ("completion_rate", 1), ("total_km", 0),
                        ("mean_lateness_min", 1), ("decision_ms", 3)]:  # fmt: skip
        scale = 100 if kpi == "completion_rate" else 1
        for policy in ("nearest", "dqn"):
            mean, half = measured[policy][kpi]
            expected |= {f"{scale * v:.{digits}f}" for v in (mean, mean - half, mean + half)}
        diff = scale * (measured["dqn"][kpi][0] - measured["nearest"][kpi][0])
        expected.add(f"{diff:+.{digits}f}")
    return expected


@pytest.mark.parametrize("lang", LANGS)
def test_baseline_vs_rl_table_is_filled_from_measurements_only(tmp_path, lang):
    tex = baseline_vs_rl_table(measured_aggregate(), tmp_path, lang, sources=SOURCES).read_text()
    assert_well_formed(tex)
    spec, rows = tabular_rows(tex)
    assert spec == "lcccl" and len(rows) == 1 + 5 and all(len(row) == 5 for row in rows)
    assert [row[0].strip() for row in rows[1:]] == [
        label(k, lang).replace("%", r"\%")
        for k in ("reward_per_step", "completion_rate", "total_km", "mean_lateness_min", "decision_ms")
    ]
    assert table_numbers(tex) <= baseline_vs_rl_numbers(MEASURED)
    # The agent is measured worse on distance and decision latency: the table says so.
    verdicts = {row[0].strip(): row[4].strip() for row in rows[1:]}
    assert verdicts[label("total_km", lang)].startswith(label("worse", lang))
    assert verdicts[label("decision_ms", lang)] == label("worse", lang)
    assert verdicts[label("reward_per_step", lang)] == label("better", lang)
    latency = next(row for row in rows if row[0].strip() == label("decision_ms", lang))
    assert latency[3].strip() == "$+0.361$"


def test_baseline_vs_rl_table_shows_an_agent_worse_than_the_baseline(tmp_path):
    worse = {**MEASURED, "dqn": {**MEASURED["dqn"], "reward_per_step": (6.101, 0.040),
                                 "completion_rate": (0.6801, 0.0060)}}  # fmt: skip
    tex = baseline_vs_rl_table(measured_aggregate(worse), tmp_path, sources=SOURCES).read_text()
    _, rows = tabular_rows(tex)
    reward, completion = rows[1], rows[2]
    assert reward[3].strip() == "$-0.40$" and reward[4].strip() == "moins bon"
    assert completion[3].strip() == "$-4.0$" and completion[4].strip() == "moins bon"
    assert table_numbers(tex) <= baseline_vs_rl_numbers(worse)


def test_baseline_vs_rl_table_marks_overlapping_intervals(tmp_path):
    close = {**MEASURED, "dqn": {**MEASURED["dqn"], "total_km": (2260.0, 41.0)}}
    tex = baseline_vs_rl_table(measured_aggregate(close), tmp_path, sources=SOURCES).read_text()
    _, rows = tabular_rows(tex)
    assert rows[3][4].strip() == r"moins bon\textsuperscript{\dag}"
    assert r"\dag{} les IC à 95 \% se chevauchent" in tex


def test_baseline_vs_rl_table_refuses_a_missing_measurement(tmp_path):
    aggregate = measured_aggregate()
    aggregate = aggregate[~((aggregate["policy"] == "dqn") & (aggregate["kpi"] == "decision_ms"))]
    with pytest.raises(ValueError, match="dqn/decision_ms"):
        baseline_vs_rl_table(aggregate, tmp_path, sources=SOURCES)
    assert not (tmp_path / "baseline_vs_rl.tex").exists()


def test_numbers_macros(tmp_path):
    values = {"DQN_completion": 74.1234, "num_days": 30, "p95_lateness": 12.345, "BestStep": "15 000",
              "gap": -0.000123, "share": "12 %"}  # fmt: skip
    path = numbers_macros(values, tmp_path, sources=SOURCES)
    tex = path.read_text()
    assert path.name == "numbers.tex"
    assert tex.splitlines()[0].startswith("% Generated by rl_lib.thesis.tables.numbers_macros from")
    assert r"\newcommand{\DQNCompletion}{74.1}" in tex
    assert r"\newcommand{\NumDays}{30}" in tex
    assert r"\newcommand{\PNineFiveLateness}{12.3}" in tex
    assert r"\newcommand{\BestStep}{15 000}" in tex
    assert r"\newcommand{\Gap}{-0.000123}" in tex
    assert r"\newcommand{\Share}{12 \%}" in tex
    unescaped = re.sub(r"\\[{}%]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")


def test_numbers_macros_refuse_clashing_names_and_holes(tmp_path):
    assert macro_name("seed_0") == macro_name("seed0") == "SeedZero"
    with pytest.raises(ValueError, match="both give"):
        numbers_macros({"seed_0": 1.0, "seed0": 2.0}, tmp_path, sources=SOURCES)
    with pytest.raises(ValueError, match="finite"):
        numbers_macros({"x": np.nan}, tmp_path, sources=SOURCES)
    assert not (tmp_path / "numbers.tex").exists()


def test_gap_to_bound_table_holds_every_policys_gap(tmp_path):
    from rl_lib.thesis.tables import gap_to_bound_table

    gap = pd.DataFrame([
        {"policy": p, "bound": "hindsight_bound", "kpi": "reward", "abs_gap": a, "abs_gap_ci_low": a - 4.0,
         "abs_gap_ci_high": a + 4.0, "rel_gap": r, "rel_gap_ci_low": r - 0.01, "rel_gap_ci_high": r + 0.01,
         "n_days": 30}
        for p, a, r in (("nearest", 120.0, 0.25), ("dqn", 61.0, 0.125), ("random", 240.0, 0.5))
    ])  # fmt: skip
    tex = gap_to_bound_table(gap, tmp_path, sources=SOURCES).read_text()
    assert_well_formed(tex)
    spec, rows = tabular_rows(tex)
    assert spec == "lcc" and [r[0].strip() for r in rows[1:]] == [
        label(p) for p in ("dqn", "nearest", "random")
    ]
    assert "$61$" in rows[1][1] and "[57, 65]" in rows[1][1] and "$12.5$" in rows[1][2]  # rel. gap in %
    with pytest.raises(ValueError, match="rel_gap_ci_low"):
        gap_to_bound_table(gap.drop(columns="rel_gap_ci_low"), tmp_path / "x.tex", sources=SOURCES)


# The figures step ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory) -> Path:
    """A results folder as the pipeline leaves it: a tiny DQN and a tiny MaskablePPO run, evaluation
    tables computed by rl_lib.stats from a made-up per-episode table, and inference tables."""
    from rl_lib.stats import aggregate_table, gap_to_bound, paired_differences, probability_of_improvement

    root = tmp_path_factory.mktemp("results")
    ppo = {"ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 1, "net_arch": [16]},
           "checkpoints": {"checkpoint_freq": 64, "eval_freq": 128}}  # fmt: skip
    for config in (
        tiny_config(),
        tiny_config(algo="maskable_ppo", name="tinyppo", total_timesteps=256, **ppo),
    ):
        t = config.training
        train(config, root / "runs" / f"{t.name}_seed{t.seed}", log=lambda *a: None)
    rng = np.random.default_rng(0)
    rows = []
    levels = {"tiny": 0.8, "tinyppo": 0.75, "nearest": 0.7, "random": 0.5, "hindsight_bound": 0.95}
    for policy, level in levels.items():
        seeds = (-1,) if policy == "hindsight_bound" else (0, 1) if policy.startswith("tiny") else (0,)
        for seed in seeds:
            for day in range(6):
                rate = level + rng.normal(0, 0.02)
                row = {"policy": policy, "seed": seed, "day_id": day, "reward": 1000 * rate,
                       "completion_rate": rate}  # fmt: skip
                if policy != "hindsight_bound":  # the bound has only these two KPIs
                    row |= {
                        "reward_per_step": 5 * rate,
                        "on_time_rate": rate,
                        "total_km": 2000 * rate,
                        "p95_lateness_min": 20 * (1 - rate),
                        "mean_lateness_min": 9 * (1 - rate),
                        "mean_deadhead_km": 3 - rate,
                        "decision_ms": 0.1 + rng.uniform(0, 0.01),
                    }
                    # fmt: skip
                rows.append(row)
    per_episode = pd.DataFrame(rows)
    evaluation = root / "evaluation"
    evaluation.mkdir()
    agents = [p for p in levels if p != "hindsight_bound"]
    backends = ["torch", "onnx"]
    for name, table in {
        "aggregate": aggregate_table(per_episode, n_resamples=50),
        "paired_differences": paired_differences(per_episode, n_resamples=50),
        "probability_of_improvement": probability_of_improvement(per_episode, n_resamples=50),
        "gap_to_bound": gap_to_bound(per_episode, policies=agents, n_resamples=50),
        "inference_latency": pd.DataFrame({"backend": backends, "p50_ms": [0.3, 0.1], "p95_ms": [0.4, 0.15],
                                           "p99_ms": [0.5, 0.2]}),
        "inference_throughput": pd.DataFrame({"backend": [b for b in backends for _ in (1, 256)],
                                              "batch": [1, 256, 1, 256],
                                              "decisions_per_s": [3e3, 5e4, 9e3, 2e5]}),
        "inference_size": pd.DataFrame({"backend": backends, "bytes": [90_000, 80_000]}),
        "inference_agreement": pd.DataFrame({"backend": backends, "agreement_with_torch": [1.0, 1.0]}),
    }.items():  # fmt: skip
        table.to_csv(evaluation / f"{name}.csv", index=False)
    return root


def test_figures_step_serves_a_ppo_agent_and_reports_the_gap_to_the_bound(results_folder, tmp_path):
    from rl_lib.pipeline import figures_step

    figures_dir, tables_dir = tmp_path / "figures", tmp_path / "tables"
    written = figures_step(str(results_folder), "en", str(figures_dir), str(tables_dir), agent="tinyppo")
    assert all(path.is_file() and path.parent in (figures_dir, tables_dir) for path in written)
    assert sorted(p.name for p in figures_dir.iterdir()) == sorted(
        f"{n}_en.pdf" for n in ("learning_curves", "kpi_comparison", "checkpoint_timeline",
                                "training_diagnostics", "inference_latency"))  # fmt: skip
    hyperparameters = (tables_dir / "hyperparameters_en.tex").read_text()
    assert "GAE $\\lambda$ & 0.95" in hyperparameters and "Steps per rollout & 64" in hyperparameters
    # The PPO run's own hyperparameters, not the unused DQN section of its config.
    assert "Double DQN" not in hyperparameters
    assert "tinyppo_seed0" in hyperparameters.splitlines()[0]
    _, rows = tabular_rows((tables_dir / "gap_to_bound_en.tex").read_text())
    assert [r[0].strip() for r in rows[1:]] == [
        label("nearest", "en"),
        label("random", "en"),
        "tiny",
        "tinyppo",
    ]
    numbers = (tables_dir / "numbers.tex").read_text()
    assert r"\newcommand{\NumSeeds}{1}" in numbers and r"\newcommand{\KaggleDiskBudgetGB}{18}" in numbers
    assert not list(tmp_path.glob(".*staged*")), "the staging folders are removed"


def test_figures_step_writes_nothing_on_a_bad_input(results_folder, tmp_path):
    from rl_lib.pipeline import figures_step

    results = tmp_path / "results"
    shutil.copytree(results_folder, results)
    figures_dir, tables_dir = tmp_path / "figures", tmp_path / "tables"
    tables_dir.mkdir()
    (tables_dir / "kpi_table.tex").write_text("% from an earlier results folder\n")
    aggregate = pd.read_csv(results / "evaluation" / "aggregate.csv")
    broken = aggregate[~((aggregate["policy"] == "tiny") & (aggregate["kpi"] == "decision_ms"))]
    broken.to_csv(results / "evaluation" / "aggregate.csv", index=False)  # the 5th output needs it
    with pytest.raises(UserError, match="tiny/decision_ms"):
        figures_step(str(results), "fr", str(figures_dir), str(tables_dir), agent="tiny")
    with pytest.raises(UserError, match="no 'sac' run"):
        figures_step(str(results), "fr", str(figures_dir), str(tables_dir), agent="sac")
    (results / "evaluation" / "inference_size.csv").unlink()  # checked before anything is drawn
    with pytest.raises(UserError, match="inference_size.csv: missing"):
        figures_step(str(results), "fr", str(figures_dir), str(tables_dir), agent="tiny")
    assert not figures_dir.exists() and [p.name for p in tables_dir.iterdir()] == ["kpi_table.tex"]
    assert (tables_dir / "kpi_table.tex").read_text() == "% from an earlier results folder\n"
    assert not list(tmp_path.glob(".*staged*"))
