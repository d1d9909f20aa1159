#!/usr/bin/env bash
# Every check CI runs, in order: generated code fresh, buf lint, buf breaking, ruff, mypy,
# pytest. The pytest run includes the wheel check (tests/e2e/test_wheel.py, marker
# `wheel`): a wheel of this tree installed in a fresh venv elsewhere runs `imagejobs up`
# and a job.
# Run from the repository root inside the venv made by the README's test command. The
# system tools the tests need (Go, the TypeScript client's packages, ...) are installed
# first by scripts/toolchains.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/toolchains.sh
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
"$PY" scripts/gen_protos.py --check
"$BIN/buf" lint

# The gRPC wire must not break: the proto against the previous commit's (the WIRE_JSON
# rules in buf.yaml; on main that is the main branch's previous proto). A commit that
# breaks it on purpose says so in a `Buf-Skip-Breaking: <why>` trailer of its message,
# which also covers the merge commit that brings it in (HEAD~1..HEAD holds it).
breaking() {
  if ! git rev-parse -q --verify HEAD~1 >/dev/null 2>&1; then
    echo "buf breaking: skipped: no previous commit (a shallow clone, or the first commit)"
    return
  fi
  if ! git cat-file -e HEAD~1:proto 2>/dev/null; then
    echo "buf breaking: skipped: the previous commit has no proto/"
    return
  fi
  local why
  why="$(git log --format=%B HEAD~1..HEAD | sed -n 's/^Buf-Skip-Breaking: *//p' | head -n 1)"
  if [ -n "$why" ]; then
    echo "buf breaking: skipped by a Buf-Skip-Breaking trailer: $why"
    return
  fi
  "$BIN/buf" breaking --against '.git#ref=HEAD~1'
  echo "buf breaking: the proto is wire- and JSON-compatible with HEAD~1"
}
breaking
"$BIN/ruff" check service tests scripts bench
"$BIN/ruff" format --check service tests scripts bench
"$BIN/mypy"  # strict, on service/imagejobs, tests and bench ([tool.mypy] files)
"$PY" -m pytest -q -p no:cacheprovider "$@"
