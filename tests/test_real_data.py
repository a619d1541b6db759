"""The real Fashion-MNIST from Debian's dataset-fashion-mnist: fetched, verified, prepared in full."""

import json
from pathlib import Path

import pytest

from pipeline import fetch, prepare
from pipeline.hashing import content_sha256

from helpers.commands import call_core, committed_params, missing_tool

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SOURCE = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def params():
    if not SOURCE.is_dir():
        missing_tool(str(SOURCE), "apt-get install dataset-fashion-mnist")
    params = committed_params()
    assert params["data"]["source"] == str(SOURCE)
    return params


def test_fetch_and_prepare_the_real_files(params, tmp_path):
    result = call_core(fetch.STAGE, params, outputs={"out": tmp_path / "raw"})
    assert result.summary == "4 idx files (4 checksums verified)"
    checksums = params["data"]["idx"]["sha256"]
    assert {name: content_sha256(tmp_path / "raw" / name) for name in checksums} == checksums
    outputs = {"out": tmp_path / "prepared", "report": tmp_path / "data.json"}
    call_core(prepare.STAGE, params, {"raw": tmp_path / "raw"}, outputs)
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["counts"]["train"] + report["counts"]["val"] == 60_000
    assert report["counts"]["test"] == 10_000
    assert report["counts"]["val"] == 6_000
    assert set(report["per_class"]["test"].values()) == {1_000}
    assert report["input_shape"] == [28, 28, 1]
    assert 0.28 < report["inputs"]["train_mean"] < 0.30
