"""Guards for the codebase itself: what DVC sees of the code, where defaults live, and what the
README tells people to type. Each one fails the moment the two sides drift apart."""

from __future__ import annotations

import ast
import functools
import re

import yaml

from pipeline.params import Params, parse_params

from helpers.commands import REPO, committed_params


def source_of(module: str):
    """The file of a `pipeline` module given relative to the package: "train", "formats", "formats.idx"."""
    path = REPO / "pipeline" / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def with_packages(module: str) -> set[str]:
    """Importing `a.b` runs package `a` first: both are code the importer runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@functools.cache  # the files do not change while the tests read them
def pipeline_imports(module: str) -> frozenset[str]:
    """The `pipeline` modules `module` imports anywhere in its file (lazy imports in functions too)."""
    tree = ast.parse(source_of(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            package = node.module.removeprefix("pipeline").lstrip(".")
            for alias in node.names:  # `from pipeline.formats import idx` imports a submodule
                sub = f"{package}.{alias.name}" if package else alias.name
                if source_of(sub).is_file():
                    found |= with_packages(sub)
            if package:
                found |= with_packages(package)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    found |= with_packages(alias.name.removeprefix("pipeline."))
    return frozenset(found)


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(pipeline_imports(current))
    return seen


def test_each_stage_declares_every_pipeline_module_it_runs():
    """A stage's code deps in dvc.yaml cover everything its command imports, transitively, so a
    change to any of that code reruns the stage (and nothing it does not run)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = re.search(r"python -m pipeline\.(\w+)", stage["cmd"]).group(1)
        declared = {dep for dep in stage["deps"] if isinstance(dep, str) and dep.startswith("pipeline/")}
        needed = {str(source_of(m).relative_to(REPO)) for m in closure(module)}
        assert needed - declared == set(), f"stage {name} runs code it does not declare"
        assert declared - needed == set(), f"stage {name} declares code it does not run"


# What params.yaml sets for the default data set (Fashion-MNIST's checksums and class names) on top
# of the IDX format's own defaults (none: a generic IDX file's classes are its labels 0..n-1).
DEFAULT_DATA_SET = ("sha256", "class_names")


def test_schema_defaults_are_params_yaml():
    """One source of truth: params.yaml holds the schema's defaults (keys null there mean "the
    preset's"), but for the default data set's own settings."""
    schema, committed = Params().model_dump(mode="json"), parse_params(committed_params()).model_dump(mode="json")
    for key in DEFAULT_DATA_SET:
        assert schema["data"]["idx"].pop(key) is None and committed["data"]["idx"].pop(key)
    assert schema == committed


def test_the_schema_has_a_section_for_each_reader():
    from pipeline.formats import FORMATS
    from pipeline.params import FORMAT_SECTIONS

    assert list(FORMAT_SECTIONS) == list(FORMATS)


def dotted(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_readme_is_a_guide_that_starts_with_its_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move reference material to docs/"
    first_block = lines[lines.index("```bash") + 1 : lines.index("```", lines.index("```bash") + 1)]
    assert [line.split()[:2] for line in first_block] == [["bash", "scripts/repro.sh"], ["bash", "scripts/test.sh"]]


def test_every_command_and_key_the_readme_names_exists():
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    modules = set(re.findall(r"python -m pipeline\.(\w+)", readme)) - {"X", "stage"}
    assert modules and all((REPO / "pipeline" / f"{m}.py").is_file() for m in modules), modules
    flat = dotted(parse_params(committed_params()).model_dump(mode="json"))  # every format's section too
    keys = set(re.findall(r"-S '?([a-z_]+\.[\w.]*)=", readme))  # params keys are dotted
    assert keys
    for key in keys:
        assert key in flat or any(k.startswith(f"{key}.") for k in flat), f"README sets unknown key {key}"
    for path in re.findall(r"`((?:pipeline|benchmarks|scripts|tests)/[\w./-]+\.(?:py|sh))`", readme):
        assert (REPO / path).is_file(), f"README names {path}, which does not exist"


def stage_modules() -> dict[str, object]:
    import importlib

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (stage, importlib.import_module(f"pipeline.{name}").STAGE) for name, stage in stages.items()}


def test_each_stage_reads_exactly_the_params_keys_dvc_yaml_lists():
    """A stage sees only the keys its STAGE declares (pipeline/params.py: Scoped refuses any other),
    and those are the keys dvc.yaml tracks for it: a change to any other key cannot change its
    results, and a change to these reruns it."""
    for name, (stage, declared) in stage_modules().items():
        assert list(declared.params) == stage.get("params", []), name


def test_every_path_a_stage_takes_is_on_its_dvc_yaml_command_line():
    """dvc.yaml holds the only copy of each path: the stages' options are required, with no defaults."""
    for name, (stage, declared) in stage_modules().items():
        options = set(re.findall(r"--([a-z-]+)", stage["cmd"]))
        options_taken = (*declared.inputs, *declared.outputs, *declared.state)
        expected = {"params", *(o.replace("_", "-") for o in options_taken)}
        assert options == expected, name
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for keyword in node.keywords:
                    default = getattr(keyword.value, "value", None)
                    if keyword.arg == "default" and isinstance(default, str) and "/" in default:
                        assert path.name in ("predict.py", "plots_page.py"), f"{path.name}: path default {default}"


def test_docs_speed_is_what_the_benchmarks_json_gives(tmp_path):
    """docs/speed.md is rendered from reports/*.json by benchmarks/speed_doc.py: a figure typed by hand,
    or a JSON committed without the page, fails here; `dvc repro` (README command 1) rewriting
    reports/metrics.json and its neighbours in the workspace does not (speed_doc.py --check)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "benchmarks/speed_doc.py", "--check"], cwd=REPO)
    assert proc.returncode == 0, "docs/speed.md is stale: run `python benchmarks/speed_doc.py`"


def test_the_docs_guard_survives_readme_command_1_and_still_catches_drift(tmp_path):
    """README command 1 (`dvc repro`) rewrites reports/metrics.json and train.json with this machine's
    run; README command 2 then failed here ('docs/speed.md is stale'): the guard compared a run's
    figures with the committed page. It compares what it can: the working tree's page with its JSON,
    or, while the page is the committed one, the committed page with the committed JSON."""
    import json
    import shutil
    import subprocess
    import sys

    from helpers.commands import run

    (tmp_path / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks/speed_doc.py", tmp_path / "benchmarks")
    (tmp_path / "reports").mkdir()
    (tmp_path / "docs").mkdir()

    def write_run(accuracy: float, seconds: float) -> None:
        (tmp_path / "reports/metrics.json").write_text(json.dumps({"test": {"accuracy": accuracy, "macro_f1": 0.9}}))
        (tmp_path / "reports/train.json").write_text(json.dumps({"epochs_run": 20, "training_seconds": seconds}))

    def check() -> int:
        return subprocess.run([sys.executable, "benchmarks/speed_doc.py", "--check"], cwd=tmp_path).returncode

    def commit() -> None:
        run(["git", "add", "-A"], tmp_path)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "figures"], tmp_path)

    write_run(0.9368, 502.2)
    run([sys.executable, "benchmarks/speed_doc.py"], tmp_path)
    run(["git", "init", "-q"], tmp_path)
    commit()
    assert check() == 0

    write_run(0.9351, 1210.7)  # README command 1 on a slower machine
    assert check() == 0

    page = (tmp_path / "docs/speed.md").read_text()
    (tmp_path / "docs/speed.md").write_text(page.replace("502 s of training", "480 s of training"))
    assert check() == 1  # a figure typed by hand
    (tmp_path / "docs/speed.md").write_text(page)
    commit()
    assert check() == 1  # the run's JSON committed without its page
    run([sys.executable, "benchmarks/speed_doc.py"], tmp_path)
    assert "1211 s of training" in (tmp_path / "docs/speed.md").read_text()
    assert check() == 0


# ----------------------------------------------------------------------------- the house's shape
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def pipeline_modules() -> list[str]:
    """Every module of the package, dotted below `pipeline` ("train", "formats", "formats.idx")."""
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        parts = path.relative_to(REPO / "pipeline").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found.append(name)
    return found


def test_the_import_graph_has_no_circle():
    """No module imports (even lazily, inside a function) one that imports it back; a submodule's
    import of its own package is not a dependency on it."""
    graph = {m: {i for i in pipeline_imports(m) if not m.startswith(f"{i}.")} - {m} for m in pipeline_modules()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            assert state.get(child) != "open", f"import circle: {' -> '.join(path + [module, child])}"
            if child not in state:
                visit(child, path + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_no_module_or_function_is_longer_than_a_reader_holds():
    for module in pipeline_modules():
        path = source_of(module)
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: split it"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                assert size <= MAX_FUNCTION_LINES, f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {size} lines"


def test_every_stage_has_one_edge():
    """Each dvc.yaml stage's module declares its STAGE (pipeline/stage.py): the one place its paths,
    params, outputs and tracking meet."""
    from pipeline.stage import Stage

    for name, (_, declared) in stage_modules().items():
        assert isinstance(declared, Stage), name


# Modules proved by a test file named for another one: the test file's imports reach the module.
PROVED_BY = {
    "errors": "test_cli",
    "plots_page": "test_dvc_pipeline",
    "hashing": "test_fetch",
    "formats.base": "test_formats", "formats.cifar10": "test_formats", "formats.csv": "test_formats",
    "formats.folders": "test_formats", "formats.image_folder": "test_formats",
    "normalization": "test_model", "rebuild": "test_model",
    "onnx_export": "test_onnx_graph",
    "format_sections": "test_params", "safe_yaml": "test_params", "schema": "test_params",
    "mlflow_model": "test_predict", "text_model_code": "test_predict",
    "beam": "test_prepare",
    "presets": "test_presets_pipeline",
    "registry": "test_promote",
    "multi_worker": "test_scale_out",
    "serving": "test_serve", "serving.app": "test_serve", "serving.batching": "test_serve",
    "serving.cli": "test_serve", "serving.inputs": "test_serve", "serving.v2": "test_serve",
    "formats.text_folder": "test_text_folder",
    "formats.text_table": "test_text_table",
    "lineage": "test_tracking",
    "history": "test_train", "training": "test_train", "training_run": "test_train",
    "search_runs": "test_tune", "search_space": "test_tune", "study": "test_tune", "study_design": "test_tune",
    "tuned": "test_tune",
    "study_storage": "test_tune_storage", "tune_worker": "test_tune_storage",
}  # fmt: skip


def has_behaviour(module: str) -> bool:
    tree = ast.parse(source_of(module).read_text())
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(tree))


def test_every_module_with_behaviour_has_a_test_file():
    """tests/test_<module>.py, or the test file PROVED_BY names, whose imports (transitively), command
    lines (`python -m pipeline.<module>`) or stages run (`stage_argv("train")`) reach the module."""
    for module in filter(has_behaviour, pipeline_modules()):
        own = REPO / "tests" / f"test_{module.rsplit('.', 1)[-1]}.py"
        if own.is_file():
            continue
        assert module in PROVED_BY, f"pipeline/{module}: no tests/{own.name} and no entry in PROVED_BY"
        test = REPO / "tests" / f"{PROVED_BY[module]}.py"
        text = test.read_text()
        reached = set()
        named = re.findall(r"pipeline\.([\w.]+)", text) + re.findall(r"from pipeline import (\w+)", text)
        for imported in named + re.findall(r"stage_argv\(\"(\w+)\"", text):
            name = imported.rstrip(".")
            while name and not source_of(name).is_file() and not (REPO / "pipeline" / name.replace(".", "/")).is_dir():
                name = name.rpartition(".")[0]
            if name:
                reached |= closure(name)
        assert module in reached, f"pipeline/{module}: {test.name} does not reach it"
