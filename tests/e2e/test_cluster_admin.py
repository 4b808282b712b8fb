"""The admin API's view of the replicated store, and its guard on membership operations."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from harness import Broker


def _post(broker: Broker, path: str, body: dict[str, object], token: str | None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        broker.admin_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_standalone_node_reports_itself_as_the_leader_of_one(broker: Broker) -> None:
    status, body, content_type = broker.http_get("/cluster/status")
    assert status == 200
    assert content_type.startswith("application/json")
    state = json.loads(body)
    assert state["role"] == "leader"
    assert state["leader"] == state["id"] == 1
    assert [m["id"] for m in state["members"]] == [1]
    assert state["applied_index"] >= 1
    metrics = broker.metrics()
    assert metrics.value("halyard_raft_role", role="leader") == 1
    assert metrics.value("halyard_raft_fsyncs_total") is not None


def test_membership_operations_need_the_admin_token(broker: Broker) -> None:
    status, body = _post(broker, "/cluster/leader", {"id": 1}, token=None)
    assert status == 403
    assert "admin_token" in str(body["error"])
