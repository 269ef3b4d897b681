"""CPU time of the service's request -> env state (`rl_lib.serving.fleet_state`), one checkout.

The requests are the production simulator's for 2 test days of the default scenario (insertion
plays them, so the fleets are realistic); 15 passes, process CPU time, min and median per request.
Run it in two checkouts alternately to compare versions on a shared machine:

    python benchmarks/fleet_state_speed.py
"""

import time

from rl_lib.envs.core import DispatchCore, RewardWeights
from rl_lib.scenarios.config import ScenarioConfig
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.serving.fleet_state import fleet_state
from rl_lib.serving.schemas import DecisionRequest
from rl_lib.serving.simulator import decision_request

if __name__ == "__main__":
    scenario, weights = ScenarioConfig(), RewardWeights()
    bodies = []
    for i, day in enumerate(SyntheticScenario(scenario).days("test", 2)):
        core = DispatchCore(weights)
        core.reset(day)
        for b in range(day.n_bookings):
            bodies.append(decision_request(day, core, b, f"2027-01-{i + 4:02d}"))
            insertion = core.evaluate(b, float(day.bookings.decision_time[b]))
            feasible = insertion.feasible.nonzero()[0]
            core.assign(insertion, int(feasible[0])) if len(feasible) else core.refuse(insertion)
    requests = [DecisionRequest.model_validate(body) for body in bodies]
    passes = []
    for _ in range(15):
        start = time.process_time()
        for request in requests:
            fleet_state(request, scenario, weights)
        passes.append((time.process_time() - start) / len(requests) * 1e3)
    passes.sort()
    print(
        f"{len(requests)} requests: fleet_state CPU ms per request min {passes[0]:.4f} median {passes[7]:.4f}"
    )
