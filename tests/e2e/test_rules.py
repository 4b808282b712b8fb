"""Topic rules through boto3 (CreateTopicRule and the rest, with AWS's shapes and errors) and
the engine running them over real MQTT traffic: republish with a topic template, WHERE,
Basic Ingest, the error action."""

from __future__ import annotations

import json
import time
from typing import Any

import botocore.exceptions
import pytest

from harness import Client, MakeClient


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
        ruleName="to_lambda",
        topicRulePayload={
            "sql": "SELECT * FROM 'jobs/in'",
            "actions": [
                {"lambda": {"functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f"}},
                {"republish": {"topic": "jobs/copied", "roleArn": "arn:aws:iam::123456789012:role/r"}},
            ],
            "errorAction": {"republish": {"topic": "jobs/errors", "roleArn": "arn:aws:iam::123456789012:role/r"}},
        },
    )
    rule = iot.get_topic_rule(ruleName="to_lambda")["rule"]
    assert rule["errorAction"] == {"republish": {"topic": "jobs/errors", "roleArn": "arn:aws:iam::123456789012:role/r"}}
    watcher = mqtt_client()
    watcher.connect()
    watcher.subscribe("jobs/errors", 1)
    device = mqtt_client(client_id="worker-1")
    device.connect()
    _until_fired(device, "jobs/in", b'{"n": 0}', watcher)
    device.publish("jobs/in", b'{"n": 1}', qos=1)
    report = json.loads(watcher.expect().payload)
    assert report["ruleName"] == "to_lambda"
    assert report["topic"] == "jobs/in"
    assert report["clientId"] == "worker-1"
    assert report["base64OriginalPayload"] == "eyJuIjogMX0="
    assert [f["failedAction"] for f in report["failures"]] == ["LambdaAction"]
    assert "not available" in report["failures"][0]["errorMessage"]
    # One report for the message, however many actions failed.
    watcher.expect_none(0.5)
