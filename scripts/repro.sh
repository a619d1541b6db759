#!/usr/bin/env bash
# README command 1: set up, then run the pipeline (`dvc repro`) on the default data.
# Extra arguments go to `dvc repro` (e.g. a stage name, or --force).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"    # dvc.yaml's `python` is the project's
exec dvc repro "$@"
