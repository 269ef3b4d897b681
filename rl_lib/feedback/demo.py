"""``rl-lib feedback demo`` (``make feedback-demo``): the whole loop on this machine, on a compressed clock.

Every piece is the real one, each its own process: a private redis-server, a Celery worker and beat
(:mod:`rl_lib.feedback.tasks`), the dispatch service (``rl-lib serve --model REGISTRY``, which follows
the registry's production pointer and hot-swaps each promotion) and the production simulator
(:func:`rl_lib.serving.simulator.play_day`) playing one service day per ``day_seconds`` of wall time.
The loop's clock is compressed with it: beat collects 24 times a "day" and retrains once a "day", the
collector's horizon is a quarter of a "day".

- **From nothing.** A registry without production registers and promotes ``--model RUN_DIR`` as
  v0001. A state folder used before continues: its registry, store, streams and calendar.
- **The world.** The days played are *production days* of the first version's scenario: day ids no
  split holds (:data:`PRODUCTION_DAY_OFFSET` + n), so no model trained, was selected or is gated on
  them; the service dates follow each other. The same scenario gives the gate its synthetic test days
  and its reward weights price the transitions (the loop's ``config``).
- **The end.** After the last day it waits for the collector to take it in and for the retrain after
  it, stops every process, and prints per simulated day the transitions collected and production's
  reward, each retrain run (wall time, steps, verdict), each gate decision with its intervals, the
  lineage of the production model, and the A/B report when the experiment has two arms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from rl_lib.errors import UserError

PRODUCTION_DAY_OFFSET = 3_000_000  # above every split (each starts at a fixed offset, 1 000 000 days wide)
FIRST_SERVICE_DAY = "2027-01-04"
GATE_ALLOWANCE_S = 120.0  # of a retrain task's time limit, beyond its training budget: gate and register
STOP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (defaults: a few minutes on a laptop).

    :param model: a DQN run dir, registered as v0001 when the registry has no production version.
    :param experiment: an A/B experiment YAML for the service (default: the model decides everything).
    :param days: simulated service days played.
    :param day_seconds: wall seconds per simulated day.
    :param budget_steps: env steps of each retrain.
    :param retrain_wall_s: wall-time budget of each retrain's training. Longer than a day, a retrain spans
        days: beat's next one finds the lock held and is skipped.
    :param state_dir: the demo's folder (registry, store, retrain runs, Redis data, logs).
    """

    model: str | None = None
    experiment: str | None = None
    days: int = 7
    day_seconds: float = 30.0
    budget_steps: int = 2000
    retrain_wall_s: float = 60.0
    state_dir: str = "results/feedback-demo"


def run_demo(options: DemoOptions, out: Callable[[str], None] = print) -> int:
    """Run the demo (module docstring); returns 0, or the A/B report's failure as 1."""
    import redis

    from rl_lib.config import to_dict
    from rl_lib.feedback import processes
    from rl_lib.feedback.store import ExperienceStore
    from rl_lib.serving.demo import wait_ready
    from rl_lib.serving.redis_server import LocalRedis, free_port
    from rl_lib.serving.registry import ModelRegistry
    from rl_lib.serving.server import ensure_token_file
    from rl_lib.serving.simulator import http_poster

    state = Path(options.state_dir)
    registry = ModelRegistry(state / "registry")
    bootstrap(registry, options.model, out)
    world = _root_config(registry)
    (state / "world.yaml").write_text(yaml.safe_dump(to_dict(world), sort_keys=False))
    store = ExperienceStore(state)
    played = store.days()
    first = (
        (dt.date.fromisoformat(played[-1]) + dt.timedelta(days=1))
        if played
        else dt.date.fromisoformat(FIRST_SERVICE_DAY)
    )
    token = ensure_token_file(state / "token").read_text().strip()
    url = f"http://127.0.0.1:{free_port()}"
    with LocalRedis(state / "redis", port=0) as redis_server:
        settings = demo_settings(options, state, redis_server.url)
        settings_file = state / "feedback.yaml"
        settings_file.write_text(settings.to_yaml())
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        env = {**os.environ, "RL_LIB_SERVICE_TOKEN": token, "RL_LIB_REDIS_URL": redis_server.url}
        logs = state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # A retrain beat starts after the last one waited for is killed at the end: it resumes next time.
        with processes.worker_and_beat(settings_file, logs, env, stop_timeout_s=STOP_TIMEOUT_S):
            service = _start_service(registry.root, options.experiment, settings_file, url, state, env, logs)
            try:
                try:
                    wait_ready(url, service)
                except UserError as exc:
                    raise UserError(f"{exc} (its output: {logs / 'service.log'})") from None
                out(f"service {url}/dashboard, redis {redis_server.url}, worker and beat logs in {logs}")
                days = _play(world, first, options, http_poster(url, token), out)
                out("waiting for the collector to take in the last day, then for the retrain after it ...")
                collected_at = _wait_collected(client, settings, store, days[-1]["service_day"])
                _wait_retrain(client, settings, collected_at)
            finally:
                service.terminate()
                service.wait(timeout=30)
        status = report(registry, store, client, settings, days, out)
        if options.experiment is not None:
            status = max(status, _ab_report(options.experiment, client, settings, world, state, out))
    return status


def bootstrap(registry, model: str | None, out: Callable[[str], None] = print) -> str:
    """The registry's production version; a registry without one gets ``model`` as its first."""
    production = registry.production()
    if production is not None:
        if model is not None:
            out(f"{registry.root}: {production} is in production already; --model {model} is not used")
        return production
    if registry.versions():
        raise UserError(f"{registry.root} holds versions but none in production: rl-lib registry promote V")
    if model is None:
        raise UserError(f"{registry.root} is empty: give --model RUN_DIR, registered and promoted as v0001")
    version = registry.register(model)
    registry.promote(version, reason="the feedback demo's starting model")
    out(f"registered {model} as {version} and promoted it")
    return version


def demo_settings(options: DemoOptions, state: Path, redis_url: str):
    """The loop's settings on the demo's compressed clock."""
    from rl_lib.feedback.settings import FeedbackSettings

    day, wall = options.day_seconds, options.retrain_wall_s
    limit = wall + GATE_ALLOWANCE_S
    return FeedbackSettings(
        redis_url=redis_url,
        group="feedback",
        consumer="demo",
        registry=str(state / "registry"),
        store=str(state),
        work_dir=str(state / "retrain"),
        config=str(state / "world.yaml"),
        collect_period_s=max(1.0, day / 24),
        retrain_period_s=day,
        horizon_min=day / 4 / 60,
        collect_time_limit_s=max(30.0, day),
        window_days=7,
        retrain_budget_steps=options.budget_steps,
        retrain_wall_s=wall,
        retrain_time_limit_s=limit,
        gate_log_days=1,
        gate_test_days=8,
        visibility_timeout_s=max(limit, day) + 60.0,
    )


def _root_config(registry):
    """The experiment config of the lineage's first version: the world the days come from."""
    from rl_lib.config import from_dict
    from rl_lib.experiment import ExperimentConfig
    from rl_lib.feedback.status import lineage
    from rl_lib.training.run_record import read_metadata

    root = registry.version_dir(list(lineage(registry, registry.production()))[-1])
    return from_dict(ExperimentConfig, read_metadata(root)["config"], source=str(root))


def _start_service(
    registry_dir: Path,
    experiment: str | None,
    settings_file: Path,
    url: str,
    state: Path,
    env: dict,
    logs: Path,
) -> subprocess.Popen:
    port = url.rsplit(":", 1)[1]
    args = [
        sys.executable,
        "-m",
        "rl_lib.cli",
        "serve",
        "--model",
        str(registry_dir),
        "--port",
        port,
        "--state-dir",
        str(state / "serve"),
        "--watch-interval",
        "0.5",
        "--feedback-settings",
        str(settings_file),
    ]
    if experiment is not None:
        args += ["--experiment", experiment]
    with open(logs / "service.log", "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def _play(world, first: dt.date, options: DemoOptions, post, out: Callable[[str], None]) -> list[dict]:
    """Play the production days, one per ``day_seconds``; one row per day."""
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.simulator import play_day

    scenario = SyntheticScenario(world.scenario)
    speed = (world.scenario.day_end_min - world.scenario.day_start_min) / (options.day_seconds / 60.0)
    offset = (first - dt.date.fromisoformat(FIRST_SERVICE_DAY)).days
    rows = []
    for i in range(options.days):
        service_day = (first + dt.timedelta(days=i)).isoformat()
        day = scenario.make_day(PRODUCTION_DAY_OFFSET + offset + i)
        versions: Counter[str] = Counter()
        started = time.monotonic()
        result = play_day(day, _counting(post, versions), service_day, world.reward, speed)
        k = result.kpis
        rows.append(
            {
                "service_day": service_day,
                "day_id": day.day_id,
                "bookings": day.n_bookings,
                "reward": k["reward"],
                "completion_rate": k["completion_rate"],
                "on_time_rate": k["on_time_rate"],
                "deciders": dict(versions),
            }
        )
        out(
            f"{service_day}: {day.n_bookings} bookings in {time.monotonic() - started:.0f} s, reward "
            f"{k['reward']:.1f}, completion {k['completion_rate']:.3f}, decided by {dict(versions)}"
        )
    return rows


def _counting(post, versions: Counter):
    """``post``, counting the decisions by the model version (or policy) that decided them."""

    def counted(path: str, body: dict) -> dict:
        answer = post(path, body)
        if path == "/v1/decisions":
            versions[answer["model_version"] or answer["policy"]] += 1
        return answer

    return counted


def _wait_collected(client, settings, store, last_day: str) -> float:
    """Wait until the collector holds nothing pending and has taken in ``last_day``; returns when."""
    deadline = time.monotonic() + settings.horizon_min * 60 + 10 * settings.collect_period_s + 60
    group = settings.group
    while time.monotonic() < deadline:
        pending = sum(
            _pending(client, f"{settings.stream_prefix}:{s}", group) for s in ("decisions", "outcomes")
        )
        if pending == 0 and store.count(days=[last_day]) > 0:
            return time.time()
        time.sleep(0.5)
    raise UserError(f"the collector did not take in {last_day} in time; see the worker log")


def _pending(client, stream: str, group: str) -> int:
    groups = {g["name"]: g for g in client.xinfo_groups(stream)} if client.exists(stream) else {}
    found = groups.get(group)
    return int(found["pending"]) + int(found.get("lag") or 0) if found else 1


def _wait_retrain(client, settings, after_unix: float) -> None:
    """Wait for a retrain run that started after ``after_unix`` to end (beat sends one a day)."""
    deadline = time.monotonic() + settings.retrain_period_s + settings.retrain_time_limit_s + 60
    while time.monotonic() < deadline:
        runs = [json.loads(r) for r in client.lrange(settings.key("retrain_runs"), 0, -1)]
        if any(r.get("started_unix", 0) >= after_unix and r["status"] != "skipped" for r in runs):
            return
        time.sleep(1.0)
    raise UserError("no retrain ended after the last day in time; see the worker log")


# ------------------------------------------------------------------------------------------ report
def report(registry, store, client, settings, days: list[dict], out: Callable[[str], None] = print) -> int:
    """Print what the loop did (module docstring, the end); returns 0."""
    from rl_lib.feedback.status import lineage

    out("\nper simulated day: transitions collected, production's reward")
    for row in days:
        collected = store.count(days=[row["service_day"]])
        out(
            f"  {row['service_day']}  {row['bookings']:4d} bookings  {collected:4d} transitions"
            f"  reward {row['reward']:8.1f}  completion {row['completion_rate']:.3f}  on time "
            f"{row['on_time_rate']:.3f}  decided by {row['deciders']}"
        )
    runs = [json.loads(r) for r in reversed(client.lrange(settings.key("retrain_runs"), 0, -1))]
    out(f"\nretrain runs ({len(runs)})")
    for r in runs:
        what = f"  {r['time']}  {r['status']:<15}"
        if "steps" in r:
            if r.get("gate_wall_s") is not None:
                gate = f", gate {r['gate_wall_s']:.1f} s"
            elif "version" in r:
                gate = ", the same run as before: its version and gate decision stand"
            else:  # stopped before a candidate (no best model, diverged)
                gate = f": {r['message']}"
            what += (
                f" {r['parent']} -> {r.get('version', '-')}: trained on {', '.join(r['train_days'])} "
                f"({r['logged_transitions']} logged transitions), {r['steps']} / {r['target']} steps in "
                f"{r['retrain_wall_s']:.1f} s{gate}, resumed {r['resume_count']}x"
            )
        else:
            what += f" {r['message']}"
        out(what)
    gates = [d for d in registry.decisions() if d["kind"] == "gate"]
    promoted = sum(1 for d in gates if d.get("promote"))
    out(f"\ngate decisions ({len(gates)}, {promoted} promoted)")
    for d in gates:
        out(f"  #{d['sequence']} {d['version']} vs {d['parent']} on {d['n_days']} days: {d['verdict']}")
        for x in d["differences"]:
            passed = "passed" if x["passed"] else "not passed"
            out(
                f"      {x['kpi']:<16} {x['mean_diff']:+9.4f}  95 % CI [{x['ci_low']:+.4f}, "
                f"{x['ci_high']:+.4f}]  {x['test']} (> {x['threshold']:+.3f}): {passed}"
            )
        out(f"      {d['reason']}")
    production = registry.production()
    out(f"\nlineage of the production model ({production})")
    for version, row in lineage(registry, production).items():
        window = (
            f"trained on {row['first_day']} .. {row['last_day']}"
            if row["first_day"]
            else "the starting model"
        )
        out(f"  {version}  created {row['created']}  parent {row['parent'] or '-'}  {window}")
    return 0


def _ab_report(experiment: str, client, settings, world, state: Path, out: Callable[[str], None]) -> int:
    """The A/B report of the log when the experiment has a model arm and another one."""
    from rl_lib.serving.ab_report import ab_report, format_report, read_log_redis, write_report
    from rl_lib.serving.experiment import load_experiment_file

    arms = load_experiment_file(experiment).arms
    treatment = next((a.name for a in arms if a.policy == "model"), None)
    control = next((a.name for a in arms if a.name != treatment), None)
    if len(arms) != 2 or treatment is None:
        out(f"\n{experiment}: not two arms with a model arm: no A/B report")
        return 0
    try:
        result = ab_report(read_log_redis(client, settings.stream_prefix), treatment, control, world.reward)
    except UserError as exc:
        out(f"\nno A/B report: {exc}")
        return 1
    out("\n" + format_report(result))
    for path in write_report(result, state / "ab", state / "ab" / "figures", state / "ab" / "tables"):
        out(f"wrote {path}")
    return 0
