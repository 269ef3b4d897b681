"""The DQN search space: which hyperparameters the tuner samples, and how each maps to the config.

A space is a mapping ``name -> distribution``, in YAML (``configs/dqn_space.yaml`` is the default)::

    learning_rate: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
    one_minus_gamma: {type: float, low: 1.0e-3, high: 0.1, log: true}   # gamma = 1 - value
    batch_size: {type: categorical, choices: [32, 64, 128, 256]}
    net_width: {type: categorical, choices: [128, 256, 512]}            # first hidden layer
    net_depth: {type: int, low: 1, high: 3}                             # each next layer halves

Distributions map to Optuna's ``suggest_float(log=...)``, ``suggest_int(log=...)`` and
``suggest_categorical``. Names are the fields of :class:`rl_lib.experiment.DQNConfig` plus three
derived ones: ``one_minus_gamma`` (gamma near 1 is sampled on a log scale of its distance to 1),
``net_width`` and ``net_depth`` (``net_arch = [width, width / 2, ...]``, ``depth`` layers: width 512
and depth 3 give the default 512-256-128). A parameter left out keeps the base config's value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from rl_lib.config import load_yaml
from rl_lib.errors import UserError
from rl_lib.experiment import DQNConfig

#: The space of configs/dqn_space.yaml (a test keeps them equal).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
    "one_minus_gamma": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
    # The fleet network's knobs (network: fleet is the default; net_width / net_depth tune the MLP).
    "fleet_hidden": {"type": "categorical", "choices": [32, 64, 128]},
    "dueling": {"type": "categorical", "choices": [True, False]},
    "reward_scale": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    "n_steps": {"type": "int", "low": 1, "high": 5},
    "discount_tau_min": {"type": "float", "low": 1.0, "high": 30.0, "log": True},
    "exploration_fraction": {"type": "float", "low": 0.05, "high": 0.5},
    "exploration_final_eps": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
    "target_update_interval": {"type": "int", "low": 100, "high": 5000, "log": True},
    "train_freq": {"type": "categorical", "choices": [2, 4, 8]},
    "gradient_steps": {"type": "categorical", "choices": [1, 2]},
}

DERIVED = ("one_minus_gamma", "net_width", "net_depth")
NOT_TUNABLE = ("net_arch", "gamma", "optimize_memory_usage")  # sampled through the derived names
TYPES = ("float", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated search space; :meth:`suggest` samples it, :meth:`to_dqn` maps a sample to DQN fields."""

    spec: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> SearchSpace:
        """The space of a YAML file, or :data:`DEFAULT_SPACE` when ``path`` is None."""
        if path is None:
            return cls.from_dict(DEFAULT_SPACE, "the default search space")
        return cls.from_dict(load_yaml(path), str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "search space") -> SearchSpace:
        if not isinstance(data, Mapping) or not data:
            raise UserError(f"{source}: expected a non-empty mapping of parameter name -> distribution")
        fields = {f.name for f in dataclasses.fields(DQNConfig)}
        tunable = sorted((fields - set(NOT_TUNABLE)) | set(DERIVED))
        for name, dist in data.items():
            where = f"{source}: parameter {name!r}"
            if name not in tunable:
                raise UserError(f"{where} is not tunable; choose among {', '.join(tunable)}")
            _check_distribution(where, dist)
        if ("net_width" in data) != ("net_depth" in data):
            raise UserError(f"{source}: net_width and net_depth go together (they build net_arch)")
        space = cls({str(k): dict(v) for k, v in data.items()})
        space._check_bounds(source)
        return space

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter of the space with the trial's sampler."""
        params: dict[str, Any] = {}
        for name, dist in self.spec.items():
            kind = dist["type"]
            if kind == "categorical":
                params[name] = trial.suggest_categorical(name, list(dist["choices"]))
            elif kind == "int":
                params[name] = trial.suggest_int(name, dist["low"], dist["high"], log=dist.get("log", False))
            else:
                params[name] = trial.suggest_float(
                    name, dist["low"], dist["high"], log=dist.get("log", False)
                )
        return params

    def to_dqn(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The DQNConfig fields a sample sets (derived names resolved)."""
        fields = {k: v for k, v in params.items() if k not in DERIVED}
        if "one_minus_gamma" in params:
            fields["gamma"] = 1.0 - float(params["one_minus_gamma"])
        if "net_width" in params:
            width, depth = int(params["net_width"]), int(params["net_depth"])
            fields["net_arch"] = [max(width // 2**i, 1) for i in range(depth)]
        return fields

    def _check_bounds(self, source: str) -> None:
        """Every corner of the space must make a valid DQNConfig (bounds, types)."""
        from rl_lib.config import from_dict

        corners = [{}, {}]
        for name, dist in self.spec.items():
            values = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
            corners[0][name], corners[1][name] = min(values, key=_order), max(values, key=_order)
        for corner in corners:
            try:
                from_dict(DQNConfig, self.to_dqn(corner), where="training.dqn")
            except UserError as exc:
                raise UserError(f"{source}: a bound of the space is not a valid DQN setting: {exc}") from None


def _order(value: Any) -> Any:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def _check_distribution(where: str, dist: Any) -> None:
    if not isinstance(dist, Mapping) or dist.get("type") not in TYPES:
        raise UserError(f"{where}: expected a mapping with type one of {', '.join(TYPES)}")
    kind = dist["type"]
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
    unknown = set(dist) - allowed
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a {kind} takes {sorted(allowed)}"
        )
    if kind == "categorical":
        choices = dist.get("choices")
        if not isinstance(choices, list) or not choices or len(set(map(repr, choices))) != len(choices):
            raise UserError(f"{where}: choices must be a non-empty list of distinct values")
        if not all(isinstance(c, (int, float, str, bool)) for c in choices):
            raise UserError(f"{where}: choices must be numbers, strings or booleans")
        return
    low, high, log = dist.get("low"), dist.get("high"), dist.get("log", False)
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool) or not math.isfinite(value):
            raise UserError(f"{where}: {key} must be a finite {'integer' if kind == 'int' else 'number'}")
    if not low < high:
        raise UserError(f"{where}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise UserError(f"{where}: a log-scale range needs low > 0, got {low}")
