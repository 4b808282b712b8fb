"""Three `halyard serve` processes on loopback, forming one cluster over QUIC, and paho
clients spread over them: a message published on one node reaches subscribers on the others in
order, a retained message set on one node is sent to a subscriber on another, and the will of a
client lost on one node reaches subscribers on another."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from harness import Broker, Client, halyard_bin, launch_broker, wait_for_broker

NODES = (1, 2, 3)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Broker]]:
    root: Path = tmp_path_factory.mktemp("cluster")
    certs = root / "certs"
    subprocess.run(
        [halyard_bin(), "cluster-certs", "--out", str(certs), "--nodes", ",".join(map(str, NODES))],
        check=True,
        capture_output=True,
    )
    ports = {node: _free_udp_port() for node in NODES}
    members = ",".join(f"{node}=127.0.0.1:{port}" for node, port in ports.items())
    launched = []
    for node in NODES:
        workdir = root / f"node-{node}"
        workdir.mkdir()
        launched.append(
            launch_broker(
                workdir,
                [
                    "--node-id",
                    str(node),
                    "--peer-listen",
                    f"127.0.0.1:{ports[node]}",
                    "--initial-members",
                    members,
                ],
                {
                    "HALYARD_CLUSTER__CA_CERT": str(certs / "ca.pem"),
                    "HALYARD_CLUSTER__CERT": str(certs / f"node-{node}.pem"),
                    "HALYARD_CLUSTER__KEY": str(certs / f"node-{node}.key"),
                },
            )
        )
    brokers = []
    try:
        for node in launched:
            brokers.append(wait_for_broker(node))
        yield brokers
        for broker in brokers:
            assert broker.stop() == 0, f"a node did not stop cleanly\n{broker.log.text()}"
    finally:
        for node in launched:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()


def _client(broker: Broker, client_id: str, will: tuple[str, bytes, int, bool] | None = None) -> Client:
    client = Client(broker, client_id, mqtt.MQTTv5, True, will)
    client.connect()
    return client


def _wait_for(what: str, ready: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _routes(broker: Broker) -> float:
    return broker.metrics().value("halyard_cluster_remote_routes") or 0.0


def test_a_message_published_on_one_node_reaches_subscribers_on_the_others_in_order(
    cluster: list[Broker],
) -> None:
    first, second, third = cluster
    exact = _client(second, "exact-on-2")
    exact.subscribe("fleet/7/temp", 1)
    wildcard = _client(third, "wildcard-on-3")
    wildcard.subscribe("fleet/#", 1)
    _wait_for("node 1 to learn both routes", lambda: _routes(first) >= 2)
    publisher = _client(first, "publisher-on-1")
    for n in range(30):
        publisher.publish("fleet/7/temp", str(n).encode(), qos=1)
    for subscriber in (exact, wildcard):
        got = [subscriber.expect() for _ in range(30)]
        assert [m.payload.decode() for m in got] == [str(n) for n in range(30)]
        assert all(m.topic == "fleet/7/temp" for m in got)
    for client in (exact, wildcard, publisher):
        client.disconnect()


def test_a_message_retained_on_one_node_is_sent_to_a_subscriber_on_another(
    cluster: list[Broker],
) -> None:
    first, _, third = cluster
    publisher = _client(first, "retainer-on-1")
    publisher.publish("plant/boiler/state", b"hot", qos=1, retain=True)
    _wait_for(
        "node 3 to hold the retained message",
        lambda: (third.metrics().value("halyard_retained_messages") or 0) >= 1,
    )
    reader = _client(third, "reader-on-3")
    reader.subscribe("plant/+/state", 1)
    message = reader.expect()
    assert (message.topic, message.payload, message.retain) == ("plant/boiler/state", b"hot", True)
    publisher.disconnect()
    reader.disconnect()


def test_the_will_of_a_client_lost_on_one_node_reaches_a_subscriber_on_another(
    cluster: list[Broker],
) -> None:
    first, second, _ = cluster
    watcher = _client(second, "watcher-on-2")
    watcher.subscribe("devices/+/status", 1)
    _wait_for("node 1 to learn the watcher's route", lambda: _routes(first) >= 1)
    device = _client(first, "lamp-on-1", will=("devices/lamp/status", b"offline", 1, False))
    device.drop()
    message = watcher.expect()
    assert (message.topic, message.payload) == ("devices/lamp/status", b"offline")
    watcher.disconnect()
