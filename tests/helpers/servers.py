"""Servers the tests start on loopback (static files, MLflow, PostgreSQL, pipeline-serve): free ports, readiness,
requests, clean stop."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

from helpers.commands import tool_env


@contextlib.contextmanager
def static_http(directory: str | Path):
    """A real HTTP server over `directory`; yields its base URL (no trailing slash)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    with loopback_server(handler) as url:
        yield url


@contextlib.contextmanager
def loopback_server(handler):
    """A threading HTTP server on a free loopback port with `handler`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def answering_http(answer):
    """A real HTTP server on loopback whose every GET is `answer(handler)` (a BaseHTTPRequestHandler
    to write the response to); yields its base URL (no trailing slash)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up
                answer(self)

        def log_message(self, *args):
            pass

    with loopback_server(Handler) as url:
        yield url


def endless_body(sent: list[int], give_up: int):
    """An `answering_http` answer that streams zeros with no Content-Length, as a server that never
    ends does, until the client hangs up (or, so that an unbounded client's test ends too, `give_up`
    bytes); `sent` gets the bytes each request sent."""

    def answer(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        chunk, total = bytes(1 << 16), 0
        try:
            while total < give_up:
                handler.wfile.write(chunk)
                total += len(chunk)
        finally:
            sent.append(total)

    return answer


def redirect_loop(handler) -> None:
    """An `answering_http` answer that sends every path to the other of /a and /b."""
    handler.send_response(302)
    handler.send_header("Location", "/b" if handler.path == "/a" else "/a")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, workers: int = 1):
    """`mlflow server` on a free loopback port; yields its URL."""
    port = free_port()
    mlflow = str(Path(os.path.abspath(sys.executable)).parent / "mlflow")
    cmd = [
        mlflow,
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=tool_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc)
        yield url
    finally:
        stop(proc)


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres_cluster(directory: Path):
    """A throwaway PostgreSQL cluster in `directory` on a free loopback port; yields a connection URI.

    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        # pytest's temp dirs are private to root; the postgres user gets a directory of its own.
        directory = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        shutil.chown(directory, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sockets = directory / "data", directory / "sockets"
    subprocess.run([*as_user, "mkdir", "-p", str(sockets)], check=True)
    initdb = subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
    port = free_port()
    proc = subprocess.Popen(
        [
            *as_user,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            != 0
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on port {port}")
            time.sleep(0.3)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        stop(proc)
        if as_user:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def serving(model: str | Path, *options: str, log: Path, **env):
    """`pipeline-serve --model <model> <options>` on a free loopback port; yields (base URL, process)."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serving.cli", "--model", str(model), "--port", str(port), *options],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=tool_env(**env),
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v2/health/ready", proc, timeout=60)
        yield url, proc
    finally:
        stop(proc)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post_json(url: str, content) -> tuple[int, dict]:
    status, _, body = post(url, json.dumps(content).encode())
    return status, json.loads(body)
