#!/usr/bin/env bash
# Set up the project: uv, the locked dependencies in .venv (uv.lock), and, on Debian as root,
# the default data set (package dataset-fashion-mnist). With --tests also what the test suite
# drives: Debian's chromium (the MLflow UI test) and postgresql (the team tracking server test).
# Safe to run again: it only fills gaps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export UV_PYTHON_DOWNLOADS=never      # use the machine's Python 3.11, download no interpreter
UV_VERSION=0.13.9

if command -v uv >/dev/null 2>&1; then
    UV=uv
else
    if [ ! -x .tools/bin/uv ]; then
        echo "setup: installing uv $UV_VERSION into .tools/" >&2
        python3 -m venv .tools
        .tools/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    fi
    UV=.tools/bin/uv
fi

# --tests also installs the optional extras the tests drive (Apache Beam: prepare.runner beam; pipeline-serve).
extras=(--extra pipeline)
[ "${1:-}" = "--tests" ] && extras+=(--extra beam --extra serve)
# --compile-bytecode: Python then loads the packages' .pyc files instead of compiling their sources at
# every start (TensorFlow's import: 9.4 s without them on this machine's 2 cores, 4.2 s with them);
# it matters where PYTHONDONTWRITEBYTECODE is set, as here, so Python never caches them itself.
echo "setup: installing locked dependencies into .venv/ (uv sync --locked)" >&2
"$UV" sync --locked --inexact --quiet --compile-bytecode "${extras[@]}"  # --inexact: keep an extra installed before

DATA=/usr/share/datasets/fashion-mnist
missing=()
[ -d "$DATA" ] || missing+=(dataset-fashion-mnist)
if [ "${1:-}" = "--tests" ]; then
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages: ${missing[*]} (install them, or set data.source in params.yaml)" >&2
    fi
fi

# `dvc plots show` draws offline: .dvc/config names this template, with Vega inlined (pipeline/plots_page.py).
[ -f .dvc/plots_template.html ] || .venv/bin/python -m pipeline.plots_page .dvc/plots_template.html >&2
