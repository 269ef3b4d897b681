"""Statistics of the evaluation protocol: IQM, the paired two-level bootstrap and the comparisons on it.

The input is the per-episode KPI table of the evaluation: one row per (``policy``, ``seed``, ``day_id``)
with numeric KPI columns (NaN where a KPI is undefined, e.g. lateness on a day where nothing was served).
``seed`` is the training seed of an RL agent, the policy seed of a baseline, -1 for the hindsight bound.
Every policy is run on the same test days, so a policy's scores form a matrix of seeds x days
(:func:`score_matrix`) and policies are compared day by day.

**Uncertainty.** The test days are the i.i.d. sample; the seeds of a policy are a second, nested source of
variation. :func:`stratified_bootstrap_ci` resamples both (its docstring gives the exact design), and every
interval below comes from it: :func:`aggregate_table` (mean and IQM per policy and KPI),
:func:`paired_differences` (policy - reference), :func:`relative_differences` (the same over |reference|),
:func:`probability_of_improvement` (P(policy beats reference)) and :func:`gap_to_bound` (distance to the
hindsight bound).

**Two independent samples** (the units of an A/B experiment, :mod:`rl_lib.serving.ab_report`): one value
per unit and arm, no pairing. :func:`unpaired_difference` (difference of means) and
:func:`unpaired_probability_of_improvement` (P(a treatment unit beats a control unit)) take their
intervals from the same bootstrap, each arm's units resampled on their own; :func:`units_for_power` and
:func:`minimum_detectable_difference` size such an experiment (normal approximation).

**Direction of each KPI** (:data:`HIGHER_IS_BETTER`):

=====================  ===========
KPI                    better when
=====================  ===========
``reward``             higher
``reward_per_step``    higher
``completion_rate``    higher
``on_time_rate``       higher
``utilisation``        higher
``served``             higher
``mean_lateness_min``  lower
``p95_lateness_min``   lower
``mean_deadhead_km``   lower
``total_km``           lower
``refusal_rate``       lower
``missed_rate``        lower
``decision_ms``        lower
=====================  ===========
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

HIGHER_IS_BETTER: dict[str, bool] = {
    "reward": True,
    "reward_per_step": True,
    "completion_rate": True,
    "on_time_rate": True,
    "utilisation": True,
    "served": True,
    "mean_lateness_min": False,
    "p95_lateness_min": False,
    "mean_deadhead_km": False,
    "total_km": False,
    "refusal_rate": False,
    "missed_rate": False,
    "decision_ms": False,
}

ID_COLUMNS = ("policy", "seed", "day_id")
# Upper bound on the elements of one (replicates, seeds, seeds, days) block in probability_of_improvement.
_PAIR_BLOCK = 1 << 22

Statistic = Callable[[np.ndarray], float]
# Maps stacked (replicates, seeds, days) score matrices, one per policy, to one value per replicate.
_MatrixFunction = Callable[..., np.ndarray]


def iqm(x: ArrayLike) -> float:
    """Interquartile mean: the mean of the values left after cutting 25 % from each end (NaNs ignored).

    This is :func:`scipy.stats.trim_mean` with proportion 0.25: with n values it drops
    ``floor(n / 4)`` from each end, e.g. the middle 4 of 8 values, the middle 3 of 5.

    :param x: values, any shape (flattened).
    :return: the IQM, NaN when no value is left.
    """
    values = np.asarray(x, dtype=float).ravel()
    values = values[~np.isnan(values)]
    return float(stats.trim_mean(values, 0.25)) if values.size else float("nan")


def kpi_columns(df: pd.DataFrame) -> list[str]:
    """The KPI columns of a per-episode table: its numeric columns other than ``seed`` and ``day_id``."""
    return [c for c in df.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(df[c])]


def score_matrix(df: pd.DataFrame, policy: str, kpi: str) -> np.ndarray:
    """A policy's scores on a KPI as a (seeds, days) matrix.

    Rows are the policy's seeds in ascending order; columns are every ``day_id`` of the whole table in
    ascending order, so the matrices of all policies of one table line up day by day. NaN where the KPI
    is NaN or the policy has no row for that day and seed.

    :param df: per-episode table with columns ``policy``, ``seed``, ``day_id`` and the KPIs.
    :param policy: a value of ``df["policy"]``.
    :param kpi: a KPI column (see :func:`kpi_columns`).
    :raises ValueError: missing id columns, duplicate (policy, seed, day_id) rows, unknown policy or KPI.
    """
    _check_table(df)
    _check_choice("policy", policy, _policies(df))
    _check_choice("KPI", kpi, kpi_columns(df))
    rows = df[df["policy"] == policy]
    wide = rows.pivot(index="seed", columns="day_id", values=kpi).reindex(columns=_days(df))
    return wide.to_numpy(dtype=float, na_value=np.nan)


def stratified_bootstrap_ci(
    matrices: Mapping[str, np.ndarray],
    statistic: Statistic,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Point estimate and percentile bootstrap interval of ``statistic`` for each policy's score matrix.

    **Design** (paired over days, stratified over seeds within a day). Policy p has the score matrix
    M_p with S_p seed rows and the D day columns shared by all policies (NaN where missing). One
    bootstrap replicate:

    1. draws D day indices j_1, ..., j_D uniformly with replacement from the D days -- the *same* draw
       for every policy, so policies stay paired by day;
    2. for each policy p and each k = 1..D, draws S_p seed indices i_{p,k,1..S_p} uniformly with
       replacement from p's S_p seeds, independently across k and across policies: seeds are resampled
       within each resampled day, as in the stratified bootstrap of rliable (Agarwal et al. 2021,
       "Deep RL at the edge of the statistical precipice"), where runs are resampled within each task;
    3. forms the replicate matrix M*_p[s, k] = M_p[i_{p,k,s}, j_k] (S_p x D);
    4. computes theta*_p = statistic(the non-NaN entries of M*_p).

    The point estimate is statistic(the non-NaN entries of M_p). The interval is the percentile
    interval: the alpha/2 and 1 - alpha/2 quantiles (linear interpolation) of theta*_p over the
    ``n_resamples`` replicates, alpha = 1 - confidence. With one seed, step 2 is void and this is the
    plain bootstrap over days (scipy.stats.bootstrap with ``method="percentile"``). A replicate whose
    M*_p holds no value (possible only when most days are NaN) gives NaN and is left out of the
    quantiles.

    Random streams: the day draws depend on ``seed`` only and policy p's seed draws on ``seed`` and p's
    name, so a policy's interval does not change when other policies are added or removed, and every
    function of this module sees the same draws for the same policy.

    :param matrices: policy name -> (seeds, days) score matrix (:func:`score_matrix`); same days for all.
    :param statistic: maps a 1-D array of non-NaN values to a float, e.g. :func:`iqm` or ``np.mean``
        (these two, and ``np.nanmean``, run vectorised over the replicates; any other is called once per
        replicate).
    :param n_resamples: number of bootstrap replicates.
    :param confidence: coverage of the interval, in (0, 1).
    :param seed: seed of the resampling.
    :return: policy name -> (point estimate, interval low, interval high); NaNs where M_p has no value.
    :raises ValueError: no matrix, a matrix that is not 2-D or empty, matrices with different day counts,
        bad ``n_resamples`` or ``confidence``.
    """

    rowwise = _VECTORISED.get(statistic, partial(_loop_rows, statistic))

    def apply(stacked: np.ndarray) -> np.ndarray:
        return rowwise(stacked.reshape(len(stacked), -1))

    return {
        name: _bootstrap(apply, {name: m}, n_resamples, confidence, seed)
        for name, m in _check_matrices(matrices).items()
    }


def relative_differences(
    df: pd.DataFrame,
    reference: str,
    kpi: str = "reward",
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Relative gain over a reference: (mean policy - mean reference) / |mean reference|.

    Means pool seeds within each day, then days, as :func:`paired_differences`; numerator and
    denominator come from the same bootstrap replicate (paired two-level bootstrap), so the interval
    includes the reference mean's own uncertainty. A ratio of means, unlike :func:`gap_to_bound`'s mean
    of per-day ratios: "how much more reward over the same days", the tuner's question.

    :return: one row per policy: ``reference``, ``kpi``, ``rel_diff``, ``ci_low``, ``ci_high``,
        ``ci_excludes_zero``, ``n_days``.
    """
    ref = score_matrix(df, reference, kpi)
    rows = _paired_rows(df, kpi, _others(df, reference, policies), {reference: ref},
                        {"rel_diff": _relative_difference}, {"reference": reference},
                        n_resamples, confidence, seed, excludes_zero=True)  # fmt: skip
    return pd.DataFrame(rows)


def aggregate_table(
    df: pd.DataFrame,
    kpis: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean and IQM over all (seed, day) scores, with bootstrap intervals, per policy and KPI.

    Both statistics pool the non-NaN entries of the policy's score matrix; intervals from
    :func:`stratified_bootstrap_ci`.

    :param df: per-episode table (see :func:`score_matrix`).
    :param kpis: KPI columns; default: those of ``df`` listed in :data:`HIGHER_IS_BETTER`.
    :param policies: policies in output order; default: all, in order of first appearance.
    :param n_resamples: bootstrap replicates.
    :param confidence: interval coverage.
    :param seed: seed of the resampling.
    :return: one row per (policy, kpi): ``mean``, ``mean_ci_low``, ``mean_ci_high``, ``iqm``,
        ``iqm_ci_low``, ``iqm_ci_high``, ``n_seeds`` and ``n_days`` (seeds and days with at least one
        value; NaN statistics when both are 0, e.g. lateness for the hindsight bound).
    """
    policies = _select_policies(df, policies)
    rows = []
    for kpi in _select_kpis(df, kpis):
        matrices = {p: score_matrix(df, p, kpi) for p in policies}
        means = stratified_bootstrap_ci(matrices, np.mean, n_resamples, confidence, seed)
        iqms = stratified_bootstrap_ci(matrices, iqm, n_resamples, confidence, seed)
        for p, m in matrices.items():
            valid = ~np.isnan(m)
            rows.append(
                {
                    "policy": p,
                    "kpi": kpi,
                    **dict(zip(("mean", "mean_ci_low", "mean_ci_high"), means[p], strict=True)),
                    **dict(zip(("iqm", "iqm_ci_low", "iqm_ci_high"), iqms[p], strict=True)),
                    "n_seeds": int(valid.any(axis=1).sum()),
                    "n_days": int(valid.any(axis=0).sum()),
                }
            )
    return pd.DataFrame(rows)


def paired_differences(
    df: pd.DataFrame,
    reference: str = "nearest",
    kpis: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean over days of (policy - reference), each side averaged over its seeds on the day.

    On day d the difference is mean_s M_policy[s, d] - mean_s M_reference[s, d] (NaN seeds ignored); the
    estimate is the mean of the differences over the days where both sides have a value. The interval
    comes from the paired two-level bootstrap of :func:`stratified_bootstrap_ci`: the same resampled days
    for both policies, seeds resampled within each day and policy. Read the sign with
    :data:`HIGHER_IS_BETTER`.

    :param df: per-episode table (see :func:`score_matrix`).
    :param reference: the policy subtracted.
    :param kpis: KPI columns; default: those of ``df`` listed in :data:`HIGHER_IS_BETTER`.
    :param policies: policies compared with the reference; default: all others.
    :param n_resamples: bootstrap replicates.
    :param confidence: interval coverage.
    :param seed: seed of the resampling.
    :return: one row per (policy, kpi): ``reference``, ``mean_diff``, ``ci_low``, ``ci_high``,
        ``ci_excludes_zero`` and ``n_days`` (days where both sides have a value).
    """
    rows = []
    for kpi in _select_kpis(df, kpis):
        ref = score_matrix(df, reference, kpi)
        rows += _paired_rows(df, kpi, _others(df, reference, policies), {reference: ref},
                             {"mean_diff": _mean_difference}, {"reference": reference},
                             n_resamples, confidence, seed, excludes_zero=True)  # fmt: skip
    return pd.DataFrame(rows)


def probability_of_improvement(
    df: pd.DataFrame,
    reference: str = "nearest",
    kpi: str = "reward",
    higher_is_better: bool | None = None,
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """P(X > Y): how often a policy X beats the reference Y on a day, as in rliable.

    On day d, the fraction of (seed of X, seed of Y) pairs, both non-NaN, where X's score is better than
    Y's, a tie counting 1/2; the estimate is the mean of these fractions over the days with at least one
    such pair. 0.5 means no difference; 1 means X beats Y on every day for every pair of seeds. Interval
    from the paired two-level bootstrap of :func:`stratified_bootstrap_ci`.

    :param df: per-episode table (see :func:`score_matrix`).
    :param reference: the policy Y.
    :param kpi: a KPI column.
    :param higher_is_better: direction of ``kpi``; default: looked up in :data:`HIGHER_IS_BETTER`.
    :param policies: the policies X; default: all but the reference.
    :param n_resamples: bootstrap replicates.
    :param confidence: interval coverage.
    :param seed: seed of the resampling.
    :return: one row per policy: ``reference``, ``kpi``, ``prob_improvement``, ``ci_low``, ``ci_high``,
        ``n_days``.
    :raises ValueError: ``higher_is_better`` not given for a KPI missing from :data:`HIGHER_IS_BETTER`.
    """
    ref = score_matrix(df, reference, kpi)
    if higher_is_better is None:
        if kpi not in HIGHER_IS_BETTER:
            raise ValueError(
                f"direction of KPI {kpi!r} unknown; pass higher_is_better or use one of "
                f"{', '.join(HIGHER_IS_BETTER)}"
            )
        higher_is_better = HIGHER_IS_BETTER[kpi]
    sign = 1.0 if higher_is_better else -1.0

    def improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Negating both sides turns "lower is better" into "higher is better".
        return _probability_of_improvement(sign * x, sign * y)

    rows = _paired_rows(df, kpi, _others(df, reference, policies), {reference: ref},
                        {"prob_improvement": improvement}, {"reference": reference},
                        n_resamples, confidence, seed)  # fmt: skip
    return pd.DataFrame(rows)


def gap_to_bound(
    df: pd.DataFrame,
    bound_policy: str = "hindsight_bound",
    kpi: str = "reward",
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Distance of each policy to an upper bound: mean over days of (bound - policy), absolute and relative.

    On day d, with b_d the bound (mean over its seeds; the hindsight bound has one) and x_d the policy's
    mean over its seeds, the absolute gap is b_d - x_d and the relative gap (b_d - x_d) / |b_d|; each is
    averaged over the days where both have a value (and, for the relative gap, b_d != 0). Meant for
    higher-is-better KPIs (the bound's ``reward``, ``completion_rate``), where the gaps are >= 0.
    Intervals from the paired two-level bootstrap of :func:`stratified_bootstrap_ci`.

    :param df: per-episode table (see :func:`score_matrix`).
    :param bound_policy: the policy holding the bound.
    :param kpi: a KPI column.
    :param policies: the policies compared; default: all but the bound.
    :param n_resamples: bootstrap replicates.
    :param confidence: interval coverage.
    :param seed: seed of the resampling.
    :return: one row per policy: ``bound``, ``kpi``, ``abs_gap``, ``abs_gap_ci_low``, ``abs_gap_ci_high``,
        ``rel_gap``, ``rel_gap_ci_low``, ``rel_gap_ci_high``, ``n_days``.
    """
    bound = score_matrix(df, bound_policy, kpi)

    def absolute(x: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _mean_difference(b, x)

    def relative(x: np.ndarray, b: np.ndarray) -> np.ndarray:
        b_day = _nanmean(b, axis=1)
        gap = _divide(b_day - _nanmean(x, axis=1), np.abs(b_day))
        return _nanmean(gap, axis=1)

    rows = _paired_rows(df, kpi, _others(df, bound_policy, policies), {bound_policy: bound},
                        {"abs_gap": absolute, "rel_gap": relative}, {"bound": bound_policy},
                        n_resamples, confidence, seed)  # fmt: skip
    return pd.DataFrame(rows)


def gap_closed(
    df: pd.DataFrame,
    reference: str,
    bound_policy: str = "hindsight_bound",
    kpi: str = "reward",
    policies: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Share of the reference's gap to the bound that a policy closes:
    (mean policy - mean reference) / (mean bound - mean reference), means over the same days.

    1 reaches the bound, 0 is the reference, < 0 is worse than it. Numerator and denominator come
    from the same replicate of the paired two-level bootstrap, as :func:`relative_differences`.

    :return: one row per policy: ``reference``, ``bound``, ``kpi``, ``gap_closed``, ``ci_low``,
        ``ci_high``, ``n_days``.
    """
    ref, bound = score_matrix(df, reference, kpi), score_matrix(df, bound_policy, kpi)
    compared = [p for p in _others(df, reference, policies) if p != bound_policy]
    rows = _paired_rows(df, kpi, compared, {reference: ref, bound_policy: bound},
                        {"gap_closed": _gap_closed}, {"reference": reference, "bound": bound_policy},
                        n_resamples, confidence, seed)  # fmt: skip
    return pd.DataFrame(rows)


def unpaired_difference(
    treatment: ArrayLike,
    control: ArrayLike,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """mean(treatment) - mean(control) for two independent samples, with its percentile bootstrap interval.

    Each sample becomes an (n, 1) score matrix: its values are the "seeds" of a single "day". The
    day draw of :func:`stratified_bootstrap_ci` is then void and its seed draw resamples each sample's
    values with replacement, independently of the other: the plain two-sample bootstrap (the
    ``method="percentile"`` interval of ``scipy.stats.bootstrap`` on two samples). NaN values (a unit
    where the KPI is undefined) are dropped first.

    :param treatment: 1-D values of the treatment arm (one per randomisation unit).
    :param control: 1-D values of the control arm.
    :param n_resamples: bootstrap replicates.
    :param confidence: interval coverage.
    :param seed: seed of the resampling (the treatment's draws do not depend on the control's values).
    :return: (point estimate, interval low, interval high); NaNs when a sample has no value.
    :raises ValueError: a sample that is not 1-D, bad ``n_resamples`` or ``confidence``.
    """
    return _unpaired(_mean_difference, treatment, control, n_resamples, confidence, seed)


def unpaired_probability_of_improvement(
    treatment: ArrayLike,
    control: ArrayLike,
    higher_is_better: bool = True,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """P(a random treatment value beats a random control value), ties counting 1/2, with its interval.

    The estimate is the fraction of the n_t x n_c (treatment, control) pairs where the treatment is
    better (the Mann-Whitney U statistic over n_t n_c); 0.5 means no difference. Interval from the
    two-sample bootstrap of :func:`unpaired_difference` (same draws for the same ``seed``).

    :param higher_is_better: the KPI's direction (see :data:`HIGHER_IS_BETTER`).
    :return: (point estimate, interval low, interval high); NaNs when a sample has no value.
    """
    sign = 1.0 if higher_is_better else -1.0

    def improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _probability_of_improvement(sign * x, sign * y)

    return _unpaired(improvement, treatment, control, n_resamples, confidence, seed)


def units_for_power(
    sd_treatment: float, sd_control: float, difference: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Units per arm (equal allocation) for a two-sided test at level ``alpha`` to detect ``difference``
    with probability ``power``, by the normal approximation:

        n = ceil((z_{1 - alpha/2} + z_{power})^2 (sd_treatment^2 + sd_control^2) / difference^2),

    z_q the standard normal quantile (``scipy.stats.norm.ppf``), at least 1. With sd 1 in both arms
    and a difference of 0.5 that is 63. The normal quantiles ignore that the SDs are estimated: with
    few units per arm (a few dozen days) the t test needs a few more units than this.

    :param sd_treatment: standard deviation of one unit's value in the treatment arm.
    :param sd_control: the same in the control arm.
    :param difference: the difference to detect, in the KPI's unit (its sign does not matter).
    :raises ValueError: a negative or non-finite SD, a zero or non-finite difference, ``alpha`` or
        ``power`` outside (0, 1).
    """
    _check_design(sd_treatment, sd_control, alpha, power)
    if not (np.isfinite(difference) and difference != 0):
        raise ValueError(f"difference must be finite and non-zero, got {difference}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(1, int(np.ceil(z**2 * (sd_treatment**2 + sd_control**2) / difference**2)))


def minimum_detectable_difference(
    sd_treatment: float,
    sd_control: float,
    n_treatment: int,
    n_control: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest |difference| that ``n_treatment`` and ``n_control`` units detect with probability
    ``power`` in a two-sided test at level ``alpha`` (normal approximation, the inverse of
    :func:`units_for_power`):

        mdd = (z_{1 - alpha/2} + z_{power}) sqrt(sd_treatment^2 / n_treatment + sd_control^2 / n_control).

    :raises ValueError: fewer than one unit in an arm, a negative or non-finite SD, ``alpha`` or
        ``power`` outside (0, 1).
    """
    _check_design(sd_treatment, sd_control, alpha, power)
    if n_treatment < 1 or n_control < 1:
        raise ValueError(f"each arm needs at least one unit, got {n_treatment} and {n_control}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * np.sqrt(sd_treatment**2 / n_treatment + sd_control**2 / n_control))


def _unpaired(
    fn: _MatrixFunction,
    treatment: ArrayLike,
    control: ArrayLike,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """``fn`` on the two samples as (n, 1) score matrices, NaNs dropped, keyed by arm (the bootstrap's
    draws); NaNs when a sample has no value."""
    matrices = {}
    for name, values in (("treatment", treatment), ("control", control)):
        values = np.asarray(values, dtype=float)
        if values.ndim != 1:
            raise ValueError(f"the {name} sample must be 1-D, got shape {values.shape}")
        matrices[name] = values[~np.isnan(values), np.newaxis]
    if any(m.size == 0 for m in matrices.values()):
        return float("nan"), float("nan"), float("nan")
    return _bootstrap(fn, matrices, n_resamples, confidence, seed)


def _check_design(sd_treatment: float, sd_control: float, alpha: float, power: float) -> None:
    for name, sd in (("sd_treatment", sd_treatment), ("sd_control", sd_control)):
        if not (np.isfinite(sd) and sd >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {sd}")
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")


def _paired_rows(
    df: pd.DataFrame,
    kpi: str,
    compared: Sequence[str],
    shared: Mapping[str, np.ndarray],
    statistics: Mapping[str, _MatrixFunction],
    labels: Mapping[str, str],
    n_resamples: int,
    confidence: float,
    seed: int,
    excludes_zero: bool = False,
) -> list[dict]:
    """The paired comparison behind every policy-vs-reference table: one row per policy of ``compared``.

    Each statistic takes the policy's stacked score matrices, then those of ``shared`` in their order
    (the reference first, then e.g. the bound), and gets its point estimate and interval from
    :func:`_bootstrap` on all of them, so the policy stays paired by day with the others.

    :return: rows ``policy``, ``labels``, ``kpi``, then per statistic its value and interval (one
        statistic: ``NAME``, ``ci_low``, ``ci_high``; several: ``NAME``, ``NAME_ci_low``,
        ``NAME_ci_high``), ``ci_excludes_zero`` when ``excludes_zero``, and ``n_days`` (days where the
        policy and the reference both have a value).
    """
    reference = next(iter(shared.values()))
    rows = []
    for policy in compared:
        x = score_matrix(df, policy, kpi)
        row = {"policy": policy, **labels, "kpi": kpi}
        for name, fn in statistics.items():
            point, low, high = _bootstrap(fn, {policy: x, **shared}, n_resamples, confidence, seed)
            prefix = "" if len(statistics) == 1 else f"{name}_"
            row.update({name: point, f"{prefix}ci_low": low, f"{prefix}ci_high": high})
            if excludes_zero:
                row["ci_excludes_zero"] = bool(low > 0 or high < 0)
        rows.append({**row, "n_days": _n_common_days(x, reference)})
    return rows


def _gap_closed(x: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> np.ndarray:
    return _divide(_mean_difference(x, ref), _mean_difference(bound, ref))


def _bootstrap(
    fn: _MatrixFunction,
    matrices: Mapping[str, np.ndarray],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """``fn`` on the matrices (point estimate) and its percentile interval over the bootstrap replicates.

    ``fn`` takes one stacked (n, seeds, days) array per matrix, in the order of ``matrices``, and returns
    one value per n.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    point = float(fn(*(m[np.newaxis] for m in matrices.values()))[0])
    if np.isnan(point):
        return point, float("nan"), float("nan")
    replicates = fn(*_resample(matrices, n_resamples, seed).values())
    alpha = 1 - confidence
    low, high = np.nanquantile(replicates, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def _resample(matrices: Mapping[str, np.ndarray], n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap replicates (n_resamples, seeds, days) of each matrix; design in stratified_bootstrap_ci."""
    n_days = next(iter(matrices.values())).shape[1]
    day_rng = np.random.default_rng([seed, 0])
    days = day_rng.integers(0, n_days, size=(n_resamples, 1, n_days))
    out = {}
    for name, m in matrices.items():
        # Keyed by name so that a policy's draws do not depend on the other policies passed.
        seed_rng = np.random.default_rng([seed, 1, zlib.crc32(name.encode())])
        seeds = seed_rng.integers(0, m.shape[0], size=(n_resamples, m.shape[0], n_days))
        out[name] = m[seeds, days]
    return out


def _mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over days of (x's mean over seeds - y's), per stacked replicate."""
    return _nanmean(_nanmean(x, axis=1) - _nanmean(y, axis=1), axis=1)


def _relative_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`_mean_difference` over |y's mean over seeds, then days|, per stacked replicate."""
    return _divide(_mean_difference(x, y), np.abs(_nanmean(_nanmean(y, axis=1), axis=1)))


def _probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over days of the fraction of seed pairs where x > y (ties 1/2), per stacked replicate."""
    n, sx, n_days = x.shape
    out = np.empty(n)
    # Blocks of replicates bound the memory of the (replicates, sx, sy, days) comparison.
    block = max(1, _PAIR_BLOCK // (sx * y.shape[1] * n_days))
    for start in range(0, n, block):
        xs = x[start : start + block, :, np.newaxis, :]
        ys = y[start : start + block, np.newaxis, :, :]
        valid = ~(np.isnan(xs) | np.isnan(ys))
        wins = (xs > ys) + 0.5 * (xs == ys)
        per_day = _divide(wins.sum(axis=(1, 2)), valid.sum(axis=(1, 2)))
        out[start : start + block] = _nanmean(per_day, axis=1)
    return out


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without the warning: NaN where a slice holds no value."""
    valid = ~np.isnan(x)
    return _divide(np.where(valid, x, 0.0).sum(axis=axis), valid.sum(axis=axis))


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den != 0)


def _loop_rows(statistic: Statistic, values: np.ndarray) -> np.ndarray:
    """``statistic`` on the non-NaN entries of each row of a 2-D array; NaN for a row without any."""
    rows = (row[~np.isnan(row)] for row in values)
    return np.array([float(statistic(r)) if r.size else float("nan") for r in rows])


def _iqm_rows(values: np.ndarray) -> np.ndarray:
    """:func:`iqm` of each row of a 2-D array (NaNs ignored), vectorised."""
    ordered = np.sort(values, axis=1)  # NaNs sort last
    n = (~np.isnan(ordered)).sum(axis=1, keepdims=True)
    cut = n // 4  # = int(0.25 * n), scipy.stats.trim_mean's cut
    position = np.arange(values.shape[1])
    kept = (position >= cut) & (position < n - cut)
    return _divide(np.where(kept, ordered, 0.0).sum(axis=1), (n - 2 * cut)[:, 0])


# Row-wise versions of the usual statistics: a Python loop over 2000 replicates per policy and KPI is
# what makes aggregate_table slow otherwise. Same values as the loop up to rounding.
_VECTORISED: dict[Callable, Callable[[np.ndarray], np.ndarray]] = {
    np.mean: lambda values: _nanmean(values, axis=1),
    np.nanmean: lambda values: _nanmean(values, axis=1),
    iqm: _iqm_rows,
}


def _n_common_days(x: np.ndarray, y: np.ndarray) -> int:
    return int(((~np.isnan(x)).any(axis=0) & (~np.isnan(y)).any(axis=0)).sum())


def _check_matrices(matrices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not matrices:
        raise ValueError("no score matrix given")
    out = {name: np.asarray(m, dtype=float) for name, m in matrices.items()}
    shapes = {name: m.shape for name, m in out.items()}
    bad = [name for name, s in shapes.items() if len(s) != 2 or 0 in s]
    if bad:
        raise ValueError(
            f"score matrix of {bad[0]!r} must be a non-empty (seeds, days) array, got {shapes[bad[0]]}"
        )
    if len({s[1] for s in shapes.values()}) > 1:
        raise ValueError(f"score matrices must share the same days (columns); shapes: {shapes}")
    return out


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"per-episode table lacks column(s) {', '.join(missing)}")
    duplicated = df.duplicated(list(ID_COLUMNS))
    if duplicated.any():
        row = df.loc[duplicated.idxmax(), list(ID_COLUMNS)].to_dict()
        raise ValueError(f"per-episode table has several rows for {row}")


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose among {', '.join(map(str, choices))}")


def _policies(df: pd.DataFrame) -> list[str]:
    return list(pd.unique(df["policy"]))


def _days(df: pd.DataFrame) -> list:
    return sorted(pd.unique(df["day_id"]))


def _select_policies(df: pd.DataFrame, policies: Sequence[str] | None) -> list[str]:
    _check_table(df)
    available = _policies(df)
    for p in policies or ():
        _check_choice("policy", p, available)
    return available if policies is None else list(policies)


def _others(df: pd.DataFrame, reference: str, policies: Sequence[str] | None) -> list[str]:
    return [p for p in _select_policies(df, policies) if p != reference]


def _select_kpis(df: pd.DataFrame, kpis: Sequence[str] | None) -> list[str]:
    _check_table(df)
    available = kpi_columns(df)
    if kpis is None:
        return [k for k in available if k in HIGHER_IS_BETTER]
    for k in kpis:
        _check_choice("KPI", k, available)
    return list(kpis)
