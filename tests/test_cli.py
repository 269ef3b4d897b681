"""The rl-lib command line: jobs run, bad input is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from rl_lib.cli import main


def test_baselines_prints_the_kpi_table_and_writes_csvs(tmp_path, capsys):
    assert main(["baselines", "--days", "2", "--no-hindsight", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("random", "nearest", "insertion", "batch_matching", "completion_rate"):
        assert name in out
    per_episode = pd.read_csv(tmp_path / "baselines_per_episode.csv")
    assert len(per_episode) == 4 * 2
    summary = pd.read_csv(tmp_path / "baselines_summary.csv")
    assert {"policy", "kpi", "mean", "ci_low", "ci_high", "iqm", "n_days"} <= set(summary.columns)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["baselines", "--days", "100000"], "the test split holds 100 days"),
        (["baselines", "--config", "nope.yaml"], "nope.yaml: config file not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_bad_config_value_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("scenario:\n  fleet:\n    n_cars: -2\n")
    assert main(["baselines", "--config", str(cfg), "--days", "1"]) == 2
    assert "scenario.fleet.n_cars: -2 is below the minimum 0" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["baselines", "--days", "zero"])
    assert info.value.code == 2


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "rl_lib.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "baselines" in result.stdout
