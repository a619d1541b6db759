#!/usr/bin/env bash
# A team MLflow tracking server on loopback: PostgreSQL backend store, local artifact root.
#
#   scripts/mlflow-server.sh postgresql://mlflow@127.0.0.1:5432/mlflow /srv/mlflow-artifacts [PORT]
#
# Then point the pipeline at it:  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dvc repro
# Artifacts are served by the server (--serve-artifacts), so clients need no access to the root.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
BACKEND=$1
ARTIFACTS=$2
PORT=${3:-5000}
case "$BACKEND" in
    postgresql://*) BACKEND="postgresql+psycopg2://${BACKEND#postgresql://}" ;;
esac
mkdir -p "$ARTIFACTS"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MLFLOW="$(command -v mlflow || true)"
[ -x .venv/bin/mlflow ] && MLFLOW=.venv/bin/mlflow
if [ -z "$MLFLOW" ]; then echo "mlflow-server.sh: mlflow not found: run scripts/setup.sh, or put mlflow on PATH" >&2; exit 1; fi
exec "$MLFLOW" server \
    --backend-store-uri "$BACKEND" \
    --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    --host 127.0.0.1 --port "$PORT" --workers 2
