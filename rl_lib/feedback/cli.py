"""The feedback loop's commands, registered by :func:`add_registry_command` and :func:`add_feedback_command`.

``rl-lib registry list | show | register | promote | rollback``: the model registry
(:mod:`rl_lib.serving.registry`). Every sub-command takes ``--registry DIR`` (default
``results/registry``). Bad input (an unknown or corrupt version, a rollback with nothing to roll back
to) is one line and exit code 2, with nothing written.

``rl-lib feedback run``: the loop's Celery worker and beat on this machine (``make feedback``), with
a local redis-server when asked; ``rl-lib feedback demo``: the loop end to end on a compressed clock
(:mod:`rl_lib.feedback.demo`, ``make feedback-demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator

from rl_lib.argtypes import positive_int, positive_number
from rl_lib.errors import UserError

DEFAULT_REGISTRY = "results/registry"


def _registry(args: argparse.Namespace):
    from rl_lib.serving.registry import ModelRegistry

    return ModelRegistry(args.registry)


def cmd_list(args: argparse.Namespace) -> int:
    rows = _registry(args).list()
    if not rows:
        print(f"{args.registry}: no version registered yet (rl-lib registry register RUN_DIR)")
        return 0
    for row in rows:
        state = "production" if row["production"] else "ok"
        if row["problem"] is not None:
            state = f"CORRUPT{' (production)' if row['production'] else ''}: {row['problem']}"
            print(f"{row['version']}  {state}")
            continue
        parent = row["parent"] or "-"
        print(f"{row['version']}  {state:<10}  {row['created']}  {row['model']}  parent {parent}  "
              f"from {row['source_run_dir']}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(_registry(args).show(args.version), indent=2, default=str))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    version = _registry(args).register(args.run_dir, parent=args.parent)
    print(f"registered {version} from {args.run_dir}" + (f" (parent {args.parent})" if args.parent else ""))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    record = _registry(args).promote(args.version, args.reason)
    print(f"promoted {args.version} (was {record['from'] or 'none'})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    record = _registry(args).rollback(args.reason)
    print(f"rolled back to {record['version']} (was {record['from']})")
    return 0


def add_registry_command(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=DEFAULT_REGISTRY, metavar="DIR",
                        help=f"the registry folder (default {DEFAULT_REGISTRY})")  # fmt: skip
    p = sub.add_parser("registry", help="the model registry: versions, the production pointer, decisions")
    registry = p.add_subparsers(dest="registry_command", required=True)

    r = registry.add_parser("list", parents=[common], help="every version; which is in production")
    r.set_defaults(func=cmd_list)

    r = registry.add_parser("show", parents=[common], help="a version's lineage, metrics, files, decisions")
    r.add_argument("version")
    r.set_defaults(func=cmd_show)

    r = registry.add_parser("register", parents=[common], help="publish a DQN run dir's best model")
    r.add_argument("run_dir")
    r.add_argument("--parent", metavar="V", help="the version it was trained from")
    r.set_defaults(func=cmd_register)

    r = registry.add_parser("promote", parents=[common], help="make a version production")
    r.add_argument("version")
    r.add_argument("--reason", default="", metavar="TEXT", help="recorded with the decision")
    r.set_defaults(func=cmd_promote)

    r = registry.add_parser("rollback", parents=[common], help="put the previous production version back")
    r.add_argument("--reason", default="", metavar="TEXT", help="recorded with the decision")
    r.set_defaults(func=cmd_rollback)


# ------------------------------------------------------------------------------------------ feedback
def cmd_run(args: argparse.Namespace) -> int:
    from rl_lib.feedback import processes
    from rl_lib.feedback.settings import SETTINGS_ENV, load_settings

    settings = load_settings(args.settings)  # a bad value is one line here, not a traceback per process
    path = args.settings or os.environ.get(SETTINGS_ENV)
    try:
        with (
            processes.exit_on_sigterm(),
            _local_redis(settings, args),
            processes.worker_and_beat(path) as running,
        ):
            print(
                f"worker (pid {running['worker'].pid}) and beat (pid {running['beat'].pid}): collect every "
                f"{settings.collect_period_s:g} s, retrain every {settings.retrain_period_s:g} s; Flower: "
                f"{SETTINGS_ENV}={path or ''} celery -A {processes.APP} flower; Ctrl-C stops",
                flush=True,
            )
            while all(p.poll() is None for p in running.values()):
                time.sleep(1.0)
            gone = ", ".join(f"{k} (exit {p.returncode})" for k, p in running.items() if p.poll() is not None)
            print(f"{gone} stopped: stopping the rest", flush=True)
            return 1
    except KeyboardInterrupt:
        print("stopping: a task killed mid-run is delivered again and resumes", flush=True)
        return 0


@contextlib.contextmanager
def _local_redis(settings, args: argparse.Namespace) -> Iterator[None]:
    """With ``--start-redis``: redis-server on the settings' 127.0.0.1 port while inside."""
    from urllib.parse import urlsplit

    from rl_lib.feedback.settings import PASSWORD_ENV
    from rl_lib.serving.redis_server import LocalRedis

    if not args.start_redis:
        yield
        return
    parts = urlsplit(settings.redis_url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise UserError(
            f"--start-redis runs redis-server on 127.0.0.1; the settings name {settings.redis_url}"
        )
    with LocalRedis(args.redis_dir, port=parts.port or 6379, password=os.environ.get(PASSWORD_ENV)) as local:
        print(f"redis-server: {local.url} (data in {args.redis_dir})", flush=True)
        yield


def cmd_demo(args: argparse.Namespace) -> int:
    from rl_lib.feedback.demo import DemoOptions, run_demo
    from rl_lib.feedback.processes import exit_on_sigterm

    with exit_on_sigterm():
        return run_demo(
            DemoOptions(
                model=args.model,
                experiment=args.experiment,
                days=args.days,
                day_seconds=args.day_seconds,
                budget_steps=args.budget_steps,
                retrain_wall_s=args.retrain_wall,
                state_dir=args.state_dir,
            )
        )


def add_feedback_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feedback",
        help="the feedback loop: Celery collects logged experience, retrains, promotes on evidence",
    )
    feedback = p.add_subparsers(dest="feedback_command", required=True)

    r = feedback.add_parser("run", help="the loop's Celery worker and beat on this machine (make feedback)")
    r.add_argument(
        "--settings",
        metavar="FILE",
        help="the loop's settings YAML (default: "
        "RL_LIB_FEEDBACK_SETTINGS, else built-in; RL_LIB_FEEDBACK_<FIELD> overrides)",
    )
    r.add_argument(
        "--start-redis", action="store_true", help="run redis-server on the settings' 127.0.0.1 port first"
    )
    r.add_argument("--redis-dir", default="results/feedback/redis", help="its data folder")
    r.set_defaults(func=cmd_run)

    d = feedback.add_parser(
        "demo",
        help="redis, worker, beat, the service and its simulator on a compressed "
        "clock; then lineage, gate decisions, A/B report (make feedback-demo)",
    )
    d.add_argument("--model", metavar="RUN_DIR", help="a DQN run dir: v0001 when the registry has none")
    d.add_argument("--experiment", help="an A/B experiment YAML for the service (default: the model only)")
    d.add_argument("--days", type=positive_int, default=7, help="simulated service days (default 7)")
    d.add_argument(
        "--day-seconds", type=positive_number, default=30.0, help="wall seconds per day (default 30)"
    )
    d.add_argument(
        "--budget-steps", type=positive_int, default=2000, help="env steps per retrain (default 2000)"
    )
    d.add_argument(
        "--retrain-wall",
        type=positive_number,
        default=60.0,
        metavar="SECONDS",
        help="wall-time budget of a retrain's training (default 60)",
    )
    d.add_argument(
        "--state-dir",
        default="results/feedback-demo",
        help="registry, store, retrain runs, Redis data and logs; reused by the next run",
    )
    d.set_defaults(func=cmd_demo)
