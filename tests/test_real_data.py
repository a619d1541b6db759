"""The real Fashion-MNIST from Debian's dataset-fashion-mnist: fetched, verified, prepared in full."""

import os
from pathlib import Path

import pytest

from pipeline.fetch import fetch
from pipeline.params import load_params
from pipeline.prepare import prepare

from helpers.commands import REPO

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SOURCE = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def params():
    if not SOURCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SOURCE} is missing: CI must install dataset-fashion-mnist")
        pytest.skip(f"{SOURCE} missing (apt-get install dataset-fashion-mnist)")
    return load_params(REPO / "params.yaml")


def test_fetch_and_prepare_the_real_files(params, tmp_path):
    hashes = fetch(params.data, tmp_path / "raw")
    assert hashes == params.data.idx.sha256  # all four decompressed checksums verified
    report = prepare(tmp_path / "raw", tmp_path / "prepared", params)
    assert report["counts"]["train"] + report["counts"]["val"] == 60_000
    assert report["counts"]["test"] == 10_000
    assert report["counts"]["val"] == 6_000
    assert set(report["per_class"]["test"].values()) == {1_000}
    assert report["input_shape"] == [28, 28, 1]
    assert 0.28 < report["inputs"]["train_mean"] < 0.30
