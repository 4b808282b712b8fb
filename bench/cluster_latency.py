"""Takeover and route convergence on a three-node cluster on loopback, with paho clients.

Takeover: a persistent MQTT 5 session connected on one node; the same client id connects on
the next node; the time from its CONNECT to its CONNACK (session present), the old owner live.
Route convergence: a subscriber on node 2 subscribes to a fresh topic; from its SUBACK, a
publisher on node 1 publishes to that topic every millisecond until the subscriber gets one.

Usage: cluster_latency.py HALYARD_BINARY [ROUNDS]; prints a Markdown table.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(binary: str, work: Path) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    subprocess.run([binary, "cluster-certs", "--out", str(work / "certs"), "--nodes", "1,2,3"], check=True, capture_output=True)
    peers = {n: free_port(socket.SOCK_DGRAM) for n in (1, 2, 3)}
    mqtt_ports = [free_port(socket.SOCK_STREAM) for _ in (1, 2, 3)]
    members = ",".join(f"{n}=127.0.0.1:{p}" for n, p in peers.items())
    nodes = []
    for n in (1, 2, 3):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HALYARD_")}
        env.update(
            HALYARD_LOG_LEVEL="warn",
            HALYARD_CLUSTER__CA_CERT=str(work / "certs/ca.pem"),
            HALYARD_CLUSTER__CERT=str(work / f"certs/node-{n}.pem"),
            HALYARD_CLUSTER__KEY=str(work / f"certs/node-{n}.key"),
        )
        nodes.append(
            subprocess.Popen(
                [binary, "serve", "--data-dir", str(work / f"node-{n}"), "--node-id", str(n),
                 "--peer-listen", f"127.0.0.1:{peers[n]}", "--initial-members", members,
                 "--mqtt-listen", f"127.0.0.1:{mqtt_ports[n - 1]}", "--admin-listen", "off",
                 "--http-listen", "off", "--mqtts-listen", "off", "--tls-listen", "off", "--ws-listen", "off"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
    for port in mqtt_ports:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "a node did not start"
                time.sleep(0.1)
    time.sleep(2)  # control streams up between every pair
    return nodes, mqtt_ports


class Client:
    def __init__(self, client_id: str, port: int, persistent: bool) -> None:
        self.connack = threading.Event()
        self.suback = threading.Event()
        self.message = threading.Event()
        self.present = False
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id, protocol=mqtt.MQTTv5)
        self.paho.on_connect = self._on_connect
        self.paho.on_subscribe = lambda *_: self.suback.set()
        self.paho.on_message = lambda *_: self.message.set()
        properties = Properties(PacketTypes.CONNECT)
        if persistent:
            properties.SessionExpiryInterval = 300
        self.started = time.perf_counter()
        self.paho.connect("127.0.0.1", port, clean_start=not persistent, properties=properties)
        self.paho.loop_start()

    def _on_connect(self, _c: object, _u: object, flags: object, _rc: object, _p: object) -> None:
        self.present = bool(getattr(flags, "session_present", False))
        self.connected_at = time.perf_counter()
        self.connack.set()

    def close(self) -> None:
        self.paho.loop_stop()
        self.paho.disconnect()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with tempfile.TemporaryDirectory() as tmp:
        nodes, ports = start_cluster(binary, Path(tmp))
        try:
            takeovers = []
            for i in range(rounds):
                first = Client(f"mover-{i}", ports[i % 3], True)
                assert first.connack.wait(10)
                first.paho.subscribe(f"t/{i}", 1)
                assert first.suback.wait(10)
                second = Client(f"mover-{i}", ports[(i + 1) % 3], True)
                assert second.connack.wait(10) and second.present
                takeovers.append((second.connected_at - second.started) * 1000)
                first.paho.loop_stop()
                second.close()
            publisher = Client("pub", ports[0], False)
            assert publisher.connack.wait(10)
            convergence = []
            for i in range(rounds):
                sub = Client(f"sub-{i}", ports[1], False)
                assert sub.connack.wait(10)
                sub.paho.subscribe(f"fresh/{i}", 0)
                assert sub.suback.wait(10)
                subacked = time.perf_counter()
                while not sub.message.is_set():
                    publisher.paho.publish(f"fresh/{i}", b"x", qos=0)
                    sub.message.wait(0.001)
                convergence.append((time.perf_counter() - subacked) * 1000)
                sub.close()
            publisher.close()
        finally:
            for node in nodes:
                node.terminate()
            for node in nodes:
                node.wait(30)
    print("| measure | rounds | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in (("takeover, live owner on another node", takeovers), ("route convergence, SUBACK on node 2 to delivery from node 1", convergence)):
        print(f"| {name} | {len(values)} | {percentile(values, 0.5):.2f} | {percentile(values, 0.99):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
