"""Device shadows over MQTT: the raw request topics with paho, AWS's rejections word for word,
the answer reaching a requester that never subscribed, the in-flight limit, and the AWS IoT
Device SDK's shadow clients (v1 over MQTT 3.1.1, v2 request-response over MQTT 5) against a
device certificate."""

from __future__ import annotations

import json
import socket
import struct
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device import ARN, device_certificate
from harness import Broker, Client, MakeClient

WAIT = 10.0
PREFIX = "$aws/things/lamp/shadow"


def _json(message: mqtt.MQTTMessage) -> dict[str, Any]:
    return json.loads(message.payload)


def _request(client: Client, topic: str, body: Any) -> mqtt.MQTTMessage:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    client.publish(topic, payload, qos=1)
    return client.expect()


def test_the_requester_is_answered_without_subscribing_and_once_when_subscribed(
        broker: Broker, mqtt_client: MakeClient) -> None:
    device = mqtt_client("lamp", protocol=mqtt.MQTTv311)
    device.connect()
    accepted = _request(device, f"{PREFIX}/update",
                        {"state": {"reported": {"power": "on"}}, "clientToken": "t-1"})
    assert accepted.topic == f"{PREFIX}/update/accepted"
    body = _json(accepted)
    assert body["clientToken"] == "t-1" and body["version"] == 1
    assert body["state"] == {"reported": {"power": "on"}}
    assert isinstance(body["metadata"]["reported"]["power"]["timestamp"], int)
    device.expect_none(0.3)

    # The SDK's way: one subscription to `get/+`, correlated by clientToken.
    device.subscribe(f"{PREFIX}/get/+", 1)
    answer = _request(device, f"{PREFIX}/get", {"clientToken": "t-2"})
    assert answer.topic == f"{PREFIX}/get/accepted"
    got = _json(answer)
    assert got["clientToken"] == "t-2" and got["version"] == 1
    assert got["state"] == {"reported": {"power": "on"}}
    device.expect_none(0.3)

    # An empty payload is a valid get.
    assert _request(device, f"{PREFIX}/get", b"").topic == f"{PREFIX}/get/accepted"


def test_desired_from_the_app_reaches_the_device_as_a_delta(
        broker: Broker, mqtt_client: MakeClient) -> None:
    device = mqtt_client("lamp")
    device.connect()
    device.subscribe(f"{PREFIX}/update/delta", 1)
    app = mqtt_client("app")
    app.connect()
    app.subscribe(f"{PREFIX}/update/documents", 1)

    accepted = _request(app, f"{PREFIX}/update", {"state": {"desired": {"color": "red", "level": 3}}})
    assert accepted.topic == f"{PREFIX}/update/accepted"
    documents = _json(app.expect())
    assert "previous" not in documents and documents["current"]["version"] == 1
    delta = _json(device.expect())
    assert delta["state"] == {"color": "red", "level": 3} and delta["version"] == 1
    assert set(delta["metadata"]) == {"color", "level"}

    reported = _request(device, f"{PREFIX}/update",
                        {"state": {"reported": {"color": "red", "level": 3}}, "version": 1})
    assert reported.topic == f"{PREFIX}/update/accepted" and _json(reported)["version"] == 2
    documents = _json(app.expect())
    assert documents["previous"]["version"] == 1 and documents["current"]["version"] == 2
    assert documents["current"]["state"]["reported"] == {"color": "red", "level": 3}
    device.expect_none(0.3)  # desired == reported: no delta

    got = _json(_request(app, f"{PREFIX}/get", b""))
    assert "delta" not in got["state"] and got["version"] == 2


@pytest.mark.parametrize(("payload", "code", "message"), [
    (b"{nope", 400, "Invalid JSON"),
    ({"clientToken": "c"}, 400, "Missing required node: state"),
    ({"state": 1, "clientToken": "c"}, 400, "State node must be an object"),
    ({"state": {"desired": 1}, "clientToken": "c"}, 400, "Desired node must be an object"),
    ({"state": {"reported": [1]}, "clientToken": "c"}, 400, "Reported node must be an object"),
    ({"state": {"desired": {"a": 1}}, "version": "two", "clientToken": "c"}, 400, "Invalid version"),
    ({"state": {"desired": {"a": 1}}, "clientToken": "x" * 65}, 400, "Invalid clientToken"),
    ({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}, "clientToken": "c"},
     400, "JSON contains too many levels of nesting; maximum is 6"),
    ({"state": {"desired": {"a": [1, None]}}, "clientToken": "c"}, 400, "State contains an invalid node"),
    ({"state": {"desired": {"blob": "x" * 9000}}, "clientToken": "c"},
     413, "The payload exceeds the maximum size allowed"),
    (b"\xff\xfe", 415, "Unsupported documented encoding; supported encoding is UTF-8"),
    ({"state": {"desired": {"a": 1}}, "version": 7, "clientToken": "c"}, 409, "Version conflict"),
])
def test_update_rejections_carry_aws_codes_and_messages(
        broker: Broker, mqtt_client: MakeClient, payload: Any, code: int, message: str) -> None:
    device = mqtt_client("lamp")
    device.connect()
    rejected = _request(device, f"{PREFIX}/update", payload)
    assert rejected.topic == f"{PREFIX}/update/rejected"
    body = _json(rejected)
    assert (body["code"], body["message"]) == (code, message)
    assert isinstance(body["timestamp"], int)
    if isinstance(payload, dict) and payload.get("clientToken") == "c":
        assert body["clientToken"] == "c"


def test_get_and_delete_of_a_missing_shadow_and_delete_keeps_the_version(
        broker: Broker, mqtt_client: MakeClient) -> None:
    device = mqtt_client("lamp")
    device.connect()
    named = f"{PREFIX}/name/config"
    missing = _request(device, f"{named}/get", {"clientToken": "g"})
    assert missing.topic == f"{named}/get/rejected"
    assert _json(missing) | {"timestamp": 0} == {
        "code": 404, "message": "No shadow exists with name: 'config'", "clientToken": "g", "timestamp": 0}
    assert _json(_request(device, f"{PREFIX}/delete", b""))["message"] == "No shadow exists with name: 'lamp'"
    assert _json(_request(device, f"{named}/get", b"[1]"))["message"] == "Invalid JSON"

    for n in range(2):
        _request(device, f"{named}/update", {"state": {"reported": {"n": n}}})
    deleted = _request(device, f"{named}/delete", {"clientToken": "d"})
    assert deleted.topic == f"{named}/delete/accepted"
    assert _json(deleted)["version"] == 2 and _json(deleted)["clientToken"] == "d"
    assert _request(device, f"{named}/get", b"").topic == f"{named}/get/rejected"
    # The classic shadow is a different document.
    assert _request(device, f"{PREFIX}/get", b"").topic == f"{PREFIX}/get/rejected"
    recreated = _request(device, f"{named}/update", {"state": {"reported": {"n": 9}}})
    assert _json(recreated)["version"] == 3

    stale = _request(device, f"{named}/delete", {"version": 1})
    assert _json(stale)["code"] == 409


def _packet(kind: int, body: bytes) -> bytes:
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([kind]) + bytes(length) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _read_packet(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    while True:
        if len(buffer) >= 2:
            multiplier, length, i = 1, 0, 1
            while i < len(buffer):
                length += (buffer[i] & 0x7F) * multiplier
                multiplier *= 128
                if not buffer[i] & 0x80:
                    break
                i += 1
            else:
                i = -1
            if i > 0 and len(buffer) >= i + 1 + length:
                kind, body = buffer[0], bytes(buffer[i + 1:i + 1 + length])
                del buffer[:i + 1 + length]
                return kind, body
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffer.extend(chunk)


def test_more_than_ten_requests_in_flight_on_one_connection_are_throttled(broker: Broker) -> None:
    requests = 40
    with socket.create_connection((broker.host, broker.port), timeout=WAIT) as sock:
        sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, 2]) + struct.pack("!H", 30)
                             + _string("burst")))
        buffer = bytearray()
        assert _read_packet(sock, buffer) == (0x20, b"\x00\x00")
        # Every request in one write, so they arrive together.
        burst = b"".join(
            _packet(0x30, _string(f"{PREFIX}/name/burst/update")
                    + json.dumps({"state": {"reported": {"n": n}}, "clientToken": str(n)}).encode())
            for n in range(requests))
        sock.sendall(burst)
        answers: dict[str, dict[str, Any]] = {}
        while len(answers) < requests:
            kind, body = _read_packet(sock, buffer)
            if kind >> 4 != 3:
                continue
            topic_length = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + topic_length].decode()
            rest = body[2 + topic_length:]
            if kind & 0x06:
                packet_id = rest[:2]
                rest = rest[2:]
                sock.sendall(_packet(0x40, packet_id))
            answer = json.loads(rest)
            answers[answer["clientToken"]] = answer | {"topic": topic}
    throttled = [a for a in answers.values() if a["topic"].endswith("/rejected")]
    accepted = [a for a in answers.values() if a["topic"].endswith("/accepted")]
    assert len(throttled) + len(accepted) == requests
    assert throttled, "no request was throttled"
    assert len(accepted) >= 10
    assert all((a["code"], a["message"]) == (429, "Too Many Requests") for a in throttled)
    # Accepted updates got consecutive versions: none lost, none applied twice.
    assert sorted(a["version"] for a in accepted) == list(range(1, len(accepted) + 1))
    metrics = broker.metrics()
    assert metrics.value("halyard_shadow_requests_total", operation="update", protocol="mqtt",
                         outcome="429") == len(throttled)


def _shadow_policy() -> str:
    thing = "${iot:Connection.Thing.ThingName}"
    shadow = f"$aws/things/{thing}/shadow"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/{thing}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": f"{ARN}:topic/{shadow}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ARN}:topicfilter/{shadow}/*"},
        ],
    })


@pytest.fixture
def shadow_device(iot: Any, tmp_path: Path) -> tuple[Path, Path]:
    created, cert, key = device_certificate(iot, tmp_path, "lamp")
    iot.create_thing(thingName="lamp")
    iot.attach_thing_principal(thingName="lamp", principal=created["certificateArn"])
    iot.create_policy(policyName="shadow", policyDocument=_shadow_policy())
    iot.attach_policy(policyName="shadow", target=created["certificateArn"])
    return cert, key


def _ca(broker: Broker) -> str:
    return str(broker.data_dir / "tls" / "ca.pem")


def test_device_sdk_shadow_client_flow(broker: Broker, shadow_device: tuple[Path, Path], data: Any) -> None:
    from awscrt import mqtt as crt_mqtt
    from awsiot import iotshadow, mqtt_connection_builder

    cert, key = shadow_device
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="lamp", clean_session=True, keep_alive_secs=30)
    connection.connect().result(WAIT)
    shadow = iotshadow.IotShadowClient(connection)
    qos = crt_mqtt.QoS.AT_LEAST_ONCE
    events: dict[str, Future[Any]] = {name: Future() for name in
                                      ("delta", "get", "update", "delete", "rejected")}
    lock = threading.Lock()

    def settle(name: str) -> Any:
        def callback(response: Any) -> None:
            # update/accepted also carries the application's update, which has no token.
            if name == "update" and response.client_token is None:
                return
            with lock:
                if not events[name].done():
                    events[name].set_result(response)
        return callback

    for subscribe, request, name in [
        (shadow.subscribe_to_shadow_delta_updated_events,
         iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name="lamp"), "delta"),
        (shadow.subscribe_to_get_shadow_accepted, iotshadow.GetShadowSubscriptionRequest(thing_name="lamp"), "get"),
        (shadow.subscribe_to_get_shadow_rejected, iotshadow.GetShadowSubscriptionRequest(thing_name="lamp"),
         "rejected"),
        (shadow.subscribe_to_update_shadow_accepted,
         iotshadow.UpdateShadowSubscriptionRequest(thing_name="lamp"), "update"),
        (shadow.subscribe_to_delete_shadow_accepted,
         iotshadow.DeleteShadowSubscriptionRequest(thing_name="lamp"), "delete"),
    ]:
        future, _ = subscribe(request=request, qos=qos, callback=settle(name))
        future.result(WAIT)

    # No shadow yet: the device's get is rejected with 404.
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name="lamp", client_token="g0"), qos).result(WAIT)
    rejected = events["rejected"].result(WAIT)
    assert rejected.code == 404 and rejected.client_token == "g0"

    # The application sets desired over HTTP; the device is told the delta.
    data.update_thing_shadow(thingName="lamp", payload=json.dumps({"state": {"desired": {"power": "on"}}}))
    delta = events["delta"].result(WAIT)
    assert delta.state == {"power": "on"} and delta.version == 1

    # The device reports back what it did.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name="lamp", state=iotshadow.ShadowState(reported={"power": "on"}), client_token="u1",
        version=1), qos).result(WAIT)
    updated = events["update"].result(WAIT)
    assert updated.version == 2 and updated.client_token == "u1"
    assert updated.state.reported == {"power": "on"}

    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name="lamp", client_token="g1"), qos).result(WAIT)
    got = events["get"].result(WAIT)
    assert got.client_token == "g1" and got.version == 2
    assert got.state.desired == {"power": "on"} and got.state.reported == {"power": "on"}
    assert got.state.delta is None
    app_view = json.loads(data.get_thing_shadow(thingName="lamp")["payload"].read())
    assert app_view["state"]["reported"] == {"power": "on"}

    shadow.publish_delete_shadow(iotshadow.DeleteShadowRequest(thing_name="lamp", client_token="d1"),
                                 qos).result(WAIT)
    deleted = events["delete"].result(WAIT)
    assert deleted.version == 2 and deleted.client_token == "d1"
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.get_thing_shadow(thingName="lamp")
    connection.disconnect().result(WAIT)


def test_device_sdk_v2_request_response_client(broker: Broker, shadow_device: tuple[Path, Path],
                                               data: Any) -> None:
    import awsiot
    from awscrt import mqtt5, mqtt_request_response
    from awsiot import iotshadow, mqtt5_client_builder

    cert, key = shadow_device
    connected: Future[None] = Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="lamp",
        on_lifecycle_connection_success=lambda _event: connected.set_result(None))
    client.start()
    connected.result(WAIT)
    shadow = iotshadow.IotShadowClientV2(client, mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=4, max_streaming_subscriptions=2))
    deltas: Future[Any] = Future()
    stream = shadow.create_named_shadow_delta_updated_stream(
        iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name="lamp", shadow_name="config"),
        awsiot.ServiceStreamOptions(incoming_event_listener=lambda event: deltas.done() or deltas.set_result(event)))
    stream.open()

    with pytest.raises(awsiot.V2ServiceException) as missing:
        shadow.get_named_shadow(iotshadow.GetNamedShadowRequest(
            thing_name="lamp", shadow_name="config")).result(WAIT)
    assert missing.value.modeled_error.code == 404

    updated = shadow.update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name="lamp", shadow_name="config",
        state=iotshadow.ShadowState(desired={"interval": 60}, reported={"interval": 30}))).result(WAIT)
    assert updated.version == 1
    assert deltas.result(WAIT).state == {"interval": 60}

    got = shadow.get_named_shadow(iotshadow.GetNamedShadowRequest(
        thing_name="lamp", shadow_name="config")).result(WAIT)
    assert got.state.delta == {"interval": 60} and got.version == 1
    assert data.list_named_shadows_for_thing(thingName="lamp")["results"] == ["config"]

    deleted = shadow.delete_named_shadow(iotshadow.DeleteNamedShadowRequest(
        thing_name="lamp", shadow_name="config")).result(WAIT)
    assert deleted.version == 1
    client.stop(mqtt5.DisconnectPacket())


def test_an_https_publish_to_the_update_topic_updates_the_shadow(
        broker: Broker, mqtt_client: MakeClient, data: Any) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe(f"{PREFIX}/update/accepted", 1)
    data.publish(topic=f"{PREFIX}/update", qos=1,
                 payload=json.dumps({"state": {"reported": {"via": "https"}}, "clientToken": "h"}).encode())
    accepted = _json(watcher.expect())
    assert accepted["clientToken"] == "h" and accepted["state"] == {"reported": {"via": "https"}}
    shadow = json.loads(data.get_thing_shadow(thingName="lamp")["payload"].read())
    assert shadow["state"]["reported"] == {"via": "https"}
