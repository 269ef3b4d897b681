"""``rl-lib ab report``: the A/B report of the dispatch service's decision log
(:mod:`rl_lib.serving.ab_report`); registered by :func:`add_ab_command`, importing pandas,
matplotlib and redis-py only when it runs.

The log comes from Redis (``--redis-url``, default ``RL_LIB_REDIS_URL``; ACL user from
``RL_LIB_REDIS_USERNAME``, password from ``RL_LIB_REDIS_PASSWORD`` only, never from the command line,
where process listings and shell histories would show it) or from spool-format files (``--log``).
"""

from __future__ import annotations

import argparse
import math
import os
from urllib.parse import urlsplit

from rl_lib.argtypes import positive_int
from rl_lib.errors import UserError

PASSWORD_ENV = "RL_LIB_REDIS_PASSWORD"
REDIS_TIMEOUT_S = 30.0  # a page of XRANGE can hold megabytes of observations


def _mde(text: str) -> tuple[str | None, float]:
    """``0.02`` (a share of the control mean, every KPI) or ``KPI=VALUE`` (absolute, that KPI)."""
    kpi, _, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0) or (kpi == "" and "=" in text):
        raise argparse.ArgumentTypeError(f"expected a share of the control mean (0.02) or KPI=VALUE "
                                         f"(reward=5) with a value > 0, got {text!r}")  # fmt: skip
    return kpi or None, number


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _read_redis(url: str, prefix: str):
    import redis

    from rl_lib.serving.ab_report import read_log_redis

    if urlsplit(url).password:
        raise UserError(f"the Redis URL carries a password: pass it in {PASSWORD_ENV} instead")
    try:
        client = redis.Redis.from_url(
            url, username=os.environ.get("RL_LIB_REDIS_USERNAME"), password=os.environ.get(PASSWORD_ENV),
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=5.0, decode_responses=True,
        )  # fmt: skip
        return read_log_redis(client, prefix, source=url)
    except (redis.RedisError, ValueError) as exc:  # ValueError: a malformed URL
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"Redis at {url}: {reason}") from None


def cmd_ab_report(args: argparse.Namespace) -> int:
    from rl_lib.experiment import load_experiment
    from rl_lib.serving.ab_report import (
        DEFAULT_MDE_SHARE,
        ab_report,
        format_report,
        read_log_files,
        report_warnings,
        write_report,
    )

    shares = [value for kpi, value in args.mde if kpi is None]
    if len(shares) > 1:
        raise UserError(f"--mde: give at most one share of the control mean, got {shares}")
    absolute = {kpi: value for kpi, value in args.mde if kpi is not None}
    weights = load_experiment(args.config).reward
    if args.log:
        log = read_log_files(args.log, args.prefix)
    elif args.redis_url or os.environ.get("RL_LIB_REDIS_URL"):
        log = _read_redis(args.redis_url or os.environ["RL_LIB_REDIS_URL"], args.prefix)
    else:
        raise UserError("no log: give --log FILE ... (spool-format JSON lines) or --redis-url URL "
                        "(or set RL_LIB_REDIS_URL)")  # fmt: skip
    share = shares[0] if shares else DEFAULT_MDE_SHARE
    report = ab_report(log, args.treatment, args.control, weights, share, absolute, args.alpha, args.power,
                       args.resamples)  # fmt: skip
    print(format_report(report))
    for warning in report_warnings(report):
        print(f"warning: {warning}")
    for path in write_report(report, args.out, args.figures_dir, args.tables_dir, args.lang):
        print(f"wrote {path}")
    return 0


def add_ab_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="A/B experiments of the dispatch service")
    ab = p.add_subparsers(dest="ab_command", required=True)
    r = ab.add_parser("report", help="treatment vs control from the decision log: per-unit KPIs, "
                      "differences with bootstrap CIs over units, power")  # fmt: skip
    source = r.add_mutually_exclusive_group()
    source.add_argument("--redis-url", metavar="URL", help="redis://, rediss:// or unix:// (default: "
                        "RL_LIB_REDIS_URL; password: RL_LIB_REDIS_PASSWORD only)")  # fmt: skip
    source.add_argument("--log", nargs="+", metavar="FILE", help="spool-format JSON-lines files instead")
    r.add_argument("--prefix", default="rl_lib", help="stream key prefix (default rl_lib)")
    r.add_argument("--treatment", default="agent", help="the treatment arm (default agent)")
    r.add_argument("--control", default="control", help="the control arm (default control)")
    r.add_argument("--config", help="experiment YAML whose reward weights price the outcomes (default: "
                   "built-in)")  # fmt: skip
    r.add_argument("--out", default="results/ab", help="folder of per_unit.csv, comparison.csv, power.csv")
    r.add_argument("--figures-dir", default="thesis_figures")
    r.add_argument("--tables-dir", default="latex/generated")
    r.add_argument("--lang", choices=("fr", "en"), default="fr")
    r.add_argument("--mde", nargs="+", type=_mde, default=[], metavar="SHARE|KPI=VALUE",
                   help="target difference of the power calculation: a share of the control mean (default "
                   "0.02) and / or absolute values per KPI, e.g. --mde 0.05 reward=3")  # fmt: skip
    r.add_argument("--alpha", type=_probability, default=0.05, help="test level (default 0.05)")
    r.add_argument("--power", type=_probability, default=0.8, help="power (default 0.8)")
    r.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap replicates (default 2000)")
    r.set_defaults(func=cmd_ab_report)
