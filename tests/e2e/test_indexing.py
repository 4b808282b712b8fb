"""Fleet indexing against one node with boto3 and the AWS CLI: the configuration, SearchIndex
over registry, groups, shadows and connectivity (driven by real MQTT connections), paging, the
aggregations, the thing group index, and AWS's errors for bad queries and configurations."""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions
import pytest

import aws
from harness import Broker, MakeClient, wait_until


def _configure(iot: Any, **thing: Any) -> None:
    config = {"thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS"}
    config.update(thing)
    iot.update_indexing_configuration(thingIndexingConfiguration=config)
    wait_until("the index to be built",
               lambda: iot.describe_index(indexName="AWS_Things")["indexStatus"] == "ACTIVE")


def _names(iot: Any, query: str, **kwargs: Any) -> list[str]:
    return [t["thingName"] for t in iot.search_index(queryString=query, **kwargs)["things"]]


def _found(iot: Any, query: str, expected: list[str]) -> None:
    wait_until(f"{query} to find {expected}", lambda: _names(iot, query, maxResults=100) == expected)


def _fleet(iot: Any, data: Any) -> None:
    iot.create_thing_type(thingTypeName="meter")
    iot.create_thing_group(thingGroupName="floor-1")
    for name, model, fw, temp in [("m1", "X", "2.1", 21.5), ("m2", "X", "3.0", 30), ("m3", "Y", "1.9", 18)]:
        iot.create_thing(thingName=name, thingTypeName="meter",
                         attributePayload={"attributes": {"model": model, "fw": fw}})
        data.update_thing_shadow(thingName=name, payload=json.dumps(
            {"state": {"reported": {"temp": temp, "mode": "eco"}, "desired": {"mode": "eco"}}}))
    iot.add_thing_to_thing_group(thingGroupName="floor-1", thingName="m2")
    iot.create_thing(thingName="s1", attributePayload={"attributes": {"model": "Y-z"}})


def test_search_finds_things_by_registry_shadow_and_connectivity(
    broker: Broker, iot: Any, data: Any, mqtt_client: MakeClient,
) -> None:
    _configure(iot, customFields=[{"name": "attributes.fw", "type": "Number"}])
    config = iot.get_indexing_configuration()["thingIndexingConfiguration"]
    assert config["thingIndexingMode"] == "REGISTRY_AND_SHADOW"
    assert config["thingConnectivityIndexingMode"] == "STATUS"
    assert {"name": "attributes.fw", "type": "Number"} in config["customFields"]
    assert {"name": "connectivity.connected", "type": "Boolean"} in config["managedFields"]
    assert iot.list_indices()["indexNames"] == ["AWS_Things"]
    assert iot.describe_index(indexName="AWS_Things")["schema"] == "REGISTRY_AND_SHADOW_AND_CONNECTIVITY_STATUS"

    _fleet(iot, data)
    device = mqtt_client("m1")
    device.connect()
    _found(iot, "attributes.model:X AND connectivity.connected:true", ["m1"])
    _found(iot, "thingName:m*", ["m1", "m2", "m3"])
    assert _names(iot, "attributes.fw>2", maxResults=100) == ["m1", "m2"]
    assert _names(iot, "attributes.fw:[2 TO 3}", maxResults=100) == ["m1"]
    assert _names(iot, "shadow.reported.temp:[20 TO 30]", maxResults=100) == ["m1", "m2"]
    assert _names(iot, "shadow.reported.mode:eco AND NOT thingGroupNames:floor-1", maxResults=100) == ["m1", "m3"]
    assert _names(iot, "thingTypeName:meter AND shadow.hasDelta:false", maxResults=100) == ["m1", "m2", "m3"]
    assert _names(iot, 'attributes.model:"Y-z" OR thingName:m?', maxResults=100) == ["m1", "m2", "m3", "s1"]
    assert _names(iot, "attributes.model:*", maxResults=100) == ["m1", "m2", "m3", "s1"]

    found = iot.search_index(queryString="thingName:m1")["things"][0]
    assert found["thingId"] == iot.describe_thing(thingName="m1")["thingId"]
    assert found["thingTypeName"] == "meter"
    assert found["attributes"] == {"model": "X", "fw": "2.1"}
    shadow = json.loads(found["shadow"])
    assert shadow["reported"] == {"temp": 21.5, "mode": "eco"} and shadow["hasDelta"] is False
    assert found["connectivity"]["connected"] is True
    assert isinstance(found["connectivity"]["timestamp"], int)
    assert iot.search_index(queryString="thingName:m2")["things"][0]["thingGroupNames"] == ["floor-1"]

    # Pages in name order, each token leading to the next.
    seen: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"queryString": "*", "maxResults": 3}
        if token:
            kwargs["nextToken"] = token
        page = iot.search_index(**kwargs)
        seen += [t["thingName"] for t in page["things"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == ["m1", "m2", "m3", "s1"]

    # Changes reach the index: an attribute, a shadow, a disconnection, a deletion.
    iot.update_thing(thingName="m3", attributePayload={"attributes": {"model": "X"}, "merge": True})
    _found(iot, "attributes.model:X", ["m1", "m2", "m3"])
    data.update_thing_shadow(thingName="m3", payload=json.dumps({"state": {"desired": {"mode": "boost"}}}))
    _found(iot, "shadow.hasDelta:true", ["m3"])
    device.disconnect()
    _found(iot, "connectivity.connected:false AND thingName:m1", ["m1"])
    gone = iot.search_index(queryString="thingName:m1")["things"][0]["connectivity"]
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    connectivity = iot.get_thing_connectivity_data(thingName="m1")
    assert connectivity["connected"] is False
    assert connectivity["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    iot.delete_thing(thingName="m2")
    _found(iot, "thingName:m*", ["m1", "m3"])


def test_aggregations_summarise_what_a_query_matches(broker: Broker, iot: Any, data: Any) -> None:
    _configure(iot, customFields=[{"name": "attributes.fw", "type": "Number"}])
    _fleet(iot, data)
    _found(iot, "shadow.reported.temp:*", ["m1", "m2", "m3"])
    stats = iot.get_statistics(queryString="thingName:m*", aggregationField="shadow.reported.temp")["statistics"]
    assert stats["count"] == 3
    assert stats["minimum"] == 18 and stats["maximum"] == 30
    assert stats["average"] == pytest.approx((21.5 + 30 + 18) / 3)
    assert iot.get_statistics(queryString="*")["statistics"] == {"count": 4}
    assert iot.get_cardinality(queryString="*", aggregationField="attributes.model")["cardinality"] == 3
    percentiles = iot.get_percentiles(queryString="*", aggregationField="attributes.fw", percents=[50, 100])
    assert percentiles["percentiles"] == [{"percent": 50.0, "value": 2.1}, {"percent": 100.0, "value": 3.0}]
    buckets = iot.get_buckets_aggregation(
        queryString="*", aggregationField="attributes.model",
        bucketsAggregationType={"termsAggregation": {"maxBuckets": 2}})
    assert buckets["totalCount"] == 4
    assert buckets["buckets"] == [{"keyValue": "X", "count": 2}, {"keyValue": "Y", "count": 1}]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.get_percentiles(queryString="*", aggregationField="attributes.model")
    assert aws.error(refused)[:2] == ("InvalidAggregationException", 400)


def test_the_thing_group_index_searches_groups(broker: Broker, iot: Any) -> None:
    iot.update_indexing_configuration(
        thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"},
        thingGroupIndexingConfiguration={"thingGroupIndexingMode": "ON"})
    wait_until("the group index to be built",
               lambda: iot.describe_index(indexName="AWS_ThingGroups")["indexStatus"] == "ACTIVE")
    assert sorted(iot.list_indices()["indexNames"]) == ["AWS_ThingGroups", "AWS_Things"]
    iot.create_thing_group(thingGroupName="site", thingGroupProperties={"thingGroupDescription": "North site"})
    iot.create_thing_group(thingGroupName="line-a", parentGroupName="site",
                           thingGroupProperties={"attributePayload": {"attributes": {"kind": "line"}}})

    def groups(query: str) -> list[str]:
        found = iot.search_index(indexName="AWS_ThingGroups", queryString=query)["thingGroups"]
        return [g["thingGroupName"] for g in found]

    wait_until("the groups to be indexed", lambda: groups("parentGroupNames:site") == ["line-a"])
    assert groups("attributes.kind:line") == ["line-a"]
    assert groups('thingGroupDescription:"North site"') == ["site"]
    described = iot.search_index(indexName="AWS_ThingGroups", queryString="thingGroupName:line-a")["thingGroups"][0]
    assert described["parentGroupNames"] == ["site"] and described["attributes"] == {"kind": "line"}


def test_bad_queries_and_configurations_are_refused_as_aws_refuses_them(broker: Broker, iot: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.search_index(queryString="thingName:a")
    assert aws.error(refused)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.describe_index(indexName="AWS_Things")
    assert aws.error(refused)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.update_indexing_configuration(thingIndexingConfiguration={
            "thingIndexingMode": "REGISTRY", "namedShadowIndexingMode": "ON"})
    code, status, message = aws.error(refused)
    assert (code, status) == ("InvalidRequestException", 400) and "REGISTRY_AND_SHADOW" in message
    _configure(iot)
    for query, position in [("thingName:a AND", 16), ("(thingName:a", 13), ("attributes.x:[1 20]", 17)]:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            iot.search_index(queryString=query)
        code, status, message = aws.error(refused)
        assert (code, status) == ("InvalidQueryException", 400)
        assert f"position {position}" in message, message
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.search_index(queryString="*", maxResults=501)
    assert aws.error(refused)[:2] == ("InvalidRequestException", 400)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.search_index(queryString="*", nextToken="not-a-token")
    assert aws.error(refused)[:2] == ("InvalidRequestException", 400)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.get_thing_connectivity_data(thingName="nobody")
    assert aws.error(refused)[:2] == ("ResourceNotFoundException", 404)


def test_the_cli_searches_the_index(broker: Broker, iot: Any) -> None:
    _configure(iot)
    iot.create_thing(thingName="cli-1", attributePayload={"attributes": {"model": "X"}})
    _found(iot, "attributes.model:X", ["cli-1"])
    found = aws.cli(broker, "search-index", "--query-string", "attributes.model:X")
    assert [t["thingName"] for t in found["things"]] == ["cli-1"]
    counted = aws.cli(broker, "get-statistics", "--query-string", "thingName:cli*")
    assert counted["statistics"]["count"] == 1
