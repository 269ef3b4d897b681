"""The dispatch service: exactness with the env, bad input, the mask, fallback, A/B assignment,
tokens, and the decision log across a real redis-server restart."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import numpy as np
import pytest
from conftest import tiny_config

from rl_lib.config import from_dict
from rl_lib.envs.core import DispatchCore
from rl_lib.envs.day import COMPATIBLE
from rl_lib.inference import Dispatcher, export_onnx
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.training import train

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rl_lib.serving.app import create_app  # noqa: E402
from rl_lib.serving.decision_log import DecisionLog, read_array, redis_connector  # noqa: E402
from rl_lib.serving.experiment import Experiment  # noqa: E402
from rl_lib.serving.fleet_state import fleet_state  # noqa: E402
from rl_lib.serving.schemas import VEHICLE_TYPES, DecisionRequest  # noqa: E402
from rl_lib.serving.server import ServeOptions, build_service  # noqa: E402
from rl_lib.serving.simulator import decision_request, play_day  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HAS_REDIS = shutil.which("redis-server") is not None
AB = {"name": "ab", "salt": "s1", "unit": "switchback", "block_hours": 24,
      "arms": [{"name": "agent", "policy": "model", "weight": 0.5},
               {"name": "control", "policy": "insertion", "weight": 0.5}]}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fleet-network DQN (exported to ONNX), a tiny flat-MLP one, and test days."""
    root = tmp_path_factory.mktemp("serving")
    config = tiny_config()
    assert train(config, root / "fleet", log=lambda *a: None).status == "completed"
    export_onnx(root / "fleet")
    mlp = tiny_config(dqn={"network": "mlp"}, total_timesteps=200)
    assert train(mlp, root / "mlp", log=lambda *a: None).status == "completed"
    return {"fleet": root / "fleet", "mlp": root / "mlp", "config": config,
            "days": SyntheticScenario(config.scenario).days("test", 2)}  # fmt: skip


def make_client(run_dir, tmp_path, monkeypatch, experiment=None, redis_url=None):
    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", TOKEN)
    path = None
    if experiment is not None:
        import yaml

        tmp_path.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "ab.yaml"
        path.write_text(yaml.safe_dump(experiment))
    options = ServeOptions(
        model=str(run_dir), experiment=path and str(path), state_dir=str(tmp_path / "state")
    )
    service, security = build_service(options, redis_url)
    return service, TestClient(create_app(service, security))


def poster(client):
    def post(path, body):
        response = client.post(path, json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    return post


def request_body(trained, booking=0):
    day = trained["days"][0]
    core = DispatchCore(trained["config"].reward)
    core.reset(day)
    return decision_request(day, core, booking, "2027-01-04")


# ------------------------------------------------------------------------------------------- exactness
def test_a_day_through_the_service_is_the_day_the_dispatcher_plays(trained, tmp_path, monkeypatch):
    service, client = make_client(trained["fleet"], tmp_path, monkeypatch)
    assert service.model.ready and service.model.backend == "onnx"
    reference = Dispatcher(trained["fleet"], "onnx")
    for i, day in enumerate(trained["days"]):
        result = play_day(day, poster(client), f"2027-01-0{i + 4}", trained["config"].reward)
        assert result.policies == {"model": day.n_bookings}
        assert result.kpis == reference.play(day, trained["config"].reward)


def test_the_service_builds_the_env_observation_bit_for_bit(trained):
    day, config = trained["days"][0], trained["config"]
    dispatcher = Dispatcher(trained["fleet"], "torch")
    core = DispatchCore(config.reward)
    core.reset(day)
    for booking in range(day.n_bookings):
        request = DecisionRequest.model_validate(decision_request(day, core, booking, "2027-01-04"))
        state = fleet_state(request, config.scenario, config.reward)
        obs, mask = dispatcher.observe(core, [booking])
        np.testing.assert_array_equal(state.observation, obs[0])
        np.testing.assert_array_equal(state.mask, mask[0])
        insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
        vehicle = int(np.argmax(insertion.feasible)) if insertion.n_feasible else -1
        core.refuse(insertion) if vehicle < 0 else core.assign(insertion, vehicle)


# ------------------------------------------------------------------------------------------- bad input
def _bad_bodies(body):
    def edit(fn):
        b = json.loads(json.dumps(body))
        fn(b)
        return b

    return {
        "booking.mobility": edit(lambda b: b["booking"].__setitem__("mobility", "horse")),
        "booking.window_min": edit(lambda b: b["booking"].__setitem__("window_min", -1)),
        "booking.pickup.x_km": edit(lambda b: b["booking"]["pickup"].__setitem__("x_km", 1e9)),
        "fleet.0.type": edit(lambda b: b["fleet"][0].__setitem__("type", "bus")),
        "fleet.0": edit(
            lambda b: b["fleet"][0].__setitem__("shift_end_min", b["fleet"][0]["shift_start_min"])
        ),
        "fleet": edit(lambda b: b["fleet"].append(dict(b["fleet"][0]))),  # duplicate vehicle id
        "now_min": edit(lambda b: b.__setitem__("now_min", -5)),
        "service_day": edit(lambda b: b.__setitem__("service_day", "2027-13-45")),
        "booking": edit(lambda b: b["booking"].pop("pickup")),
        "unexpected": edit(lambda b: b.__setitem__("unexpected", 1)),
        "demand.pending_bookings": edit(lambda b: b["demand"].__setitem__("pending_bookings", -1)),
        "body": edit(lambda b: b.__setitem__("now_min", b["booking"]["requested_pickup_min"] + 1)),
    }


def test_bad_requests_get_a_422_naming_the_field_and_the_service_stays_up(trained, tmp_path, monkeypatch):
    service, client = make_client(trained["fleet"], tmp_path, monkeypatch)
    body = request_body(trained)
    for field, bad in _bad_bodies(body).items():
        response = client.post("/v1/decisions", json=bad, headers=AUTH)
        assert response.status_code == 422, (field, response.text)
        locations = [".".join(str(p) for p in e["loc"][1:]) or "body" for e in response.json()["detail"]]
        assert any(loc.startswith(field) or field == "body" for loc in locations), (field, locations)
    raw = [b"{not json", b'{"now_min": NaN}', json.dumps(body).replace("12", "NaN", 1).encode(), b"[]"]
    for content in raw:
        response = client.post(
            "/v1/decisions", content=content, headers={**AUTH, "content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
    huge = client.post("/v1/decisions", content=b"{" + b" " * (2 << 20) + b"}", headers=AUTH)
    assert huge.status_code == 413
    assert (
        client.post(
            "/v1/outcomes", json={"decision_id": "x", "status": "completed"}, headers=AUTH
        ).status_code
        == 422
    )
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/decisions", json=body, headers=AUTH).status_code == 200
    assert service.log.counters.spooled == 1  # only the good request was logged


def test_a_fleet_the_model_cannot_read_is_a_422_on_fleet(trained, tmp_path, monkeypatch):
    _, client = make_client(trained["mlp"], tmp_path, monkeypatch)
    body = request_body(trained)
    assert client.post("/v1/decisions", json=body, headers=AUTH).status_code == 200
    body["fleet"] = body["fleet"][:-1]
    response = client.post("/v1/decisions", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "fleet"]
    batch = client.post("/v1/decisions/batch", json={"requests": [request_body(trained), body]}, headers=AUTH)
    assert batch.status_code == 422 and batch.json()["detail"][0]["loc"] == ["body", "requests", 1, "fleet"]


def test_write_endpoints_need_the_token_reads_do_not(trained, tmp_path, monkeypatch):
    service, client = make_client(trained["fleet"], tmp_path, monkeypatch)
    body = request_body(trained)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert client.post("/v1/decisions", json=body, headers=headers).status_code == 401
        assert client.post("/v1/outcomes", json={"decision_id": "x", "status": "cancelled"},
                           headers=headers).status_code == 401  # fmt: skip
    assert client.post("/v1/decisions", json=body, headers=AUTH).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/v1/stats"):
        response = client.get(path)
        assert response.status_code == 200 and TOKEN not in response.text
    assert TOKEN not in service.log.spool.read_text()


def test_the_service_refuses_to_start_without_a_token_or_with_a_password_in_the_url(trained, monkeypatch):
    from rl_lib.errors import UserError

    monkeypatch.delenv("RL_LIB_SERVICE_TOKEN", raising=False)
    with pytest.raises(UserError, match="no service token"):
        build_service(ServeOptions(model=str(trained["fleet"])))
    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", TOKEN)
    with pytest.raises(UserError, match="carries a password"):
        build_service(ServeOptions(model=str(trained["fleet"]), redis_url="redis://u:secret@127.0.0.1:1/0"))


# -------------------------------------------------------------------------------------- mask, fallback
def random_request(rng, n_vehicles: int) -> dict:
    def point():
        return {"x_km": float(rng.uniform(0, 25)), "y_km": float(rng.uniform(0, 25))}

    now = float(rng.uniform(360, 1100))
    fleet = []
    for k in range(n_vehicles):
        start = float(rng.uniform(300, 700))
        fleet.append({"vehicle_id": f"v{k}", "type": VEHICLE_TYPES[int(rng.integers(3))], "position": point(),
                      "free_at_min": float(rng.uniform(start, start + 400)), "shift_start_min": start,
                      "shift_end_min": float(start + rng.uniform(60, 600))})  # fmt: skip
    return {"service_day": "2027-02-01", "now_min": now,
            "booking": {"booking_id": "b", "requested_pickup_min": now + float(rng.uniform(0, 120)),
                        "window_min": float(rng.uniform(0, 30)), "pickup": point(), "dropoff": point(),
                        "mobility": ["ambulatory", "wheelchair", "stretcher"][int(rng.integers(3))],
                        "priority": ["normal", "appointment", "dialysis"][int(rng.integers(3))]},
            "fleet": fleet, "demand": {"pending_bookings": int(rng.integers(200))}}  # fmt: skip


def test_the_mask_is_never_broken_over_random_fleet_states(trained, tmp_path, monkeypatch):
    """Property test: 300 random fleets (sizes 1-20: the fleet network reads any) for every policy."""
    service, client = make_client(
        trained["fleet"], tmp_path, monkeypatch, experiment={**AB, "unit": "booking"}
    )
    config = trained["config"]
    rng = np.random.default_rng(0)
    rules = config.scenario.rules
    for i in range(300):
        body = random_request(rng, int(rng.integers(1, 21)))
        body["booking"]["booking_id"] = f"b{i}"
        response = client.post("/v1/decisions", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        answer = response.json()
        state = fleet_state(DecisionRequest.model_validate(body), config.scenario, config.reward)
        if answer["action"] == "refuse":
            continue
        k = answer["vehicle_index"]
        vehicle = body["fleet"][k]
        assert answer["vehicle_id"] == vehicle["vehicle_id"]
        mobility = ["ambulatory", "wheelchair", "stretcher"].index(body["booking"]["mobility"])
        assert COMPATIBLE[VEHICLE_TYPES.index(vehicle["type"]), mobility]
        assert state.insertion.lateness[k] <= rules.max_lateness_min
        assert state.insertion.dropoff_end[k] <= vehicle["shift_end_min"]
    assert {a for a in service.monitor.stats()["decisions_last_minute"]["by_policy"]} <= {
        "model",
        "insertion",
    }


def test_a_corrupt_model_falls_back_to_insertion_and_says_so(trained, tmp_path, monkeypatch):
    from rl_lib.policies.heuristics import InsertionPolicy

    run = tmp_path / "run"
    shutil.copytree(trained["fleet"], run)
    model = run / "best_model" / "best_model.zip"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    service, client = make_client(run, tmp_path, monkeypatch)
    assert not service.model.ready and "sha256" in service.model.load_error
    ready = client.get("/readyz").json()
    assert ready["decides_with"] == "fallback" and ready["ready"]
    config, day = trained["config"], trained["days"][0]
    core = DispatchCore(config.reward)
    core.reset(day)
    for booking in range(10):
        answer = client.post("/v1/decisions", json=decision_request(day, core, booking, "2027-01-04"),
                             headers=AUTH).json()  # fmt: skip
        insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
        expected = InsertionPolicy().choose(core, insertion)
        assert answer["policy"] == "fallback"
        assert answer["vehicle_index"] == (None if expected < 0 else expected)
        core.refuse(insertion) if expected < 0 else core.assign(insertion, expected)
    assert 'rl_lib_fallbacks_total{reason="model not loaded"} 10.0' in client.get("/metrics").text


def test_a_model_that_raises_falls_back_for_that_batch_only(trained, tmp_path, monkeypatch):
    service, client = make_client(trained["fleet"], tmp_path, monkeypatch)
    body = request_body(trained)
    dispatcher = service.model._dispatcher

    def broken(obs):
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(dispatcher, "q_values", broken)
    assert client.post("/v1/decisions", json=body, headers=AUTH).json()["policy"] == "fallback"
    monkeypatch.undo()
    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", TOKEN)
    body["decision_id"] = "another"
    assert client.post("/v1/decisions", json=body, headers=AUTH).json()["policy"] == "model"


# ---------------------------------------------------------------------------------------------- A/B
def test_assignment_is_sticky_balanced_and_switchback_blocks_share_an_arm():
    experiment = from_dict(Experiment, AB)
    restarted = from_dict(Experiment, AB)
    day = dt.date(2027, 3, 1)
    units = [experiment.unit_id(day + dt.timedelta(days=i), r, 600.0, "b") for i in range(1000) for r in "ab"]
    arms = [experiment.arm(u).name for u in units]
    assert arms == [restarted.arm(u).name for u in units]  # identical after a restart / on a replica
    assert 0.45 < arms.count("agent") / len(arms) < 0.55
    # Whole service days: every booking of a (day, region) shares the unit, whatever its time.
    assert len({experiment.unit_id(day, "a", t, f"b{t}") for t in range(0, 1440, 7)}) == 1
    blocks = from_dict(Experiment, {**AB, "block_hours": 4})
    assert len({blocks.unit_id(day, "a", t, "b") for t in range(0, 1440, 7)}) == 6
    per_booking = from_dict(Experiment, {**AB, "unit": "booking"})
    assert len({per_booking.unit_id(day, "a", 600.0, f"b{i}") for i in range(50)}) == 50
    other_salt = from_dict(Experiment, {**AB, "salt": "s2"})
    assert [other_salt.arm(u).name for u in units] != arms


def test_the_serve_command_offers_every_inference_backend():
    from rl_lib.inference import BACKENDS
    from rl_lib.serving import cli

    assert cli.BACKENDS == BACKENDS


def test_experiment_files_are_validated_in_one_line(tmp_path):
    from rl_lib.errors import ConfigError
    from rl_lib.serving.experiment import load_experiment_file

    batch_matching = [{"name": "a", "policy": "batch_matching", "weight": 1.0}]
    for bad, message in (({**AB, "unit": "hour"}, "unit"), ({**AB, "block_hours": 5}, "divide 24"),
                         ({**AB, "arms": batch_matching}, "policy"),
                         ({**AB, "arms": [{"name": "a", "weight": 0.7}]}, "sum to 1")):  # fmt: skip
        path = tmp_path / "bad.yaml"
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_experiment_file(path)


def test_a_retried_decision_is_answered_and_logged_once(trained, tmp_path, monkeypatch):
    service, client = make_client(trained["fleet"], tmp_path, monkeypatch)
    body = {**request_body(trained), "decision_id": "retry-me"}
    first = client.post("/v1/decisions", json=body, headers=AUTH).json()
    again = client.post("/v1/decisions", json=body, headers=AUTH).json()
    batch = client.post("/v1/decisions/batch", json={"requests": [body, body]}, headers=AUTH).json()
    assert first == again == batch["decisions"][0] == batch["decisions"][1]
    outcome = {"decision_id": "retry-me", "status": "cancelled"}
    assert client.post("/v1/outcomes", json=outcome, headers=AUTH).json()["recorded"] is True
    assert client.post("/v1/outcomes", json=outcome, headers=AUTH).json()["recorded"] is False
    lines = [json.loads(line) for line in service.log.spool.read_text().splitlines()]
    assert [e["key"] for e in lines] == ["decision:retry-me", "outcome:retry-me"]
    record = json.loads(lines[0]["record"])
    assert record["schema"] == "rl_lib.decision/1"
    assert read_array(record["mask"])[record["action"]]
    assert read_array(record["observation"]).dtype == np.float32


# ------------------------------------------------------------------------------------ decision log
@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_nothing_is_lost_or_doubled_across_a_redis_restart(trained, tmp_path, monkeypatch):
    import redis

    from rl_lib.serving.redis_server import LocalRedis

    server = LocalRedis(tmp_path / "redis", port=0).start()
    try:
        service, client = make_client(trained["fleet"], tmp_path, monkeypatch, redis_url=server.url)
        service.log.retry_s = 0.1
        day, config = trained["days"][0], trained["config"]
        core = DispatchCore(config.reward)
        core.reset(day)
        sent = []

        def decide(booking):
            body = decision_request(day, core, booking, "2027-01-04")
            answer = client.post("/v1/decisions", json=body, headers=AUTH).json()
            sent.append(answer["decision_id"])
            insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
            core.refuse(insertion) if answer["action"] == "refuse" else core.assign(
                insertion, answer["vehicle_index"]
            )

        for booking in range(10):
            decide(booking)
        assert service.log.counters.appended == 10 and service.log.backlog == 0
        server.stop()  # mid-traffic: the service keeps deciding, into the spool
        for booking in range(10, 20):
            decide(booking)
        assert service.log.backlog == 10 and service.log.counters.spooled == 10
        assert client.get("/readyz").json()["redis"] is False
        server.start()  # same folder: the append-only file brings the first 10 back
        deadline = time.monotonic() + 10
        while service.log.backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        for booking in range(20, 25):
            decide(booking)
        # A crash after XADD but before the spool was truncated replays the same records: no double.
        assert service.log.replay() == 0
        entries = redis.Redis.from_url(server.url, decode_responses=True).xrange(service.log.decisions_stream)
        ids = [json.loads(fields["record"])["decision_id"] for _, fields in entries]
        assert ids == sent  # every decision, once, in order
        assert service.log.counters.replayed == 10
        stats = client.get("/v1/stats").json()
        assert stats["stream_length"]["decisions"] == 25 and stats["spool_backlog"] == 0
    finally:
        server.stop()


@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_a_retry_reaching_a_restarted_service_gets_the_logged_decision(trained, tmp_path, monkeypatch):
    from rl_lib.serving.redis_server import LocalRedis

    with LocalRedis(tmp_path / "redis", port=0) as server:
        experiment = {**AB, "unit": "booking"}
        first, client = make_client(trained["fleet"], tmp_path / "a", monkeypatch, experiment, server.url)
        bodies = [{**request_body(trained, b), "decision_id": f"r{b}"} for b in range(8)]
        answers = [client.post("/v1/decisions", json=b, headers=AUTH).json() for b in bodies]
        # Another process (a restart, a replica) with another salt would decide differently: it must
        # answer what was logged.
        other = {**experiment, "salt": "another"}
        second, client2 = make_client(trained["fleet"], tmp_path / "b", monkeypatch, other, server.url)
        again = [client2.post("/v1/decisions", json=b, headers=AUTH).json() for b in bodies]
        assert again == answers
        assert second.log.counters.duplicates == 8 and second.log.stream_lengths()["rl_lib:decisions"] == 8
        refused = next((a for a in answers if a["action"] == "refuse"), None)
        if refused is not None:
            response = client.post("/v1/outcomes", json={"decision_id": refused["decision_id"],
                                                         "status": "cancelled"}, headers=AUTH)  # fmt: skip
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
                "body",
                "decision_id",
            ]
        first.log.close()
        second.log.close()


@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_concurrent_decisions_are_group_committed_in_order(trained, tmp_path, monkeypatch):
    import asyncio

    import redis

    from rl_lib.serving.redis_server import LocalRedis

    with LocalRedis(tmp_path / "redis", port=0) as server:
        service, _ = make_client(trained["fleet"], tmp_path, monkeypatch, redis_url=server.url)
        requests = [DecisionRequest.model_validate({**request_body(trained, b), "decision_id": f"g{b}"})
                    for b in range(12)]  # fmt: skip
        batches = []
        write = service.log._write_batch
        monkeypatch.setattr(
            service.log, "_write_batch", lambda entries: batches.append(len(entries)) or write(entries)
        )

        async def burst():
            return await asyncio.gather(*(service.decide_async([r]) for r in requests))

        answers = [a[0] for a in asyncio.run(burst())]
        entries = redis.Redis.from_url(server.url, decode_responses=True).xrange(service.log.decisions_stream)
        assert [json.loads(f["record"])["decision_id"] for _, f in entries] == [f"g{b}" for b in range(12)]
        assert [a.decision_id for a in answers] == [f"g{b}" for b in range(12)]
        assert sum(batches) == 12 and len(batches) < 12  # records in flight shared a pipeline
        service.log.close()


def test_a_torn_spool_line_never_swallows_the_next_record(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "t-999999999.jsonl").write_text('{"stream": "t:decisions", "key": "decision:1", "rec')
    log = DecisionLog(None, spool_dir, prefix="t", retry_s=60)
    log.append_decision({"decision_id": "2"})
    lines = log.spool.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["key"] == "decision:2"
    # A claim whose claimer died is adopted in turn; another prefix's files are left alone.
    (spool_dir / "t-5.jsonl.claimed-999999998").write_text(lines[1] + "\n")
    (spool_dir / "t-lib-7.jsonl").write_text(lines[1] + "\n")
    log.close()
    again = DecisionLog(None, spool_dir, prefix="t", retry_s=60)
    assert again.backlog == 3 and (spool_dir / "t-lib-7.jsonl").exists()
    again.close()


@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_replaying_a_spool_twice_adds_nothing(tmp_path):
    from rl_lib.serving.redis_server import LocalRedis

    with LocalRedis(tmp_path / "redis", port=0) as server:
        spool = tmp_path / "spool" / "t-999999999.jsonl"  # the spool of a process that is gone
        spool.parent.mkdir()
        lines = [json.dumps({"stream": "t:decisions", "key": f"decision:{i}",
                             "record": json.dumps({"decision_id": str(i)})}) for i in range(5)]  # fmt: skip
        spool.write_text("\n".join(lines) + "\n")
        log = DecisionLog(redis_connector(server.url), spool.parent, prefix="t", retry_s=60)
        assert log.backlog == 5 and not spool.exists()  # adopted
        assert log.replay() == 5
        log.spool.write_text("\n".join(lines) + "\n")  # as if the truncation had not happened
        log._spooled_lines = 5
        assert log.replay() == 5 and log.counters.duplicates == 5
        assert log.stream_lengths()["t:decisions"] == 5
        log.close()


@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_several_workers_show_one_service_and_join_outcomes_across_workers(trained, tmp_path):
    """``rl-lib serve --workers 2``: decisions go to one worker, their outcomes to the other; both
    workers' stats are the whole service's (read from the log) and /metrics sums the workers."""
    import os
    import subprocess
    import sys

    import httpx
    import yaml
    from live import wait_for

    from rl_lib.serving.redis_server import LocalRedis, free_port

    experiment = tmp_path / "ab.yaml"
    experiment.write_text(yaml.safe_dump(AB))
    port = free_port()
    with LocalRedis(tmp_path / "redis", port=0) as redis_server:
        server = subprocess.Popen(
            [sys.executable, "-m", "rl_lib.cli", "serve", "--model", str(trained["fleet"]), "--workers", "2",
             "--experiment", str(experiment), "--port", str(port), "--redis-url", redis_server.url,
             "--state-dir", str(tmp_path / "state")],
            env={**os.environ, "RL_LIB_SERVICE_TOKEN": TOKEN},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        clients = {}
        try:

            def ready_pid(client):
                try:
                    return client.get(f"{url}/readyz").json()["pid"]
                except httpx.TransportError:
                    return None

            # One keep-alive connection per worker process (the kernel hands connections out).
            wait_for(lambda: ready_pid(httpx), 90, "the workers to start")

            def new_worker():
                client = httpx.Client(base_url=url, headers=AUTH, timeout=30)
                pid = ready_pid(client)
                if pid is None or pid in clients:
                    client.close()
                else:
                    clients[pid] = client
                return len(clients) == 2

            wait_for(new_worker, 60, "connections to two distinct workers")
            to_decide, to_report = clients.values()

            def post(path, body):
                client = to_decide if path == "/v1/decisions" else to_report
                response = client.post(path, json=body)
                assert response.status_code == 200, response.text
                return response.json()

            day = trained["days"][0]
            result = play_day(day, post, "2027-01-04", trained["config"].reward)
            n = day.n_bookings
            assert result.outcomes_posted > 0

            # Each worker's figures are at most refresh_s old: wait until both have read the log.
            def caught_up(client):
                return client.get("/v1/stats").json()["decisions_in_window"] == n

            wait_for(lambda: caught_up(to_decide) and caught_up(to_report), 30, "both workers' figures")
            for client in (to_decide, to_report):
                stats = client.get("/v1/stats").json()
                assert stats["decisions_in_window"] == n == stats["stream_length"]["decisions"]
                arms = stats["arms"]
                assert sum(a["assignment_rate"]["n"] for a in arms.values()) == n
                assert sum(a["completion_rate"]["n"] for a in arms.values()) == result.outcomes_posted
                metrics = client.get("/metrics").text
                for name, expected in (("rl_lib_decisions_total", n),
                                       ("rl_lib_outcomes_total", result.outcomes_posted)):  # fmt: skip
                    values = [float(line.split()[-1]) for line in metrics.splitlines()
                              if line.startswith(name + "{")]  # fmt: skip
                    assert sum(values) == expected, (name, values)
        finally:
            for client in clients.values():
                client.close()
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (apt-get install redis-server)")
def test_entries_not_of_the_log_schema_are_left_out_of_the_figures(trained, tmp_path, monkeypatch):
    """Whoever can write to the streams must not be able to stop the dashboard or skew its figures."""
    import redis

    from rl_lib.serving.redis_server import LocalRedis

    with LocalRedis(tmp_path / "redis", port=0) as server:
        service, client = make_client(trained["fleet"], tmp_path, monkeypatch, redis_url=server.url)
        answer = client.post("/v1/decisions", json=request_body(trained), headers=AUTH).json()
        raw = redis.Redis.from_url(server.url)
        for junk in (b"{not json", b"[1, 2]", json.dumps({"schema": "rl_lib.decision/1"}).encode(),
                     json.dumps({"schema": "rl_lib.outcome/1", "decision_id": answer["decision_id"],
                                 "status": "completed", "lateness_min": "late"}).encode()):  # fmt: skip
            stream = service.log.outcomes_stream if b"outcome" in junk else service.log.decisions_stream
            raw.xadd(stream, {"record": junk})
        raw.xadd(service.log.decisions_stream, {"other": b"field"})
        stats = client.get("/v1/stats")
        assert stats.status_code == 200 and stats.json()["decisions_in_window"] == 1
        assert client.get("/dashboard").status_code == 200
        skipped = [line for line in client.get("/metrics").text.splitlines()
                   if line.startswith("rl_lib_log_records_skipped_total")]  # fmt: skip
        assert skipped == ["rl_lib_log_records_skipped_total 5.0"]
        service.log.close()
