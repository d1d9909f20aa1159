#!/usr/bin/env bash
# Runs every client's tests against the stack at $IMAGEJOBS_TARGET (host:port: Envoy's
# port, REST and gRPC), and their direct-to-API test against $IMAGEJOBS_API_TARGET when
# that is set too. Each language's output follows a line naming it; the exit status is
# non-zero if any language failed (all of them run regardless).
#
#   IMAGEJOBS_TARGET=localhost:8080 clients/test.sh
#
# Needs Node 20+ with npm (the TypeScript client's packages come from its lockfile, by
# `npm ci`, when node_modules is missing or older than the lockfile) and Go 1.19+ with
# Debian's gRPC and protobuf packages (scripts/toolchains.sh installs them; see clients/go/go.mod).
set -uo pipefail
: "${IMAGEJOBS_TARGET:?set IMAGEJOBS_TARGET to host:port of the stack}"
here="$(cd "$(dirname "$0")" && pwd)"
failed=()

typescript() {
  cd "$here/typescript" || return 1
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error || return 1
  fi
  npm test --silent
}

golang() {
  # GOPATH mode over Debian's Go packages (no module proxy here): the module is linked
  # into a temporary GOPATH at its import path.
  local gopath
  gopath="$(mktemp -d)"
  trap 'rm -rf "$gopath"' RETURN
  mkdir -p "$gopath/src/imagejobs/clients"
  ln -s "$here/go" "$gopath/src/imagejobs/clients/go"
  cd "$gopath/src/imagejobs/clients/go" || return 1
  local unformatted
  unformatted="$(gofmt -l .)"
  if [ -n "$unformatted" ]; then
    echo "gofmt: not formatted: $unformatted"
    return 1
  fi
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go vet ./... &&
    GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go test -count=1 -timeout=120s -v ./...
}

run() { # name, directory, function
  echo ">>> $1 client (clients/$2) against $IMAGEJOBS_TARGET"
  if ! ("$3"); then
    failed+=("$1")
  fi
}
run TypeScript typescript typescript
run Go go golang
if [ ${#failed[@]} -gt 0 ]; then
  echo ">>> clients failed: ${failed[*]}"
  exit 1
fi
echo ">>> clients passed: TypeScript, Go"
