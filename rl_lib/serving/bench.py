"""``rl-lib bench serve``: the service's decisions/s and latency over HTTP, next to in-process decisions.

The requests are the ones the production simulator sends on test days played by the model (each
with a fresh decision id per round, so the idempotency cache never answers for the service). One
run measures, side by side on this machine:

- ``dispatcher``: :meth:`rl_lib.inference.Dispatcher.decide` on the simulator's core (insertion
  evaluation, observation, network, mask: the in-process floor);
- ``service in-process``: :meth:`DispatchService.decide` on validated requests (state rebuilt from
  the request, experiment, decision logged to Redis, metrics), no HTTP;
- ``http, N clients``: the real ``rl-lib serve --workers W`` on 127.0.0.1 with a real local
  redis-server and decision logging on, driven by N concurrent keep-alive clients (one asyncio
  process, a lean HTTP/1.1 client); latency is measured by the client, request sent to answer parsed.

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
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

TOKEN = "bench-token-" + "0" * 20
WARMUP_REQUESTS = 20  # per connection, not counted


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


async def _drive(port: int, bodies: list[dict], clients: int, n_requests: int, tag: str) -> dict:
    """``clients`` keep-alive HTTP/1.1 connections posting decisions as fast as they are answered.

    A lean client (request bytes built before the clock starts, the answer read by its
    Content-Length and parsed as JSON) so that the load generator takes as little of the shared
    CPUs as it can: an HTTP client library costs about as much per request as the service itself.
    """
    payloads = [
        _http_post(port, "/v1/decisions", {**bodies[i % len(bodies)], "decision_id": f"{tag}-{i}"})
        for i in range(n_requests)
    ]
    latencies: list[float] = []

    pids: list[int] = []  # the worker process each connection landed on

    async def worker(j: int, queue, connected: asyncio.Barrier) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            pids.append(json.loads((await _read_response(reader))[1])["pid"])
            # Each connection's first requests warm its worker process (onnxruntime's first runs are
            # slow) and are not counted; then all connections start together.
            for i in range(WARMUP_REQUESTS):
                body = {**bodies[i % len(bodies)], "decision_id": f"{tag}-warmup-{j}-{i}"}
                writer.write(_http_post(port, "/v1/decisions", body))
                await _read_response(reader)
            await connected.wait()
            for payload in queue:
                t = time.perf_counter()
                writer.write(payload)
                status, answer = await _read_response(reader)
                if status != 200:
                    raise RuntimeError(f"the service answered {status}: {answer[:200]!r}")
                json.loads(answer)
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    queue = iter(payloads)
    barrier = asyncio.Barrier(clients + 1)
    tasks = [asyncio.create_task(worker(j, queue, barrier)) for j in range(clients)]
    await barrier.wait()
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    row = _summary("http", clients, latencies, time.perf_counter() - start)
    # The kernel hands each keep-alive connection to one worker: an uneven split caps throughput.
    row["connections_per_worker"] = "+".join(str(n) for n in sorted(Counter(pids).values(), reverse=True))
    return row


def _http_post(port: int, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
    return head.encode() + data


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


def bench_serve(run_dir: str | Path, n_days: int = 2, clients: tuple[int, ...] = (1, 8, 32),
                n_requests: int = 2000, workers: int = 1) -> pd.DataFrame:  # fmt: skip
    """Measure and print the table; returns it."""
    import httpx
    import uvloop  # the client's loop: uvicorn's too (uvicorn[standard])

    from rl_lib.serving.redis_server import LocalRedis, free_port

    run_dir = str(run_dir)
    bodies = collect_requests(run_dir, n_days)
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp) / "redis") as redis_server:
        rows = _in_process(run_dir, bodies, redis_server.url, Path(tmp) / "inproc")
        port = free_port()
        env = {**os.environ, "RL_LIB_SERVICE_TOKEN": TOKEN}
        server = subprocess.Popen(  # the operator's command, as make serve runs it
            [sys.executable, "-m", "rl_lib.cli", "serve", "--model", run_dir, "--port", str(port),
             "--workers", str(workers), "--redis-url", redis_server.url,
             "--state-dir", str(Path(tmp) / "http")],
            env=env, stdout=subprocess.DEVNULL,
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
                rows.append(uvloop.run(_drive(port, bodies, c, n_requests, f"c{c}")))
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
