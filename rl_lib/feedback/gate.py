"""The promotion gate: does a retrained candidate replace the production model? Only on evidence.

:func:`gate` plays both run dirs' best models (greedy, masked: :class:`rl_lib.inference.Dispatcher`
on the torch backend, the service's own decision code) on the same held-out days, builds the
per-episode KPI table (policies ``candidate`` and ``production``, one row per day) and compares
them day by day with :func:`rl_lib.stats.paired_differences` (candidate - production, 95 % paired
bootstrap intervals over the days). The rule:

- **non-inferior** on ``completion_rate`` and on ``on_time_rate``: the interval's lower bound is
  above ``-margin`` (a margin in rate units: 0.01 is one percentage point);
- **better** on ``reward``: the interval's lower bound is above 0;
- and at least ``min_days`` days compared on every KPI (a bootstrap over a handful of days is no
  evidence).

All three hold: promote; otherwise keep production. The :class:`GateDecision` records every
difference with its interval, the days, the margins, the rule and the verdict with its reason in words.

Held-out days: the caller passes recent days replayed from the log (:func:`days_from_records`) and
synthetic test days, none of which either model trained or was selected on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rl_lib.config import from_dict
from rl_lib.envs.day import Day
from rl_lib.errors import UserError
from rl_lib.evaluation import episode_row
from rl_lib.experiment import ExperimentConfig
from rl_lib.inference import Dispatcher
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.historical import COLUMNS, days_from_bookings
from rl_lib.stats import paired_differences
from rl_lib.training.run_record import read_metadata

CANDIDATE, PRODUCTION = "candidate", "production"
PROMOTE, KEEP = "promote", "keep production"
CONFIDENCE = 0.95  # paired_differences' default interval
RULE = (
    "promote only if, over the same held-out days (candidate - production, 95 % paired bootstrap CI): "
    "completion_rate CI low > -margin_completion, on_time_rate CI low > -margin_on_time, reward CI low > 0, "
    "and at least min_days days compared on each"
)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and everything it rests on (JSON-able through :meth:`to_dict`).

    :param promote: True when the candidate replaces production.
    :param verdict: ``"promote"`` or ``"keep production"``.
    :param reason: the verdict in words, with the numbers it rests on.
    :param differences: one dict per KPI: ``kpi``, ``test`` (``non-inferiority`` or ``superiority``),
        ``threshold`` (the CI's lower bound must exceed it), ``mean_diff``, ``ci_low``, ``ci_high``,
        ``n_days``, ``candidate_mean``, ``production_mean``, ``passed``.
    :param day_ids: the held-out days, in the order played.
    """

    promote: bool
    verdict: str
    reason: str
    rule: str
    differences: tuple[dict, ...]
    n_days: int
    min_days: int
    day_ids: tuple[str, ...]
    margin_completion: float
    margin_on_time: float
    confidence: float
    n_resamples: int
    seed: int
    candidate_dir: str
    production_dir: str
    candidate_sha256: str
    production_sha256: str
    decided: str

    def to_dict(self) -> dict:
        """A plain dict (lists, floats, strings; NaN as None) for ``json.dumps``."""
        data = asdict(self)
        data["differences"] = [{k: _plain(v) for k, v in d.items()} for d in self.differences]
        data["day_ids"] = list(self.day_ids)
        return data


def gate(
    candidate_dir: str | Path,
    production_dir: str | Path,
    days: Sequence[Day],
    margin_completion: float = 0.01,
    margin_on_time: float = 0.01,
    n_resamples: int = 2000,
    seed: int = 0,
    min_days: int = 5,
) -> GateDecision:
    """Compare the candidate's best model with production's on ``days`` and decide (module docstring).

    Both play under production's reward weights (its config's ``reward``), so the rewards compare.

    :param candidate_dir: the retrained run dir.
    :param production_dir: the production model's run dir.
    :param days: held-out days with distinct ``day_id``; each model must read their fleet.
    :param margin_completion: non-inferiority margin on the completion rate.
    :param margin_on_time: non-inferiority margin on the on-time rate.
    :param n_resamples: bootstrap replicates.
    :param seed: seed of the bootstrap.
    :param min_days: fewest days compared on each KPI for a promotion.
    """
    ids = [str(d.day_id) for d in days]
    if len(set(ids)) != len(ids):
        raise UserError("the gate's days must have distinct day_ids (a day counted twice is no evidence)")
    if min(margin_completion, margin_on_time) < 0:
        raise UserError("the non-inferiority margins must be >= 0")
    weights = from_dict(ExperimentConfig, read_metadata(production_dir)["config"]).reward
    table = episodes({CANDIDATE: candidate_dir, PRODUCTION: production_dir}, days, weights)
    diffs = paired_differences(
        table,
        PRODUCTION,
        ["completion_rate", "on_time_rate", "reward"],
        [CANDIDATE],
        n_resamples=n_resamples,
        confidence=CONFIDENCE,
        seed=seed,
    )
    tests = {
        "completion_rate": ("non-inferiority", -margin_completion),
        "on_time_rate": ("non-inferiority", -margin_on_time),
        "reward": ("superiority", 0.0),
    }
    means = table.groupby("policy")[list(tests)].mean()
    differences = []
    for row in diffs.itertuples(index=False):
        test, threshold = tests[row.kpi]
        differences.append(
            {
                "kpi": row.kpi,
                "test": test,
                "threshold": threshold,
                "mean_diff": float(row.mean_diff),
                "ci_low": float(row.ci_low),
                "ci_high": float(row.ci_high),
                "n_days": int(row.n_days),
                "candidate_mean": float(means.at[CANDIDATE, row.kpi]),
                "production_mean": float(means.at[PRODUCTION, row.kpi]),
                "passed": bool(row.ci_low > threshold and row.n_days >= min_days),
            }
        )
    promote = all(d["passed"] for d in differences)
    return GateDecision(
        promote=promote,
        verdict=PROMOTE if promote else KEEP,
        reason=_reason(differences, promote, min_days),
        rule=RULE,
        differences=tuple(differences),
        n_days=len(days),
        min_days=min_days,
        day_ids=tuple(ids),
        margin_completion=margin_completion,
        margin_on_time=margin_on_time,
        confidence=CONFIDENCE,
        n_resamples=n_resamples,
        seed=seed,
        candidate_dir=str(candidate_dir),
        production_dir=str(production_dir),
        candidate_sha256=_best_sha256(candidate_dir),
        production_sha256=_best_sha256(production_dir),
        decided=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def episodes(run_dirs: Mapping[str, str | Path], days: Sequence[Day], weights=None) -> pd.DataFrame:
    """The per-episode KPI table of each run's best model (policy = its key, seed 0) on ``days``."""
    rows = []
    for policy, run_dir in run_dirs.items():
        dispatcher = Dispatcher(run_dir, "torch")
        for day in days:
            start = time.perf_counter()
            kpis = dispatcher.play(day, weights)
            row = episode_row(policy, 0, day, kpis, time.perf_counter() - start)
            rows.append({**row, "day_id": str(day.day_id)})  # historical ids are dates, synthetic ones ints
    return pd.DataFrame(rows)


def _reason(differences: list[dict], promote: bool, min_days: int) -> str:
    """The verdict in words: each KPI's difference, interval and whether it passed."""

    def describe(d: dict) -> str:
        claim = "non-inferior" if d["test"] == "non-inferiority" else "better"
        verdict = claim if d["passed"] else f"not shown {claim}"
        why = (
            f"CI low {d['ci_low']:+.4g} {'>' if d['ci_low'] > d['threshold'] else '<='} {d['threshold']:+.4g}"
        )
        if d["n_days"] < min_days:
            why = f"{d['n_days']} days < min_days {min_days}"
        return (
            f"{d['kpi']} {verdict} (difference {d['mean_diff']:+.4g}, 95 % CI "
            f"[{d['ci_low']:+.4g}, {d['ci_high']:+.4g}], {why})"
        )

    if promote:
        return "promote: " + "; ".join(describe(d) for d in differences)
    failed = [describe(d) for d in differences if not d["passed"]]
    passed = [d["kpi"] for d in differences if d["passed"]]
    return "keep production: " + "; ".join(failed) + (f"; passed: {', '.join(passed)}" if passed else "")


def _best_sha256(run_dir: str | Path) -> str:
    return hashlib.sha256((Path(run_dir) / "best_model" / "best_model.zip").read_bytes()).hexdigest()


def _plain(value):
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    return value


# --------------------------------------------------------------------------- days from the decision log
def bookings_from_records(records: Iterable[Mapping], region: str | None = None) -> pd.DataFrame:
    """The bookings of logged decision records (the service's format) as a bookings table.

    The table has the historical schema, typed as :func:`~rl_lib.scenarios.historical.read_bookings`
    returns it, plus ``day_start_min`` / ``day_end_min`` (the service hours each record was decided
    under). Per record: ``service_date`` its ``service_day``; ``requested_pickup`` and coordinates
    from its ``booking``; ``created_at`` the day before at 18:00 for an advance booking, else its
    ``now_min`` (the decision minute: a replay then decides it at the same minute when the backend
    asked at the usual time, ``max(known, requested - dispatch lead)``). A booking decided twice
    counts once (its first record).

    :param region: keep this region's records; needed when the records hold several (a day's replay
        is one fleet's day).
    """
    frame = pd.DataFrame(
        [
            {k: r[k] for k in ("service_day", "region", "now_min", "booking", "day_start_min", "day_end_min")}
            for r in records
        ]
    )
    if frame.empty:
        raise UserError("no decision records: nothing to replay")
    if region is not None:
        frame = frame[frame["region"] == region]
    elif frame["region"].nunique() > 1:
        raise UserError(f"the records hold regions {sorted(frame['region'].unique())}; pick one (region=...)")
    booking = pd.json_normalize(frame["booking"].tolist()).set_index(frame.index)
    frame = pd.concat([frame.drop(columns="booking"), booking], axis=1)
    frame = frame.drop_duplicates(["service_day", "booking_id"])
    date = pd.to_datetime(frame["service_day"], format="%Y-%m-%d")
    minute = pd.Timedelta(minutes=1)
    created = np.where(frame["advance"], date - pd.Timedelta(hours=6), date + frame["now_min"] * minute)
    table = pd.DataFrame(
        {
            "booking_id": frame["booking_id"].astype(str),
            "service_date": date,
            "created_at": pd.to_datetime(created),
            "requested_pickup": date + frame["requested_pickup_min"] * minute,
            "pickup_x_km": frame["pickup.x_km"].astype(float),
            "pickup_y_km": frame["pickup.y_km"].astype(float),
            "dropoff_x_km": frame["dropoff.x_km"].astype(float),
            "dropoff_y_km": frame["dropoff.y_km"].astype(float),
            "mobility": frame["mobility"].str.lower(),
            "priority": frame["priority"].str.lower(),
            "window_min": frame["window_min"].astype(float),
            "day_start_min": frame["day_start_min"].astype(float),
            "day_end_min": frame["day_end_min"].astype(float),
        }
    )
    table.index = pd.RangeIndex(1, len(table) + 1, name="row")
    return table.loc[:, [*COLUMNS, "day_start_min", "day_end_min"]]


def days_from_records(
    records: Iterable[Mapping], scenario: ScenarioConfig, region: str | None = None
) -> list[Day]:
    """Replay the days of logged decision records (:func:`bookings_from_records`) as :class:`Day`.

    Fleet, rules, depot, travel model and dispatch lead come from ``scenario`` (pass the production
    model's scenario: its fleet is the one the days are replayed with, the log does not record the
    fleet's shifts); the service hours from the records. Days in date order, ``day_id`` the date.
    """
    table = bookings_from_records(records, region)
    days = []
    for (start, end), part in table.groupby(["day_start_min", "day_end_min"]):
        days += days_from_bookings(
            part, replace(scenario, day_start_min=float(start), day_end_min=float(end))
        )
    return sorted(days, key=lambda d: d.day_id)
