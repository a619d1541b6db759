"""The server's ASGI app for one model: MLflow's scoring protocol (`POST /invocations`), the Open
Inference Protocol v2 (`/v2/...`, JSON and binary tensors), health, and Prometheus `/metrics`.

Starlette (FastAPI's own core) rather than FastAPI's typed routes: a tensor is neither a form nor a
pydantic model, and its validation lives in one place (inputs.py); FastAPI's request and response
modelling would only add work to every request."""

from __future__ import annotations

import contextlib
import time
import zlib
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.serving.batching import Batcher
from pipeline.serving.inputs import BadRequest, ServedModel, model_input
from pipeline.serving.v2 import HEADER_LENGTH, infer_response, parse_infer_request

SERVER_NAME = "pipeline-serve"


@dataclass(frozen=True)
class Settings:
    max_batch_size: int = 64  # rows (examples) in one runtime call
    # How long a lone request waits for others to batch with. 0: none; requests still merge with
    # those that arrived while the runtime was busy, which is all the merging a loaded CPU server
    # needs (a wait only adds latency when the runtime is idle). Triton's default is 0 too.
    max_delay_ms: float = 0.0
    max_queue_rows: int = 4096  # examples waiting; past it requests get 503
    max_body_bytes: int = 64 * 2**20  # a request's body, decompressed too; past it 413
    batching: bool = True  # False: every request its own runtime call


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process)."""

    def __init__(self, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pipeline_serve_requests", "Inference requests answered, by endpoint and HTTP status",
            ["endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "pipeline_serve_request_errors", "Inference requests answered with an error (4xx, 5xx), by endpoint",
            ["endpoint"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "pipeline_serve_request_seconds", "Inference request latency, body read to response, by endpoint",
            ["endpoint"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        powers = sorted({2**i for i in range(max(1, max_batch_size).bit_length() + 1)} | {max_batch_size})
        self.batch_rows = Histogram(
            "pipeline_serve_batch_size", "Examples in one runtime call", registry=self.registry, buckets=powers
        )
        self.batch_requests = Histogram(
            "pipeline_serve_batch_requests", "Requests merged into one runtime call",
            registry=self.registry, buckets=powers,
        )  # fmt: skip
        self.inference = Histogram(
            "pipeline_serve_inference_seconds", "One runtime call", registry=self.registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )  # fmt: skip
        self.queued = Gauge("pipeline_serve_queue_examples", "Examples waiting for the runtime", registry=self.registry)

    def observe_batch(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.inference.observe(seconds)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes before it is read whole, and inflated when
    sent compressed (tritonclient's gzip and deflate), within the same limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body of {int(declared):,} bytes is over the server's limit ({limit:,})", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is over the server's limit ({limit:,} bytes)", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} ({exc})") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise BadRequest(f"request body inflates to over the server's limit ({limit:,} bytes)", 413)
    return inflated


def json_response(content, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def invocations_input(model: ServedModel, body: bytes, content_type: str) -> np.ndarray:
    """MLflow's scoring protocol: {"inputs": {"<input>": tensor}}, {"inputs": tensor} or
    {"instances": [instance, ...]} (each a tensor or {"<input>": tensor})."""
    mime = content_type.split(";")[0].strip().lower()
    if mime != "application/json":
        raise BadRequest(f"Content-Type {mime or 'none'!r} is not supported here: send application/json", 415)
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request is not JSON ({exc})") from None
    name = model.input.name
    keys = set(request) & {"inputs", "instances"} if isinstance(request, dict) else set()
    if len(keys) != 1 or set(request) - keys - {"params"}:
        raise BadRequest('request must be a JSON object with one of "inputs" or "instances"')
    if "inputs" in request:
        values = request["inputs"]
        if isinstance(values, dict):
            if set(values) != {name}:
                raise BadRequest(f"inputs {sorted(values)}: the model takes one input, {name!r}")
            values = values[name]
    else:
        values = request["instances"]
        if not isinstance(values, list):
            raise BadRequest('"instances" must be a list')
        if values and all(isinstance(item, dict) for item in values):
            if any(set(item) != {name} for item in values):
                raise BadRequest(f"instances: each must hold the model's one input, {name!r}")
            values = [item[name] for item in values]
    return model_input(model, values, f"input {name!r}")


def mlflow_error(message: str) -> dict:
    return {"error_code": "BAD_REQUEST", "message": message}


def v2_error(message: str) -> dict:
    return {"error": message}


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keras-classifier-pipeline")
    except PackageNotFoundError:
        return "unknown"


class Endpoints:
    """The app's request handlers for one model: each inference request goes through the batcher,
    which the app's lifespan starts and stops; every answer is counted in `metrics`."""

    def __init__(self, model: ServedModel, settings: Settings):
        self.model, self.settings = model, settings
        self.metrics = Metrics(settings.max_batch_size)
        self.batcher: Batcher | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        s = self.settings
        self.batcher = Batcher(
            self.model.run, s.max_batch_size if s.batching else 1, s.max_delay_ms / 1000, s.max_queue_rows,
            self.metrics.observe_batch,
        )  # fmt: skip
        self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    async def infer(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, *self.model.output.shape), np.float32)
        self.metrics.queued.inc(len(x))
        try:
            return await self.batcher.infer(x)
        finally:
            self.metrics.queued.dec(len(x))

    async def observed(self, endpoint: str, request: Request, handle, error_body) -> Response:
        """`handle(body)`'s response, a BadRequest as `error_body(message)`, counted and timed."""
        started = time.perf_counter()
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            response = await handle(body)
        except BadRequest as exc:
            response = json_response(error_body(str(exc)), exc.status)
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            self.metrics.errors.labels(endpoint).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def invocations(self, request: Request) -> Response:
        async def handle(body: bytes) -> Response:
            x = invocations_input(self.model, body, request.headers.get("content-type", ""))
            return json_response({"predictions": {self.model.output.name: await self.infer(x)}})

        return await self.observed("invocations", request, handle, mlflow_error)

    def checked_model(self, request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.model
        if name != model.name or version not in (None, model.version):
            label = name if version is None else f"{name} version {version}"
            served = f"{model.name!r} version {model.version}"
            raise BadRequest(f"model {label!r} is not served here (serving {served})", 404)

    async def v2_infer(self, request: Request) -> Response:
        async def handle(body: bytes) -> Response:
            self.checked_model(request)
            parsed = parse_infer_request(self.model, body, request.headers.get(HEADER_LENGTH))
            content, headers = infer_response(self.model, parsed, await self.infer(parsed.inputs))
            return Response(content, 200, headers=headers)

        return await self.observed("v2_infer", request, handle, v2_error)

    async def v2_model(self, request: Request) -> Response:
        try:
            self.checked_model(request)
        except BadRequest as exc:
            return json_response(v2_error(str(exc)), exc.status)
        return json_response(self.model.metadata())

    async def v2_model_ready(self, request: Request) -> Response:
        try:
            self.checked_model(request)
        except BadRequest as exc:
            return json_response(v2_error(str(exc)), exc.status)
        return await self.ready(request)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=503 if request.app.state.draining or self.batcher is None else 200)

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ping(self, request: Request) -> Response:  # MLflow's /ping and /health
        return Response("\n", 200, media_type="application/json")

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": server_version(), "extensions": ["binary_tensor_data"]})

    async def metrics_page(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        routes = [
            Route("/invocations", self.invocations, methods=["POST"]),
            Route("/ping", self.ping, methods=["GET"]),
            Route("/health", self.ping, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
        ]
        for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(path, self.v2_model, methods=["GET"]),
                Route(f"{path}/ready", self.v2_model_ready, methods=["GET"]),
                Route(f"{path}/infer", self.v2_infer, methods=["POST"]),
            ]
        return routes


def create_app(model: ServedModel, settings: Settings = Settings()) -> Starlette:
    endpoints = Endpoints(model, settings)
    app = Starlette(routes=endpoints.routes(), lifespan=endpoints.lifespan)
    app.state.draining = False
    app.state.metrics = endpoints.metrics
    return app
