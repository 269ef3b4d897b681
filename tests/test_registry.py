"""The model registry and the service's hot swap: versions sealed by their manifest, an atomic
production pointer, promotion and rollback with their decision records, the ``rl-lib registry``
lines, and a registry promotion followed by a live uvicorn service under traffic."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import tiny_config
from live import uvicorn_thread, wait_for

from rl_lib.cli import main
from rl_lib.errors import UserError
from rl_lib.inference import export_onnx, onnx_metadata
from rl_lib.io import atomic_write_json, sha256_file
from rl_lib.serving.registry import (
    LINEAGE,
    MANIFEST,
    METRICS,
    MODEL_RECORD,
    MODEL_ZIP,
    ONNX_FP32,
    POINTER,
    ModelRegistry,
    is_registry,
)
from rl_lib.training import train

REPO = Path(__file__).parents[1]
TOKEN = "test-token-0123456789abcdef"
needs_serving = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None, reason="the service needs the serving extra (.[serving])"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny DQN runs with different models: ``a`` exported to ONNX, ``b`` not."""
    root = tmp_path_factory.mktemp("registry-runs")
    assert train(tiny_config(), root / "a", log=lambda *a: None).status == "completed"
    export_onnx(root / "a")
    assert (
        train(tiny_config(seed=1, total_timesteps=200), root / "b", log=lambda *a: None).status == "completed"
    )
    return {"a": root / "a", "b": root / "b"}


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------- versions
def test_a_version_is_the_run_dirs_serving_subset_sealed_by_its_manifest(runs, registry, tmp_path):
    from rl_lib.serving.policy import ModelPolicy

    window = {"first_service_day": "2027-01-04", "last_service_day": "2027-01-10"}
    v1 = registry.register(runs["a"], data_window=window, metrics={"gate": {"passed": True}})
    v2 = registry.register(runs["b"], parent=v1)
    assert (v1, v2) == ("v0001", "v0002") and registry.versions() == [v1, v2]
    folder = registry.version_dir(v1)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == sorted([LINEAGE, MANIFEST, METRICS, MODEL_RECORD, MODEL_ZIP, ONNX_FP32,
                            "tiny_training_metadata.json"])  # fmt: skip
    manifest = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(manifest) == set(files) - {MANIFEST}
    for name, entry in manifest.items():
        assert entry == {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    assert (folder / ONNX_FP32).read_bytes() == (runs["a"] / ONNX_FP32).read_bytes()  # copied, not redone
    lineage = json.loads((folder / LINEAGE).read_text())
    assert lineage["parent"] is None and lineage["data_window"] == window
    assert lineage["source_run_dir"] == str(runs["a"].resolve())
    assert lineage["model_sha256"] == sha256_file(runs["a"] / MODEL_ZIP) and lineage["created"]
    assert "code_commit" in lineage and json.loads((folder / METRICS).read_text()) == {
        "gate": {"passed": True}
    }
    assert registry.verify(v1) is None and registry.verify(v2) is None
    # The run without an ONNX graph gets one, exported from its own zip.
    exported = registry.version_dir(v2) / ONNX_FP32
    assert onnx_metadata(exported)["source_sha256"] == sha256_file(registry.version_dir(v2) / MODEL_ZIP)
    assert not (runs["b"] / ONNX_FP32).exists()  # the source run is left as it was
    stale = tmp_path / "stale"  # b's model beside a's graph: the graph is exported again
    shutil.copytree(runs["b"], stale)
    shutil.copytree(runs["a"] / "inference", stale / "inference")
    v3 = registry.register(stale)
    assert onnx_metadata(registry.version_dir(v3) / ONNX_FP32)["source_sha256"] == sha256_file(
        stale / MODEL_ZIP
    )
    assert json.loads((registry.version_dir(v2) / LINEAGE).read_text())["parent"] == v1
    for version in (v1, v2):  # the service's loader reads a version folder as it reads a run dir
        policy = ModelPolicy.load(registry.version_dir(version), registry_version=version)
        assert policy.ready and policy.backend == "onnx", policy.load_error
        assert policy.version.startswith(f"{version}:tiny-seed")
    rows = registry.list()
    assert [(r["version"], r["production"], r["problem"], r["parent"]) for r in rows] == [
        (v1, False, None, None),
        (v2, False, None, v1),
        (v3, False, None, None),
    ]
    assert is_registry(registry.root) and not is_registry(runs["a"])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda f: flip_byte(f / MODEL_ZIP), "best_model/best_model.zip does not match its sha256"),
        (lambda f: flip_byte(f / METRICS), "metrics.json does not match its sha256"),
        (
            lambda f: (f / ONNX_FP32).write_bytes((f / ONNX_FP32).read_bytes()[:-1]),
            "bytes, the manifest says",
        ),
        (lambda f: (f / LINEAGE).unlink(), "lineage.json is missing"),
        (lambda f: (f / "best_model" / "notes.txt").write_text("x"), "not in the manifest"),
        (lambda f: (f / MANIFEST).write_text("{"), "unreadable manifest.json"),
    ],
    ids=["zip", "metrics", "onnx-truncated", "missing", "added", "manifest"],
)
def test_a_tampered_version_is_refused_and_nothing_is_written(runs, registry, tamper, reason):
    version = registry.register(runs["a"])
    tamper(registry.version_dir(version))
    assert reason in registry.verify(version)
    with pytest.raises(UserError, match="fails verification"):
        registry.promote(version, "should not happen")
    with pytest.raises(UserError, match="fails verification"):
        registry.register(runs["a"], parent=version)
    assert registry.production() is None and registry.decisions() == [] and registry.versions() == [version]
    assert registry.list()[0]["problem"] == registry.verify(version)


def test_register_refuses_what_it_cannot_vouch_for_and_leaves_nothing(runs, registry, tmp_path):
    corrupt = tmp_path / "corrupt-run"
    shutil.copytree(runs["a"], corrupt)
    flip_byte(corrupt / MODEL_ZIP)
    for source, message in ((corrupt, "does not match its record"), (tmp_path / "nowhere", "not a folder"),
                            (registry.root.parent, "training_metadata.json")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            registry.register(source)
    with pytest.raises(UserError, match="no such version"):
        registry.register(runs["a"], parent="v0007")
    assert not registry.root.exists()  # nothing written


CRASH_BEFORE_RENAME = """
import os, sys
import rl_lib.serving.registry as registry
registry.os.rename = lambda *args: os._exit(9)  # killed between building the folder and publishing it
registry.ModelRegistry(sys.argv[1]).register(sys.argv[2])
"""


def test_a_crash_before_the_rename_leaves_no_visible_version(runs, registry):
    crashed = subprocess.run([sys.executable, "-c", CRASH_BEFORE_RENAME, str(registry.root), str(runs["a"])],
                             cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert crashed.returncode == 9, crashed.stderr
    staging = list(registry.root.glob(".staging-*"))
    assert len(staging) == 1 and (staging[0] / MANIFEST).is_file()  # complete, but never published
    assert registry.versions() == [] and registry.list() == [] and registry.production() is None
    assert registry.register(runs["a"]) == "v0001"  # the next writer takes the number, and cleans up
    assert not staging[0].exists() and registry.verify("v0001") is None


def test_concurrent_registers_get_distinct_versions(runs, registry):
    got, errors = [], []

    def register():
        try:
            got.append(registry.register(runs["a"]))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(got) == ["v0001", "v0002", "v0003", "v0004"] == registry.versions()
    assert all(registry.verify(v) is None for v in got)


# ---------------------------------------------------------------------------- production pointer
def test_promotion_and_rollback_move_the_pointer_and_every_decision_is_recorded(runs, registry):
    with pytest.raises(UserError, match="no production version"):
        registry.rollback("nothing yet")
    v1, v2, v3 = (registry.register(runs["a"]) for _ in range(3))
    assert registry.production() is None and registry.production_dir() is None
    registry.promote(v1, "first")
    with pytest.raises(UserError, match="first production version"):
        registry.rollback("too far")
    registry.promote(v2, "better")
    record = registry.promote(v3, "better still")
    assert record["kind"] == "promote" and record["version"] == v3 and record["from"] == v2
    pointer = registry.pointer()
    assert (pointer["version"], pointer["previous"], pointer["history"]) == (v3, v2, [v1, v2])
    assert registry.production_dir() == registry.version_dir(v3)
    with pytest.raises(UserError, match="already in production"):
        registry.promote(v3, "again")
    assert registry.rollback("v3 misbehaves")["version"] == v2
    assert (registry.pointer()["version"], registry.pointer()["previous"]) == (v2, v1)
    assert registry.rollback("v2 too")["from"] == v2 and registry.production() == v1
    with pytest.raises(UserError, match="first production version"):
        registry.rollback("too far")
    gate = registry.record_decision("gate", v3, "reward CI below 0", passed=False, ci=[-2.0, 0.5])
    with pytest.raises(ValueError, match="decision kind"):
        registry.record_decision("whim", v3)

    decisions = registry.decisions()
    assert [(d["kind"], d["version"], d.get("from"), d["reason"]) for d in decisions] == [
        ("promote", v1, None, "first"),
        ("promote", v2, v1, "better"),
        ("promote", v3, v2, "better still"),
        ("rollback", v2, v3, "v3 misbehaves"),
        ("rollback", v1, v2, "v2 too"),
        ("gate", v3, None, "reward CI below 0"),
    ]
    assert [d["sequence"] for d in decisions] == [1, 2, 3, 4, 5, 6] and gate["ci"] == [-2.0, 0.5]
    names = sorted(p.name for p in (registry.root / "decisions").iterdir())
    assert len(names) == 6 and all(
        n.endswith(("-promote.json", "-rollback.json", "-gate.json")) for n in names
    )
    assert registry.pointer()["decision"] in names  # the pointer names the decision that moved it
    shown = registry.show(v2)
    assert shown["problem"] is None and not shown["production"] and len(shown["decisions"]) == 4
    assert shown["lineage"]["source_run_dir"] == str(runs["a"].resolve())


def test_the_pointer_is_never_half_written(runs, registry, monkeypatch):
    v1, v2 = registry.register(runs["a"]), registry.register(runs["a"])
    registry.promote(v1, "start")
    stop, seen, errors = threading.Event(), set(), []

    def read():
        while not stop.is_set():
            try:
                seen.add(json.loads((registry.root / POINTER).read_text())["version"])
            except Exception as exc:  # a torn read would land here
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            registry.promote(v2, "flip")
            registry.rollback("flop")
    finally:
        stop.set()
        reader.join()
    assert not errors and seen == {v1, v2}

    def killed(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", killed)  # the pointer's rename never happens
    with pytest.raises(OSError, match="disk gone"):
        registry.promote(v2, "doomed")
    monkeypatch.undo()
    assert registry.production() == v1 and not list(registry.root.glob(f".{POINTER}.*"))
    # The decision is written before the pointer moves: a record of a move that did not happen.
    assert registry.decisions()[-1]["reason"] == "doomed"


# ------------------------------------------------------------------------------------------- CLI
def run_cli(*argv: str, capsys) -> tuple[int, str, str]:
    """``rl-lib registry ...``: exit code, stdout, stderr."""
    code = main(["registry", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_registry_command_lines(runs, registry, capsys):
    at = ("--registry", str(registry.root))
    assert run_cli("list", *at, capsys=capsys) == (0, f"{registry.root}: no version registered yet "
                                                   "(rl-lib registry register RUN_DIR)\n", "")  # fmt: skip
    code, out, _ = run_cli("register", str(runs["a"]), *at, capsys=capsys)
    assert code == 0 and out == f"registered v0001 from {runs['a']}\n"
    code, out, _ = run_cli("register", str(runs["a"]), "--parent", "v0001", *at, capsys=capsys)
    assert code == 0 and out == f"registered v0002 from {runs['a']} (parent v0001)\n"
    assert run_cli("promote", "v0001", "--reason", "first", *at, capsys=capsys)[:2] == (
        0, "promoted v0001 (was none)\n")  # fmt: skip
    assert run_cli("promote", "v0002", *at, capsys=capsys)[:2] == (0, "promoted v0002 (was v0001)\n")
    assert run_cli("rollback", "--reason", "bad", *at, capsys=capsys)[:2] == (
        0, "rolled back to v0001 (was v0002)\n")  # fmt: skip
    flip_byte(registry.version_dir("v0002") / MODEL_ZIP)
    before = (registry.pointer(), len(registry.decisions()))
    for argv, message in ((("promote", "v0002"), "v0002 fails verification (best_model/best_model.zip "
                                                 "does not match its sha256): it is refused"),
                          (("promote", "v0009"), "v0009: no such version"),
                          (("show", "nonsense"), "nonsense: no such version"),
                          (("rollback",), "v0001 is the first production version"),
                          (("register", str(registry.root)), "expected one *_training")):  # fmt: skip
        code, out, err = run_cli(*argv, *at, capsys=capsys)
        assert code == 2 and out == "" and err.startswith("rl-lib: error: ") and err.count("\n") == 1, err
        assert message in err, err
    assert (registry.pointer(), len(registry.decisions())) == before  # nothing half-written
    code, out, _ = run_cli("list", *at, capsys=capsys)
    first, second = out.splitlines()
    assert first.startswith("v0001  production") and "tiny-seed0@" in first and "parent -" in first
    assert second.startswith("v0002  CORRUPT: best_model/best_model.zip does not match its sha256")
    code, out, _ = run_cli("show", "v0001", *at, capsys=capsys)
    shown = json.loads(out)
    assert code == 0 and shown["production"] and shown["problem"] is None and shown["metrics"] == {}


def test_an_empty_registry_rollback_is_one_line(tmp_path, capsys):
    code, out, err = run_cli("rollback", "--registry", str(tmp_path / "none"), capsys=capsys)
    assert code == 2 and err == f"rl-lib: error: {tmp_path / 'none'}: no production version, so nothing to " \
        "roll back\n"  # fmt: skip


# ------------------------------------------------------------------------------------- hot swap
def serve_registry(registry, tmp_path, monkeypatch, interval_s: float):
    from rl_lib.serving.server import ServeOptions, build_service

    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", TOKEN)
    options = ServeOptions(
        model=str(registry.root), state_dir=str(tmp_path / "state"), watch_interval_s=interval_s
    )
    return build_service(options)


@needs_serving
def test_a_registry_without_production_is_served_by_the_fallback_until_a_promotion(runs, registry, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    v1 = registry.register(runs["a"])
    service, _ = serve_registry(registry, tmp_path, monkeypatch, interval_s=3600)  # polled by hand here
    try:
        assert not service.model.ready and "no production version yet" in service.model.load_error
        assert service.watcher.check() is False
        registry.promote(v1, "first")
        assert service.watcher.check() is True and service.model.registry_version == v1
        assert service.watcher.check() is False and service.stats()["model_swaps"] == 1
        (registry.root / POINTER).write_text("{torn")  # by hand: the service keeps its model
        assert service.watcher.check() is False and service.watcher.check() is False
        stats = service.stats()
        assert (
            stats["model_load_failures"] == 1
            and "unreadable production pointer" in stats["model_update_error"]
        )
        assert service.model.registry_version == v1 and service.model.ready
    finally:
        service.close()


class Traffic:
    """Client threads playing test days against the service without pause, each day on a new service
    day (a replayed decision id would get its first answer back); every decision answer is kept."""

    def __init__(self, url: str, days, n_clients: int = 2) -> None:
        self.url, self.days, self.n_clients = url, days, n_clients
        self.answers: list[list[dict]] = [[] for _ in range(n_clients)]  # per client, in order
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._play, args=(i,), daemon=True) for i in range(n_clients)]

    def _play(self, client_index: int) -> None:
        import httpx

        from rl_lib.serving.simulator import play_day

        client = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})

        def post(path: str, body: dict) -> dict:
            if self.stop.is_set():
                raise _Stopped
            response = client.post(path, json=body)
            if response.status_code != 200:
                self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                raise _Stopped
            if path == "/v1/decisions":
                self.answers[client_index].append(response.json())
            return response.json()

        start, i = dt.date(2027, 1, 4) + dt.timedelta(days=1000 * client_index), 0
        try:
            while not self.stop.is_set():
                play_day(self.days[i % len(self.days)], post, (start + dt.timedelta(days=i)).isoformat())
                i += 1
        except _Stopped:
            pass
        except Exception as exc:  # a transport error fails the test
            self.failures.append(repr(exc))
        finally:
            client.close()

    def wait_for_more(self, n: int, what: str) -> None:
        """Until every client has ``n`` more answers than now (or one has failed)."""
        before = [len(a) for a in self.answers]

        def grown() -> bool:
            return all(len(a) >= b + n for a, b in zip(self.answers, before, strict=True))

        wait_for(lambda: self.failures or grown(), 60, what)

    def versions(self) -> list[list[str]]:
        return [[a["model_version"] for a in list(answers)] for answers in self.answers]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client did not stop"


class _Stopped(Exception):
    pass


@needs_serving
def test_a_promotion_is_swapped_in_under_traffic_and_a_corrupt_one_is_not(runs, registry, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    import httpx

    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.app import create_app

    v1, v2, v3 = registry.register(runs["a"]), registry.register(runs["b"]), registry.register(runs["a"])
    registry.promote(v1, "start")
    service, security = serve_registry(registry, tmp_path, monkeypatch, interval_s=0.05)
    days = SyntheticScenario(tiny_config().scenario).days("test", 2)
    try:
        first = service.model.version
        assert service.model.ready and first.startswith(f"{v1}:"), service.model.load_error
        with uvicorn_thread(create_app(service, security)) as url, Traffic(url, days) as traffic:
            traffic.wait_for_more(20, "traffic on v1")
            registry.promote(v2, "a better model")
            wait_for(lambda: service.model.registry_version == v2, 30, "the swap")
            second = service.model.version
            traffic.wait_for_more(20, "traffic on v2")

            # v3 rots on disk after its promotion was decided: the watcher verifies and refuses it.
            flip_byte(registry.version_dir(v3) / MODEL_ZIP)
            with pytest.raises(UserError, match="fails verification"):
                registry.promote(v3, "refused at the door")
            pointer = registry.pointer()
            atomic_write_json(registry.root / POINTER, {**pointer, "version": v3, "previous": v2,
                                                        "history": [*pointer["history"], v2]})  # fmt: skip
            wait_for(lambda: service.model_load_failures == 1, 30, "the failed update")
            traffic.wait_for_more(10, "traffic after the failed update")
            stats = httpx.get(f"{url}/v1/stats").json()
            ready = httpx.get(f"{url}/readyz").json()
            metrics = httpx.get(f"{url}/metrics").text
            registry.rollback("v3 is corrupt")  # back to the live v2: nothing to load
            wait_for(lambda: service.model_update_error is None, 30, "the rollback to be seen")
        assert not traffic.failures, traffic.failures
        assert first != second and second.startswith(f"{v2}:")
        for versions in traffic.versions():  # each client: v1's answers, then v2's only
            switch = versions.index(second)
            assert switch > 0 and set(versions[:switch]) == {first} and set(versions[switch:]) == {second}
        assert stats["model_registry_version"] == v2 and stats["model_version"] == second
        assert stats["model_swaps"] == 1 and stats["model_load_failures"] == 1
        assert (
            v3 in stats["model_update_error"] and "does not match its sha256" in stats["model_update_error"]
        )
        assert ready["decides_with"] == "model" and ready["model_update_error"] == stats["model_update_error"]
        assert "rl_lib_model_swaps_total 1.0" in metrics and "rl_lib_model_load_failures_total 1.0" in metrics
        assert f'rl_lib_model_loaded{{version="{second}"}} 1.0' in metrics
        assert service.model_swaps == 1 and service.model.version == second
    finally:
        service.close()
