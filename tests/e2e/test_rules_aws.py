"""Rule actions of AWS services (s3, sqs, sns, kinesis, firehose, dynamoDBv2) sent to an
AWS-compatible endpoint: moto in server mode, checked by reading what arrived with boto3."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

import aws
from harness import Broker, Client, free_port, running_broker, wait_for_rules, wait_until

REGION = "us-east-1"


def _moto(url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def broker_with_aws(tmp_path: Path, moto: str) -> Iterator[Broker]:
    env = {
        "HALYARD_RULES__AWS_ENDPOINT": moto,
        "HALYARD_RULES__AWS_ACCESS_KEY_ID": "testing",
        "HALYARD_RULES__AWS_SECRET_ACCESS_KEY": "testing",
    }
    with running_broker(tmp_path, env) as running:
        yield running


def test_aws_service_actions_reach_the_aws_compatible_endpoint(broker_with_aws: Broker, moto: str) -> None:
    broker = broker_with_aws
    s3 = _moto(moto, "s3")
    s3.create_bucket(Bucket="telemetry")
    sqs = _moto(moto, "sqs")
    queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    sns = _moto(moto, "sns")
    topic_arn = sns.create_topic(Name="ops")["TopicArn"]
    sns_queue = sqs.create_queue(QueueName="ops-copy")["QueueUrl"]
    sns_queue_arn = sqs.get_queue_attributes(QueueUrl=sns_queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=sns_queue_arn, Attributes={"RawMessageDelivery": "true"})
    kinesis = _moto(moto, "kinesis")
    kinesis.create_stream(StreamName="readings", ShardCount=1)
    dynamodb = _moto(moto, "dynamodb")
    dynamodb.create_table(
        TableName="devices",
        KeySchema=[{"AttributeName": "device", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    key, secret = aws.keys(broker)
    iot = aws.client(broker, key, secret)
    role = "arn:aws:iam::123456789012:role/rules"
    iot.create_topic_rule(
        ruleName="to_aws",
        topicRulePayload={
            "sql": "SELECT temp, topic(2) AS device FROM 'plant/+/reading'",
            "awsIotSqlVersion": "2016-03-23",
            "actions": [
                {"s3": {"bucketName": "telemetry", "key": "${topic(2)}/${timestamp()}.json", "roleArn": role}},
                {"sqs": {"queueUrl": queue_url, "useBase64": False, "roleArn": role}},
                {"sns": {"targetArn": topic_arn, "messageFormat": "RAW", "roleArn": role}},
                {"kinesis": {"streamName": "readings", "partitionKey": "${topic(2)}", "roleArn": role}},
                {"dynamoDBv2": {"putItem": {"tableName": "devices"}, "roleArn": role}},
            ],
            "errorAction": {"republish": {"topic": "plant/errors", "roleArn": role}},
        },
    )
    wait_for_rules(broker, 1)
    errors = Client(broker, "aws-errors", 5, True, None)
    errors.connect()
    errors.subscribe("plant/errors", 1)
    device = Client(broker, "aws-device", 5, True, None)
    device.connect()
    device.publish("plant/p9/reading", b'{"temp": 81.5}', qos=1)

    expected = {"temp": 81.5, "device": "p9"}
    objects = wait_until("the S3 object", lambda: s3.list_objects_v2(Bucket="telemetry").get("Contents"))
    assert objects[0]["Key"].startswith("p9/")
    assert json.loads(s3.get_object(Bucket="telemetry", Key=objects[0]["Key"])["Body"].read()) == expected
    messages = wait_until("the SQS message", lambda: sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages"))
    assert json.loads(messages[0]["Body"]) == expected
    copied = wait_until("the SNS message", lambda: sqs.receive_message(QueueUrl=sns_queue, WaitTimeSeconds=1).get("Messages"))
    assert json.loads(copied[0]["Body"]) == expected
    shard = kinesis.get_shard_iterator(StreamName="readings", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")
    records = wait_until("the Kinesis record", lambda: kinesis.get_records(ShardIterator=shard["ShardIterator"])["Records"])
    assert json.loads(records[0]["Data"]) == expected
    assert records[0]["PartitionKey"] == "p9"
    item = wait_until("the DynamoDB item", lambda: dynamodb.get_item(TableName="devices", Key={"device": {"S": "p9"}}).get("Item"))
    assert item == {"device": {"S": "p9"}, "temp": {"N": "81.5"}}
    errors.expect_none(0.5)

    # A queue that does not exist: the action fails into the error action with AWS's answer.
    iot.replace_topic_rule(
        ruleName="to_aws",
        topicRulePayload={
            "sql": "SELECT * FROM 'plant/+/reading'",
            "actions": [{"sqs": {"queueUrl": queue_url + "-missing", "roleArn": role}}],
            "errorAction": {"republish": {"topic": "plant/errors", "roleArn": role}},
        },
    )
    time.sleep(0.5)
    device.publish("plant/p9/reading", b'{"temp": 1}', qos=1)
    report = json.loads(errors.expect().payload)
    assert [f["failedAction"] for f in report["failures"]] == ["SqsAction"]
    assert "HTTP 400" in report["failures"][0]["errorMessage"]
    assert base64.b64decode(report["base64OriginalPayload"]) == b'{"temp": 1}'


def _sigv4_valid(method: str, path: str, headers: dict[str, str], body: bytes, secret: str) -> bool:
    """Checks an AWS Signature Version 4 as a receiver would, from what arrived."""
    authorization = headers["authorization"]
    fields = dict(part.strip().split("=", 1) for part in authorization.split(" ", 1)[1].split(","))
    _, date, region, service, _ = fields["Credential"].split("/")
    signed = fields["SignedHeaders"].split(";")
    canonical = "\n".join(
        [method, path, "", *(f"{name}:{headers[name].strip()}" for name in signed), "", ";".join(signed), hashlib.sha256(body).hexdigest()]
    )
    amz_date = headers["x-amz-date"]
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), fields["Signature"])


def test_the_http_action_signs_with_sigv4_and_sends_batches(broker_with_aws: Broker) -> None:
    from test_rules import _Receiver

    broker = broker_with_aws
    receiver = _Receiver()
    try:
        key, secret = aws.keys(broker)
        iot = aws.client(broker, key, secret)
        role = "arn:aws:iam::123456789012:role/rules"
        iot.create_topic_rule(
            ruleName="batched",
            topicRulePayload={
                "sql": "SELECT temp FROM 'batch/+/t'",
                "actions": [
                    {
                        "http": {
                            "url": receiver.url + "/in",
                            "auth": {"sigv4": {"signingRegion": "eu-west-1", "serviceName": "execute-api", "roleArn": role}},
                            "enableBatching": True,
                            "batchConfig": {"maxBatchOpenMs": 200, "maxBatchSize": 3},
                        }
                    }
                ],
            },
        )
        wait_for_rules(broker, 1)
        device = Client(broker, "batch-device", 5, True, None)
        device.connect()
        for n in range(3):
            device.publish_nowait("batch/d1/t", json.dumps({"temp": n}).encode(), qos=1)
        path, headers, body = receiver.next()
        assert path == "/in"
        assert json.loads(body) == [{"temp": 0}, {"temp": 1}, {"temp": 2}], "three messages within 200 ms, one request"
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
        assert "/eu-west-1/execute-api/aws4_request" in headers["authorization"]
        assert _sigv4_valid("POST", "/in", headers, body, "testing")
        # A lone message within its window still arrives, as an array of one.
        device.publish("batch/d1/t", b'{"temp": 9}', qos=1)
        _, _, body = receiver.next()
        assert json.loads(body) == [{"temp": 9}]

        # A batch size AWS does not allow is refused when the rule is made.
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            iot.create_topic_rule(
                ruleName="too_big",
                topicRulePayload={
                    "sql": "SELECT * FROM 'a'",
                    "actions": [{"http": {"url": receiver.url, "enableBatching": True, "batchConfig": {"maxBatchSize": 11}}}],
                },
            )
        assert "batchConfig.maxBatchSize must be from 2 to 10" in str(refused.value)
    finally:
        receiver.close()
