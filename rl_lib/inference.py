"""Fast dispatch decisions from a trained Q-network: PyTorch, ONNX Runtime FP32 or INT8.

``export_onnx(run_dir)`` writes the run's Q-network (best or final model) as ONNX (opset 18,
torch's dynamo exporter, dynamic batch axis), checked with ``onnx.checker``; ``int8=True`` adds a
dynamically quantised copy (``onnxruntime.quantization.quantize_dynamic``, INT8 weights). The
graph returns raw Q-values: masking happens here, in numpy, identically for every backend.

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

BACKENDS = ("torch", "onnx", "onnx-int8")
OPSET = 18


def onnx_path(run_dir: str | Path, which: str = "best", int8: bool = False) -> Path:
    return Path(run_dir) / "inference" / f"{which}_q_{'int8' if int8 else 'fp32'}.onnx"


def _q_network(run_dir: Path, which: str):
    from rl_lib.agents import load_model

    model = load_model(run_dir, which, device="cpu")
    if not hasattr(model, "q_net"):
        raise UserError(f"{run_dir}: a {type(model).__name__} run has no Q-network; export needs a DQN run")
    return model, model.q_net.eval()


def export_onnx(run_dir: str | Path, which: str = "best", int8: bool = False) -> list[Path]:
    """Write the run's Q-network as ONNX FP32 (and INT8 with ``int8``); returns the files written."""
    import onnx
    import torch

    from rl_lib.io import atomic_write_bytes

    run_dir = Path(run_dir)
    if which not in ("best", "final"):  # the exported file names its source model (sha256 below)
        raise UserError(f"export: which must be 'best' or 'final', got {which!r}")
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

        int8_path = onnx_path(run_dir, which, int8=True)
        tmp = int8_path.with_suffix(".tmp.onnx")
        # Per-channel weight scales: the best decision agreement with FP32 of the options measured
        # (per-tensor, unsigned, reduced range, FP32 output layer); see BENCHMARKS.md.
        quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True)
        quantised = onnx.load(tmp)
        onnx.checker.check_model(quantised)
        tmp.replace(int8_path)
        written.append(int8_path)
    return written


def model_name(run_dir: Path) -> str:
    from rl_lib.run_record import read_metadata

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
    :param backend: ``"torch"``, ``"onnx"`` (FP32) or ``"onnx-int8"``.
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

        path = onnx_path(self.run_dir, which, int8=backend == "onnx-int8")
        if not path.is_file():
            flag = " --int8" if backend == "onnx-int8" else ""
            raise UserError(f"{path}: missing; run `rl-lib export {self.run_dir}{flag}` first")
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
    """Latency, throughput, size and agreement of every backend, measured side by side on one core.

    The days are played with the PyTorch policy; at each decision every backend decides the same
    state end to end (insertion evaluation, observation, network, mask), in turn. Throughput times
    the network + mask on batches of the observations collected (observation building excluded).

    :return: ``{"latency": DataFrame, "throughput": DataFrame, "size": DataFrame, "agreement": DataFrame}``.
    """
    import time

    import pandas as pd

    dispatchers = {b: Dispatcher(run_dir, b, which, threads=1) for b in BACKENDS}
    timings = {b: [] for b in BACKENDS}
    actions = {b: [] for b in BACKENDS}
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
        *({"backend": b, "bytes": onnx_path(run_dir, which, b == "onnx-int8").stat().st_size,
           "what": "ONNX file"} for b in ("onnx", "onnx-int8")),
    ])  # fmt: skip
    return {"latency": latency, "throughput": pd.DataFrame(rows), "size": size, "agreement": agreement}
