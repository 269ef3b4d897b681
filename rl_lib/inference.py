"""Fast dispatch decisions from a trained Q-network: PyTorch, ONNX Runtime FP32 or INT8.

``export_onnx(run_dir)`` writes the run's Q-network (best or final model) as ONNX (opset 18,
torch's dynamo exporter, dynamic batch axis), checked with ``onnx.checker``. Two INT8 copies:

- ``int8=True``: dynamically quantised (``onnxruntime.quantization.quantize_dynamic``: INT8
  weights, activation scales computed at every call);
- ``int8_static=True``: statically quantised in QDQ format (``quantize_static``: INT8 weights and
  activations, activation ranges calibrated on validation days played by the model itself), with
  the least tolerant layers kept FP32, as few as reach ``min_agreement`` with the model's
  decisions on further, held-out validation days (:func:`quantise_static`).

The graphs return raw Q-values: masking happens here, in numpy, identically for every backend.

:class:`Dispatcher` takes the fleet state (a :class:`~rl_lib.envs.core.DispatchCore` on a day)
and one pending booking or a batch of them, builds each observation with the env's own code
(:func:`rl_lib.envs.dispatch_env.write_observation`), masks infeasible vehicles and returns the
chosen action (a vehicle, or ``K`` = refuse) with its Q-values. A batch decides every booking
against the same fleet state, in one network call; applying them (and resolving two bookings
that chose one vehicle) is the caller's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_lib.envs.core import DispatchCore
from rl_lib.envs.dispatch_env import (
    booking_features,
    observation_size,
    vehicle_capabilities,
    write_observation,
)
from rl_lib.errors import UserError

BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-static")
OPSET = 18
#: Each ONNX backend's file tag (``inference/{which}_q_{tag}.onnx``) and the export flag that writes it.
ONNX_FILES = {
    "onnx": ("fp32", ""),
    "onnx-int8": ("int8", " --int8"),
    "onnx-int8-static": ("int8_static", " --int8-static"),
}
#: The operators static quantisation makes INT8: the network's layers (a layer stays FP32 as a whole).
STATIC_OPS = ("MatMul", "Gemm")
#: Static activation ranges: ``onnxruntime.quantization.CalibrationMethod`` name, and per-channel weight
#: scales; the best agreement with FP32 on held-out validation states of the options measured (BENCHMARKS.md).
STATIC_CALIBRATION = "MinMax"
STATIC_PER_CHANNEL = True


def onnx_path(run_dir: str | Path, which: str = "best", backend: str = "onnx") -> Path:
    """The file of an ONNX backend (:data:`ONNX_FILES`) for the run's ``which`` model."""
    return Path(run_dir) / "inference" / f"{which}_q_{ONNX_FILES[backend][0]}.onnx"


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: its source model, and a static INT8 file's calibration."""
    import onnx

    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


def _q_network(run_dir: Path, which: str):
    from rl_lib.agents import load_model

    model = load_model(run_dir, which, device="cpu")
    if not hasattr(model, "q_net"):
        raise UserError(f"{run_dir}: a {type(model).__name__} run has no Q-network; export needs a DQN run")
    return model, model.q_net.eval()


def export_onnx(
    run_dir: str | Path,
    which: str = "best",
    int8: bool = False,
    int8_static: bool = False,
    calibration_days: int = 10,
    min_agreement: float = 0.99,
) -> list[Path]:
    """Write the run's Q-network as ONNX FP32, and the INT8 copies asked for; returns the files written.

    :param int8: also the dynamically quantised copy (backend ``"onnx-int8"``).
    :param int8_static: also the statically quantised one (``"onnx-int8-static"``): calibrated on the
        run's validation days ``0 .. calibration_days - 1``, its FP32 layers chosen on the next
        ``calibration_days`` (:func:`calibration_states`, :func:`quantise_static`).
    :param min_agreement: share of the held-out decisions the static INT8 graph must leave unchanged.
    """
    import onnx
    import torch

    from rl_lib.io import atomic_write_bytes

    run_dir = Path(run_dir)
    if which not in ("best", "final"):  # the exported file names its source model (sha256 below)
        raise UserError(f"export: which must be 'best' or 'final', got {which!r}")
    if not 0 <= min_agreement <= 1:
        raise UserError(f"export: min_agreement must be within [0, 1], got {min_agreement}")
    # Played first: a split too short for the days asked for fails before anything is written.
    states = calibration_states(run_dir, which, calibration_days) if int8_static else None
    model, q_net = _q_network(run_dir, which)
    n_obs, n_actions = model.observation_space.shape[0], int(model.action_space.n)
    fp32 = onnx_path(run_dir, which)
    fp32.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, n_obs)  # not 1: torch.export specialises size-1 dims, batch included
    program = torch.onnx.export(
        q_net, (example,), dynamo=True, opset_version=OPSET, input_names=["obs"], output_names=["q_values"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )  # fmt: skip
    proto = program.model_proto
    # The dynamo exporter's intermediate shape annotations trip ONNX's shape inference (which the
    # quantiser runs); they are optional, so drop them.
    del proto.graph.value_info[:]
    source = run_dir / (
        "best_model/best_model.zip" if which == "best" else f"{model_name(run_dir)}_final.zip"
    )
    for key, value in {"n_obs": n_obs, "n_actions": n_actions, "which": which,
                       "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}.items():  # fmt: skip
        proto.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(proto)
    atomic_write_bytes(fp32, proto.SerializeToString())
    written = [fp32]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = onnx_path(run_dir, which, "onnx-int8")
        tmp = int8_path.with_suffix(".tmp.onnx")
        # Per-channel weight scales: the best decision agreement with FP32 of the options measured
        # (per-tensor, unsigned, reduced range, FP32 output layer); see BENCHMARKS.md.
        quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True)
        quantised = onnx.load(tmp)
        onnx.checker.check_model(quantised)
        tmp.replace(int8_path)
        written.append(int8_path)
    if int8_static:
        static = onnx_path(run_dir, which, "onnx-int8-static")
        quantise_static(fp32, static, *states, min_agreement)
        written.append(static)
    return written


@dataclass(frozen=True)
class PlayedStates:
    """Every decision of some days dispatched by one policy, in order: (N, n_obs) observations,
    (N, K + 1) masks and the N actions chosen."""

    day_ids: tuple
    obs: np.ndarray
    masks: np.ndarray
    actions: np.ndarray


def played_states(dispatcher: Dispatcher, days) -> PlayedStates:
    """The states of ``days`` dispatched booking by booking by ``dispatcher``'s own decisions."""
    obs, masks, actions = [], [], []
    for day in days:
        core = DispatchCore()
        core.reset(day)
        for booking in range(day.n_bookings):
            o, mask = dispatcher.observe(core, [booking])
            action = int(masked_argmax(dispatcher.q_values(o), mask)[0])
            obs.append(o[0])
            masks.append(mask[0])
            actions.append(action)
            insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
            core.refuse(insertion) if action == day.n_vehicles else core.assign(insertion, action)
    return PlayedStates(tuple(d.day_id for d in days), np.array(obs), np.array(masks), np.array(actions))


def calibration_states(run_dir: str | Path, which: str, n_days: int) -> tuple[PlayedStates, PlayedStates]:
    """Static INT8 states: validation days ``0 .. n_days - 1`` of the run's scenario (calibration)
    and the next ``n_days`` (held out), played by the run's model (the torch backend). Never test days."""
    from rl_lib.config import from_dict
    from rl_lib.experiment import ExperimentConfig
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.training.run_record import read_metadata

    config = from_dict(ExperimentConfig, read_metadata(run_dir)["config"], source=str(run_dir))
    scenario = SyntheticScenario(config.scenario)
    available = len(scenario.day_ids("validation"))
    if not 1 <= n_days <= available // 2:
        raise UserError(
            f"calibration days {n_days}: the validation split holds {available} days, and as many again "
            f"are held out to check the calibration; ask for 1 to {available // 2}"
        )
    days = scenario.days("validation", 2 * n_days)
    dispatcher = Dispatcher(run_dir, "torch", which)
    return played_states(dispatcher, days[:n_days]), played_states(dispatcher, days[n_days:])


def quantise_static(
    fp32: Path, out: Path, calibration: PlayedStates, check: PlayedStates, min_agreement: float
) -> None:
    """Write ``fp32`` statically quantised to INT8 (QDQ format) to ``out``, with its calibration as metadata.

    Activation ranges come from ``calibration``'s observations (:data:`STATIC_CALIBRATION`). Only the
    layers (:data:`STATIC_OPS`) read INT8, and their outputs stay FP32: on an INT8 grid over the
    Q-values' range a Q-value moves by more than the gap between the best two actions of most states.
    When the all-INT8 graph leaves fewer than ``min_agreement`` of ``check``'s decisions unchanged,
    layers return to FP32 the least tolerant first (lowest agreement with that layer alone INT8)
    until it does (every layer FP32 at worst). Metadata written: ``int8_layers``, ``fp32_layers``,
    ``check_agreement``, ``calibration_method``, ``calibration_days`` / ``check_days`` (day ids) and
    their state counts.
    """
    import logging

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from rl_lib.io import atomic_write_bytes

    class OneBatch(CalibrationDataReader):
        # One batch of every state: the histogram calibrators stack batches, which needs one shape.
        def __init__(self):
            self._batches = iter([{"obs": calibration.obs}])

        def get_next(self):
            return next(self._batches, None)

    layers = [node.name for node in onnx.load(fp32).graph.node if node.op_type in STATIC_OPS]
    tmp = out.with_suffix(".tmp.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def agreement(fp32_layers: list[str]) -> float:
        quantize_static(
            fp32, tmp, OneBatch(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
            per_channel=STATIC_PER_CHANNEL, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_layers, calibrate_method=CalibrationMethod[STATIC_CALIBRATION],
            extra_options={"OpTypesToExcludeOutputQuantization": list(STATIC_OPS)},
        )  # fmt: skip
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        q = session.run(None, {"obs": check.obs})[0]
        return float(np.mean(masked_argmax(q, check.masks) == check.actions))

    # quantize_static warns at every call to pre-process the model first (symbolic shape inference,
    # which fails on this graph).
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        fp32_layers: list[str] = []
        score = agreement(fp32_layers)
        if score < min_agreement:
            alone = {layer: agreement([other for other in layers if other != layer]) for layer in layers}
            order = sorted(layers, key=alone.__getitem__)  # stable: graph order among equals
            for n in range(1, len(layers) + 1):
                fp32_layers = order[:n]
                if (score := agreement(fp32_layers)) >= min_agreement:
                    break
    finally:
        logging.disable(previous)
    quantised = onnx.load(tmp)  # the last candidate written: fp32_layers
    tmp.unlink()
    record = {
        "int8_layers": ",".join(layer for layer in layers if layer not in fp32_layers),
        "fp32_layers": ",".join(fp32_layers),
        "check_agreement": f"{score:.6f}",
        "calibration_method": STATIC_CALIBRATION + (", per-channel weights" if STATIC_PER_CHANNEL else ""),
        "calibration_days": ",".join(map(str, calibration.day_ids)),
        "calibration_states": len(calibration.obs),
        "check_days": ",".join(map(str, check.day_ids)),
        "check_states": len(check.obs),
    }
    for key, value in record.items():
        quantised.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(quantised)
    atomic_write_bytes(out, quantised.SerializeToString())


def model_name(run_dir: Path) -> str:
    from rl_lib.training.run_record import read_metadata

    return read_metadata(run_dir)["name"]


@dataclass(frozen=True)
class Decisions:
    """Decisions for a batch of bookings: ``actions[i]`` is a vehicle, or ``K`` (refuse)."""

    bookings: np.ndarray
    actions: np.ndarray
    q_values: np.ndarray  # (B, K + 1), unmasked
    masks: np.ndarray  # (B, K + 1)


class Dispatcher:
    """Masked greedy decisions from a trained run's Q-network.

    :param run_dir: a DQN run dir (with ``inference/*.onnx`` for the ONNX backends: ``rl-lib export``).
    :param backend: ``"torch"``, ``"onnx"`` (FP32), ``"onnx-int8"`` (dynamic) or ``"onnx-int8-static"``.
    :param which: ``"best"`` or ``"final"`` model.
    :param threads: CPU threads of the backend (1: one core).
    """

    def __init__(self, run_dir: str | Path, backend: str = "onnx", which: str = "best", threads: int = 1):
        if backend not in BACKENDS:
            raise UserError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.run_dir, self.backend, self.which = Path(run_dir), backend, which
        self._static_day, self._static = None, None
        self.any_fleet_size = False  # an ONNX graph is exported for the training fleet's size
        if backend == "torch":
            import torch

            torch.set_num_threads(threads)
            from rl_lib.agents.fleet import FleetQNetwork

            model, self._net = _q_network(self.run_dir, which)
            self.n_obs, self.n_actions = model.observation_space.shape[0], int(model.action_space.n)
            self._torch = torch
            # Shared per-vehicle weights read any fleet size (rl_lib.agents.fleet).
            self.any_fleet_size = isinstance(self._net, FleetQNetwork)
            return
        import onnxruntime as ort

        path = onnx_path(self.run_dir, which, backend)
        if not path.is_file():
            raise UserError(
                f"{path}: missing; run `rl-lib export {self.run_dir}{ONNX_FILES[backend][1]}` first"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            reason = str(exc).splitlines()[0]
            raise UserError(f"{path}: not a loadable ONNX model ({reason}); export it again") from None
        (inp,), (out,) = self._session.get_inputs(), self._session.get_outputs()
        self.n_obs, self.n_actions = inp.shape[1], out.shape[1]
        if not isinstance(self.n_obs, int) or not isinstance(self.n_actions, int):
            raise UserError(f"{path}: the model's input/output sizes are not fixed; export it with rl-lib")

    # ------------------------------------------------------------------ pieces
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """(B, K + 1) Q-values of a (B, n_obs) float32 batch."""
        if obs.ndim != 2 or (obs.shape[1] != self.n_obs and not self.any_fleet_size):
            raise UserError(f"the model expects observations of {self.n_obs} fields, got shape {obs.shape}")
        if self.backend == "torch":
            with self._torch.no_grad():
                return self._net(self._torch.from_numpy(obs)).numpy()
        return self._session.run(None, {"obs": obs})[0]

    def observe(self, core: DispatchCore, bookings: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Observations (B, n_obs) and masks (B, K + 1) of pending bookings, as the env builds them
        (each booking evaluated at its decision time against the current fleet)."""
        day = core.day
        k = day.n_vehicles
        n_obs = observation_size(k)
        if not self.any_fleet_size and (n_obs != self.n_obs or k + 1 != self.n_actions):
            raise UserError(
                f"{self.run_dir}: the model takes {self.n_obs} observation fields and {self.n_actions} "
                f"actions; this fleet of {k} vehicles gives {observation_size(k)} and {k + 1}: wrong model "
                "for this fleet"
            )
        if self._static_day is not day:
            self._static_day, self._static = day, (booking_features(day), vehicle_capabilities(day))
        static, capability = self._static
        obs = np.zeros((len(bookings), n_obs), dtype=np.float32)
        masks = np.ones((len(bookings), k + 1), dtype=bool)
        decision_time = day.bookings.decision_time
        for i, b in enumerate(bookings):
            insertion = core.evaluate(int(b), float(decision_time[b]))
            write_observation(obs[i], static[b], insertion, core.free_at, day.fleet.shift_end, capability)
            masks[i, :k] = insertion.feasible
        return obs, masks

    # --------------------------------------------------------------- decisions
    def decide_batch(self, core: DispatchCore, bookings: Sequence[int]) -> Decisions:
        """Masked greedy actions for ``bookings`` (one network call)."""
        obs, masks = self.observe(core, bookings)
        q = self.q_values(obs)
        return Decisions(np.asarray(bookings), masked_argmax(q, masks), q, masks)

    def decide(self, core: DispatchCore, booking: int) -> int:
        """The action for one booking: a vehicle index, or ``K`` to refuse."""
        return int(self.decide_batch(core, [booking]).actions[0])

    def play(self, day, weights=None) -> dict[str, float]:
        """Dispatch a whole day, booking by booking, and return its KPIs (the env's rules and reward;
        with a fleet network, on a fleet of any size)."""
        core = DispatchCore(weights)
        core.reset(day)
        decision_time = day.bookings.decision_time
        for booking in range(day.n_bookings):
            action = self.decide(core, booking)
            insertion = core.evaluate(booking, float(decision_time[booking]))
            core.refuse(insertion) if action == day.n_vehicles else core.assign(insertion, action)
        return core.kpis()


def masked_argmax(q: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Greedy action among the feasible ones (the policy's rule: refusal is always feasible)."""
    return np.where(masks, q, -np.inf).argmax(axis=1)


# ----------------------------------------------------------------------------------- benchmark
def benchmark(
    run_dir: str | Path,
    days,
    which: str = "best",
    batch_sizes: Sequence[int] = (1, 16, 256),
    min_seconds: float = 0.3,
) -> dict:
    """Latency, throughput, size and agreement of every backend, measured side by side on one core
    (``"onnx-int8-static"`` when it was exported: it needs calibration days).

    The days are played with the PyTorch policy; at each decision every backend decides the same
    state end to end (insertion evaluation, observation, network, mask), in turn. Throughput times
    the network + mask on batches of the observations collected (observation building excluded).

    :return: ``{"latency": DataFrame, "throughput": DataFrame, "size": DataFrame, "agreement": DataFrame}``.
    """
    import time

    import pandas as pd

    backends = [b for b in BACKENDS if b != "onnx-int8-static" or onnx_path(run_dir, which, b).is_file()]
    dispatchers = {b: Dispatcher(run_dir, b, which, threads=1) for b in backends}
    source = onnx_metadata(onnx_path(run_dir, which))["source_sha256"]
    onnx_backends = [b for b in backends if b != "torch"]
    for backend in onnx_backends[1:]:  # an INT8 file left from an earlier model would be compared silently
        path = onnx_path(run_dir, which, backend)
        if onnx_metadata(path).get("source_sha256") != source:
            raise UserError(f"{path}: quantised from another model than {onnx_path(run_dir, which)}; "
                            f"run `rl-lib export {run_dir}{ONNX_FILES[backend][1]}` again")  # fmt: skip
    timings = {b: [] for b in backends}
    actions = {b: [] for b in backends}
    observations, masks = [], []
    for day in days:
        core = DispatchCore()
        core.reset(day)
        for booking in range(day.n_bookings):
            for backend, dispatcher in dispatchers.items():
                start = time.perf_counter()
                action = dispatcher.decide(core, booking)
                timings[backend].append(time.perf_counter() - start)
                actions[backend].append(action)
            obs, mask = dispatchers["torch"].observe(core, [booking])
            observations.append(obs[0])
            masks.append(mask[0])
            insertion = core.evaluate(booking, float(day.bookings.decision_time[booking]))
            chosen = actions["torch"][-1]
            core.refuse(insertion) if chosen == day.n_vehicles else core.assign(insertion, chosen)
    obs, mask = np.array(observations), np.array(masks)
    latency = pd.DataFrame(
        [{"backend": b, "p50_ms": 1e3 * np.percentile(t, 50), "p95_ms": 1e3 * np.percentile(t, 95),
          "p99_ms": 1e3 * np.percentile(t, 99), "mean_ms": 1e3 * np.mean(t), "decisions": len(t)}
         for b, t in timings.items()]
    )  # fmt: skip
    rows = []
    for backend, dispatcher in dispatchers.items():
        for size in batch_sizes:
            if size > len(obs):  # no row rather than one mislabelled with a smaller batch
                continue
            batches = [slice(i, i + size) for i in range(0, len(obs) - size + 1, size)]
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_seconds:
                for part in batches:
                    masked_argmax(dispatcher.q_values(obs[part]), mask[part])
                    done += len(obs[part])
            rows.append(
                {"backend": backend, "batch": size, "decisions_per_s": done / (time.perf_counter() - start)}
            )
    reference = np.array(actions["torch"])
    agreement = pd.DataFrame(
        [{"backend": b, "agreement_with_torch": float(np.mean(np.array(a) == reference)),
          "masked_actions_chosen": int((~mask[np.arange(len(a)), np.array(a)]).sum())}
         for b, a in actions.items()]
    )  # fmt: skip
    torch_bytes = sum(p.numel() * p.element_size() for p in dispatchers["torch"]._net.parameters())
    size = pd.DataFrame([
        {"backend": "torch", "bytes": torch_bytes, "what": "float32 parameters of the Q-network"},
        *({"backend": b, "bytes": onnx_path(run_dir, which, b).stat().st_size, "what": "ONNX file"}
          for b in onnx_backends),
    ])  # fmt: skip
    return {"latency": latency, "throughput": pd.DataFrame(rows), "size": size, "agreement": agreement}
