"""Training and the three-level checkpoint system: layout, rotation, exact resume, crash safety,
budgets, signals and divergence."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import tiny_config

from rl_lib.agents import MaskableDQN, load_model
from rl_lib.cli import main
from rl_lib.errors import UserError
from rl_lib.training import callbacks, train
from rl_lib.training.checkpoints import CheckpointManager, adaptive_checkpoint_freq
from rl_lib.training.run_record import EXIT_DISK_BUDGET, EXIT_DIVERGED, EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda *a: None}


def stop_at(step: int):
    """An ``on_evaluation`` that stops the run at its evaluation of ``step`` (the next checkpoint is
    that step's): an interrupted run, at the same step on any machine."""
    return lambda record, history: record["step"] >= step


def metadata(run_dir: Path, name: str = "tiny") -> dict:
    return json.loads((run_dir / f"{name}_training_metadata.json").read_text())


def weights(path: Path) -> dict[str, th.Tensor]:
    return MaskableDQN.load(path, device="cpu").policy.state_dict()


def assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert th.equal(wa[key], wb[key]), key


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rl_lib.cli", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("the condition never came")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The tiny experiment trained without interruption."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(tiny_config(), run_dir, **QUIET)
    assert result.status == "completed"
    return run_dir


def test_adaptive_checkpoint_frequency():
    assert [adaptive_checkpoint_freq(n) for n in (2, 4_999, 5_000, 19_999, 20_000, 10**6)] == [
        100, 100, 500, 500, 1_000, 1_000,
    ]  # fmt: skip


def test_layout_rotation_and_metadata(reference_run):
    ckpt = reference_run / "checkpoints"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == sorted(
        f"tiny_checkpoint_{n}_steps{suffix}"
        for n in (500, 600)
        for suffix in (".zip", "_replay_buffer.pkl", "_state.pkl", ".manifest.json")
    )
    assert (reference_run / "best_model" / "best_model.zip").is_file()
    assert (reference_run / "tiny_final.zip").is_file()
    meta = metadata(reference_run)
    assert meta["status"] == "completed" and meta["timesteps"] == {"done": 600, "target": 600}
    saved = [e["step"] for e in meta["checkpoint_history"] if e["event"] == "saved"]
    rotated = [e["step"] for e in meta["checkpoint_history"] if e["event"] == "rotated"]
    assert saved == [100, 200, 300, 400, 500, 600] and rotated == [100, 200, 300, 400]
    assert [e["step"] for e in meta["evaluations"]] == [200, 400, 600]
    best = max(meta["evaluations"], key=lambda e: e["mean_reward"])
    assert meta["best"]["step"] == best["step"] and meta["best"]["mean_reward"] == best["mean_reward"]
    for key in ("config", "seed", "versions", "device", "wall_time_s", "resume_count", "description"):
        assert key in meta
    assert meta["versions"]["torch"].startswith("2.13.0")
    # Only the filled part of the replay buffer is stored: 500 of 1000 transitions at step 500.
    path = ckpt / "tiny_checkpoint_500_steps_replay_buffer.pkl"
    buffer = pickle.loads(path.read_bytes())  # re-expanded to full size on loading
    assert buffer.pos == 500 and not buffer.full
    full = sum(a.nbytes for a in vars(buffer).values() if isinstance(a, np.ndarray))
    assert 0.45 * full < path.stat().st_size < 0.55 * full


def test_quick_mode_gives_the_exact_file_set(tmp_path, capsys):
    run_dir = tmp_path / "quick"
    assert (
        main(["train", "--quick", "--run-dir", str(run_dir), "--config", str(ROOT / "configs/dqn.yaml")]) == 0
    )
    files = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and "tensorboard" not in p.parts
    )
    assert files == sorted(
        [f"checkpoints/dqn_checkpoint_{n}_steps{s}" for n in (1, 2)
         for s in (".zip", "_replay_buffer.pkl", "_state.pkl", ".manifest.json")]
        + ["best_model/best_model.zip", "best_model/best_model.json", "dqn_final.zip",
           "dqn_training_metadata.json"]
    )  # fmt: skip
    assert metadata(run_dir, "dqn")["timesteps"] == {"done": 2, "target": 2}


def test_killed_and_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(reference_run, tiny_yaml, tmp_path):
    run_dir = tmp_path / "killed"
    proc = start_cli(["--config", str(tiny_yaml()), "--run-dir", str(run_dir)])
    manifest = run_dir / "checkpoints" / "tiny_checkpoint_300_steps.manifest.json"
    assert wait_for(manifest.exists, proc), "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metadata(run_dir)["status"] == "running"  # killed: nobody closed the record
    newest = CheckpointManager(run_dir, "tiny").latest_valid().step
    assert 300 <= newest < 600
    result = train(tiny_config(), run_dir, **QUIET)
    assert metadata(run_dir)["sessions"][-1]["from_step"] == newest
    assert result.status == "completed" and result.timesteps == 600
    meta = metadata(run_dir)
    assert meta["resume_count"] == 1
    assert_bitwise_equal(reference_run / "tiny_final.zip", run_dir / "tiny_final.zip")
    assert meta["best"] == metadata(reference_run)["best"]


def test_sigkill_at_random_points_and_during_saves_loses_nothing_but_recent_work(tiny_yaml, tmp_path):
    rng = random.Random(7)
    config = tiny_yaml(checkpoints={"checkpoint_freq": 20, "eval_freq": 100})
    run_dir = tmp_path / "chaos"
    ckpt = run_dir / "checkpoints"
    resumed_from = []
    for attempt in range(4):
        before = CheckpointManager(run_dir, "tiny").latest_valid() if ckpt.is_dir() else None
        sessions = len(metadata(run_dir)["sessions"]) if ckpt.is_dir() else 0
        proc = start_cli(["--config", str(config), "--run-dir", str(run_dir)])
        if attempt % 2 == 0:  # during a save: as soon as a temporary file appears
            mid_save = lambda: ckpt.is_dir() and any(p.name.endswith(".tmp") for p in ckpt.iterdir())  # noqa: E731
            assert wait_for(mid_save, proc), "the run ended before a save could be interrupted"
        else:  # in training, 1 to 3 checkpoints past where it resumed: never after the run's end,
            # however fast the machine (a fixed sleep let a fast one finish all 600 steps first)
            target = (before.step if before else 0) + 20 * rng.randint(1, 3)
            manager = CheckpointManager(run_dir, "tiny")
            assert wait_for(lambda: manager.manifests() and manager.manifests()[0][0] >= target, proc), (  # noqa: B023
                "the run ended before it could be killed"
            )
            time.sleep(rng.uniform(0.0, 0.02))  # a little way into the next steps
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if ckpt.is_dir() and len(metadata(run_dir)["sessions"]) > sessions:  # it got as far as resuming
            resumed_from.append(
                (before.step if before else 0, metadata(run_dir)["sessions"][-1]["from_step"])
            )
    assert resumed_from and all(expected == actual for expected, actual in resumed_from)
    result = train(tiny_config(checkpoints={"checkpoint_freq": 20, "eval_freq": 100}), run_dir, **QUIET)
    assert result.status == "completed" and result.timesteps == 600
    assert metadata(run_dir)["timesteps"]["done"] == 600
    assert load_model(run_dir, "best").num_timesteps > 0
    assert not list(ckpt.glob(".*.tmp"))
    assert len(list(ckpt.glob("*.manifest.json"))) == 2


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "corrupt"
    shutil.copytree(reference_run, run_dir)
    model = run_dir / "checkpoints" / "tiny_checkpoint_600_steps.zip"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    manager = CheckpointManager(run_dir, "tiny")
    with pytest.warns(UserWarning, match="step 600 is not usable"):
        latest = manager.latest_valid()
    assert latest.step == 500
    buffer = run_dir / "checkpoints" / "tiny_checkpoint_500_steps_replay_buffer.pkl"
    data = bytearray(buffer.read_bytes())
    data[100] ^= 0xFF  # one flipped bit
    buffer.write_bytes(bytes(data))
    assert not list((run_dir / "checkpoints").glob("tiny_checkpoint_600_steps*"))  # unusable: deleted
    with pytest.warns(UserWarning, match="step 500 is not usable"):
        assert manager.latest_valid() is None
    assert not list((run_dir / "checkpoints").glob("*.manifest.json"))


def test_wall_time_budget_stops_cleanly_and_the_run_resumes(reference_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "budget"
    config = tiny_config(total_timesteps=5_000)
    # The budget's clock advances 1 ms each time it is read (once per rollout): the budget runs out
    # after the same number of rollouts however fast the machine is.
    ticks = itertools.count()
    clock = types.SimpleNamespace(monotonic=lambda: next(ticks) / 1000, perf_counter=time.perf_counter)
    monkeypatch.setattr(callbacks, "time", clock)
    result = train(config, run_dir, max_wall_time=2.0, **QUIET)
    assert result.status == "interrupted" and result.exit_code == EXIT_INTERRUPTED
    assert "wall-time budget" in result.reason
    meta = metadata(run_dir)
    assert meta["status"] == "interrupted"
    latest = CheckpointManager(run_dir, "tiny").latest_valid()
    assert latest is not None and latest.step == result.timesteps
    again = train(config, run_dir, **QUIET)
    assert again.status == "completed" and again.timesteps == 5_000


def test_sigterm_saves_and_exits_interrupted(tiny_yaml, tmp_path):
    run_dir = tmp_path / "term"
    proc = start_cli(["--config", str(tiny_yaml(total_timesteps=100_000)), "--run-dir", str(run_dir)])
    wait_for((run_dir / "checkpoints" / "tiny_checkpoint_100_steps.manifest.json").exists, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, output
    meta = metadata(run_dir)
    assert meta["status"] == "interrupted" and "SIGTERM" in meta["stop_reason"]
    assert CheckpointManager(run_dir, "tiny").latest_valid().step == meta["timesteps"]["done"]


def test_best_score_survives_a_resume_and_is_never_overwritten_by_a_worse_model(tmp_path):
    run_dir = tmp_path / "best"
    config = tiny_config(total_timesteps=3_000)
    first = train(config, run_dir, on_evaluation=stop_at(1_000), **QUIET)
    assert first.status == "interrupted"
    manager = CheckpointManager(run_dir, "tiny")
    # Pretend a better model was saved after the last checkpoint, then the process died.
    record = json.loads((run_dir / "best_model" / "best_model.json").read_text())
    record["mean_reward"] = 1e9
    (run_dir / "best_model" / "best_model.json").write_text(json.dumps(record))
    before = (run_dir / "best_model" / "best_model.zip").read_bytes()
    assert manager.read_best()["mean_reward"] == 1e9
    train(config, run_dir, **QUIET)
    assert (run_dir / "best_model" / "best_model.zip").read_bytes() == before
    assert metadata(run_dir)["best"]["mean_reward"] == 1e9


def test_injected_nan_stops_as_diverged_and_resume_is_refused(tmp_path, monkeypatch):
    run_dir = tmp_path / "nan"
    original = MaskableDQN.train

    def poisoned(self, gradient_steps, batch_size=100):
        if self.num_timesteps >= 250:
            with th.no_grad():
                next(self.q_net.parameters()).fill_(float("nan"))
        return original(self, gradient_steps, batch_size)

    monkeypatch.setattr(MaskableDQN, "train", poisoned)
    result = train(tiny_config(), run_dir, **QUIET)
    assert result.status == "diverged" and result.exit_code == EXIT_DIVERGED
    assert "non-finite" in result.reason
    # The diverged weights never reached a checkpoint.
    latest = CheckpointManager(run_dir, "tiny").latest_valid()
    assert latest.step <= 250
    assert all(th.isfinite(v).all() for v in weights(latest.model).values())
    monkeypatch.setattr(MaskableDQN, "train", original)
    with pytest.raises(UserError, match="Lower the learning rate"):
        train(tiny_config(), run_dir, **QUIET)
    assert train(tiny_config(), run_dir, force_resume=True, **QUIET).status == "completed"


def test_disk_budget_refuses_a_save_loudly(tmp_path):
    run_dir = tmp_path / "disk"
    result = train(tiny_config(), run_dir, disk_budget=200_000, **QUIET)
    assert result.exit_code == EXIT_DISK_BUDGET and result.status == "interrupted"
    assert "disk budget" in result.reason and "--disk-budget" in result.reason
    total = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file() and "tensorboard" not in p.parts)
    assert total <= 200_000


def test_resume_refuses_a_different_configuration(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "other"
    shutil.copytree(reference_run, run_dir)
    with pytest.raises(UserError, match="training.dqn differs"):
        train(tiny_config(dqn={"learning_rate": 0.5}), run_dir, **QUIET)
    assert train(tiny_config(), run_dir, **QUIET).status == "completed"  # already done: nothing to do


def test_train_cli_rejects_bad_input_with_one_line_and_writes_nothing(tmp_path, tiny_yaml, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  dqn:\n    gamma: 1.5\n")
    run_dir = tmp_path / "never"
    assert main(["train", "--config", str(bad), "--run-dir", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rl-lib: error: {bad}: training.dqn.gamma: 1.5 is above the maximum 1.0"
    )
    assert (
        main(["train", "--config", str(tiny_yaml()), "--run-dir", str(run_dir), "--disk-budget", "lots"]) == 2
    )
    assert "--disk-budget" in capsys.readouterr().err
    assert not run_dir.exists()


def test_tensorboard_curves_continue_in_the_same_folder_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    config = tiny_config(total_timesteps=3_000)
    assert train(config, run_dir, on_evaluation=stop_at(1_000), **QUIET).status == "interrupted"
    train(config, run_dir, **QUIET)
    folders = list((run_dir / "tensorboard").iterdir())
    assert [f.name for f in folders] == ["tiny_1"]
    steps = []
    for events in sorted(folders[0].glob("events.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "eval/mean_reward" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("eval/mean_reward")]
    assert sorted(set(steps)) == list(range(200, 3_001, 200))


def test_maskable_ppo_trains_checkpoints_and_loads_from_its_metadata(tmp_path):
    run_dir = tmp_path / "ppo"
    config = tiny_config(algo="maskable_ppo", name="ppo", total_timesteps=256,
                         ppo={"n_steps": 64, "batch_size": 32, "n_epochs": 1, "net_arch": [16]},
                         checkpoints={"checkpoint_freq": 64, "eval_freq": 128})  # fmt: skip
    result = train(config, run_dir, **QUIET)
    assert result.status == "completed"
    model = load_model(run_dir, "best")
    assert type(model).__name__ == "MaskablePPO"
    assert not list((run_dir / "checkpoints").glob("*_replay_buffer.pkl"))
    assert np.isfinite(metadata(run_dir, "ppo")["best"]["mean_reward"])


def test_seeds_train_in_parallel_workers_as_normal_resumable_run_dirs(tmp_path):
    from rl_lib.training import train_seeds

    config = tiny_config(total_timesteps=200)
    results = train_seeds(config, [3, 4], tmp_path, workers=2)
    assert [r.status for r in results] == ["completed", "completed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_seed3", "tiny_seed4"]
    assert metadata(tmp_path / "tiny_seed4")["seed"] == 4
    again = train_seeds(config, [3, 4], tmp_path, workers=1, **QUIET)  # completed: skipped
    assert [r.timesteps for r in again] == [200, 200]
    assert len(metadata(tmp_path / "tiny_seed3")["sessions"]) == 1  # not trained a second time
    with pytest.raises(UserError, match="distinct"):
        train_seeds(config, [1, 1], tmp_path)


def test_evaluate_cli_puts_runs_next_to_the_baselines(reference_run, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "eval"
    assert main(["evaluate", str(reference_run), "--days", "2", "--no-hindsight", "--out", str(out)]) == 0
    table = pd.read_csv(out / "test_best_per_episode.csv")
    # Agents are named by their run's training.name (an ablation compares several DQNs).
    assert set(table["policy"]) == {"tiny", "random", "nearest", "insertion", "batch_matching"}
    agent = table[table["policy"] == "tiny"]
    assert len(agent) == 2 and (agent["decision_ms"] > 0).all()
    assert np.allclose(table["reward_per_step"], table["reward"] / table["n_bookings"])
    assert "tiny" in capsys.readouterr().out


def test_a_manifest_that_lists_no_model_or_is_malformed_is_not_a_checkpoint(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "manifests"
    shutil.copytree(reference_run, run_dir)
    manager = CheckpointManager(run_dir, "tiny")
    manifest = run_dir / "checkpoints" / "tiny_checkpoint_600_steps.manifest.json"
    manifest.write_text(json.dumps({"files": {}}))
    assert "does not list" in manager.verify(manifest)
    manifest.write_text(json.dumps({"files": {"tiny_checkpoint_600_steps.zip": {"sha256": "x"}}}))
    assert "unreadable manifest" in manager.verify(manifest)
    with pytest.warns(UserWarning, match="step 600 is not usable"):
        assert manager.latest_valid().step == 500


def test_evaluation_refuses_unfinished_runs(tmp_path):
    from rl_lib.pipeline import evaluate_step

    runs = tmp_path / "runs"
    assert train(
        tiny_config(total_timesteps=5_000), runs / "tiny_seed0", on_evaluation=stop_at(1_000), **QUIET
    ).status == ("interrupted")
    with pytest.raises(UserError, match=r"runs not completed: tiny_seed0 \(interrupted\)"):
        evaluate_step(str(tmp_path), n_test_days=1, hindsight=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--quick", "--max-wall-time", "nan"], "--max-wall-time must be a positive, finite number"),
        (["report", "/nonexistent/results"], "aggregate.csv: missing"),
        (
            ["data", "sample", "--out", "/tmp/never.csv", "--seed", "-1"],
            "seed: expected a non-negative integer",
        ),
    ],
)
def test_more_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
