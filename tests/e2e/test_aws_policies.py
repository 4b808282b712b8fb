"""Policies with boto3 and the AWS CLI: documents checked on the way in, versions, attachment to
certificates and thing groups, effective policies and TestAuthorization."""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions
import pytest

import aws
from harness import Broker

ARN = "arn:aws:iot:us-east-1:000000000000"


def _document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(action: str, resource: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def _deny(action: str, resource: str) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


def test_policies_keep_five_versions_and_one_default(iot: Any) -> None:
    first = _document(_allow("iot:Connect", "*"))
    created = iot.create_policy(policyName="devices", policyDocument=first)
    assert created["policyArn"] == f"{ARN}:policy/devices"
    assert created["policyVersionId"] == "1"
    with pytest.raises(botocore.exceptions.ClientError) as twice:
        iot.create_policy(policyName="devices", policyDocument=first)
    assert aws.error(twice)[:2] == ("ResourceAlreadyExistsException", 409)

    for n in range(2, 6):
        version = iot.create_policy_version(
            policyName="devices", policyDocument=_document(_allow("iot:Publish", f"{ARN}:topic/v{n}")),
            setAsDefault=(n == 3))
        assert version["policyVersionId"] == str(n)
        assert version["isDefaultVersion"] == (n == 3)
    with pytest.raises(botocore.exceptions.ClientError) as sixth:
        iot.create_policy_version(policyName="devices", policyDocument=first)
    assert aws.error(sixth)[:2] == ("VersionsLimitExceededException", 409)

    got = iot.get_policy(policyName="devices")
    assert got["defaultVersionId"] == "3"
    assert json.loads(got["policyDocument"])["Statement"][0]["Resource"] == f"{ARN}:topic/v3"
    versions = iot.list_policy_versions(policyName="devices")["policyVersions"]
    assert sorted(v["versionId"] for v in versions) == ["1", "2", "3", "4", "5"]
    assert [v["versionId"] for v in versions if v["isDefaultVersion"]] == ["3"]

    with pytest.raises(botocore.exceptions.ClientError) as default:
        iot.delete_policy_version(policyName="devices", policyVersionId="3")
    assert aws.error(default)[:2] == ("DeleteConflictException", 409)
    iot.set_default_policy_version(policyName="devices", policyVersionId="5")
    iot.delete_policy_version(policyName="devices", policyVersionId="3")
    one = iot.get_policy_version(policyName="devices", policyVersionId="1")
    assert one["isDefaultVersion"] is False and json.loads(one["policyDocument"]) == json.loads(first)
    with pytest.raises(botocore.exceptions.ClientError) as missing_version:
        iot.get_policy_version(policyName="devices", policyVersionId="3")
    assert aws.error(missing_version)[:2] == ("ResourceNotFoundException", 404)
    # A version id is never given out twice.
    sixth_id = iot.create_policy_version(policyName="devices", policyDocument=first)["policyVersionId"]
    assert sixth_id == "6"

    with pytest.raises(botocore.exceptions.ClientError) as has_versions:
        iot.delete_policy(policyName="devices")
    assert aws.error(has_versions)[:2] == ("DeleteConflictException", 409)
    for v in ["1", "2", "4", "6"]:
        iot.delete_policy_version(policyName="devices", policyVersionId=v)
    iot.delete_policy(policyName="devices")
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        iot.get_policy(policyName="devices")
    assert aws.error(gone)[:2] == ("ResourceNotFoundException", 404)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"Version": "2012-10-17"}), "no Statement"),
        (_document({"Effect": "Permit", "Action": "iot:*", "Resource": "*"}), "Effect must be"),
        (_document(_allow("iot:Connect", "*"), _allow("iot:Pubish", "*")),
         "Statement 2: unknown action 'iot:Pubish'"),
        (_document(_allow("iot:Publish", "topic/a")), "neither an ARN"),
        (_document({"Effect": "Allow", "Action": "iot:Publish"}), "no Resource"),
        (_document(_allow("iot:Publish", f"{ARN}:topic/" + "a" * 2100)), "the limit is 2048"),
    ],
)
def test_malformed_documents_are_refused_with_the_problem_named(
        iot: Any, document: str, problem: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.create_policy(policyName="bad", policyDocument=document)
    code, status, message = aws.error(refused)
    assert (code, status) == ("MalformedPolicyException", 400)
    assert problem in message
    with pytest.raises(botocore.exceptions.ClientError) as nothing_stored:
        iot.get_policy(policyName="bad")
    assert aws.error(nothing_stored)[:2] == ("ResourceNotFoundException", 404)


def test_policies_attach_to_certificates_and_groups(iot: Any) -> None:
    cert = iot.create_keys_and_certificate(setAsActive=True)
    cert_arn = cert["certificateArn"]
    iot.create_policy(policyName="p1", policyDocument=_document(_allow("iot:Connect", "*")))
    iot.create_policy(policyName="p2", policyDocument=_document(_allow("iot:Publish", "*")))
    iot.attach_policy(policyName="p1", target=cert_arn)
    iot.attach_policy(policyName="p1", target=cert_arn)
    iot.create_thing_group(thingGroupName="plant")
    iot.create_thing_group(thingGroupName="line", parentGroupName="plant")
    iot.attach_policy(policyName="p2", target=f"{ARN}:thinggroup/plant")

    attached = iot.list_attached_policies(target=cert_arn)["policies"]
    assert attached == [{"policyName": "p1", "policyArn": f"{ARN}:policy/p1"}]
    line_arn = f"{ARN}:thinggroup/line"
    assert iot.list_attached_policies(target=line_arn)["policies"] == []
    inherited = iot.list_attached_policies(target=line_arn, recursive=True)["policies"]
    assert [p["policyName"] for p in inherited] == ["p2"]
    assert sorted(iot.list_targets_for_policy(policyName="p1")["targets"]) == [cert_arn]

    with pytest.raises(botocore.exceptions.ClientError) as attached_policy:
        iot.delete_policy(policyName="p1")
    assert aws.error(attached_policy)[:2] == ("DeleteConflictException", 409)
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    with pytest.raises(botocore.exceptions.ClientError) as cert_has_policy:
        iot.delete_certificate(certificateId=cert["certificateId"])
    assert aws.error(cert_has_policy)[:2] == ("DeleteConflictException", 409)

    with pytest.raises(botocore.exceptions.ClientError) as no_such_policy:
        iot.attach_policy(policyName="nope", target=cert_arn)
    assert aws.error(no_such_policy)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as no_such_target:
        iot.attach_policy(policyName="p1", target=f"{ARN}:thinggroup/nope")
    assert aws.error(no_such_target)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as not_a_target:
        iot.attach_policy(policyName="p1", target="arn:aws:s3:::bucket")
    assert aws.error(not_a_target)[:2] == ("InvalidRequestException", 400)

    for n in range(9):
        iot.create_policy(policyName=f"extra-{n}", policyDocument=_document(_allow("iot:Connect", "*")))
        iot.attach_policy(policyName=f"extra-{n}", target=cert_arn)
    iot.create_policy(policyName="extra-9", policyDocument=_document(_allow("iot:Connect", "*")))
    with pytest.raises(botocore.exceptions.ClientError) as eleventh:
        iot.attach_policy(policyName="extra-9", target=cert_arn)
    assert aws.error(eleventh)[0] == "LimitExceededException"

    # The older principal-policy operations see the same attachments.
    listed = iot.list_principal_policies(principal=cert_arn, pageSize=4)
    assert len(listed["policies"]) == 4 and "nextMarker" in listed
    iot.detach_principal_policy(policyName="extra-0", principal=cert_arn)
    assert cert_arn not in iot.list_policy_principals(policyName="extra-0")["principals"]

    for n in range(1, 9):
        iot.detach_policy(policyName=f"extra-{n}", target=cert_arn)
    iot.detach_policy(policyName="p1", target=cert_arn)
    iot.delete_policy(policyName="p1")
    iot.delete_certificate(certificateId=cert["certificateId"])

    # Deleting a group detaches its policies.
    iot.delete_thing_group(thingGroupName="line")
    iot.delete_thing_group(thingGroupName="plant")
    iot.delete_policy(policyName="p2")


def test_effective_policies_and_test_authorization_follow_aws_evaluation(iot: Any) -> None:
    cert = iot.create_keys_and_certificate(setAsActive=True)
    cert_arn = cert["certificateArn"]
    iot.create_thing(thingName="lamp", attributePayload={"attributes": {"room": "kitchen"}})
    iot.attach_thing_principal(thingName="lamp", principal=cert_arn)
    iot.create_policy(policyName="own-topics", policyDocument=_document(
        _allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"),
        _allow(["iot:Publish", "iot:Receive"],
               f"{ARN}:topic/things/${{iot:Connection.Thing.ThingName}}/*"),
        _deny("iot:Publish", f"{ARN}:topic/things/*/admin"),
    ))
    iot.attach_policy(policyName="own-topics", target=cert_arn)
    iot.create_thing_group(thingGroupName="kitchen")
    iot.add_thing_to_thing_group(thingGroupName="kitchen", thingName="lamp")
    iot.create_policy(policyName="room-feed", policyDocument=_document(
        _allow("iot:Subscribe", f"{ARN}:topicfilter/rooms/${{iot:Connection.Thing.Attributes[room]}}/#"),
    ))
    iot.attach_policy(policyName="room-feed", target=f"{ARN}:thinggroup/kitchen")

    effective = iot.get_effective_policies(principal=cert_arn, thingName="lamp")["effectivePolicies"]
    assert sorted(p["policyName"] for p in effective) == ["own-topics", "room-feed"]
    only_cert = iot.get_effective_policies(principal=cert_arn)["effectivePolicies"]
    assert [p["policyName"] for p in only_cert] == ["own-topics"]

    def decide(client_id: str, action: str, resource: str, **extra: Any) -> dict[str, Any]:
        answer = iot.test_authorization(
            principal=cert_arn, clientId=client_id,
            authInfos=[{"actionType": action, "resources": [resource]}], **extra)
        return answer["authResults"][0]

    assert decide("lamp", "CONNECT", f"{ARN}:client/lamp")["authDecision"] == "ALLOWED"
    # Another client id is not the thing, so thing variables have no value.
    assert decide("other", "CONNECT", f"{ARN}:client/other")["authDecision"] == "IMPLICIT_DENY"
    allowed = decide("lamp", "PUBLISH", f"{ARN}:topic/things/lamp/state")
    assert allowed["authDecision"] == "ALLOWED"
    assert allowed["allowed"]["policies"] == [{"policyName": "own-topics", "policyArn": f"{ARN}:policy/own-topics"}]
    denied = decide("lamp", "PUBLISH", f"{ARN}:topic/things/lamp/admin")
    assert denied["authDecision"] == "EXPLICIT_DENY"
    assert [p["policyName"] for p in denied["denied"]["explicitDeny"]["policies"]] == ["own-topics"]
    assert decide("lamp", "PUBLISH", f"{ARN}:topic/things/fridge/state")["authDecision"] == "IMPLICIT_DENY"
    # Group policies apply through the thing, with its attributes as variables.
    assert decide("lamp", "SUBSCRIBE", f"{ARN}:topicfilter/rooms/kitchen/#")["authDecision"] == "ALLOWED"
    assert decide("lamp", "SUBSCRIBE", f"{ARN}:topicfilter/rooms/garage/#")["authDecision"] == "IMPLICIT_DENY"
    skipped = decide("lamp", "SUBSCRIBE", f"{ARN}:topicfilter/rooms/kitchen/#",
                     policyNamesToSkip=["room-feed"])
    assert skipped["authDecision"] == "IMPLICIT_DENY"

    with pytest.raises(botocore.exceptions.ClientError) as bad_action:
        decide("lamp", "DANCE", f"{ARN}:client/lamp")
    assert aws.error(bad_action)[:2] == ("InvalidRequestException", 400)


def test_the_cli_manages_policies(broker: Broker) -> None:
    document = _document(_allow("iot:Connect", "*"))
    created = aws.cli(broker, "create-policy", "--policy-name", "cli-policy",
                      "--policy-document", document)
    assert created["policyName"] == "cli-policy"
    cert = aws.cli(broker, "create-keys-and-certificate", "--set-as-active")
    aws.cli(broker, "attach-policy", "--policy-name", "cli-policy", "--target", cert["certificateArn"])
    listed = aws.cli(broker, "list-attached-policies", "--target", cert["certificateArn"])
    assert [p["policyName"] for p in listed["policies"]] == ["cli-policy"]
    policies = aws.cli(broker, "list-policies")
    assert [p["policyName"] for p in policies["policies"]] == ["cli-policy"]
