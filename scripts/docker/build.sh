#!/usr/bin/env bash
# Build the one image every service of docker-compose.yml runs, once: the base image if
# it is missing (base.sh), the wheels (wheels.sh), then `docker build`. Compose then finds
# the image and builds nothing (docker-compose v1 would otherwise build it for the one
# service that has `build:` only when that service comes first; `docker compose` v2 builds
# it before starting the others either way).
#
#   scripts/docker/build.sh                      # -> imagejobs:local
#   IMAGE=registry.example/imagejobs:1 BASE_IMAGE=python:3.11-slim scripts/docker/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${IMAGE:-imagejobs:local}"
BASE_IMAGE="${BASE_IMAGE:-imagejobs-base:bookworm}"
started=$SECONDS
if [[ "$BASE_IMAGE" == imagejobs-base:* ]]; then
  BASE_IMAGE="$BASE_IMAGE" scripts/docker/base.sh
fi
scripts/docker/wheels.sh
# The classic builder: Debian's engine 20.10 comes without the buildx plugin that newer
# clients would use for BuildKit, and this Dockerfile needs nothing BuildKit adds.
DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >/dev/null
echo "build.sh: $IMAGE built in $((SECONDS - started)) s" \
  "($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
