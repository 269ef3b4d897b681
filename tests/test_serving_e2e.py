"""End to end, every piece real: redis-server, `rl-lib serve` as its own process on 127.0.0.1, the
production simulator over HTTP (`rl-lib serve simulate`), then the A/B report on what was logged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import tiny_config

from rl_lib.config import to_dict
from rl_lib.inference import export_onnx
from rl_lib.training import train

pytest.importorskip("fastapi")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian)")

TOKEN = "e2e-token-0123456789abcdef"


def test_serve_simulate_and_report_end_to_end(tmp_path):
    import redis

    from rl_lib.serving.demo import wait_ready
    from rl_lib.serving.redis_server import LocalRedis, free_port

    config = tiny_config()
    run_dir = tmp_path / "run"
    assert train(config, run_dir, log=lambda *a: None).status == "completed"
    export_onnx(run_dir)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    experiment = tmp_path / "ab.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "e2e", "salt": "e2e", "unit": "switchback", "block_hours": 12,
        "arms": [{"name": "agent", "policy": "model", "weight": 0.5},
                 {"name": "control", "policy": "insertion", "weight": 0.5}]}))  # fmt: skip
    with LocalRedis(tmp_path / "redis") as server:
        env = {**os.environ, "RL_LIB_SERVICE_TOKEN": TOKEN, "RL_LIB_REDIS_URL": server.url}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        service = subprocess.Popen(
            [sys.executable, "-m", "rl_lib.cli", "serve", "--model", str(run_dir), "--experiment",
             str(experiment), "--port", str(port), "--state-dir", str(tmp_path / "state")], env=env,
        )  # fmt: skip
        try:
            wait_ready(url, service, timeout_s=60)
            simulated = subprocess.run(
                [sys.executable, "-m", "rl_lib.cli", "serve", "simulate", "--url", url, "--days", "3",
                 "--speed", "max", "--config", str(config_path), "--out", str(tmp_path / "sim.csv")],
                env=env, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert simulated.returncode == 0, simulated.stderr
        finally:
            service.terminate()
            service.wait(timeout=30)
        days = pd.read_csv(tmp_path / "sim.csv")
        client = redis.Redis.from_url(server.url, decode_responses=True)
        decisions = [json.loads(f["record"]) for _, f in client.xrange("rl_lib:decisions")]
        outcomes = [json.loads(f["record"]) for _, f in client.xrange("rl_lib:outcomes")]
        assert len(decisions) == int(days["n_bookings"].sum())  # every decision logged, once
        assert len({d["decision_id"] for d in decisions}) == len(decisions)
        assert len(outcomes) == int(days["served"].sum())  # every served trip reported, once
        # Switchback by day: each service day's decisions all come from one arm.
        arms_per_day = pd.DataFrame(decisions).groupby("service_day")["arm"].nunique()
        assert (arms_per_day == 1).all()
        report = subprocess.run(
            [sys.executable, "-m", "rl_lib.cli", "ab", "report", "--redis-url", server.url, "--treatment",
             "agent", "--control", "control", "--config", str(config_path), "--out", str(tmp_path / "ab"),
             "--figures-dir", str(tmp_path / "fig"), "--tables-dir", str(tmp_path / "tab")],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert set(arms_per_day.index) == set(days["service_day"])
        # Salt "e2e" draws control, agent, control for the three days.
        assert set(pd.DataFrame(decisions)["arm"]) == {"agent", "control"}
        assert report.returncode == 0, report.stderr
        per_unit = pd.read_csv(tmp_path / "ab" / "per_unit.csv")
        assert per_unit["decisions"].sum() == len(decisions)
