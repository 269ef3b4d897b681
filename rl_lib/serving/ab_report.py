"""The A/B report: the decision and outcome log -> per-unit KPIs -> treatment vs control, with power.

**Input.** The two streams of :mod:`rl_lib.serving.decision_log`, read from Redis (``XRANGE`` over
``{prefix}:decisions`` and ``{prefix}:outcomes``, field ``record``: :func:`read_log_redis`) or from
JSON-lines files in the spool format, ``{"stream": ..., "key": ..., "record": "<json text>"}`` per
line (a service's spool, or an export: :func:`read_log_files`). Every record must carry the schema
this module reads (``rl_lib.decision/1``, ``rl_lib.outcome/1``): another version is refused, not
guessed at, and a bad line is one error naming ``file:line`` (or the stream entry). Records are
taken in stream order (files in the order given, then line by line); a decision id seen again
keeps its first record, as the log's exactly-once append does, so duplicate lines (a spool read
next to the stream it was replayed into, an outcome posted twice) count once. A spool holds only
what has not reached Redis yet (a replay truncates it): read the streams of a service that has
Redis, the spool files of one that never had it; the streams themselves keep their last
``maxlen`` records only (``MAXLEN ~``), so the oldest units of a long experiment drop out.

**Join.** Outcomes join decisions by ``decision_id``, whichever came first. Each decision ends as:

=============  ===================================  ===============================================
status         when                                 reward (:class:`~rl_lib.envs.core.RewardWeights`)
=============  ===================================  ===============================================
``completed``  assigned, outcome ``completed``      ``service_reward * priority_weights[priority]
                                                    - deadhead_per_km * deadhead_km
                                                    - lateness_per_min * lateness_min``
``refused``    the refuse action                    ``-refusal_penalty`` (its record is its outcome)
``cancelled``  assigned, outcome ``cancelled``      0
``no_show``    assigned, outcome ``no_show``        0
``awaiting``   assigned, no outcome yet             none: out of every outcome KPI, counted
=============  ===================================  ===============================================

The completed reward is the env's own, on the facts the backend reports rather than the
plan at decision time. A cancelled or no-show trip is neither a service nor a refusal, and the env
has no such event (its trips always complete): it earns 0, and the deadhead driven to a no-show is
not charged. Outcomes that join no decision (its record trimmed by ``MAXLEN``, or in another log)
and outcomes of refused decisions are left out and counted. Decisions that the model arm's
fallback took count for the model arm (intention to treat: the arm is what was randomised).

**Per-unit KPIs**, one row per (unit, arm): decisions, ``assigned``, ``refused``, ``awaiting``,
``served`` (completed), ``cancelled``, ``no_show``, ``fallbacks``; ``reward`` (the sum over the
unit's resolved decisions, i.e. all but the awaiting ones: a day's reward when the unit is a day),
``reward_per_decision`` (over the resolved ones), ``completion_rate`` (served / resolved),
``on_time_rate`` (lateness_min <= 1e-9 among the served), ``mean_deadhead_km`` and
``mean_lateness_min`` (over the served). NaN where the denominator is 0. A unit still in progress
has a partial reward: the CLI says how many decisions await their outcome.

**Why units, and which.** The unit is what :mod:`rl_lib.serving.experiment` randomised. Per-booking
units put both arms on one fleet: a vehicle the agent commits is busy for the control's next
booking, so each arm changes the other's state (interference, SUTVA fails), and the difference
measured is not the difference either policy makes on its own. A switchback unit (a service day,
or a block of hours, in one region) gives the whole fleet to one arm for the whole block, so units
are independent draws of each arm's effect; blocks shorter than a day still pass committed queues
from one block to the next (carryover), which whole days do not. Within a unit the bookings share
one fleet and are strongly dependent, so the effective sample size is the number of units, not of
bookings: every interval here is over units, each arm's units resampled on their own (the
two-sample bootstrap of :func:`rl_lib.stats.unpaired_difference`), and a per-booking log gets its
interval too but still carries the interference bias.

**Comparison** (:func:`compare_arms`), per KPI: each arm's mean over units with its interval, the
difference of unit means (treatment - control) with its bootstrap interval, the probability that a
random treatment unit beats a random control unit (:func:`rl_lib.stats.unpaired_probability_of_improvement`,
in the KPI's direction) with its interval, and the units per arm. **Power** (:func:`power_table`):
the units per arm needed to detect ``mde`` (by default 2 % of the control mean; or an absolute
value per KPI) at the observed unit SDs (:func:`rl_lib.stats.units_for_power`), and the minimum
detectable difference at the units the log has (:func:`rl_lib.stats.minimum_detectable_difference`).

**Outputs** (:func:`write_report`): ``per_unit.csv``, ``comparison.csv`` and ``power.csv``
(atomically), the figure ``ab_comparison.pdf`` (each arm's per-unit values, the difference with its
interval) and the tables ``ab_comparison.tex`` and ``ab_power.tex`` in the conventions of
:mod:`rl_lib.thesis` (French by default, ``_en`` appended for English).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rl_lib import stats
from rl_lib.envs.core import RewardWeights
from rl_lib.errors import UserError
from rl_lib.io import atomic_write_csv
from rl_lib.serving.decision_log import DECISION_SCHEMA, OUTCOME_SCHEMA, OUTCOME_STATUSES
from rl_lib.serving.schemas import PRIORITIES
from rl_lib.thesis.style import (
    LABELS,
    check_lang,
    display_scale,
    figure_size,
    label,
    new_figure,
    output_path,
    save_figure,
    thesis_style,
)
from rl_lib.thesis.tables import decimals, interval_cell, latex_escape, number, tabular, two_lines, write_tex

DECISION_COLUMNS = ("decision_id", "unit", "arm", "policy", "assigned", "priority")
OUTCOME_COLUMNS = ("decision_id", "status", "lateness_min", "deadhead_km")
ON_TIME_TOLERANCE_MIN = 1e-9
#: The compared KPIs and whether higher is better.
KPIS: dict[str, bool] = {
    "reward": True,
    "reward_per_decision": True,
    "completion_rate": True,
    "on_time_rate": True,
    "mean_deadhead_km": False,
    "mean_lateness_min": False,
}
#: The figure's rows.
FIGURE_KPIS = ("reward", "completion_rate", "on_time_rate", "mean_deadhead_km")
DEFAULT_MDE_SHARE = 0.02
REDIS_PAGE = 2000
ARM_COLORS = {"treatment": "#0072B2", "control": "#E69F00"}  # Okabe-Ito, as the thesis policies


def text(key: str, lang: str) -> str:
    """An A/B report's words (``ab_*`` keys of rl_lib.thesis.style.LABELS)."""
    check_lang(lang)
    return label(f"ab_{key}", lang)


def kpi_label(kpi: str, lang: str) -> str:
    """A KPI's label: the thesis's own (rl_lib.thesis.style.LABELS), but per unit rather than per day."""
    return text(kpi, lang) if f"ab_{kpi}" in LABELS else label(kpi, lang)


# ------------------------------------------------------------------------------------------- reading
@dataclass
class DecisionLogData:
    """The deduplicated records of a log, in stream order.

    :ivar decisions: one row per decision id: ``decision_id``, ``unit``, ``arm``, ``policy``,
        ``assigned``, ``priority`` (index into :data:`rl_lib.serving.schemas.PRIORITIES`).
    :ivar outcomes: one row per decision id: ``decision_id``, ``status``, ``lateness_min``,
        ``deadhead_km`` (NaN unless completed).
    :ivar duplicate_decisions: records dropped because their decision id came before.
    :ivar duplicate_outcomes: the same for outcomes.
    :ivar sources: what was read (files, or the Redis streams), named in the outputs.
    """

    decisions: pd.DataFrame
    outcomes: pd.DataFrame
    duplicate_decisions: int = 0
    duplicate_outcomes: int = 0
    sources: tuple[str, ...] = ()


@dataclass
class _Collector:
    """Validates records one by one and keeps the first of each decision id."""

    prefix: str
    decisions: dict[str, tuple] = field(default_factory=dict)
    outcomes: dict[str, tuple] = field(default_factory=dict)
    duplicate_decisions: int = 0
    duplicate_outcomes: int = 0

    def add(self, where: str, stream: object, record_text: object) -> None:
        kinds = {f"{self.prefix}:decisions": "decision", f"{self.prefix}:outcomes": "outcome"}
        if stream not in kinds:
            raise UserError(f"{where}: stream {stream!r} is neither {self.prefix}:decisions nor "
                            f"{self.prefix}:outcomes (another --prefix?)")  # fmt: skip
        kind = kinds[stream]
        try:
            record = json.loads(record_text) if isinstance(record_text, str) else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise UserError(f"{where}: the {kind} record is not a JSON object")
        _check_schema(where, kind, record.get("schema"))
        if kind == "decision":
            row = _decision_row(where, record)
            if row[0] in self.decisions:
                self.duplicate_decisions += 1
            else:
                self.decisions[row[0]] = row
        else:
            row = _outcome_row(where, record)
            if row[0] in self.outcomes:
                self.duplicate_outcomes += 1
            else:
                self.outcomes[row[0]] = row

    def result(self, sources: Iterable[str]) -> DecisionLogData:
        decisions = pd.DataFrame(list(self.decisions.values()), columns=list(DECISION_COLUMNS))
        outcomes = pd.DataFrame(list(self.outcomes.values()), columns=list(OUTCOME_COLUMNS))
        return DecisionLogData(decisions, outcomes, self.duplicate_decisions, self.duplicate_outcomes,
                               tuple(sources))  # fmt: skip


def _check_schema(where: str, kind: str, schema: object) -> None:
    expected = DECISION_SCHEMA if kind == "decision" else OUTCOME_SCHEMA
    if schema == expected:
        return
    family = expected.split("/")[0]
    if isinstance(schema, str) and schema.split("/")[0] == family:
        raise UserError(f"{where}: {kind} schema {schema} is not supported: this report reads {expected}")
    raise UserError(f"{where}: not a {kind} record (schema {schema!r}; expected {expected})")


def _bad_field(where: str, kind: str, name: str, expected: str, value: object) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UserError(f"{where}: {kind} record field {name!r}: expected {expected}, got {shown}")


def _text_field(where: str, kind: str, record: dict, name: str) -> str:
    value = record.get(name)
    if not (isinstance(value, str) and value):
        raise _bad_field(where, kind, name, "a non-empty string", value)
    return value


def _int_field(where: str, kind: str, record: dict, name: str, minimum: int) -> int:
    value = record.get(name)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise _bad_field(where, kind, name, f"an integer >= {minimum}", value)
    return value


def _fact_field(where: str, record: dict, name: str) -> float:
    value = record.get(name)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0):  # fmt: skip
        raise _bad_field(where, "outcome", name, "a finite number >= 0 for a completed trip", value)
    return float(value)


def _decision_row(where: str, record: dict) -> tuple:
    decision_id = _text_field(where, "decision", record, "decision_id")
    unit = _text_field(where, "decision", record, "unit")
    arm = _text_field(where, "decision", record, "arm")
    policy = _text_field(where, "decision", record, "policy")
    k = _int_field(where, "decision", record, "n_vehicles", 1)
    action = _int_field(where, "decision", record, "action", 0)
    if action > k:
        raise _bad_field(where, "decision", "action", f"at most n_vehicles ({k}, refuse)", action)
    priority = record.get("priority")
    if priority not in PRIORITIES:
        raise _bad_field(where, "decision", "priority", f"one of {', '.join(PRIORITIES)}", priority)
    return decision_id, unit, arm, policy, action < k, PRIORITIES.index(priority)


def _outcome_row(where: str, record: dict) -> tuple:
    decision_id = _text_field(where, "outcome", record, "decision_id")
    status = record.get("status")
    if status not in OUTCOME_STATUSES:
        raise _bad_field(where, "outcome", "status", f"one of {', '.join(OUTCOME_STATUSES)}", status)
    if status != "completed":
        return decision_id, status, math.nan, math.nan
    facts = (_fact_field(where, record, name) for name in ("lateness_min", "deadhead_km"))
    return decision_id, status, *facts


def read_log_files(paths: Sequence[str | Path], prefix: str = "rl_lib") -> DecisionLogData:
    """The decision and outcome records of JSON-lines files in the spool format, in the order given.

    Blank lines are skipped; any other line that is not ``{"stream": ..., "record": "<json>"}`` with a
    valid record of ``{prefix}:decisions`` or ``{prefix}:outcomes`` is an error naming ``file:line``.

    :raises UserError: a missing file, a bad line, an unsupported schema version.
    """
    collector = _Collector(prefix)
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        with path.open(encoding="utf-8") as lines:
            for number_, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number_}"
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                if not (isinstance(entry, dict) and "stream" in entry and "record" in entry):
                    raise UserError(f'{where}: not a spool line {{"stream": ..., "key": ..., "record": ...}}')
                collector.add(where, entry["stream"], entry["record"])
    return collector.result(str(p) for p in paths)


def read_log_redis(client, prefix: str = "rl_lib", source: str = "redis") -> DecisionLogData:
    """The records of ``{prefix}:decisions`` and ``{prefix}:outcomes``, by pages of ``XRANGE``.

    :param client: a redis-py client (``decode_responses`` either way).
    :param source: how to name the server in errors and outputs (a URL without its password).
    :raises UserError: an entry without a ``record`` field, a bad record, an unsupported schema.
    """
    collector = _Collector(prefix)
    streams = (f"{prefix}:decisions", f"{prefix}:outcomes")
    for stream in streams:
        start = "-"
        while True:
            entries = client.xrange(stream, min=start, max="+", count=REDIS_PAGE)
            for entry_id, fields in entries:
                entry_id = _decoded(entry_id)
                fields = {_decoded(k): v for k, v in fields.items()}
                where = f"{source} {stream} {entry_id}"
                if "record" not in fields:
                    raise UserError(f"{where}: the entry has no 'record' field")
                collector.add(where, stream, _decoded(fields["record"]))
            if len(entries) < REDIS_PAGE:
                break
            start = f"({_decoded(entries[-1][0])}"  # exclusive start: the page after the last entry
    return collector.result(f"{source} {stream}" for stream in streams)


def _decoded(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------- join
@dataclass
class JoinCounts:
    outcomes_without_decision: int = 0
    outcomes_of_refusals: int = 0


def join_outcomes(
    log: DecisionLogData, weights: RewardWeights | None = None
) -> tuple[pd.DataFrame, JoinCounts]:
    """Every decision with its status and reward (the table of the module docstring).

    :return: the decisions with ``status``, ``reward`` (NaN while awaiting), ``lateness_min`` and
        ``deadhead_km`` (NaN unless completed) added; and what was left out of the join.
    """
    weights = weights or RewardWeights()
    decisions, outcomes = log.decisions, log.outcomes.set_index("decision_id")
    known = outcomes.index.isin(decisions["decision_id"])
    refused_ids = decisions.loc[~decisions["assigned"], "decision_id"]
    counts = JoinCounts(int((~known).sum()), int(outcomes.index.isin(refused_ids).sum()))
    joined = decisions.join(outcomes, on="decision_id")
    assigned = joined["assigned"].to_numpy(dtype=bool)
    reported = joined["status"].notna().to_numpy()
    joined["status"] = np.select([~assigned, ~reported], ["refused", "awaiting"], joined["status"].to_numpy())
    joined.loc[~assigned, ["lateness_min", "deadhead_km"]] = np.nan  # a refusal's outcome is left out
    priority_weight = np.asarray(weights.priority_weights, dtype=float)[joined["priority"].to_numpy(int)]
    served = (
        weights.service_reward * priority_weight
        - weights.deadhead_per_km * joined["deadhead_km"]
        - weights.lateness_per_min * joined["lateness_min"]
    )
    status = joined["status"]
    joined["reward"] = np.select(
        [status == "completed", status == "refused", status.isin(["cancelled", "no_show"])],
        [served, -weights.refusal_penalty, 0.0],
        np.nan,
    )
    return joined, counts


def unit_kpis(joined: pd.DataFrame) -> pd.DataFrame:
    """The per-unit KPIs of the module docstring: one row per (unit, arm), sorted by both."""
    status = joined["status"]
    served = status == "completed"
    flags = pd.DataFrame({
        "unit": joined["unit"], "arm": joined["arm"], "decisions": 1, "assigned": joined["assigned"],
        "refused": status == "refused", "awaiting": status == "awaiting", "served": served,
        "cancelled": status == "cancelled", "no_show": status == "no_show",
        "fallbacks": joined["policy"] == "fallback",
        "on_time": served & (joined["lateness_min"] <= ON_TIME_TOLERANCE_MIN),
        "reward": joined["reward"].fillna(0.0),
        "deadhead_km": joined["deadhead_km"].where(served, 0.0),
        "lateness_min": joined["lateness_min"].where(served, 0.0),
    })  # fmt: skip
    sums = flags.groupby(["unit", "arm"], sort=True).sum().reset_index()
    counts = ["decisions", "assigned", "refused", "awaiting", "served", "cancelled", "no_show", "fallbacks"]
    out = sums[["unit", "arm", *counts]].astype({c: int for c in counts})
    resolved = (out["decisions"] - out["awaiting"]).astype(float)
    served_n = out["served"].astype(float)
    out["reward"] = sums["reward"].where(resolved > 0)
    out["reward_per_decision"] = _ratio(sums["reward"], resolved)
    out["completion_rate"] = _ratio(served_n, resolved)
    out["on_time_rate"] = _ratio(sums["on_time"].astype(float), served_n)
    out["mean_deadhead_km"] = _ratio(sums["deadhead_km"], served_n)
    out["mean_lateness_min"] = _ratio(sums["lateness_min"], served_n)
    return out


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num.astype(float) / den.where(den > 0)


# ---------------------------------------------------------------------------------------- comparison
def compare_arms(
    per_unit: pd.DataFrame,
    treatment: str,
    control: str,
    kpis: Sequence[str] = tuple(KPIS),
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Treatment vs control per KPI, over units (see the module docstring).

    :param per_unit: :func:`unit_kpis` output.
    :return: one row per KPI: ``kpi``, ``higher_is_better``, ``n_treatment``, ``n_control`` (units
        with a value), ``mean_treatment`` and ``mean_control`` with ``_ci_low`` / ``_ci_high``,
        ``sd_treatment``, ``sd_control`` (ddof 1), ``difference``, ``ci_low``, ``ci_high``,
        ``ci_excludes_zero``, ``relative_difference`` (over |mean_control|), ``prob_improvement``,
        ``p_ci_low``, ``p_ci_high``.
    """
    rows = []
    for kpi in kpis:
        t, c = (per_unit.loc[per_unit["arm"] == arm, kpi].dropna().to_numpy(dtype=float)
                for arm in (treatment, control))  # fmt: skip
        arm_means = {role: stats.stratified_bootstrap_ci({role: v[:, None]}, np.mean, n_resamples, confidence,
                                                         seed)[role]
                     for role, v in (("treatment", t), ("control", c)) if v.size}  # fmt: skip
        difference = stats.unpaired_difference(t, c, n_resamples, confidence, seed)
        better = KPIS[kpi]
        improvement = stats.unpaired_probability_of_improvement(t, c, better, n_resamples, confidence, seed)
        mean_c = arm_means.get("control", (math.nan,) * 3)
        row = {"kpi": kpi, "higher_is_better": KPIS[kpi], "n_treatment": t.size, "n_control": c.size}
        for arm, values in (("treatment", t), ("control", c)):
            row |= dict(zip((f"mean_{arm}", f"mean_{arm}_ci_low", f"mean_{arm}_ci_high"),
                            arm_means.get(arm, (math.nan,) * 3), strict=True))  # fmt: skip
            row[f"sd_{arm}"] = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
        row |= dict(zip(("difference", "ci_low", "ci_high"), difference, strict=True))
        row["ci_excludes_zero"] = bool(difference[1] > 0 or difference[2] < 0)
        row["relative_difference"] = difference[0] / abs(mean_c[0]) if mean_c[0] else math.nan
        row |= dict(zip(("prob_improvement", "p_ci_low", "p_ci_high"), improvement, strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


def power_table(
    comparison: pd.DataFrame,
    mde_share: float = DEFAULT_MDE_SHARE,
    mde: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> pd.DataFrame:
    """Units per arm to detect a target difference, and the difference detectable now, per KPI.

    :param comparison: :func:`compare_arms` output (its SDs, control means and unit counts).
    :param mde_share: the target difference as a share of |control mean| (KPIs not in ``mde``).
    :param mde: KPI -> absolute target difference, in the KPI's unit (rates as fractions).
    :return: one row per KPI: ``kpi``, ``mde``, ``mde_relative`` (over |mean_control|),
        ``units_per_arm`` (NaN without two units per arm, or a zero target), ``n_treatment``,
        ``n_control``, ``powered`` (both arms have that many), ``mdd`` and ``mdd_relative`` (at the
        current units), ``alpha``, ``power``.
    :raises UserError: ``mde`` names a KPI the comparison lacks, or a target that is not > 0.
    """
    mde = dict(mde or {})
    unknown = sorted(set(mde) - set(comparison["kpi"]))
    if unknown:
        known = ", ".join(comparison["kpi"])
        raise UserError(f"--mde: unknown KPI {', '.join(unknown)}; choose among {known}")
    for kpi, value in mde.items():
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--mde {kpi}={value}: the target difference must be > 0")
    if not (math.isfinite(mde_share) and mde_share > 0):
        raise UserError(f"--mde {mde_share}: the share of the control mean must be > 0")
    rows = []
    for r in comparison.itertuples():
        scale = abs(r.mean_control)
        target = mde.get(r.kpi, mde_share * scale)
        sds_known = np.isfinite(r.sd_treatment) and np.isfinite(r.sd_control)
        needed = (stats.units_for_power(r.sd_treatment, r.sd_control, target, alpha, power)
                  if sds_known and target > 0 else None)  # fmt: skip
        mdd = (stats.minimum_detectable_difference(r.sd_treatment, r.sd_control, r.n_treatment, r.n_control,
                                                   alpha, power) if sds_known else math.nan)  # fmt: skip
        rows.append({
            "kpi": r.kpi, "mde": target, "mde_relative": target / scale if scale else math.nan,
            "units_per_arm": needed, "n_treatment": r.n_treatment, "n_control": r.n_control,
            "powered": needed is not None and min(r.n_treatment, r.n_control) >= needed,
            "mdd": mdd, "mdd_relative": mdd / scale if scale else math.nan, "alpha": alpha, "power": power,
        })  # fmt: skip
    out = pd.DataFrame(rows)
    out["units_per_arm"] = out["units_per_arm"].astype("Int64")
    return out


@dataclass
class ABReport:
    treatment: str
    control: str
    per_unit: pd.DataFrame
    comparison: pd.DataFrame
    power: pd.DataFrame
    log: DecisionLogData
    join: JoinCounts
    confidence: float
    mde_share: float
    mde: dict[str, float]

    @property
    def awaiting(self) -> int:
        """Decisions of the two compared arms still waiting for their outcome."""
        arms = self.per_unit["arm"].isin([self.treatment, self.control])
        return int(self.per_unit.loc[arms, "awaiting"].sum())

    def units(self, arm: str) -> int:
        """Units of ``arm`` in the log."""
        return int((self.per_unit["arm"] == arm).sum())

    @property
    def units_in_several_arms(self) -> list[str]:
        """Units logged under more than one arm (a salt or experiment changed mid-way)."""
        arms = self.per_unit.groupby("unit")["arm"].nunique()
        return sorted(arms.index[arms > 1])

    @property
    def unit_kinds(self) -> list[str]:
        """``booking`` and / or ``switchback``, from the unit ids (rl_lib.serving.experiment's format)."""
        booking = self.per_unit["unit"].str.contains("/booking/", regex=False)
        return [kind for kind, present in (("switchback", (~booking).any()), ("booking", booking.any()))
                if present]  # fmt: skip


def ab_report(
    log: DecisionLogData,
    treatment: str = "agent",
    control: str = "control",
    weights: RewardWeights | None = None,
    mde_share: float = DEFAULT_MDE_SHARE,
    mde: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ABReport:
    """The whole report of a log: join, per-unit KPIs, comparison, power.

    :raises UserError: an empty log, an arm the log does not have, the same arm twice, an arm with
        fewer than two units (no interval over units can be had).
    """
    where = ", ".join(log.sources) or "the log"
    if log.decisions.empty:
        raise UserError(f"{where}: no decision record; nothing to compare")
    arms = list(dict.fromkeys(log.decisions["arm"]))
    for role, arm in (("treatment", treatment), ("control", control)):
        if arm not in arms:
            raise UserError(f"--{role} {arm!r}: no decision of that arm in the log; "
                            f"its arms: {', '.join(arms)}")  # fmt: skip
    if treatment == control:
        raise UserError(f"--treatment and --control are both {treatment!r}; compare two different arms")
    joined, counts = join_outcomes(log, weights)
    per_unit = unit_kpis(joined)
    for arm in (treatment, control):
        n = int((per_unit["arm"] == arm).sum())
        if n < 2:
            raise UserError(f"arm {arm!r} has {n} unit in the log: the interval is over units, collect at "
                            "least two per arm (more for a useful one)")  # fmt: skip
    comparison = compare_arms(per_unit, treatment, control, n_resamples=n_resamples, confidence=confidence,
                              seed=seed)  # fmt: skip
    powered = power_table(comparison, mde_share, mde, alpha, power)
    return ABReport(treatment, control, per_unit, comparison, powered, log, counts, confidence, mde_share,
                    dict(mde or {}))  # fmt: skip


def format_report(report: ABReport) -> str:
    """The comparison and the power calculation as plain text (what ``rl-lib ab report`` prints)."""
    log, level = report.log, _level(report.confidence)
    power = report.power.set_index("kpi")
    n_t, n_c = report.units(report.treatment), report.units(report.control)
    lines = [
        f"A/B report of {', '.join(log.sources)}: {report.treatment} (treatment, {n_t} units) vs "
        f"{report.control} (control, {n_c} units), {' and '.join(report.unit_kinds)} units; "
        f"{len(log.decisions)} decisions, {len(log.outcomes)} outcomes",
        f"difference of unit means, treatment - control [{level} % CI over units, * if it excludes 0]; P(a "
        f"treatment unit is better); units per arm to detect the target (power {power['power'].iloc[0]:g}):",
    ]
    for r in report.comparison.itertuples():
        needed = power.loc[r.kpi, "units_per_arm"]
        needed = "-" if pd.isna(needed) else needed
        lines.append(f"  {r.kpi:20s} {r.difference:+10.4g} [{r.ci_low:+.4g}, {r.ci_high:+.4g}]"
                     f"{' *' if r.ci_excludes_zero else '  '}  P {r.prob_improvement:.2f}  target "
                     f"{power.loc[r.kpi, 'mde']:.3g}: {needed} units/arm")  # fmt: skip
    return "\n".join(lines)


def report_warnings(report: ABReport) -> list[str]:
    """What the reader of the numbers should know: awaiting outcomes, interference, records left out."""
    log, out = report.log, []
    if report.awaiting:
        out.append(f"{report.awaiting} decisions await their outcome: left out of the outcome KPIs, and "
                   "their units' rewards are partial")  # fmt: skip
    if "booking" in report.unit_kinds:
        out.append("per-booking units share one fleet between the arms (interference): the difference is "
                   "biased; prefer switchback units (rl_lib.serving.experiment)")  # fmt: skip
    several = report.units_in_several_arms
    if several:
        out.append(f"{len(several)} units were logged under several arms (e.g. {several[0]}): the salt or "
                   "the experiment changed mid-way")  # fmt: skip
    for count, what in ((log.duplicate_decisions, "duplicate decision records"),
                        (log.duplicate_outcomes, "duplicate outcome records"),
                        (report.join.outcomes_without_decision, "outcomes without their decision"),
                        (report.join.outcomes_of_refusals, "outcomes of refused decisions")):  # fmt: skip
        if count:
            out.append(f"{count} {what} left out")
    return out


# ------------------------------------------------------------------------------------------- outputs
def _note(function: str, sources: Sequence[str]) -> str:
    """What wrote a file and from which log (as rl_lib.thesis.style.source_note, for this module)."""
    return f"Generated by rl_lib.serving.ab_report.{function} from {', '.join(sources)}; do not edit."


def _level(confidence: float) -> str:
    return f"{100 * confidence:g}"


def ab_figure(report: ABReport, out: str | Path, lang: str = "fr", kpis: Sequence[str] = FIGURE_KPIS) -> Path:
    """Per KPI (one row each): every unit's value in each arm with the arm's mean and interval (left),
    and the difference of means with its interval, zero dashed (right).

    :param out: .pdf path or folder (default name ``ab_comparison.pdf``).
    :return: the PDF written.
    """
    check_lang(lang)
    comparison = report.comparison.set_index("kpi")
    arms = (("treatment", report.treatment), ("control", report.control))
    rng = np.random.default_rng(0)  # the jitter: the same figure from the same log
    with thesis_style():
        fig = new_figure(figure_size(aspect=0.28 * len(kpis)))
        axes = fig.subplots(len(kpis), 2, width_ratios=[2.2, 1], squeeze=False)
        for (unit_ax, diff_ax), kpi in zip(axes, kpis, strict=True):
            scale, row = display_scale(kpi), comparison.loc[kpi]
            for y, (role, arm) in enumerate(arms):
                values = scale * report.per_unit.loc[report.per_unit["arm"] == arm, kpi].dropna().to_numpy()
                unit_ax.scatter(values, y + rng.uniform(-0.18, 0.18, values.size), s=6, alpha=0.45,
                                color=ARM_COLORS[role], linewidths=0)  # fmt: skip
                mean, low, high = (scale * row[f"mean_{role}{s}"] for s in ("", "_ci_low", "_ci_high"))
                unit_ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="|", markersize=12,
                                 color="black", capsize=3, elinewidth=1.2)  # fmt: skip
            unit_ax.set_yticks([0, 1], [f"{text(role, lang)}\n{arm}" for role, arm in arms])
            unit_ax.set_ylim(1.5, -0.5)
            unit_ax.set_title(kpi_label(kpi, lang), loc="left")
            value, low, high = (scale * row[c] for c in ("difference", "ci_low", "ci_high"))
            diff_ax.errorbar(value, 0, xerr=[[value - low], [high - value]], fmt="o",
                             color=ARM_COLORS["treatment"], capsize=3, elinewidth=1.2)  # fmt: skip
            diff_ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1)
            diff_ax.set_yticks([])
            diff_ax.spines["left"].set_visible(False)
            for ax in (unit_ax, diff_ax):
                ax.grid(axis="y", visible=False)
        axes[-1, 0].set_xlabel(text("per_unit", lang))
        axes[-1, 1].set_xlabel(text("difference", lang))
        path = output_path(out, "ab_comparison", lang, ".pdf")
        return save_figure(fig, path, _note("ab_figure", report.log.sources))


def ab_table(report: ABReport, out: str | Path, lang: str = "fr") -> Path:
    """Per KPI: each arm's mean over units [CI], the difference [CI] (an asterisk when it excludes 0)
    and P(improvement) [CI]; units per arm and awaiting decisions in the notes.

    :param out: .tex path or folder (default name ``ab_comparison.tex``).
    :return: the .tex file written.
    """
    check_lang(lang)
    level, body, starred = _level(report.confidence), [], False
    for r in report.comparison.itertuples():
        scale = display_scale(r.kpi)
        arms = {role: scale * np.array([getattr(r, f"mean_{role}{s}") for s in ("", "_ci_low", "_ci_high")])
                for role in ("control", "treatment")}  # fmt: skip
        widths = np.array([(a[2] - a[1]) / 2 for a in arms.values()] + [scale * (r.ci_high - r.ci_low) / 2])
        digits = decimals(widths, np.array([a[0] for a in arms.values()] + [scale * r.difference]))
        cells = [latex_escape(kpi_label(r.kpi, lang))]
        cells += [interval_cell(*a, digits) for a in arms.values()]
        diff = interval_cell(scale * r.difference, scale * r.ci_low, scale * r.ci_high, digits)
        if r.ci_excludes_zero:
            diff, starred = diff + r"\textsuperscript{*}", True
        cells += [diff, interval_cell(r.prob_improvement, r.p_ci_low, r.p_ci_high, 2)]
        body.append(" & ".join(cells))
    header = [label("indicator", lang), two_lines(text("control", lang), report.control),
              two_lines(text("treatment", lang), report.treatment),
              two_lines(*text("difference", lang).split(" ", 1)),
              latex_escape(label("prob_improvement", lang))]  # fmt: skip
    units = {"n_t": report.units(report.treatment), "n_c": report.units(report.control)}
    notes = [latex_escape(text("cells", lang).format(level=level, **units))]
    if starred:
        notes.append("* " + latex_escape(text("excludes_zero", lang).format(level=level)) + ".")
    if report.awaiting:
        notes.append(latex_escape(text("awaiting", lang).format(n=report.awaiting)))
    described = "Cells: mean over units [CI, bootstrap over each arm's units]; difference = T - C."
    return write_tex(output_path(out, "ab_comparison", lang, ".tex"), [_note("ab_table", report.log.sources),
                     described], tabular("lcccc", header, body, notes))  # fmt: skip


def ab_power_table(report: ABReport, out: str | Path, lang: str = "fr") -> Path:
    """Per KPI: the unit SDs of both arms, the target difference, the units per arm it needs, and the
    difference detectable with the units the log has.

    :param out: .tex path or folder (default name ``ab_power.tex``).
    :return: the .tex file written.
    """
    check_lang(lang)
    rows = report.comparison.set_index("kpi")[["sd_control", "sd_treatment"]].join(
        report.power.set_index("kpi")[["mde", "units_per_arm", "mdd"]]
    )
    body = []
    for kpi, r in rows.iterrows():
        scale = display_scale(kpi)
        shown = np.array([r.sd_control, r.sd_treatment, r.mde, r.mdd]) * scale
        digits = decimals(np.array([]), shown)
        cells = [latex_escape(kpi_label(kpi, lang))]
        cells += [f"${number(v, digits)}$" if np.isfinite(v) else "--" for v in shown[:3]]
        cells.append("--" if pd.isna(r.units_per_arm) else f"${int(r.units_per_arm)}$")
        cells.append(f"${number(shown[3], digits)}$" if np.isfinite(shown[3]) else "--")
        body.append(" & ".join(cells))
    header = [label("indicator", lang), two_lines(text("sd", lang), text("control", lang).lower()),
              two_lines(text("sd", lang), text("treatment", lang).lower()), latex_escape(text("mde", lang)),
              latex_escape(text("needed", lang)), latex_escape(text("mdd", lang))]  # fmt: skip
    power = report.power.iloc[0]
    share = f"{100 * report.mde_share:g}"
    if not report.mde:
        target = text("mde_share", lang).format(share=share)
    elif set(report.mde) >= set(report.power["kpi"]):
        target = text("mde_absolute", lang)
    else:
        named = ", ".join(kpi_label(k, lang) for k in report.mde)
        target = text("mde_mixed", lang).format(share=share, kpis=named)
    units = {"n_t": report.units(report.treatment), "n_c": report.units(report.control)}
    design = text("power_note", lang).format(power=f"{100 * power.power:g}", mde=target, **units)
    note = rf"$\alpha = {power.alpha:g}$ {latex_escape(design)}"  # alpha is not in pdflatex's T1 encoding
    described = "Units per arm by the normal approximation (rl_lib.stats.units_for_power); rates in %."
    return write_tex(output_path(out, "ab_power", lang, ".tex"), [_note("ab_power_table", report.log.sources),
                     described], tabular("lccccc", header, body, [note]))  # fmt: skip


def write_report(
    report: ABReport,
    out: str | Path,
    figures_dir: str | Path = "thesis_figures",
    tables_dir: str | Path = "latex/generated",
    lang: str = "fr",
) -> list[Path]:
    """The three CSVs in ``out``, the figure in ``figures_dir``, the two tables in ``tables_dir``.

    :return: the files written.
    """
    check_lang(lang)
    out = Path(out)
    written = []
    for name, frame in (("per_unit", report.per_unit), ("comparison", report.comparison),
                        ("power", report.power)):  # fmt: skip
        atomic_write_csv(frame, out / f"{name}.csv")
        written.append(out / f"{name}.csv")
    written.append(ab_figure(report, Path(figures_dir), lang))
    written.append(ab_table(report, Path(tables_dir), lang))
    written.append(ab_power_table(report, Path(tables_dir), lang))
    return written
