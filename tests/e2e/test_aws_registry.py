"""The AWS IoT control plane with real AWS clients: boto3 (client "iot") and the AWS CLI,
signing with SigV4 against the running binary, for things, thing types and their errors."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
import unittest.mock
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import aws
from harness import Broker, MakeClient


def test_the_credentials_file_works_with_the_documented_cli_command(broker: Broker) -> None:
    path = broker.data_dir / "credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or "aws"
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(path))
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    base = [aws, "--profile", "halyard", "--region", "us-east-1", "--endpoint-url", broker.http_url]
    created = subprocess.run(
        [*base, "iot", "create-thing", "--thing-name", "cli-thing"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["thingArn"] == "arn:aws:iot:us-east-1:000000000000:thing/cli-thing"
    listed = subprocess.run(
        [*base, "iot", "list-things"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert [t["thingName"] for t in json.loads(listed.stdout)["things"]] == ["cli-thing"]
    missing = subprocess.run(
        [*base, "iot", "describe-thing", "--thing-name", "nope"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr


def test_thing_lifecycle_with_idempotent_create_versions_and_attribute_merge(iot: Any) -> None:
    created = iot.create_thing(thingName="dev-1", attributePayload={"attributes": {"color": "red"}})
    assert created["thingName"] == "dev-1"
    assert created["thingArn"] == "arn:aws:iot:us-east-1:000000000000:thing/dev-1"
    # The same configuration again succeeds with the same id; a different one conflicts.
    again = iot.create_thing(thingName="dev-1", attributePayload={"attributes": {"color": "red"}})
    assert again["thingId"] == created["thingId"]
    with pytest.raises(botocore.exceptions.ClientError) as conflict:
        iot.create_thing(thingName="dev-1", attributePayload={"attributes": {"color": "blue"}})
    assert aws.error(conflict)[:2] == ("ResourceAlreadyExistsException", 409)

    described = iot.describe_thing(thingName="dev-1")
    assert described["defaultClientId"] == "dev-1"
    assert described["thingId"] == created["thingId"]
    assert described["attributes"] == {"color": "red"}
    assert described["version"] == 1

    iot.update_thing(
        thingName="dev-1",
        attributePayload={"attributes": {"size": "L", "color": ""}, "merge": True},
        expectedVersion=1,
    )
    described = iot.describe_thing(thingName="dev-1")
    assert described["attributes"] == {"size": "L"}
    assert described["version"] == 2
    with pytest.raises(botocore.exceptions.ClientError) as stale:
        iot.update_thing(thingName="dev-1", attributePayload={"attributes": {"a": "b"}}, expectedVersion=1)
    assert aws.error(stale)[:2] == ("VersionConflictException", 409)
    iot.update_thing(thingName="dev-1", attributePayload={"attributes": {"only": "this"}})
    assert iot.describe_thing(thingName="dev-1")["attributes"] == {"only": "this"}

    with pytest.raises(botocore.exceptions.ClientError) as wrong_version:
        iot.delete_thing(thingName="dev-1", expectedVersion=1)
    assert aws.error(wrong_version)[:2] == ("VersionConflictException", 409)
    iot.delete_thing(thingName="dev-1", expectedVersion=3)
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        iot.describe_thing(thingName="dev-1")
    assert aws.error(gone)[:2] == ("ResourceNotFoundException", 404)
    # Deleting what does not exist succeeds, as in AWS.
    iot.delete_thing(thingName="dev-1")


def test_bad_input_gets_aws_errors(iot: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as bad_name:
        iot.create_thing(thingName="has space")
    code, status, message = aws.error(bad_name)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "thingName" in message
    with pytest.raises(botocore.exceptions.ClientError) as too_many:
        iot.create_thing(thingName="t", attributePayload={"attributes": {f"a{i}": "v" for i in range(4)}})
    assert aws.error(too_many)[:2] == ("InvalidRequestException", 400)
    with pytest.raises(botocore.exceptions.ClientError) as no_type:
        iot.create_thing(thingName="t", thingTypeName="missing-type")
    assert aws.error(no_type)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as bad_token:
        iot.list_things(nextToken="not-a-token")
    assert aws.error(bad_token)[:2] == ("InvalidRequestException", 400)
    # Nothing was created by the refused requests.
    assert iot.list_things()["things"] == []


def test_list_things_paginates_from_the_store_and_filters(iot: Any) -> None:
    iot.create_thing_type(thingTypeName="lamp")
    for i in range(7):
        typed = {"thingTypeName": "lamp"} if i % 2 == 0 else {}
        iot.create_thing(
            thingName=f"thing-{i}", attributePayload={"attributes": {"floor": f"f{i % 3}"}}, **typed
        )
    pages = []
    token = None
    while True:
        kwargs = {"maxResults": 3}
        if token:
            kwargs["nextToken"] = token
        page = iot.list_things(**kwargs)
        pages.append([t["thingName"] for t in page["things"]])
        token = page.get("nextToken")
        if not token:
            break
    assert [name for page in pages for name in page] == [f"thing-{i}" for i in range(7)]
    assert all(len(page) <= 3 for page in pages)
    paginated = [
        t["thingName"]
        for page in iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 2})
        for t in page["things"]
    ]
    assert paginated == [f"thing-{i}" for i in range(7)]
    typed = iot.list_things(thingTypeName="lamp")["things"]
    assert [t["thingName"] for t in typed] == ["thing-0", "thing-2", "thing-4", "thing-6"]
    assert all(t["thingTypeName"] == "lamp" for t in typed)
    on_f1 = iot.list_things(attributeName="floor", attributeValue="f1")["things"]
    assert [t["thingName"] for t in on_f1] == ["thing-1", "thing-4"]
    prefixed = iot.list_things(attributeName="floor", attributeValue="f", usePrefixAttributeValue=True)
    assert len(prefixed["things"]) == 7
    with pytest.raises(botocore.exceptions.ClientError) as too_big:
        iot.list_things(maxResults=251)
    assert aws.error(too_big)[:2] == ("InvalidRequestException", 400)


def test_thing_types_deprecate_before_delete(iot: Any) -> None:
    created = iot.create_thing_type(
        thingTypeName="sensor",
        thingTypeProperties={"thingTypeDescription": "a sensor", "searchableAttributes": ["room"]},
    )
    assert created["thingTypeArn"] == "arn:aws:iot:us-east-1:000000000000:thingtype/sensor"
    described = iot.describe_thing_type(thingTypeName="sensor")
    assert described["thingTypeProperties"]["thingTypeDescription"] == "a sensor"
    assert described["thingTypeMetadata"]["deprecated"] is False
    # A typed thing may have more than three attributes.
    iot.create_thing(
        thingName="s1",
        thingTypeName="sensor",
        attributePayload={"attributes": {f"a{i}": "v" for i in range(5)}},
    )
    with pytest.raises(botocore.exceptions.ClientError) as not_deprecated:
        iot.delete_thing_type(thingTypeName="sensor")
    assert aws.error(not_deprecated)[:2] == ("InvalidRequestException", 400)
    iot.deprecate_thing_type(thingTypeName="sensor")
    assert iot.describe_thing_type(thingTypeName="sensor")["thingTypeMetadata"]["deprecated"] is True
    with pytest.raises(botocore.exceptions.ClientError) as deprecated:
        iot.create_thing(thingName="s2", thingTypeName="sensor")
    assert aws.error(deprecated)[:2] == ("InvalidRequestException", 400)
    with pytest.raises(botocore.exceptions.ClientError) as in_use:
        iot.delete_thing_type(thingTypeName="sensor")
    assert aws.error(in_use)[:2] == ("InvalidRequestException", 400)
    iot.delete_thing(thingName="s1")
    iot.delete_thing_type(thingTypeName="sensor")
    assert iot.list_thing_types()["thingTypes"] == []


def _raw(broker: Broker, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, Any]]:
    """(status, headers (case-insensitive), JSON body) of an unsigned or hand-signed request."""
    request = urllib.request.Request(broker.http_url + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"{}")


def test_bad_signatures_are_refused_as_aws_refuses_them(broker: Broker) -> None:
    key, secret = aws.keys(broker)
    with pytest.raises(botocore.exceptions.ClientError) as wrong_secret:
        aws.client(broker, key, "x" * 40).list_things()
    assert aws.error(wrong_secret)[:2] == ("InvalidSignatureException", 403)
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        aws.client(broker, "AKIAUNKNOWNUNKNOWN00", secret).list_things()
    assert aws.error(unknown)[:2] == ("UnrecognizedClientException", 403)
    with pytest.raises(botocore.exceptions.ClientError) as region:
        aws.client(broker, key, secret, region="eu-west-1").list_things()
    assert aws.error(region)[:2] == ("InvalidSignatureException", 403)

    status, headers, body = _raw(broker, "GET", "/things", {})
    assert status == 403
    assert headers.get("x-amzn-ErrorType") == "MissingAuthenticationTokenException"
    assert body["message"] == "Missing Authentication Token"

    # A request signed an hour ago is outside the skew window.
    request = AWSRequest(method="GET", url=broker.http_url + "/things")
    an_hour_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
    with unittest.mock.patch("botocore.auth.get_current_datetime", return_value=an_hour_ago):
        SigV4Auth(Credentials(key, secret), "iot", "us-east-1").add_auth(request)
    status, headers, body = _raw(broker, "GET", "/things", dict(request.headers))
    assert status == 403
    assert headers.get("x-amzn-ErrorType") == "InvalidSignatureException"
    assert "expired" in body["message"]


def test_presigned_urls_are_accepted_until_they_expire(broker: Broker, iot: Any) -> None:
    iot.create_thing(thingName="presigned")
    url = iot.generate_presigned_url("describe_thing", Params={"thingName": "presigned"}, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.loads(response.read())["thingName"] == "presigned"
    tampered = url.replace("presigned?", "other?")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403


def test_registry_events_are_published_on_aws_event_topics(iot: Any, mqtt_client: MakeClient) -> None:
    watcher = mqtt_client(protocol=mqtt.MQTTv311)
    watcher.connect()
    watcher.subscribe("$aws/events/thing/+/+", qos=1)
    iot.create_thing(thingName="evented", attributePayload={"attributes": {"k": "v"}})
    iot.update_thing(thingName="evented", attributePayload={"attributes": {"k": "w"}})
    iot.delete_thing(thingName="evented")
    messages = [watcher.expect() for _ in range(3)]
    assert [m.topic for m in messages] == [
        "$aws/events/thing/evented/created",
        "$aws/events/thing/evented/updated",
        "$aws/events/thing/evented/deleted",
    ]
    created = json.loads(messages[0].payload)
    assert created["eventType"] == "THING_EVENT"
    assert created["operation"] == "CREATED"
    assert created["thingName"] == "evented"
    assert created["attributes"] == {"k": "v"}
    assert json.loads(messages[1].payload)["versionNumber"] == 2
