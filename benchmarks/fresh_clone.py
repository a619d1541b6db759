"""README command 2 as CI runs it: a fresh clone of this checkout's HEAD, `CI=true bash .ci/run`
(setup from scratch, then the whole test suite), timed. Writes reports/fresh_clone.json.

    python benchmarks/fresh_clone.py [--work /tmp/fresh-clone] [--log /tmp/fresh-clone.log]

The clone shares uv's download cache with this machine (as a CI runner with a warm cache would);
its own .venv is built anew.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/fresh-clone")
    parser.add_argument("--log", default="/tmp/fresh-clone.log")
    parser.add_argument("--out", default=str(REPO / "reports/fresh_clone.json"))
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["CI"] = "true"
    started = time.perf_counter()
    with open(args.log, "w") as log:
        proc = subprocess.run(["bash", ".ci/run"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    seconds = time.perf_counter() - started
    text = Path(args.log).read_text()
    summary = re.findall(r"^=+ (.*(?:passed|failed).*) in ([\d.]+)s", text, re.M)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "commit": commit,
        "exit_status": proc.returncode,
        "seconds": round(seconds, 1),
        "tests": summary[-1][0] if summary else None,
        "test_seconds": float(summary[-1][1]) if summary else None,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
