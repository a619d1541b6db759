"""pipeline-serve on tiny hand-built models, as a deployer runs it (the console command in its own
process): MLflow's /invocations and the Open Inference Protocol v2, JSON and binary, give exactly
onnxruntime's probabilities; Triton's own HTTP client works unchanged; concurrent requests are merged
into one runtime call (seen in the batch metrics); bad requests get a 4xx and one line; SIGTERM
answers the request in flight; LiteRT files, table models and the registry's champion serve too."""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers.commands import tool_env
from helpers.servers import post, post_json, serving
from helpers.tiny_models import image_litert, image_onnx, table_onnx

PYTHON = os.path.abspath(sys.executable)
RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def onnxruntime_probabilities(model: Path, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"image": image_onnx(root / "tiny.onnx"), "table": table_onnx(root / "table.onnx")}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """One server for the tests that only ask it things; its body limit small enough to test."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with serving(models["image"], "--name", "tiny", "--max-body-mb", "0.05", log=log) as (url, proc):
        yield url
        assert proc.poll() is None, log.read_text()  # every test's requests left it running


def test_invocations_and_v2_json_and_binary_give_onnxruntimes_probabilities(server, models):
    expected = onnxruntime_probabilities(models["image"], "image", PIXELS)
    pixels = PIXELS.tolist()
    for request in (
        {"inputs": {"image": pixels}},
        {"inputs": pixels},
        {"instances": pixels},
        {"instances": [{"image": p} for p in pixels]},
    ):
        status, body = post_json(f"{server}/invocations", request)
        assert status == 200, body
        np.testing.assert_array_equal(np.asarray(body["predictions"]["probabilities"], np.float32), expected)

    tensor = {"name": "image", "datatype": "UINT8", "shape": list(PIXELS.shape)}
    status, body = post_json(
        f"{server}/v2/models/tiny/infer", {"id": "a1", "inputs": [{**tensor, "data": PIXELS.ravel().tolist()}]}
    )
    assert status == 200 and body["id"] == "a1" and body["model_name"] == "tiny", body
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [5, 3]
    np.testing.assert_array_equal(np.asarray(output["data"], np.float32).reshape(5, 3), expected)

    # The binary tensor data extension, byte by byte: JSON header, then the raw tensors.
    header = json.dumps({
        "inputs": [{**tensor, "parameters": {"binary_data_size": PIXELS.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    status, headers, body = post(
        f"{server}/v2/models/tiny/versions/1/infer", header + PIXELS.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 200, body
    length = int(headers["Inference-Header-Content-Length"])
    (output,) = json.loads(body[:length])["outputs"]
    assert output["parameters"]["binary_data_size"] == expected.nbytes == len(body) - length
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(5, 3), expected)


def test_tritons_own_http_client_works_unchanged(server, models):
    import tritonclient.http as triton

    expected = onnxruntime_probabilities(models["image"], "image", PIXELS)
    client = triton.InferenceServerClient("127.0.0.1:" + server.rsplit(":", 1)[1])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("tiny")
    assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 4, 4, 1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    for binary_in, binary_out, compression in ((True, True, None), (False, False, None), (True, False, "gzip")):
        tensor = triton.InferInput("image", list(PIXELS.shape), "UINT8")
        tensor.set_data_from_numpy(PIXELS, binary_data=binary_in)
        result = client.infer(
            "tiny", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary_out)],
            request_compression_algorithm=compression,
        )  # fmt: skip
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    with pytest.raises(triton.InferenceServerException, match="not served here"):
        client.get_model_metadata("other")
    client.close()


def test_bad_requests_get_a_4xx_and_one_line_and_the_server_stays_up(server):
    infer = f"{server}/v2/models/tiny/infer"
    v2 = {"name": "image", "datatype": "UINT8", "shape": [1, 4, 4, 1], "data": [0] * 16}
    header = json.dumps({"inputs": [{**{k: v for k, v in v2.items() if k != "data"},
                                     "parameters": {"binary_data_size": 16}}]}).encode()  # fmt: skip
    big = json.dumps({"inputs": {"image": np.zeros((2000, 4, 4, 1), int).tolist()}}).encode()
    cases = [  # (url, body, headers, status, what the message says)
        ("/invocations", b"{", {}, 400, "not JSON"),
        ("/invocations", b"[1, 2]", {}, 400, '"inputs" or "instances"'),
        ("/invocations", b'{"inputs": {"pixels": [1]}}', {}, 400, "takes one input, 'image'"),
        (
            "/invocations",
            json.dumps({"inputs": {"image": PIXELS[..., 0].tolist()}}).encode(),
            {},
            400,
            "shape [5, 4, 4] is not [n, 4, 4, 1]",
        ),
        ("/invocations", b'{"inputs": [[1, 2], [3]]}', {}, 400, "ragged"),
        ("/invocations", json.dumps({"inputs": [[[["a"]] * 4] * 4]}).encode(), {}, 400, "string values"),
        ("/invocations", json.dumps({"inputs": [[[[True]] * 4] * 4]}).encode(), {}, 400, "boolean values"),
        ("/invocations", json.dumps({"inputs": [[[[256]] * 4] * 4]}).encode(), {}, 400, "0..255"),
        ("/invocations", json.dumps({"inputs": [[[[-1]] * 4] * 4]}).encode(), {}, 400, "0..255"),
        ("/invocations", json.dumps({"inputs": [[[[1.5]] * 4] * 4]}).encode(), {}, 400, "fractions"),
        ("/invocations", b"x", {"Content-Type": "text/csv"}, 415, "application/json"),
        ("/invocations", big, {}, 413, "over the server's limit"),
        ("/invocations", gzip.compress(b" " * 200_000), {"Content-Encoding": "gzip"}, 413, "inflates to over"),
        ("/invocations", b"not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        ("/invocations", b"{}", {"Content-Encoding": "br"}, 415, "not supported"),
        (
            "/v2/models/tiny/infer",
            json.dumps({"inputs": [{**v2, "datatype": "FP32"}]}).encode(),
            {},
            400,
            "datatype 'FP32' is not the model's UINT8",
        ),
        (
            "/v2/models/tiny/infer",
            json.dumps({"inputs": [{**v2, "shape": [1, 16]}]}).encode(),
            {},
            400,
            "shape [1, 16] is not [n, 4, 4, 1]",
        ),
        (
            "/v2/models/tiny/infer",
            json.dumps({"inputs": [{**v2, "data": [0] * 15}]}).encode(),
            {},
            400,
            "15 values do not fill shape",
        ),
        ("/v2/models/tiny/infer", json.dumps({"inputs": [{**v2, "name": "x"}]}).encode(), {}, 400, "'image'"),
        (
            "/v2/models/tiny/infer",
            json.dumps({"inputs": [v2], "outputs": [{"name": "logits"}]}).encode(),
            {},
            400,
            "output 'logits'",
        ),
        (
            "/v2/models/tiny/infer",
            header + bytes(15),
            {"Inference-Header-Content-Length": str(len(header))},
            400,
            "more than the 15 bytes",
        ),
        (
            "/v2/models/tiny/infer",
            header + bytes(17),
            {"Inference-Header-Content-Length": str(len(header))},
            400,
            "1 bytes of binary data follow",
        ),
        ("/v2/models/tiny/infer", header, {"Inference-Header-Content-Length": "99999"}, 400, "not a length within"),
        ("/v2/models/other/infer", json.dumps({"inputs": [v2]}).encode(), {}, 404, "not served here"),
    ]
    for path, body, headers, status, says in cases:
        got, _, answer = post(server + path, body, headers)
        message = json.loads(answer).get("message") or json.loads(answer).get("error") or answer.decode()
        assert (got, True) == (status, says in message), (path, body[:80], got, message)
        assert "\n" not in message and "Traceback" not in message
    assert urllib.request.urlopen(f"{server}/v2/health/ready", timeout=10).status == 200
    status, body = post_json(infer, {"inputs": [v2]})
    assert status == 200 and len(body["outputs"][0]["data"]) == 3
    assert metric(server, 'pipeline_serve_request_errors_total{endpoint="invocations"}') >= 15


def batched(url: str, count: int) -> list[dict]:
    """`count` concurrent one-image requests; their answers."""
    answers: list = [None] * count

    def one(i: int) -> None:
        answers[i] = post_json(f"{url}/invocations", {"inputs": {"image": PIXELS[i % 5 : i % 5 + 1].tolist()}})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_requests_are_merged_into_one_runtime_call(models, tmp_path):
    """With a long delay, the batcher waits until max_batch_size examples are queued: eight concurrent
    requests become one runtime call; without batching, eight calls."""
    expected = onnxruntime_probabilities(models["image"], "image", PIXELS)
    options = ("--max-batch-size", "8", "--max-delay-ms", "60000")
    with serving(models["image"], *options, log=tmp_path / "on.log") as (url, _):
        answers = batched(url, 8)
        assert metric(url, "pipeline_serve_batch_requests_count") == 1
        assert metric(url, "pipeline_serve_batch_requests_sum") == 8
        assert metric(url, "pipeline_serve_batch_size_sum") == 8
    with serving(models["image"], *options, "--no-batching", log=tmp_path / "off.log") as (url, _):
        batched(url, 8)
        assert metric(url, "pipeline_serve_batch_requests_count") == 8
        assert metric(url, 'pipeline_serve_batch_size_bucket{le="1.0"}') == 8
    for i, (status, body) in enumerate(answers):
        assert status == 200
        np.testing.assert_array_equal(np.asarray(body["predictions"]["probabilities"], np.float32), expected[[i % 5]])


def test_sigterm_answers_the_request_in_flight_then_exits_0(models, tmp_path):
    expected = onnxruntime_probabilities(models["image"], "image", PIXELS)
    # The lone request waits in the batcher (for company that never comes) while SIGTERM arrives.
    with serving(models["image"], "--max-batch-size", "64", "--max-delay-ms", "3000", log=tmp_path / "s.log") as (
        url,
        proc,
    ):
        answer: list = []
        thread = threading.Thread(
            target=lambda: answer.append(post_json(f"{url}/invocations", {"inputs": PIXELS.tolist()}))
        )
        thread.start()
        while metric(url, "pipeline_serve_queue_examples") < 5:
            assert thread.is_alive()
        proc.send_signal(signal.SIGTERM)
        thread.join()
        assert proc.wait(timeout=60) == 0, (tmp_path / "s.log").read_text()
    ((status, body),) = answer
    assert status == 200
    np.testing.assert_array_equal(np.asarray(body["predictions"]["probabilities"], np.float32), expected)


def test_a_litert_file_serves_as_its_interpreter_runs_it(tmp_path):
    import tritonclient.http as triton

    from pipeline.classifier import open_classifier

    model = image_litert(tmp_path / "tiny.tflite")
    expected = open_classifier(model).run(PIXELS)
    with serving(model, log=tmp_path / "serve.log") as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert client.get_model_metadata("tiny")["platform"] == "tensorflow_lite"
        tensor = triton.InferInput("image", list(PIXELS.shape), "UINT8")
        tensor.set_data_from_numpy(PIXELS)
        np.testing.assert_array_equal(client.infer("tiny", [tensor]).as_numpy("probabilities"), expected)
        status, body = post_json(f"{url}/invocations", {"inputs": {"image": PIXELS.tolist()}})
        np.testing.assert_array_equal(np.asarray(body["predictions"]["probabilities"], np.float32), expected)


def test_a_table_model_takes_float32_features(models, tmp_path):
    rows = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    expected = onnxruntime_probabilities(models["table"], "features", rows)
    with serving(models["table"], log=tmp_path / "serve.log") as (url, _):
        status, body = post_json(f"{url}/invocations", {"inputs": {"features": rows.tolist()}})
        assert status == 200
        np.testing.assert_array_equal(np.asarray(body["predictions"]["probabilities"], np.float32), expected)
        tensor = {"name": "features", "datatype": "FP32", "shape": [4, 3], "data": rows.ravel().tolist()}
        status, body = post_json(f"{url}/v2/models/table/infer", {"inputs": [tensor]})
        np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32).reshape(4, 3), expected)
        status, body = post_json(f"{url}/invocations", {"inputs": [[1e39, 0, 0]]})
        assert status == 400 and "finite" in body["message"]


def test_the_registrys_champion_serves_by_its_models_uri(models, tmp_path):
    from pipeline.mlflow_model import save_mlflow_model
    from pipeline.tracking import Run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Run.start(uri, "serving")
    contract = {
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 4, 4, 1]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", 3]},
    }
    save = functools.partial(save_mlflow_model, models["image"], metadata=contract)
    version = run.registry.register(run, save, "tiny-classifier")
    run.registry.set_alias("tiny-classifier", "champion", version)
    run.end()
    expected = onnxruntime_probabilities(models["image"], "image", PIXELS)
    with serving("models:/tiny-classifier@champion", log=tmp_path / "serve.log", MLFLOW_TRACKING_URI=uri) as (url, _):
        status, body = post_json(f"{url}/v2/models/tiny-classifier/versions/{version}/infer", {
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [5, 4, 4, 1], "data": PIXELS.ravel().tolist()}]
        })  # fmt: skip
        assert status == 200 and body["model_version"] == version
        np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"], np.float32).reshape(5, 3), expected)


def test_the_server_imports_no_tensorflow_and_bad_models_are_one_line(models, tmp_path):
    code = (
        "import sys, pathlib; from pipeline.serving.cli import open_model; from pipeline.serving.app import create_app;"
        "create_app(open_model(sys.argv[1], None, None, pathlib.Path('.')));"
        "bad = [m for m in ('tensorflow', 'keras', 'mlflow', 'tf2onnx') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([PYTHON, "-c", code, str(models["image"])], check=True, cwd=tmp_path, env=tool_env())
    for model, says in (
        (tmp_path / "missing.onnx", "model file not found"),
        (tmp_path / "model.txt", "not an exported model"),
        ("models:/tiny", "not models:/<name>@<alias>"),
    ):
        proc = subprocess.run(
            [PYTHON, "-m", "pipeline.serving.cli", "--model", str(model)],
            capture_output=True, text=True, cwd=tmp_path, env=tool_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/x.db"),
        )  # fmt: skip
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_binary_bytes_tensors_are_read_as_the_protocol_lays_them_out():
    """BYTES (strings, for text models): each element a 4-byte little-endian length, then its bytes."""
    from pipeline.serving.inputs import BadRequest
    from pipeline.serving.v2 import byte_strings

    assert byte_strings(b"\x02\x00\x00\x00hi\x00\x00\x00\x00\x03\x00\x00\x00\xc3\xa9!", 3, "t") == [
        b"hi",
        b"",
        "é!".encode(),
    ]
    for data, says in (
        (b"\x05\x00\x00\x00hi", "runs past"),
        (b"\x00\x00\x00", "ends before"),
        (bytes(9), "1 bytes follow"),
    ):
        with pytest.raises(BadRequest, match=says):
            byte_strings(data, 2, "t")


def test_onnxruntimes_threads_do_not_spin_unless_asked(models, tmp_path):
    from pipeline.serving.cli import open_model

    def spinning(model) -> str:
        options = model.classifier.session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return "default"

    assert spinning(open_model(str(models["image"]), None, None, tmp_path)) == "0"
    assert spinning(open_model(str(models["image"]), None, None, tmp_path, spin=True)) == "default"
