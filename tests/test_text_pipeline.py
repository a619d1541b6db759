"""Text through every stage on tiny data made here: a folder of .txt files trained with the bag of
words, every exported form proven on the test split and the awkward texts, then deployed as users
deploy it: `pipeline-predict` on .txt, CSV and standard input, and `mlflow models serve` answering
texts. (The README's text data switches run through `dvc exp run`: tests/test_readme_commands.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import built_once
from helpers.commands import REPO, run_stages, tool_env
from helpers.data import write_text_folder_dataset

pytestmark = pytest.mark.slow
TRAIN = {"model": "text_bag", "epochs": 6, "batch_size": 16, "learning_rate": 0.05, "early_stopping_patience": 0,
         "text": {"vocabulary_size": 64, "sequence_length": 24}}  # fmt: skip


@pytest.fixture(scope="module")
def text_project(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "text", build_text_project, rewrite=("params.yaml",))


def build_text_project(root: Path) -> None:
    data = write_text_folder_dataset(root / "source")
    params = {
        "data": data,
        "prepare": {"shard_size": 50},
        "train": TRAIN,
        "evaluate": {"gate": {"min_accuracy": 0.9, "max_drop": None, "baseline": None}},
        "export": {"calibration_size": 60},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment_name": "text"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stages(root, "fetch", "prepare", "train", "evaluate", "export", "verify")


def test_every_form_scores_the_test_split_and_the_awkward_texts_as_keras_does(text_project):
    parity = json.loads((text_project / "reports/parity.json").read_text())
    assert parity["passed"], parity["failures"]
    forms = parity["formats"]
    assert set(forms) == {"keras", "saved_model", "onnx", "onnx_int8", "litert", "litert_int8", "mlflow_pyfunc"}
    assert forms["keras"]["accuracy"] >= 0.9
    for form in ("saved_model", "onnx", "litert", "mlflow_pyfunc"):
        assert forms[form]["probe_argmax_agreement"] == 1.0, form
        assert forms[form]["probe_max_abs_diff"] <= 1e-4, form


def test_the_metadata_and_the_card_state_the_text_contract(text_project):
    metadata = json.loads((text_project / "exported/metadata.json").read_text())
    assert metadata["input"] == {**metadata["input"], "name": "text", "dtype": "uint8", "shape": ["batch", 128],
                                 "layout": "NB"}  # fmt: skip
    text = metadata["text"]
    assert text["encoding"] == "UTF-8" and text["max_bytes"] == 128 and text["tokens"] == "words"
    assert text["saved_model_input"] == {"name": "text", "dtype": "string", "shape": ["batch"]}
    assert "sport" in metadata["class_names"]
    card = (text_project / "reports/model_card.md").read_text()
    assert "UTF-8" in card and "max_bytes" in card


def predict(text_project, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.predict", "--model", str(text_project / "exported/model.onnx"), "--json",
         "--top-k", "1", *args],
        input=stdin, capture_output=True, text=True, env=tool_env(), cwd=text_project,
    )  # fmt: skip


def test_the_predictor_takes_text_files_tables_and_standard_input(text_project, tmp_path):
    (tmp_path / "one.txt").write_text("Fußball goal match! score")
    (tmp_path / "texts.csv").write_text('text,id\nrain and cloud,1\n"bread, soup\nand cheese",2\n')
    (tmp_path / "bad.txt").write_bytes(b"\xff broken")
    proc = predict(text_project, str(tmp_path / "one.txt"), str(tmp_path / "texts.csv"), "-", str(tmp_path / "bad.txt"),
                   stdin="server compiler bug\nливень rain\n")  # fmt: skip
    assert proc.returncode == 1  # one bad input
    assert proc.stderr.strip() == f"error: {tmp_path / 'bad.txt'}: not UTF-8 (byte 0xff at offset 0)"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    top = {line["input"]: line["predictions"][0]["class"] for line in lines}
    assert top == {
        str(tmp_path / "one.txt"): "sport",
        f"{tmp_path / 'texts.csv'}:2": "weather",
        f"{tmp_path / 'texts.csv'}:4": "food",
        "-:1": "computers",
        "-:2": "weather",
    }


def test_mlflow_serves_the_registered_text_model_on_texts(text_project):
    """`mlflow models serve` of the registered version answers `{"inputs": {"text": [...]}}` with the
    ONNX file's probabilities."""
    from pipeline.classifier import open_classifier

    from helpers.servers import free_port, stop, wait_for_http

    registration = json.loads((text_project / "reports/export.json").read_text())
    uri = f"sqlite:///{text_project / 'mlflow.db'}"
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", f"models:/{registration['name']}/{registration['version']}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(text_project / "serve.log", "w") as log:
        server = subprocess.Popen(command, cwd=text_project, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=tool_env(MLFLOW_TRACKING_URI=uri))  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        texts = ["rain and wind", "", "Привет 日本語 😀", "goal " * 400]
        served = invoke(port, {"inputs": {"text": texts}})
        classifier = open_classifier(text_project / "exported/model.onnx")
        expected = classifier.probabilities(classifier.encode(texts))
        np.testing.assert_allclose(np.asarray(served["predictions"]["probabilities"]), expected, atol=1e-6)
        status, _ = invoke_status(port, {"inputs": {"words": ["a"]}})
        assert status == 400  # the wrong input name: MLflow's schema error
    finally:
        stop(server)


def invoke(port: int, body: dict) -> dict:
    status, answer = invoke_status(port, body)
    assert status == 200, answer
    return json.loads(answer)


def invoke_status(port: int, body: dict) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_pipeline_serve_answers_texts_over_both_protocols(text_project, tmp_path):
    """`pipeline-serve` on the text model: MLflow's JSON strings and Triton's client sending a BYTES
    tensor both get the ONNX file's own probabilities for the texts; a text that is no string is a 400."""
    import tritonclient.http as triton

    from pipeline.classifier import open_classifier

    from helpers.servers import post_json, serving

    model = text_project / "exported/model.onnx"
    classifier = open_classifier(model)
    texts = ["rain and wind", "", "Привет 日本語 😀", "goal " * 400]
    expected = classifier.probabilities(classifier.encode(texts))
    with serving(model, log=tmp_path / "serve.log") as (url, _):
        status, answer = post_json(f"{url}/invocations", {"inputs": {"text": texts}})
        assert status == 200, answer
        np.testing.assert_allclose(answer["predictions"]["probabilities"], expected, atol=1e-6)
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        tensor = triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.asarray([t.encode() for t in texts], dtype=object))
        probs = client.infer("model", [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        status, answer = post_json(f"{url}/invocations", {"inputs": {"text": [1, 2]}})
        assert status == 400 and "texts must be strings" in answer["message"]


def deployment_snippet(language: str, containing: str) -> str:
    """The docs/deploying.md code block in `language` that holds `containing`."""
    import re

    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "docs/deploying.md").read_text(), re.S)
    return next(block for block in blocks if containing in block)


def test_the_deployment_guide_s_text_snippets_run_as_written_in_python_and_node(text_project, tmp_path):
    """docs/deploying.md's text snippets, each with the ONNX file alone: onnxruntime in Python, and
    onnxruntime for Node.js in JavaScript, name the classes the project's classifier names."""
    import shutil

    from pipeline.classifier import open_classifier

    from helpers.commands import missing_tool

    if shutil.which("node") is None or shutil.which("npm") is None:
        missing_tool("Node.js and npm", "apt-get install nodejs npm")
    model = text_project / "exported/model.onnx"
    shutil.copy(model, tmp_path / "model.onnx")
    classifier = open_classifier(model)
    texts = ["Ein Text auf Deutsch", "и один по-русски"]
    expected = [classifier.class_names[i] for i in classifier.probabilities(classifier.encode(texts)).argmax(1)]

    (tmp_path / "snippet.py").write_text(deployment_snippet("python", "max_bytes"))
    python = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert python.stdout.strip() == repr(expected)

    # onnxruntime-node's install script fetches GPU libraries from NuGet (not reachable here): skipped.
    npm = ["npm", "install", "--no-audit", "--no-fund", "--silent", "onnxruntime-node@1.31.1"]
    subprocess.run(npm, cwd=tmp_path, env=tool_env(ONNXRUNTIME_NODE_INSTALL="skip"), check=True, capture_output=True)
    metadata = json.loads((text_project / "exported/metadata.json").read_text())
    call = (f"classify({json.dumps(texts)}, {metadata['text']['max_bytes']}, {json.dumps(metadata['class_names'])})"
            ".then((names) => console.log(JSON.stringify(names)));")  # fmt: skip
    (tmp_path / "snippet.js").write_text(deployment_snippet("javascript", "onnxruntime-node") + call + "\n")
    node = subprocess.run(["node", "snippet.js"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert json.loads(node.stdout) == expected
