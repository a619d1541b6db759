"""The ONNX-only predictor: no TensorFlow, metadata from the model, batches of files, clear errors,
and a clean virtualenv with only the base (predictor) dependencies."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from helpers.commands import REPO, run, tool_env
from helpers.hostile import png_declaring

PYTHON = os.path.abspath(sys.executable)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tiny_exports, tmp_path_factory):
    """The hand-set tiny classifier's exported files (no training: tests/helpers/exports.py), and its
    data's test images as PNG files named after their class and as one .npy array."""
    root = tmp_path_factory.mktemp("predict")
    images, labels = tiny_exports.test_split()
    class_names = tiny_exports.data.meta.class_names
    pngs = root / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images[:12]):
        Image.fromarray(image[..., 0]).save(pngs / f"{i:02d}_{class_names[labels[i]]}.png")
    np.save(root / "test.npy", images)
    return {
        "root": root,
        "exported": tiny_exports.directory,
        "model": tiny_exports.onnx,
        "pngs": pngs,
        "images": images,
        "labels": labels,
        "class_names": class_names,
    }


def invoke(port: int, body: dict, expect_error: bool = False):
    """POST a JSON body to `mlflow models serve`'s /invocations; (status, body) when an error is expected."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            assert not expect_error, "the server accepted a bad request"
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if not expect_error:
            raise
        return exc.code, json.load(exc)


def predict(args, cwd, python=PYTHON, check=True):
    proc = subprocess.run(
        [python, "-m", "pipeline.predict", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_directory_s_hidden_and_system_files_are_not_inputs(tmp_path):
    """A folder of photos copied from a Mac or Windows: the predictor lists it as prepare lists an
    image folder (pipeline/formats/image_folder.py: is_image_file), every image extension read."""
    from pipeline.predict import collect_inputs

    Image.new("L", (28, 28)).save(tmp_path / "shoe.png")
    Image.new("RGB", (28, 28)).save(tmp_path / "bag.webp")
    (tmp_path / "._shoe.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(18))  # AppleDouble
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]\n")
    items = collect_inputs([str(tmp_path)], (28, 28, 1))
    assert [(Path(item.name).name, item.error) for item in items] == [("bag.webp", None), ("shoe.png", None)]


def test_import_does_not_load_tensorflow_or_keras(exported, tmp_path):
    code = (
        "import sys; import pipeline.predict as p; p.main(['--json', '--model', sys.argv[1], sys.argv[2]]);"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'mlflow') if m in sys.modules];"
        "assert not bad, bad"
    )
    run([PYTHON, "-c", code, str(exported["model"]), str(exported["pngs"])], tmp_path)


def test_pngs_directory_and_npy_agree_with_the_labels(exported, tmp_path):
    out = json_lines(
        predict(["--json", "--top-k", "2", "--model", exported["model"], exported["pngs"]], tmp_path).stdout
    )
    assert len(out) == 12 and all(len(r["predictions"]) == 2 for r in out)
    names = exported["class_names"]
    correct = [r["predictions"][0]["class"] == Path(r["input"]).stem.split("_", 1)[1] for r in out]
    assert np.mean(correct) >= 0.9

    npy = json_lines(predict(["--json", "--model", exported["model"], exported["root"] / "test.npy"], tmp_path).stdout)
    assert len(npy) == 40 and npy[0]["input"].endswith("test.npy[0]")
    top1 = [names.index(r["predictions"][0]["class"]) for r in npy]
    assert np.mean(np.array(top1) == exported["labels"]) >= 0.9
    # The PNG of test image i and row i of the array get the same answer.
    assert [r["predictions"][0] for r in out] == [r["predictions"][0] for r in npy[:12]]


def test_feeds_raw_pixels_as_a_bare_onnxruntime_session_does(exported):
    import onnxruntime as ort

    from pipeline.classifier import OnnxClassifier

    classifier = OnnxClassifier(exported["model"])
    expected = ort.InferenceSession(str(exported["model"])).run(None, {"image": exported["images"]})[0]
    np.testing.assert_allclose(classifier.probabilities(exported["images"], batch_size=7), expected, atol=1e-6)


def test_other_sizes_and_colour_are_resized_and_greyed(exported, tmp_path):
    from pipeline.classifier import OnnxClassifier
    from pipeline.predict import load_image

    grey = exported["images"][3][..., 0]
    big = Image.fromarray(grey).resize((84, 84), Image.Resampling.NEAREST).convert("RGB")
    big.save(tmp_path / "big.jpg", quality=95)
    pixels = load_image(tmp_path / "big.jpg", (28, 28, 1))
    assert pixels.shape == (28, 28, 1)
    assert np.abs(pixels[..., 0].astype(int) - grey.astype(int)).mean() < 12
    classifier = OnnxClassifier(exported["model"])
    probs = classifier.probabilities(np.stack([pixels, exported["images"][3]]))
    assert probs[0].argmax() == probs[1].argmax()


def test_bad_inputs_are_named_and_the_rest_still_predicted(exported, tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5)))
    (tmp_path / "pickle.npy").write_bytes(b"garbage")
    good = sorted(exported["pngs"].iterdir())[0]
    proc = predict(
        [
            "--json",
            "--model",
            exported["model"],
            tmp_path / "fake.png",
            good,
            tmp_path / "wrong.npy",
            tmp_path / "missing.png",
            tmp_path / "pickle.npy",
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert errors[0] == f"error: {tmp_path / 'fake.png'}: not an image Pillow can read"
    assert errors[1].startswith(f"error: {tmp_path / 'wrong.npy'}: array shape (3, 5) is not")
    assert errors[2] == f"error: {tmp_path / 'missing.png'}: no such file"
    assert errors[3].startswith(f"error: {tmp_path / 'pickle.npy'}: not a NumPy .npy array")
    assert [r["input"] for r in json_lines(proc.stdout)] == [str(good)]


def test_model_without_metadata_is_refused(exported, tmp_path):
    model = onnx.load(str(exported["model"]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    proc = predict(["--model", tmp_path / "bare.onnx", exported["pngs"]], tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: {tmp_path / 'bare.onnx'}: metadata lacks class_names, input_shape, "
        "input_layout (not exported by this pipeline?)"
    )


def test_table_output_in_a_terminal_format(exported, tmp_path):
    out = predict(["--model", exported["model"], sorted(exported["pngs"].iterdir())[0]], tmp_path).stdout
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["input", "top", "classes"]
    name, predictions = row.split(None, 1)
    assert name.endswith(".png") and predictions.count("class_") == 3


def test_clean_virtualenv_with_only_the_predictor_dependencies(exported, tmp_path):
    """A deployment: the base install (onnxruntime, NumPy, Pillow) and the console script, nothing else."""
    venv = tmp_path / "deploy"
    uv = [PYTHON, "-m", "uv"]
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    run([*uv, "venv", "--quiet", "--python", PYTHON, str(venv)], tmp_path, **env)
    requirements = tmp_path / "requirements.txt"
    run(
        [
            *uv,
            "export",
            "--quiet",
            "--locked",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--output-file",
            str(requirements),
        ],
        REPO,
        **env,
    )
    python = str(venv / "bin/python")
    run([*uv, "pip", "install", "--quiet", "--python", python, "-r", str(requirements)], tmp_path, **env)
    run([*uv, "pip", "install", "--quiet", "--python", python, "--no-deps", str(REPO)], tmp_path, **env)
    installed = run([*uv, "pip", "list", "--python", python, "--format", "json"], tmp_path, **env).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert not names & {"tensorflow", "keras", "tf2onnx", "mlflow", "onnx"}, names
    proc = subprocess.run(
        [str(venv / "bin/pipeline-predict"), "--json", "--model", str(exported["model"]), str(exported["pngs"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json_lines(proc.stdout)
    correct = [r["predictions"][0]["class"] == Path(r["input"]).stem.split("_", 1)[1] for r in out]
    assert len(out) == 12 and np.mean(correct) >= 0.9


def test_a_litert_model_predicts_as_the_onnx_model_does(exported, tmp_path):
    """The same command, inputs and output for exported/model.tflite (ai-edge-litert); no
    onnxruntime imported, nothing of the runtime's on a quiet console."""
    args = ["--json", exported["pngs"], exported["root"] / "test.npy"]
    onnx_out = json_lines(predict(["--model", exported["model"], *args], tmp_path).stdout)
    litert = predict(["--model", exported["exported"] / "model.tflite", *args], tmp_path)
    assert litert.stderr == ""
    litert_out = json_lines(litert.stdout)
    assert [r["input"] for r in litert_out] == [r["input"] for r in onnx_out] and len(onnx_out) > 12
    for a, b in zip(onnx_out, litert_out, strict=True):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert abs(p["probability"] - q["probability"]) <= 2e-6
    probe = (
        "import sys; from pipeline.predict import main; main(sys.argv[1:]);"
        "assert 'onnxruntime' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)"
    )
    model = exported["exported"] / "model.int8.tflite"
    proc = subprocess.run([PYTHON, "-c", probe, "--model", str(model), "--json", str(exported["pngs"])],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    correct = [r["predictions"][0]["class"] == Path(r["input"]).stem.split("_", 1)[1] for r in json_lines(proc.stdout)]
    assert np.mean(correct) >= 0.75


def test_clean_virtualenv_with_only_the_litert_runtime(exported, tmp_path):
    """A phone-side check on a desktop: ai-edge-litert, NumPy and Pillow (the versions locked here)
    and the console script, no onnxruntime, no TensorFlow."""
    from importlib.metadata import version

    venv = tmp_path / "deploy"
    uv = [PYTHON, "-m", "uv"]
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    run([*uv, "venv", "--quiet", "--python", PYTHON, str(venv)], tmp_path, **env)
    python = str(venv / "bin/python")
    runtime = [f"{name}=={version(name)}" for name in ("ai-edge-litert", "numpy", "pillow")]
    run([*uv, "pip", "install", "--quiet", "--python", python, *runtime], tmp_path, **env)
    run([*uv, "pip", "install", "--quiet", "--python", python, "--no-deps", str(REPO)], tmp_path, **env)
    installed = run([*uv, "pip", "list", "--python", python, "--format", "json"], tmp_path, **env).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "ai-edge-litert" in names and not names & {"onnxruntime", "tensorflow", "keras", "mlflow"}, names
    model = exported["exported"] / "model.tflite"
    proc = subprocess.run([str(venv / "bin/pipeline-predict"), "--json", "--model", str(model), str(exported["pngs"])],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json_lines(proc.stdout)
    correct = [r["predictions"][0]["class"] == Path(r["input"]).stem.split("_", 1)[1] for r in out]
    assert len(out) == 12 and np.mean(correct) >= 0.9


def test_mlflow_serves_the_registered_model_with_the_same_classes(exported, tmp_path):
    """`mlflow models serve` (--env-manager local) on loopback answers like the local predictor."""

    from pipeline.classifier import OnnxClassifier
    from pipeline.mlflow_model import save_mlflow_model
    from pipeline.tracking import Run

    from helpers.servers import free_port, stop, wait_for_http

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Run.start(uri, "serving")
    metadata = json.loads((exported["model"].parent / "metadata.json").read_text())
    save = lambda local: save_mlflow_model(exported["model"], local, metadata)  # noqa: E731
    version = run.registry.register(run, save, "tiny-classifier")
    run.registry.set_alias("tiny-classifier", "champion", version)  # served by alias, as the README does
    run.end()

    port = free_port()
    mlflow = str(Path(PYTHON).parent / "mlflow")
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [
                mlflow,
                "models",
                "serve",
                "-m",
                "models:/tiny-classifier@champion",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=tool_env(MLFLOW_TRACKING_URI=uri),  # the venv first on PATH: MLflow starts its uvicorn
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        classifier = OnnxClassifier(exported["model"])
        pixels = exported["images"][:6]  # raw uint8 pixels as the IDX file holds them, as JSON numbers
        served = np.asarray(invoke(port, {"inputs": {"image": pixels.tolist()}})["predictions"]["probabilities"])
        # Values that are no uint8, a wrong shape and a wrong name get MLflow's schema error (HTTP 400).
        bad = pixels.astype(int)
        bad[0, 0, 0, 0] = 256
        status, body = invoke(port, {"inputs": {"image": bad.tolist()}}, expect_error=True)
        assert status == 400 and "256" in body["message"]
        status, body = invoke(port, {"inputs": {"image": pixels[..., 0].tolist()}}, expect_error=True)
        assert (
            status == 400
            and "Shape of input (6, 28, 28) does not match expected shape (-1, 28, 28, 1)" in body["message"]
        )
        status, body = invoke(port, {"inputs": {"pixels": pixels.tolist()}}, expect_error=True)
        assert status == 400 and "missing inputs ['image']" in body["message"]
    finally:
        stop(server)
    local = classifier.probabilities(pixels)
    assert served.shape == (6, len(exported["class_names"]))
    assert served.argmax(1).tolist() == local.argmax(1).tolist()
    np.testing.assert_allclose(served, local, atol=1e-5)


@pytest.mark.parametrize(
    "section, file", [("## onnxruntime", "model.onnx"), ("## LiteRT (phones and edge devices)", "model.tflite")]
)
def test_the_deployment_guide_s_runtime_alone_snippets_run_as_written(exported, tmp_path, section, file):
    """docs/deploying.md (README: Deploying points there): each runtime-alone image snippet runs in a
    directory holding only its model file and a PNG, and names the class the project's predictor names."""
    import re
    import shutil

    text = (REPO / "docs/deploying.md").read_text().split(f"\n{section}\n", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shutil.copy(exported["exported"] / file, tmp_path / file)
    png = sorted(exported["pngs"].iterdir())[0]
    shutil.copy(png, tmp_path / "shoe.png")
    (tmp_path / "snippet.py").write_text(snippet)
    out = subprocess.run([PYTHON, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    name, probability = out.split()
    expected = json_lines(predict(["--json", "--top-k", "1", "--model", exported["model"], png], tmp_path).stdout)
    assert name == expected[0]["predictions"][0]["class"]
    assert float(probability) == pytest.approx(expected[0]["predictions"][0]["probability"], abs=1e-5)


def test_a_truncated_or_foreign_tflite_file_is_one_line(exported, tmp_path):
    whole = (exported["exported"] / "model.tflite").read_bytes()
    (tmp_path / "cut.tflite").write_bytes(whole[:3000])
    (tmp_path / "text.tflite").write_text("not a model")
    for name, message in (("cut.tflite", "damaged or truncated LiteRT file"),
                          ("text.tflite", "not a LiteRT (.tflite) flatbuffer")):  # fmt: skip
        proc = predict(["--model", tmp_path / name, exported["pngs"]], tmp_path, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"error: {tmp_path / name}: {message}"


# ----------------------------------------------------------------------------- hostile inputs
def test_predictor_npy_declaring_a_trillion_values_or_holding_nan_is_one_line(tmp_path):
    from pipeline.predict import load_array

    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    assert huge.stat().st_size < 256
    (item,) = load_array(huge, (28, 28, 1))
    assert (
        item.error
        == f"{huge}: not a NumPy .npy array (header declares (1000000000000,) float64, more than the file holds)"
    )

    np.save(tmp_path / "nan.npy", np.full((2, 28, 28), np.nan))
    (item,) = load_array(tmp_path / "nan.npy", (28, 28, 1))
    assert item.error == f"{tmp_path / 'nan.npy'}: array holds NaN or infinite values"
    np.save(tmp_path / "big.npy", np.full((1, 28, 28), 300.0))
    (item,) = load_array(tmp_path / "big.npy", (28, 28, 1))
    assert item.error == f"{tmp_path / 'big.npy'}: pixel values must lie in 0..255, got 300.0..300.0"


def test_predictor_refuses_a_decompression_bomb_png_in_one_line(tmp_path):
    from pipeline.predict import collect_inputs

    (tmp_path / "bomb.png").write_bytes(png_declaring(30_000, 30_000))
    (item,) = collect_inputs([str(tmp_path / "bomb.png")], (28, 28, 1))
    assert item.error.startswith(f"{tmp_path / 'bomb.png'}: decompression bomb refused")
    assert "\n" not in item.error


def test_predictor_names_its_own_source_of_feature_names(tmp_path):
    from pipeline.predict import load_table

    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    (item,) = load_table(tmp_path / "rows.csv", ["f0", "f1"])
    assert (
        item.error
        == f"{tmp_path / 'rows.csv'}: no feature column 'f0' (the model's feature_names); columns are ['a', 'b']"
    )
