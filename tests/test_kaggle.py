"""Kaggle kernels: build and validation, the code data set and its install cell, resume from the input
across versions (emulated with papermill in a /kaggle-like folder), the disk budget, and push / status /
pull / run against a recording fake of the KaggleApi. Nothing here touches the network."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import types
import unicodedata
import zipfile
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from conftest import TINY_EXPERIMENT, tiny_config

from rl_lib.cli import main
from rl_lib.config import to_dict
from rl_lib.errors import UserError
from rl_lib.kaggle import code_dataset, remote, session
from rl_lib.kaggle import kernel as kernel_module
from rl_lib.kaggle.credentials import scan_for_secrets
from rl_lib.kaggle.kernel import build_kernel, slugify, validate_kernel_folder
from rl_lib.training import train
from rl_lib.training.checkpoints import KAGGLE_DISK_BUDGET, CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
PINS = code_dataset.pinned_packages()  # the local versions (the pyproject pins: see the test below)
SECRET_KEY, SECRET_TOKEN = "emulated-legacy-key-0123456789", "KGAT_emulated-token-abcdefghij"
QUIET = {"log": lambda *a: None}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No real credentials, no real ~/.kaggle, not on Kaggle (unless a test says so)."""
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key.startswith("RL_LIB_KAGGLE_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)


def wheelhouse(folder: Path, pins: dict[str, str] = PINS) -> Path:
    """Fake dependency wheels (never installed: the install cell skips when rl_lib is importable)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in pins.items():
        (folder / f"{code_dataset.normalise(name)}-{version}-py3-none-any.whl").write_bytes(
            b"not a real wheel"
        )
    return folder


def tiny_params(folder: Path, **extra) -> Path:
    """A parameter file for the tiny experiment: 1 seed, 4000 steps."""
    config = folder / "configs" / "tiny.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(to_dict(tiny_config(total_timesteps=4000))))
    params = {"configs": [str(config)], "seeds": [0], "results_dir": "results/emu", "overrides": {},
              "workers": 1, "device": "cpu", "n_test_days": 3, **extra}  # fmt: skip
    path = folder / "kaggle_tiny.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def checkpoint_files(step: int) -> list[str]:
    suffixes = (".zip", "_replay_buffer.pkl", "_state.pkl", ".manifest.json")
    return sorted(f"tiny_checkpoint_{step}_steps{s}" for s in suffixes)


def build(tmp_path: Path, name: str = "emu", **extra):
    downloader = code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh"))
    return build_kernel(name, tiny_params(tmp_path, **extra), owner="tester", kernels_dir=tmp_path / "kk",
                        downloader=downloader, **QUIET)  # fmt: skip


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    return build(tmp_path_factory.mktemp("built"))


# ----------------------------------------------------------------------------------------------- build
def test_the_fallback_slug_is_the_one_the_kaggle_cli_derives(monkeypatch):
    python_slugify = pytest.importorskip("slugify").slugify  # what kaggle's kernels_push compares the id with
    monkeypatch.setitem(sys.modules, "slugify", None)  # its import fails: the ASCII fallback runs
    normalised = []

    def normalize(form: str, text: str) -> str:
        normalised.append(text)
        return unicodedata.normalize(form, text)

    monkeypatch.setattr(kernel_module, "unicodedata", types.SimpleNamespace(normalize=normalize))
    titles = ("rl_lib thesis", "RL-lib: DQN (10 seeds)", "  Thèse  NEMT -- v2 ", "a_b.c d")
    for title in titles:
        assert slugify(title) == python_slugify(title)
    assert normalised == list(titles)  # every slug came from the fallback


def test_build_writes_the_kernel_folder_and_the_code_data_set(tmp_path):
    built = build(tmp_path)
    folder = tmp_path / "kk" / "emu"
    assert sorted(p.name for p in folder.iterdir()) == [
        "emu.ipynb",
        "kernel-metadata.json",
        "rl_lib_kernel.json",
    ]
    assert json.loads((folder / "kernel-metadata.json").read_text()) == {
        "id": "tester/rl-lib-emu", "title": "rl_lib emu", "code_file": "emu.ipynb", "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
        "enable_internet": False, "machine_shape": "NvidiaTeslaT4", "dataset_sources": ["tester/rl-lib-code"],
        "competition_sources": [], "kernel_sources": ["tester/rl-lib-emu"], "model_sources": [],
    }  # fmt: skip
    nb = nbformat.read(str(folder / "emu.ipynb"), as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].metadata.tags == ["rl-lib-install"] and "--no-index" in nb.cells[0].source
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert '"total_timesteps": 4000' in injected.source and "n_test_days" not in injected.source  # inlined
    assert all(c.get("outputs", []) == [] for c in nb.cells)  # prepared, not executed
    assert built.record["runs"] == [{"run": "tiny_seed0", "name": "tiny", "seed": 0, "target": 4000}]

    data = tmp_path / "kk" / "_rl_lib_code"
    marker = json.loads((data / "rl_lib_code.json").read_text())
    assert marker["packages"] == PINS and marker["package_hash"] == built.dataset.package_hash
    assert json.loads((data / "dataset-metadata.json").read_text()) == {
        "title": "rl_lib code and wheels", "id": "tester/rl-lib-code", "licenses": [{"name": "CC0-1.0"}],
    }  # fmt: skip
    # The rl_lib wheel holds exactly this checkout's package: its sources hash to the package hash.
    with zipfile.ZipFile(data / marker["rl_lib_wheel"]) as wheel:
        wheel.extractall(tmp_path / "unpacked")
    assert code_dataset.package_hash(tmp_path / "unpacked" / "rl_lib") == marker["package_hash"]
    assert code_dataset.package_hash(ROOT / "rl_lib") == marker["package_hash"]
    assert not (ROOT / "build").exists()  # the wheel is built from a copy

    again = build(tmp_path)  # unchanged code: the data set is not rebuilt
    assert not again.dataset.rebuilt and again.dataset.code_hash == built.dataset.code_hash


def test_the_kaggle_pins_are_the_pyproject_pins():
    tomllib = pytest.importorskip("tomllib")
    pins = dict(
        d.split("==") for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    local = code_dataset.pinned_packages()
    assert {k: v for k, v in local.items() if k in pins} == {k: pins[k] for k in local if k in pins}
    assert {"stable-baselines3", "sb3-contrib", "gymnasium", "optuna"} <= set(pins) & set(local)
    assert "torch" not in code_dataset.KAGGLE_PACKAGES  # Kaggle's CUDA torch is left alone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": "rl_l"}, "must be at least five characters"),
        ({"code_file": "missing.ipynb"}, "code_file 'missing.ipynb' not found"),
        ({"title": "another title"}, "resolves to the slug 'another-title', not 'rl-lib-emu'"),
        ({"id": "tester/rl-lib-emu/3"}, "cannot contain a version"),
        ({"id": "tester"}, "expected 'owner/slug'"),
        ({"language": "julia"}, "language must be one of"),
        ({"kernel_type": "app"}, "kernel_type must be one of"),
        ({"dataset_sources": ["rl-lib-code"]}, "dataset source 'rl-lib-code': expected 'owner/slug'"),
        ({"kernel_sources": ["tester/abc"]}, "the slug must be at least 5 characters"),
        ({"enable_internet": "false"}, "enable_internet must be set explicitly"),
    ],
)
def test_validation_mirrors_the_kaggle_cli(tmp_path, built_once, change, message):
    folder = tmp_path / "emu"
    shutil.copytree(built_once.folder, folder)
    validate_kernel_folder(folder)
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    (folder / "kernel-metadata.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(UserError, match=re.escape(message)):
        validate_kernel_folder(folder)


@pytest.mark.parametrize(
    ("extra", "argv", "message"),
    [
        ({"results_dir": "/abs/results"}, [], "parameter results_dir: expected a relative folder"),
        ({"seeds": "0, 1"}, [], "parameter seeds: expected a non-empty list"),
        ({"workers": "four"}, [], "parameter workers: expected a positive integer, got 'four'"),
        ({"max_wall_time": -5}, [], "parameter max_wall_time: expected a positive number of seconds, got -5"),
        ({"kaggle": {"gpu": True}}, [], "kaggle: unknown key(s) ['gpu']"),
        ({"overrides": {"training.nope": 1}}, [], "parameter overrides: training.nope: unknown key"),
        ({}, ["--owner", "Not A User"], "Kaggle owner 'Not A User'"),
        ({"kaggle": {"title": "RL!"}}, [], "must be at least five characters"),
    ],
)
def test_build_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, extra, argv, message):
    params = tiny_params(tmp_path, **extra)
    argv = ["kaggle", "build", "emu", "-f", str(params), "--kernels-dir", str(tmp_path / "kk"),
            "--wheelhouse", str(wheelhouse(tmp_path / "wh")), *(argv or ["--owner", "tester"])]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "kk" / "emu").exists()


def test_build_needs_an_owner_but_no_credentials(tmp_path, capsys):
    params = tiny_params(tmp_path)
    argv = ["kaggle", "build", "emu", "-f", str(params), "--kernels-dir", str(tmp_path / "kk"),
            "--wheelhouse", str(wheelhouse(tmp_path / "wh"))]  # fmt: skip
    assert main(argv) == 2 and "pass --owner" in capsys.readouterr().err
    kaggle_dir = Path(os.environ["HOME"]) / ".kaggle"
    kaggle_dir.mkdir()
    (kaggle_dir / "kaggle.json").write_text(json.dumps({"username": "fromjson", "key": SECRET_KEY}))
    assert main(argv) == 0  # the user name of the legacy credentials, read locally
    assert (
        json.loads((tmp_path / "kk" / "emu" / "kernel-metadata.json").read_text())["id"]
        == "fromjson/rl-lib-emu"
    )


def test_dependency_wheels_must_be_the_pinned_pure_python_ones(tmp_path):
    pins = dict(PINS)
    del pins["optuna"]
    with pytest.raises(UserError, match=re.escape(f"no wheel for optuna=={PINS['optuna']}")):
        downloader = code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh", pins))
        build_kernel("emu", tiny_params(tmp_path), owner="tester", kernels_dir=tmp_path / "kk",
                     downloader=downloader, **QUIET)  # fmt: skip
    (tmp_path / "wh" / f"optuna-{PINS['optuna']}-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"x")
    with pytest.raises(UserError, match="not a platform-independent wheel"):
        build_kernel("emu", tiny_params(tmp_path), owner="tester", kernels_dir=tmp_path / "kk",
                     downloader=code_dataset.wheelhouse_downloader(tmp_path / "wh"), **QUIET)  # fmt: skip
    assert not (tmp_path / "kk" / "_rl_lib_code").exists() and not (tmp_path / "kk" / "emu").exists()


def test_install_cell_skips_an_importable_rl_lib_and_otherwise_installs_offline_without_deps(
    tmp_path, monkeypatch, capsys
):
    built = build(tmp_path)
    source = nbformat.read(str(built.folder / "emu.ipynb"), as_version=4).cells[0].source
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append((command, kw)))
    exec(compile(source, "install-cell", "exec"), {})
    assert calls == [] and "is already importable: nothing to install" in capsys.readouterr().out

    mount = tmp_path / "input" / "datasets" / "tester" / "rl-lib-code"  # any layout: found by its marker
    shutil.copytree(built.dataset.folder, mount)
    monkeypatch.setenv("RL_LIB_KAGGLE_INPUT", str(tmp_path / "input"))
    other_install = source.replace(built.dataset.package_hash, "0" * 64)  # as on a fresh Kaggle image
    exec(compile(other_install, "install-cell", "exec"), {})
    wheels = sorted(str(w) for w in mount.glob("*.whl"))
    assert len(wheels) == len(PINS) + 1 and not any("torch" in w for w in wheels)
    assert calls == [([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall",
                       "--find-links", str(mount), *wheels], {"check": True})]  # fmt: skip
    monkeypatch.setenv("RL_LIB_KAGGLE_INPUT", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="no rl_lib code data set"):
        exec(compile(other_install, "install-cell", "exec"), {})


# --------------------------------------------------------------------------------------------- secrets
def plant_credentials(monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", SECRET_KEY)
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET_TOKEN)
    kaggle_dir = Path(os.environ["HOME"]) / ".kaggle"
    kaggle_dir.mkdir(exist_ok=True)
    (kaggle_dir / "kaggle.json").write_text(json.dumps({"username": "tester", "key": SECRET_KEY}))
    (kaggle_dir / "access_token").write_text(SECRET_TOKEN)


def assert_no_secret(folder: Path) -> None:
    scan_for_secrets(folder, {SECRET_KEY, SECRET_TOKEN})
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_KEY.encode() not in data and SECRET_TOKEN.encode() not in data, path


def test_no_credential_lands_in_a_kernel_folder_or_the_code_data_set(tmp_path, monkeypatch):
    plant_credentials(monkeypatch)
    built = build(tmp_path)
    for folder in (built.folder, built.dataset.folder):
        assert_no_secret(folder)
        assert not {"kaggle.json", "access_token"} & {p.name for p in folder.rglob("*")}
    # The guard itself: a planted credential file, or a token inside any file (wheels included), is refused.
    (built.folder / "kaggle.json").write_text("{}")
    with pytest.raises(UserError, match="credential file must never be uploaded"):
        scan_for_secrets(built.folder)
    (built.folder / "kaggle.json").unlink()
    with zipfile.ZipFile(built.folder / "leak.whl", "w", compression=zipfile.ZIP_DEFLATED) as leak:
        leak.writestr("pkg/config.py", f"TOKEN = '{SECRET_TOKEN}'")
    with pytest.raises(UserError, match=r"leak\.whl!pkg/config\.py contains a Kaggle credential"):
        scan_for_secrets(built.folder)


# ------------------------------------------------------------------------------------ resume on Kaggle
def on_kaggle(monkeypatch, root: Path, name: str) -> tuple[Path, Path]:
    inputs, working = root / name / "input", root / name / "working"
    inputs.mkdir(parents=True)
    working.mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("RL_LIB_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("RL_LIB_KAGGLE_WORKING", str(working))
    return inputs, working


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny run, completed at 300 steps: checkpoints at 200 and 300, a best model, the final model."""
    run_dir = tmp_path_factory.mktemp("tiny") / "tiny_seed0"
    assert train(tiny_config(total_timesteps=300), run_dir, **QUIET).status == "completed"
    return run_dir


def test_the_furthest_verified_copy_in_the_input_is_brought_into_the_working_dir(
    tmp_path, tiny_run, monkeypatch
):
    inputs, working = on_kaggle(monkeypatch, tmp_path, "v2")
    good = inputs / "some-kernel" / "results" / "emu" / "runs" / "tiny_seed0"  # one mount layout
    shutil.copytree(tiny_run, good)
    (good / "checkpoints" / "tiny_checkpoint_300_steps_state.pkl").write_bytes(b"torn")  # newest is broken
    further = inputs / "notebooks" / "tester" / "old" / "runs" / "tiny_seed0"  # another layout
    shutil.copytree(tiny_run, further)
    for path in (further / "checkpoints").glob("tiny_checkpoint_300_*"):
        path.unlink()  # this copy only reaches step 200
    decoy = inputs / "elsewhere" / "tiny_seed0"
    decoy.mkdir(parents=True)
    (decoy / "tiny_training_metadata.json").write_text(json.dumps({"name": "tiny", "seed": 1}))
    runs_dir = working / "results" / "emu" / "runs"
    config = tiny_config(total_timesteps=300)
    brought = session.bring_run_from_input(runs_dir, "tiny", 0, config, **QUIET)
    # good's newest (300) is torn, so both copies reach 200: a broken checkpoint is never brought
    assert brought.step == 200
    target = runs_dir / "tiny_seed0"
    assert sorted(p.name for p in (target / "checkpoints").iterdir()) == checkpoint_files(200)
    assert CheckpointManager(target, "tiny").latest_valid().step == 200
    assert (target / "best_model" / "best_model.zip").is_file() and (target / "tiny_final.zip").is_file()
    assert session.bring_run_from_input(runs_dir, "tiny", 0, config, **QUIET) is None  # here, as far along
    assert not any(p.name.startswith(".") for p in runs_dir.iterdir())  # no staging left behind


def test_only_copies_of_this_runs_configuration_are_brought(tmp_path, tiny_run, monkeypatch):
    inputs, working = on_kaggle(monkeypatch, tmp_path, "v2")
    ours = inputs / "rl-lib-emu" / "results" / "emu" / "runs" / "tiny_seed0"
    shutil.copytree(tiny_run, ours)
    for path in (ours / "checkpoints").glob("tiny_checkpoint_300_*"):
        path.unlink()  # the previous version reached step 200
    theirs = inputs / "another-kernel" / "results" / "emu" / "runs" / "tiny_seed0"  # same run name
    shutil.copytree(tiny_run, theirs)  # further along (300), but another experiment
    metadata = theirs / "tiny_training_metadata.json"
    meta = json.loads(metadata.read_text())
    meta["config"]["reward"]["lateness_per_min"] = 0.5
    metadata.write_text(json.dumps(meta))
    config = tiny_config(total_timesteps=4000)  # a new target is the same experiment (as when resuming)

    notes = []
    assert session.find_run_copies(inputs, "tiny", 0, config, log=notes.append) == [ours]
    assert notes == [f"Kaggle: ignored {theirs}: a tiny_seed0 of another configuration "
                     "(reward.lateness_per_min differs)"]  # fmt: skip
    notes.clear()
    prepared = session.prepare_session("results/emu", [("tiny", 0)], configs={"tiny": config},
                                       log=notes.append)  # fmt: skip
    assert [(b.source, b.step) for b in prepared.brought] == [(ours, 200)]
    assert CheckpointManager(working / "results/emu/runs/tiny_seed0", "tiny").latest_valid().step == 200
    assert any(n.startswith(f"Kaggle: ignored {theirs}") for n in notes)
    with pytest.raises(UserError, match=r"parameter results_dir: 'results/\.\./\.\./up' climbs out"):
        session.prepare_session("results/../../up", [("tiny", 0)], configs={"tiny": config}, **QUIET)


def test_a_recorded_config_differs_where_check_same_experiment_refuses_it(tmp_path):
    from rl_lib.training import check_same_experiment, config_difference

    recorded, config = to_dict(tiny_config(total_timesteps=300)), tiny_config(total_timesteps=4000)
    assert config_difference(recorded, config) is None  # a new target: the same experiment
    with pytest.warns(UserWarning, match="total_timesteps changes from 300 to 4000"):
        check_same_experiment({"config": recorded}, config, tmp_path)
    scenario = recorded["scenario"]
    other = {**recorded, "scenario": {**scenario, "seed": scenario["seed"] + 1}}
    assert config_difference(other, config) == "scenario.seed"
    with pytest.raises(UserError, match=r"different configuration \(scenario\.seed differs\)"):
        check_same_experiment({"config": other}, config, tmp_path)
    assert config_difference(None, config) == "scenario.name"  # no config recorded


def test_on_kaggle_the_disk_budget_is_split_across_the_runs_and_a_save_beyond_it_is_refused(
    tmp_path, monkeypatch
):
    from rl_lib.pipeline import train_step

    _, working = on_kaggle(monkeypatch, tmp_path, "k")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(total_timesteps=100))))
    ppo_settings = {"n_steps": 50, "batch_size": 25, "net_arch": [16]}
    training = {**TINY_EXPERIMENT["training"], "name": "tinyppo", "algo": "maskable_ppo",
                "total_timesteps": 100, "ppo": ppo_settings}  # fmt: skip
    ppo = {**TINY_EXPERIMENT, "training": training}
    rows = train_step([str(config), ppo], [0, 1], "results/split", workers=1, device="cpu")
    assert list(rows["status"]) == ["completed"] * 4
    for run in ("tiny_seed0", "tiny_seed1", "tinyppo_seed0", "tinyppo_seed1"):
        meta = json.loads(next((working / "results/split/runs" / run).glob("*_metadata.json")).read_text())
        assert meta["disk_budget_bytes"] == KAGGLE_DISK_BUDGET // 4  # one 20 GB working dir for all four

    rows = train_step([str(config)], [0], "results/small", workers=1, device="cpu", disk_budget="20KB")
    assert list(rows["exit_code"]) == [5] and list(rows["status"]) == ["interrupted"]
    meta = json.loads((working / "results/small/runs/tiny_seed0/tiny_training_metadata.json").read_text())
    assert "over its disk budget" in meta["stop_reason"]
    assert not list((working / "results/small/runs/tiny_seed0").glob("checkpoints/*.zip"))

    from rl_lib.training import train_seeds  # used directly on Kaggle, the split still applies

    results = train_seeds(
        tiny_config(total_timesteps=100), [0, 1, 2], tmp_path / "direct", workers=1, **QUIET
    )
    assert {json.loads((r.run_dir / "tiny_training_metadata.json").read_text())["disk_budget_bytes"]
            for r in results} == {KAGGLE_DISK_BUDGET // 3}  # fmt: skip


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> dict:
    """The built kernel notebook run as two Kaggle versions, with papermill, in /kaggle-like folders.

    Version 1 has a 3-second wall-time budget and stops interrupted; version 2, the same notebook as
    built, finds version 1's output under its input (another mount layout) and finishes.
    """
    root = tmp_path_factory.mktemp("kaggle")
    mp = pytest.MonkeyPatch()
    try:
        for key in list(os.environ):
            if key.startswith("KAGGLE_"):
                mp.delenv(key)
        (root / "home").mkdir()
        mp.setenv("HOME", str(root / "home"))
        plant_credentials(mp)  # credentials on the machine must never reach the outputs
        built = build(root)
        notebook = built.folder / "emu.ipynb"
        # papermill replaces the injected cell: version 1 repeats the built parameters, with a tiny budget
        v1 = {**nbformat.read(str(notebook), as_version=4).metadata.papermill.parameters, "max_wall_time": 3}
        versions = {}
        for version, mounts, parameters in (
            (1, {"rl-lib-code": built.dataset.folder}, v1),
            (
                2,
                {"datasets/tester/rl-lib-code": built.dataset.folder, "notebooks/tester/rl-lib-emu": None},
                {},
            ),
        ):
            inputs, working = on_kaggle(mp, root, f"v{version}")
            for where, source in mounts.items():
                shutil.copytree(source or versions[version - 1]["working"], inputs / where)
            out = root / f"v{version}.ipynb"
            papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(working),
                                       progress_bar=False, kernel_name="python3")  # fmt: skip
            versions[version] = {"working": working, "notebook": out}
        return {"built": built, **versions}
    finally:
        mp.undo()


def emulated_metadata(emulated: dict, version: int) -> dict:
    path = emulated[version]["working"] / "results/emu/runs/tiny_seed0/tiny_training_metadata.json"
    return json.loads(path.read_text())


def test_emulated_versions_resume_from_the_latest_checkpoint_and_finish_exactly(emulated):
    first = emulated_metadata(emulated, 1)
    assert first["status"] == "interrupted" and "wall-time budget" in first["stop_reason"]
    done = first["timesteps"]["done"]
    assert 0 < done < 4000, "version 1 should stop part-way"
    assert (
        CheckpointManager(emulated[1]["working"] / "results/emu/runs/tiny_seed0", "tiny").latest_valid().step
        == done
    )
    out1 = emulated[1]["notebook"].read_text()
    assert "is already importable: nothing to install" in out1  # the test environment is left as it is

    second = emulated_metadata(emulated, 2)
    assert second["status"] == "completed" and second["timesteps"] == {"done": 4000, "target": 4000}
    assert second["resume_count"] == 1 and [s["from_step"] for s in second["sessions"]] == [0, done]
    run = emulated[2]["working"] / "results/emu/runs/tiny_seed0"
    assert (run / "best_model" / "best_model.zip").is_file() and (run / "tiny_final.zip").is_file()
    assert CheckpointManager(run, "tiny").latest_valid().step == 4000
    assert "Kaggle: brought tiny_seed0 from" in emulated[2]["notebook"].read_text()
    assert second["best"]["step"] >= first["best"]["step"]  # the best survived the version change


def test_emulated_outputs_and_logs_hold_no_credential(emulated):
    for version in (1, 2):
        assert_no_secret(emulated[version]["working"])
        notebook = emulated[version]["notebook"].read_text()
        assert SECRET_KEY not in notebook and SECRET_TOKEN not in notebook


# ------------------------------------------------------------------------------- the Kaggle API boundary
class NotFound(Exception):
    response = types.SimpleNamespace(status_code=404)


class FakeKaggleApi:
    """Records every call; serves kernel outputs from folders, one per version, like kernels_output.

    ``version`` is the latest version pushed before (0: never pushed, so kernels_status answers 404, as
    kagglesdk raises it); ``latest`` the states it reports (default ``states``), ``states`` those of
    each version pushed here."""

    def __init__(self, outputs=(), states=("running", "complete"), dataset_exists=False, version=0,
                 latest=None):  # fmt: skip
        self.calls, self.outputs, self.version = [], list(outputs), version
        self.states, self.dataset_exists, self.polls = list(states), dataset_exists, 0
        self.current = list(latest or states)

    def get_config_value(self, name):
        self.calls.append(("get_config_value", (name,), {}))
        return "tester"

    def dataset_status(self, dataset):
        self.calls.append(("dataset_status", (dataset,), {}))
        if not self.dataset_exists:
            raise NotFound("404 Client Error")
        return "ready"

    def dataset_create_new(self, folder, **kwargs):
        self.calls.append(("dataset_create_new", (folder,), kwargs))
        self.dataset_exists = True
        return types.SimpleNamespace(error=None, ref="tester/rl-lib-code", url="u")

    def dataset_create_version(self, folder, **kwargs):
        self.calls.append(("dataset_create_version", (folder,), kwargs))
        return types.SimpleNamespace(error=None, ref="tester/rl-lib-code", url="u")

    def kernels_push(self, folder):
        self.calls.append(("kernels_push", (folder,), {}))
        self.version += 1
        self.polls, self.current = 0, self.states
        invalid = ["tester/rl-lib-emu"] if self.version == 1 else []  # itself, before it exists
        return types.SimpleNamespace(error=None, version_number=self.version, url="https://kaggle/x",
                                     invalid_kernel_sources=invalid, invalid_dataset_sources=[])  # fmt: skip

    def kernels_status(self, kernel):
        self.calls.append(("kernels_status", (kernel,), {}))
        if self.version == 0:
            raise NotFound("404 Client Error: Not Found")
        state = self.current[min(self.polls, len(self.current) - 1)]
        self.polls += 1
        return types.SimpleNamespace(status=types.SimpleNamespace(name=state.upper()), failure_message="")

    def kernels_output(self, kernel, path, file_pattern=None, force=False, quiet=True):
        self.calls.append(("kernels_output", (kernel, path), {"file_pattern": file_pattern, "force": force,
                                                              "quiet": quiet}))  # fmt: skip
        source = Path(self.outputs[self.version - 1])
        for item in sorted(source.rglob("*")):
            rel = item.relative_to(source).as_posix()
            if item.is_file() and (file_pattern is None or re.search(file_pattern, rel)):
                (Path(path) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item, Path(path) / rel)
        (Path(path) / "rl-lib-emu.log").write_text(f"log of version {self.version}\n")
        return [], None

    def names(self):
        return [c[0] for c in self.calls]


def test_run_pushes_versions_until_completed_with_the_exact_api_calls(emulated, tmp_path, capsys):
    api = FakeKaggleApi(outputs=[emulated[1]["working"], emulated[2]["working"]])
    kernels = tmp_path / "kk"
    shutil.copytree(emulated["built"].folder.parent, kernels)
    params = emulated["built"].record["params_file"]
    options = {
        "kernels_dir": kernels,
        "downloader": code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh")),
    }
    code = remote.run(api, "emu", params, max_versions=4, interval_s=30, results_root=tmp_path / "results",
                      sleep=lambda s: None, **options)  # fmt: skip
    assert code == remote.EXIT_COMPLETED
    folder, data = str(kernels / "emu"), str(kernels / "_rl_lib_code")
    first_round = [
        ("get_config_value", ("username",), {}),
        ("kernels_status", ("tester/rl-lib-emu",), {}),  # never pushed (404): push
        ("dataset_status", ("tester/rl-lib-code",), {}),
        ("dataset_create_new", (data,), {"public": False, "quiet": True, "dir_mode": "skip"}),
        ("dataset_status", ("tester/rl-lib-code",), {}),
        ("kernels_push", (folder,), {}),
        ("kernels_status", ("tester/rl-lib-emu",), {}),
        ("kernels_status", ("tester/rl-lib-emu",), {}),
    ]
    assert api.calls[: len(first_round)] == first_round
    staging = str(tmp_path / "results" / ".emu.pull")
    outputs = [c for c in api.calls if c[0] == "kernels_output"]
    assert [c[1] for c in outputs[:2]] == [("tester/rl-lib-emu", staging)] * 2
    output1 = emulated[1]["working"]
    files1 = sorted(p.relative_to(output1).as_posix() for p in output1.rglob("*") if p.is_file())

    def matched(call: tuple) -> list[str]:
        return [f for f in files1 if re.search(call[2]["file_pattern"], f)]

    step = emulated_metadata(emulated, 1)["timesteps"]["done"]
    stem = f"results/emu/runs/tiny_seed0/checkpoints/tiny_checkpoint_{step}_steps"
    wanted = [f"{stem}{s}" for s in (".zip", "_replay_buffer.pkl", "_state.pkl")]  # what its manifest lists
    # The first pass takes no checkpoint but its manifests; the second exactly the newest one's files.
    assert all(f.endswith(".manifest.json") for f in matched(outputs[0]) if "/checkpoints/" in f)
    assert matched(outputs[1]) == sorted(wanted)
    # The second round: the code is unchanged, so the data set is neither created nor versioned again.
    second_round = ["get_config_value", "kernels_push", "kernels_status", "kernels_status", "kernels_output",
                    "kernels_output"]  # fmt: skip
    assert api.names()[len(first_round) + 2 :] == second_round
    out = capsys.readouterr().out
    assert f"version 1 (1 of at most 4): complete; {step:,} / 4,000 timesteps" in out
    assert "version 2 (2 of at most 4): complete; 4,000 / 4,000 timesteps (100.0 %); runs: 1 completed" in out

    results = tmp_path / "results" / "emu"  # pulled: only what is needed, as a results folder
    run = results / "runs" / "tiny_seed0"
    assert (results / "kaggle_logs" / "rl-lib-emu.log").read_text() == "log of version 2\n"
    assert (run / "best_model" / "best_model.zip").is_file() and (run / "tiny_final.zip").is_file()
    assert (run / "tensorboard").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoint_files(4000)
    assert CheckpointManager(run, "tiny").latest_valid().step == 4000
    assert not any(p.name.startswith(".") for p in (tmp_path / "results").iterdir())


def test_run_stops_when_a_version_makes_no_progress(emulated, tmp_path, capsys):
    api = FakeKaggleApi(outputs=[emulated[1]["working"]] * 3, dataset_exists=True)
    kernels = tmp_path / "kk"
    shutil.copytree(emulated["built"].folder.parent, kernels)
    code = remote.run(api, "emu", None, kernels_dir=kernels, results_root=tmp_path / "results",
                      sleep=lambda s: None, owner="tester",
                      downloader=code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh")))  # fmt: skip
    assert code == remote.EXIT_NO_PROGRESS and api.names().count("kernels_push") == 2
    assert ("dataset_create_version" in api.names()) and "dataset_create_new" not in api.names()
    assert "no progress in this version (tiny_seed0: wall-time budget" in capsys.readouterr().out


def run_again(api: FakeKaggleApi, emulated: dict, tmp_path: Path) -> int:
    """``rl-lib kaggle run emu`` (re)started against ``api``, with the emulated kernel's folders."""
    kernels = tmp_path / "kk"
    shutil.copytree(emulated["built"].folder.parent, kernels)
    return remote.run(api, "emu", None, kernels_dir=kernels, results_root=tmp_path / "results",
                      sleep=lambda s: None, owner="tester",
                      downloader=code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh")))  # fmt: skip


def test_run_restarted_while_a_version_runs_waits_for_it_instead_of_pushing(emulated, tmp_path, capsys):
    api = FakeKaggleApi(outputs=[emulated[1]["working"], emulated[2]["working"]], dataset_exists=True,
                        version=1, latest=("queued", "running", "complete"))  # fmt: skip
    assert run_again(api, emulated, tmp_path) == remote.EXIT_COMPLETED
    adopted = ["kernels_status"] * 3 + ["kernels_output"] * 2  # queued; waited for: running, complete
    pushed = ["dataset_status", "dataset_create_version", "dataset_status", "kernels_push"]
    assert api.names()[: len(adopted) + len(pushed)] == adopted + pushed
    assert api.names().count("kernels_push") == 1 and api.version == 2
    out = capsys.readouterr().out
    assert "tester/rl-lib-emu: the latest version is queued; waiting for it instead of pushing another" in out
    step = emulated_metadata(emulated, 1)["timesteps"]["done"]
    assert f"the latest version (pushed before this call): complete; {step:,} / 4,000 timesteps" in out
    assert "version 2 (1 of at most 8): complete; 4,000 / 4,000 timesteps" in out


def without_results(folder: Path) -> Path:
    folder.mkdir()
    return folder


def diverged(emulated: dict, folder: Path) -> Path:
    shutil.copytree(emulated[1]["working"], folder)
    path = folder / "results/emu/runs/tiny_seed0/tiny_training_metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "diverged"}))
    return folder


@pytest.mark.parametrize(
    ("latest", "output", "code", "pushes"),
    [
        (("complete",), lambda e, f: e[2]["working"], remote.EXIT_COMPLETED, 0),  # nothing left to do
        (("error",), diverged, remote.EXIT_DIVERGED, 0),  # the metadata decides, not the error
        (("error",), lambda e, f: e[1]["working"], remote.EXIT_COMPLETED, 1),  # interrupted: go on
        (("error",), lambda e, f: without_results(f), remote.EXIT_COMPLETED, 1),  # failed before training
        (("running", "error"), lambda e, f: e[1]["working"], remote.EXIT_KERNEL_ERROR, 0),  # waited for
    ],
)
def test_run_restarted_after_a_version_ended_pulls_it_and_pushes_only_if_runs_remain(
    emulated, tmp_path, latest, output, code, pushes
):
    api = FakeKaggleApi(outputs=[output(emulated, tmp_path / "output"), emulated[2]["working"]],
                        dataset_exists=True, version=1, latest=latest)  # fmt: skip
    assert run_again(api, emulated, tmp_path) == code
    assert api.names().count("kernels_push") == pushes
    assert api.names()[:3] == ["kernels_status", "kernels_status", "kernels_output"]  # pulled first


def test_run_pushes_nothing_when_kaggle_refuses_the_status(emulated, tmp_path):
    api = FakeKaggleApi(version=1)

    def refused(kernel):
        raise ValueError(
            "Cannot access kernel 'tester/rl-lib-emu' (Permission 'kernels.get' was denied).\n..."
        )

    api.kernels_status = refused
    with pytest.raises(UserError, match=r"^asking Kaggle for the status of tester/rl-lib-emu failed: "
                                        r"Cannot access kernel .*denied\)\.$"):  # fmt: skip
        run_again(api, emulated, tmp_path)
    assert api.names() == []  # neither the code data set nor the kernel


def test_status_polls_until_complete_or_error_within_the_timeout():
    sleeps = []
    api = FakeKaggleApi(states=("queued", "queued", "running", "error"), version=1)
    assert remote.wait(api, "tester/rl-lib-emu", 600, 60, sleep=sleeps.append, **QUIET) == ("error", "")
    assert sleeps == [60, 60, 60]
    api = FakeKaggleApi(states=("running",), version=1)
    assert remote.wait(api, "tester/rl-lib-emu", 100, 60, sleep=sleeps.append, **QUIET)[0] == "running"
    assert api.names() == ["kernels_status"] * 3 and sleeps[3:] == [60, 40]


def test_missing_credentials_exit_2_and_push_nothing(tmp_path, capsys):
    sys.modules.pop("kaggle", None)
    argv = ["kaggle", "push", "emu", "-f", str(tiny_params(tmp_path)), "--kernels-dir", str(tmp_path / "kk")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("rl-lib: error: no Kaggle credentials found: set KAGGLE_API_TOKEN") and "\n" not in err
    )
    assert "kaggle" not in sys.modules  # never imported (it would try to authenticate)
    assert not (tmp_path / "kk").exists()


def kaggle_api_signatures() -> dict[str, inspect.Signature]:
    """The installed KaggleApi's method signatures, read from its source with ast: importing the kaggle
    package would try to authenticate (and its import needs packages this environment may lack)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("kaggle")
    if spec is None:
        pytest.skip("the kaggle package is not installed (pip install -e '.[kaggle]')")
    source = Path(next(iter(spec.submodule_search_locations))) / "api" / "kaggle_api_extended.py"
    tree = ast.parse(source.read_text())
    api = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KaggleApi")
    signatures = {}
    for node in api.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            positional = args.posonlyargs + args.args
            defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
            params = [inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=inspect.Parameter.empty if d is None else None)
                      for a, d in zip(positional, defaults, strict=True)]  # fmt: skip
            params += [inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY,
                                         default=inspect.Parameter.empty if d is None else None)
                       for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]  # fmt: skip
            signatures[node.name] = inspect.Signature(params)
    return signatures


def test_the_calls_made_fit_the_installed_kaggle_api(emulated, tmp_path):
    signatures = kaggle_api_signatures()
    api = FakeKaggleApi(outputs=[emulated[1]["working"], emulated[1]["working"]])  # no code data set yet
    kernels = tmp_path / "kk"
    shutil.copytree(emulated["built"].folder.parent, kernels)
    downloader = code_dataset.wheelhouse_downloader(wheelhouse(tmp_path / "wh"))
    remote.push(api, "emu", None, kernels_dir=kernels, downloader=downloader, **QUIET)  # creates it
    remote.wait(api, "tester/rl-lib-emu", 60, 60, sleep=lambda s: None, **QUIET)
    remote.pull(api, "emu", kernels_dir=kernels, results_root=tmp_path / "results", **QUIET)
    (kernels / remote.UPLOADS).unlink()  # forget the upload: the next push makes a new version
    remote.push(api, "emu", None, kernels_dir=kernels, downloader=downloader, **QUIET)
    made = {"get_config_value", "dataset_status", "dataset_create_new", "dataset_create_version",
            "kernels_push", "kernels_status", "kernels_output"}  # fmt: skip
    assert {name for name, _, _ in api.calls} == made
    for name, args, kwargs in api.calls:
        signatures[name].bind(api, *args, **kwargs)  # raises TypeError on a call the real client refuses


def test_status_reads_the_real_kagglesdk_response():
    enums = pytest.importorskip("kagglesdk.kernels.types.kernels_enums")
    service = pytest.importorskip("kagglesdk.kernels.types.kernels_api_service")
    for status, expected in ((enums.KernelWorkerStatus.COMPLETE, "complete"),
                             (enums.KernelWorkerStatus.NEW_SCRIPT, "queued"),
                             (enums.KernelWorkerStatus.CANCEL_ACKNOWLEDGED, "error")):  # fmt: skip
        response = service.ApiGetKernelSessionStatusResponse()
        response.status = status
        api = types.SimpleNamespace(kernels_status=lambda kernel, r=response: r)
        assert remote.status(api, "tester/rl-lib-emu") == (expected, "")


def test_a_failed_code_data_set_upload_is_reported_at_once(tmp_path):
    api = FakeKaggleApi(dataset_exists=True)
    api.dataset_status = lambda ref: "failed"  # DatabundleVersionStatus.FAILED, as dataset_status says it
    dataset = types.SimpleNamespace(ref="tester/rl-lib-code", code_hash="c" * 64, folder=tmp_path)
    sleeps = []
    with pytest.raises(UserError, match="is 'failed' after 0 s"):
        remote.upload_code_dataset(api, dataset, tmp_path / "uploads.json", sleep=sleeps.append, **QUIET)
    assert sleeps == [] and not (tmp_path / "uploads.json").exists()


def test_credentials_are_looked_for_where_the_kaggle_cli_reads_them(tmp_path, monkeypatch):
    from rl_lib.kaggle import credentials

    home = Path(os.environ["HOME"])
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "home", "key": SECRET_KEY}))
    assert credentials.credential_sources() == [str(home / ".kaggle" / "kaggle.json")]
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))  # the CLI then reads only this folder
    assert credentials.credential_sources() == [] and credentials.configured_username() is None
    monkeypatch.setenv("KAGGLE_USERNAME", "envuser")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text(json.dumps({"key": SECRET_KEY}))  # merged per key
    assert credentials.credential_sources() == [str(tmp_path / "cfg" / "kaggle.json")]
    assert credentials.configured_username() == "envuser"
    assert SECRET_KEY in credentials.secret_values()


def test_a_torn_checkpoint_download_is_refused_and_the_previous_pull_kept(emulated, tmp_path):
    torn = tmp_path / "output"
    shutil.copytree(emulated[1]["working"], torn)
    step = emulated_metadata(emulated, 1)["timesteps"]["done"]
    (torn / f"results/emu/runs/tiny_seed0/checkpoints/tiny_checkpoint_{step}_steps_state.pkl").write_bytes(
        b"x"
    )
    kernels = tmp_path / "kk"
    shutil.copytree(emulated["built"].folder.parent, kernels)
    previous = tmp_path / "results" / "emu"
    previous.mkdir(parents=True)
    (previous / "kept").write_text("previous pull")
    api = FakeKaggleApi(outputs=[torn])
    api.version = 1
    with pytest.raises(UserError, match=r"tiny_checkpoint_\d+_steps\.manifest\.json is broken"):
        remote.pull(api, "emu", kernels_dir=kernels, results_root=tmp_path / "results", **QUIET)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["emu"]
    assert (previous / "kept").read_text() == "previous pull"


def test_a_swap_cut_off_between_its_renames_keeps_the_parked_folder(tmp_path):
    from rl_lib.kaggle import swap_into_place

    parked, target = tmp_path / ".run.old", tmp_path / "run"
    parked.mkdir()
    (parked / "checkpoint").write_text("only copy")  # an earlier swap was cut off: no target
    with pytest.raises(FileNotFoundError):
        swap_into_place(tmp_path / "missing-staging", target)  # and this one fails too
    assert (parked / "checkpoint").read_text() == "only copy"  # still parked, never deleted
    staging = tmp_path / ".run.incoming"
    staging.mkdir()
    (staging / "checkpoint").write_text("new")
    swap_into_place(staging, target)
    assert (target / "checkpoint").read_text() == "new" and not parked.exists() and not staging.exists()
