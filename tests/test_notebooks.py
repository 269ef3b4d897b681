"""Notebooks: thin, parameterised, stripped; the quick pipeline runs under nbval end to end, its
figures and tables are well formed and the chapter compiles with them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIGURES = (
    "learning_curves",
    "kpi_comparison",
    "checkpoint_timeline",
    "training_diagnostics",
    "inference_latency",
    "tuning_history",
    "tuning_importances",
    "tuning_parallel",
)
TABLES = (
    "kpi_table",
    "baseline_vs_rl",
    "paired_differences",
    "hyperparameters",
    "inference_table",
    "gap_to_bound",
    "tuning_params",
    "tuning_retrain",
    "numbers",
)


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_train.ipynb",
        "02_evaluate.ipynb",
        "03_chapter7_figures.ipynb",
        "04_tune.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_thin_parameterised_and_stripped(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, (
            "commit notebooks with outputs stripped"
        )
        source = "".join(cell["source"])
        assert "def " not in source and "class " not in source, "notebooks call rl_lib; they define nothing"
        if "parameters" in cell["metadata"].get("tags", []):  # declarations only, however many
            assert all(line.startswith("#") or " = " in line for line in source.splitlines() if line)
        else:
            assert len(source.splitlines()) <= 12


@pytest.fixture(scope="module")
def quick_pipeline(tmp_path_factory) -> Path:
    """Run 01 -> 02 -> 03 -> 04 with the quick parameters under nbval, into a temporary folder."""
    out = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load((ROOT / "params" / "quick.yaml").read_text())
    params.update(results_dir=str(out / "results"), figures_dir=str(out / "thesis_figures"),
                  tables_dir=str(out / "latex" / "generated"))  # fmt: skip
    prepared = []
    for path in NOTEBOOKS:
        target = out / path.name
        wanted = {k: v for k, v in params.items() if k in _parameter_names(path)}
        papermill.execute_notebook(str(path), str(target), parameters=wanted, prepare_only=True)
        prepared.append(str(target))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", *prepared],
        cwd=out, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out


def _parameter_names(path: Path) -> set[str]:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines() if "=" in line}


def test_pipeline_writes_its_results_as_files(quick_pipeline):
    evaluation = quick_pipeline / "results" / "evaluation"
    for name in (
        "per_episode",
        "aggregate",
        "paired_differences",
        "probability_of_improvement",
        "gap_to_bound",
    ):
        assert (evaluation / f"{name}.csv").stat().st_size > 0
    runs = sorted(p.name for p in (quick_pipeline / "results" / "runs").iterdir())
    assert runs == ["dqn_seed0", "dqn_seed1", "maskable_ppo_seed0", "maskable_ppo_seed1"]
    study = quick_pipeline / "results" / "tuning" / "dqn"
    assert len(pd.read_csv(study / "trials.csv")) == 4
    decision = json.loads((study / "retrain" / "decision.json").read_text())
    assert decision["seeds"] == [0, 1, 2, 3, 4] and len(decision["candidates"]) == 1
    assert "tuned_config" not in decision  # the quick parameters never write configs/dqn_tuned.yaml


def test_figures_are_vector_pdfs_with_type42_fonts(quick_pipeline):
    for name in FIGURES:
        data = (quick_pipeline / "thesis_figures" / f"{name}.pdf").read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 5_000
        assert b"/FontFile2" in data, f"{name}: fonts must be embedded as TrueType (Type 42)"
        assert b"/Subtype /Type3" not in data and b"/Subtype /Type1" not in data


def test_tables_parse(quick_pipeline):
    generated = quick_pipeline / "latex" / "generated"
    for name in TABLES:
        text = (generated / f"{name}.tex").read_text()
        assert text.startswith("%"), "every generated file names its source first"
        assert text.count("{") == text.count("}")
        if name != "numbers":
            assert r"\begin{tabular}" in text and r"\end{tabular}" in text
            assert r"\toprule" in text and r"\bottomrule" in text
    numbers = (generated / "numbers.tex").read_text()
    for macro in (
        "NumDays",
        "NumSeeds",
        "DQNCompletion",
        "NearestCompletion",
        "BestStep",
        "TotalSteps",
        "EvalFreq",
        "NumEvalDays",
        "KaggleDiskBudgetGB",
    ):
        assert rf"\newcommand{{\{macro}}}" in numbers


def test_chapter_compiles_with_the_generated_files(quick_pipeline, tmp_path):
    if shutil.which("latexmk") is None:
        pytest.skip(
            "latexmk is not installed (.ci/run installs TeX Live; locally: apt-get install latexmk ...)"
        )
    latex = tmp_path / "latex"
    shutil.copytree(ROOT / "latex", latex, ignore=shutil.ignore_patterns("build", "generated"))
    shutil.copytree(quick_pipeline / "latex" / "generated", latex / "generated")
    shutil.copytree(quick_pipeline / "thesis_figures", tmp_path / "thesis_figures")
    result = subprocess.run(["latexmk"], cwd=latex, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (latex / "build" / "main.pdf").stat().st_size > 10_000
    (tmp_path / "thesis_figures" / "kpi_comparison.pdf").unlink()  # a missing figure must fail the build
    assert subprocess.run(["latexmk"], cwd=latex, capture_output=True, timeout=300).returncode != 0


def test_a_bad_papermill_parameter_gives_a_clear_error(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="parameter seeds: expected a non-empty list"):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "01_train.ipynb"), str(tmp_path / "out.ipynb"),
            parameters={"seeds": "0, 1", "results_dir": str(tmp_path / "r")}, progress_bar=False,
        )  # fmt: skip
    assert not (tmp_path / "r").exists()
