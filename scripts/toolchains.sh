#!/usr/bin/env bash
# The system tools the checks and tests need beyond pip, installed by the project itself
# (scripts/check.sh runs this first, so the README's test command works on a fresh
# machine). Idempotent and quiet: no apt at all when every package is there.
#
# - Go and its gRPC/protobuf packages from Debian (no Go module proxy is reachable; see
#   clients/go/go.mod); golang/protobuf 1.5 replaces the 1.3 that grpc-dev would bring
#   (1.3 cannot marshal protoc-gen-go 1.28's messages). They build the Go client and give
#   the code generator its Go plugins.
# - Debian's chromium (the web console's browser test, driven by playwright) and
#   prometheus (promtool's rule checks, and a real server scraping a stack).
# - Debian's nghttp2-client: h2load, bench/run.py's load generator (C, a fraction of a
#   core; the Python fallback competes for the 2 cores with what it measures). Here, with
#   the other system tools, so that the bench itself never needs root or apt.
# - the TypeScript client's npm packages, exactly as its lockfile pins them.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc chromium prometheus
  nghttp2-client)

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return
  fi
  if ! command -v apt-get >/dev/null; then
    echo "toolchains: missing ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  echo "toolchains: apt installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

apt_install "${APT_PACKAGES[@]}"
npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
