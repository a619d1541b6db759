"""The Triton model repository written for an ONNX file: its config.pbtxt parsed with Triton's own
model-config schema (the protobuf tritonclient ships) and compared with the ONNX graph."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest
from google.protobuf import text_format

from pipeline.errors import PipelineError
from pipeline.triton import write_model_repository

from helpers.tiny_models import image_onnx, table_onnx


def parsed(config_path):
    from tritonclient.grpc import model_config_pb2

    # text_format.Parse refuses any field or enum value Triton's schema does not have.
    return text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())


def graph_io(path):
    model = onnx.load(str(path))
    return [
        (v.name, v.type.tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else -1
                                                for d in v.type.tensor_type.shape.dim])
        for v in (*model.graph.input, *model.graph.output)
    ]  # fmt: skip


@pytest.mark.parametrize("make", [image_onnx, table_onnx])
def test_config_parses_against_tritons_schema_and_matches_the_graph(make, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    source = make(tmp_path / "model.onnx")
    repository = write_model_repository(source, tmp_path / "triton", "tiny", max_batch_size=32, max_queue_delay_us=500)
    assert repository == tmp_path / "triton" / "tiny"
    config = parsed(repository / "config.pbtxt")
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    types = {onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.FLOAT: mc.TYPE_FP32}
    tensors = [(t.name, t.data_type, list(t.dims)) for t in (*config.input, *config.output)]
    # Triton's dims leave out the batch dimension (max_batch_size > 0): the graph's free first one.
    assert tensors == [(name, types[kind], dims[1:]) for name, kind, dims in graph_io(source)]
    assert all(dims[0] == -1 for _, _, dims in graph_io(source))
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
    ((group),) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert (repository / "1" / "model.onnx").read_bytes() == source.read_bytes()
    assert config.output[0].label_filename == "labels.txt"
    assert (repository / "labels.txt").read_text().splitlines() == ["class_0", "class_1", "class_2"]


def test_a_fixed_batch_dimension_is_not_batched_and_a_rewrite_replaces_the_repository(tmp_path):
    source = image_onnx(tmp_path / "fixed.onnx", batch=2)
    (tmp_path / "triton" / "m" / "2").mkdir(parents=True)  # an older repository's leftovers
    config = parsed(write_model_repository(source, tmp_path / "triton", "m") / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 4, 4, 1] and list(config.output[0].dims) == [2, 3]
    assert sorted(p.name for p in (tmp_path / "triton" / "m").iterdir()) == ["1", "config.pbtxt", "labels.txt"]


def test_a_bad_name_or_file_is_one_line(tmp_path):
    source = image_onnx(tmp_path / "model.onnx")
    with pytest.raises(PipelineError, match="plain directory name"):
        write_model_repository(source, tmp_path / "triton", "../escape")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(PipelineError, match="broken.onnx: not a readable ONNX file"):
        write_model_repository(tmp_path / "broken.onnx", tmp_path / "triton", "m")
    assert not (tmp_path / "triton" / "m").exists()


def test_the_command_line_writes_it_and_a_missing_file_is_one_line(tmp_path):
    source = image_onnx(tmp_path / "model.onnx")
    command = [os.path.abspath(sys.executable), "-m", "pipeline.triton"]
    subprocess.run([*command, str(source), str(tmp_path / "triton"), "tiny"], check=True, capture_output=True)
    assert parsed(tmp_path / "triton" / "tiny" / "config.pbtxt").name == "tiny"
    proc = subprocess.run(
        [*command, str(tmp_path / "nope.onnx"), str(tmp_path / "t"), "m"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr == f"error: {tmp_path / 'nope.onnx'}: model file not found\n"
