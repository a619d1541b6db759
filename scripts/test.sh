#!/usr/bin/env bash
# README command 2 (and CI's): set up if needed, lint, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k prepare, -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --tests
export PATH="$PWD/.venv/bin:$PATH"
echo "test: ruff check and ruff format --check (lint and format, pyproject.toml [tool.ruff])" >&2
ruff check --quiet .
ruff format --check --quiet .
# Two processes (pytest-xdist): the suite's stages wait on subprocesses, servers and browsers about
# half the time. worksteal: a process that runs out of tests takes some of the other's, so the long
# files at the end do not leave one process idle. PYTEST_WORKERS=0: one process.
exec python -m pytest -n "${PYTEST_WORKERS:-2}" --dist worksteal "$@"
