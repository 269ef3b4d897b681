"""The dispatch service (optional extra ``rl_lib[serving]``): the trained agent behind an HTTP API.

One concept per module, imported lazily (``rl-lib serve`` pulls FastAPI in; the thesis core never does):

- :mod:`~rl_lib.serving.schemas`: the request and response models (pydantic, explicit bounds);
- :mod:`~rl_lib.serving.fleet_state`: a request's fleet state -> the env's own core, insertion and
  observation, so the service decides exactly what the env would show the agent;
- :mod:`~rl_lib.serving.policy`: the deciding policies (the model, checked by sha256, with greedy
  insertion as its fallback; the control heuristics), the mask always enforced;
- :mod:`~rl_lib.serving.experiment`: A/B experiments (arms, allocation, booking or switchback units,
  sticky salted-hash assignment);
- :mod:`~rl_lib.serving.decision_log`: the decision and outcome streams (Redis Streams, versioned
  JSON, never pickle) with a local spool when Redis is away;
- :mod:`~rl_lib.serving.registry`: the model registry: immutable, sha256-sealed versions with
  their lineage and metrics, the production pointer, promotions, rollbacks and their decision records
  (the service serves its production version; the feedback loop promotes into it);
- :mod:`~rl_lib.serving.monitor`: Prometheus metrics and the live per-arm figures of the dashboard;
- :mod:`~rl_lib.serving.dashboard`: the self-contained monitoring page (server-rendered SVG);
- :mod:`~rl_lib.serving.app`: the FastAPI application;
- :mod:`~rl_lib.serving.simulator`: plays test days against a running service over HTTP;
- :mod:`~rl_lib.serving.ab_report` and :mod:`~rl_lib.serving.ab_cli`: the A/B report from the logs
  (``rl-lib ab report``);
- :mod:`~rl_lib.serving.redis_server`, :mod:`~rl_lib.serving.server`, :mod:`~rl_lib.serving.cli`,
  :mod:`~rl_lib.serving.demo`: a local redis-server, assembling and running the service, its
  commands, the end-to-end demo;
- :mod:`~rl_lib.serving.bench`: decisions/s and latency over HTTP next to the in-process Dispatcher.
"""
