"""The policies that decide in the service: the trained model (with its fallback) and the controls.

Every policy sees the :class:`~rl_lib.serving.fleet_state.FleetState` of a request and returns a
vehicle index or ``K`` (refuse) **among the feasible actions only**: the model's Q-values are masked
(:func:`rl_lib.inference.masked_argmax`), the heuristics are the baselines' own rules
(:mod:`rl_lib.policies.heuristics`), which never choose an infeasible vehicle.

:class:`ModelPolicy` loads a DQN run's best model only after its sha256 matches the run's record
(``best_model/best_model.json``); it prefers the exported ONNX FP32 graph (100 % agreement with
PyTorch, faster) when that graph was exported from this very zip, else PyTorch; a fleet network also
decides fleets of other sizes than the graph's, through PyTorch. When the model is
missing, corrupt, of the wrong size for the fleet, or raises, greedy insertion decides instead and
the decision says ``policy: fallback`` with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl_lib.envs.core import RewardWeights
from rl_lib.errors import UserError
from rl_lib.experiment import ExperimentConfig
from rl_lib.inference import Dispatcher, masked_argmax, onnx_path
from rl_lib.io import sha256_file
from rl_lib.policies.heuristics import REFUSE, InsertionPolicy, NearestPolicy, SequentialPolicy
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.serving.fleet_state import FleetState

CONTROLS: dict[str, SequentialPolicy] = {"insertion": InsertionPolicy(), "nearest": NearestPolicy()}
POLICIES = ("model", *CONTROLS)
FALLBACK = "fallback"


@dataclass(frozen=True)
class Choice:
    action: int  # a vehicle index, or K (refuse)
    policy: str  # "model", "fallback" or a control's name
    fallback_reason: str | None = None


def heuristic_action(name: str, state: FleetState) -> int:
    vehicle = CONTROLS[name].choose(state.core, state.insertion)
    return state.n_vehicles if vehicle == REFUSE else vehicle


@dataclass
class ModelPolicy:
    """A run's best model as a masked greedy policy, or nothing (``load_error`` says why).

    :param source: a DQN run dir, or a model registry's version folder (the same layout).
    :param backend: ``"auto"`` (ONNX FP32 when exported from this model, else torch), or a
        :data:`rl_lib.inference.BACKENDS` value.
    :param registry_version: the registry version ``source`` is (``v0002``), or None for a run dir;
        it leads :attr:`version` (``v0002:tiny-seed0@0123456789ab``), so every decision names it.
    """

    source: Path
    backend: str = "auto"
    registry_version: str | None = None
    version: str | None = None
    load_error: str | None = None
    config: ExperimentConfig = field(default_factory=ExperimentConfig)
    _dispatcher: Dispatcher | None = None
    _transfer: Dispatcher | None = None  # torch, for fleets of another size than the ONNX graph's

    @classmethod
    def load(
        cls, source: str | Path, backend: str = "auto", registry_version: str | None = None
    ) -> ModelPolicy:
        policy = cls(Path(source), backend, registry_version)
        try:
            policy._load()
        except Exception as exc:  # a service that cannot load its model still decides (fallback)
            policy._dispatcher, policy.load_error = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
        return policy

    def _load(self) -> None:
        from rl_lib.config import from_dict
        from rl_lib.training.run_record import read_metadata

        meta = read_metadata(self.source)
        self.config = from_dict(ExperimentConfig, meta["config"], source=f"{self.source} metadata")
        model = self.source / "best_model" / "best_model.zip"
        record_path = model.parent / "best_model.json"
        if not model.is_file():
            raise UserError(f"{model}: missing")
        if not record_path.is_file():
            raise UserError(f"{record_path}: missing, so {model.name} cannot be verified")
        expected = json.loads(record_path.read_text()).get("sha256")
        digest = sha256_file(model)
        if digest != expected:
            raise UserError(f"{model}: sha256 {digest[:12]} does not match its record ({str(expected)[:12]})")
        backend = self.backend
        if backend == "auto":
            backend = "onnx" if _onnx_exported_from(self.source, digest) else "torch"
        self._dispatcher = Dispatcher(self.source, backend)
        if backend != "torch":
            torch_dispatcher = Dispatcher(self.source, "torch")
            if torch_dispatcher.any_fleet_size:  # a fleet network reads any fleet size; ONNX one
                self._transfer = torch_dispatcher
        self.backend = backend
        model_id = f"{meta['name']}-seed{meta['seed']}@{digest[:12]}"
        self.version = f"{self.registry_version}:{model_id}" if self.registry_version else model_id

    @property
    def ready(self) -> bool:
        return self._dispatcher is not None

    @property
    def scenario(self) -> ScenarioConfig:
        return self.config.scenario

    @property
    def weights(self) -> RewardWeights:
        return self.config.reward

    def accepts_fleet(self, n_vehicles: int) -> bool:
        return self._dispatcher_for(n_vehicles) is not None or self._dispatcher is None

    def fleet_sizes(self) -> str:
        d = self._dispatcher
        if d is None or d.any_fleet_size or self._transfer is not None:
            return "any size"
        return f"{d.n_actions - 1} vehicles"

    def _dispatcher_for(self, n_vehicles: int) -> Dispatcher | None:
        """The exported graph for its own fleet size, the torch fleet network for any other."""
        d = self._dispatcher
        if d is not None and (d.any_fleet_size or d.n_actions == n_vehicles + 1):
            return d
        return self._transfer

    def decide(self, states: list[FleetState]) -> list[Choice]:
        """Masked greedy actions for ``states`` (one network call per fleet size); insertion
        decides, marked ``fallback``, whenever the model cannot."""
        if self._dispatcher is None:
            return [self._fallback(s, f"model not loaded: {self.load_error}") for s in states]
        choices: list[Choice | None] = [None] * len(states)
        by_size: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            by_size.setdefault(s.n_vehicles, []).append(i)
        for size, rows in by_size.items():
            dispatcher = self._dispatcher_for(size)
            if dispatcher is None:
                for i in rows:
                    choices[i] = self._fallback(states[i], f"the model takes {self.fleet_sizes()}")
                continue
            obs = np.stack([states[i].observation for i in rows])
            masks = np.stack([states[i].mask for i in rows])
            try:
                q = dispatcher.q_values(obs)
                if not np.isfinite(q).all():
                    raise FloatingPointError("non-finite Q-values")
                actions = masked_argmax(q, masks)
            except Exception as exc:  # the model failed: this batch falls back, the service goes on
                reason = f"model failed: {type(exc).__name__}: {exc}".splitlines()[0]
                for i in rows:
                    choices[i] = self._fallback(states[i], reason)
                continue
            for i, action in zip(rows, actions, strict=True):
                choices[i] = Choice(int(action), "model")
        return choices  # type: ignore[return-value]

    @staticmethod
    def _fallback(state: FleetState, reason: str) -> Choice:
        return Choice(heuristic_action("insertion", state), FALLBACK, reason)


def _onnx_exported_from(run_dir: Path, digest: str) -> bool:
    """True when ``inference/best_q_fp32.onnx`` exists and was exported from the zip of ``digest``."""
    path = onnx_path(run_dir, "best")
    if not path.is_file():
        return False
    try:
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    except Exception:  # an unreadable graph is not used; torch decides
        return False
    return props.get("source_sha256") == digest
