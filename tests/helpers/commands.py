"""Running the project's own commands as a user would: the repo root, the environment (the
project's venv first on PATH), subprocesses with their output kept, and params.yaml edits."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def committed(path: str) -> str:
    """A file of this repo as committed at HEAD: what the tests read of params.yaml (a README
    `dvc exp run -S ...` run in the workspace rewrites the workspace's copy)."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        import pytest

        pytest.fail(f"git show HEAD:{path} failed in {REPO} (the tests read committed params): {proc.stderr.strip()}")
    return proc.stdout


def committed_params() -> dict:
    """params.yaml as committed (raw YAML), whatever the workspace's copy says now."""
    return yaml.safe_load(committed("params.yaml"))


def under_ci() -> bool:
    """CI sets CI (GitHub Actions, GitLab; .ci/run sets it when the runner does not)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_tool(what: str, install: str):
    """What a test needs (a tool, a data set) is not installed: a failure under CI, which installs
    everything, and elsewhere a skip saying what to install. Call it before the test does any work
    (a fixture or the test's first line), never halfway through."""
    import pytest

    if under_ci():
        pytest.fail(f"{what} is missing: CI must install it ({install})")
    pytest.skip(f"{what} is missing ({install})")


def set_params(directory: Path, section: str, **values) -> None:
    """Change keys of one section of `directory`/params.yaml."""
    params = yaml.safe_load((directory / "params.yaml").read_text())
    params.setdefault(section, {}).update(values)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tool_env(**extra) -> dict:
    """Environment for subprocesses: the project's venv first on PATH (the stages keep TF quiet themselves)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.path.abspath(sys.executable)).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def stage_argv(stage: str, python: str = "python") -> list[str]:
    """The stage's command line exactly as dvc.yaml gives it (every path an argument)."""
    argv = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert argv[:3] == ["python", "-m", f"pipeline.{stage}"], argv
    return [python, *argv[1:]]


def run_stages(directory: Path, *stages: str) -> None:
    """Run stages in this process, each with the command line dvc.yaml gives it (`python -m
    pipeline.<stage> ...`), in `directory`: the stages' own code and paths, without a new Python and
    TensorFlow start for each."""
    environment = dict(os.environ)  # a stage sets its own process's logging variables: keep them here
    try:
        for stage in stages:
            with contextlib.chdir(directory):
                importlib.import_module(f"pipeline.{stage}").main(stage_argv(stage)[3:])
    finally:
        os.environ.clear()
        os.environ.update(environment)


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own with only loopback up: nothing can be downloaded."""
    import pytest

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to prove the Beam runner works offline")
    user = [] if os.geteuid() == 0 else ["-r"]
    return ["unshare", *user, "-n", "sh", "-c", f"ip link set lo up && exec {shlex.join(command)}"]


def call_core(stage, params: dict, inputs: dict | None = None, outputs: dict | None = None, tracking=None):
    """A stage's core as its edge calls it (pipeline/stage.py): params validated whole and seen
    through the stage's keys, each output written into a temporary place, then put in place; no
    publishing. Returns the core's StageResult."""
    from pipeline.atomic import OutputPlaces
    from pipeline.params import Scoped, parse_params

    places = OutputPlaces(outputs or {})
    try:
        result = stage.core(inputs or {}, Scoped(parse_params(params), stage.params), places.places, tracking)
    except BaseException:
        places.discard()
        raise
    places.commit()
    return result


def without_loopback(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own whose loopback stays down (`unshare -n` alone):
    not even localhost answers, as in a sandbox that forgot `ip link set lo up`."""
    import pytest

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to cut loopback")
    user = [] if os.geteuid() == 0 else ["-r"]
    return ["unshare", *user, "-n", *command]


def experiments(repo) -> dict[str, dict]:
    """name -> {params, metrics} from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                metrics = data.get("metrics", {})
                found[revision.get("name") or exp.get("name")] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": metrics.get("reports/metrics.json", {}).get("data", {}),
                    "parity": metrics.get("reports/parity.json", {}).get("data", {}),
                }
    return found
