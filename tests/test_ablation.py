"""The agent study's table: paired differences to batch matching and nearest, and the gap closed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_lib.ablation import ablation_table, format_ablation
from rl_lib.errors import UserError
from rl_lib.stats import gap_closed


def per_episode(n_days: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = 1400 + 100 * rng.standard_normal(n_days)  # days differ a lot: pairing removes it
    rows = []
    for day in range(n_days):
        baselines = {
            "nearest": (-40, 0),
            "batch_matching": (0, 0),
            "random": (-200, 0),
            "hindsight_bound": (400, -1),
        }
        for policy, (offset, seed) in baselines.items():
            rows.append({"policy": policy, "seed": seed, "day_id": day, "reward": base[day] + offset})
        for seed in range(3):
            noise = rng.normal(0, 1)
            rows.append({"policy": "dqn", "seed": seed, "day_id": day, "reward": base[day] + 100 + noise})
            rows.append({"policy": "dqn_mlp", "seed": seed, "day_id": day, "reward": base[day] - 150 + noise})
    return pd.DataFrame(rows)


def test_gap_closed_is_the_share_of_the_reference_gap_to_the_bound():
    closed = gap_closed(per_episode(), "batch_matching", policies=["dqn", "dqn_mlp"], n_resamples=200)
    closed = closed.set_index("policy")
    assert closed.loc["dqn", "gap_closed"] == pytest.approx(0.25, abs=0.01)  # +100 of a 400 gap
    assert closed.loc["dqn_mlp", "gap_closed"] == pytest.approx(-0.375, abs=0.01)
    assert closed.loc["dqn", "ci_low"] <= 0.25 <= closed.loc["dqn", "ci_high"]


def test_ablation_table_pairs_each_agent_with_the_strongest_heuristics():
    table = ablation_table(per_episode(), n_resamples=300).set_index("policy")
    assert list(table.index) == ["dqn", "dqn_mlp"]
    dqn, mlp = table.loc["dqn"], table.loc["dqn_mlp"]
    assert dqn["diff_batch_matching"] == pytest.approx(100, abs=1) and dqn["diff_nearest"] == pytest.approx(
        140, abs=1
    )
    assert dqn["diff_batch_matching_ci_low"] > 0 and mlp["diff_batch_matching_ci_high"] < 0
    # Paired by day: the interval is narrow although days differ by ~100.
    assert dqn["diff_batch_matching_ci_high"] - dqn["diff_batch_matching_ci_low"] < 5
    assert dqn["p_beats_batch_matching"] == 1.0 and mlp["p_beats_batch_matching"] == 0.0
    assert (dqn["n_seeds"], dqn["n_days"]) == (3, 20)
    text = format_ablation(table.reset_index())
    assert "dqn_mlp" in text and "gap closed" in text


def test_ablation_table_needs_the_baselines():
    episodes = per_episode()
    with pytest.raises(UserError, match="batch_matching"):
        ablation_table(episodes[episodes["policy"] != "batch_matching"], n_resamples=10)


def test_the_study_goes_into_a_latex_table_and_a_figure(tmp_path):
    from rl_lib.thesis.figures import ablation_differences
    from rl_lib.thesis.tables import ablation_tex

    table = ablation_table(per_episode(), n_resamples=200)
    tex = ablation_tex(table, tmp_path, "fr", sources=["evaluation/ablation.csv"]).read_text()
    assert "MLP du plan" in tex and r"\textsuperscript{*}" in tex
    # The reference row is the study's, not the thesis default that later gained a dueling head
    assert "Référence de l'étude" in tex and "DQN masqué" not in tex
    assert "evaluation/ablation.csv" in tex  # the source is named in the file
    pdf = ablation_differences(table, tmp_path, "en", sources=["evaluation/ablation.csv"])
    assert pdf.stat().st_size > 1000


def test_the_figure_names_the_study_reference_row(tmp_path, monkeypatch):
    from rl_lib.thesis import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, note: drawn.append(fig) or path)
    figures.ablation_differences(ablation_table(per_episode(), n_resamples=50), tmp_path, "en",
                                 reference="dqn", sources=["evaluation/ablation.csv"])  # fmt: skip
    rows = [tick.get_text() for tick in drawn[0].axes[0].get_yticklabels()]
    assert rows == ["Study reference", "Plan's MLP (512-256-128)"]
