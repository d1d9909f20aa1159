#!/usr/bin/env bash
# Every check CI runs, in order: generated code fresh, buf lint, ruff, mypy, pytest. The
# pytest run includes the wheel check (tests/e2e/test_wheel.py, marker `wheel`): a wheel
# of this tree installed in a fresh venv elsewhere runs `imagejobs up` and a job.
# Run from the repository root inside the venv made by the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
"$PY" scripts/gen_protos.py --check
"$BIN/buf" lint
"$BIN/ruff" check service tests scripts bench
"$BIN/ruff" format --check service tests scripts bench
"$BIN/mypy"  # strict, on service/imagejobs, tests and bench ([tool.mypy] files)
"$PY" -m pytest -q -p no:cacheprovider "$@"
