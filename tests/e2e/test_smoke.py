"""End-to-end behaviour of `halyard serve` as MQTT clients and operators see it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from harness import WAIT, Broker, MakeClient, halyard_bin

PROTOCOLS = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_subscriber_receives_publish_at_its_qos(mqtt_client: MakeClient, protocol: int, qos: int) -> None:
    subscriber = mqtt_client(protocol=protocol)
    subscriber.connect()
    assert subscriber.subscribe("e2e/pubsub/+", qos) == qos
    publisher = mqtt_client(protocol=protocol)
    publisher.connect()

    publisher.publish(f"e2e/pubsub/q{qos}", f"payload at qos {qos}".encode(), qos=qos)

    message = subscriber.expect()
    assert message.topic == f"e2e/pubsub/q{qos}"
    assert message.payload == f"payload at qos {qos}".encode()
    assert message.qos == qos
    assert not message.retain


@pytest.mark.parametrize(("subscribed_qos", "published_qos"), [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delivery_qos_is_capped_by_subscription(
    mqtt_client: MakeClient, protocol: int, subscribed_qos: int, published_qos: int
) -> None:
    subscriber = mqtt_client(protocol=protocol)
    subscriber.connect()
    subscriber.subscribe("e2e/capped", subscribed_qos)
    publisher = mqtt_client(protocol=protocol)
    publisher.connect()

    publisher.publish("e2e/capped", b"capped", qos=published_qos)

    message = subscriber.expect()
    assert (message.payload, message.qos) == (b"capped", subscribed_qos)


def test_qos1_messages_from_one_publisher_arrive_in_order(mqtt_client: MakeClient) -> None:
    subscriber = mqtt_client()
    subscriber.connect()
    subscriber.subscribe("e2e/ordered", 1)
    publisher = mqtt_client()
    publisher.connect()

    infos = [publisher.publish_nowait("e2e/ordered", str(i).encode(), qos=1) for i in range(50)]
    for info in infos:
        publisher.wait_published(info, "e2e/ordered")

    received = [int(subscriber.expect().payload) for _ in range(50)]
    assert received == list(range(50))


def test_large_payload_round_trips(mqtt_client: MakeClient) -> None:
    # Below the 128 KB AWS payload limit, and large enough for a 3-byte remaining length and
    # several socket reads.
    payload = os.urandom(100_000)
    subscriber = mqtt_client()
    subscriber.connect()
    subscriber.subscribe("e2e/large", 1)
    publisher = mqtt_client()
    publisher.connect()

    publisher.publish("e2e/large", payload, qos=1)

    assert subscriber.expect().payload == payload


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained_message_reaches_later_subscriber_until_cleared(
    mqtt_client: MakeClient, protocol: int
) -> None:
    publisher = mqtt_client(protocol=protocol)
    publisher.connect()
    publisher.publish("e2e/retained", b"last known state", qos=1, retain=True)

    late = mqtt_client(protocol=protocol)
    late.connect()
    late.subscribe("e2e/retained", 1)
    message = late.expect()
    assert (message.topic, message.payload, message.retain) == ("e2e/retained", b"last known state", True)

    # A subscriber that was already there gets a live publish, not a retained one.
    publisher.publish("e2e/retained", b"", qos=1, retain=True)
    cleared = late.expect()
    assert (cleared.payload, cleared.retain) == (b"", False)

    after_clear = mqtt_client(protocol=protocol)
    after_clear.connect()
    after_clear.subscribe("e2e/retained", 1)
    # A retained message would be sent with the SUBACK, so it would arrive before this marker.
    publisher.publish("e2e/retained", b"marker", qos=1)
    assert after_clear.expect().payload == b"marker"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_is_published_when_connection_drops(mqtt_client: MakeClient, protocol: int) -> None:
    observer = mqtt_client(protocol=protocol)
    observer.connect()
    observer.subscribe("e2e/will/+", 1)
    device = mqtt_client(protocol=protocol, will=("e2e/will/device", b"device offline", 1, False))
    device.connect()

    device.drop()

    message = observer.expect()
    assert (message.topic, message.payload, message.qos) == ("e2e/will/device", b"device offline", 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_is_not_published_after_clean_disconnect(mqtt_client: MakeClient, protocol: int) -> None:
    observer = mqtt_client(protocol=protocol)
    observer.connect()
    observer.subscribe("e2e/will/+", 1)
    device = mqtt_client(protocol=protocol, will=("e2e/will/device", b"device offline", 1, False))
    device.connect()

    device.disconnect()

    # Give the broker time to finish with the closed connection; a will it wrongly sent would
    # then arrive ahead of the marker.
    time.sleep(0.5)
    observer.publish("e2e/will/marker", b"marker", qos=1)
    message = observer.expect()
    assert (message.topic, message.payload) == ("e2e/will/marker", b"marker")


def test_persistent_session_keeps_subscription_and_queues_qos1(mqtt_client: MakeClient) -> None:
    device = mqtt_client("e2e-persistent", protocol=mqtt.MQTTv311, clean=False)
    assert device.connect() is False
    device.subscribe("e2e/persistent", 1)
    device.disconnect()

    publisher = mqtt_client(protocol=mqtt.MQTTv311)
    publisher.connect()
    publisher.publish("e2e/persistent", b"sent while offline", qos=1)

    resumed = mqtt_client("e2e-persistent", protocol=mqtt.MQTTv311, clean=False)
    assert resumed.connect() is True, "CONNACK should report the stored session"
    message = resumed.expect()
    assert (message.topic, message.payload, message.qos) == ("e2e/persistent", b"sent while offline", 1)

    # The subscription itself survived too, not just the queued message.
    publisher.publish("e2e/persistent", b"sent after reconnect", qos=1)
    assert resumed.expect().payload == b"sent after reconnect"


def test_clean_session_discards_previous_session(mqtt_client: MakeClient) -> None:
    device = mqtt_client("e2e-clean", protocol=mqtt.MQTTv311, clean=False)
    device.connect()
    device.subscribe("e2e/clean", 1)
    device.disconnect()

    fresh = mqtt_client("e2e-clean", protocol=mqtt.MQTTv311, clean=True)
    assert fresh.connect() is False
    publisher = mqtt_client(protocol=mqtt.MQTTv311)
    publisher.connect()
    publisher.publish("e2e/clean", b"nobody subscribed", qos=1)
    fresh.expect_none(0.5)


def test_shared_subscription_splits_messages_between_members(mqtt_client: MakeClient) -> None:
    members = [mqtt_client(f"e2e-member-{i}") for i in range(2)]
    for member in members:
        member.connect()
        assert member.subscribe("$share/g/e2e/shared", 1) == 1
    publisher = mqtt_client()
    publisher.connect()

    sent = [f"m{i}".encode() for i in range(10)]
    for payload in sent:
        publisher.publish("e2e/shared", payload, qos=1)

    received: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + WAIT
    while sum(map(len, received)) < len(sent) and time.monotonic() < deadline:
        for index, member in enumerate(members):
            while not member.messages.empty():
                received[index].append(member.messages.get_nowait().payload)
        time.sleep(0.02)
    for member in members:
        member.expect_none(0.3)

    everything = received[0] + received[1]
    assert sorted(everything) == sorted(sent), f"lost or duplicated: {received}"
    # Any strategy that spreads load (round robin, random, least loaded) gives both some of ten.
    assert received[0] and received[1], f"one member got everything: {received}"


def _mosquitto_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's mosquitto-clients", pytrace=False)
    return path


@pytest.mark.parametrize("version", ["mqttv5", "mqttv311"])
def test_mosquitto_clients_interoperate(broker: Broker, version: str) -> None:
    address = ["-h", broker.host, "-p", str(broker.port), "-V", version]
    subscriber = subprocess.Popen(
        [_mosquitto_tool("mosquitto_sub"), *address, "-t", "t/x", "-q", "1", "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # mosquitto_sub says nothing when its SUBACK arrives, so publish until it has received one.
        deadline = time.monotonic() + WAIT
        while subscriber.poll() is None and time.monotonic() < deadline:
            publish = subprocess.run(
                [_mosquitto_tool("mosquitto_pub"), *address, "-t", "t/x", "-m", "hello", "-q", "1"],
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            assert publish.returncode == 0, f"mosquitto_pub failed: {publish.stderr}"
            try:
                subscriber.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        out, err = subscriber.communicate(timeout=WAIT)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait()
    assert subscriber.returncode == 0, f"mosquitto_sub exited with {subscriber.returncode}: {err}"
    assert out == "hello\n"


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends before it closes; fails if it keeps the connection open."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"broker kept the connection open for {timeout}s") from None
    return received


MALFORMED = [
    pytest.param(b"\x00\x01\x02garbage", id="reserved-packet-type"),
    pytest.param(b"\x10\xff\xff\xff\xff\x7f", id="remaining-length-over-4-bytes"),
    pytest.param(b"\x30\x07\x00\x03a/bhi", id="publish-before-connect"),
    # CONNECT with the reserved flag bit set, which [MQTT-3.1.2-3] says must be rejected.
    pytest.param(b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01x", id="connect-reserved-flag"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_closes_that_connection_only(
    broker: Broker, mqtt_client: MakeClient, data: bytes
) -> None:
    bystander = mqtt_client()
    bystander.connect()
    bystander.subscribe("e2e/after-garbage", 1)

    with broker.raw_socket() as raw:
        raw.sendall(data)
        _read_until_closed(raw, WAIT)

    newcomer = mqtt_client()
    newcomer.connect()
    newcomer.publish("e2e/after-garbage", b"still serving", qos=1)
    assert bystander.expect().payload == b"still serving"
    assert not bystander.disconnected


def test_metrics_reflect_traffic(broker: Broker, mqtt_client: MakeClient) -> None:
    subscriber = mqtt_client()
    subscriber.connect()
    subscriber.subscribe("e2e/metrics", 1)
    publisher = mqtt_client()
    publisher.connect()
    publisher.publish("e2e/metrics", b"at qos 0", qos=0)
    publisher.publish("e2e/metrics", b"at qos 1", qos=1)
    publisher.publish("e2e/metrics/retained", b"kept", qos=1, retain=True)
    assert {subscriber.expect().payload, subscriber.expect().payload} == {b"at qos 0", b"at qos 1"}

    status, body, content_type = broker.http_get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain"), content_type
    metrics = broker.metrics()
    assert metrics.value("halyard_connections") == 2, body
    assert (metrics.value("halyard_connections_total") or 0) >= 2, body
    assert (metrics.value("halyard_sessions") or 0) >= 2, body
    assert (metrics.value("halyard_subscriptions") or 0) >= 1, body
    assert metrics.value("halyard_retained_messages") == 1, body
    assert (metrics.value("halyard_messages_received_total", qos="0") or 0) >= 1, body
    assert (metrics.value("halyard_messages_received_total", qos="1") or 0) >= 2, body
    assert (metrics.value("halyard_messages_sent_total", qos="1") or 0) >= 1, body
    assert (metrics.value("halyard_bytes_received_total") or 0) > 0, body
    assert (metrics.value("halyard_bytes_sent_total") or 0) > 0, body

    subscriber.disconnect()
    publisher.disconnect()
    deadline = time.monotonic() + WAIT
    while broker.metrics().value("halyard_connections") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.metrics().value("halyard_connections") == 0, broker.metrics().text


def test_metrics_count_malformed_packets(broker: Broker) -> None:
    with broker.raw_socket() as raw:
        raw.sendall(b"\x00\x01\x02garbage")
        _read_until_closed(raw, WAIT)

    metrics = broker.metrics()
    assert (metrics.value("halyard_packet_errors_total") or 0) >= 1, metrics.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_answer_ok(broker: Broker, path: str) -> None:
    status, body, _ = broker.http_get(path)
    assert (status, body.strip()) == (200, "ok")


def test_sigterm_disconnects_clients_and_exits_cleanly(broker: Broker, mqtt_client: MakeClient) -> None:
    client = mqtt_client()
    client.connect()

    assert broker.stop() == 0, broker.log.text()
    client.wait_disconnected()


@pytest.mark.parametrize(
    ("env", "config", "key"),
    [
        ({"HALYARD_MQTT__MAX_PAYLOAD_SIZE": "999999999"}, None, "mqtt.max_payload_size"),
        ({"HALYARD_MQTT__RECEIVE_MAXIMUM": "many"}, None, "mqtt.receive_maximum"),
        ({}, "mqtt_listen = 5\n", "mqtt_listen"),
        ({}, "[mqtt]\nno_such_setting = 1\n", "no_such_setting"),
    ],
)
def test_bad_configuration_is_refused_naming_the_key(
    tmp_path, env: dict[str, str], config: str | None, key: str
) -> None:
    args = [halyard_bin(), "serve", "--data-dir", str(tmp_path / "data")]
    args += ["--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    if config is not None:
        path = tmp_path / "halyard.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    result = subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode != 0
    assert key in result.stderr, result.stderr
    assert result.stderr.startswith("error: config key"), result.stderr
    # The message is for the operator: no backtrace, even with RUST_BACKTRACE set.
    assert "backtrace" not in result.stderr.lower()
