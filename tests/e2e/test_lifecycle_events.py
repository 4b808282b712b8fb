"""AWS IoT lifecycle events: every connect, disconnect (with its reason), subscribe and
unsubscribe is published under `$aws/events/` in AWS's JSON."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as mqtt

from harness import Broker, Client, MakeClient


def _event(watcher: Client, topic: str) -> dict[str, Any]:
    while True:
        message = watcher.expect()
        if message.topic == topic:
            return json.loads(message.payload)


def test_presence_and_subscription_events_follow_a_client(broker: Broker, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("$aws/events/#", 1)

    device = mqtt_client("sensor-7", protocol=mqtt.MQTTv311)
    device.connect()
    connected = _event(watcher, "$aws/events/presence/connected/sensor-7")
    assert connected["eventType"] == "connected"
    assert connected["clientId"] == "sensor-7"
    assert connected["ipAddress"] == "127.0.0.1"
    assert isinstance(connected["timestamp"], int) and connected["timestamp"] > 1_600_000_000_000
    assert len(connected["sessionIdentifier"]) == 32
    assert "principalIdentifier" in connected and "versionNumber" in connected

    device.subscribe("sensors/+/temperature", 1)
    subscribed = _event(watcher, "$aws/events/subscriptions/subscribed/sensor-7")
    assert subscribed["topics"] == ["sensors/+/temperature"]
    assert subscribed["sessionIdentifier"] == connected["sessionIdentifier"]
    device.paho.unsubscribe("sensors/+/temperature")
    unsubscribed = _event(watcher, "$aws/events/subscriptions/unsubscribed/sensor-7")
    assert unsubscribed["topics"] == ["sensors/+/temperature"]

    device.disconnect()
    gone = _event(watcher, "$aws/events/presence/disconnected/sensor-7")
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert gone["clientInitiatedDisconnect"] is True
    assert gone["sessionIdentifier"] == connected["sessionIdentifier"]


def test_disconnect_reasons_name_what_happened(broker: Broker, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("$aws/events/presence/disconnected/+", 1)

    first = mqtt_client("twin")
    first.connect()
    second = mqtt_client("twin")
    second.connect()
    taken_over = _event(watcher, "$aws/events/presence/disconnected/twin")
    assert taken_over["disconnectReason"] == "DUPLICATE_CLIENTID"
    assert taken_over["clientInitiatedDisconnect"] is False

    lost = mqtt_client("flaky")
    lost.connect()
    lost.drop()
    assert _event(watcher, "$aws/events/presence/disconnected/flaky")["disconnectReason"] == "CONNECTION_LOST"
