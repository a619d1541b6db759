"""Serve an exported model over HTTP: MLflow's /invocations JSON and the Open Inference Protocol v2
(KServe v2, Triton HTTP; JSON and binary tensors), with dynamic batching and Prometheus metrics.

    pipeline-serve --model exported/model.onnx [--host 0.0.0.0] [--port 8000]
    pipeline-serve --model exported/model.tflite
    pipeline-serve --model models:/fashion-mnist-classifier@champion   # the MLflow registry's version

A .onnx file runs on onnxruntime, a .tflite file on ai-edge-litert; `models:/<name>@<alias>` or
`models:/<name>/<version>` downloads the registered version's ONNX file from the tracking store
(MLFLOW_TRACKING_URI, else ./mlflow.db). No TensorFlow is imported. SIGTERM or Ctrl-C: the server
stops accepting connections, answers every request in flight, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from pipeline.cli import run_cli
from pipeline.errors import PipelineError
from pipeline.serving.app import Settings

REGISTRY_SCHEME = "models:/"


def registered_onnx(uri: str, directory: Path) -> tuple[Path, str, str]:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`: the version's ONNX file, downloaded
    into `directory`, with the registered name and version."""
    from pipeline.registry import Registry
    from pipeline.tracking import existing_store_client, resolve_tracking_uri

    ref = uri[len(REGISTRY_SCHEME) :]
    name, alias = ref.split("@", 1) if "@" in ref else (ref, None)
    if alias is None:
        name, _, version = ref.rpartition("/")
        if not name or not version.isdigit():
            raise PipelineError(f"{uri}: not models:/<name>@<alias> or models:/<name>/<version>")
    tracking = resolve_tracking_uri(None)
    try:
        client = existing_store_client(tracking, f"{tracking}: no MLflow store there (set MLFLOW_TRACKING_URI)")
    except ImportError:
        raise PipelineError(f"{uri}: serving from the registry needs MLflow (pip install mlflow)") from None
    registry = Registry(client, tracking)
    if alias is not None:
        found = registry.version_by_alias(name, alias)
        if found is None:
            raise PipelineError(f"{uri}: the registry at {tracking} has no version of {name} with alias {alias}")
        version = str(found.version)
    return registry.download_onnx(name, version, directory), name, version


def open_model(model: str, name: str | None, threads: int | None, directory: Path, spin: bool = False):
    from pipeline.classifier import open_classifier
    from pipeline.serving.inputs import ServedModel, without_spinning

    version = "1"
    if model.startswith(REGISTRY_SCHEME):
        path, registered, version = registered_onnx(model, directory)
        name = name or registered
    else:
        path = Path(model)
        name = name or path.name.split(".")[0]
    classifier = open_classifier(path, threads)
    return ServedModel(classifier if spin else without_spinning(classifier, threads), name, version)


def serve(app, host: str, port: int, log_level: str, access_log: bool) -> None:
    """uvicorn until SIGTERM or SIGINT; readiness turns 503 at once, requests in flight are answered."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once drained, ending the process by it; a drained
            # server has done what was asked, and exits 0.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
        timeout_graceful_shutdown=None, server_header=False,
    )  # fmt: skip
    server = DrainingServer(config)
    server.run()
    if not server.started:
        raise PipelineError(f"could not serve on {host}:{port} (in use, or not an address of this machine?)")


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="pipeline-serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="exported .onnx or .tflite file, or models:/<name>@<alias> (MLflow registry)"
    )
    parser.add_argument(
        "--name", default=None, help="the model's name in /v2/models/<name> (default: the file's or registered name)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve beyond this machine")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="examples per runtime call")
    parser.add_argument(
        "--max-delay-ms", type=float, default=defaults.max_delay_ms, help="how long a lone request waits for company"
    )
    parser.add_argument("--no-batching", action="store_true", help="every request its own runtime call")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue_rows, help="examples waiting before 503")
    parser.add_argument(
        "--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20, help="request body limit (413 past it)"
    )
    parser.add_argument("--threads", type=int, default=None, help="the runtime's threads (default: every core)")
    parser.add_argument(
        "--spin", action="store_true", help="keep onnxruntime's threads spinning between calls (cores of its own)"
    )
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="a line per request")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    for option in ("max_batch_size", "max_queue", "port"):
        if getattr(args, option) < (0 if option == "port" else 1):
            raise PipelineError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.max_delay_ms < 0 or args.max_body_mb <= 0:
        raise PipelineError("--max-delay-ms must be >= 0 and --max-body-mb > 0")
    settings = Settings(
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        max_queue_rows=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        batching=not args.no_batching,
    )
    from pipeline.serving.app import create_app

    with tempfile.TemporaryDirectory(prefix="pipeline-serve-") as scratch:
        model = open_model(args.model, args.name, args.threads, Path(scratch), args.spin)
        print(
            f"pipeline-serve: {model.name} v{model.version} ({model.platform}, {model.kind}: {model.input.name} "
            f"{model.input.datatype} {model.input.shape_text()}) on http://{args.host}:{args.port}",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            serve(create_app(model, settings), args.host, args.port, args.log_level, args.access_log)


def cli() -> None:
    """Console-script entry point (`pipeline-serve`)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
