"""Statistics of the evaluation protocol: IQM, the paired two-level bootstrap and the comparisons on it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rl_lib.stats import (
    HIGHER_IS_BETTER,
    aggregate_table,
    gap_to_bound,
    iqm,
    paired_differences,
    probability_of_improvement,
    score_matrix,
    stratified_bootstrap_ci,
)

DAYS = [2_000_000, 2_000_001, 2_000_002, 2_000_003]


def table(scores: dict[str, list[list[float]]], kpi: str = "reward", days: list[int] = DAYS) -> pd.DataFrame:
    """Per-episode table from policy -> (seeds x days) scores; the hindsight bound gets seed -1."""
    rows = []
    for policy, matrix in scores.items():
        for s, values in enumerate(matrix):
            seed = -1 if policy == "hindsight_bound" else s
            for day, value in zip(days, values, strict=True):
                rows.append({"policy": policy, "seed": seed, "day_id": day, kpi: value})
    return pd.DataFrame(rows)


@pytest.fixture
def random_table() -> pd.DataFrame:
    """Two RL agents with 3 seeds and two 1-seed baselines on 12 days, reward with a strong day effect."""
    rng = np.random.default_rng(7)
    days = list(range(12))
    day_effect = rng.normal(0, 10, size=12)
    scores = {
        "nearest": [day_effect],
        "insertion": [day_effect + 1],
        "dqn": day_effect + rng.normal(2, 1, size=(3, 12)),
        "ppo": day_effect + rng.normal(1, 1, size=(3, 12)),
    }
    return table({p: np.asarray(m).tolist() for p, m in scores.items()}, days=days)


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1, 9)) == 4.5  # middle 4 of 8: 3, 4, 5, 6
    # scipy.stats.trim_mean cuts floor(n / 4) values from each end.
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # 5 -> cut 1: 2, 3, 4
    assert iqm([10, 1, 2, 3, 4, 5, 100]) == pytest.approx(4.8)  # 7 -> cut 1: 2, 3, 4, 5, 10
    assert iqm([1, 2, 3]) == pytest.approx(2.0)  # 3 -> cut 0
    assert iqm([1, 2, np.nan, 3, 4, 5, 6, 7, 8]) == 4.5
    assert np.isnan(iqm([np.nan]))


def test_score_matrix_lines_up_days_and_seeds():
    df = pd.DataFrame(
        {
            "policy": ["a", "a", "a", "b", "b"],
            "seed": [1, 0, 1, 0, 0],
            "day_id": [5, 5, 3, 3, 9],
            "reward": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    np.testing.assert_array_equal(
        score_matrix(df, "a", "reward"), [[np.nan, 2.0, np.nan], [3.0, 1.0, np.nan]]
    )
    np.testing.assert_array_equal(score_matrix(df, "b", "reward"), [[4.0, np.nan, 5.0]])


@pytest.mark.parametrize("statistic", [np.mean, iqm])
def test_one_seed_bootstrap_agrees_with_scipy(statistic):
    x = np.random.default_rng(3).normal(5.0, 2.0, size=30)
    n = 20_000
    point, low, high = stratified_bootstrap_ci({"a": x[np.newaxis]}, statistic, n_resamples=n, seed=1)["a"]

    def vectorised(sample: np.ndarray, axis: int) -> np.ndarray:
        return (
            np.mean(sample, axis=axis) if statistic is np.mean else stats.trim_mean(sample, 0.25, axis=axis)
        )

    ref = stats.bootstrap((x,), vectorised, n_resamples=n, method="percentile", rng=np.random.default_rng(2))
    assert point == pytest.approx(statistic(x))
    # Monte Carlo error of a 2.5 % quantile with 20 000 replicates is ~0.02 standard errors.
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.15 * se)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.15 * se)


def test_stratified_bootstrap_is_reproducible_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    matrices = {"a": rng.normal(size=(3, 20)), "b": rng.normal(1, 2, size=(5, 20))}
    first = stratified_bootstrap_ci(matrices, iqm, n_resamples=500, seed=4)
    assert stratified_bootstrap_ci(matrices, iqm, n_resamples=500, seed=4) == first
    assert stratified_bootstrap_ci(matrices, iqm, n_resamples=500, seed=5) != first
    for point, low, high in first.values():
        assert low < point < high
    # A policy's draws do not depend on the other policies passed.
    assert stratified_bootstrap_ci({"a": matrices["a"]}, iqm, n_resamples=500, seed=4)["a"] == first["a"]


def test_vectorised_statistics_match_the_generic_loop():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(4, 15))
    m[rng.random(m.shape) < 0.3] = np.nan
    for fast, slow in [(iqm, lambda v: iqm(v)), (np.mean, lambda v: float(np.mean(v)))]:
        got = stratified_bootstrap_ci({"a": m}, fast, n_resamples=300)["a"]
        want = stratified_bootstrap_ci({"a": m}, slow, n_resamples=300)["a"]
        assert got == pytest.approx(want, rel=1e-12)


def test_constant_matrix_gives_a_zero_width_interval():
    for statistic in (np.mean, iqm, np.median):
        assert stratified_bootstrap_ci({"a": np.full((3, 6), 2.5)}, statistic, n_resamples=200)["a"] == (
            2.5,
            2.5,
            2.5,
        )


def test_paired_difference_of_a_constant_shift_is_exact():
    reference = [3.0, -40.0, 17.5, 100.0]  # strong day effect: an unpaired interval would be wide
    df = table(
        {
            "nearest": [reference],
            "a": [[r + 2 for r in reference]] * 3,
            "b": [[r + s for r in reference] for s in (-1.0, 0.0, 1.0)],
        }
    )
    out = paired_differences(df, reference="nearest", kpis=["reward"], n_resamples=500).set_index("policy")
    assert list(out.index) == ["a", "b"]
    a = out.loc["a"]
    assert (a["mean_diff"], a["ci_low"], a["ci_high"]) == (2.0, 2.0, 2.0)
    assert a["ci_excludes_zero"] and a["reference"] == "nearest" and a["n_days"] == 4
    b = out.loc["b"]
    assert b["mean_diff"] == 0.0 and b["ci_low"] < 0 < b["ci_high"] and not b["ci_excludes_zero"]
    assert b["ci_high"] - b["ci_low"] <= 2.0  # seed noise only, not the day effect


def test_paired_differences_average_seeds_within_each_day():
    df = table({"nearest": [[0.0, 0.0, 0.0, 0.0]], "a": [[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, np.nan, 0.0]]})
    out = paired_differences(df, kpis=["reward"], n_resamples=200)
    # Day means 2, 2, 3, 2 -> 2.25 (the pooled mean would be 15 / 7).
    assert out.loc[0, "mean_diff"] == pytest.approx(2.25)
    assert out.loc[0, "ci_low"] <= 2.25 <= out.loc[0, "ci_high"]


def test_probability_of_improvement_extremes():
    base = [[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5]]
    df = table({"nearest": base, "better": [[10.0] * 4, [20.0] * 4], "same": base})
    out = probability_of_improvement(df, n_resamples=300).set_index("policy")
    assert tuple(out.loc["better", ["prob_improvement", "ci_low", "ci_high"]]) == (1.0, 1.0, 1.0)
    assert out.loc["same", "prob_improvement"] == 0.5
    assert out.loc["same", "ci_low"] <= 0.5 <= out.loc["same", "ci_high"]


def test_probability_of_improvement_by_hand_with_ties():
    # Day 0: X {1, 3} vs Y {1, 2}: (1,1) tie 1/2, (1,2) 0, (3,1) 1, (3,2) 1 -> 2.5 / 4.
    # Day 1: X {2, 2} vs Y {1, 3}: two wins, two losses -> 1/2.  Mean: 0.5625.
    days = [0, 1]
    df = table({"y": [[1.0, 1.0], [2.0, 3.0]], "x": [[1.0, 2.0], [3.0, 2.0]]}, days=days)
    higher = probability_of_improvement(df, reference="y", n_resamples=200)
    assert higher.loc[0, "prob_improvement"] == 0.5625
    lower = probability_of_improvement(df, reference="y", higher_is_better=False, n_resamples=200)
    assert lower.loc[0, "prob_improvement"] == 0.4375
    late = table({"y": [[1.0, 1.0], [2.0, 3.0]], "x": [[1.0, 2.0], [3.0, 2.0]]}, "mean_lateness_min", days)
    looked_up = probability_of_improvement(late, reference="y", kpi="mean_lateness_min", n_resamples=200)
    assert looked_up.loc[0, "prob_improvement"] == 0.4375


def test_gap_to_bound_by_hand():
    days = [0, 1]
    df = table({"hindsight_bound": [[10.0, -20.0]], "a": [[8.0, -24.0], [6.0, -26.0]]}, days=days)
    out = gap_to_bound(df, n_resamples=300)
    row = out.iloc[0]
    assert row["policy"] == "a" and row["bound"] == "hindsight_bound" and row["n_days"] == 2
    # Day means of a: 7, -25 -> gaps 3, 5 -> 4; relative 3 / 10, 5 / 20 -> 0.275.
    assert row["abs_gap"] == pytest.approx(4.0)
    assert row["rel_gap"] == pytest.approx(0.275)
    assert row["abs_gap_ci_low"] <= 4.0 <= row["abs_gap_ci_high"]
    assert row["rel_gap_ci_low"] <= 0.275 <= row["rel_gap_ci_high"]


def test_nan_kpis_are_ignored_without_warnings(random_table):
    df = random_table.copy()
    df["mean_lateness_min"] = np.where(df["day_id"] % 3 == 0, np.nan, df["reward"].abs())
    bound = df[df["policy"] == "nearest"].assign(policy="hindsight_bound", seed=-1, mean_lateness_min=np.nan)
    df = pd.concat([df, bound], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg = aggregate_table(df, n_resamples=200).set_index(["policy", "kpi"])
        diff = paired_differences(df, n_resamples=200).set_index(["policy", "kpi"])
        poi = probability_of_improvement(df, kpi="mean_lateness_min", n_resamples=200).set_index("policy")
    late = agg.loc[("dqn", "mean_lateness_min")]
    values = df.loc[df["policy"] == "dqn", "mean_lateness_min"]
    assert late["mean"] == pytest.approx(values.mean()) and late["iqm"] == pytest.approx(iqm(values))
    assert late["n_days"] == 8 and late["n_seeds"] == 3
    assert late["mean_ci_low"] < late["mean"] < late["mean_ci_high"]
    empty = agg.loc[("hindsight_bound", "mean_lateness_min")]
    assert np.isnan(empty[["mean", "iqm", "mean_ci_low", "iqm_ci_high"]].astype(float)).all()
    assert empty["n_days"] == 0 and empty["n_seeds"] == 0
    assert diff.loc[("dqn", "mean_lateness_min"), "n_days"] == 8
    assert np.isnan(diff.loc[("hindsight_bound", "mean_lateness_min"), "mean_diff"])
    assert poi.loc["dqn", "n_days"] == 8 and 0 <= poi.loc["dqn", "prob_improvement"] <= 1


def test_aggregate_table_shape_and_defaults(random_table):
    df = random_table.assign(n_bookings=100.0)
    agg = aggregate_table(df, n_resamples=200)
    assert list(agg.columns) == [
        "policy", "kpi", "mean", "mean_ci_low", "mean_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high",
        "n_seeds", "n_days",
    ]  # fmt: skip
    # n_bookings is not a performance KPI: left out unless asked for.
    assert list(agg["kpi"].unique()) == ["reward"]
    assert list(agg["policy"]) == ["nearest", "insertion", "dqn", "ppo"]
    assert agg.set_index("policy").loc["dqn", "n_seeds"] == 3
    assert agg.set_index("policy").loc["dqn", "n_days"] == 12
    assert set(HIGHER_IS_BETTER) >= {"reward", "completion_rate", "mean_lateness_min", "total_km"}


def test_bad_input_names_the_choices(random_table):
    with pytest.raises(ValueError, match=r"unknown policy 'sac'; choose among nearest, insertion, dqn, ppo"):
        score_matrix(random_table, "sac", "reward")
    with pytest.raises(ValueError, match=r"unknown KPI 'rewrd'; choose among reward"):
        score_matrix(random_table, "dqn", "rewrd")
    with pytest.raises(ValueError, match=r"unknown policy 'greedy'"):
        paired_differences(random_table, reference="greedy")
    with pytest.raises(ValueError, match=r"unknown KPI 'km'"):
        aggregate_table(random_table, kpis=["km"])
    with pytest.raises(ValueError, match=r"unknown policy 'sac'"):
        probability_of_improvement(random_table, policies=["sac"])
    with pytest.raises(ValueError, match=r"direction of KPI 'n_bookings' unknown"):
        probability_of_improvement(random_table.assign(n_bookings=1.0), kpi="n_bookings")
    with pytest.raises(ValueError, match=r"several rows"):
        score_matrix(pd.concat([random_table, random_table.head(1)]), "dqn", "reward")
    with pytest.raises(ValueError, match=r"same days"):
        stratified_bootstrap_ci({"a": np.ones((2, 3)), "b": np.ones((2, 4))}, np.mean)
    with pytest.raises(ValueError, match=r"confidence"):
        stratified_bootstrap_ci({"a": np.ones((2, 3))}, np.mean, confidence=95)
