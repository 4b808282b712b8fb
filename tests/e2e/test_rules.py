"""Topic rules through boto3 (CreateTopicRule and the rest, with AWS's shapes and errors) and
the engine running them over real MQTT traffic: republish with a topic template, WHERE,
Basic Ingest, the error action."""

from __future__ import annotations

import http.server
import json
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from harness import Broker, Client, MakeClient, wait_for_rules


def _republish_rule(sql: str, topic: str, version: str = "2016-03-23", **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "sql": sql,
        "awsIotSqlVersion": version,
        "actions": [{"republish": {"topic": topic, "roleArn": "arn:aws:iam::123456789012:role/rules", "qos": 1}}],
    }
    payload.update(extra)
    return payload


def _until_fired(publisher: Client, topic: str, payload: bytes, watcher: Client, tries: int = 20) -> Any:
    """Publishes until the rule, loaded by the engine moments after it was created, answers;
    then lets the answers to earlier tries arrive and drops them."""
    for _ in range(tries):
        publisher.publish(topic, payload, qos=1)
        try:
            first = watcher.expect(timeout=0.5)
        except AssertionError:
            continue
        time.sleep(0.5)
        while not watcher.messages.empty():
            watcher.messages.get_nowait()
        return first
    raise AssertionError(f"no rule fired for {topic}")


def test_rules_are_created_read_listed_replaced_disabled_and_deleted(iot: Any) -> None:
    sql = "SELECT temp, topic(2) AS device FROM 'sensors/+/telemetry' WHERE temp > 50"
    iot.create_topic_rule(
        ruleName="hot_sensors",
        topicRulePayload=_republish_rule(sql, "alerts/${topic(2)}", description="too hot"),
    )
    got = iot.get_topic_rule(ruleName="hot_sensors")
    assert got["ruleArn"] == "arn:aws:iot:us-east-1:000000000000:rule/hot_sensors"
    rule = got["rule"]
    assert rule["ruleName"] == "hot_sensors"
    assert rule["sql"] == sql
    assert rule["description"] == "too hot"
    assert rule["ruleDisabled"] is False
    assert rule["awsIotSqlVersion"] == "2016-03-23"
    assert rule["actions"] == [
        {"republish": {"topic": "alerts/${topic(2)}", "roleArn": "arn:aws:iam::123456789012:role/rules", "qos": 1}}
    ]
    created = rule["createdAt"]

    listed = iot.list_topic_rules()["rules"]
    assert [(r["ruleName"], r["topicPattern"], r["ruleDisabled"]) for r in listed] == [
        ("hot_sensors", "sensors/+/telemetry", False)
    ]
    assert iot.list_topic_rules(topic="sensors/+/telemetry")["rules"]
    assert iot.list_topic_rules(topic="other")["rules"] == []

    iot.replace_topic_rule(
        ruleName="hot_sensors",
        topicRulePayload=_republish_rule("SELECT * FROM 'sensors/#'", "alerts/all"),
    )
    replaced = iot.get_topic_rule(ruleName="hot_sensors")["rule"]
    assert replaced["sql"] == "SELECT * FROM 'sensors/#'"
    assert replaced["createdAt"] == created

    iot.disable_topic_rule(ruleName="hot_sensors")
    assert iot.get_topic_rule(ruleName="hot_sensors")["rule"]["ruleDisabled"] is True
    assert iot.list_topic_rules(ruleDisabled=True)["rules"][0]["ruleName"] == "hot_sensors"
    assert iot.list_topic_rules(ruleDisabled=False)["rules"] == []
    iot.enable_topic_rule(ruleName="hot_sensors")
    assert iot.get_topic_rule(ruleName="hot_sensors")["rule"]["ruleDisabled"] is False

    iot.delete_topic_rule(ruleName="hot_sensors")
    assert iot.list_topic_rules()["rules"] == []


def _error(call: Any) -> tuple[str, str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    error = raised.value.response["Error"]
    return error["Code"], error["Message"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_bad_rules_and_missing_ones_get_aws_errors(iot: Any) -> None:
    code, message, status = _error(
        lambda: iot.create_topic_rule(ruleName="bad", topicRulePayload=_republish_rule("SELECT * FROM", "out"))
    )
    assert (code, status) == ("SqlParseException", 400)
    assert message == "Line 1:13 unexpected end of statement, expecting a quoted topic filter"

    code, message, status = _error(lambda: iot.get_topic_rule(ruleName="nobody"))
    assert (code, status) == ("UnauthorizedException", 401)
    assert message == "Access to topic rule 'nobody' was denied"
    assert _error(lambda: iot.delete_topic_rule(ruleName="nobody"))[0] == "UnauthorizedException"

    iot.create_topic_rule(ruleName="twice", topicRulePayload=_republish_rule("SELECT * FROM 'a'", "b"))
    code, _, status = _error(
        lambda: iot.create_topic_rule(ruleName="twice", topicRulePayload=_republish_rule("SELECT * FROM 'a'", "b"))
    )
    assert (code, status) == ("ResourceAlreadyExistsException", 409)

    code, message, _ = _error(
        lambda: iot.create_topic_rule(
            ruleName="qos2",
            topicRulePayload={"sql": "SELECT * FROM 'a'", "actions": [{"republish": {"topic": "b", "roleArn": "r", "qos": 2}}]},
        )
    )
    assert code == "InvalidRequestException"
    assert "qos must be 0 or 1" in message


def test_a_rule_republishes_what_its_where_accepts_to_its_topic_template(iot: Any, mqtt_client: MakeClient) -> None:
    iot.create_topic_rule(
        ruleName="hot",
        topicRulePayload=_republish_rule(
            "SELECT temp, topic(2) AS device FROM 'sensors/+/telemetry' WHERE temp > 50", "alerts/${topic(2)}"
        ),
    )
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("alerts/#", 1)
    device = mqtt_client()
    device.connect()
    message = _until_fired(device, "sensors/d1/telemetry", b'{"temp": 72, "humidity": 40}', watcher)
    assert message.topic == "alerts/d1"
    assert json.loads(message.payload) == {"temp": 72, "device": "d1"}
    device.publish("sensors/d1/telemetry", b'{"temp": 40}', qos=1)
    device.publish("sensors/d2/other", b'{"temp": 90}', qos=1)
    watcher.expect_none(0.5)


def test_the_engine_takes_only_what_its_rules_want(iot: Any, broker: Broker, mqtt_client: MakeClient) -> None:
    iot.create_topic_rule(ruleName="narrow", topicRulePayload=_republish_rule("SELECT * FROM 'wanted/+'", "elsewhere"))
    wait_for_rules(broker, 1)
    device = mqtt_client()
    device.connect()
    taken = lambda: broker.metrics().value("halyard_tap_messages_total", tap="rules", outcome="accepted") or 0  # noqa: E731
    before = taken()
    for n in range(10):
        device.publish(f"unwanted/{n}", b"{}", qos=1)
    device.publish("wanted/1", b"{}", qos=1)
    deadline = time.monotonic() + 5
    while taken() < before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert taken() == before + 1
    iot.disable_topic_rule(ruleName="narrow")
    time.sleep(1.0)
    device.publish("wanted/2", b"{}", qos=1)
    time.sleep(0.3)
    assert taken() == before + 1


def test_basic_ingest_reaches_its_rule_and_no_subscriber(iot: Any, mqtt_client: MakeClient) -> None:
    iot.create_topic_rule(
        ruleName="ingest",
        topicRulePayload=_republish_rule("SELECT *, topic() AS t", "ingested"),
    )
    eavesdropper = mqtt_client()
    eavesdropper.connect()
    eavesdropper.subscribe("$aws/rules/#", 1)
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("ingested", 1)
    device = mqtt_client()
    device.connect()
    message = _until_fired(device, "$aws/rules/ingest/meters/m1", b'{"kwh": 3}', watcher)
    assert json.loads(message.payload) == {"kwh": 3, "t": "meters/m1"}
    eavesdropper.expect_none(0.3)


def test_an_action_that_fails_sends_one_report_to_the_error_action(iot: Any, mqtt_client: MakeClient) -> None:
    iot.create_topic_rule(
        ruleName="to_salesforce",
        topicRulePayload={
            "sql": "SELECT * FROM 'jobs/in'",
            "actions": [
                {"salesforce": {"token": "t" * 40, "url": "https://ingestion.example.com/streams/0001"}},
                {"republish": {"topic": "jobs/copied", "roleArn": "arn:aws:iam::123456789012:role/r"}},
            ],
            "errorAction": {"republish": {"topic": "jobs/errors", "roleArn": "arn:aws:iam::123456789012:role/r"}},
        },
    )
    rule = iot.get_topic_rule(ruleName="to_salesforce")["rule"]
    assert rule["errorAction"] == {"republish": {"topic": "jobs/errors", "roleArn": "arn:aws:iam::123456789012:role/r"}}
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("jobs/errors", 1)
    device = mqtt_client(client_id="worker-1")
    device.connect()
    _until_fired(device, "jobs/in", b'{"n": 0}', watcher)
    device.publish("jobs/in", b'{"n": 1}', qos=1)
    report = json.loads(watcher.expect().payload)
    assert report["ruleName"] == "to_salesforce"
    assert report["topic"] == "jobs/in"
    assert report["clientId"] == "worker-1"
    assert report["base64OriginalPayload"] == "eyJuIjogMX0="
    assert [f["failedAction"] for f in report["failures"]] == ["SalesforceAction"]
    assert "not available" in report["failures"][0]["errorMessage"]
    # One report for the message, however many actions failed.
    watcher.expect_none(0.5)


class _Receiver:
    """A local HTTP server that records every POST and answers the statuses it is given, in
    turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue()
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 5.0) -> tuple[str, dict[str, str], bytes]:
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no request reached the receiver") from None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    started = _Receiver()
    yield started
    started.close()


def test_the_http_action_posts_the_output_with_templated_url_and_headers(
    iot: Any, broker: Broker, mqtt_client: MakeClient, receiver: _Receiver
) -> None:
    iot.create_topic_rule(
        ruleName="to_http",
        topicRulePayload={
            "sql": "SELECT temp, topic(2) AS device FROM 'http/+/data'",
            "awsIotSqlVersion": "2016-03-23",
            "actions": [
                {
                    "http": {
                        "url": receiver.url + "/ingest/${topic(2)}",
                        "confirmationUrl": receiver.url,
                        "headers": [{"key": "x-device", "value": "${topic(2)}"}, {"key": "x-static", "value": "on"}],
                    }
                }
            ],
        },
    )
    wait_for_rules(broker, 1)
    device = mqtt_client()
    device.connect()
    device.publish("http/d7/data", b'{"temp": 21, "x": 1}', qos=1)
    path, headers, body = receiver.next()
    assert path == "/ingest/d7"
    assert headers["content-type"] == "application/json"
    assert headers["x-device"] == "d7"
    assert headers["x-static"] == "on"
    assert json.loads(body) == {"temp": 21, "device": "d7"}
    device.publish("http/d7/data", b"not json", qos=1)
    _, headers, body = receiver.next()
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"device": "d7"}


def test_the_http_action_tries_again_on_5xx_and_reports_a_4xx_to_the_error_action(
    iot: Any, broker: Broker, mqtt_client: MakeClient
) -> None:
    flaky = _Receiver([503, 503])
    refusing = _Receiver([400] * 100)
    try:
        iot.create_topic_rule(
            ruleName="flaky_http",
            topicRulePayload={
                "sql": "SELECT * FROM 'flaky/in'",
                "actions": [{"http": {"url": flaky.url + "/a"}}, {"http": {"url": refusing.url + "/b"}}],
                "errorAction": {"republish": {"topic": "flaky/errors", "roleArn": "arn:aws:iam::1:role/r"}},
            },
        )
        wait_for_rules(broker, 1)
        watcher = mqtt_client()
        watcher.connect()
        watcher.subscribe("flaky/errors", 1)
        device = mqtt_client()
        device.connect()
        device.publish("flaky/in", b'{"n": 1}', qos=1)
        report = json.loads(watcher.expect().payload)
        # Two 503s, then the third try went through: no failure for the first action.
        assert [flaky.next()[0] for _ in range(3)] == ["/a", "/a", "/a"]
        assert [f["failedAction"] for f in report["failures"]] == ["HttpAction"]
        assert report["failures"][0]["failedResource"] == refusing.url + "/b"
        assert "HTTP 400" in report["failures"][0]["errorMessage"]
        # A 4xx is not tried again, and the report came once.
        refusing.next()
        with pytest.raises(AssertionError):
            refusing.next(timeout=0.5)
        watcher.expect_none(0.3)
        # The raw payload passes through `SELECT *` as bytes.
        device.publish("flaky/in", b"\x00\x01raw", qos=1)
        _, headers, body = flaky.next()
        assert headers["content-type"] == "application/octet-stream"
        assert body == b"\x00\x01raw"
    finally:
        flaky.close()
        refusing.close()


def test_get_thing_shadow_reads_the_shadow_of_the_thing_a_message_names(
    iot: Any, data: Any, broker: Broker, mqtt_client: MakeClient
) -> None:
    data.update_thing_shadow(thingName="pump-3", payload=json.dumps({"state": {"reported": {"rpm": 1200}}}))
    data.update_thing_shadow(
        thingName="pump-3", shadowName="limits", payload=json.dumps({"state": {"desired": {"max": 1500}}})
    )
    iot.create_topic_rule(
        ruleName="with_shadow",
        topicRulePayload=_republish_rule(
            "SELECT get_thing_shadow(topic(2), 'arn:aws:iam::123456789012:role/r').state.reported.rpm AS rpm, "
            "get_thing_shadow(topic(2), 'limits', 'arn:aws:iam::123456789012:role/r').state.desired.max AS max, "
            "get_thing_shadow('nobody', 'arn:aws:iam::123456789012:role/r') AS none "
            "FROM 'pumps/+/alarm'",
            "pumps/with-shadow",
        ),
    )
    wait_for_rules(broker, 1)
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("pumps/with-shadow", 1)
    device = mqtt_client()
    device.connect()
    device.publish("pumps/pump-3/alarm", b"{}", qos=1)
    assert json.loads(watcher.expect().payload) == {"rpm": 1200, "max": 1500}


def test_the_rules_dashboard_queries_only_what_the_engine_exports(
    iot: Any, broker: Broker, mqtt_client: MakeClient, receiver: _Receiver
) -> None:
    iot.create_topic_rule(
        ruleName="observed",
        topicRulePayload={
            "sql": "SELECT * FROM 'observed/in'",
            "actions": [
                {"republish": {"topic": "observed/out", "roleArn": "arn:aws:iam::1:role/r"}},
                {"http": {"url": receiver.url + "/x"}},
                {"sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/1/q", "roleArn": "arn:aws:iam::1:role/r"}},
            ],
            "errorAction": {"republish": {"topic": "observed/errors", "roleArn": "arn:aws:iam::1:role/r"}},
        },
    )
    wait_for_rules(broker, 1)
    device = mqtt_client()
    device.connect()
    device.publish("observed/in", b"{}", qos=1)
    receiver.next()
    status, body, _ = broker.http_get("/metrics")
    assert status == 200
    exported = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "halyard-rules.json").read_text())
    queries = [v.get("query", "") for v in dashboard["templating"]["list"]]
    queries += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    missing = set()
    for query in queries:
        for metric in re.findall(r"\b(halyard_[a-z0-9_]+)", query):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if base not in exported and metric not in exported:
                missing.add(metric)
    assert not missing, f"halyard-rules.json queries metrics the node does not export: {sorted(missing)}"


def test_topic_rule_destinations_are_made_with_rules_and_a_disabled_one_stops_its_actions(
    iot: Any, broker: Broker, mqtt_client: MakeClient, receiver: _Receiver
) -> None:
    created = iot.create_topic_rule_destination(
        destinationConfiguration={"httpUrlConfiguration": {"confirmationUrl": receiver.url + "/hooks"}}
    )["topicRuleDestination"]
    arn = created["arn"]
    assert arn.startswith("arn:aws:iot:us-east-1:000000000000:ruledestination/http/")
    assert created["status"] == "ENABLED"
    assert created["httpUrlProperties"] == {"confirmationUrl": receiver.url + "/hooks"}
    assert iot.get_topic_rule_destination(arn=arn)["topicRuleDestination"]["status"] == "ENABLED"
    code, _, status = _error(
        lambda: iot.create_topic_rule_destination(
            destinationConfiguration={"httpUrlConfiguration": {"confirmationUrl": receiver.url + "/hooks"}}
        )
    )
    assert (code, status) == ("ResourceAlreadyExistsException", 409)

    # A rule whose URL no destination covers gets one, as on AWS.
    iot.create_topic_rule(
        ruleName="hooked",
        topicRulePayload={
            "sql": "SELECT * FROM 'hooks/in'",
            "actions": [{"http": {"url": receiver.url + "/hooks/a"}}, {"http": {"url": "http://127.0.0.1:9/other/${topic(1)}"}}],
            "errorAction": {"republish": {"topic": "hooks/errors", "roleArn": "arn:aws:iam::1:role/r"}},
        },
    )
    urls = sorted(
        d["httpUrlSummary"]["confirmationUrl"] for d in iot.list_topic_rule_destinations()["destinationSummaries"]
    )
    assert urls == sorted(["http://127.0.0.1:9/other/", receiver.url + "/hooks"])
    wait_for_rules(broker, 1)
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("hooks/errors", 1)
    device = mqtt_client()
    device.connect()
    device.publish("hooks/in", b"{}", qos=1)
    assert receiver.next()[0] == "/hooks/a"
    watcher.expect()  # the action to port 9 fails

    iot.update_topic_rule_destination(arn=arn, status="DISABLED")
    time.sleep(0.5)
    device.publish("hooks/in", b"{}", qos=1)
    report = json.loads(watcher.expect().payload)
    refused = [f for f in report["failures"] if f["failedResource"] == receiver.url + "/hooks/a"]
    assert refused and "DISABLED" in refused[0]["errorMessage"]
    with pytest.raises(AssertionError):
        receiver.next(timeout=0.5)

    assert _error(lambda: iot.update_topic_rule_destination(arn=arn, status="DELETING"))[0] == "InvalidRequestException"
    iot.delete_topic_rule_destination(arn=arn)
    code, _, status = _error(lambda: iot.get_topic_rule_destination(arn=arn))
    assert (code, status) == ("UnauthorizedException", 401)


def test_principal_is_the_certificate_a_device_connected_with(iot: Any, broker: Broker, lamp: Any, mqtt_client: MakeClient) -> None:
    from device import Device

    created, cert, key = lamp
    iot.create_topic_rule(
        ruleName="who",
        topicRulePayload={
            "sql": "SELECT principal() AS principal, clientid() AS client FROM 'things/+/who'",
            "awsIotSqlVersion": "2016-03-23",
            "actions": [{"republish": {"topic": "who-out", "roleArn": "arn:aws:iam::123456789012:role/rules"}}],
        },
    )
    wait_for_rules(broker, 1)
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("who-out", 1)
    device = Device(broker, "lamp", cert, key)
    assert not device.connect().is_failure
    info = device.paho.publish("things/lamp/who", b"{}", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert json.loads(watcher.expect().payload) == {"principal": created["certificateId"], "client": "lamp"}
    device.close()
    # A client that authenticated as nobody has no principal: the field is left out.
    anonymous = mqtt_client()
    anonymous.connect()
    anonymous.publish("things/x/who", b"{}", qos=1)
    assert json.loads(watcher.expect().payload) == {"client": anonymous.client_id}
