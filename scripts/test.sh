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
# Two processes, each taking whole test files (a file's fixtures are built once, in its process): the
# suite's stages wait on subprocesses, servers and browsers about half the time. PYTEST_WORKERS=0: one.
exec python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
