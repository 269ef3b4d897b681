"""The FastAPI application of the dispatch service.

==========================  ======  ===================================================================
endpoint                    auth    what
==========================  ======  ===================================================================
``POST /v1/decisions``      token   one booking + the fleet's state -> vehicle or refusal, arm, policy,
                                    model version, decision time
``POST /v1/decisions/batch`` token  up to 256 independent decisions, the model's in one network call
``POST /v1/outcomes``       token   what happened to a decided booking (pickup, lateness, deadhead km,
                                    or a cancellation); recorded once per decision id
``GET /healthz``                    the process answers
``GET /readyz``                     ready to decide; says whether the model or its fallback decides,
                                    and why the last model update failed (a registry's promotion)
``GET /metrics``                    Prometheus text format
``GET /v1/stats``                   the dashboard's figures as JSON
``GET /dashboard``                  the monitoring page (self-contained, refreshes itself)
==========================  ======  ===================================================================

Bad input is a 422 naming the field (pydantic's error list; a fleet the model cannot read is a 422
on ``fleet``), an oversized body a 413, a missing or wrong token a 401; none of them reaches the
policies. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from rl_lib.serving.schemas import (
    BatchRequest,
    BatchResponse,
    DecisionRequest,
    DecisionResponse,
    OutcomeRequest,
    OutcomeResponse,
)
from rl_lib.serving.service import DispatchService, FleetSizeError, RefusedDecisionError

MAX_BODY_BYTES = 1 << 20  # a full batch of 256 requests with 256-vehicle fleets stays far below


@dataclass(frozen=True)
class Security:
    """The write token (from :func:`read_secret`); ``None`` would leave writes open and is refused."""

    token: str

    def __post_init__(self) -> None:
        if len(self.token) < 16:
            raise ValueError("the service token must have at least 16 characters")


def read_secret(env_value: str | None, file: str | Path | None, what: str) -> str | None:
    """A secret from an environment variable's value or a file (first line); the file wins."""
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the {what} file does not exist")
        return path.read_text(encoding="utf-8").strip()
    return env_value.strip() if env_value else None


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413) before they are read whole."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            return await self.app(scope, limited, send)
        except _BodyTooLarge:
            return await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


def _parse(model: type[BaseModel], body: bytes):
    """The body as ``model`` (JSON parsed and validated by pydantic in one pass), or the 422 that
    FastAPI would give: each error's location under ``body``."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _json(answer: BaseModel) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes: send fewer decisions per batch"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(service: DispatchService, security: Security) -> FastAPI:
    """The service's HTTP face (``uvicorn`` serves it; tests use it directly)."""
    app = FastAPI(title="rl_lib dispatch service", version="1", docs_url=None, redoc_url=None)
    app.state.service = service
    expected = security.token.encode()

    async def require_token(request: Request) -> None:  # async: a sync dependency costs a thread hop
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            service.monitor.rejected.labels("401").inc()
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        service.monitor.rejected.labels("422").inc()
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": errors}, status_code=422)

    def fleet_error(exc: FleetSizeError, loc: list) -> JSONResponse:
        service.monitor.rejected.labels("422").inc()
        return JSONResponse({"detail": [{"loc": loc, "msg": str(exc), "type": "fleet_size"}]}, 422)

    # The write endpoints read their body themselves: pydantic parses and validates the JSON in one
    # pass, and the answer is dumped once (FastAPI would json.loads the body, validate the objects,
    # then validate and encode the answer again): 0.23 -> 0.09 ms a decision (benchmarks/serve_encoding.py).
    # The same 422s: RequestValidationError, each location under "body".
    @app.post("/v1/decisions", response_model=DecisionResponse, dependencies=[Depends(require_token)])
    async def decide(request: Request):
        decision = _parse(DecisionRequest, await request.body())
        try:
            return _json((await service.decide_async([decision]))[0])
        except FleetSizeError as exc:
            return fleet_error(exc, ["body", "fleet"])

    @app.post("/v1/decisions/batch", response_model=BatchResponse, dependencies=[Depends(require_token)])
    async def decide_batch(request: Request):
        batch = _parse(BatchRequest, await request.body())
        for i, decision in enumerate(batch.requests):
            try:
                service.check_fleet(decision)
            except FleetSizeError as exc:
                return fleet_error(exc, ["body", "requests", i, "fleet"])
        return _json(BatchResponse(decisions=await service.decide_async(list(batch.requests))))

    @app.post("/v1/outcomes", response_model=OutcomeResponse, dependencies=[Depends(require_token)])
    async def outcome(request: Request):
        outcome = _parse(OutcomeRequest, await request.body())
        try:
            recorded = await service.record_outcome_async(outcome)
        except RefusedDecisionError as exc:
            service.monitor.rejected.labels("422").inc()
            return JSONResponse({"detail": [{"loc": ["body", "decision_id"], "msg": str(exc),
                                             "type": "refused_decision"}]}, 422)  # fmt: skip
        return _json(OutcomeResponse(decision_id=outcome.decision_id, recorded=recorded))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():  # pings Redis: in the thread pool too
        model = service.model
        return {
            "ready": True,
            "pid": os.getpid(),  # which worker process answered (rl-lib serve --workers N)
            "decides_with": "model" if model.ready else "fallback",
            "model_version": model.version,
            "model_error": model.load_error,
            "model_update_error": service.model_update_error,
            "redis": service.log.redis_up(),
            "spool_backlog": service.log.backlog,
        }

    @app.get("/metrics")
    def metrics():
        return Response(service.monitor.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    # Plain functions: FastAPI runs them in its thread pool, so their Redis reads (the log's new
    # records, stream lengths) never hold up the event loop's decisions.
    @app.get("/v1/stats")
    def stats():
        return service.stats()

    @app.get("/dashboard", response_class=HTMLResponse)
    def dashboard():
        from rl_lib.serving.dashboard import render_dashboard

        return render_dashboard(service.stats())

    app.add_middleware(BodyLimit)
    return app
