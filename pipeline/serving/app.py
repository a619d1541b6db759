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


def create_app(model: ServedModel, settings: Settings = Settings()) -> Starlette:
    metrics = Metrics(settings.max_batch_size)
    batcher: Batcher | None = None

    async def infer(x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, *model.output.shape), np.float32)
        metrics.queued.inc(len(x))
        try:
            return await batcher.infer(x)
        finally:
            metrics.queued.dec(len(x))

    async def observed(endpoint: str, request: Request, handle, error_body) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request, settings.max_body_bytes)
            response = await handle(body)
        except BadRequest as exc:
            response = json_response(error_body(str(exc)), exc.status)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def mlflow_error(message: str) -> dict:
        return {"error_code": "BAD_REQUEST", "message": message}

    def v2_error(message: str) -> dict:
        return {"error": message}

    async def invocations(request: Request) -> Response:
        async def handle(body: bytes) -> Response:
            x = invocations_input(model, body, request.headers.get("content-type", ""))
            return json_response({"predictions": {model.output.name: await infer(x)}})

        return await observed("invocations", request, handle, mlflow_error)

    def checked_model(request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != model.name or version not in (None, model.version):
            label = name if version is None else f"{name} version {version}"
            served = f"{model.name!r} version {model.version}"
            raise BadRequest(f"model {label!r} is not served here (serving {served})", 404)

    async def v2_infer(request: Request) -> Response:
        async def handle(body: bytes) -> Response:
            checked_model(request)
            parsed = parse_infer_request(model, body, request.headers.get(HEADER_LENGTH))
            content, headers = infer_response(model, parsed, await infer(parsed.inputs))
            return Response(content, 200, headers=headers)

        return await observed("v2_infer", request, handle, v2_error)

    async def v2_model(request: Request) -> Response:
        try:
            checked_model(request)
        except BadRequest as exc:
            return json_response(v2_error(str(exc)), exc.status)
        return json_response(model.metadata())

    async def v2_model_ready(request: Request) -> Response:
        try:
            checked_model(request)
        except BadRequest as exc:
            return json_response(v2_error(str(exc)), exc.status)
        return readiness()

    def readiness() -> Response:
        return Response(status_code=503 if app.state.draining or batcher is None else 200)

    async def ready(request: Request) -> Response:
        return readiness()

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ping(request: Request) -> Response:  # MLflow's /ping and /health
        return Response("\n", 200, media_type="application/json")

    async def server_metadata(request: Request) -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version("keras-classifier-pipeline")
        except PackageNotFoundError:
            own = "unknown"
        return json_response({"name": SERVER_NAME, "version": own, "extensions": ["binary_tensor_data"]})

    async def metrics_page(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        nonlocal batcher
        batcher = Batcher(
            model.run, settings.max_batch_size if settings.batching else 1, settings.max_delay_ms / 1000,
            settings.max_queue_rows, metrics.observe_batch,
        )  # fmt: skip
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ]
    for path in model_paths:
        routes += [
            Route(path, v2_model, methods=["GET"]),
            Route(f"{path}/ready", v2_model_ready, methods=["GET"]),
            Route(f"{path}/infer", v2_infer, methods=["POST"]),
        ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.draining = False
    app.state.metrics = metrics
    return app
