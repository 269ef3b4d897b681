"""The A/B report: two-sample statistics, the log's reading and join, per-unit KPIs with a known effect,
the Redis and JSON-lines inputs, the thesis outputs and the CLI's error lines."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rl_lib.envs.core import RewardWeights
from rl_lib.errors import UserError
from rl_lib.stats import (
    minimum_detectable_difference,
    units_for_power,
    unpaired_difference,
    unpaired_probability_of_improvement,
)

pytest.importorskip("pydantic")  # rl_lib.serving.schemas (the serving extra)

from rl_lib.serving import ab_report as ab  # noqa: E402
from rl_lib.serving.ab_cli import add_ab_command  # noqa: E402
from rl_lib.serving.decision_log import DECISION_SCHEMA, OUTCOME_SCHEMA, DecisionLog, array_field  # noqa: E402
from rl_lib.serving.schemas import OutcomeRequest  # noqa: E402

W = RewardWeights()  # service 10, priorities (1, 1.5, 2), 0.1 per deadhead km, 0.2 per late minute, refusal 5


# ------------------------------------------------------------------------------------------------ stats
def test_unpaired_difference_agrees_with_scipy_two_sample_bootstrap():
    rng = np.random.default_rng(3)
    x, y = rng.normal(5.0, 2.0, size=25), rng.normal(4.0, 1.0, size=40)
    n = 20_000
    point, low, high = unpaired_difference(x, y, n_resamples=n, seed=1)

    def difference(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return a.mean(axis=axis) - b.mean(axis=axis)

    ref = stats.bootstrap(
        (x, y), difference, n_resamples=n, method="percentile", rng=np.random.default_rng(2)
    )
    assert point == pytest.approx(x.mean() - y.mean())
    se = np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.15 * se)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.15 * se)


def test_unpaired_difference_drops_nans_and_checks_its_input():
    assert unpaired_difference([1.0, np.nan, 3.0], [1.0], n_resamples=50)[0] == 1.0
    assert np.isnan(unpaired_difference([np.nan], [1.0, 2.0], n_resamples=50)).all()
    with pytest.raises(ValueError, match="1-D"):
        unpaired_difference([[1.0, 2.0]], [1.0])
    # Both arms constant: every replicate is the same difference.
    assert unpaired_difference([3.0] * 5, [1.0] * 4, n_resamples=50) == (2.0, 2.0, 2.0)


def test_unpaired_probability_of_improvement_is_the_mann_whitney_share():
    x = np.array([1.0, 2.0, 2.0, 5.0, 7.0, 9.0])
    y = np.array([0.0, 2.0, 3.0, 4.0, 4.0])
    expected = stats.mannwhitneyu(x, y).statistic / (x.size * y.size)  # ties count 1/2
    point, low, high = unpaired_probability_of_improvement(x, y, n_resamples=500)
    assert point == pytest.approx(expected)
    assert low <= point <= high
    # Lower is better: the same pairs read the other way.
    assert unpaired_probability_of_improvement(x, y, higher_is_better=False)[0] == pytest.approx(1 - expected)


def test_units_for_power_by_hand():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 2.8016
    assert units_for_power(1.0, 1.0, 0.5) == 63  # ceil(2.8016^2 * 2 / 0.25) = ceil(62.79)
    assert units_for_power(1.0, 1.0, -0.5) == 63
    # ceil((1.95996 + 1.28155)^2 * (4 + 1) / 1) = ceil(52.54)
    assert units_for_power(2.0, 1.0, 1.0, power=0.9) == 53
    assert units_for_power(0.0, 0.0, 1.0) == 1
    assert units_for_power(3.0, 4.0, 2.0) == int(np.ceil(z**2 * 25 / 4))
    for bad in ({"difference": 0.0}, {"sd_treatment": -1.0}, {"alpha": 1.0}, {"power": 0.0}):
        args = {"sd_treatment": 1.0, "sd_control": 1.0, "difference": 0.5, **bad}
        with pytest.raises(ValueError):
            units_for_power(**args)


def test_minimum_detectable_difference_inverts_units_for_power():
    assert minimum_detectable_difference(1.0, 1.0, 63, 63) == pytest.approx(
        2.8016 * np.sqrt(2 / 63), rel=1e-4
    )
    for sd_t, sd_c, difference in ((1.0, 1.0, 0.5), (2.0, 0.5, 0.3), (10.0, 12.0, 4.0)):
        n = units_for_power(sd_t, sd_c, difference)
        assert minimum_detectable_difference(sd_t, sd_c, n, n) <= difference
        assert minimum_detectable_difference(sd_t, sd_c, n - 1, n - 1) > difference
    with pytest.raises(ValueError, match="at least one unit"):
        minimum_detectable_difference(1.0, 1.0, 0, 5)


def test_units_for_power_gives_the_power_it_promises():
    """A z test on n units per arm from the formula rejects about 80 % of the time (normal data)."""
    rng = np.random.default_rng(0)
    sd_t, sd_c, difference = 2.0, 1.5, 0.8
    n = units_for_power(sd_t, sd_c, difference)
    t = rng.normal(difference, sd_t, size=(4000, n))
    c = rng.normal(0.0, sd_c, size=(4000, n))
    z = (t.mean(axis=1) - c.mean(axis=1)) / np.sqrt(sd_t**2 / n + sd_c**2 / n)
    assert np.mean(np.abs(z) > stats.norm.ppf(0.975)) == pytest.approx(0.8, abs=0.03)


# ----------------------------------------------------------------------------------------- a log by hand
def decision_record(decision_id: str, unit: str, arm: str, action: int = 0, n_vehicles: int = 3,
                    priority: str = "normal", policy: str = "model") -> dict:  # fmt: skip
    """A decision record with every field DispatchService._answer writes."""
    k = n_vehicles
    return {
        "schema": DECISION_SCHEMA, "decision_id": decision_id, "time_unix": 1.8e9,
        "service_day": unit.split("/")[0], "region": "all", "now_min": 480.0, "booking_id": "b" + decision_id,
        "priority": priority, "mobility": "ambulatory",
        "booking": {"booking_id": "b" + decision_id, "requested_pickup_min": 540.0, "window_min": 15.0,
                    "pickup": {"x_km": 1.0, "y_km": 2.0}, "dropoff": {"x_km": 3.0, "y_km": 4.0},
                    "mobility": "ambulatory", "priority": priority, "advance": False},
        "day_start_min": 420.0, "day_end_min": 1260.0, "unit": unit, "arm": arm, "policy": policy,
        "fallback_reason": None, "model_version": "abc123" if policy == "model" else None, "n_vehicles": k,
        "action": action, "vehicle_id": f"v{action}" if action < k else None,
        "observation": array_field(np.zeros(11 + 7 * k + 4, dtype=np.float32)),
        "mask": array_field(np.ones(k + 1, dtype=bool)), "reward_at_decision": 9.0, "planned": None,
        "decision_ms": 0.4,
    }  # fmt: skip


def outcome_record(decision_id: str, status: str = "completed", lateness_min: float = 0.0,
                   deadhead_km: float = 0.0) -> dict:  # fmt: skip
    """An outcome record as DispatchService.record_outcome writes it (through the request model)."""
    facts = {"pickup_min": 500.0, "dropoff_min": 530.0, "lateness_min": lateness_min,
             "deadhead_km": deadhead_km} if status == "completed" else {}  # fmt: skip
    request = OutcomeRequest(decision_id=decision_id, status=status, **facts)
    return {"schema": OUTCOME_SCHEMA, "time_unix": 1.8e9, **request.model_dump(mode="json")}


class Log:
    """Records in stream order, written as a spool file (DecisionLog's own line format)."""

    def __init__(self, prefix: str = "rl_lib") -> None:
        self.prefix = prefix
        self.entries: list[tuple[str, dict]] = []

    def decision(self, *args, **kwargs) -> Log:
        self.entries.append(("decisions", decision_record(*args, **kwargs)))
        return self

    def outcome(self, *args, **kwargs) -> Log:
        self.entries.append(("outcomes", outcome_record(*args, **kwargs)))
        return self

    def lines(self) -> list[str]:
        return [json.dumps({"stream": f"{self.prefix}:{kind}", "key": f"{kind[:-1]}:{r['decision_id']}",
                            "record": json.dumps(r)}) for kind, r in self.entries]  # fmt: skip

    def write(self, path: Path) -> Path:
        path.write_text("".join(line + "\n" for line in self.lines()), encoding="utf-8")
        return path


def unit_id(day: int, region: str = "north") -> str:
    return f"2027-01-{day:02d}/{region}/block0"


def shifted_log(effect_km: float, n_units: int = 20, trips: int = 10) -> Log:
    """Switchback units: control unit i's trips drive 5 + 0.5 i deadhead km each, treatment unit i's
    ``effect_km`` fewer, so each treatment unit earns trips * 0.1 * effect_km more by construction."""
    log = Log()
    for i in range(n_units):
        for arm, region, saved in (("agent", "north", effect_km), ("control", "south", 0.0)):
            for j in range(trips):
                decision_id = f"{arm}-{i}-{j}"
                log.decision(decision_id, unit_id(i + 1, region), arm)
                log.outcome(decision_id, deadhead_km=5.0 + 0.5 * i - saved)
    return log


def test_a_known_effect_is_found_within_its_interval(tmp_path):
    effect = 0.1 * 10 * 3.0  # 0.1 per km x 10 trips x 3 km: +3 reward per unit
    report = ab.ab_report(ab.read_log_files([shifted_log(3.0).write(tmp_path / "log.jsonl")]))
    rows = report.comparison.set_index("kpi")
    reward = rows.loc["reward"]
    assert reward["difference"] == pytest.approx(effect)
    assert reward["ci_low"] < effect < reward["ci_high"] and reward["ci_low"] > 0
    assert reward["ci_excludes_zero"] and reward["prob_improvement"] > 0.5
    assert (reward["n_treatment"], reward["n_control"]) == (20, 20)
    deadhead = rows.loc["mean_deadhead_km"]
    assert deadhead["difference"] == pytest.approx(-3.0) and deadhead["ci_high"] < 0
    assert deadhead["prob_improvement"] > 0.5  # fewer km is better
    assert rows.loc["completion_rate", "difference"] == 0.0


def test_a_null_effect_has_an_interval_around_zero(tmp_path):
    report = ab.ab_report(ab.read_log_files([shifted_log(0.0).write(tmp_path / "log.jsonl")]))
    reward = report.comparison.set_index("kpi").loc["reward"]
    assert reward["difference"] == pytest.approx(0.0, abs=1e-12)
    assert reward["ci_low"] < 0 < reward["ci_high"] and not reward["ci_excludes_zero"]
    assert reward["prob_improvement"] == pytest.approx(0.5)


def hand_log() -> Log:
    """Unit A (agent): every status once; unit B (agent) and units C, D (control): one trip each."""
    a = unit_id(1)
    log = Log()
    log.outcome("a1", lateness_min=5.0, deadhead_km=4.0)  # before its decision
    log.decision("a1", a, "agent", priority="dialysis")  # 2 x 10 - 0.1 x 4 - 0.2 x 5 = 18.6
    log.decision("a2", a, "agent", policy="fallback").outcome("a2", deadhead_km=2.0)  # 10 - 0.2 = 9.8
    log.outcome("a2", lateness_min=50.0, deadhead_km=20.0)  # a second outcome: counted once, the first
    log.decision("a3", a, "agent", action=3)  # refused: -5
    log.decision("a4", a, "agent").outcome("a4", status="cancelled")  # 0
    log.decision("a5", a, "agent").outcome("a5", status="no_show")  # 0
    log.decision("a6", a, "agent")  # awaiting its outcome
    log.decision("a1", a, "agent", priority="normal")  # a replayed decision: the first one counts
    log.outcome("ghost", deadhead_km=1.0)  # its decision is not in this log
    log.outcome("a3", deadhead_km=1.0)  # an outcome of a refusal: left out
    for decision_id, unit, arm in (("b1", unit_id(2), "agent"), ("c1", unit_id(1, "south"), "control"),
                                   ("d1", unit_id(2, "south"), "control")):  # fmt: skip
        log.decision(decision_id, unit, arm, priority="appointment").outcome(decision_id, deadhead_km=1.0)
    return log


def test_per_unit_kpis_and_the_join_by_hand(tmp_path):
    log = ab.read_log_files([hand_log().write(tmp_path / "log.jsonl")])
    assert (log.duplicate_decisions, log.duplicate_outcomes) == (1, 1)
    joined, counts = ab.join_outcomes(log, W)
    assert (counts.outcomes_without_decision, counts.outcomes_of_refusals) == (1, 1)
    status = joined.set_index("decision_id")["status"]
    assert status[["a1", "a2", "a3", "a4", "a5", "a6"]].tolist() == [
        "completed", "completed", "refused", "cancelled", "no_show", "awaiting"]  # fmt: skip
    a = ab.unit_kpis(joined).set_index("unit").loc[unit_id(1)]
    assert a["arm"] == "agent"
    assert (a["decisions"], a["assigned"], a["refused"], a["awaiting"], a["served"]) == (6, 5, 1, 1, 2)
    assert (a["cancelled"], a["no_show"], a["fallbacks"]) == (1, 1, 1)
    assert a["reward"] == pytest.approx(18.6 + 9.8 - 5.0)
    assert a["reward_per_decision"] == pytest.approx((18.6 + 9.8 - 5.0) / 5)  # the awaiting one is out
    assert a["completion_rate"] == pytest.approx(2 / 5)
    assert a["on_time_rate"] == pytest.approx(1 / 2)
    assert a["mean_deadhead_km"] == pytest.approx(3.0)
    assert a["mean_lateness_min"] == pytest.approx(2.5)
    report = ab.ab_report(log, weights=W, n_resamples=100)
    assert report.awaiting == 1 and report.unit_kinds == ["switchback"]
    warnings = " | ".join(ab.report_warnings(report))
    for text in ("1 decisions await", "1 duplicate decision", "1 duplicate outcome", "1 outcomes without",
                 "1 outcomes of refused"):  # fmt: skip
        assert text in warnings


def test_the_reward_weights_price_the_outcomes(tmp_path):
    weights = RewardWeights(service_reward=20.0, priority_weights=(1.0, 3.0, 4.0), deadhead_per_km=1.0,
                            lateness_per_min=0.5, refusal_penalty=7.0)  # fmt: skip
    joined, _ = ab.join_outcomes(ab.read_log_files([hand_log().write(tmp_path / "log.jsonl")]), weights)
    reward = joined.set_index("decision_id")["reward"]
    assert reward["a1"] == pytest.approx(20 * 4.0 - 1.0 * 4 - 0.5 * 5)
    assert reward["c1"] == pytest.approx(20 * 3.0 - 1.0)
    assert reward["a3"] == -7.0 and reward["a4"] == 0.0 and np.isnan(reward["a6"])


def test_booking_units_and_units_under_two_arms_are_flagged(tmp_path):
    log = Log()
    for i in range(4):
        arm = ("agent", "control")[i % 2]
        log.decision(f"x{i}", f"2027-01-04/booking/b{i}", arm).outcome(f"x{i}", deadhead_km=1.0)
        log.decision(f"y{i}", f"2027-01-04/booking/b{i + 10}", arm).outcome(f"y{i}", deadhead_km=2.0)
    log.decision("z", "2027-01-04/booking/b0", "control").outcome("z", deadhead_km=1.0)
    report = ab.ab_report(ab.read_log_files([log.write(tmp_path / "log.jsonl")]), n_resamples=50)
    assert report.unit_kinds == ["booking"]
    assert report.units_in_several_arms == ["2027-01-04/booking/b0"]
    warnings = " | ".join(ab.report_warnings(report))
    assert "interference" in warnings and "several arms" in warnings


def test_power_table_targets_a_share_of_the_control_mean_or_absolute_values(tmp_path):
    report = ab.ab_report(ab.read_log_files([shifted_log(3.0).write(tmp_path / "log.jsonl")]), n_resamples=50,
                          mde={"reward": 2.0})  # fmt: skip
    power = report.power.set_index("kpi")
    comparison = report.comparison.set_index("kpi")
    reward, deadhead = comparison.loc["reward"], comparison.loc["mean_deadhead_km"]
    assert power.loc["reward", "mde"] == 2.0
    assert power.loc["reward", "units_per_arm"] == units_for_power(
        reward["sd_treatment"], reward["sd_control"], 2.0
    )
    assert power.loc["mean_deadhead_km", "mde"] == pytest.approx(0.02 * deadhead["mean_control"])
    assert power.loc["reward", "mdd"] == pytest.approx(
        minimum_detectable_difference(reward["sd_treatment"], reward["sd_control"], 20, 20)
    )
    assert bool(power.loc["reward", "powered"]) == (power.loc["reward", "units_per_arm"] <= 20)
    assert pd.isna(power.loc["mean_lateness_min", "units_per_arm"])  # control mean 0: no share of it
    with pytest.raises(UserError, match="unknown KPI lateness"):
        ab.power_table(report.comparison, mde={"lateness": 1.0})


# ------------------------------------------------------------------------------------- reading errors
def bad_line(tmp_path: Path, line: str) -> Path:
    """A spool file of one good line, then ``line``."""
    lines = [*Log().decision("a", unit_id(1), "agent").lines(), line]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


DECISION = decision_record("a", unit_id(1), "agent")


@pytest.mark.parametrize(("stream", "record", "message"), [
    ("decisions", {**DECISION, "schema": "rl_lib.decision/2"},
     "decision schema rl_lib.decision/2 is not supported: this report reads rl_lib.decision/1"),
    ("outcomes", {**outcome_record("a"), "schema": "rl_lib.outcome/0"},
     "outcome schema rl_lib.outcome/0 is not supported"),
    ("decisions", {**DECISION, "schema": None}, "not a decision record (schema None"),
    ("decisions", outcome_record("a"), "not a decision record (schema 'rl_lib.outcome/1'"),
    ("decisions", {**DECISION, "action": 4}, "'action': expected at most n_vehicles (3, refuse), got 4"),
    ("decisions", {**DECISION, "action": True}, "field 'action': expected an integer >= 0"),
    ("decisions", {**DECISION, "priority": "urgent"}, "field 'priority'"),
    ("decisions", {**DECISION, "arm": ""}, "field 'arm': expected a non-empty string"),
    ("outcomes", {**outcome_record("a"), "deadhead_km": None}, "field 'deadhead_km'"),
    ("outcomes", {**outcome_record("a"), "status": "lost"}, "field 'status'"),
])  # fmt: skip
def test_bad_records_are_refused_naming_the_line(tmp_path, stream, record, message):
    path = bad_line(
        tmp_path, json.dumps({"stream": f"rl_lib:{stream}", "key": "k", "record": json.dumps(record)})
    )
    with pytest.raises(UserError, match=f"^{path}:2: ") as error:
        ab.read_log_files([path])
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("line", "message"), [
    ('{"stream": "rl_lib:decisions", "record"', "not a spool line"),
    ('["rl_lib:decisions"]', "not a spool line"),
    ('{"stream": "rl_lib:decisions", "record": "{not json"}', "the decision record is not a JSON object"),
    ('{"stream": "other:decisions", "record": "{}"}', "neither rl_lib:decisions nor rl_lib:outcomes"),
])  # fmt: skip
def test_bad_lines_are_refused_naming_the_line(tmp_path, line, message):
    path = bad_line(tmp_path, line)
    with pytest.raises(UserError, match=f"^{path}:2: .*{message}"):
        ab.read_log_files([path])


def test_reading_keeps_stream_order_across_files_and_skips_blank_lines(tmp_path):
    first = Log().decision("a", unit_id(1), "agent").write(tmp_path / "first.jsonl")
    second = Log().outcome("a", deadhead_km=1.0).outcome("a", deadhead_km=9.0).decision("a", unit_id(2), "x")
    second = second.write(tmp_path / "second.jsonl")
    second.write_text(second.read_text() + "\n\n")
    log = ab.read_log_files([first, second])
    assert log.decisions.set_index("decision_id").loc["a", "arm"] == "agent"
    assert log.outcomes.set_index("decision_id").loc["a", "deadhead_km"] == 1.0
    assert (log.duplicate_decisions, log.duplicate_outcomes) == (1, 1)
    assert log.sources == (str(first), str(second))
    with pytest.raises(UserError, match="no such file"):
        ab.read_log_files([tmp_path / "missing.jsonl"])


def test_the_report_refuses_what_it_cannot_compare(tmp_path):
    empty = ab.read_log_files([Log().write(tmp_path / "empty.jsonl")])
    with pytest.raises(UserError, match="no decision record"):
        ab.ab_report(empty)
    log = ab.read_log_files([shifted_log(1.0, n_units=3).write(tmp_path / "log.jsonl")])
    with pytest.raises(
        UserError, match="--treatment 'model': no decision of that arm in the log; its arms: agent, control"
    ):
        ab.ab_report(log, treatment="model")
    with pytest.raises(UserError, match="both 'agent'"):
        ab.ab_report(log, control="agent")
    one = ab.read_log_files([shifted_log(1.0, n_units=1).write(tmp_path / "one.jsonl")])
    with pytest.raises(UserError, match="arm 'agent' has 1 unit"):
        ab.ab_report(one)


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("lang", ["fr", "en"])
def test_outputs_are_written_in_the_thesis_conventions(tmp_path, lang):
    source = shifted_log(3.0).write(tmp_path / "log.jsonl")
    report = ab.ab_report(ab.read_log_files([source]), n_resamples=200)
    suffix = "" if lang == "fr" else "_en"
    written = ab.write_report(report, tmp_path / "out", tmp_path / "figures", tmp_path / "tables", lang)
    assert written == [tmp_path / "out" / "per_unit.csv", tmp_path / "out" / "comparison.csv",
                       tmp_path / "out" / "power.csv", tmp_path / "figures" / f"ab_comparison{suffix}.pdf",
                       tmp_path / "tables" / f"ab_comparison{suffix}.tex",
                       tmp_path / "tables" / f"ab_power{suffix}.tex"]  # fmt: skip
    per_unit = pd.read_csv(written[0])
    assert len(per_unit) == 40 and set(per_unit["arm"]) == {"agent", "control"}
    assert pd.read_csv(written[1])["kpi"].tolist() == list(ab.KPIS)
    power_csv = pd.read_csv(written[2]).set_index("kpi")
    assert (
        power_csv.loc["reward", "units_per_arm"]
        == report.power.set_index("kpi").loc["reward", "units_per_arm"]
    )
    pdf = written[3].read_bytes()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # TrueType (Type 42) fonts embedded
    table = written[4].read_text()
    assert table.startswith(f"% Generated by rl_lib.serving.ab_report.ab_table from {source}")
    assert r"\begin{tabular}{lcccc}" in table and r"\toprule" in table
    assert ("Récompense par unité" if lang == "fr" else "Reward per unit") in table
    assert r"$3.0$" in table and r"\textsuperscript{*}" in table  # +3 per unit, the interval excludes 0
    power = written[5].read_text()
    assert r"$\alpha = 0.05$" in power and ("puissance 80" if lang == "fr" else "power 80") in power


def test_an_arm_that_served_nothing_still_gets_its_report(tmp_path):
    log = Log()
    for day in (1, 2):
        log.decision(f"t{day}", unit_id(day), "agent", action=3)  # refused: no trip, no lateness to speak of
        log.decision(f"c{day}", unit_id(day, "south"), "control").outcome(f"c{day}", deadhead_km=float(day))
    report = ab.ab_report(ab.read_log_files([log.write(tmp_path / "log.jsonl")]), n_resamples=50)
    rows = report.comparison.set_index("kpi")
    assert rows.loc["reward", "difference"] == pytest.approx(-5.0 - (10.0 - 0.15))
    assert rows.loc["on_time_rate", "n_treatment"] == 0 and np.isnan(rows.loc["on_time_rate", "difference"])
    assert pd.isna(report.power.set_index("kpi").loc["on_time_rate", "units_per_arm"])
    written = ab.write_report(report, tmp_path / "out", tmp_path / "figures", tmp_path / "tables")
    assert "& -- &" in written[4].read_text()  # no treatment mean: a dash, not a number
    assert "nan" in ab.format_report(report)


# -------------------------------------------------------------------------------------------------- Redis
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def redis_server(tmp_path):
    pytest.importorskip("redis")
    from rl_lib.serving.redis_server import LocalRedis

    with LocalRedis(tmp_path / "redis", port=0, password="s3cret-pass") as server:
        yield server


def append_through_decision_log(log: Log, connect, spool_dir: Path, prefix: str = "rl_lib") -> Path:
    """Append the records with the service's own writer (to Redis, or to its spool without one);
    returns its spool file."""
    writer = DecisionLog(connect, spool_dir, prefix=prefix, retry_s=3600)
    try:
        for kind, record in log.entries:
            (writer.append_decision if kind == "decisions" else writer.append_outcome)(record)
    finally:
        writer.close()
    return writer.spool


@needs_redis
def test_redis_and_spool_inputs_give_the_same_report(tmp_path, redis_server, monkeypatch):
    import redis

    from rl_lib.serving.decision_log import redis_connector

    monkeypatch.setattr(ab, "REDIS_PAGE", 7)  # several XRANGE pages
    log = shifted_log(3.0, n_units=4, trips=3)
    log.entries += hand_log().entries
    connect = redis_connector(redis_server.url, password="s3cret-pass")
    assert not append_through_decision_log(log, connect, tmp_path / "up", prefix="exp").exists()
    spool = append_through_decision_log(log, None, tmp_path / "down", prefix="exp")
    client = redis.Redis.from_url(redis_server.url, password="s3cret-pass", decode_responses=True)
    from_redis = ab.read_log_redis(client, "exp", source=redis_server.url)
    from_spool = ab.read_log_files([spool], prefix="exp")
    # The writer's exactly-once append dropped the duplicates that the spool still holds.
    assert (from_redis.duplicate_decisions, from_redis.duplicate_outcomes) == (0, 0)
    assert (from_spool.duplicate_decisions, from_spool.duplicate_outcomes) == (1, 1)
    pd.testing.assert_frame_equal(from_redis.decisions, from_spool.decisions)
    pd.testing.assert_frame_equal(from_redis.outcomes, from_spool.outcomes)
    assert from_redis.sources == (f"{redis_server.url} exp:decisions", f"{redis_server.url} exp:outcomes")
    bytes_client = redis.Redis.from_url(redis_server.url, password="s3cret-pass")  # no decode_responses
    pd.testing.assert_frame_equal(ab.read_log_redis(bytes_client, "exp").decisions, from_spool.decisions)
    client.xadd("exp:outcomes", {"other": "1"})
    with pytest.raises(UserError, match=r"exp:outcomes \d+-\d+: the entry has no 'record' field"):
        ab.read_log_redis(client, "exp")


# ---------------------------------------------------------------------------------------------------- CLI
def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rl-lib")
    add_ab_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def cli_error(argv: list[str]) -> str:
    with pytest.raises(UserError) as error:
        run(argv)
    message = str(error.value)
    assert "\n" not in message  # rl_lib.cli prints it as one line
    return message


@pytest.fixture
def outputs(tmp_path) -> list[str]:
    return ["--out", str(tmp_path / "out"), "--figures-dir", str(tmp_path / "figures"),
            "--tables-dir", str(tmp_path / "tables")]  # fmt: skip


def test_cli_reports_from_files_with_the_config_weights(tmp_path, outputs, capsys):
    source = shifted_log(3.0).write(tmp_path / "log.jsonl")
    config = tmp_path / "experiment.yaml"
    config.write_text("reward: {deadhead_per_km: 1.0}\n")
    assert run(["ab", "report", "--log", str(source), "--config", str(config), "--mde", "0.05", "reward=10",
                "--resamples", "200", "--lang", "en", *outputs]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "agent (treatment, 20 units) vs control (control, 20 units), switchback units" in printed
    assert f"wrote {tmp_path / 'tables' / 'ab_power_en.tex'}" in printed
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("kpi")
    assert comparison.loc["reward", "difference"] == pytest.approx(10 * 3.0 * 1.0)  # 1 per km now
    power = pd.read_csv(tmp_path / "out" / "power.csv").set_index("kpi")
    assert power.loc["reward", "mde"] == 10.0
    assert power.loc["completion_rate", "mde"] == pytest.approx(0.05)


def test_cli_error_lines(tmp_path, outputs, monkeypatch):
    monkeypatch.delenv("RL_LIB_REDIS_URL", raising=False)
    source = shifted_log(1.0, n_units=3).write(tmp_path / "log.jsonl")
    empty = Log().write(tmp_path / "empty.jsonl")
    bad = bad_line(tmp_path, "{oops")
    ab_report, logged = ["ab", "report"], ["ab", "report", "--log", str(source)]
    assert "no log: give --log FILE" in cli_error([*ab_report, *outputs])
    assert "no decision record" in cli_error([*ab_report, "--log", str(empty), *outputs])
    assert cli_error([*ab_report, "--log", str(bad), *outputs]).startswith(f"{bad}:2: not a spool line")
    assert "--control 'insertion': no decision of that arm" in cli_error([*logged, "--control", "insertion",
                                                                          *outputs])  # fmt: skip
    assert "--mde: unknown KPI rewards" in cli_error([*logged, "--mde", "rewards=1", *outputs])
    assert "at most one share" in cli_error([*logged, "--mde", "0.1", "0.2", *outputs])
    with_password = ["ab", "report", "--redis-url", "redis://:pw@127.0.0.1:1/0"]
    assert "carries a password: pass it in RL_LIB_REDIS_PASSWORD" in cli_error(with_password)
    message = cli_error([*ab_report, "--redis-url", "redis://127.0.0.1:1/0", *outputs])
    assert message.startswith("Redis at redis://127.0.0.1:1/0: ")
    for argv in (["--redis-url", "redis://x"], ["--mde", "-1"], ["--mde", "=3"], ["--alpha", "1.5"],
                 ["--lang", "de"]):  # fmt: skip
        with pytest.raises(SystemExit):
            run([*logged, *argv])


@needs_redis
def test_cli_reads_redis_with_the_password_from_the_environment(tmp_path, redis_server, outputs, monkeypatch,
                                                                capsys):  # fmt: skip
    from rl_lib.serving.decision_log import redis_connector

    connect = redis_connector(redis_server.url, password="s3cret-pass")
    append_through_decision_log(shifted_log(3.0, n_units=5, trips=2), connect, tmp_path / "spool")
    monkeypatch.delenv("RL_LIB_REDIS_PASSWORD", raising=False)
    assert cli_error(["ab", "report", "--redis-url", redis_server.url, *outputs]).startswith(
        f"Redis at {redis_server.url}: "
    )  # no password: refused by the server
    monkeypatch.setenv("RL_LIB_REDIS_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("RL_LIB_REDIS_URL", redis_server.url)
    assert run(["ab", "report", "--resamples", "100", *outputs]) == 0
    assert "5 units) vs control (control, 5 units)" in capsys.readouterr().out
    assert (tmp_path / "tables" / "ab_comparison.tex").is_file()
