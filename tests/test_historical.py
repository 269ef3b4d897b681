"""Historical bookings: sample round trips, exact replay, fitting, validation and atomic writes."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_lib.errors import UserError
from rl_lib.experiment import load_experiment
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.historical import (
    COLUMNS,
    ON_ERROR,
    days_from_bookings,
    fit_scenario,
    read_bookings,
    sample_table,
    save_scenario,
    write_sample,
)
from rl_lib.scenarios.historical.cli import add_data_command
from rl_lib.scenarios.synthetic import SyntheticScenario

SEED = 7


@pytest.fixture(scope="module")
def sample90(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("sample") / "bookings.csv"
    write_sample(str(path), days=90, seed=SEED)
    df, report = read_bookings(str(path))
    assert report.rows_kept == report.rows_read == len(df) and report.dates == 90
    return df


@pytest.fixture
def small_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Six rows of one sample day, all text, ready to be broken by a test."""
    table = sample_table(ScenarioConfig(seed=SEED), 1).head(6)
    table = table.astype(object)
    path = tmp_path / "small.csv"
    table.to_csv(path, index=False)
    return path, table


def _write(path: Path, table: pd.DataFrame) -> str:
    table.to_csv(path, index=False)
    return str(path)


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dest", ["s.csv", "s.parquet", "sqlite:///{tmp}/s.db"])
def test_sample_round_trip(tmp_path: Path, dest: str) -> None:
    dest = dest.format(tmp=tmp_path) if "://" in dest else str(tmp_path / dest)
    rows = write_sample(dest, days=4, seed=SEED)
    expected = sample_table(ScenarioConfig(seed=SEED), 4)
    df, report = read_bookings(dest)
    assert rows == len(expected) == len(df) == report.rows_kept and report.dates == 4
    assert list(df.columns) == list(COLUMNS) and list(df.index) == list(range(1, rows + 1))
    assert (df["booking_id"].to_numpy() == expected["booking_id"].to_numpy()).all()
    assert (
        df["service_date"].dt.strftime("%Y-%m-%d").to_numpy() == expected["service_date"].to_numpy()
    ).all()
    for col in ("created_at", "requested_pickup"):
        gap = (df[col].reset_index(drop=True) - expected[col]).abs().max()
        assert gap < pd.Timedelta(microseconds=1)
    for col in ("pickup_x_km", "pickup_y_km", "dropoff_x_km", "dropoff_y_km", "window_min"):
        np.testing.assert_allclose(df[col].to_numpy(), expected[col].to_numpy(), rtol=0, atol=1e-12)
    for col in ("mobility", "priority"):
        assert (df[col].to_numpy() == expected[col].to_numpy()).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(dest.split("///")[-1]).name]


def test_last_days_keeps_the_last_n_dates(tmp_path: Path) -> None:
    path = str(tmp_path / "s.parquet")
    rows = write_sample(path, days=6, seed=SEED)
    df, report = read_bookings(path, last_days=3)
    dates = sorted(df["service_date"].dt.strftime("%Y-%m-%d").unique())
    assert dates == ["2026-06-28", "2026-06-29", "2026-06-30"]
    assert report.dates == 3 and report.rows_outside_last_days == rows - len(df) > 0
    _, report = read_bookings(path, last_days=50)
    assert report.dates == 6 and report.rows_outside_last_days == 0


def test_a_date_holds_the_same_bookings_whatever_the_sample_length(tmp_path: Path) -> None:
    short, long = sample_table(ScenarioConfig(seed=SEED), 2), sample_table(ScenarioConfig(seed=SEED), 5)
    last = long[long["service_date"].isin(short["service_date"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(short, last)


# ------------------------------------------------------------------------------------ replay
def test_replay_is_exact(sample90: pd.DataFrame) -> None:
    scenario = ScenarioConfig()
    days = days_from_bookings(sample90, scenario)
    generator = SyntheticScenario(replace(scenario, seed=SEED))
    assert len(days) == 90 and days[-1].day_id == "2026-06-30"
    for day in days:
        want = generator.make_day(pd.Timestamp(day.day_id).toordinal())
        got_b, want_b = day.bookings, want.bookings
        assert day.n_bookings == want.n_bookings
        for name in ("requested_pickup", "known_at", "decision_time", "window_min"):
            np.testing.assert_allclose(getattr(got_b, name), getattr(want_b, name), rtol=0, atol=1e-6)
        for name in ("mobility", "priority", "advance"):
            assert (getattr(got_b, name) == getattr(want_b, name)).all()
        # Same places: every trip and every depot approach is as long as the generator's.
        trip = day.travel.distance_km[got_b.pickup_node, got_b.dropoff_node]
        np.testing.assert_allclose(trip, want.travel.distance_km[want_b.pickup_node, want_b.dropoff_node])
        np.testing.assert_allclose(
            day.travel.distance_km[0, got_b.pickup_node], want.travel.distance_km[0, want_b.pickup_node]
        )
        assert (day.fleet.vehicle_type == want.fleet.vehicle_type).all()
        assert (day.fleet.shift_end == want.fleet.shift_end).all()
        assert (day.start_min, day.end_min) == (want.start_min, want.end_min)


def test_replay_leaves_out_bookings_outside_the_service_hours(
    sample90: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    df = sample90[sample90["service_date"] == "2026-06-30"]
    late = replace(ScenarioConfig(), day_start_min=600.0)
    with caplog.at_level(logging.WARNING):
        (day,) = days_from_bookings(df, late)
    early = int(((df["requested_pickup"] - df["service_date"]) < pd.Timedelta(minutes=600)).sum())
    assert early > 0 and day.n_bookings == len(df) - early
    assert f"{early} of {len(df)} bookings" in caplog.text


# ------------------------------------------------------------------------------------ fit
def test_fit_recovers_the_default_scenario(sample90: pd.DataFrame, tmp_path: Path) -> None:
    truth = ScenarioConfig()
    fitted = fit_scenario(sample90, truth)
    d, t = fitted.demand, truth.demand
    assert d.advance_per_day == pytest.approx(t.advance_per_day, rel=0.1)
    assert d.same_day_per_day == pytest.approx(t.same_day_per_day, rel=0.1)
    np.testing.assert_allclose(d.mobility_mix, t.mobility_mix, atol=0.03)
    np.testing.assert_allclose(d.priority_mix, t.priority_mix, atol=0.03)
    assert d.windows_min == t.windows_min
    np.testing.assert_allclose(d.window_probs, t.window_probs, atol=0.03)
    np.testing.assert_allclose(d.same_day_lead_min, t.same_day_lead_min, atol=5.0)
    assert d.outbound_share == pytest.approx(t.outbound_share, abs=0.03)
    prob = np.asarray(t.pickup_hour_profile) / sum(t.pickup_hour_profile)
    np.testing.assert_allclose(d.pickup_hour_profile, prob, atol=0.02)
    # Facilities are exact points in the sample: found exactly, weighted by their trips.
    want = {(p.x, p.y): p.weight for p in truth.geography.facilities}
    got = {(p.x, p.y): p.weight for p in fitted.geography.facilities}
    assert set(got) == set(want)
    for xy, weight in want.items():
        assert got[xy] == pytest.approx(weight, abs=0.03)
    # Every true town centre has a fitted town within 1.5 km.
    centres = np.array([[p.x, p.y] for p in fitted.geography.towns])
    for town in truth.geography.towns:
        assert np.hypot(*(centres - [town.x, town.y]).T).min() < 1.5
    assert fitted.fleet == truth.fleet and fitted.rules == truth.rules

    path = tmp_path / "fitted.yaml"
    save_scenario(fitted, path)
    assert load_experiment(path).scenario == fitted


def test_fit_is_deterministic(sample90: pd.DataFrame) -> None:
    assert fit_scenario(sample90, ScenarioConfig()) == fit_scenario(sample90, ScenarioConfig())


# ------------------------------------------------------------------------------------ bad input
def test_missing_column_is_named(small_csv: tuple[Path, pd.DataFrame]) -> None:
    path, table = small_csv
    _write(path, table.drop(columns=["mobility", "window_min"]))
    with pytest.raises(UserError, match="missing column.*mobility, window_min"):
        read_bookings(str(path))


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("mobility", "bicycle", "unknown mobility"),
        ("priority", "urgent", "unknown priority"),
        ("service_date", "30/06/2026", "bad service_date"),
        ("requested_pickup", "half past eight", "bad requested_pickup"),
        ("created_at", "2026-06-30T08:00:00+02:00", "UTC offset in created_at"),
        ("window_min", "-5", "bad window_min"),
        ("pickup_x_km", "", "bad pickup_x_km"),
        ("requested_pickup", "2026-07-01T09:00:00", "requested_pickup not on service_date"),
        ("created_at", "2026-06-30T23:00:00", "created_at after requested_pickup"),
    ],
)
def test_bad_row_names_its_row_or_is_counted(
    small_csv: tuple[Path, pd.DataFrame], column: str, value: str, reason: str
) -> None:
    path, table = small_csv
    table.loc[2, column] = value  # the third data row
    _write(path, table)
    with pytest.raises(UserError, match=r"row 3 \(line 4\): .*1 bad row"):
        read_bookings(str(path))
    df, report = read_bookings(str(path), on_error="skip")
    assert report.skipped == {reason: 1} and report.rows_kept == len(df) == 5
    assert 3 not in df.index and "skipped 1 bad rows" in report.summary()


def test_unknown_mobility_message(small_csv: tuple[Path, pd.DataFrame]) -> None:
    path, table = small_csv
    table.loc[2, "mobility"] = "bicycle"
    _write(path, table)
    with pytest.raises(UserError, match=r"small.csv row 3 .*mobility 'bicycle'.*ambulatory, wheelchair"):
        read_bookings(str(path))


def test_duplicate_id_keeps_the_first(small_csv: tuple[Path, pd.DataFrame]) -> None:
    path, table = small_csv
    table.loc[4, "booking_id"] = table.loc[1, "booking_id"]
    _write(path, table)
    with pytest.raises(UserError, match=r"row 5 .*repeats row 2"):
        read_bookings(str(path))
    df, report = read_bookings(str(path), on_error="skip")
    assert report.skipped == {"duplicate booking_id": 1} and list(df.index) == [1, 2, 3, 4, 6]


def test_skip_mode_counts_every_reason_and_warns(
    small_csv: tuple[Path, pd.DataFrame], caplog: pytest.LogCaptureFixture
) -> None:
    path, table = small_csv
    table.loc[0, "mobility"] = "bicycle"
    table.loc[1, "service_date"] = "yesterday"
    table.loc[2, "mobility"] = "skateboard"
    table.loc[3, "booking_id"] = table.loc[4, "booking_id"]
    _write(path, table)
    with caplog.at_level(logging.WARNING):
        df, report = read_bookings(str(path), on_error="skip")
    assert report.skipped == {"unknown mobility": 2, "bad service_date": 1, "duplicate booking_id": 1}
    assert list(df.index) == [4, 6] and report.rows_skipped == 4
    assert "unknown mobility: 2" in caplog.text


def test_all_rows_bad_is_an_error(small_csv: tuple[Path, pd.DataFrame]) -> None:
    path, table = small_csv
    table["priority"] = "urgent"
    _write(path, table)
    with pytest.raises(UserError, match="no valid bookings"):
        read_bookings(str(path), on_error="skip")


def test_unreadable_sources(tmp_path: Path) -> None:
    (tmp_path / "bookings.xlsx").write_text("x")
    with pytest.raises(UserError, match="unknown table format '.xlsx'"):
        read_bookings(str(tmp_path / "bookings.xlsx"))
    with pytest.raises(UserError, match="no such file"):
        read_bookings(str(tmp_path / "absent.csv"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="cannot read as parquet"):
        read_bookings(str(tmp_path / "broken.parquet"))
    with pytest.raises(UserError, match="not a valid SQLAlchemy URL"):
        read_bookings("not a url://x")
    with pytest.raises(UserError, match="nodialect://x/y: cannot read 'bookings'"):
        read_bookings("nodialect://x/y")
    with pytest.raises(UserError, match="no such database file"):
        read_bookings(f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()
    write_sample(f"sqlite:///{tmp_path}/s.db", days=1)
    with pytest.raises(UserError, match="no table 'trips'"):
        read_bookings(f"sqlite:///{tmp_path}/s.db", table="trips")
    with pytest.raises(UserError, match="on_error='ignore'"):
        read_bookings(f"sqlite:///{tmp_path}/s.db", on_error="ignore")


def test_sql_query_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    write_sample(url, days=3, seed=SEED)
    df, report = read_bookings(url, table="SELECT * FROM bookings WHERE service_date = '2026-06-29'")
    assert report.dates == 1 and (df["service_date"] == "2026-06-29").all()


# ------------------------------------------------------------------------------------ atomic writes
def test_write_into_a_missing_folder_leaves_nothing(tmp_path: Path) -> None:
    for dest in (tmp_path / "no" / "s.csv", tmp_path / "no" / "s.parquet"):
        with pytest.raises(UserError, match="does not exist"):
            write_sample(str(dest), days=1)
    with pytest.raises(UserError, match="cannot write"):
        write_sample(f"sqlite:///{tmp_path}/no/s.db", days=1)
    with pytest.raises(UserError, match="cannot write"):
        save_scenario(ScenarioConfig(), tmp_path / "no" / "s.yaml")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.csv"
    write_sample(str(path), days=1)
    before = path.read_bytes()

    def half_then_fail(self: pd.DataFrame, target, **kw) -> None:
        Path(target).write_text("booking_id,serv")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_sample(str(path), days=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.csv"]


# ------------------------------------------------------------------------------------ CLI
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rl-lib")
    add_data_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_sample_replay_and_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out, yaml_path = tmp_path / "s.csv", tmp_path / "valid.parquet", tmp_path / "fit.yaml"
    assert _cli(["data", "sample", "--out", str(src), "--days", "3"]) == 0
    assert _cli(["data", "import", str(src), "--days", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2026-06-29" in text and "2026-06-30" in text and "2026-06-28" not in text and "2 days," in text
    assert read_bookings(str(out))[1].dates == 2
    assert _cli(["data", "import", str(src), "--mode", "fit", "--out", str(yaml_path)]) == 0
    assert load_experiment(yaml_path).scenario.name == "default-fitted"
    with pytest.raises(UserError, match="--out PATH.yaml"):
        _cli(["data", "import", str(src), "--mode", "fit"])
    with pytest.raises(UserError, match="unknown table format"):
        _cli(["data", "import", str(src), "--out", str(tmp_path / "valid.json")])
    with pytest.raises(SystemExit):
        _cli(["data", "import", str(src), "--on-error", "ignore"])


def test_the_cli_offers_every_on_error_mode_without_importing_pandas():
    import subprocess
    import sys

    parser = argparse.ArgumentParser()
    add_data_command(parser.add_subparsers(dest="command", required=True))
    for mode in ON_ERROR:  # every mode the importer knows parses, and nothing else does
        assert parser.parse_args(["data", "import", "b.csv", "--on-error", mode]).on_error == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "import", "b.csv", "--on-error", "not-a-mode"])
    code = (
        "import sys, rl_lib.scenarios.historical.cli; print(sorted({'pandas', 'scipy'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
