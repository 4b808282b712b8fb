"""An MQTT device driven synchronously with paho: over TLS (a client certificate, ALPN) or
plain, over TCP or WebSocket."""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from harness import Broker

ARN = "arn:aws:iot:us-east-1:000000000000"
WAIT = 10.0
# paho reports MQTT 3.1.1's CONNACK return code 5 as this v5 reason code.
NOT_AUTHORIZED = 0x87


class Device:
    """A paho client over TLS with a client certificate, driven synchronously."""

    def __init__(self, broker: Broker, client_id: str, cert: Path | None = None,
                 key: Path | None = None, protocol: int = mqtt.MQTTv311, *,
                 port: int | None = None, alpn: list[str] | None = None,
                 websocket: bool = False, tls: bool = True,
                 username: str | None = None, password: bytes | None = None) -> None:
        self.client_id = client_id
        self.protocol = protocol
        self._broker = broker
        self._port = broker.mqtts_port if port is None else port
        self._state = threading.Condition()
        self.connack: mqtt.ReasonCode | None = None
        self.subacks: dict[int, list[mqtt.ReasonCode]] = {}
        self.pubacks: dict[int, mqtt.ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected = False
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                protocol=protocol, reconnect_on_failure=False,
                                transport="websockets" if websocket else "tcp")
        if websocket:
            self.paho.ws_set_options(path="/mqtt")
        if tls:
            context = ssl.create_default_context(cafile=str(broker.data_dir / "tls" / "ca.pem"))
            if cert is not None and key is not None:
                context.load_cert_chain(str(cert), str(key))
            if alpn:
                context.set_alpn_protocols(alpn)
            self.paho.tls_set_context(context)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self.connack = reason
            self._state.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[mqtt.ReasonCode], _p: Any) -> None:
        with self._state:
            self.subacks[mid] = reasons
            self._state.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self.pubacks[mid] = reason
            self._state.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._state:
            self.messages.append(message)
            self._state.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _r: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self.disconnected = True
            self._state.notify_all()

    def wait(self, ready: Any, timeout: float = WAIT) -> bool:
        with self._state:
            return self._state.wait_for(ready, timeout)

    def connect(self) -> mqtt.ReasonCode | None:
        """Connects; the CONNACK's reason, or None when the connection ended without one."""
        try:
            self.paho.connect("127.0.0.1", self._port, keepalive=30)
        except (ssl.SSLError, OSError):
            return None
        self.paho.loop_start()
        self.wait(lambda: self.connack is not None or self.disconnected)
        return self.connack

    def subscribe(self, topic: str) -> mqtt.ReasonCode:
        _, mid = self.paho.subscribe(topic, 1)
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid][0]

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def thing_policy() -> str:
    """A thing-scoped policy: connect as the thing, publish, receive and subscribe under
    `things/{thing}/`, never publish to `things/*/admin`."""
    thing = "${iot:Connection.Thing.ThingName}"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/{thing}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": f"{ARN}:topic/things/{thing}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ARN}:topicfilter/things/{thing}/*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": f"{ARN}:topic/things/*/admin"},
        ],
    })


def device_certificate(iot: Any, directory: Path, name: str) -> tuple[dict[str, Any], Path, Path]:
    """A new ACTIVE certificate from CreateKeysAndCertificate, written to `{name}.pem|key`."""
    created = iot.create_keys_and_certificate(setAsActive=True)
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_text(created["certificatePem"])
    key.write_text(created["keyPair"]["PrivateKey"])
    return created, cert, key
