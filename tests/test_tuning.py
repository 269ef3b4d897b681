"""The Optuna tuner: a tiny study end to end, resume after a kill, parallel workers on one storage
(SQLite and a real PostgreSQL server), pruning, divergence, clear errors, and the re-training rule."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import tiny_config
from optuna.trial import TrialState

from rl_lib.config import to_dict
from rl_lib.errors import UserError
from rl_lib.tuning.retrain import MIN_SEEDS, check_fresh_seeds, decide, retrain, write_tuned_config
from rl_lib.tuning.space import DEFAULT_SPACE, SearchSpace
from rl_lib.tuning.study import (
    TUNING_SEEDS_START,
    StudySpec,
    TuneSettings,
    load_study,
    make_spec,
    optimize,
    trial_config,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "net_width": {"type": "categorical", "choices": [16, 32]},
    "net_depth": {"type": "int", "low": 1, "high": 2},
}
TINY_SETTINGS = TuneSettings(
    timesteps_per_trial=600,
    n_evaluations=3,
    n_eval_episodes=2,
    n_startup_trials=2,
    pruner_startup_trials=1,
    pruner_warmup_evaluations=1,
)


def tiny_spec(folder: Path, storage: str | None = None, **settings) -> StudySpec:
    return StudySpec(
        name="tiny",
        study_dir=folder,
        storage_url=storage or f"sqlite:///{folder / 'study.db'}",
        base=tiny_config(),
        space=SearchSpace.from_dict(TINY_SPACE),
        settings=dataclasses.replace(TINY_SETTINGS, **settings),
        heartbeat_interval=1,
        grace_period=3,
    )


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


# --- search space -----------------------------------------------------------------------------


def test_the_space_file_is_the_default_space():
    assert SearchSpace.load(ROOT / "configs" / "dqn_space.yaml") == SearchSpace.load()
    assert yaml.safe_load((ROOT / "configs" / "dqn_space.yaml").read_text()) == DEFAULT_SPACE


def test_the_default_space_contains_the_default_config():
    from rl_lib.experiment import DQNConfig

    space, default = SearchSpace.load(), to_dict(DQNConfig())
    point = {k: default[k] for k in space.spec if k in default}
    point |= {"one_minus_gamma": 1 - default["gamma"], "net_width": default["net_arch"][0],
              "net_depth": len(default["net_arch"])}  # fmt: skip
    for name, dist in space.spec.items():
        if dist["type"] == "categorical":
            assert point[name] in dist["choices"], name
        else:
            assert dist["low"] <= point[name] <= dist["high"], name
    mapped = space.to_dqn(point)
    assert mapped["net_arch"] == list(default["net_arch"]) and mapped["gamma"] == pytest.approx(
        default["gamma"]
    )


def test_sampled_values_stay_in_the_space_and_map_to_a_valid_config(tmp_path):
    space = SearchSpace.load()
    spec = dataclasses.replace(tiny_spec(tmp_path), space=space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        config = trial_config(spec, params, trial.number)
        assert 1e-5 <= config.training.dqn.learning_rate <= 3e-3
        assert 0.9 <= config.training.dqn.gamma <= 0.999
        assert config.training.dqn.fleet_hidden in (32, 64, 128) and 1 <= config.training.dqn.n_steps <= 5
        assert 0.01 <= config.training.dqn.reward_scale <= 1.0 <= config.training.dqn.discount_tau_min <= 30.0
        assert config.training.seed == TUNING_SEEDS_START + trial.number
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "non-empty mapping"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1}}, "'lr' is not tunable"),
        ({"net_arch": {"type": "categorical", "choices": [1]}}, "'net_arch' is not tunable"),
        (
            {"learning_rate": {"type": "uniform", "low": 0.1, "high": 1}},
            "type one of float, int",
        ),
        ({"learning_rate": {"type": "float", "low": 0.01, "high": 0.001}}, "low (0.01) must be below high"),
        ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
        ({"learning_rate": {"type": "float", "low": 1e-4, "high": 2.0}}, "not a valid DQN setting"),
        ({"batch_size": {"type": "int", "low": 1.5, "high": 8}}, "low must be a finite integer"),
        ({"batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"batch_size": {"type": "categorical", "choices": [32], "step": 2}}, "unknown key(s) step"),
        ({"net_width": {"type": "categorical", "choices": [64]}}, "net_width and net_depth go together"),
    ],
)
def test_a_bad_search_space_is_a_clear_error(space, message):
    with pytest.raises(UserError, match=_escape(message)):
        SearchSpace.from_dict(space, "space.yaml")


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_bad_tuning_settings_and_configs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="timesteps_per_trial"):
        TuneSettings(timesteps_per_trial=0)
    with pytest.raises(UserError, match="too small for 10 evaluations"):
        TuneSettings(timesteps_per_trial=15)
    with pytest.raises(UserError, match="searches DQN hyperparameters"):
        make_spec(ROOT / "configs" / "maskable_ppo.yaml", out=tmp_path)
    with pytest.raises(UserError, match="validation split holds 3 days"):
        tiny_spec(tmp_path, n_eval_episodes=4)
    with pytest.raises(UserError, match="--study"):
        make_spec(ROOT / "configs" / "dqn.yaml", study="../x", out=tmp_path)
    with pytest.raises(UserError, match="not a usable database URL"):
        optimize(tiny_spec(tmp_path / "new" / "study", storage="nosuchdb://x"), 1)
    assert not (tmp_path / "new").exists(), "a refused study leaves nothing on disk"


def test_cli_bad_space_file_gives_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("learning_rate: {type: float, low: 0.1, high: 0.01}\n")
    result = subprocess.run(
        [sys.executable, "-m", "rl_lib.cli", "tune", "--space", str(bad), "--out", str(tmp_path / "t")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "low (0.1) must be below high" in result.stderr
    assert not (tmp_path / "t").exists()


# --- the study ---------------------------------------------------------------------------------


def test_tiny_study_end_to_end_then_resume_is_a_no_op(tmp_path):
    spec = tiny_spec(tmp_path, pruning=False)
    assert optimize(spec, 3) == 0
    study = load_study(spec)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:  # the value is the trial run's best evaluation, on validation days
        run = tmp_path / "trials" / f"trial{t.number}"
        meta = json.loads((run / f"trial{t.number}_training_metadata.json").read_text())
        assert t.value == meta["best"]["mean_reward"] and meta["status"] == "completed"
        assert sorted(t.intermediate_values) == [200, 400, 600]
        assert not (
            tmp_path / "trials" / f"trial{t.number}" / "checkpoints"
        ).exists()  # replay buffers dropped
    table = pd.read_csv(tmp_path / "trials.csv")
    assert list(table["number"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert optimize(spec, 3) == 0  # resumed: nothing left to do, nothing rerun
    assert [(t.number, t.value, t.params) for t in load_study(spec).get_trials()] == [
        (t.number, t.value, t.params) for t in trials
    ]
    with pytest.raises(UserError, match="created with another settings"):
        load_study(dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, seed=1)))


def test_pruning_stops_trials_below_the_median(tmp_path):
    spec = tiny_spec(tmp_path)
    assert optimize(spec, 6) == 0
    trials = load_study(spec).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "with one completed trial as reference, some of the five others fall below it"
    for t in pruned:
        assert t.user_attrs["outcome"] == "pruned" and t.last_step < spec.settings.timesteps_per_trial
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 1 and len(trials) == 6


def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, monkeypatch):
    import rl_lib.training as training

    real_train = training.train

    def train(config, run_dir, **kwargs):
        result = real_train(config, run_dir, **kwargs)
        if config.training.name == "trial1":
            return dataclasses.replace(result, status="diverged", reason="non-finite loss")
        return result

    monkeypatch.setattr(training, "train", train)
    spec = tiny_spec(tmp_path, pruning=False)
    assert optimize(spec, 3) == 0
    states = {t.number: (t.state, t.user_attrs.get("outcome")) for t in load_study(spec).get_trials()}
    assert states == {0: (TrialState.COMPLETE, "completed"), 1: (TrialState.FAIL, "diverged"),
                      2: (TrialState.COMPLETE, "completed")}  # fmt: skip


def test_two_workers_complete_the_budget_with_no_duplicate(tmp_path):
    spec = tiny_spec(tmp_path, pruning=False)
    assert optimize(spec, 6, workers=2) == 0
    trials = load_study(spec).get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6, "no two trials sample one point"
    assert sorted(t.user_attrs["resumes"] for t in trials) == list(range(6))  # one run dir each


def _optimize_in_child(spec: StudySpec, n_trials: int) -> None:
    optimize(spec, n_trials)


def test_a_killed_study_resumes_without_rerunning_completed_trials(tmp_path):
    spec = tiny_spec(tmp_path, pruning=False, timesteps_per_trial=1500)
    child = multiprocessing.get_context("spawn").Process(target=_optimize_in_child, args=(spec, 3))
    child.start()
    manifests = tmp_path / "trials" / "trial1" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (manifests.is_dir() and any(manifests.glob("*.manifest.json"))):  # trial 1 is mid-run
        assert child.is_alive() and time.monotonic() < deadline, "trial 1 never checkpointed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    before = {t.number: (t.value, t.params) for t in load_study(spec).get_trials() if t.state.is_finished()}
    assert list(before) == [0], "trial 0 completed before the kill, trial 1 did not"

    assert optimize(spec, 3) == 0
    trials = load_study(spec).get_trials()
    by_number = {t.number: t for t in trials}
    assert (by_number[0].value, by_number[0].params) == before[0]  # never rerun
    assert by_number[1].state == TrialState.FAIL and "outcome" not in by_number[1].user_attrs  # stale
    retry = next(t for t in trials if t.number > 1 and t.user_attrs["resumes"] == 1)
    assert retry.state == TrialState.COMPLETE and retry.params == by_number[1].params
    meta = json.loads((tmp_path / "trials" / "trial1" / "trial1_training_metadata.json").read_text())
    assert len(meta["sessions"]) == 2, "the retry resumed the dead trial's run dir from its checkpoint"
    counted = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(counted) == 3 and len(trials) == 4


# --- re-training and the decision --------------------------------------------------------------


def test_retraining_needs_five_fresh_seeds():
    with pytest.raises(UserError, match=f"at least {MIN_SEEDS} distinct seeds"):
        check_fresh_seeds([0, 1, 2, 3])
    with pytest.raises(UserError, match="tuning seeds"):
        check_fresh_seeds([0, 1, 2, 3, TUNING_SEEDS_START])
    check_fresh_seeds([0, 1, 2, 3, 4])


def _tables(gain_low: float, gain_high: float) -> tuple[pd.DataFrame, ...]:
    aggregate = pd.DataFrame([
        {"policy": "default", "kpi": "reward", "iqm": 100.0, "iqm_ci_low": 95.0, "iqm_ci_high": 105.0},
        {"policy": "trial3", "kpi": "reward", "iqm": 110.0, "iqm_ci_low": 104.0, "iqm_ci_high": 116.0},
    ])  # fmt: skip
    paired = pd.DataFrame([{"policy": "trial3", "mean_diff": 10.0, "ci_low": gain_low, "ci_high": gain_high}])
    relative = pd.DataFrame([{"policy": "trial3", "rel_diff": 0.1, "ci_low": gain_low / 100,
                              "ci_high": gain_high / 100}])  # fmt: skip
    return aggregate, paired, relative


def test_the_winner_must_beat_the_default_with_a_ci_excluding_zero(tmp_path):
    configs = {"default": tiny_config(), "trial3": tiny_config(dqn={"learning_rate": 0.005})}
    lost = decide(*_tables(-1.0, 21.0), configs, list(range(5)), 3, 0.95, "x.yaml")
    assert lost["winner"] is None and lost["reason"].endswith("x.yaml not written")
    won = decide(*_tables(2.0, 18.0), configs, list(range(5)), 3, 0.95, "x.yaml")
    assert won["winner"] == "trial3" and won["candidates"][0]["relative_gain"] == 0.1
    spec = tiny_spec(tmp_path)
    path = tmp_path / "dqn_tuned.yaml"
    write_tuned_config(configs["trial3"], spec, won, path)
    from rl_lib.experiment import load_experiment

    tuned = load_experiment(path)
    assert tuned.training.dqn.learning_rate == 0.005 and tuned.training.name == "dqn_tuned"
    assert (
        "+10.0% [+2.0%, +18.0%] (95.0% CI, Bonferroni; the plan hoped for +10% to +15%)" in path.read_text()
    )


def test_retrain_compares_on_held_out_validation_days_never_test_days(tmp_path):
    from rl_lib.scenarios.synthetic import SyntheticScenario

    spec = tiny_spec(tmp_path, pruning=False, timesteps_per_trial=300, n_eval_episodes=1)
    optimize(spec, 2)
    with pytest.raises(UserError, match="--confirm-days must be between 1 and 2"):
        retrain(spec, top=1, seeds=range(5), n_days=3)
    tuned = tmp_path / "tuned.yaml"
    decision = retrain(spec, top=1, seeds=range(5), n_days=2, workers=1, n_resamples=200, tuned_config=tuned)
    per_episode = pd.read_csv(tmp_path / "retrain" / "per_episode.csv")
    assert sorted(set(per_episode["policy"])) == sorted(["default", decision["candidates"][0]["candidate"]])
    assert sorted(set(per_episode["seed"])) == [0, 1, 2, 3, 4]
    scenario = SyntheticScenario(spec.base.scenario)
    held_out = scenario.day_ids("validation")[1:3]  # the first one was each run's evaluation day
    assert sorted(set(per_episode["day_id"])) == sorted(held_out)
    assert not set(per_episode["day_id"]) & set(scenario.day_ids("test"))
    assert decision["confidence"] == 0.95  # one candidate: no Bonferroni widening
    assert tuned.exists() == (decision["winner"] is not None)
    run = tmp_path / "retrain" / "runs" / "default_seed0"
    default_run = json.loads((run / "default_training_metadata.json").read_text())
    assert default_run["config"]["training"]["dqn"] == json.loads(json.dumps(to_dict(spec.base.training.dqn)))


# --- a shared PostgreSQL storage ---------------------------------------------------------------


@pytest.fixture(scope="module")
def postgresql_url():
    """A throw-away PostgreSQL server (Debian's postgresql, installed by .ci/run) on a local socket."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    bindir = bins[-1].parent
    # Not under pytest's basetemp: its parents are private to this user, and the server may run as
    # another one. A short path, too: Unix socket paths are limited to 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rl_lib_pg_"))
    data, socket = folder / "data", folder / "socket"
    socket.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        shutil.chown(folder, "postgres")
        shutil.chown(socket, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "-A", "trust", "-U", "tuner"], check=True,
                   capture_output=True)  # fmt: skip
    port = "5439"
    options = f"-k {socket} -p {port} -c listen_addresses=''"
    start = [*as_user, bindir / "pg_ctl", "-D", data, "-w", "-l", folder / "log", "-o", options, "start"]
    subprocess.run(start, check=True, capture_output=True)
    subprocess.run([bindir / "createdb", "-h", socket, "-p", port, "-U", "tuner", "optuna"], check=True)
    yield f"postgresql+psycopg://tuner@/optuna?host={socket}&port={port}"
    subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, postgresql_url):
    spec = tiny_spec(tmp_path, storage=postgresql_url, pruning=False, timesteps_per_trial=300)
    assert optimize(spec, 4, workers=2) == 0
    trials = load_study(spec).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4
    assert not (tmp_path / "study.db").exists(), "nothing went to the default SQLite file"


def test_relative_differences_point_estimate():
    from rl_lib.stats import relative_differences

    rows = [{"policy": p, "seed": s, "day_id": d, "reward": base + d + s}
            for p, base in (("ref", 100.0), ("new", 110.0)) for s in range(3) for d in range(4)]  # fmt: skip
    table = relative_differences(pd.DataFrame(rows), reference="ref", n_resamples=200)
    expected = 10.0 / np.mean([100.0 + d + s for s in range(3) for d in range(4)])
    assert table.iloc[0]["rel_diff"] == pytest.approx(expected)
    # the difference is constant; the interval comes from the reference mean's own uncertainty
    assert 0 < table.iloc[0]["ci_low"] < expected < table.iloc[0]["ci_high"]


def test_the_chapter_reads_a_study_stored_in_postgresql(tmp_path, postgresql_url):
    """``make thesis TUNING=DIR TUNING_STORAGE=URL``: the study's trials are in PostgreSQL, its folder
    holds trials.csv and the re-training's decision."""
    from rl_lib.thesis.tuning import tuning_outputs

    study_dir = tmp_path / "chapter"  # a study's name is its folder's
    spec = tiny_spec(study_dir, storage=postgresql_url, pruning=False, timesteps_per_trial=300)
    assert optimize(dataclasses.replace(spec, name="chapter"), 4) == 0
    configs = {"default": tiny_config(), "trial3": tiny_config(dqn={"learning_rate": 0.005})}
    (study_dir / "retrain").mkdir()
    decision = decide(*_tables(2.0, 18.0), configs, list(range(5)), 3, 0.95, None)
    (study_dir / "retrain" / "decision.json").write_text(json.dumps(decision))
    figures, tables = tmp_path / "figures", tmp_path / "tables"
    with pytest.raises(UserError, match="holds no study named 'chapter'"):
        tuning_outputs(study_dir, figures, tables)  # the default storage: the folder's SQLite file
    written = tuning_outputs(study_dir, figures, tables, storage=postgresql_url)
    assert sorted(p.name for p in written) == [
        "tuning_history.pdf", "tuning_importances.pdf", "tuning_parallel.pdf", "tuning_params.tex",
        "tuning_retrain.tex",
    ]  # fmt: skip
    assert postgresql_url in (tables / "tuning_params.tex").read_text().splitlines()[0]
    with pytest.raises(UserError, match="cannot open the study storage"):
        tuning_outputs(study_dir, figures, tables, storage=postgresql_url.replace("/optuna?", "/absent?"))
