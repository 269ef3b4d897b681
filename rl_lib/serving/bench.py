"""``rl-lib bench serve``: the service's decisions/s and latency over HTTP, next to in-process decisions.

The requests are the ones the production simulator sends on test days played by the model (each
with a fresh decision id per round, so the idempotency cache never answers for the service). One
run measures, side by side on this machine:

- ``dispatcher``: :meth:`rl_lib.inference.Dispatcher.decide` on the simulator's core (insertion
  evaluation, observation, network, mask: the in-process floor);
- ``service in-process``: :meth:`DispatchService.decide` on validated requests (state rebuilt from
  the request, experiment, decision logged to Redis, metrics), no HTTP;
- ``http, N clients``: a real uvicorn server (``--workers`` processes) on 127.0.0.1 with a real
  local redis-server and decision logging on, driven by N concurrent keep-alive clients (one asyncio
  process, httpx); latency is measured by the client, request sent to answer parsed.

The load generator shares the machine's cores with the server, as it would on one host.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TOKEN = "bench-token-" + "0" * 20


def collect_requests(run_dir: str | Path, n_days: int) -> list[dict]:
    """The simulator's request bodies over ``n_days`` test days played by the model (torch)."""
    from rl_lib.envs.core import DispatchCore
    from rl_lib.inference import Dispatcher
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.policy import ModelPolicy
    from rl_lib.serving.simulator import decision_request

    config = ModelPolicy.load(run_dir, "torch").config
    dispatcher = Dispatcher(run_dir, "torch")
    bodies = []
    for i, day in enumerate(SyntheticScenario(config.scenario).days("test", n_days)):
        core = DispatchCore(config.reward)
        core.reset(day)
        for booking in range(day.n_bookings):
            bodies.append(decision_request(day, core, booking, f"2027-01-{i + 4:02d}"))
            action = dispatcher.decide(core, booking)
            insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
            core.refuse(insertion) if action == day.n_vehicles else core.assign(insertion, action)
    return bodies


def _summary(name: str, clients: int | None, latencies_s: list[float], wall_s: float) -> dict:
    ms = 1e3 * np.asarray(latencies_s)
    return {"path": name, "clients": clients, "decisions": len(ms), "decisions_per_s": len(ms) / wall_s,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip


def _in_process(run_dir: str, bodies: list[dict], redis_url: str, state: Path) -> list[dict]:
    from rl_lib.envs.core import DispatchCore
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.schemas import DecisionRequest
    from rl_lib.serving.server import ServeOptions, build_service

    os.environ.setdefault("RL_LIB_SERVICE_TOKEN", TOKEN)
    service, _ = build_service(ServeOptions(model=run_dir, state_dir=str(state)), redis_url)
    dispatcher = service.model._dispatcher  # the backend the service chose
    rows = []
    day = SyntheticScenario(service.model.config.scenario).day("test", 0)
    core = DispatchCore(service.model.weights)
    core.reset(day)
    latencies, start = [], time.perf_counter()
    for booking in range(day.n_bookings):
        t = time.perf_counter()
        action = dispatcher.decide(core, booking)
        latencies.append(time.perf_counter() - t)
        insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
        core.refuse(insertion) if action == day.n_vehicles else core.assign(insertion, action)
    rows.append(_summary(f"dispatcher ({dispatcher.backend})", None, latencies, time.perf_counter() - start))
    latencies, start = [], time.perf_counter()
    for i, body in enumerate(bodies):
        t = time.perf_counter()
        service.decide([DecisionRequest.model_validate({**body, "decision_id": f"inproc-{i}"})])
        latencies.append(time.perf_counter() - t)
    rows.append(
        _summary("service in-process (validation + log)", None, latencies, time.perf_counter() - start)
    )
    service.log.close()
    return rows


async def _drive(url: str, bodies: list[dict], clients: int, n_requests: int, tag: str) -> dict:
    import httpx

    latencies: list[float] = []
    counter = iter(range(n_requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:  # fmt: skip

        async def worker():
            for i in counter:
                body = {**bodies[i % len(bodies)], "decision_id": f"{tag}-{i}"}
                t = time.perf_counter()
                response = await client.post("/v1/decisions", json=body)
                response.raise_for_status()
                response.json()
                latencies.append(time.perf_counter() - t)

        await client.post("/v1/decisions", json={**bodies[0], "decision_id": f"{tag}-warmup"})
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return _summary("http", clients, latencies, wall)


def bench_serve(run_dir: str | Path, n_days: int = 2, clients: tuple[int, ...] = (1, 8, 32),
                n_requests: int = 2000, workers: int = 1) -> pd.DataFrame:  # fmt: skip
    """Measure and print the table; returns it."""
    import httpx

    from rl_lib.serving.redis_server import LocalRedis, free_port
    from rl_lib.serving.server import OPTIONS_ENV

    run_dir = str(run_dir)
    bodies = collect_requests(run_dir, n_days)
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp) / "redis") as redis_server:
        rows = _in_process(run_dir, bodies, redis_server.url, Path(tmp) / "inproc")
        port = free_port()
        env = {**os.environ, "RL_LIB_SERVICE_TOKEN": TOKEN, "RL_LIB_REDIS_URL": redis_server.url,
               OPTIONS_ENV: json.dumps({"model": run_dir, "state_dir": str(Path(tmp) / "http")})}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "rl_lib.serving.server:app_from_env", "--host",
             "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
             "--no-access-log"], env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark's uvicorn server did not start")
                time.sleep(0.2)
            for c in clients:
                rows.append(asyncio.run(_drive(url, bodies, c, n_requests, f"c{c}")))
            logged = httpx.get(f"{url}/v1/stats").json()["stream_length"]["decisions"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    table = pd.DataFrame(rows)
    table["workers"] = [None if r["clients"] is None else workers for r in rows]
    print(f"rl-lib bench serve {run_dir}: {len(bodies)} distinct requests from {n_days} test days; "
          f"{n_requests} requests per client count; decision logging on (Redis stream length seen by one "
          f"worker at the end: {logged})")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    floor = rows[1]["decisions_per_s"]
    for r in rows[2:]:
        ratio = r["decisions_per_s"] / floor
        print(f"http / in-process service throughput at {r['clients']} clients: {ratio:.3f}")
    return table
