"""The device gateway's other doors: one TLS port that serves MQTT, HTTPS publish and the HTTP
APIs by ALPN, HTTPS publish with a client certificate or SigV4, and MQTT over WebSocket
(anonymous on the dev listener, SigV4-presigned as the AWS IoT Device SDK signs it)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from botocore.config import Config

from aws import keys
from device import NOT_AUTHORIZED, Device
from harness import Broker, MakeClient

ARN = "arn:aws:iot:us-east-1:000000000000"


def _ca(broker: Broker) -> str:
    return str(broker.data_dir / "tls" / "ca.pem")


def _https(broker: Broker, method: str, path: str, body: bytes = b"", *,
           cert: Path | None = None, key: Path | None = None,
           alpn: list[str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 request over TLS to the multiplexed port: (status, body)."""
    context = ssl.create_default_context(cafile=_ca(broker))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    if alpn:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}",
                     "Connection: close"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def _data_plane(broker: Broker, endpoint: str | None = None, secret: str | None = None) -> Any:
    key, real_secret = keys(broker)
    return boto3.client(
        "iot-data", endpoint_url=endpoint or broker.http_url, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret or real_secret,
        verify=_ca(broker), config=Config(retries={"max_attempts": 1}),
    )


def test_one_tls_port_serves_mqtt_https_and_the_api_by_alpn(
        broker: Broker, iot: Any, lamp: Any, mqtt_client: MakeClient) -> None:
    _, cert, key = lamp
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("things/lamp/#", 1)

    # MQTT with a certificate, as the AWS IoT Device SDK connects on 443.
    device = Device(broker, "lamp", cert, key, port=broker.tls_port, alpn=["x-amzn-mqtt-ca"])
    connack = device.connect()
    assert connack is not None and not connack.is_failure, connack
    info = device.paho.publish("things/lamp/state", b"over-alpn", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert watcher.expect().payload == b"over-alpn"
    device.close()

    # The same ALPN without a certificate gets nowhere; nor does an ALPN nobody serves.
    assert Device(broker, "lamp", port=broker.tls_port, alpn=["x-amzn-mqtt-ca"]).connect() is None
    assert Device(broker, "lamp", cert, key, port=broker.tls_port, alpn=["imap"]).connect() is None

    # HTTPS publish with the certificate, under ALPN x-amzn-http-ca as devices on 443 use it.
    status, body = _https(broker, "POST", "/topics/things/lamp/state?qos=1", b"over-https",
                          cert=cert, key=key, alpn=["x-amzn-http-ca"])
    assert status == 200, body
    assert json.loads(body)["message"] == "OK"
    assert watcher.expect().payload == b"over-https"
    # Its policy still decides.
    status, body = _https(broker, "POST", "/topics/things/lamp/admin", b"x",
                          cert=cert, key=key, alpn=["x-amzn-http-ca"])
    assert status == 403, body
    # QoS 2 and payloads over the limit are refused in AWS's words.
    status, body = _https(broker, "POST", "/topics/things/lamp/state?qos=2", b"x",
                          cert=cert, key=key, alpn=["x-amzn-http-ca"])
    assert status == 400 and b"QoS 0 and 1" in body, body
    status, body = _https(broker, "POST", "/topics/things/lamp/state", b"x" * (128 * 1024 + 1),
                          cert=cert, key=key, alpn=["x-amzn-http-ca"])
    assert status == 413, body
    watcher.expect_none(0.3)

    # The control plane over TLS (http/1.1), for the AWS CLI and SDKs pointed at port 443.
    tls_iot = boto3.client(
        "iot", endpoint_url=f"https://localhost:{broker.tls_port}", region_name="us-east-1",
        aws_access_key_id=keys(broker)[0], aws_secret_access_key=keys(broker)[1], verify=_ca(broker))
    assert "lamp" in [t["thingName"] for t in tls_iot.list_things()["things"]]
    # And over HTTP/2, signed by curl.
    key, secret = keys(broker)
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", _ca(broker), "--aws-sigv4", "aws:amz:us-east-1:iot",
         "--user", f"{key}:{secret}", "-w", "\n%{http_version}", f"https://localhost:{broker.tls_port}/things"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    body, _, version = done.stdout.rpartition("\n")
    assert version == "2", done.stdout
    assert "lamp" in [t["thingName"] for t in json.loads(body).get("things", [])], body


def test_https_publish_with_curl_and_a_client_certificate(
        broker: Broker, lamp: Any, mqtt_client: MakeClient) -> None:
    _, cert, key = lamp
    watcher = mqtt_client("watcher", protocol=mqtt.MQTTv5)
    watcher.connect()
    watcher.subscribe("things/lamp/#", 1)
    url = f"https://localhost:{broker.tls_port}/topics/things%2Flamp%2Fstate?qos=1&retain=true"
    done = subprocess.run(
        ["curl", "-sS", "--cacert", _ca(broker), "--cert", str(cert), "--key", str(key),
         "-w", "\n%{http_code}", "-H", "content-type: application/json",
         "--data-binary", '{"on": true}', url],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    # The thing-scoped policy grants Publish but not RetainPublish.
    assert status == "403", done.stdout
    done = subprocess.run(
        ["curl", "-sS", "--cacert", _ca(broker), "--cert", str(cert), "--key", str(key),
         "-w", "\n%{http_code}", "--data-binary", '{"on": true}', url.replace("&retain=true", "")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", done.stdout
    assert json.loads(body)["message"] == "OK"
    message = watcher.expect()
    assert message.topic == "things/lamp/state" and json.loads(message.payload) == {"on": True}

    # Without a certificate and without a signature there is nothing to authenticate.
    done = subprocess.run(
        ["curl", "-sS", "--cacert", _ca(broker), "-w", "\n%{http_code}", "--data-binary", "x", url],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.stdout.rpartition("\n")[2] == "403", done.stdout


def test_boto3_iot_data_publishes_with_mqtt5_properties(
        broker: Broker, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher", protocol=mqtt.MQTTv5)
    watcher.connect()
    watcher.subscribe("sensors/#", 1)
    data = _data_plane(broker)
    data.publish(topic="sensors/1/temp", qos=1, payload=b'{"c": 21.5}', contentType="application/json",
                 responseTopic="sensors/1/reply", correlationData="Y29ycg==",
                 userProperties=[{"site": "lab"}], payloadFormatIndicator="UTF8_DATA")
    message = watcher.expect()
    assert message.payload == b'{"c": 21.5}'
    properties = message.properties
    assert properties.ContentType == "application/json"
    assert properties.ResponseTopic == "sensors/1/reply"
    assert properties.CorrelationData == b"corr"
    assert properties.UserProperty == [("site", "lab")]
    assert properties.PayloadFormatIndicator == 1

    # Retained through HTTPS, then delivered to a later subscriber.
    data.publish(topic="sensors/1/last", qos=0, retain=True, payload=b"kept")
    assert watcher.expect().payload == b"kept"
    late = mqtt_client("late")
    late.connect()
    late.subscribe("sensors/1/last", 1)
    assert late.expect().payload == b"kept"

    # Over TLS as well, and with the errors in AWS's form.
    tls_data = _data_plane(broker, endpoint=f"https://localhost:{broker.tls_port}")
    tls_data.publish(topic="sensors/2/temp", qos=0, payload=b"tls")
    assert watcher.expect().payload == b"tls"
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.publish(topic="sensors/+/temp", qos=0, payload=b"x")
    with pytest.raises(Exception) as refused:
        _data_plane(broker, secret="x" * 40).publish(topic="sensors/3", qos=0, payload=b"x")
    assert "signature" in str(refused.value).lower()
    watcher.expect_none(0.3)


def test_mqtt_over_websocket_on_the_dev_listener(broker: Broker, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("ws/#", 1)
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        device = Device(broker, f"ws-{protocol}", port=broker.ws_port, websocket=True, tls=False,
                        protocol=protocol)
        connack = device.connect()
        assert connack is not None and not connack.is_failure, connack
        assert not device.subscribe("ws/echo").is_failure
        payload = bytes(range(256)) * 390  # many WebSocket reads
        info = device.paho.publish("ws/echo", payload, qos=1)
        assert device.wait(lambda: info.mid in device.pubacks)
        assert device.wait(lambda: any(m.payload == payload for m in device.messages))
        assert watcher.expect().payload == payload
        device.close()

    # The TLS port admits nobody without credentials over WebSocket.
    anonymous = Device(broker, "ws-anon", port=broker.tls_port, websocket=True)
    assert anonymous.connect().value == NOT_AUTHORIZED
    anonymous.paho.loop_stop()


def test_the_device_sdk_connects_over_websocket_with_sigv4(
        broker: Broker, mqtt_client: MakeClient) -> None:
    from awscrt import auth
    from awscrt import mqtt as crt_mqtt
    from awsiot import mqtt_connection_builder

    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("sdk/#", 1)
    key, secret = keys(broker)

    def connection(secret: str, client_id: str) -> Any:
        return mqtt_connection_builder.websockets_with_default_aws_signing(
            endpoint="localhost", port=broker.tls_port, region="us-east-1",
            credentials_provider=auth.AwsCredentialsProvider.new_static(key, secret),
            ca_filepath=_ca(broker), client_id=client_id, clean_session=True, keep_alive_secs=30)

    sdk = connection(secret, "sdk-ws")
    sdk.connect().result(10)
    received: list[bytes] = []
    subscribed, _ = sdk.subscribe("sdk/echo", crt_mqtt.QoS.AT_LEAST_ONCE,
                                  lambda topic, payload, **kw: received.append(payload))
    subscribed.result(10)
    published, _ = sdk.publish("sdk/echo", b"signed", crt_mqtt.QoS.AT_LEAST_ONCE)
    published.result(10)
    assert watcher.expect().payload == b"signed"
    sdk.disconnect().result(10)
    assert received == [b"signed"]

    wrong = connection("w" * 40, "sdk-wrong")
    with pytest.raises(Exception):
        wrong.connect().result(10)


def test_not_authorized_connect_reason_over_alpn(broker: Broker, lamp: Any) -> None:
    _, cert, key = lamp
    other = Device(broker, "not-lamp", cert, key, protocol=mqtt.MQTTv5, port=broker.tls_port,
                   alpn=["x-amzn-mqtt-ca"])
    assert other.connect().value == NOT_AUTHORIZED
    other.paho.loop_stop()
