"""Assemble and run the service: model, experiment, decision log, token; uvicorn on 127.0.0.1.

The model is a DQN run dir's best model, or a model registry's production version
(:mod:`rl_lib.serving.registry`): then a :class:`~rl_lib.serving.service.ProductionWatcher` polls
the production pointer every ``watch_interval_s`` seconds and hot-swaps each newly promoted version
in, once it has verified and loaded. A registry without a production version yet is served by the
fallback until the first promotion.

Configuration comes from options and the environment, secrets from the environment or files only:

=========================  =======================================================================
``RL_LIB_SERVICE_TOKEN``   the bearer token of the write endpoints (or ``--token-file``)
``RL_LIB_REDIS_URL``       ``redis://host:port/db``, ``rediss://...`` or ``unix:///path`` (or
                           ``--redis-url``; with neither, ``--start-redis`` runs a local one)
``RL_LIB_REDIS_USERNAME``  ACL user (optional)
``RL_LIB_REDIS_PASSWORD``  its password (or ``--redis-password-file``)
=========================  =======================================================================

A URL that carries a password is refused: the password would end up in process listings and logs.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rl_lib.errors import UserError
from rl_lib.serving.app import Security, create_app, read_secret
from rl_lib.serving.decision_log import DecisionLog, LogTail, redis_connector
from rl_lib.serving.experiment import Experiment, load_experiment_file
from rl_lib.serving.monitor import Monitor
from rl_lib.serving.policy import ModelPolicy
from rl_lib.serving.registry import ModelRegistry, is_registry
from rl_lib.serving.service import DispatchService, ProductionWatcher, load_version


@dataclass(frozen=True)
class ServeOptions:
    model: str
    experiment: str | None = None
    backend: str = "auto"
    redis_url: str | None = None
    redis_password_file: str | None = None
    token_file: str | None = None
    state_dir: str = "results/serve"
    stream_prefix: str = "rl_lib"
    watch_interval_s: float = 2.0
    feedback_settings: str | None = None  # the feedback loop's settings: its figures in the stats


@dataclass(frozen=True)
class _Checked:
    security: Security
    redis_url: str | None
    redis_password: str | None
    experiment: Experiment


def _check(options: ServeOptions, redis_url: str | None) -> _Checked:
    """Secrets, Redis URL, poll interval and experiment, each refused in one line when wrong."""
    try:
        token = read_secret(os.environ.get("RL_LIB_SERVICE_TOKEN"), options.token_file, "token")
        password = read_secret(os.environ.get("RL_LIB_REDIS_PASSWORD"), options.redis_password_file,
                               "Redis password")  # fmt: skip
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not token:
        raise UserError("no service token: set RL_LIB_SERVICE_TOKEN or pass --token-file "
                        "(the write endpoints need one)")  # fmt: skip
    try:
        security = Security(token)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    url = redis_url or options.redis_url or os.environ.get("RL_LIB_REDIS_URL")
    if url is not None and urlsplit(url).password:
        raise UserError(
            "the Redis URL carries a password: pass it in RL_LIB_REDIS_PASSWORD or a file instead"
        )
    if not options.watch_interval_s > 0:
        raise UserError(f"the registry poll interval must be positive, got {options.watch_interval_s}")
    return _Checked(security, url, password, load_experiment_file(options.experiment))


def build_service(options: ServeOptions, redis_url: str | None = None) -> tuple[DispatchService, Security]:
    """The service and its security from options + environment (``redis_url`` overrides both)."""
    checked = _check(options, redis_url)
    url, password, experiment = checked.redis_url, checked.redis_password, checked.experiment
    registry, version = None, None
    if is_registry(options.model):
        registry = ModelRegistry(options.model)
        version = registry.production()
        model = (load_version(registry, version, options.backend) if version else
                 ModelPolicy(Path(options.model), options.backend, load_error=f"{options.model}: no "
                             "production version yet (rl-lib registry promote V)"))  # fmt: skip
    else:
        model = ModelPolicy.load(options.model, options.backend)
    state = Path(options.state_dir)
    connect = redis_connector(url, os.environ.get("RL_LIB_REDIS_USERNAME"), password) if url else None
    log = DecisionLog(connect, state / "spool", prefix=options.stream_prefix)
    service = DispatchService(model, experiment, log, Monitor(LogTail(log).read))
    if registry is not None:
        if version is not None and not model.ready:  # the production version itself does not load
            service.model_update_failed(model.load_error)
        service.watcher = ProductionWatcher(service, registry, options.watch_interval_s, options.backend,
                                            seen=version, log=_say).start()  # fmt: skip
    if options.feedback_settings is not None:
        from rl_lib.feedback.settings import load_settings
        from rl_lib.feedback.status import LoopFigures

        loop = load_settings(options.feedback_settings)
        if loop.stream_prefix != options.stream_prefix:
            raise UserError(f"{options.feedback_settings}: the loop reads {loop.stream_prefix}:* streams, "
                            f"the service writes {options.stream_prefix}:*")  # fmt: skip
        loop_redis = redis_connector(loop.redis_url, os.environ.get("RL_LIB_REDIS_USERNAME"), password)
        service.feedback_figures = LoopFigures(loop, loop_redis)
    return service, checked.security


def _say(line: str) -> None:
    print(line, flush=True)


#: Environment of :func:`app_from_env` (one process per uvicorn worker reads it).
OPTIONS_ENV = "RL_LIB_SERVE_OPTIONS"


def app_from_env():
    """The app for ``uvicorn --factory rl_lib.serving.server:app_from_env`` (several ``--workers``):
    :class:`ServeOptions` as JSON in ``RL_LIB_SERVE_OPTIONS``, secrets from the usual variables."""
    import json

    options = ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))
    return create_app(*build_service(options))


def ensure_token_file(path: str | Path) -> Path:
    """A token file for local use (created 0600 with a random token when absent)."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def serve(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, start_redis: bool = False,
          workers: int = 1) -> None:  # fmt: skip
    """Run the service until interrupted (with a private redis-server when asked and none is set).

    ``workers`` > 1 runs that many uvicorn worker processes on one socket (:func:`app_from_env`),
    each with its model, log spool and registry watch; the dashboard's figures come from the shared
    log (identical in every worker), ``/metrics`` sums the workers (prometheus_client's
    multiprocess mode, in ``{state_dir}/prometheus``).
    """
    import uvicorn

    from rl_lib.serving.redis_server import LocalRedis

    local = None
    if start_redis and not (options.redis_url or os.environ.get("RL_LIB_REDIS_URL")):
        local = LocalRedis(Path(options.state_dir) / "redis").start()
        print(f"redis-server: {local.url}", flush=True)
    try:
        if workers > 1:
            _serve_workers(options, local.url if local else None, host, port, workers)
            return
        service, security = build_service(options, local.url if local else None)
        model = service.model
        decides = model.version or f"NOT LOADED, insertion decides: {model.load_error}"
        if service.watcher is not None:
            decides += f"; following {options.model} (every {options.watch_interval_s:g} s)"
        print(f"model: {decides}; experiment: {service.experiment.name}; http://{host}:{port}/dashboard",
              flush=True)  # fmt: skip
        uvicorn.run(
            create_app(service, security), host=host, port=port, log_level="warning", access_log=False
        )
        service.close()
    finally:
        if local is not None:
            local.stop()


def _serve_workers(options: ServeOptions, redis_url: str | None, host: str, port: int, workers: int) -> None:
    """Run ``workers`` uvicorn processes, each on its own ``SO_REUSEPORT`` socket of ``port``.

    uvicorn's own ``--workers`` shares one listening socket, and Linux then hands most connections
    to one process (keep-alive clients measured 6+2 of 8 and 27+4+1 of 32: one worker saturated
    while the others idle). With one socket per process the kernel spreads new connections by hash.
    The supervisor restarts a worker that dies and stops them all on SIGINT / SIGTERM.
    """
    import dataclasses
    import json
    import multiprocessing
    import shutil
    import signal

    _check(options, redis_url)  # bad options fail here, in one line, not once per worker
    metrics = Path(options.state_dir) / "prometheus"
    shutil.rmtree(metrics, ignore_errors=True)  # the last run's workers' counters are not ours
    metrics.mkdir(parents=True)
    os.environ[OPTIONS_ENV] = json.dumps(dataclasses.asdict(options))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    if redis_url is not None:
        os.environ["RL_LIB_REDIS_URL"] = redis_url
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    _probe_port(host, port)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [context.Process(target=_worker, args=(host, port)) for _ in range(workers)]
    restarts: list[float] = []
    try:
        for process in processes:
            process.start()
        print(f"{workers} workers; http://{host}:{port}/dashboard", flush=True)
        while not stopping:
            for i, process in enumerate(processes):
                if stopping or process.exitcode is None:
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid)  # its counters stay, its gauges go
                restarts = [t for t in restarts if t > time.monotonic() - 60] + [time.monotonic()]
                if len(restarts) > 2 * workers:
                    raise UserError(f"rl-lib serve: workers keep exiting ({len(restarts)} in a minute): "
                                    "see their errors above")  # fmt: skip
                print(f"worker {process.pid} exited ({process.exitcode}): restarting it", flush=True)
                processes[i] = context.Process(target=_worker, args=(host, port))
                processes[i].start()
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn's graceful shutdown: requests in flight are answered
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _probe_port(host: str, port: int) -> None:
    """One clear line when the port is taken (not one traceback per worker)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"rl-lib serve: cannot listen on {host}:{port}: {exc.strerror}") from None


def _worker(host: str, port: int) -> None:
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # one socket per worker, one port
    sock.bind((host, port))
    config = uvicorn.Config("rl_lib.serving.server:app_from_env", factory=True, log_level="warning",
                            access_log=False)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
