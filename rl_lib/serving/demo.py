"""``rl-lib serve demo`` (``make serve-demo``): the production path end to end on this machine.

A private redis-server, the service (``rl-lib serve`` as its own process, on 127.0.0.1, with an A/B
experiment), the production simulator playing test days over HTTP, then the A/B report on what the
service logged. Every piece is the real one; only the clock is compressed (``--speed``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rl_lib.errors import UserError


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the service exited at start (code {process.returncode}); see its output above")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise UserError(f"the service did not answer {url}/readyz within {timeout_s:.0f} s")


def run_demo(model: str, experiment: str, days: int, speed: float | None, state_dir: str,
             out: str) -> int:  # fmt: skip
    """Run the demo; returns the A/B report's exit code."""
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.policy import ModelPolicy
    from rl_lib.serving.redis_server import LocalRedis, free_port
    from rl_lib.serving.server import ensure_token_file
    from rl_lib.serving.simulator import http_poster, simulate

    state = Path(state_dir)
    token = ensure_token_file(state / "token").read_text().strip()
    policy = ModelPolicy.load(model, "torch")
    if not policy.ready:
        raise UserError(f"--model {model}: {policy.load_error}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RL_LIB_SERVICE_TOKEN": token}
    with LocalRedis(state / "redis") as redis_server:
        env["RL_LIB_REDIS_URL"] = redis_server.url
        service = subprocess.Popen(
            [sys.executable, "-m", "rl_lib.cli", "serve", "--model", model, "--experiment", experiment,
             "--port", str(port), "--state-dir", str(state)], env=env,
        )  # fmt: skip
        try:
            wait_ready(url, service)
            print(
                f"service up at {url} (dashboard: {url}/dashboard); redis at {redis_server.url}", flush=True
            )
            scenario = SyntheticScenario(policy.config.scenario)
            simulate(
                scenario.days("test", days), http_poster(url, token), weights=policy.weights, speed=speed
            )
        finally:
            service.terminate()
            service.wait(timeout=30)
        report = [sys.executable, "-m", "rl_lib.cli", "ab", "report", "--redis-url", redis_server.url,
                  "--treatment", "agent", "--control", "control", "--out", out]  # fmt: skip
        return subprocess.run(report, env=env, check=False).returncode
