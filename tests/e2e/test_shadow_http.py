"""Device shadows over the data plane's HTTP API, with boto3's iot-data client: updates merge,
the delta and versions are AWS's, and every HTTP update or delete is also announced on the
shadow's MQTT topics."""

from __future__ import annotations

import json
from typing import Any

import pytest

import aws
from harness import Broker, MakeClient


def _payload(response: dict[str, Any]) -> dict[str, Any]:
    return json.loads(response["payload"].read())


def test_updates_merge_and_report_the_delta(broker: Broker, data: Any, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("$aws/things/lamp/shadow/+/+", 1)

    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.get_thing_shadow(thingName="lamp")
    accepted = _payload(data.update_thing_shadow(thingName="lamp", payload=json.dumps(
        {"state": {"desired": {"color": "red", "power": "on"}}, "clientToken": "app-1"})))
    assert accepted["version"] == 1 and accepted["clientToken"] == "app-1"
    assert accepted["state"] == {"desired": {"color": "red", "power": "on"}}
    assert set(accepted["metadata"]["desired"]) == {"color", "power"}
    topics = {}
    for _ in range(3):
        message = watcher.expect()
        topics[message.topic] = json.loads(message.payload)
    assert set(topics) == {"$aws/things/lamp/shadow/update/accepted", "$aws/things/lamp/shadow/update/delta",
                           "$aws/things/lamp/shadow/update/documents"}
    assert topics["$aws/things/lamp/shadow/update/delta"]["state"] == {"color": "red", "power": "on"}
    assert topics["$aws/things/lamp/shadow/update/documents"]["current"]["version"] == 1

    data.update_thing_shadow(thingName="lamp", payload=json.dumps(
        {"state": {"reported": {"color": "red", "power": "off"}}, "version": 1}))
    shadow = _payload(data.get_thing_shadow(thingName="lamp"))
    assert shadow["version"] == 2
    assert shadow["state"]["delta"] == {"power": "on"}
    assert shadow["state"]["reported"] == {"color": "red", "power": "off"}

    with pytest.raises(data.exceptions.ConflictException):
        data.update_thing_shadow(thingName="lamp", payload=json.dumps(
            {"state": {"reported": {"power": "on"}}, "version": 1}))
    with pytest.raises(data.exceptions.InvalidRequestException) as bad:
        data.update_thing_shadow(thingName="lamp", payload=b'{"state": {"desired": 5}}')
    assert "Desired node must be an object" in str(bad.value)
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.get_thing_shadow(thingName="lamp", shadowName="no spaces")

    # Deleting keeps the version: the next shadow continues from it.
    deleted = _payload(data.delete_thing_shadow(thingName="lamp"))
    assert deleted["version"] == 2
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.get_thing_shadow(thingName="lamp")
    again = _payload(data.update_thing_shadow(thingName="lamp", payload=b'{"state": {"reported": {"on": true}}}'))
    assert again["version"] == 3


def test_named_shadows_are_listed_apart_from_the_classic_one(data: Any) -> None:
    data.update_thing_shadow(thingName="pump", payload=b'{"state": {"reported": {"rpm": 10}}}')
    for name in ("config", "firmware", "telemetry"):
        data.update_thing_shadow(thingName="pump", shadowName=name,
                                 payload=json.dumps({"state": {"reported": {"name": name}}}))
    data.delete_thing_shadow(thingName="pump", shadowName="firmware")
    listed = data.list_named_shadows_for_thing(thingName="pump")
    assert listed["results"] == ["config", "telemetry"]
    first = data.list_named_shadows_for_thing(thingName="pump", pageSize=1)
    assert first["results"] == ["config"] and first["nextToken"]
    rest = data.list_named_shadows_for_thing(thingName="pump", pageSize=1, nextToken=first["nextToken"])
    assert rest["results"] == ["telemetry"]
    named = _payload(data.get_thing_shadow(thingName="pump", shadowName="config"))
    assert named["state"]["reported"] == {"name": "config"}


def test_concurrent_updaters_with_expected_versions_lose_nothing(data: Any, broker: Broker) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import botocore.exceptions

    data.update_thing_shadow(thingName="busy", payload=b'{"state": {"reported": {}}}')
    key, secret = aws.keys(broker)

    def updater(n: int) -> list[int]:
        client = aws.client(broker, key, secret, service="iot-data")
        while True:
            version = _payload(client.get_thing_shadow(thingName="busy"))["version"]
            request = {"state": {"reported": {f"u{n}": version}}, "version": version}
            try:
                accepted = _payload(client.update_thing_shadow(thingName="busy", payload=json.dumps(request)))
                return [version, accepted["version"]]
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "ConflictException", e

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(updater, range(50)))
    # Each accepted update moved the version from the one it read to the next, and no two
    # accepted the same version: versions went up strictly by one.
    assert all(after == before + 1 for before, after in outcomes)
    assert sorted(after for _, after in outcomes) == list(range(2, 52))
    shadow = _payload(data.get_thing_shadow(thingName="busy"))
    assert shadow["version"] == 51
    assert set(shadow["state"]["reported"]) == {f"u{n}" for n in range(50)}
