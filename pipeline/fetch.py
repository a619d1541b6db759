"""Stage `fetch`: make the raw data set available under data/raw/ and verify its checksums.

`data.source` is a local directory (default: Debian's dataset-fashion-mnist) or an http(s) URL
prefix. Each file in `data.files` is copied or downloaded (with a progress bar), then checked
against `data.sha256`, the sha256 of its decompressed content. Does not import TensorFlow.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import atomic_dir
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError
from pipeline.idx import content_sha256
from pipeline.params import DataParams, load_params

_DOWNLOAD_CHUNK = 1 << 16


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None, file=sys.stderr) as bar:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"{url}: download failed ({reason})") from None


def copy_local(source_dir: Path, name: str, dest: Path) -> None:
    src = source_dir / name
    if not src.is_file():
        raise PipelineError(f"{src}: file not found (data.files names it under data.source)")
    shutil.copyfile(src, dest)


def verify(path: Path, expected: str | None) -> str:
    actual = content_sha256(path)
    if expected is not None and actual != expected:
        raise PipelineError(
            f"{path.name}: checksum mismatch: data.sha256 expects {expected}, decompressed content has {actual}"
        )
    return actual


def fetch(data: DataParams, out_dir: Path) -> dict[str, str]:
    """Fill `out_dir` with the verified raw files; returns name -> sha256 of decompressed content."""
    remote = is_url(data.source)
    source_dir = Path(data.source)
    if not remote and not source_dir.is_dir():
        raise PipelineError(
            f"data.source: {data.source} is not a directory "
            "(on Debian: apt-get install dataset-fashion-mnist; or set data.source to a directory or URL)"
        )
    hashes = {}
    with atomic_dir(out_dir) as tmp:
        for name in data.files.names():
            dest = tmp / name
            if remote:
                download(f"{data.source.rstrip('/')}/{name}", dest)
            else:
                copy_local(source_dir, name, dest)
            hashes[name] = verify(dest, data.sha256.get(name))
    return hashes


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("fetch", __doc__)
    parser.add_argument("--out", default="data/raw", help="directory for the raw files")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    hashes = fetch(params.data, Path(args.out))
    checked = sum(name in params.data.sha256 for name in hashes)
    print(f"fetch: {len(hashes)} files in {args.out} ({checked} checksums verified)")


if __name__ == "__main__":
    run_cli(main)
