#!/usr/bin/env bash
# Sets up .venv, lints, and runs the whole test suite (slow tests included). Exit code is pytest's;
# "no tests collected" (exit 5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check jaxprof tests bench configs launch
.venv/bin/lint-imports  # the layer order in pyproject.toml [tool.importlinter]
set +e
.venv/bin/python -m pytest -n 2 --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
