"""The feedback loop's Celery app with real processes: a redis-server, and ``celery worker`` and
``celery beat`` started by the tests as in production (``python -m celery -A rl_lib.feedback.tasks``,
settings through the environment).

Through the worker: collect and retrain; a worker SIGKILLed mid-collect loses nothing and doubles
nothing once restarted (the task comes back after the visibility timeout); a pool process SIGKILLed
mid-retrain has its task delivered again, and the retrain resumes from its checkpoint; two retrains
at once on two workers, one skipped by the lock; beat sending collect on its compressed schedule, and
the loop's figures on the service's dashboard; finally the compressed-clock demo end to end. In
process: the settings, and the retrain's promotion rules (on the gate's word only, never twice).
Every wait has a timeout; every process is stopped in teardown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from live import wait_for

from rl_lib.errors import ConfigError

pytest.importorskip("celery")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian)")

TOKEN = "feedback-test-token-0123456789"
SERVICE_DAYS = ("2027-01-04", "2027-01-05", "2027-01-06")
WAIT_S = 120.0
QUICK = {  # every day closed and every outcome old: the collector's results do not depend on timing
    "horizon_min": 0.01,
    "consumer": "c1",
    "gate_log_days": 1,
    "gate_test_days": 4,
    "gate_resamples": 200,
    "retrain_budget_steps": 600,
    "collect_time_limit_s": 60,
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny trained DQN run: the first production model (checkpoints every 100 steps)."""
    from rl_lib.inference import export_onnx
    from rl_lib.training import train

    run_dir = tmp_path_factory.mktemp("feedback-parent") / "run"
    assert train(tiny_config(), run_dir, log=lambda *a: None).status == "completed"
    export_onnx(run_dir)  # registered as is, not exported again by each test's registry
    return run_dir


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    from rl_lib.serving.redis_server import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis"), port=0).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def production_log(parent, redis_url, tmp_path_factory) -> list[tuple[str, dict]]:
    """The stream entries of three production days played through the real service (its model the
    parent), as (stream, fields): each test writes them to a fresh Redis."""
    import redis
    from fastapi.testclient import TestClient

    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.app import create_app
    from rl_lib.serving.server import ServeOptions, build_service
    from rl_lib.serving.simulator import play_day

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    os.environ["RL_LIB_SERVICE_TOKEN"] = TOKEN
    try:
        options = ServeOptions(model=str(parent), state_dir=str(tmp_path_factory.mktemp("service")))
        service, security = build_service(options, redis_url)
    finally:
        del os.environ["RL_LIB_SERVICE_TOKEN"]
    http = TestClient(create_app(service, security))

    def post(path: str, body: dict) -> dict:
        response = http.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
        return response.json()

    scenario = SyntheticScenario(tiny_config().scenario)
    try:
        for i, service_day in enumerate(SERVICE_DAYS):
            play_day(scenario.make_day(3_000_000 + i), post, service_day)
    finally:
        service.close()
    time.sleep(60 * QUICK["horizon_min"] + 0.5)  # every record older than the horizon: every day closes
    return [(s, fields) for s in ("rl_lib:decisions", "rl_lib:outcomes") for _, fields in client.xrange(s)]


@dataclasses.dataclass
class Loop:
    """One test's loop: a fresh Redis holding the production log, a registry whose production is
    the parent (v0001), a store, and the Celery processes it starts (all stopped in teardown)."""

    root: Path
    redis_url: str
    client: object
    started: list = dataclasses.field(default_factory=list)

    def settings(self, **fields):
        """Write the settings (:data:`QUICK` and ``fields`` over the defaults); returns them and the file."""
        from rl_lib.feedback.settings import FeedbackSettings

        settings = FeedbackSettings(redis_url=self.redis_url, registry=str(self.root / "registry"),
                                    store=str(self.root / "store"), work_dir=str(self.root / "work"),
                                    **{**QUICK, **fields})  # fmt: skip
        path = self.root / "feedback.yaml"
        path.write_text(settings.to_yaml())
        return settings, path

    def worker(self, path: Path, name: str, concurrency: int = 1):
        from rl_lib.feedback import processes

        process = processes.start(processes.worker_args(name, concurrency), path, self.root / f"{name}.log")
        self.started.append(process)
        return process

    def beat(self, path: Path):
        from rl_lib.feedback import processes

        process = processes.start(processes.BEAT_ARGS, path, self.root / "beat.log")
        self.started.append(process)
        return process

    def app(self, settings):
        from rl_lib.feedback.tasks import make_app

        return make_app(settings)

    def result(self, app, task_id: str, timeout_s: float = WAIT_S) -> dict:
        """The task's result, or the workers' logs in the failure."""
        try:
            return app.AsyncResult(task_id).get(timeout=timeout_s)
        except Exception as exc:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))
            raise AssertionError(f"task {task_id}: {exc!r}\n{logs}") from exc

    def store(self):
        from rl_lib.feedback.store import ExperienceStore

        return ExperienceStore(self.root / "store")


@pytest.fixture
def loop(parent, redis_url, production_log, tmp_path):
    import redis

    from rl_lib.feedback import processes
    from rl_lib.serving.registry import ModelRegistry

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    for stream, fields in production_log:
        client.xadd(stream, fields)
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(registry.register(parent))
    state = Loop(tmp_path, redis_url, client)
    yield state
    for process in reversed(state.started):
        processes.stop(process, timeout_s=15)


def reference(loop: Loop, settings) -> list[str]:
    """The decision ids an undisturbed pass makes of the log (another group, another store)."""
    from rl_lib.feedback.collect import collect
    from rl_lib.feedback.store import ExperienceStore

    store = ExperienceStore(loop.root / "reference")
    collect(loop.client, store, group="reference", consumer="ref", horizon_min=settings.horizon_min)
    ids = store.read()["decision_id"].tolist()
    assert len(ids) > 50 and set(store.days()) == set(SERVICE_DAYS)
    return sorted(ids)


def pool_processes(worker) -> list[int]:
    """The pool processes of a prefork worker (its children)."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def pending(client, stream: str, group: str = "feedback") -> int:
    return client.xpending(f"rl_lib:{stream}", group)["pending"]


# ------------------------------------------------------------------------------------------ settings
def test_settings_come_from_yaml_and_the_environment_and_are_validated(tmp_path):
    from rl_lib.feedback.settings import FeedbackSettings, load_settings
    from rl_lib.feedback.tasks import celery_config

    path = tmp_path / "f.yaml"
    path.write_text("collect_period_s: 60\nretrain_overrides: {training.dqn.learning_starts: 10}\n")
    env = {"RL_LIB_FEEDBACK_SETTINGS": str(path), "RL_LIB_FEEDBACK_WINDOW_DAYS": "3",
           "RL_LIB_FEEDBACK_CONFIG": "null", "RL_LIB_REDIS_PASSWORD": "s3cr:t@"}  # fmt: skip
    settings = load_settings(environ=env)
    assert (settings.collect_period_s, settings.window_days, settings.config) == (60.0, 3, None)
    assert settings.retrain_overrides == {"training.dqn.learning_starts": 10}
    assert settings.claim_idle_ms == 120_000  # twice the collect period
    assert "s3cr" not in settings.to_yaml() and "s3cr" not in settings.redis_url
    assert settings.celery_url(env) == "redis://:s3cr%3At%40@127.0.0.1:6379/0"
    for bad, message in (
        ({"RL_LIB_FEEDBACK_REDIS_URL": "redis://:pw@host:6379/0"}, "RL_LIB_REDIS_PASSWORD"),
        ({"RL_LIB_FEEDBACK_VISIBILITY_TIMEOUT_S": "100"}, "must exceed the longest task time limit"),
        ({"RL_LIB_FEEDBACK_RETRAIN_WALL_S": "9000"}, "must be below retrain_time_limit_s"),
        ({"RL_LIB_FEEDBACK_COLLECT_BATCH": "0"}, "collect_batch: 0 is below the minimum 1"),
        ({"RL_LIB_FEEDBACK_COLECT_BATCH": "1"}, None),  # not a field: not read
    ):
        if message is None:
            assert load_settings(environ=bad) == FeedbackSettings()
            continue
        with pytest.raises(ConfigError, match=message):
            load_settings(environ=bad)
    with pytest.raises(ConfigError, match="unknown key"):
        path.write_text("colect_period_s: 60\n")
        load_settings(path)
    conf = celery_config(FeedbackSettings(collect_period_s=5, retrain_period_s=50))
    assert conf["task_serializer"] == conf["result_serializer"] == "json" and conf["accept_content"] == [
        "json"
    ]
    assert (
        conf["task_acks_late"]
        and conf["task_reject_on_worker_lost"]
        and conf["worker_prefetch_multiplier"] == 1
    )
    assert conf["broker_transport_options"]["visibility_timeout"] == 10_800.0
    assert {e["schedule"].total_seconds() for e in conf["beat_schedule"].values()} == {5.0, 50.0}


# ------------------------------------------------------------------------------------------ collect
def test_a_worker_killed_mid_collect_loses_nothing_and_doubles_nothing(loop):
    # A few entries a page and a pause between pages: the pass takes seconds, deterministically.
    limits = {"collect_time_limit_s": 15, "retrain_wall_s": 5, "retrain_time_limit_s": 10}
    settings, path = loop.settings(collect_batch=4, collect_pause_s=0.15, visibility_timeout_s=20, **limits)
    expected = reference(loop, settings)
    store, app = loop.store(), loop.app(settings)
    first = loop.worker(path, "w1")
    task = app.send_task("rl_lib.feedback.collect")
    wait_for(lambda: store.count() > 0, WAIT_S, "the first transitions")
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, mid-pass
    first.wait(timeout=10)
    written = store.count()
    assert 0 < written < len(expected), "the pass ended before the kill: nothing was tested"
    assert loop.client.hlen("unacked") == 1  # the task is not acknowledged: it will come back
    assert pending(loop.client, "decisions") > 0

    loop.worker(path, "w2")  # the same host: the same consumer, which reads its own pending entries
    result = loop.result(app, task.id)
    assert result["status"] == "collected" and result["written"] == len(expected) - written
    frame = store.read()
    assert sorted(frame["decision_id"]) == expected  # nothing lost, nothing doubled
    assert pending(loop.client, "decisions") == pending(loop.client, "outcomes") == 0
    assert loop.client.xlen("rl_lib:dead_letter") == 0 and loop.client.hlen("unacked") == 0
    counted = sum(int(n) for n in loop.client.hvals(settings.key("collected")))
    assert counted == result["written"]  # the killed pass never counted: the store is the truth


# ------------------------------------------------------------------------------------------ retrain
def test_a_retrain_killed_mid_run_resumes_from_its_checkpoint_and_registers_once(loop):
    from rl_lib.serving.registry import ModelRegistry
    from rl_lib.training.checkpoints import CheckpointManager
    from rl_lib.training.run_record import read_metadata

    budget = 1200
    settings, path = loop.settings(retrain_budget_steps=budget, gate_min_days=1000, retrain_wall_s=100,
                                   retrain_time_limit_s=150, visibility_timeout_s=180)  # fmt: skip
    app, registry = loop.app(settings), ModelRegistry(settings.registry)
    worker = loop.worker(path, "w1")
    collected = loop.result(app, app.send_task("rl_lib.feedback.collect").id)
    assert collected["written"] > 50 and loop.store().days() == list(SERVICE_DAYS)

    task = app.send_task("rl_lib.feedback.retrain")
    work = Path(settings.work_dir)

    def checkpointed():
        runs = list(work.glob("*/run"))
        return runs and CheckpointManager(runs[0], "tiny").manifests() and runs[0]

    run_dir = wait_for(checkpointed, WAIT_S, "the retrain's first checkpoint")
    (child,) = pool_processes(worker)
    os.kill(child, signal.SIGKILL)  # the process running the retrain; the worker requeues its task
    killed_at = CheckpointManager(run_dir, "tiny").manifests()[0][0]
    assert killed_at < budget
    assert run_dir.parent.name.startswith(
        f"v0001-{SERVICE_DAYS[0]}_{SERVICE_DAYS[1]}-"
    )  # the last day held out

    result = loop.result(app, task.id)
    assert result["status"] == "kept production", result["message"]
    meta = read_metadata(run_dir)
    assert meta["resume_count"] >= 1 and meta["status"] == "completed"
    assert (
        result["steps"] == budget == meta["timesteps"]["done"]
        and result["resume_count"] == meta["resume_count"]
    )
    assert meta["sessions"][0]["from_step"] == 0 and meta["sessions"][-1]["from_step"] >= 100  # resumed
    assert (result["train_days"], result["held_out_days"]) == (list(SERVICE_DAYS[:2]), [SERVICE_DAYS[2]])
    assert result["version"] == "v0002" and registry.production() == "v0001"
    shown = registry.show("v0002")
    assert shown["lineage"]["parent"] == "v0001" and shown["lineage"]["source_run_dir"] == str(
        run_dir.resolve()
    )
    assert shown["lineage"]["data_window"]["held_out_days"] == [SERVICE_DAYS[2]]
    gated = shown["metrics"]["gate"]
    assert gated["n_days"] == 5 and gated["day_ids"][0] == SERVICE_DAYS[2]  # replayed, then 4 synthetic
    assert not gated["promote"] and "5 days < min_days 1000" in gated["reason"]
    (decision,) = [d for d in registry.decisions() if d["kind"] == "gate"]
    assert (
        decision["version"] == "v0002"
        and decision["parent"] == "v0001"
        and decision["verdict"] == "keep production"
    )
    assert {d["kpi"] for d in decision["differences"]} == {"completion_rate", "on_time_rate", "reward"}
    assert all(d["ci_low"] <= d["mean_diff"] <= d["ci_high"] for d in decision["differences"])

    # Another retrain on the same data and parent: the same run dir, its version and decision reused.
    decisions = registry.decisions()
    again = loop.result(app, app.send_task("rl_lib.feedback.retrain").id)
    assert (again["status"], again["version"], again["run"]) == ("kept production", "v0002", result["run"])
    assert registry.versions() == ["v0001", "v0002"] and registry.decisions() == decisions


def test_two_retrains_at_once_one_is_skipped_by_the_lock(loop):
    from rl_lib.feedback.tasks import run_collect

    settings, path = loop.settings(retrain_wall_s=100, retrain_time_limit_s=150, visibility_timeout_s=180)
    run_collect(settings, "collect-1", client=loop.client)
    app = loop.app(settings)
    for name in ("w1", "w2"):  # two workers, as on two machines
        loop.worker(path, name)
    wait_for(lambda: len(app.control.ping(timeout=0.5)) == 2, WAIT_S, "both workers")
    tasks = [app.send_task("rl_lib.feedback.retrain") for _ in range(2)]
    results = [loop.result(app, t.id) for t in tasks]
    skipped = [r for r in results if r["status"] == "skipped"]
    done = [r for r in results if r["status"] != "skipped"]
    assert len(skipped) == 1 and skipped[0]["message"] == "skipped: another retrain holds the lock"
    assert len(done) == 1 and done[0]["status"] in ("kept production", "promoted"), done[0]["message"]
    assert skipped[0]["started_unix"] < done[0]["started_unix"] + done[0]["retrain_wall_s"]  # during it
    runs = [json.loads(r) for r in loop.client.lrange(settings.key("retrain_runs"), 0, -1)]
    assert sorted(r["status"] for r in runs) == sorted(r["status"] for r in results)
    assert not loop.client.exists(settings.key("retrain:lock"))  # released


def test_the_retrain_promotes_on_the_gates_word_only_and_never_twice(loop, monkeypatch, tmp_path):
    """In process (the flow, not the delivery): a gate forced to say promote, its redelivery, a rollback."""
    from rl_lib.feedback import gate as gate_module
    from rl_lib.feedback.tasks import run_collect, run_retrain
    from rl_lib.serving.registry import ModelRegistry

    settings, _ = loop.settings()
    registry, quiet = ModelRegistry(settings.registry), {"client": loop.client, "log": lambda m: None}
    empty = run_retrain(settings, "r0", **quiet)
    assert empty["status"] == "no data" and "nothing to retrain on" in empty["message"]
    run_collect(settings, "c1", client=loop.client)
    real = gate_module.gate
    monkeypatch.setattr(gate_module, "gate", lambda *a, **k: dataclasses.replace(real(*a, **k), promote=True))
    first = run_retrain(settings, "r1", **quiet)
    assert first["status"] == "promoted" and registry.production() == "v0002"
    kinds = [(d["kind"], d["version"]) for d in registry.decisions()]
    assert kinds[-2:] == [("gate", "v0002"), ("promote", "v0002")]
    again = run_retrain(settings, "r1", **quiet)  # a redelivery of the same task: its plan, its version
    assert again["status"] == "promoted" and "in production already" in again["message"]
    registry.rollback("the operator does not like it")
    after = run_retrain(settings, "r1", **quiet)
    assert after["status"] == "kept production" and "not promoted again" in after["message"]
    assert registry.production() == "v0001" and len(registry.decisions()) == len(kinds) + 1
    nothing = dataclasses.replace(settings, registry=str(tmp_path / "empty-registry"))
    assert run_retrain(nothing, "r2", **quiet)["status"] == "no production"


# ------------------------------------------------------------------------------------------ beat, dashboard
def test_beat_collects_on_its_compressed_schedule_and_the_dashboard_shows_the_loop(loop):
    from test_dashboard import assert_shows_exactly, figures

    from rl_lib.serving.dashboard import render_dashboard
    from rl_lib.serving.server import ServeOptions, build_service

    settings, path = loop.settings(collect_period_s=1.0, retrain_period_s=3600)
    expected = reference(loop, settings)
    loop.worker(path, "w1")
    loop.beat(path)
    key = settings.key("collect_runs")
    wait_for(lambda: loop.client.llen(key) >= 3, WAIT_S, "three collects sent by beat")
    runs = [json.loads(r) for r in reversed(loop.client.lrange(key, 0, -1))]
    assert sum(r["written"] for r in runs) == len(expected) and runs[-1]["written"] == 0  # exactly once
    assert sorted(loop.store().read()["decision_id"]) == expected
    assert loop.client.llen(settings.key("retrain_runs")) == 0  # retrain's period is an hour

    os.environ["RL_LIB_SERVICE_TOKEN"] = TOKEN
    try:
        options = ServeOptions(model=settings.registry, state_dir=str(loop.root / "service"),
                               feedback_settings=str(path))  # fmt: skip
        service, _ = build_service(options, loop.redis_url)
    finally:
        del os.environ["RL_LIB_SERVICE_TOKEN"]
    try:
        stats = service.stats()
    finally:
        service.close()
    shown = stats["feedback"]
    assert (shown["production"], shown["group"], shown["redis_error"]) == ("v0001", "feedback", None)
    assert shown["lag"] == {"decisions": 0, "outcomes": 0} and shown["pending"] == {
        "decisions": 0,
        "outcomes": 0,
    }
    assert sum(shown["collected_per_hour"].values()) == len(expected) and shown["collect_runs"] >= 3
    assert shown["dead_letters"] == 0 and shown["lineage"]["v0001"]["parent"] is None
    page = render_dashboard(stats)
    assert "Feedback loop" in page and "lineage of the production model" in page
    assert_shows_exactly({p: [v for v, _ in pairs] for p, pairs in figures(page).items()}, stats)


# ------------------------------------------------------------------------------------------ demo
def test_the_compressed_clock_demo_end_to_end(parent, tmp_path, capsys):
    from rl_lib.feedback.cli import add_feedback_command
    from rl_lib.feedback.store import ExperienceStore
    from rl_lib.serving.registry import ModelRegistry

    parser = argparse.ArgumentParser()
    add_feedback_command(parser.add_subparsers(dest="command", required=True))
    state = tmp_path / "demo"
    demo = ["--days", "2", "--day-seconds", "20", "--budget-steps", "400", "--retrain-wall", "15"]
    args = parser.parse_args(["feedback", "demo", "--model", str(parent), *demo, "--state-dir", str(state)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    registry = ModelRegistry(state / "registry")
    assert f"registered {parent} as v0001 and promoted it" in out
    store = ExperienceStore(state)
    assert store.days() == ["2027-01-04", "2027-01-05"] and all(
        store.count(days=[d]) > 10 for d in store.days()
    )
    for heading in ("per simulated day", "retrain runs", "gate decisions", "lineage of the production model"):
        assert heading in out, out
    gates = [d for d in registry.decisions() if d["kind"] == "gate"]
    assert gates and all(f"#{d['sequence']} {d['version']} vs {d['parent']}" in out for d in gates)
    assert out.count("  reward ") >= len(gates) and "95 % CI [" in out
    assert registry.production() in out.split("lineage of the production model")[1]
    for log in ("worker.log", "beat.log", "service.log"):
        assert (state / "logs" / log).is_file()
    assert "Sending due task retrain" in (state / "logs" / "beat.log").read_text()
