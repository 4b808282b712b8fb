"""Devices over MQTT with TLS and X.509 client certificates, as AWS IoT devices connect: only
registered, ACTIVE certificates get in, their policies decide what they may do, and a change
in the registry reaches connections that are already open."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device import NOT_AUTHORIZED, WAIT, Device, device_certificate, thing_policy
from harness import Broker, halyard_bin, start_broker

ARN = "arn:aws:iot:us-east-1:000000000000"


def test_a_device_gets_exactly_what_its_policy_allows(broker: Broker, lamp: Any) -> None:
    _, cert, key = lamp
    device = Device(broker, "lamp", cert, key)
    connack = device.connect()
    assert connack is not None and not connack.is_failure, connack
    assert not device.subscribe("things/lamp/#").is_failure
    assert device.subscribe("things/+/state").is_failure
    assert device.subscribe("other/#").is_failure
    info = device.paho.publish("things/lamp/state", b"on", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert device.wait(lambda: any(m.topic == "things/lamp/state" for m in device.messages))
    device.close()

    # MQTT 5: a refused publish gets PUBACK 0x87 and the connection stays up.
    v5 = Device(broker, "lamp", cert, key, protocol=mqtt.MQTTv5)
    connack = v5.connect()
    assert connack is not None and not connack.is_failure, connack
    refused = v5.paho.publish("things/lamp/admin", b"x", qos=1)
    assert v5.wait(lambda: refused.mid in v5.pubacks)
    assert v5.pubacks[refused.mid].value == 0x87
    assert v5.subscribe("things/other/#").value == 0x87
    assert not v5.disconnected
    v5.close()

    # MQTT 3.1.1 has no negative PUBACK: a refused publish ends the connection.
    v3 = Device(broker, "lamp", cert, key)
    assert not v3.connect().is_failure
    v3.paho.publish("things/other/state", b"x", qos=1)
    assert v3.wait(lambda: v3.disconnected)
    v3.paho.loop_stop()
    assert broker.metrics().value("halyard_authorization_denied_total", action="publish") >= 2


def test_only_registered_active_certificates_connect_as_allowed_client_ids(
        broker: Broker, iot: Any, lamp: Any, tmp_path: Path) -> None:
    created, cert, key = lamp
    # A client id the policy does not allow.
    other_id = Device(broker, "not-lamp", cert, key, protocol=mqtt.MQTTv5)
    assert other_id.connect().value == 0x87
    other_id.paho.loop_stop()

    # A self-signed certificate that is not registered.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "self.key", "-out", "self.pem", "-days", "2", "-subj", "/CN=lamp"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    stranger = Device(broker, "lamp", tmp_path / "self.pem", tmp_path / "self.key")
    refused = stranger.connect()
    assert refused is None or refused.value == NOT_AUTHORIZED
    stranger.paho.loop_stop()

    # The same certificate while INACTIVE, once ACTIVE again, and once REVOKED (for good).
    iot.update_certificate(certificateId=created["certificateId"], newStatus="INACTIVE")
    inactive = Device(broker, "lamp", cert, key)
    assert inactive.connect().value == NOT_AUTHORIZED
    inactive.paho.loop_stop()
    iot.update_certificate(certificateId=created["certificateId"], newStatus="ACTIVE")
    active = Device(broker, "lamp", cert, key)
    assert not active.connect().is_failure
    active.close()
    iot.update_certificate(certificateId=created["certificateId"], newStatus="REVOKED")
    revoked = Device(broker, "lamp", cert, key)
    assert revoked.connect().value == NOT_AUTHORIZED
    revoked.paho.loop_stop()


def test_registry_changes_reach_open_connections(broker: Broker, iot: Any, lamp: Any) -> None:
    created, cert, key = lamp
    device = Device(broker, "lamp", cert, key, protocol=mqtt.MQTTv5)
    assert not device.connect().is_failure
    # A new policy version that also allows "shared/#" applies without reconnecting.
    document = json.loads(thing_policy())
    document["Statement"].append({"Effect": "Allow", "Action": "iot:Subscribe",
                                  "Resource": f"{ARN}:topicfilter/shared/#"})
    assert device.subscribe("shared/#").value == 0x87
    iot.create_policy_version(policyName="thing-scoped", policyDocument=json.dumps(document),
                              setAsDefault=True)
    deadline = time.monotonic() + 5
    while device.subscribe("shared/#").is_failure:
        assert time.monotonic() < deadline, "the new policy version did not apply within 5 s"
        time.sleep(0.1)

    started = time.monotonic()
    iot.update_certificate(certificateId=created["certificateId"], newStatus="INACTIVE")
    assert device.wait(lambda: device.disconnected, timeout=5.0), "still connected 5 s after INACTIVE"
    assert time.monotonic() - started < 5.0
    device.paho.loop_stop()


def test_tls_without_a_certificate_or_with_garbage_gets_nowhere(broker: Broker) -> None:
    context = ssl.create_default_context(cafile=str(broker.data_dir / "tls" / "ca.pem"))
    with socket.create_connection(("127.0.0.1", broker.mqtts_port), timeout=WAIT) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                # MQTT CONNECT; with TLS 1.3 the refusal of the missing certificate arrives here.
                tls.sendall(bytes([0x10, 0x0c, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
                if not tls.recv(4):
                    raise OSError("closed")
    with socket.create_connection(("127.0.0.1", broker.mqtts_port), timeout=WAIT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" * 4)
        raw.settimeout(WAIT)
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
        # A TLS alert at most; never an MQTT or HTTP answer.
        assert answer == b"" or answer[0] == 0x15
    assert broker.metrics().value("halyard_packet_errors_total", reason="tls_handshake") >= 2


def test_mosquitto_clients_publish_with_a_certificate(broker: Broker, lamp: Any) -> None:
    _, cert, key = lamp
    ca = str(broker.data_dir / "tls" / "ca.pem")
    tls = ["-h", "localhost", "-p", str(broker.mqtts_port), "--cafile", ca, "--cert", str(cert),
           "--key", str(key), "-t", "things/lamp/state", "-m", "on", "-q", "1"]
    # An application on the plain listener watches what the device publishes.
    sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                            "-t", "things/lamp/#", "-C", "1", "-W", "10", "-q", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        # A client id the policy does not allow: the CONNECT is refused.
        refused = subprocess.run(["mosquitto_pub", *tls, "-i", "not-lamp"],
                                 capture_output=True, text=True, timeout=WAIT)
        assert refused.returncode != 0
        published = subprocess.run(["mosquitto_pub", *tls, "-i", "lamp"],
                                   capture_output=True, text=True, timeout=WAIT)
        assert published.returncode == 0, published.stderr
    finally:
        out, err = sub.communicate(timeout=WAIT * 2)
    assert out.strip() == "on", (out, err)


def test_an_anonymous_policy_limits_the_plain_listener(tmp_path: Path) -> None:
    policy = tmp_path / "anonymous.json"
    policy.write_text(json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": f"{ARN}:topic/public/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ARN}:topicfilter/public/*"},
        ],
    }))
    config = tmp_path / "halyard.toml"
    config.write_text(f'mqtt_anonymous_policy = "{policy}"\n')
    broker = start_broker(tmp_path, ["--config", str(config)])
    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="guest", protocol=mqtt.MQTTv5)
        granted: dict[int, list[mqtt.ReasonCode]] = {}
        done = threading.Event()

        def on_subscribe(_c: Any, _u: Any, mid: int, reasons: list[mqtt.ReasonCode], _p: Any) -> None:
            granted[mid] = reasons
            if len(granted) == 2:
                done.set()

        client.on_subscribe = on_subscribe
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe("public/news", 1)
        client.subscribe("private/#", 1)
        assert done.wait(WAIT)
        codes = sorted(r[0].value for r in granted.values())
        assert codes == [1, 0x87]
        client.disconnect()
        client.loop_stop()
    finally:
        assert broker.stop() == 0


def test_a_bad_anonymous_policy_stops_the_start(tmp_path: Path) -> None:
    policy = tmp_path / "anonymous.json"
    policy.write_text('{"Statement": {"Effect": "Allow", "Action": "iot:Publsh", "Resource": "*"}}')
    config = tmp_path / "halyard.toml"
    config.write_text(f'mqtt_anonymous_policy = "{policy}"\n')
    done = subprocess.run(
        [halyard_bin(), "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"),
         "--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", "--mqtts-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0
    assert "mqtt_anonymous_policy" in done.stderr
    assert "unknown action 'iot:Publsh'" in done.stderr


def test_the_aws_iot_device_sdk_connects_with_its_certificate(broker: Broker, lamp: Any) -> None:
    from awscrt import mqtt as crt_mqtt
    from awsiot import mqtt_connection_builder

    _, cert, key = lamp
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",
        port=broker.mqtts_port,
        cert_filepath=str(cert),
        pri_key_filepath=str(key),
        ca_filepath=str(broker.data_dir / "tls" / "ca.pem"),
        client_id="lamp",
        clean_session=True,
        keep_alive_secs=30,
    )
    connection.connect().result(WAIT)
    try:
        received: list[tuple[str, bytes]] = []
        arrived = threading.Event()

        def on_message(topic: str, payload: bytes, **_: Any) -> None:
            received.append((topic, payload))
            arrived.set()

        subscribed, _ = connection.subscribe(
            topic="things/lamp/commands", qos=crt_mqtt.QoS.AT_LEAST_ONCE, callback=on_message)
        assert subscribed.result(WAIT)["qos"] == crt_mqtt.QoS.AT_LEAST_ONCE
        published, _ = connection.publish(
            topic="things/lamp/commands", payload=b"blink", qos=crt_mqtt.QoS.AT_LEAST_ONCE)
        published.result(WAIT)
        assert arrived.wait(WAIT)
        assert received == [("things/lamp/commands", b"blink")]
    finally:
        connection.disconnect().result(WAIT)


def _own_ca_device(directory: Path, *, expired: bool) -> tuple[Path, Path, Path]:
    """A CA made with openssl and a device certificate it issued (valid only in 2020 when
    `expired`): (ca.pem, device.pem, device.key)."""
    directory.mkdir()
    db = directory / "db"
    db.mkdir()
    (db / "index.txt").touch()
    (db / "serial").write_text("01\n")
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca = own\n[own]\ndatabase = db/index.txt\nnew_certs_dir = db\n"
        "serial = db/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n"
        "x509_extensions = device\n[any]\ncommonName = supplied\n"
        "[device]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = {"cwd": directory, "check": True, "capture_output": True, "timeout": 60}
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
                    "-days", "30", "-subj", "/CN=own-ca"], **run)
    subprocess.run(["openssl", "req", *ec, "-keyout", "device.key", "-out", "device.csr",
                    "-subj", "/CN=lamp"], **run)
    dates = (["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] if expired
             else ["-days", "10"])
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
                    "-in", "device.csr", "-out", "device.pem", *dates], **run)
    return directory / "ca.pem", directory / "device.pem", directory / "device.key"


def test_certificates_of_an_unknown_ca_or_out_of_date_do_not_connect(
        broker: Broker, iot: Any, tmp_path: Path) -> None:
    iot.create_policy(policyName="open", policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}))

    # Issued by a CA nobody registered: refused, and admitted once CA and certificate are.
    ca, cert, key = _own_ca_device(tmp_path / "fresh", expired=False)
    unknown = Device(broker, "lamp", cert, key)
    refused = unknown.connect()
    assert refused is None or refused.value == NOT_AUTHORIZED
    unknown.paho.loop_stop()
    registered_ca = iot.register_ca_certificate(caCertificate=ca.read_text(), setAsActive=True)
    registered = iot.register_certificate(certificatePem=cert.read_text(), status="ACTIVE")
    iot.attach_policy(policyName="open", target=registered["certificateArn"])
    known = Device(broker, "lamp", cert, key)
    assert not known.connect().is_failure
    known.close()
    # Its CA deactivated: the certificate no longer connects.
    iot.update_ca_certificate(certificateId=registered_ca["certificateId"], newStatus="INACTIVE")
    behind_inactive_ca = Device(broker, "lamp", cert, key)
    assert behind_inactive_ca.connect().value == NOT_AUTHORIZED
    behind_inactive_ca.paho.loop_stop()

    # Registered and ACTIVE but out of date.
    old_ca, old_cert, old_key = _own_ca_device(tmp_path / "old", expired=True)
    iot.register_ca_certificate(caCertificate=old_ca.read_text(), setAsActive=True)
    old = iot.register_certificate(certificatePem=old_cert.read_text(), status="ACTIVE")
    iot.attach_policy(policyName="open", target=old["certificateArn"])
    expired = Device(broker, "lamp", old_cert, old_key)
    assert expired.connect().value == NOT_AUTHORIZED
    expired.paho.loop_stop()


def test_receive_and_wildcards_in_topics_are_held_to_the_policy(
        broker: Broker, iot: Any, tmp_path: Path, mqtt_client: Any) -> None:
    created, cert, key = device_certificate(iot, tmp_path, "watch")
    iot.create_policy(policyName="tricky", policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/watch"},
            # `+` and `#` are plain characters in a policy; `*` and `?` are its wildcards.
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [f"{ARN}:topicfilter/alerts/*", f"{ARN}:topicfilter/sensors/+/temp"]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"{ARN}:topic/alerts/public/*"},
            {"Effect": "Deny", "Action": "iot:Receive", "Resource": f"{ARN}:topic/alerts/public/secret"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/sensors/?/temp"},
        ],
    }))
    iot.attach_policy(policyName="tricky", target=created["certificateArn"])
    device = Device(broker, "watch", cert, key, protocol=mqtt.MQTTv5)
    assert not device.connect().is_failure
    assert not device.subscribe("alerts/#").is_failure
    assert not device.subscribe("sensors/+/temp").is_failure
    for refused in ("sensors/1/temp", "sensors/#", "#", "+/secret", "alerts"):
        assert device.subscribe(refused).value == 0x87, refused
    for topic, allowed in (("sensors/1/temp", True), ("sensors/12/temp", False),
                           ("sensors/a/temp", True), ("sensors/1/temp/x", False)):
        info = device.paho.publish(topic, b"t", qos=1)
        assert device.wait(lambda: info.mid in device.pubacks), topic
        assert (device.pubacks[info.mid].value == 0x87) != allowed, topic

    # Deliveries are checked one by one against iot:Receive.
    sender = mqtt_client("sender")
    sender.connect()
    for topic in ("alerts/private/1", "alerts/public/secret", "alerts/public/news"):
        sender.publish(topic, topic.encode(), qos=1)
    assert device.wait(lambda: any(m.topic == "alerts/public/news" for m in device.messages))
    assert [m.topic for m in device.messages if m.topic.startswith("alerts/")] == ["alerts/public/news"]
    assert broker.metrics().value("halyard_authorization_denied_total", action="receive") >= 2
    device.close()
