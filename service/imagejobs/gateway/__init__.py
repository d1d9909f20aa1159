"""The Envoy gateway in front of the API processes: REST (HTTP/1.1, h2c) and native gRPC
on one listener.

    bootstrap.py  Envoy's bootstrap config as data (listener, filters, cluster, admin)
    replies.py    the error bodies Envoy makes itself, from domain.errors.ErrorBody
    rest.lua      the REST shaping around the transcoder (package data, run as is)
    envoy.py      the working directory (config JSON, rest.lua, descriptor set) and argv

`render(settings, workdir)` writes a working directory; `command(config)` is the envoy
command line for it. `imagejobs gateway --print-config` prints the config.
"""

from imagejobs.gateway.bootstrap import MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS
from imagejobs.gateway.envoy import command, config_json, render

__all__ = [
    "MAX_REQUEST_HEADERS",
    "MAX_REQUEST_HEADER_BYTES",
    "command",
    "config_json",
    "render",
]
