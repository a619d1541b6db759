"""The one edge every stage runs through (pipeline/stage.py), on a small stage defined here: the paths
dvc.yaml passes, params validated whole and seen through the stage's own keys, outputs written into
temporary places and put in place only when the stage has succeeded, the publish hook's records,
the console line, and every failure as one line that leaves the previous outputs as they were."""

from __future__ import annotations

import errno
import json

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.stage import Stage, StageResult, read_output, write_record

DOC = "Stage `demo`: upper-cases a file.\n\nMore about it."


def upper_case(inputs, params, outputs, tracking) -> StageResult:
    text = inputs["source"].read_text()
    outputs["copy"].write_text(text.upper())
    (outputs["folder"] / "seed").write_text(str(params.prepare.seed))
    return StageResult(f"{len(text)} characters", warnings=["the text was short"] if len(text) < 10 else [])


def demo(core=upper_case, **parts) -> Stage:
    return Stage("demo", DOC, params=("prepare.seed",), inputs=("source",), outputs=("copy", "folder"), core=core,
                 **parts)  # fmt: skip


class Tracking:
    """A tracking of the test's own: what the edge told it (a stage's MLflow run gets the same calls)."""

    def __init__(self):
        self.failed: list[bool] = []
        self.published: list[str] = []

    def fail(self, interrupted: bool) -> None:
        self.failed.append(interrupted)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare": {"seed": 7}}))
    (tmp_path / "source.txt").write_text("hello")
    return tmp_path


ARGV = ["--params", "params.yaml", "--source", "source.txt", "--copy", "out/copy.txt", "--folder", "out/folder"]


def previous_outputs(workspace) -> dict:
    """Outputs of an earlier run, which a failed run must leave as they are."""
    (workspace / "out/folder").mkdir(parents=True)
    (workspace / "out/copy.txt").write_text("OLD")
    (workspace / "out/folder/seed").write_text("0")
    return files(workspace / "out")


def files(directory) -> dict:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*"))


def test_the_outputs_are_put_in_place_and_the_stage_says_what_it_did(workspace, capsys):
    demo().run(ARGV)
    assert files(workspace / "out") == {"copy.txt": "HELLO", "folder/seed": "7"}
    assert leftovers(workspace) == []
    out, err = capsys.readouterr()
    assert out == "demo: 5 characters\n"
    assert err == "demo: warning: the text was short\n"


def test_every_path_is_a_required_option_named_as_dvc_yaml_names_it(workspace, capsys):
    parser = demo().parser()
    assert parser.prog == "python -m pipeline.demo" and parser.description == "Stage `demo`: upper-cases a file."
    with pytest.raises(SystemExit) as exit_:
        demo().run(ARGV[:-2])
    assert exit_.value.code == 2
    assert "the following arguments are required: --folder" in capsys.readouterr().err
    assert not (workspace / "out").exists()


def test_a_mistake_anywhere_in_params_stops_the_stage_before_its_core_runs(workspace, capsys):
    (workspace / "params.yaml").write_text(yaml.safe_dump({"prepare": {"seed": 7}, "evaluate": {"batch_size": 0}}))
    ran = []
    with pytest.raises(SystemExit) as exit_:
        demo(core=lambda *args: ran.append(args)).run(ARGV)
    assert exit_.value.code == 1 and ran == []
    assert capsys.readouterr().err == "error: params.yaml: evaluate.batch_size must be >= 1, got 0\n"


def test_a_stage_reads_only_the_keys_it_declares(workspace):
    def greedy(inputs, params, outputs, tracking):
        outputs["copy"].write_text("half")
        return StageResult(f"{params.train.epochs} epochs")

    refused = r"params key 'train' is not among this stage's params \['prepare\.seed'\] \(dvc\.yaml\)"
    with pytest.raises(AttributeError, match=refused):
        demo(core=greedy).run(ARGV)
    assert not (workspace / "out/copy.txt").exists() and leftovers(workspace) == []


@pytest.mark.parametrize(
    "error, code, message",
    [
        (PipelineError("source.txt: not the text it should be"), 1, "error: source.txt: not the text it should be\n"),
        (KeyboardInterrupt(), 130, "error: interrupted\n"),
        (OSError(errno.ENOSPC, "No space left on device", "out/folder/seed"), 1,
         "error: out/folder/seed: no space left on the device; the previous outputs are kept\n"),
    ],
    ids=["pipeline-error", "interrupt", "full-disk"],
)  # fmt: skip
def test_a_failure_is_one_line_and_leaves_the_previous_outputs(workspace, capsys, error, code, message):
    before = previous_outputs(workspace)

    def failing(inputs, params, outputs, tracking):
        upper_case(inputs, params, outputs, tracking)  # half the work done, in the temporary places
        raise error

    tracking = Tracking()
    with pytest.raises(SystemExit) as exit_:
        demo(core=failing, tracking=lambda params, inputs: tracking).run(ARGV)
    assert exit_.value.code == code
    assert capsys.readouterr().err == message
    assert files(workspace / "out") == before and leftovers(workspace) == []
    assert tracking.failed == [isinstance(error, KeyboardInterrupt)]


def test_the_publish_hook_sees_the_written_outputs_and_its_records_are_written_by_the_edge(workspace, capsys):
    tracking = Tracking()

    def publish(result, tracking, outputs):
        tracking.published.append(outputs["copy"].read_text())  # written, not yet in place
        assert not (workspace / "out/copy.txt").exists()
        result.summary += "; published"
        return {"record": {"version": "3"}}

    stage = Stage("demo", DOC, params=("prepare.seed",), inputs=("source",), outputs=("copy", "folder", "record"),
                  core=upper_case, tracking=lambda params, inputs: tracking, publish=publish)  # fmt: skip
    stage.run([*ARGV, "--record", "out/record.json"])
    assert tracking.published == ["HELLO"] and tracking.failed == []
    assert json.loads((workspace / "out/record.json").read_text()) == {"version": "3"}
    assert capsys.readouterr().out == "demo: 5 characters; published\n"


def test_a_failed_verdict_puts_its_outputs_in_place_then_fails_the_stage(workspace, capsys):
    """A failed quality gate: its verdict is written (DVC shows it), and the pipeline stops."""

    def gate(inputs, params, outputs, tracking):
        result = upper_case(inputs, params, outputs, tracking)
        result.failure = "quality gate failed: too short"
        return result

    with pytest.raises(SystemExit) as exit_:
        demo(core=gate).run(ARGV)
    assert exit_.value.code == 1
    assert files(workspace / "out") == {"copy.txt": "HELLO", "folder/seed": "7"}
    out, err = capsys.readouterr()
    assert out == "demo: 5 characters\n" and err.endswith("error: quality gate failed: too short\n")


def test_a_discarded_result_puts_nothing_in_place(workspace, capsys):
    """What a multi-machine training's other workers return: they trained, the chief writes."""
    before = previous_outputs(workspace)

    def worker(inputs, params, outputs, tracking):
        upper_case(inputs, params, outputs, tracking)
        return StageResult("worker done; the chief wrote the outputs", discard=True)

    demo(core=worker).run(ARGV)
    assert files(workspace / "out") == before and leftovers(workspace) == []
    assert capsys.readouterr().out == "demo: worker done; the chief wrote the outputs\n"


def test_records_are_json_text_or_bytes(tmp_path):
    write_record(tmp_path / "a.json", {"b": [1, 2]})
    write_record(tmp_path / "card.md", "# Card\n")
    write_record(tmp_path / "raw.bin", b"\x00\x01")
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2]}
    assert (tmp_path / "card.md").read_text() == "# Card\n" and (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"


def test_another_stage_s_output_is_read_or_named_with_the_stage_that_makes_it(tmp_path):
    with pytest.raises(PipelineError, match=r"metrics\.json: not found \(run `dvc repro evaluate`\)$"):
        read_output(tmp_path / "metrics.json", "evaluate")
    (tmp_path / "metrics.json").write_text("{half")
    with pytest.raises(PipelineError, match=r"metrics\.json: not valid JSON \(needs test\.accuracy\)$"):
        read_output(tmp_path / "metrics.json", "evaluate", "test.accuracy")
    (tmp_path / "metrics.json").write_text('{"test": {"accuracy": 0.9}}')
    assert read_output(tmp_path / "metrics.json", "evaluate") == {"test": {"accuracy": 0.9}}
