"""Real processes for tests and benchmarks (`Stack`: nats-server or a local NATS cluster,
API servers, workers and Envoy on free loopback ports), and the helpers around them.

Shared by `tests/` and `bench/` (and usable by anyone testing against a local stack).
Nothing here imports pytest at module level: this package ships in the wheel.

    processes.py  ports, readiness polls with deadlines, scrapes, test TOML, stopping
    nats.py       the NATS node(s) of a stack: kill -9, stop, start; leaders, currency
    stack.py      the whole stack, started in `imagejobs up`'s order
"""

from imagejobs.testing.nats import NatsNodes
from imagejobs.testing.processes import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Samples,
    TomlTable,
    free_port,
    free_port_run,
    http_ok,
    require_binary,
    scrape,
    tcp_open,
    terminate,
    to_toml,
    toml_key,
    toml_value,
    wait_until,
)
from imagejobs.testing.stack import Stack

__all__ = [
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "NatsNodes",
    "Samples",
    "Stack",
    "TomlTable",
    "free_port",
    "free_port_run",
    "http_ok",
    "require_binary",
    "scrape",
    "tcp_open",
    "terminate",
    "to_toml",
    "toml_key",
    "toml_value",
    "wait_until",
]
