"""Static thing groups with boto3 and the AWS CLI: the hierarchy and its limits, members, and
what deleting a group or a thing does to memberships."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest

import aws
from harness import Broker

ARN = "arn:aws:iot:us-east-1:000000000000"


def _names(groups: list[dict[str, str]]) -> list[str]:
    return sorted(g["groupName"] for g in groups)


def test_a_hierarchy_reports_its_ancestors_and_lists_by_parent(iot: Any) -> None:
    created = iot.create_thing_group(
        thingGroupName="fleet",
        thingGroupProperties={"thingGroupDescription": "all devices",
                              "attributePayload": {"attributes": {"owner": "ops"}}},
    )
    assert created["thingGroupArn"] == f"{ARN}:thinggroup/fleet"
    # The same request again is accepted and returns the same group.
    again = iot.create_thing_group(
        thingGroupName="fleet",
        thingGroupProperties={"thingGroupDescription": "all devices",
                              "attributePayload": {"attributes": {"owner": "ops"}}},
    )
    assert again["thingGroupId"] == created["thingGroupId"]
    with pytest.raises(botocore.exceptions.ClientError) as different:
        iot.create_thing_group(thingGroupName="fleet")
    assert aws.error(different)[:2] == ("ResourceAlreadyExistsException", 409)

    iot.create_thing_group(thingGroupName="eu", parentGroupName="fleet")
    iot.create_thing_group(thingGroupName="eu-west", parentGroupName="eu")
    iot.create_thing_group(thingGroupName="us", parentGroupName="fleet")
    described = iot.describe_thing_group(thingGroupName="eu-west")
    metadata = described["thingGroupMetadata"]
    assert metadata["parentGroupName"] == "eu"
    assert [g["groupName"] for g in metadata["rootToParentThingGroups"]] == ["fleet", "eu"]
    assert metadata["rootToParentThingGroups"][0]["groupArn"] == f"{ARN}:thinggroup/fleet"
    root = iot.describe_thing_group(thingGroupName="fleet")
    assert root["thingGroupProperties"]["attributePayload"]["attributes"] == {"owner": "ops"}
    assert root["thingGroupProperties"]["thingGroupDescription"] == "all devices"

    assert _names(iot.list_thing_groups()["thingGroups"]) == ["eu", "eu-west", "fleet", "us"]
    assert _names(iot.list_thing_groups(parentGroup="fleet")["thingGroups"]) == ["eu", "us"]
    assert _names(iot.list_thing_groups(parentGroup="fleet", recursive=True)["thingGroups"]) == [
        "eu", "eu-west", "us"]
    assert _names(iot.list_thing_groups(recursive=False)["thingGroups"]) == ["fleet"]
    assert _names(iot.list_thing_groups(namePrefixFilter="eu")["thingGroups"]) == ["eu", "eu-west"]

    updated = iot.update_thing_group(
        thingGroupName="eu",
        thingGroupProperties={"attributePayload": {"attributes": {"region": "eu"}, "merge": True}},
        expectedVersion=1,
    )
    assert updated["version"] == 2
    with pytest.raises(botocore.exceptions.ClientError) as stale:
        iot.update_thing_group(thingGroupName="eu", thingGroupProperties={}, expectedVersion=1)
    assert aws.error(stale)[:2] == ("VersionConflictException", 409)

    with pytest.raises(botocore.exceptions.ClientError) as has_children:
        iot.delete_thing_group(thingGroupName="eu")
    code, status, message = aws.error(has_children)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "child groups" in message
    iot.delete_thing_group(thingGroupName="eu-west")
    iot.delete_thing_group(thingGroupName="eu")
    # Deleting what is not there succeeds, as in AWS.
    iot.delete_thing_group(thingGroupName="eu")
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        iot.describe_thing_group(thingGroupName="eu")
    assert aws.error(gone)[:2] == ("ResourceNotFoundException", 404)


def test_a_hierarchy_is_at_most_seven_deep_and_parents_must_exist(iot: Any) -> None:
    parent = None
    for level in range(1, 8):
        name = f"level-{level}"
        if parent is None:
            iot.create_thing_group(thingGroupName=name)
        else:
            iot.create_thing_group(thingGroupName=name, parentGroupName=parent)
        parent = name
    with pytest.raises(botocore.exceptions.ClientError) as too_deep:
        iot.create_thing_group(thingGroupName="level-8", parentGroupName="level-7")
    code, status, message = aws.error(too_deep)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "at most 7 levels" in message
    with pytest.raises(botocore.exceptions.ClientError) as orphan:
        iot.create_thing_group(thingGroupName="orphan", parentGroupName="missing")
    assert aws.error(orphan)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as bad_name:
        iot.create_thing_group(thingGroupName="has space")
    assert aws.error(bad_name)[:2] == ("InvalidRequestException", 400)


def test_things_join_groups_within_aws_limits(iot: Any) -> None:
    iot.create_thing(thingName="sensor")
    iot.create_thing_group(thingGroupName="site")
    iot.create_thing_group(thingGroupName="floor-1", parentGroupName="site")
    iot.create_thing_group(thingGroupName="floor-2", parentGroupName="site")
    iot.add_thing_to_thing_group(thingGroupName="floor-1", thingName="sensor")
    # Adding twice changes nothing.
    iot.add_thing_to_thing_group(thingGroupArn=f"{ARN}:thinggroup/floor-1", thingArn=f"{ARN}:thing/sensor")
    assert _names(iot.list_thing_groups_for_thing(thingName="sensor")["thingGroups"]) == ["floor-1"]
    assert iot.list_things_in_thing_group(thingGroupName="floor-1")["things"] == ["sensor"]
    assert iot.list_things_in_thing_group(thingGroupName="site")["things"] == []
    assert iot.list_things_in_thing_group(thingGroupName="site", recursive=True)["things"] == ["sensor"]

    with pytest.raises(botocore.exceptions.ClientError) as same_hierarchy:
        iot.add_thing_to_thing_group(thingGroupName="floor-2", thingName="sensor")
    code, status, message = aws.error(same_hierarchy)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "same hierarchy" in message

    for n in range(9):
        iot.create_thing_group(thingGroupName=f"tag-{n}")
        iot.add_thing_to_thing_group(thingGroupName=f"tag-{n}", thingName="sensor")
    iot.create_thing_group(thingGroupName="tag-9")
    with pytest.raises(botocore.exceptions.ClientError) as eleventh:
        iot.add_thing_to_thing_group(thingGroupName="tag-9", thingName="sensor")
    code, status, message = aws.error(eleventh)
    assert code == "LimitExceededException"
    assert "10 thing groups" in message

    with pytest.raises(botocore.exceptions.ClientError) as no_thing:
        iot.add_thing_to_thing_group(thingGroupName="tag-9", thingName="missing")
    assert aws.error(no_thing)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as no_group:
        iot.add_thing_to_thing_group(thingGroupName="missing", thingName="sensor")
    assert aws.error(no_group)[:2] == ("ResourceNotFoundException", 404)

    iot.update_thing_groups_for_thing(
        thingName="sensor", thingGroupsToRemove=["tag-0", "tag-1"], thingGroupsToAdd=["tag-9"])
    listed = _names(iot.list_thing_groups_for_thing(thingName="sensor")["thingGroups"])
    assert listed == sorted(["floor-1", *(f"tag-{n}" for n in range(2, 10))])

    iot.remove_thing_from_thing_group(thingGroupName="floor-1", thingName="sensor")
    assert iot.list_things_in_thing_group(thingGroupName="floor-1")["things"] == []

    # Deleting a group, or the thing, ends its memberships.
    iot.delete_thing_group(thingGroupName="tag-2")
    assert "tag-2" not in _names(iot.list_thing_groups_for_thing(thingName="sensor")["thingGroups"])
    iot.delete_thing(thingName="sensor")
    assert iot.list_things_in_thing_group(thingGroupName="tag-3")["things"] == []
    iot.create_thing(thingName="sensor")
    assert iot.list_thing_groups_for_thing(thingName="sensor")["thingGroups"] == []


def test_members_page_through_a_hierarchy(iot: Any) -> None:
    iot.create_thing_group(thingGroupName="top")
    iot.create_thing_group(thingGroupName="mid", parentGroupName="top")
    expected = []
    for n in range(7):
        group = "top" if n % 2 else "mid"
        iot.create_thing(thingName=f"t{n}")
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=f"t{n}")
        expected.append(f"t{n}")
    seen: list[str] = []
    token = ""
    while True:
        page = iot.list_things_in_thing_group(
            thingGroupName="top", recursive=True, maxResults=2, nextToken=token)
        assert len(page["things"]) <= 2
        seen.extend(page["things"])
        token = page.get("nextToken", "")
        if not token:
            break
    assert sorted(seen) == expected
    assert len(seen) == len(set(seen))


def test_the_cli_manages_groups(broker: Broker) -> None:
    created = aws.cli(broker, "create-thing-group", "--thing-group-name", "cli-group")
    assert created["thingGroupName"] == "cli-group"
    aws.cli(broker, "create-thing", "--thing-name", "cli-thing")
    aws.cli(broker, "add-thing-to-thing-group", "--thing-group-name", "cli-group",
            "--thing-name", "cli-thing")
    listed = aws.cli(broker, "list-things-in-thing-group", "--thing-group-name", "cli-group")
    assert listed["things"] == ["cli-thing"]
    groups = aws.cli(broker, "list-thing-groups")
    assert [g["groupName"] for g in groups["thingGroups"]] == ["cli-group"]
