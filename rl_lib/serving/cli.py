"""``rl-lib serve`` (the service), ``rl-lib serve simulate`` (the production simulator) and
``rl-lib bench serve``; registered by :mod:`rl_lib.cli`, importing FastAPI only when they run."""

from __future__ import annotations

import argparse
import os

from rl_lib.argtypes import positive_int, positive_number, positive_number_or_max, tcp_port
from rl_lib.errors import UserError

# rl_lib.inference.BACKENDS, spelled out: importing it here would load numpy and the env for --help.
BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-static")


def cmd_serve(args: argparse.Namespace) -> int:
    from rl_lib.serving.server import ServeOptions, ensure_token_file, serve

    if args.model is None:
        raise UserError("rl-lib serve: --model is required (a DQN run dir or a model registry folder)")
    token_file = args.token_file
    if token_file is None and not os.environ.get("RL_LIB_SERVICE_TOKEN") and args.start_redis:
        token_file = str(ensure_token_file(os.path.join(args.state_dir, "token")))  # local use: make one
        print(f"token: {token_file}", flush=True)
    options = ServeOptions(model=args.model, experiment=args.experiment, backend=args.backend,
                           redis_url=args.redis_url, redis_password_file=args.redis_password_file,
                           token_file=token_file, state_dir=args.state_dir,
                           watch_interval_s=args.watch_interval,
                           feedback_settings=args.feedback_settings)  # fmt: skip
    serve(options, args.host, args.port, start_redis=args.start_redis, workers=args.workers)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from rl_lib.experiment import load_experiment
    from rl_lib.io import atomic_write_csv
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.app import read_secret
    from rl_lib.serving.simulator import http_poster, simulate

    try:
        token = read_secret(os.environ.get("RL_LIB_SERVICE_TOKEN"), args.token_file, "token")
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not token:
        raise UserError("no service token: set RL_LIB_SERVICE_TOKEN or pass --token-file")
    config = load_experiment(args.config)
    scenario = SyntheticScenario(config.scenario)
    available = len(scenario.day_ids(args.split))
    if args.days > available:
        raise UserError(f"--days {args.days}: the {args.split} split holds {available} days")
    days = scenario.days(args.split, args.days)
    results = simulate(days, http_poster(args.url, token), args.first_day, config.reward, args.speed)
    if args.out:
        import pandas as pd

        rows = [{"service_day": r.service_day, "day_id": r.day_id, **r.kpis,
                 **{f"decisions_{arm}": n for arm, n in r.arms.items()},
                 **{f"policy_{p}": n for p, n in r.policies.items()}} for r in results]  # fmt: skip
        atomic_write_csv(pd.DataFrame(rows), args.out)
        print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rl_lib.serving.demo import run_demo

    return run_demo(args.model, args.experiment, args.days, args.speed, args.state_dir, args.out)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from rl_lib.serving.bench import bench_serve

    bench_serve(args.run_dir, args.days, args.clients, args.requests, args.workers)
    return 0


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the dispatch service (HTTP API, A/B arms, decision log, dashboard)")
    p.add_argument("--model", help="a DQN run dir (its best model; sha256-checked), or a model registry "
                   "folder (its production version, swapped when another is promoted)")  # fmt: skip
    p.add_argument("--watch-interval", type=positive_number, default=2.0, metavar="SECONDS",
                   help="how often a registry's production pointer is read (default 2)")  # fmt: skip
    p.add_argument("--experiment", help="experiments/*.yaml (default: the model decides everything)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="auto: ONNX FP32 when exported from this model (exact), else torch")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=tcp_port, default=8000)
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="uvicorn worker processes (about one per core; BENCHMARKS.md)",
    )
    p.add_argument("--redis-url", help="default: RL_LIB_REDIS_URL (password: RL_LIB_REDIS_PASSWORD)")
    p.add_argument("--redis-password-file")
    p.add_argument("--token-file", help="bearer token of the write endpoints (or RL_LIB_SERVICE_TOKEN)")
    p.add_argument("--start-redis", action="store_true",
                   help="run a local redis-server (and a token file) when none is configured")  # fmt: skip
    p.add_argument("--state-dir", default="results/serve", help="spool, local Redis data, token")
    p.add_argument("--feedback-settings", metavar="FILE",
                   help="the feedback loop's settings YAML: its figures on the dashboard")  # fmt: skip
    p.set_defaults(func=cmd_serve)
    serve_sub = p.add_subparsers(dest="serve_command")

    s = serve_sub.add_parser("simulate", help="play test days against a running service over HTTP")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--days", type=positive_int, default=5)
    s.add_argument("--split", choices=("validation", "test"), default="test")
    s.add_argument("--speed", type=positive_number_or_max, default=600.0,
                   help="simulated minutes per real minute (default 600), or 'max'")  # fmt: skip
    s.add_argument("--first-day", default="2027-01-04", help="service date of the first day")
    s.add_argument("--config", help="experiment YAML of the scenario (default: built-in)")
    s.add_argument("--token-file", help="default: RL_LIB_SERVICE_TOKEN")
    s.add_argument("--out", help="CSV of the simulator's own KPIs per day")
    s.set_defaults(func=cmd_simulate)

    s = serve_sub.add_parser(
        "demo", help="redis + service + simulator, then the A/B report (make serve-demo)"
    )
    s.add_argument("--model", required=True, help="a DQN run dir")
    s.add_argument("--experiment", default="experiments/ab.yaml")
    s.add_argument("--days", type=positive_int, default=5, help="test days played (default 5)")
    s.add_argument(
        "--speed",
        type=positive_number_or_max,
        default=None,
        help="simulated minutes per real minute (default max)",
    )
    s.add_argument("--state-dir", default="results/serve-demo")
    s.add_argument("--out", default="results/serve-demo/ab", help="folder of the A/B report's CSVs")
    s.set_defaults(func=cmd_demo)


def add_bench_serve_command(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("serve", help="decisions/s and latency over HTTP next to the in-process Dispatcher")
    p.add_argument("run_dir")
    p.add_argument("--days", type=positive_int, default=2, help="test days whose requests are replayed")
    p.add_argument("--clients", type=positive_int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=positive_int, default=2000, help="requests per client count")
    p.add_argument("--workers", type=positive_int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_bench_serve)
