#!/usr/bin/env bash
# Fill the image's build context with wheels, on the host: build/docker/deps/ (every
# dependency, as wheels) and build/docker/app/ (imagejobs itself). The Dockerfile then
# installs them with `pip install --no-index`: nothing is fetched inside the build, so
# the build needs no network and no CA bundle, and it gets exactly the versions (and the
# pip configuration: index, constraints) this host resolves. The dependency wheels are
# fetched again only when pyproject.toml or pip's constraints change, so their Docker
# layer stays cached while only the code changes.
#
#   scripts/docker/wheels.sh   (PYTHON: a Python 3.11 with pip; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
OUT=build/docker
# The image's Python is Debian bookworm's 3.11: wheels built for another minor version
# would not install there.
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "wheels.sh: $PYTHON is not Python 3.11 (the image's)" >&2; exit 1; }

constraints=$("$PYTHON" -m pip config get global.constraint 2>/dev/null || true)
stamp=$(cat pyproject.toml ${constraints:+"$constraints"} | sha256sum | cut -c1-16)
started=$SECONDS
if [[ -f $OUT/deps/.stamp && $(cat $OUT/deps/.stamp) == "$stamp" ]]; then
  echo "wheels.sh: dependency wheels up to date ($stamp)"
else
  rm -rf $OUT/deps && mkdir -p $OUT/deps
  # `pip wheel .` resolves the runtime dependencies (no extras) and writes each as a
  # wheel; the project's own wheel is dropped here and built below on its own
  "$PYTHON" -m pip wheel --quiet --wheel-dir $OUT/deps . 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f $OUT/deps/imagejobs-*.whl
  echo "$stamp" >$OUT/deps/.stamp
  echo "wheels.sh: $(ls $OUT/deps/*.whl | wc -l) dependency wheels in $((SECONDS - started)) s"
fi
rm -rf $OUT/app && mkdir -p $OUT/app
# the project's own wheel: without pip's isolated build environment when this Python
# has the build backend already (saves ~25 s of installing setuptools each time)
isolation=()
"$PYTHON" -c 'import setuptools, wheel' 2>/dev/null && isolation=(--no-build-isolation)
# SOURCE_DATE_EPOCH: the same code gives the same wheel, byte for byte, so Docker keeps
# the layers installed from it (a warm build of unchanged code builds nothing)
SOURCE_DATE_EPOCH=315532800 \
  "$PYTHON" -m pip wheel --quiet --no-deps "${isolation[@]}" --wheel-dir $OUT/app .
echo "wheels.sh: $(basename $OUT/app/*.whl) ($((SECONDS - started)) s in all)"
