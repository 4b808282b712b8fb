"""What AWS's own clients expect and the tutorials start with: DescribeEndpoint, the retained
messages of iot-data (GetRetainedMessage, ListRetainedMessages), the fields of AWS's error
bodies, the MQTT 5 limits AWS IoT Core announces, and a node configured as a platform team
configures one (every listener optional, a numeric account id from the environment)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import aws
from harness import Broker, BrokerLog, MakeClient, halyard_bin


def test_describe_endpoint_answers_every_endpoint_type(broker: Broker, iot: Any) -> None:
    for endpoint_type in ("iot:Data-ATS", "iot:Data", "iot:CredentialProvider", "iot:Jobs"):
        answer = iot.describe_endpoint(endpointType=endpoint_type)
        # Without aws.public_host, the host the caller used.
        assert answer["endpointAddress"] == "127.0.0.1", answer
    assert iot.describe_endpoint()["endpointAddress"] == "127.0.0.1"
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        iot.describe_endpoint(endpointType="iot:Nothing")
    assert aws.error(bad)[:2] == ("InvalidRequestException", 400)
    # The CLI, as every tutorial runs it.
    out = aws.cli(broker, "describe-endpoint", "--endpoint-type", "iot:Data-ATS")
    assert out["endpointAddress"] == "127.0.0.1"


def test_retained_messages_are_read_and_listed_with_boto3(
        data: Any, mqtt_client: MakeClient) -> None:
    publisher = mqtt_client("retainer")
    publisher.connect()
    before = int(time.time() * 1000)
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("site", "lyon")]
    info = publisher.paho.publish("rooms/1/temp", b"21.5", qos=1, retain=True, properties=properties)
    info.wait_for_publish(10)
    for n in range(2, 6):
        publisher.publish(f"rooms/{n}/temp", str(n).encode(), qos=1, retain=True)
    publisher.publish("rooms/5/temp", b"", qos=1, retain=True)  # cleared

    got = data.get_retained_message(topic="rooms/1/temp")
    assert got["topic"] == "rooms/1/temp"
    assert got["payload"] == b"21.5"
    assert got["qos"] == 1
    assert before <= got["lastModifiedTime"] <= int(time.time() * 1000) + 1000
    # botocore decodes the blob's base64: the JSON list AWS sends.
    assert json.loads(got["userProperties"]) == [{"site": "lyon"}]

    with pytest.raises(botocore.exceptions.ClientError) as missing:
        data.get_retained_message(topic="rooms/5/temp")
    assert aws.error(missing)[:2] == ("ResourceNotFoundException", 404)

    first = data.list_retained_messages(maxResults=3)
    assert [t["topic"] for t in first["retainedTopics"]] == ["rooms/1/temp", "rooms/2/temp", "rooms/3/temp"]
    assert first["retainedTopics"][0]["payloadSize"] == 4
    rest = data.list_retained_messages(maxResults=3, nextToken=first["nextToken"])
    assert [t["topic"] for t in rest["retainedTopics"]] == ["rooms/4/temp"]
    assert "nextToken" not in rest

    with pytest.raises(botocore.exceptions.ClientError) as too_many:
        data.list_retained_messages(maxResults=500)
    assert aws.error(too_many)[:2] == ("InvalidRequestException", 400)


def test_already_exists_carries_the_resource_and_unknown_cas_are_not_found(iot: Any) -> None:
    thing = iot.create_thing(thingName="lamp", attributePayload={"attributes": {"a": "1"}})
    with pytest.raises(botocore.exceptions.ClientError) as exists:
        iot.create_thing(thingName="lamp", attributePayload={"attributes": {"a": "2"}})
    response = exists.value.response
    assert response["Error"]["Code"] == "ResourceAlreadyExistsException"
    assert response["resourceId"] == thing["thingId"]
    assert response["resourceArn"] == thing["thingArn"]

    document = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]})
    iot.create_policy(policyName="p", policyDocument=document)
    with pytest.raises(botocore.exceptions.ClientError) as policy:
        iot.create_policy(policyName="p", policyDocument=document)
    assert policy.value.response["resourceId"] == "p"
    assert policy.value.response["resourceArn"].endswith(":policy/p")

    for unknown in ("a" * 64, "a" * 70):
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            iot.describe_ca_certificate(certificateId=unknown)
        assert aws.error(missing)[:2] == ("ResourceNotFoundException", 404)


def test_mqtt5_clients_get_aws_iot_cores_limits(broker: Broker) -> None:
    connacks: list[Any] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="limits", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, props: connacks.append(props)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 86_400
    client.connect(broker.host, broker.port, properties=properties)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not connacks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connacks, "no CONNACK"
        props = connacks[0]
        assert props.MaximumPacketSize == 149_504
        assert props.TopicAliasMaximum == 8
        # A day was asked for; AWS's cap of an hour was granted, and said so.
        assert props.SessionExpiryInterval == 3600
    finally:
        client.loop_stop()
        client.disconnect()


def _serve(tmp_path: Path, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], BrokerLog]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HALYARD_")}
    clean.update(env)
    clean["NO_COLOR"] = "1"
    process = subprocess.Popen(
        [halyard_bin(), "serve", "--data-dir", str(tmp_path / "data"), "--log-format", "text", *args],
        cwd=tmp_path, env=clean, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    return process, BrokerLog(process.stdout)


def test_listeners_can_be_off_and_string_settings_stay_strings(tmp_path: Path) -> None:
    process, log = _serve(
        tmp_path,
        ["--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--http-listen", "off",
         "--mqtts-listen", "off", "--tls-listen", "off"],
        {"HALYARD_WS_LISTEN": "off", "HALYARD_AWS__ACCOUNT_ID": "123456789012"},
    )
    try:
        listeners = log.wait_for_listeners({"mqtt", "admin"}, 30)
        assert {"mqtt", "admin"} <= listeners.keys(), log.text()
        # Ready once the store has its leader; the turned-off listeners are not missed.
        host, port = listeners["admin"]
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        text = log.text()
        for name in ("http", "mqtts", "tls", "ws"):
            assert not any("listening" in line and f"listener={name} " in line for line in text.splitlines()), text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.text()

    # A bad listener value names its key.
    bad, bad_log = _serve(tmp_path, ["--mqtt-listen", "127.0.0.1:0"], {"HALYARD_WS_LISTEN": "of"})
    assert bad.wait(timeout=30) != 0
    bad_log.wait_closed(5.0)
    assert "ws_listen" in bad_log.text() and "`off`" in bad_log.text(), bad_log.text()
