"""What the broker acknowledged survives `kill -9`: retained messages, persistent sessions and
the QoS 1 messages queued for them, in order."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt

from harness import Broker, Client, start_broker


def _kill(broker: Broker) -> None:
    broker.process.kill()
    broker.process.wait()
    broker.log.wait_closed(1.0)


def _stop_cleanly(broker: Broker) -> None:
    assert broker.stop() == 0, broker.log.text()


def test_kill_9_loses_no_acknowledged_message_for_a_persistent_session(tmp_path: Path) -> None:
    first = start_broker(tmp_path)
    try:
        subscriber = Client(first, "durable-sub", mqtt.MQTTv311, clean=False, will=None)
        subscriber.connect()
        subscriber.subscribe("plant/+/temp", 1)
        subscriber.disconnect()

        publisher = Client(first, "durable-pub", mqtt.MQTTv311, clean=True, will=None)
        publisher.connect()
        for i in range(50):
            # Returns once the broker's PUBACK arrived.
            publisher.publish(f"plant/{i % 3}/temp", str(i).encode(), qos=1)
        publisher.publish("plant/config", b"v7", qos=1, retain=True)
        publisher.close()
    finally:
        _kill(first)

    second = start_broker(tmp_path)
    try:
        subscriber = Client(second, "durable-sub", mqtt.MQTTv311, clean=False, will=None)
        assert subscriber.connect(), "the persistent session was not restored"
        payloads = [subscriber.expect().payload.decode() for _ in range(50)]
        assert payloads == [str(i) for i in range(50)]
        subscriber.expect_none(0.5)
        subscriber.close()

        late = Client(second, "late-reader", mqtt.MQTTv5, clean=True, will=None)
        late.connect()
        late.subscribe("plant/config", 1)
        retained = late.expect()
        assert retained.payload == b"v7"
        assert retained.retain
        late.close()
        _stop_cleanly(second)
    finally:
        if second.process.poll() is None:
            second.process.kill()
            second.process.wait()


def test_delivered_messages_are_not_redelivered_after_a_restart(tmp_path: Path) -> None:
    first = start_broker(tmp_path)
    try:
        subscriber = Client(first, "acked-sub", mqtt.MQTTv311, clean=False, will=None)
        subscriber.connect()
        subscriber.subscribe("t", 1)
        publisher = Client(first, "acked-pub", mqtt.MQTTv5, clean=True, will=None)
        publisher.connect()
        publisher.publish("t", b"once", qos=1)
        assert subscriber.expect().payload == b"once"
        # The subscriber's PUBACK removes the stored copy; give it a moment to be written.
        publisher.publish("t/other", b"x", qos=1)
        subscriber.disconnect()
        publisher.close()
        _stop_cleanly(first)
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.wait()

    second = start_broker(tmp_path)
    try:
        subscriber = Client(second, "acked-sub", mqtt.MQTTv311, clean=False, will=None)
        subscriber.connect()
        subscriber.expect_none(0.5)
        subscriber.close()
        _stop_cleanly(second)
    finally:
        if second.process.poll() is None:
            second.process.kill()
            second.process.wait()
