"""Drives a `halyard serve` process and MQTT clients for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
# Long enough for a loaded two-core CI machine, short enough that a lost message fails quickly.
WAIT = 10.0

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Tolerates Display (`addr=127.0.0.1:1883`), Debug strings (`addr="..."`) and IPv6 (`[::1]:1883`).
_LISTENING = re.compile(r'listener="?(\w+)"?\s+addr="?\[?([^\s"\]]+?)\]?:(\d+)')


def halyard_bin() -> str:
    path = os.environ.get("HALYARD_BIN")
    if not path:
        root = Path(__file__).resolve().parents[2]
        target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
        path = str((target if target.is_absolute() else root / target) / "ci" / "halyard")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"halyard binary not found at {path}: build it with "
            "`cargo build --profile ci -p halyard-node --bin halyard` or set HALYARD_BIN",
            pytrace=False,
        )
    return path


class BrokerLog:
    """The broker's output, read by a thread for the whole life of the process.

    Draining continuously matters: a broker that logs more than a pipe buffer holds would
    otherwise block on its next log line.
    """

    def __init__(self, stream: Any) -> None:
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = _ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for_listeners(self, names: set[str], timeout: float) -> dict[str, tuple[str, int]]:
        """Returns {listener: (host, port)} once every name in `names` has been logged."""
        found: dict[str, tuple[str, int]] = {}
        seen = 0
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if "listening" in line:
                        match = _LISTENING.search(line)
                        if match:
                            found[match.group(1)] = (match.group(2), int(match.group(3)))
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if names <= found.keys() or self._closed or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    def wait_closed(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._closed, timeout)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self._lines)


@dataclass
class Metrics:
    """A parsed Prometheus text exposition."""

    text: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    _SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
    _LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    def __post_init__(self) -> None:
        for line in self.text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = self._SAMPLE.match(line)
            if match is None:
                raise AssertionError(f"not a Prometheus sample line: {line!r}")
            name, labels, value = match.groups()
            self.samples.append((name, dict(self._LABEL.findall(labels or "")), float(value)))

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples of `name` whose labels include `labels`; None when there are none."""
        values = [
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None


#: The listeners every started broker logs.
LISTENERS = {"mqtt", "admin", "http", "mqtts", "tls", "ws"}


@dataclass
class Broker:
    host: str
    port: int
    admin_url: str
    http_url: str
    mqtts_port: int
    tls_port: int
    ws_port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: BrokerLog
    exit_code: int | None = None

    def http_get(self, path: str) -> tuple[int, str, str]:
        """GET on the admin endpoint: (status, body, content type)."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=WAIT) as response:
                return (
                    response.status,
                    response.read().decode("utf-8"),
                    response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode("utf-8", "replace"), ""
        except (urllib.error.URLError, TimeoutError) as error:
            raise AssertionError(f"GET {self.admin_url}{path} failed: {error}") from None

    def metrics(self) -> Metrics:
        status, body, _ = self.http_get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body}"
        return Metrics(body)

    def raw_socket(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=WAIT)

    def stop(self) -> int:
        """SIGTERM, then the exit code; fails if the broker does not exit within the timeout."""
        if self.exit_code is not None:
            return self.exit_code
        if self.process.poll() is not None:
            self.exit_code = self.process.returncode
            pytest.fail(
                f"halyard exited by itself with code {self.exit_code}\n--- halyard log ---\n"
                + self.log.text(),
                pytrace=False,
            )
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.exit_code = self.process.returncode
            self.log.wait_closed(1.0)
            pytest.fail(
                f"halyard did not exit within {SHUTDOWN_TIMEOUT}s of SIGTERM\n--- halyard log ---\n"
                + self.log.text(),
                pytrace=False,
            )
        self.log.wait_closed(1.0)
        return self.exit_code


def start_broker(workdir: Path, extra_args: Sequence[str] = ()) -> Broker:
    """Starts `halyard serve` on ephemeral ports and waits until its listeners are bound."""
    return wait_for_broker(launch_broker(workdir, extra_args))


@dataclass
class Launched:
    """A `halyard serve` process that may not be listening yet."""

    process: subprocess.Popen[bytes]
    log: BrokerLog
    data_dir: Path


def launch_broker(
    workdir: Path, extra_args: Sequence[str] = (), env_extra: dict[str, str] | None = None
) -> Launched:
    """Starts `halyard serve` on ephemeral ports without waiting: the nodes of a new cluster
    bind their listeners only once a quorum of them is up."""
    data_dir = workdir / "data"
    # Flags win over HALYARD_* variables in the config order, but a stray HALYARD_LOG_FORMAT=json
    # or a config-file variable from the caller's shell would still change what the tests see.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALYARD_")}
    env.setdefault("RUST_LOG", "info")
    env["RUST_BACKTRACE"] = "1"
    env["NO_COLOR"] = "1"
    env.update(env_extra or {})
    process = subprocess.Popen(
        [
            halyard_bin(),
            "serve",
            "--data-dir",
            str(data_dir),
            "--mqtt-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtts-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            *extra_args,
        ],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return Launched(process=process, log=BrokerLog(process.stdout), data_dir=data_dir)


def wait_for_broker(launched: Launched) -> Broker:
    """Waits until a launched node has bound its listeners."""
    process, log, data_dir = launched.process, launched.log, launched.data_dir
    try:
        listeners = log.wait_for_listeners(LISTENERS, STARTUP_TIMEOUT)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if not LISTENERS <= listeners.keys():
        code = process.poll()
        if code is None:
            process.kill()
            process.wait()
            state = f"still running after {STARTUP_TIMEOUT}s"
        else:
            state = f"exited with code {code}"
        log.wait_closed(1.0)
        pytest.fail(
            f"halyard did not log every `listening listener=<name> addr=...` line for {sorted(LISTENERS)} ({state}); "
            f"found {listeners}\n--- halyard log ---\n{log.text()}",
            pytrace=False,
        )
    mqtt_host, mqtt_port = listeners["mqtt"]
    admin_host, admin_port = listeners["admin"]
    admin_host = f"[{admin_host}]" if ":" in admin_host else admin_host
    http_host, http_port = listeners["http"]
    http_host = f"[{http_host}]" if ":" in http_host else http_host
    return Broker(
        host=mqtt_host,
        port=mqtt_port,
        admin_url=f"http://{admin_host}:{admin_port}",
        http_url=f"http://{http_host}:{http_port}",
        mqtts_port=listeners["mqtts"][1],
        tls_port=listeners["tls"][1],
        ws_port=listeners["ws"][1],
        data_dir=data_dir,
        process=process,
        log=log,
    )


class Client:
    """A paho-mqtt client driven synchronously: each call waits for the broker's answer."""

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        protocol: int,
        clean: bool,
        will: tuple[str, bytes, int, bool] | None,
    ) -> None:
        self.client_id = client_id
        self.protocol = protocol
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._broker = broker
        self._clean = clean
        self._state = threading.Condition()
        self._connack: tuple[mqtt.ReasonCode, bool] | None = None
        self._subacks: dict[int, list[mqtt.ReasonCode]] = {}
        self._pubacks: dict[int, mqtt.ReasonCode] = {}
        self._disconnect_reason: mqtt.ReasonCode | None = None
        self._disconnected = False
        self._started = False

        extra = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean}
        # Without reconnect_on_failure=False paho silently reconnects after the broker closes the
        # connection, which would hide exactly what these tests look at.
        self.paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            **extra,
        )
        if will is not None:
            topic, payload, qos, retain = will
            self.paho.will_set(topic, payload, qos=qos, retain=retain)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self._connack = (reason, bool(flags.session_present))
            self._state.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[mqtt.ReasonCode], _p: Any) -> None:
        with self._state:
            self._subacks[mid] = reasons
            self._state.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self._pubacks[mid] = reason
            self._state.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: mqtt.ReasonCode, _p: Any) -> None:
        with self._state:
            self._disconnect_reason = reason
            self._disconnected = True
            self._state.notify_all()

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = WAIT) -> None:
        with self._state:
            if not self._state.wait_for(lambda: ready() or self._disconnected, timeout):
                raise AssertionError(f"{self.client_id}: no {what} within {timeout}s")
            if not ready():
                raise AssertionError(
                    f"{self.client_id}: connection closed while waiting for {what} "
                    f"(reason: {self._disconnect_reason})"
                )

    @property
    def disconnected(self) -> bool:
        with self._state:
            return self._disconnected

    def wait_disconnected(self, timeout: float = WAIT) -> mqtt.ReasonCode | None:
        with self._state:
            if not self._state.wait_for(lambda: self._disconnected, timeout):
                raise AssertionError(f"{self.client_id}: still connected after {timeout}s")
            return self._disconnect_reason

    def connect(self) -> bool:
        """Connects and waits for a successful CONNACK; returns its session-present flag."""
        extra = {"clean_start": self._clean} if self.protocol == mqtt.MQTTv5 else {}
        self.paho.connect(self._broker.host, self._broker.port, keepalive=30, **extra)
        self.paho.loop_start()
        self._started = True
        self._wait("CONNACK", lambda: self._connack is not None)
        assert self._connack is not None
        reason, session_present = self._connack
        assert not reason.is_failure, f"{self.client_id}: connection refused: {reason}"
        return session_present

    def connect_refused(self, timeout: float = WAIT) -> mqtt.ReasonCode:
        """Connects expecting a CONNACK that refuses the connection; returns its reason."""
        extra = {"clean_start": self._clean} if self.protocol == mqtt.MQTTv5 else {}
        self.paho.connect(self._broker.host, self._broker.port, keepalive=30, **extra)
        self.paho.loop_start()
        self._started = True
        with self._state:
            if not self._state.wait_for(lambda: self._connack is not None, timeout):
                raise AssertionError(f"{self.client_id}: no CONNACK within {timeout}s")
        assert self._connack is not None
        reason, _ = self._connack
        assert reason.is_failure, f"{self.client_id}: connected, but a refusal was expected"
        return reason

    def subscribe(self, topic: str, qos: int) -> int:
        """Subscribes and returns the QoS the broker granted."""
        rc, mid = self.paho.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe not sent: {mqtt.error_string(rc)}"
        self._wait(f"SUBACK for {topic}", lambda: mid in self._subacks)
        (reason,) = self._subacks[mid]
        assert not reason.is_failure, f"{self.client_id}: subscription to {topic} refused: {reason}"
        return reason.value

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publishes and waits until the QoS flow completes (written, PUBACK or PUBCOMP)."""
        info = self.publish_nowait(topic, payload, qos, retain)
        self.wait_published(info, topic)

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.paho.publish(topic, payload, qos=qos, retain=retain)

    def wait_published(self, info: mqtt.MQTTMessageInfo, topic: str) -> None:
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"{self.client_id}: publish to {topic} not completed within {WAIT}s"
        self._wait(f"publish completion for {topic}", lambda: info.mid in self._pubacks)
        reason = self._pubacks[info.mid]
        assert not reason.is_failure, f"{self.client_id}: publish to {topic} refused: {reason}"

    def publish_answer(self, info: mqtt.MQTTMessageInfo, timeout: float = WAIT) -> mqtt.ReasonCode:
        """Waits for the broker's PUBACK/PUBREC to a QoS 1/2 publish and returns its reason,
        success or not."""
        self._wait(f"an answer to publish {info.mid}", lambda: info.mid in self._pubacks, timeout)
        return self._pubacks[info.mid]

    def expect(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def expect_none(self, window: float) -> None:
        try:
            message = self.messages.get(timeout=window)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message on {message.topic}: {message.payload!r}")

    def disconnect(self) -> None:
        """Sends DISCONNECT and waits for the connection to close."""
        self.paho.disconnect()
        self.wait_disconnected()
        self.paho.loop_stop()

    def drop(self) -> None:
        """Closes the TCP connection without DISCONNECT, as a device losing power would."""
        sock = self.paho.socket()
        assert sock is not None, f"{self.client_id}: not connected"
        sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()
        self.paho.loop_stop()

    def close(self) -> None:
        if not self._started:
            return
        if not self.disconnected:
            self.paho.disconnect()
            with self._state:
                self._state.wait_for(lambda: self._disconnected, 2.0)
        self.paho.loop_stop()


MakeClient = Callable[..., Client]


def free_port() -> int:
    """A free loopback TCP port, for the real servers the tests start beside Halyard."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ready: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Polls `ready` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.1)


def wait_for_rules(broker: Broker, count: int) -> None:
    """Waits until the node's engine runs `count` rules (it follows the store moments after)."""
    wait_until(f"the engine running {count} rules", lambda: (broker.metrics().value("halyard_rules") or 0) == count)


@contextlib.contextmanager
def running_broker(workdir: Path, env_extra: dict[str, str]) -> Iterator[Broker]:
    """A node started with `env_extra` in its environment, stopped cleanly at the end."""
    running = wait_for_broker(launch_broker(workdir, env_extra=env_extra))
    try:
        yield running
        assert running.stop() == 0
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()

