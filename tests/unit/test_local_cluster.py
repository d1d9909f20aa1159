"""The local JetStream cluster `imagejobs up --nats-nodes N` starts (runtime/natsd.py),
what `imagejobs nats` takes for a node of someone else's cluster, the backoff of a child
`up` restarts (runtime/children.py), and the jobs out with workers at once. No process is
started here."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime import natsd
from imagejobs.runtime.children import RestartPolicy
from imagejobs.store.jetstream import consumer_config


def test_three_nodes_on_ports_derived_from_nats_port_each_routing_to_the_others(
    tmp_path: Path,
) -> None:
    settings = Settings(nats_port=14222, nats_nodes=3)
    nodes = natsd.local_cluster(settings, tmp_path)
    assert [n.name for n in nodes] == ["nats-1", "nats-2", "nats-3"]
    assert [n.port for n in nodes] == [14222, 14223, 14224]
    assert [n.cluster_port for n in nodes] == [16222, 16223, 16224]
    assert [n.http_port for n in nodes] == [18222, 18223, 18224]
    assert len({n.store_dir for n in nodes}) == 3  # a store of its own each
    for node in nodes:
        others = {o.route_url for o in nodes if o is not node}
        assert set(node.routes) == others
    assert settings.nats_servers == [n.client_url for n in nodes]  # every process gets all
    assert settings.replicas == 3
    argv = natsd.command(nodes[1])
    for flag, value in [
        ("--server_name", "nats-2"),
        ("--cluster_name", natsd.CLUSTER_NAME),
        ("--cluster", "nats://127.0.0.1:16223"),
        ("--routes", "nats://127.0.0.1:16222,nats://127.0.0.1:16224"),
        ("--store_dir", str(tmp_path / "nats" / "nats-2")),
    ]:
        assert argv[argv.index(flag) + 1] == value


def test_one_node_is_unclustered_and_more_than_three_keep_three_replicas(
    tmp_path: Path,
) -> None:
    [node] = natsd.local_cluster(Settings(nats_port=14222), tmp_path)
    assert "--cluster" not in natsd.command(node) and node.http_port == 0
    assert Settings(nats_nodes=1).replicas == 1
    assert Settings(nats_nodes=5).replicas == 3
    assert Settings(nats_nodes=1, stream_replicas=3).replicas == 3  # someone else's cluster


def test_a_node_of_a_deployed_cluster_takes_its_name_routes_and_listen_address() -> None:
    options = natsd.cluster_options(
        "prod", "nats://0.0.0.0:6222", "nats://nats-2:6222, nats://nats-3:6222"
    )
    assert options == {
        "cluster_name": "prod",
        "cluster_host": "0.0.0.0",
        "cluster_port": 6222,
        "routes": ("nats://nats-2:6222", "nats://nats-3:6222"),
    }
    assert natsd.cluster_options(None, None, "") == {}
    with pytest.raises(ConfigError):
        natsd.cluster_options("prod", None, "nats://nats-2:6222")  # routes need a listener
    with pytest.raises(ConfigError):
        natsd.cluster_options(None, "nats://0.0.0.0", "")  # no port


def test_a_restarted_child_backs_off_doubling_to_a_cap_and_quickly_again_once_stable() -> None:
    policy = RestartPolicy(first_s=1.0, max_s=8.0, stable_s=60.0)
    assert [policy.delay_s(ran_s=0.5) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert policy.delay_s(ran_s=61.0) == 1.0  # it had stayed up: a fresh crash
    assert policy.delay_s(ran_s=0.5) == 2.0


def test_the_jobs_out_with_workers_at_once_are_a_setting_for_a_large_cluster() -> None:
    assert consumer_config(Settings()).max_ack_pending == 1024
    assert consumer_config(Settings(worker_processes=16)).max_ack_pending == 16 * 32 * 4
    assert consumer_config(Settings(queue_max_in_flight=100_000)).max_ack_pending == 100_000
