"""Three `halyard serve` processes on loopback, forming one cluster over QUIC, and paho
clients spread over them: a message published on one node reaches subscribers on the others in
order, a retained message set on one node is sent to a subscriber on another, the will of a
client lost on one node reaches subscribers on another, a share group with members on two
nodes gets each message once, a message acknowledged to its publisher survives `kill -9` of
the publisher's node, a persistent subscriber whose node is killed resumes on another node
with every acknowledged message, and a node cut off from the other two refuses what it cannot
store instead of acknowledging it, and serves again once the others are back; a job created
on one node reaches a device on another, and its execution's step timer fires after the
node that was driving it dies; a device provisioned by claim through one node, across the
store leader's death, connects to another, and a CA's JITP template provisions a device on any
node. The Grafana
dashboards and the alerting rules query only metrics that such a cluster exports."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

import aws
from harness import Broker, Client, Launched, halyard_bin, launch_broker, wait_for_broker

NODES = (1, 2, 3)
STORE_WAIT_TIMEOUT = 8


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    brokers: list[Broker]
    # Starts node `n` (1-based) again on its data and peer port, in place of the one that was.
    relaunch: Callable[[int], Broker]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("cluster")
    certs = root / "certs"
    subprocess.run(
        [halyard_bin(), "cluster-certs", "--out", str(certs), "--nodes", ",".join(map(str, NODES))],
        check=True,
        capture_output=True,
    )
    ports = {node: _free_udp_port() for node in NODES}
    members = ",".join(f"{node}=127.0.0.1:{port}" for node, port in ports.items())
    launched: list[Launched] = []

    def launch(node: int) -> Launched:
        workdir = root / f"node-{node}"
        workdir.mkdir(exist_ok=True)
        started = launch_broker(
            workdir,
            [
                "--node-id",
                str(node),
                "--peer-listen",
                f"127.0.0.1:{ports[node]}",
                "--initial-members",
                members,
            ],
            {
                "HALYARD_CLUSTER__CA_CERT": str(certs / "ca.pem"),
                "HALYARD_CLUSTER__CERT": str(certs / f"node-{node}.pem"),
                "HALYARD_CLUSTER__KEY": str(certs / f"node-{node}.key"),
                # Longer than a failover takes here (the forward timeout, 3 s, and an
                # election), shorter than the default 10 s, for the test of a cut-off node.
                "HALYARD_MQTT__STORE_WAIT_TIMEOUT": str(STORE_WAIT_TIMEOUT),
            },
        )
        launched.append(started)
        return started

    brokers: list[Broker] = []

    def relaunch(node: int) -> Broker:
        broker = wait_for_broker(launch(node))
        brokers[node - 1] = broker
        return broker

    try:
        for started in [launch(node) for node in NODES]:
            brokers.append(wait_for_broker(started))
        yield Cluster(brokers, relaunch)
        for broker in brokers:
            assert broker.stop() == 0, f"a node did not stop cleanly\n{broker.log.text()}"
    finally:
        for node in launched:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()


def _client(broker: Broker, client_id: str, will: tuple[str, bytes, int, bool] | None = None) -> Client:
    client = Client(broker, client_id, mqtt.MQTTv5, True, will)
    client.connect()
    return client


def _wait_for(what: str, ready: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _routes(broker: Broker) -> float:
    return broker.metrics().value("halyard_cluster_remote_routes") or 0.0


def _knows_all_routes(broker: Broker, others: tuple[Broker, ...]) -> bool:
    announced = sum(o.metrics().value("halyard_cluster_local_routes") or 0.0 for o in others)
    return _routes(broker) == announced


def test_a_message_published_on_one_node_reaches_subscribers_on_the_others_in_order(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.brokers
    exact = _client(second, "exact-on-2")
    exact.subscribe("fleet/7/temp", 1)
    wildcard = _client(third, "wildcard-on-3")
    wildcard.subscribe("fleet/#", 1)
    _wait_for("node 1 to learn both routes", lambda: _routes(first) >= 2)
    publisher = _client(first, "publisher-on-1")
    for n in range(30):
        publisher.publish("fleet/7/temp", str(n).encode(), qos=1)
    for subscriber in (exact, wildcard):
        got = [subscriber.expect() for _ in range(30)]
        assert [m.payload.decode() for m in got] == [str(n) for n in range(30)]
        assert all(m.topic == "fleet/7/temp" for m in got)
    for client in (exact, wildcard, publisher):
        client.disconnect()


def test_a_rule_created_on_one_node_runs_once_per_message_whichever_node_it_enters(cluster: Cluster) -> None:
    first, second, third = cluster.brokers
    key, secret = aws.keys(first)
    iot = aws.client(first, key, secret)
    iot.create_topic_rule(
        ruleName="cluster_hot",
        topicRulePayload={
            "sql": "SELECT temp, topic(2) AS site FROM 'plant/+/temp' WHERE temp > 50",
            "awsIotSqlVersion": "2016-03-23",
            "actions": [{"republish": {"topic": "plant-alerts/${topic(2)}", "roleArn": "arn:aws:iam::1:role/r", "qos": 1}}],
        },
    )
    # Every node's engine follows the store.
    for node in cluster.brokers:
        _wait_for("the rule on every node", lambda n=node: (n.metrics().value("halyard_rules") or 0) >= 1)
    watcher = _client(third, "rules-watcher")
    watcher.subscribe("plant-alerts/#", 1)
    _wait_for("node 2 to learn the route", lambda: _routes(second) >= 1)
    publisher = _client(second, "rules-publisher")
    for n in range(20):
        publisher.publish(f"plant/s{n}/temp", json.dumps({"temp": 60 + n}).encode(), qos=1)
    got = sorted((m.topic, json.loads(m.payload)["temp"]) for m in (watcher.expect() for _ in range(20)))
    assert got == sorted((f"plant-alerts/s{n}", 60 + n) for n in range(20))
    watcher.expect_none(1.0)
    fired = sum(b.metrics().value("halyard_rule_messages_fired_total", rule="cluster_hot") or 0 for b in cluster.brokers)
    assert fired == 20
    iot.delete_topic_rule(ruleName="cluster_hot")
    for node in cluster.brokers:
        _wait_for("the rule gone from every node", lambda n=node: n.metrics().value("halyard_rules") == 0)
        # Its series go with it.
        assert node.metrics().value("halyard_rule_messages_fired_total", rule="cluster_hot") is None
    publisher.disconnect()
    watcher.disconnect()


def test_a_message_retained_on_one_node_is_sent_to_a_subscriber_on_another(
    cluster: Cluster,
) -> None:
    first, _, third = cluster.brokers
    publisher = _client(first, "retainer-on-1")
    publisher.publish("plant/boiler/state", b"hot", qos=1, retain=True)
    _wait_for(
        "node 3 to hold the retained message",
        lambda: (third.metrics().value("halyard_retained_messages") or 0) >= 1,
    )
    reader = _client(third, "reader-on-3")
    reader.subscribe("plant/+/state", 1)
    message = reader.expect()
    assert (message.topic, message.payload, message.retain) == ("plant/boiler/state", b"hot", True)
    publisher.disconnect()
    reader.disconnect()


def test_the_will_of_a_client_lost_on_one_node_reaches_a_subscriber_on_another(
    cluster: Cluster,
) -> None:
    first, second, _ = cluster.brokers
    watcher = _client(second, "watcher-on-2")
    watcher.subscribe("devices/+/status", 1)
    _wait_for("node 1 to learn the watcher's route", lambda: _routes(first) >= 1)
    device = _client(first, "lamp-on-1", will=("devices/lamp/status", b"offline", 1, False))
    device.drop()
    message = watcher.expect()
    assert (message.topic, message.payload) == ("devices/lamp/status", b"offline")
    watcher.disconnect()


def test_a_share_group_with_members_on_two_nodes_gets_each_message_once(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.brokers
    members = [_client(second, "packer-on-2"), _client(third, "packer-on-3")]
    for member in members:
        member.subscribe("$share/packers/orders/+/packed", 1)
    # Acknowledged, each subscription is among its node's routes; node 1 has both once it holds
    # all that the others announce (earlier tests' routes may still be going meanwhile).
    _wait_for("node 1 to learn both members", lambda: _knows_all_routes(first, (second, third)))
    publisher = _client(first, "packing-line-on-1")
    for n in range(30):
        publisher.publish("orders/line-1/packed", str(n).encode(), qos=1)
    got: list[int] = []
    for member in members:
        while True:
            try:
                got.append(int(member.expect(timeout=1).payload))
            except AssertionError:
                break
    assert sorted(got) == list(range(30)), "each message to exactly one member"
    for client in (*members, publisher):
        client.disconnect()


def test_every_message_acknowledged_to_its_publisher_survives_kill_9_of_the_publishers_node(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.brokers
    keeper = Client(second, "keeper-on-2", mqtt.MQTTv311, False, None)
    keeper.connect()
    keeper.subscribe("orders/#", 1)
    keeper.disconnect()
    _wait_for(
        "node 1 to learn the offline session's route",
        lambda: _knows_all_routes(first, (second, third)),
    )

    # Node 1 is killed from the publisher's network thread the instant the 500th PUBACK is
    # in, while more messages are on their way to node 2: each of the 500 must be in node 2's
    # store already, whatever node 1 still had in flight.
    acked: list[int] = []
    at_kill: list[int] = []
    killed = threading.Event()
    payloads: dict[int, int] = {}

    def on_publish(_c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        acked.append(mid)
        if len(acked) == 500 and not killed.is_set():
            first.process.kill()
            at_kill.extend(acked)
            killed.set()

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, "orders-on-1", protocol=mqtt.MQTTv311)
    publisher.max_inflight_messages_set(100)
    publisher.on_publish = on_publish
    publisher.connect(first.host, first.port)
    publisher.loop_start()
    n = 0
    while not killed.is_set() and n < 5000:
        info = publisher.publish("orders/new", str(n).encode(), qos=1)
        payloads[info.mid] = n
        n += 1
        if n % 200 == 0:
            time.sleep(0.01)
    assert killed.wait(30), "500 PUBACKs did not come"
    first.process.wait()
    publisher.loop_stop()
    assert n > 500, "messages were still on their way when node 1 died"

    keeper = Client(second, "keeper-on-2", mqtt.MQTTv311, False, None)
    assert keeper.connect(), "the session is still there"
    owed = {payloads[mid] for mid in at_kill}
    got: set[int] = set()
    try:
        while not owed <= got:
            # Duplicates are allowed; loss is not.
            got.add(int(keeper.expect(timeout=5).payload))
    except AssertionError:
        pytest.fail(f"{len(owed - got)} of the {len(owed)} acknowledged messages were lost")
    keeper.disconnect()
    cluster.relaunch(1)


def test_a_persistent_subscriber_whose_node_is_killed_resumes_on_another_with_every_acknowledged_message(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.brokers
    mover = Client(second, "mover", mqtt.MQTTv311, False, None)
    mover.connect()
    mover.subscribe("meters/#", 1)
    _wait_for(
        "node 1 to learn the subscriber's route",
        lambda: _knows_all_routes(first, (second, third)),
    )
    publisher = _client(first, "meters-on-1")
    sent = [publisher.publish_nowait("meters/m1", str(n).encode(), qos=1) for n in range(300)]
    for info in sent:
        publisher.wait_published(info, "meters/m1")
    # Node 2 dies with the subscriber's connection and session; the client comes back on
    # node 3, which takes the session from the store once node 2 does not answer.
    second.process.kill()
    second.process.wait()
    mover.paho.loop_stop()
    got = set()
    while not mover.messages.empty():
        got.add(int(mover.messages.get().payload))
    # Published while the session's node is dead and nobody has claimed it: node 1 stores
    # them in its queue (once node 2 has not answered for the forward timeout).
    later = [publisher.publish_nowait("meters/m1", str(n).encode(), qos=1) for n in range(300, 400)]
    for info in later:
        publisher.wait_published(info, "meters/m1")
    assert (first.metrics().value("halyard_cluster_stored_for_peer_total", peer="2") or 0) >= 1
    moved = Client(third, "mover", mqtt.MQTTv311, False, None)
    assert moved.connect(), "node 3 has the session"
    try:
        while len(got) < 400:
            # Duplicates are allowed; loss is not.
            got.add(int(moved.expect(timeout=10).payload))
    except AssertionError:
        pytest.fail(f"{400 - len(got)} of the 400 acknowledged messages were lost")
    assert (third.metrics().value("halyard_cluster_session_claims_total", outcome="silent_peer") or 0) >= 1
    moved.disconnect()
    publisher.disconnect()
    cluster.relaunch(2)


def test_a_node_cut_off_from_the_others_refuses_what_it_cannot_store_and_serves_again_after(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.brokers
    # An offline persistent session on node 3: a message for it must be stored.
    keeper = Client(third, "keeper", mqtt.MQTTv311, False, None)
    keeper.connect()
    keeper.subscribe("cut/#", 1)
    keeper.disconnect()
    watcher = _client(third, "cut-watcher")
    watcher.subscribe("cut/#", 1)
    publisher = _client(third, "cut-publisher")
    legacy = Client(third, "cut-legacy", mqtt.MQTTv311, True, None)
    legacy.connect()
    # Nodes 1 and 2 stop answering: node 3 is alone, without the store's quorum.
    for broker in (first, second):
        broker.process.send_signal(signal.SIGSTOP)
    try:
        # It keeps serving its connections...
        publisher.publish("cut/now", b"qos0", qos=0)
        assert watcher.expect().payload == b"qos0"
        # ...but a QoS 1 message it cannot store for the keeper is refused, not acknowledged,
        # once it has waited for the store for the configured time; an MQTT 3.1.1 publisher
        # cannot be told so, and its connection is closed.
        started = time.monotonic()
        info = publisher.publish_nowait("cut/now", b"unstored", qos=1)
        legacy.publish_nowait("cut/now", b"legacy", qos=1)
        reason = publisher.publish_answer(info, timeout=STORE_WAIT_TIMEOUT + 10)
        assert reason.value == 0x97, f"PUBACK {reason}"
        assert time.monotonic() - started >= STORE_WAIT_TIMEOUT - 0.5
        legacy.wait_disconnected(timeout=10)
        # A persistent session cannot be claimed without the store: server unavailable.
        late = Client(third, "cut-late", mqtt.MQTTv311, False, None)
        refused = late.connect_refused(timeout=30)
        assert "unavailable" in str(refused).lower(), f"CONNACK {refused}"
        late.close()
    finally:
        for broker in (first, second):
            broker.process.send_signal(signal.SIGCONT)
    # Healed: routes converge without a restart, and what needs the store works again.
    for broker in (first, second, third):
        others = tuple(b for b in (first, second, third) if b is not broker)
        _wait_for("routes to converge", lambda: _knows_all_routes(broker, others), timeout=30)
    publisher.publish("cut/now", b"healed", qos=1)
    assert (third.metrics().value("halyard_publishes_refused_total", reason="store_wait") or 0) >= 1
    keeper = Client(second, "keeper", mqtt.MQTTv311, False, None)
    assert keeper.connect(), "the keeper's session is still there"
    got = set()
    while b"healed" not in got:
        got.add(keeper.expect(timeout=10).payload)
    keeper.disconnect()
    watcher.disconnect()
    publisher.disconnect()


def test_a_job_reaches_devices_on_every_node_and_its_timer_survives_the_leaders_death(
    cluster: Cluster,
) -> None:
    status = json.loads(cluster.brokers[0].http_get("/cluster/status")[1])
    leader_id = int(status["leader"])
    leader = cluster.brokers[leader_id - 1]
    api_node, device_node = (b for b in cluster.brokers if b is not leader)
    key, secret = aws.keys(api_node)
    iot = aws.client(api_node, key, secret)
    jobs_data = aws.client(api_node, key, secret, service="iot-jobs-data")
    for thing in ("far", "near"):
        iot.create_thing(thingName=thing)
    watcher = _client(device_node, "far-watcher")
    # The SUBACK waits until every peer has the route (the route barrier).
    watcher.subscribe("$aws/things/far/jobs/notify-next", 1)

    arn = "arn:aws:iot:us-east-1:000000000000:thing"
    iot.create_job(jobId="cluster-job", targets=[f"{arn}/far", f"{arn}/near"], document='{"run":1}')
    queued = json.loads(watcher.expect().payload)
    assert queued["execution"]["jobId"] == "cluster-job"

    device = _client(device_node, "far")
    device.publish("$aws/things/far/jobs/start-next",
                   json.dumps({"stepTimeoutInMinutes": 1, "clientToken": "s"}).encode(), qos=1)
    started = json.loads(device.expect().payload)
    assert started["execution"]["status"] == "IN_PROGRESS" and started["clientToken"] == "s"
    jobs_data.update_job_execution(thingName="near", jobId="cluster-job", status="SUCCEEDED")

    # The node driving the job's timers dies; the step timer lives in the store, and the
    # next leader fires it.
    leader.process.kill()
    leader.process.wait()
    try:
        _wait_for(
            "the execution to time out under the new leader",
            lambda: iot.describe_job_execution(jobId="cluster-job", thingName="far")[
                "execution"]["status"] == "TIMED_OUT",
            timeout=120,
        )
        assert "execution" not in json.loads(watcher.expect(timeout=10).payload)
        _wait_for(
            "the job to complete",
            lambda: iot.describe_job(jobId="cluster-job")["job"]["status"] == "COMPLETED",
            timeout=20,
        )
        details = iot.describe_job(jobId="cluster-job")["job"]["jobProcessDetails"]
        assert details["numberOfSucceededThings"] == 1 and details["numberOfTimedOutThings"] == 1
        assert sum(v for k, v in details.items() if k.startswith("numberOf")) == 2
    finally:
        cluster.relaunch(leader_id)
    watcher.disconnect()
    device.disconnect()


def test_a_device_provisioned_through_one_node_connects_to_another_even_after_the_leader_dies(
    cluster: Cluster, tmp_path: Path,
) -> None:
    from device import Device
    from test_provisioning import (
        FLEET_TEMPLATE, JITP_TEMPLATE, ROLE, _connect_by_name, _own_ca, _pem, _signed_device, claim_policy,
    )

    status = json.loads(cluster.brokers[0].http_get("/cluster/status")[1])
    leader_id = int(status["leader"])
    leader = cluster.brokers[leader_id - 1]
    factory_node, device_node = (b for b in cluster.brokers if b is not leader)
    key, secret = aws.keys(device_node)
    iot = aws.client(device_node, key, secret)
    iot.create_thing_group(thingGroupName="meters")
    iot.create_provisioning_template(templateName="meters", templateBody=FLEET_TEMPLATE, enabled=True,
                                     provisioningRoleArn=ROLE)
    claim = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_policy(policyName="claim", policyDocument=claim_policy("meters"))
    iot.attach_policy(policyName="claim", target=claim["certificateArn"])
    (tmp_path / "claim.pem").write_text(claim["certificatePem"])
    (tmp_path / "claim.key").write_text(claim["keyPair"]["PrivateKey"])
    watcher = _client(device_node, "registry-watcher")
    watcher.subscribe("$aws/events/thing/meter_c1/created", 1)

    factory = Device(factory_node, "factory", tmp_path / "claim.pem", tmp_path / "claim.key")
    assert factory.connect() == 0
    factory.subscribe("$aws/certificates/create/json/+")
    factory.subscribe("$aws/provisioning-templates/meters/provision/json/+")
    factory.paho.publish("$aws/certificates/create/json", b"{}", qos=1)
    assert factory.wait(lambda: len(factory.messages) == 1)
    keys = json.loads(factory.messages[0].payload)

    # The store's leader dies between the two steps: the token and the certificate are in the
    # replicated store, and the next leader serves the rest.
    leader.process.kill()
    leader.process.wait()
    try:
        def provisioned() -> bool:
            before = len(factory.messages)
            factory.paho.publish("$aws/provisioning-templates/meters/provision/json", json.dumps({
                "certificateOwnershipToken": keys["certificateOwnershipToken"],
                "parameters": {"SerialNumber": "c1"}}), qos=1)
            factory.wait(lambda: len(factory.messages) > before)
            return factory.messages[-1].topic.endswith("/accepted")

        _wait_for("provisioning under the new leader", provisioned, timeout=60)
        assert json.loads(factory.messages[-1].payload)["thingName"] == "meter_c1"
        assert json.loads(watcher.expect(timeout=10).payload)["thingName"] == "meter_c1"
        factory.close()

        (tmp_path / "meter.pem").write_text(keys["certificatePem"])
        (tmp_path / "meter.key").write_text(keys["privateKey"])
        device = Device(device_node, "meter_c1", tmp_path / "meter.pem", tmp_path / "meter.key",
                        protocol=mqtt.MQTTv5)
        assert device.connect() == 0
        sent = device.paho.publish("things/meter_c1/telemetry", b"{}", qos=1)
        assert device.wait(lambda: sent.mid in device.pubacks)
        assert not device.pubacks[sent.mid].is_failure
        device.close()

        # JITP: a CA registered through one node provisions a device connecting to another.
        ca = _own_ca("cluster CA")
        iot.register_ca_certificate(caCertificate=_pem(ca[1]), setAsActive=True, allowAutoRegistration=True,
                                    registrationConfig={"templateBody": JITP_TEMPLATE, "roleArn": ROLE})
        cert, private_key, _ = _signed_device(ca, "sensor-c1", tmp_path)
        assert _connect_by_name(factory_node, "sensor-c1", cert, private_key, "localhost") == 0
        assert iot.describe_thing(thingName="sensor-c1")["attributes"] == {"maker": "Acme"}
    finally:
        cluster.relaunch(leader_id)
    watcher.disconnect()


def test_every_node_searches_the_whole_fleet_and_where_its_devices_are_connected(cluster: Cluster) -> None:
    first, second, third = cluster.brokers

    def iot_of(broker: Broker) -> Any:
        key, secret = aws.keys(broker)
        return aws.client(broker, key, secret)

    clients = [iot_of(b) for b in cluster.brokers]
    clients[0].update_indexing_configuration(thingIndexingConfiguration={
        "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS"})
    for iot in clients:
        _wait_for("every node to build its index",
                  lambda: iot.describe_index(indexName="AWS_Things")["indexStatus"] == "ACTIVE", timeout=30)
    clients[1].create_thing(thingName="idx-1", attributePayload={"attributes": {"model": "X"}})
    clients[1].create_thing(thingName="idx-2", attributePayload={"attributes": {"model": "X"}})

    def names(iot: Any, query: str) -> list[str]:
        return [t["thingName"] for t in iot.search_index(queryString=query)["things"]]

    device = _client(third, "idx-1")
    query = "attributes.model:X AND connectivity.connected:true"
    for iot in clients:
        _wait_for("every node to find the device connected", lambda: names(iot, query) == ["idx-1"], timeout=20)

    # The device moves to node 1: node 3's record of its disconnection, written after node 1's
    # of its connection, does not mark it disconnected.
    moved = _client(first, "idx-1")
    device.wait_disconnected()
    # Taken over, it must not connect again and take the session back.
    device.paho.loop_stop()

    def written(outcome: str) -> float:
        return third.metrics().value("halyard_index_connectivity_writes_total", outcome=outcome) or 0.0

    _wait_for("node 3 to have heard of the disconnection",
              lambda: written("written") + written("superseded") >= 2, timeout=20)
    # Node 1's record of the connection may land after node 3's of the disconnection.
    for iot in clients:
        _wait_for("every node to find the device connected on node 1",
                  lambda: names(iot, query) == ["idx-1"], timeout=20)
    assert clients[1].get_thing_connectivity_data(thingName="idx-1")["connected"] is True
    moved.disconnect()
    for iot in clients:
        _wait_for("every node to find the device disconnected",
                  lambda: names(iot, "connectivity.connected:false AND attributes.model:X") == ["idx-1", "idx-2"], timeout=20)
    counted = clients[2].get_statistics(queryString="attributes.model:X")["statistics"]
    assert counted["count"] == 2


DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "halyard-rules.yaml"
_METRIC = re.compile(r"\b(halyard_[a-z0-9_]+)")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _dashboard_queries(dashboard: dict) -> list[str]:
    queries = [v.get("query", "") for v in dashboard.get("templating", {}).get("list", [])]
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        queries.extend(t.get("expr", "") for t in panel.get("targets", []))
    return [q for q in queries if isinstance(q, str)]


def _exported(broker: Broker) -> set[str]:
    status, body, _ = broker.http_get("/metrics")
    assert status == 200, body
    return {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}


def test_the_dashboards_and_alerts_query_only_metrics_the_nodes_export(cluster: Cluster) -> None:
    first, second, third = cluster.brokers
    # Traffic between nodes and a session taken over, so that every per-peer and per-outcome
    # series the dashboards split by exists.
    subscriber = Client(second, "dashboards-sub", mqtt.MQTTv311, False, None)
    subscriber.connect()
    subscriber.subscribe("dashboards/#", 1)
    # Every node hears node 2's route only over a live link to it, so node 3 can ask node 2
    # for the session below even if an earlier test restarted either of them.
    _wait_for(
        "every node to learn the route",
        lambda: _knows_all_routes(first, (second, third)) and _knows_all_routes(third, (first, second)),
        timeout=30,
    )
    publisher = _client(first, "dashboards-pub")
    publisher.publish("dashboards/a", b"1", qos=1)
    subscriber.expect()
    subscriber.drop()
    moved = Client(third, "dashboards-sub", mqtt.MQTTv311, False, None)
    assert moved.connect(), "node 3 took the session over from node 2"

    def released() -> float:
        return sum(second.metrics().value("halyard_cluster_sessions_released_total", reason=reason) or 0.0
                   for reason in ("later_connection", "claim"))

    _wait_for("node 2 to let the session go", lambda: released() >= 1)
    moved.disconnect()
    publisher.disconnect()
    # A jobs request, so that the jobs dashboard's request series exist even if the node that
    # served the jobs test's requests was restarted since.
    jobs_client = _client(first, "dashboards-jobs")
    jobs_client.publish("$aws/things/dashboards/jobs/get", b"{}", qos=1)
    jobs_client.expect()
    jobs_client.disconnect()
    # And a packet no MQTT client would send.
    with first.raw_socket() as garbage:
        garbage.sendall(b"\x00\x00")
        garbage.recv(16)
    exported = set().union(*(_exported(b) for b in cluster.brokers))
    # The operator's dashboard is checked against the operator's metrics in its tests, the
    # rules engine's in test_rules.py once rules have run.
    others = {"halyard-operator.json", "halyard-rules.json"}
    dashboards = sorted(d for d in DASHBOARDS.glob("*.json") if d.name not in others)
    assert {d.name for d in dashboards} >= {"halyard-broker.json", "halyard-cluster.json"}
    rules = yaml.safe_load(RULES.read_text())
    sources = [(p.name, _dashboard_queries(json.loads(p.read_text()))) for p in dashboards]
    sources.append((RULES.name, [r["expr"] for g in rules["groups"] for r in g["rules"]]))
    for name, queries in sources:
        assert queries, f"{name} has no queries"
        missing = set()
        for query in queries:
            for metric in _METRIC.findall(query):
                base = next((metric[: -len(s)] for s in _HISTOGRAM_SERIES if metric.endswith(s)), metric)
                if base not in exported and metric not in exported:
                    missing.add(metric)
        assert not missing, f"{name} queries metrics no node exports: {sorted(missing)}"
