"""Per-decision cost of the service's encodings, side by side in one process (what BENCHMARKS.md's
"0.24 -> 0.11 ms" and "0.16 -> 0.01 ms" stand on).

- request in: ``json.loads`` + ``DecisionRequest.model_validate`` (what FastAPI did) against
  ``DecisionRequest.model_validate_json`` (what the write endpoints do);
- answer out: validate + ``jsonable_encoder`` + ``json.dumps`` (FastAPI's response model) against
  ``DecisionResponse.model_dump_json``;
- log record: ``json.dumps`` against ``orjson.dumps`` on real decision records.

    python benchmarks/serve_encoding.py results/ablation/runs/dqn_seed0 \
        > benchmarks/results/serve_encoding.log
"""

import json
import sys
import time

import orjson
from fastapi.encoders import jsonable_encoder

from rl_lib.bench import machine_description
from rl_lib.serving.bench import collect_requests
from rl_lib.serving.decision_log import array_field
from rl_lib.serving.fleet_state import fleet_state
from rl_lib.serving.policy import ModelPolicy
from rl_lib.serving.schemas import DecisionRequest, DecisionResponse


def best_ms(f, items, repeat: int = 5) -> float:
    """Fastest of ``repeat`` passes over ``items``, per item (ms)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            f(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return 1e3 * best


if __name__ == "__main__":
    run_dir = sys.argv[1]
    print(f"$ python benchmarks/serve_encoding.py {run_dir}\n{machine_description()}")
    bodies = collect_requests(run_dir, 1)
    raw = [json.dumps(b).encode() for b in bodies]
    model = ModelPolicy.load(run_dir, "torch")
    requests = [DecisionRequest.model_validate_json(r) for r in raw]
    answers = [DecisionResponse(decision_id=f"d{i}", booking_id=r.booking.booking_id, action="assign",
                                vehicle_id=r.fleet[0].vehicle_id, vehicle_index=0, arm="agent", unit="u",
                                policy="model", model_version="v", feasible_vehicles=3, decision_ms=1.0)
               for i, r in enumerate(requests)]  # fmt: skip
    records = []
    for r in requests:
        state = fleet_state(r, model.scenario, model.weights)
        records.append({"decision_id": r.decision_id, "booking": r.booking.model_dump(mode="json"),
                        "observation": array_field(state.observation),
                        "mask": array_field(state.mask)})  # fmt: skip

    def fastapi_answer(a: DecisionResponse) -> str:
        return json.dumps(jsonable_encoder(DecisionResponse.model_validate(a.model_dump())))

    rows = [
        ("request in", best_ms(lambda r: DecisionRequest.model_validate(json.loads(r)), raw),
         best_ms(DecisionRequest.model_validate_json, raw)),
        ("answer out", best_ms(fastapi_answer, answers), best_ms(lambda a: a.model_dump_json(), answers)),
        ("log record", best_ms(lambda x: json.dumps(x, separators=(",", ":"), allow_nan=False), records),
         best_ms(lambda x: orjson.dumps(x).decode(), records)),
    ]  # fmt: skip
    print(f"{len(raw)} decision requests of one test day; ms per item, fastest of 5 passes")
    print(f"{'what':<12}{'before':>10}{'after':>10}{'after/before':>14}")
    for name, before, after in rows:
        print(f"{name:<12}{before:>10.4f}{after:>10.4f}{after / before:>14.3f}")
    print(f"request + answer: {rows[0][1] + rows[1][1]:.3f} -> {rows[0][2] + rows[1][2]:.3f} ms")
