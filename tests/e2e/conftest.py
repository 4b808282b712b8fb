"""Fixtures that run a real `halyard serve` process and drive it with real MQTT clients.

Each test gets its own broker on ephemeral ports with its own data directory, so tests share no
retained messages, sessions or counters, and the teardown checks that the broker shuts down
cleanly on SIGTERM.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import aws
from device import device_certificate, thing_policy
from harness import Broker, Client, MakeClient, free_port, start_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = start_broker(tmp_path)
    try:
        yield running
        code = running.stop()
        assert code == 0, (
            f"halyard exited with code {code} on SIGTERM\n--- halyard log ---\n{running.log.text()}"
        )
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attaches the broker's log to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    running = (getattr(item, "funcargs", None) or {}).get("broker")
    if report.when == "call" and report.failed and isinstance(running, Broker):
        report.sections.append(("halyard log", running.log.text()))


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[MakeClient]:
    """Factory: mqtt_client(client_id=None, protocol=mqtt.MQTTv5, clean=True, will=None)."""
    clients: list[Client] = []

    def make(
        client_id: str | None = None,
        protocol: int = mqtt.MQTTv5,
        clean: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> Client:
        client = Client(
            broker,
            client_id or f"e2e-{len(clients) + 1}",
            protocol,
            clean,
            will,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def iot(broker: Broker) -> Any:
    """A boto3 `iot` client signed with the broker's own access key."""
    key, secret = aws.keys(broker)
    return aws.client(broker, key, secret)


@pytest.fixture
def data(broker: Broker) -> Any:
    """A boto3 `iot-data` client signed with the broker's own access key."""
    key, secret = aws.keys(broker)
    return aws.client(broker, key, secret, service="iot-data")


@pytest.fixture
def lamp(iot: Any, tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A thing "lamp" with an ACTIVE certificate and the thing-scoped policy."""
    created, cert, key = device_certificate(iot, tmp_path, "lamp")
    iot.create_thing(thingName="lamp")
    iot.attach_thing_principal(thingName="lamp", principal=created["certificateArn"])
    iot.create_policy(policyName="thing-scoped", policyDocument=thing_policy())
    iot.attach_policy(policyName="thing-scoped", target=created["certificateArn"])
    return created, cert, key


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto in server mode: an AWS-compatible endpoint (S3, SQS, SNS, ...) on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
