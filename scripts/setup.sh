#!/usr/bin/env bash
# Set up the project: uv, the locked dependencies in .venv (uv.lock), and, on Debian as root,
# the default data set (package dataset-fashion-mnist). Safe to run again: it only fills gaps.
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

echo "setup: installing locked dependencies into .venv/ (uv sync --locked)" >&2
"$UV" sync --locked --quiet

DATA=/usr/share/datasets/fashion-mnist
if [ ! -d "$DATA" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's dataset-fashion-mnist into $DATA" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: $DATA is missing; install Debian's dataset-fashion-mnist or set data.source in params.yaml" >&2
    fi
fi
