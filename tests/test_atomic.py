"""Atomic outputs (pipeline/atomic.py): every output built beside its target and put in place by a
rename, so a crash leaves the old output or none; the temporaries a killed process left are swept by
the next write of the same target, and only those."""

import os
import subprocess

import pytest

from pipeline.atomic import OutputPlaces, atomic_dir, atomic_file, swap_in, write_json

from helpers.hostile import PYTHON


def a_dead_pid() -> str:
    """The id of a process that has ended (as a SIGKILLed writer's has)."""
    return subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def test_temporaries_of_a_killed_stage_are_swept_by_the_next_run(tmp_path):
    """A SIGKILL mid-write leaves `.prepared.tmp-<pid>-*`; the next write of the same output removes it
    (its process is gone) and leaves a live process's temporary alone."""
    dead = a_dead_pid()
    stale = tmp_path / f".prepared.tmp-{dead}-x1y2"
    (stale / "train").mkdir(parents=True)
    (stale / "train/part-00000-of-00002.tfrecord").write_bytes(b"half")
    (tmp_path / f".prepared.old-{dead}").mkdir()
    (tmp_path / f".prepared-not-ours.tmp-{dead}-x").mkdir()  # another target's: not this one's to sweep
    live = tmp_path / f".prepared.tmp-{os.getpid()}-live"
    live.mkdir()
    places = OutputPlaces({"out": tmp_path / "prepared"})
    (places.places["out"] / "meta.json").write_text("{}")
    places.commit()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared"))
    assert leftovers == sorted([live.name, f".prepared-not-ours.tmp-{dead}-x"])
    assert (tmp_path / "prepared/meta.json").read_text() == "{}"


def test_output_places_put_in_place_what_was_written_and_leave_the_rest(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/old.json").write_text("old")
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported/stale.onnx").write_text("stale")
    places = OutputPlaces({
        "report": tmp_path / "reports/train.json",  # a file: its place has the file's own name
        "kept": tmp_path / "reports/old.json",  # not written this time: stays as it was
        "out": tmp_path / "exported",  # a directory: replaced as a whole
    })  # fmt: skip
    assert places.places["report"].name == "train.json" and places.places["report"].parent.is_dir()
    assert places.places["out"].is_dir() and not list(places.places["out"].iterdir())
    places.places["report"].write_text("new")
    (places.places["out"] / "model.onnx").write_text("onnx")
    assert not (tmp_path / "reports/train.json").exists()  # nothing in place before the commit
    places.commit()
    assert (tmp_path / "reports/train.json").read_text() == "new"
    assert (tmp_path / "reports/old.json").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no holder, no `.old` copy left


def test_discarded_places_leave_every_target_as_it_was(tmp_path):
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported/model.onnx").write_text("v1")
    places = OutputPlaces({"out": tmp_path / "exported", "report": tmp_path / "export.json"})
    (places.places["out"] / "model.onnx").write_text("v2")
    places.places["report"].write_text("{}")
    places.discard()
    assert (tmp_path / "exported/model.onnx").read_text() == "v1" and not (tmp_path / "export.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_swap_in_puts_a_directory_over_a_file_and_a_file_over_a_directory(tmp_path):
    (tmp_path / "new_dir").mkdir()
    (tmp_path / "new_dir/x").write_text("x")
    (tmp_path / "target").write_text("a file")
    swap_in(tmp_path / "new_dir", tmp_path / "target")
    assert (tmp_path / "target/x").read_text() == "x"
    (tmp_path / "new_file").write_text("y")
    swap_in(tmp_path / "new_file", tmp_path / "target")
    assert (tmp_path / "target").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_failed_write_leaves_the_old_file_or_directory_and_no_temporary(tmp_path):
    write_json(tmp_path / "report.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "report.json") as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "report.json").read_text() == '{\n  "v": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "part").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with atomic_file(tmp_path / "model.onnx", suffix=".onnx") as tmp:
        assert tmp.suffix == ".onnx"  # for writers that insist on one
        tmp.write_bytes(b"onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx"
