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
exec python -m pytest "$@"
