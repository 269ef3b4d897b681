"""The feedback loop's settings: one validated object, from a YAML file and the environment.

:func:`load_settings` reads the YAML file named by ``RL_LIB_FEEDBACK_SETTINGS`` (or given), then one
environment variable per field, ``RL_LIB_FEEDBACK_<FIELD>`` (a YAML value:
``RL_LIB_FEEDBACK_COLLECT_PERIOD_S=60``, ``RL_LIB_FEEDBACK_CONFIG=null``), and validates the lot as
:mod:`rl_lib.config` does (unknown keys, types, bounds: one line naming the key). The Celery worker,
beat, the service's dashboard and the demo all read the same object.

Secrets never sit in the settings: the Redis password comes from ``RL_LIB_REDIS_PASSWORD`` only (and
the ACL user from ``RL_LIB_REDIS_USERNAME``), read when a connection is made; a ``redis_url`` that
carries a password is refused, as it would end up in process listings and logs.

The loop's own Redis keys live beside the service's streams, under ``{stream_prefix}:feedback:``
(:meth:`FeedbackSettings.key`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from rl_lib.config import bounded, from_dict, load_yaml
from rl_lib.errors import ConfigError

SETTINGS_ENV = "RL_LIB_FEEDBACK_SETTINGS"
ENV_PREFIX = "RL_LIB_FEEDBACK_"
PASSWORD_ENV, USERNAME_ENV = "RL_LIB_REDIS_PASSWORD", "RL_LIB_REDIS_USERNAME"
REDIS_SCHEMES = ("redis", "rediss")  # Celery's broker and backend speak TCP (or TLS) to Redis

#: A fine-tune starts from a trained model: little exploration, learning from the first step.
DEFAULT_OVERRIDES = {"training.dqn.exploration_initial_eps": 0.2, "training.dqn.learning_starts": 0}


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
    """Everything the loop is configured with (periods and limits in seconds unless named otherwise).

    :param redis_url: the Redis of the service's streams, also Celery's broker and result backend
        (``redis://host:port/db`` or ``rediss://``; no password in it).
    :param stream_prefix: the service's stream prefix (``{prefix}:decisions``, ``{prefix}:outcomes``).
    :param group: the collector's consumer group.
    :param consumer: the collector's name in the group (default: the host name; keep it stable, as a
        pass reads its own pending entries).
    :param registry: the model registry folder.
    :param store: the experience store's root (transitions under ``{store}/experience/``).
    :param work_dir: where the retrain run dirs go (``{work_dir}/{run name}/``).
    :param config: an experiment YAML whose scenario gives the gate's synthetic test days and the fleet
        of its replayed days, and whose reward weights price the collected transitions (default: the
        production model's own config).
    :param region: the region to learn from and replay (needed when the log holds several).
    :param collect_period_s: beat's period of ``collect`` (hourly).
    :param retrain_period_s: beat's period of ``retrain`` (daily).
    :param collect_batch: entries read per stream and call.
    :param collect_pause_s: seconds between a pass's pages (a rate limit on Redis and the store).
    :param horizon_min: minutes after which a decision without outcome is recorded as ``no_outcome`` and
        a (service day, region) without new decisions is closed.
    :param claim_idle_s: idle time after which the pending entries of another consumer are taken over
        (default: twice the collect period: a live collector's entries are idle between its passes).
    :param collect_time_limit_s: hard time limit of a ``collect`` task.
    :param window_days: logged service days a retrain learns from (the newest ones not held out).
    :param retrain_budget_steps: env steps of a retrain.
    :param retrain_wall_s: wall-time budget of a retrain's training (it stops cleanly, checkpointed).
    :param retrain_time_limit_s: hard time limit of a ``retrain`` task: training, gate and registering.
    :param retrain_overrides: dotted-key overrides of the parent's config for the retrain.
    :param simulated_days: training days of the retrain's fitted scenario (default: the parent's).
    :param gate_log_days: the newest logged days held out for the gate, replayed from their bookings
        (never all of them: at least one day is left to learn from).
    :param gate_test_days: synthetic test days of the scenario the gate plays too.
    :param gate_min_days: fewest days the gate compares before it may promote.
    :param margin_completion: the gate's non-inferiority margin on the completion rate.
    :param margin_on_time: the gate's non-inferiority margin on the on-time rate.
    :param gate_resamples: bootstrap replicates of the gate's intervals.
    :param visibility_timeout_s: the broker's visibility timeout: an unacknowledged task goes to another
        worker after it. Longer than either task's time limit, so a task is never delivered again while
        it may still be running.
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    stream_prefix: str = "rl_lib"
    group: str = "feedback"
    consumer: str | None = None
    registry: str = "results/feedback/registry"
    store: str = "results/feedback"
    work_dir: str = "results/feedback/retrain"
    config: str | None = None
    region: str | None = None
    collect_period_s: float = bounded(3600.0, min=0.1)
    retrain_period_s: float = bounded(86400.0, min=0.1)
    collect_batch: int = bounded(500, min=1)
    collect_pause_s: float = bounded(0.0, min=0.0)
    horizon_min: float = bounded(360.0, min=0.0)
    claim_idle_s: float | None = bounded(None, min=0.001)
    collect_time_limit_s: float = bounded(1800.0, min=1.0)
    window_days: int = bounded(7, min=1)
    retrain_budget_steps: int = bounded(20_000, min=1)
    retrain_wall_s: float = bounded(3600.0, min=1.0)
    retrain_time_limit_s: float = bounded(7200.0, min=1.0)
    retrain_overrides: dict[str, Any] = bounded(DEFAULT_OVERRIDES)
    simulated_days: int | None = bounded(None, min=1)
    gate_log_days: int = bounded(2, min=0)
    gate_test_days: int = bounded(8, min=0)
    gate_min_days: int = bounded(5, min=1)
    margin_completion: float = bounded(0.01, min=0.0, max=1.0)
    margin_on_time: float = bounded(0.01, min=0.0, max=1.0)
    gate_resamples: int = bounded(2000, min=100)
    visibility_timeout_s: float = bounded(10_800.0, min=1.0)

    def __post_init__(self) -> None:
        parts = urlsplit(self.redis_url)
        if parts.scheme not in REDIS_SCHEMES or not parts.hostname:
            raise ValueError(f"redis_url {self.redis_url!r}: expected redis://host:port/db or rediss://...")
        if parts.password:
            raise ValueError(f"redis_url carries a password: pass it in {PASSWORD_ENV} instead")
        if not isinstance(self.retrain_overrides, Mapping) or not all(
            isinstance(k, str) for k in self.retrain_overrides
        ):
            raise ValueError("retrain_overrides: expected a mapping of dotted config keys to values")
        if self.retrain_wall_s >= self.retrain_time_limit_s:
            raise ValueError(
                f"retrain_wall_s ({self.retrain_wall_s:g}) must be below retrain_time_limit_s "
                f"({self.retrain_time_limit_s:g}): the gate and the registry need time too"
            )
        longest = max(self.collect_time_limit_s, self.retrain_time_limit_s)
        if self.visibility_timeout_s <= longest:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s:g}) must exceed the longest "
                f"task time limit ({longest:g}), or a running task would be delivered again"
            )
        if self.gate_log_days + self.gate_test_days < 1:
            raise ValueError("gate_log_days + gate_test_days: the gate needs at least one held-out day")

    # ------------------------------------------------------------------ derived
    @property
    def consumer_name(self) -> str:
        return self.consumer or socket.gethostname()

    @property
    def claim_idle_ms(self) -> int:
        return int(1000 * (self.claim_idle_s if self.claim_idle_s is not None else 2 * self.collect_period_s))

    def key(self, name: str) -> str:
        """A Redis key of the loop (``{prefix}:feedback:{name}``)."""
        return f"{self.stream_prefix}:feedback:{name}"

    def celery_url(self, environ: Mapping[str, str] = os.environ) -> str:
        """``redis_url`` with the credentials of the environment, for Celery (kept in memory only)."""
        password, username = environ.get(PASSWORD_ENV), environ.get(USERNAME_ENV)
        if not password:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{quote(username or '', safe='')}:{quote(password, safe='')}@{host}"
        netloc += f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=netloc))

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] = os.environ
) -> FeedbackSettings:
    """The settings of ``path`` (default: the file named by ``RL_LIB_FEEDBACK_SETTINGS``, else the
    defaults), each field overridden by ``RL_LIB_FEEDBACK_<FIELD>`` when set; :class:`ConfigError`
    names what is wrong."""
    path = path or environ.get(SETTINGS_ENV) or None
    data = load_yaml(path) if path else {}
    sources = [str(path)] if path else []
    for field in dataclasses.fields(FeedbackSettings):
        name = ENV_PREFIX + field.name.upper()
        if name in environ:
            try:
                data[field.name] = yaml.safe_load(environ[name])
            except yaml.YAMLError:
                raise ConfigError(f"{name}: not a YAML value: {environ[name]!r}") from None
            sources.append(name)
    return from_dict(FeedbackSettings, data, source=" + ".join(sources) or "feedback settings")


def redis_client(settings: FeedbackSettings, environ: Mapping[str, str] = os.environ):
    """A redis-py client of the loop's Redis (text replies; credentials from the environment)."""
    import redis

    return redis.Redis.from_url(
        settings.redis_url,
        username=environ.get(USERNAME_ENV),
        password=environ.get(PASSWORD_ENV),
        decode_responses=True,
        socket_timeout=60.0,
        socket_connect_timeout=5.0,
    )


def hour_bucket(unix: float) -> str:
    """The field of the loop's hourly counters for a time: its UTC hour, ``YYYY-MM-DDTHH``."""
    return time.strftime("%Y-%m-%dT%H", time.gmtime(unix))
