"""AWS IoT Jobs against one node: the control plane with boto3 and the AWS CLI (shapes, errors,
templates, cancel and delete), the device's MQTT API with paho (answers to a requester that
never subscribed, clientToken, notify and notify-next exactly when AWS sends them, AWS's
rejection codes), the AWS IoT Device SDK's jobs clients (v1 as AWS's jobs sample, and the v2
request-response client) over mTLS with a thing-scoped policy, iot-jobs-data over HTTPS
(SigV4 and a device certificate), retries, abort, rollout rate, continuous jobs and events."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest

import aws
from device import ARN, NOT_AUTHORIZED, Device, device_certificate
from harness import Broker, Client, MakeClient, running_broker, wait_until

WAIT = 10.0
THING_ARN = f"{ARN}:thing"
GROUP_ARN = f"{ARN}:thinggroup"


def _json(message: mqtt.MQTTMessage) -> dict[str, Any]:
    return json.loads(message.payload)


def _things(iot: Any, *names: str) -> None:
    for name in names:
        iot.create_thing(thingName=name)


def _request(client: Client, topic: str, body: Any) -> mqtt.MQTTMessage:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    client.publish(topic, payload, qos=1)
    return client.expect()


def _jobs_data(broker: Broker) -> Any:
    key, secret = aws.keys(broker)
    return aws.client(broker, key, secret, service="iot-jobs-data")


def _counts(iot: Any, job: str) -> dict[str, int]:
    details = iot.describe_job(jobId=job)["job"]["jobProcessDetails"]
    return {k: v for k, v in details.items() if k.startswith("numberOf")}


def test_the_control_plane_creates_describes_lists_and_refuses_as_aws(broker: Broker, iot: Any) -> None:
    _things(iot, "a", "b", "c")
    iot.create_thing_group(thingGroupName="floor")
    iot.add_thing_to_thing_group(thingGroupName="floor", thingName="b")
    iot.add_thing_to_thing_group(thingGroupName="floor", thingName="c")
    document = {"operation": "install", "version": "2.1"}
    created = iot.create_job(jobId="fw-1", targets=[f"{THING_ARN}/a", f"{GROUP_ARN}/floor"],
                             document=json.dumps(document), description="firmware 2.1",
                             timeoutConfig={"inProgressTimeoutInMinutes": 30},
                             jobExecutionsRetryConfig={"criteriaList": [
                                 {"failureType": "FAILED", "numberOfRetries": 2}]})
    assert created["jobArn"] == f"{ARN}:job/fw-1"
    assert created["jobId"] == "fw-1" and created["description"] == "firmware 2.1"

    wait_until("three executions queued", lambda: _counts(iot, "fw-1")["numberOfQueuedThings"] == 3)
    job = iot.describe_job(jobId="fw-1")["job"]
    assert job["status"] == "IN_PROGRESS" and job["targetSelection"] == "SNAPSHOT"
    assert job["targets"] == [f"{THING_ARN}/a", f"{GROUP_ARN}/floor"]
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert job["jobExecutionsRetryConfig"]["criteriaList"][0]["numberOfRetries"] == 2
    assert job["createdAt"].year >= 2024 and job["forceCanceled"] is False
    assert json.loads(iot.get_job_document(jobId="fw-1")["document"]) == document

    listed = iot.list_jobs(status="IN_PROGRESS")["jobs"]
    assert [j["jobId"] for j in listed] == ["fw-1"]
    assert iot.list_jobs(thingGroupName="floor")["jobs"][0]["jobArn"] == created["jobArn"]
    assert iot.list_jobs(status="COMPLETED")["jobs"] == []
    per_job = iot.list_job_executions_for_job(jobId="fw-1")["executionSummaries"]
    assert sorted(e["thingArn"] for e in per_job) == [f"{THING_ARN}/{t}" for t in "abc"]
    assert all(e["jobExecutionSummary"]["status"] == "QUEUED" for e in per_job)
    per_thing = iot.list_job_executions_for_thing(thingName="b")["executionSummaries"]
    assert per_thing[0]["jobId"] == "fw-1"
    assert per_thing[0]["jobExecutionSummary"]["executionNumber"] == 1
    execution = iot.describe_job_execution(jobId="fw-1", thingName="a")["execution"]
    assert execution["status"] == "QUEUED" and execution["versionNumber"] == 1
    assert execution["statusDetails"] == {"detailsMap": {}}
    assert execution["thingArn"] == f"{THING_ARN}/a"

    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_job(jobId="fw-1", targets=[f"{THING_ARN}/a"], document="{}")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_job(jobId="fw-2", targets=[f"{THING_ARN}/ghost"], document="{}")
    with pytest.raises(iot.exceptions.InvalidRequestException) as bad:
        iot.create_job(jobId="fw-3", targets=[f"{THING_ARN}/a"], document="not json")
    assert aws.error(bad)[1] == 400
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId="fw-4", targets=[f"{THING_ARN}/a"], document="{}",
                       jobExecutionsRolloutConfig={"exponentialRate": {
                           "baseRatePerMinute": 10, "incrementFactor": 1.25,
                           "rateIncreaseCriteria": {"numberOfNotifiedThings": 5}}})
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="nope")
    with pytest.raises(iot.exceptions.InvalidStateTransitionException) as busy:
        iot.delete_job(jobId="fw-1")
    assert aws.error(busy)[1] == 409

    iot.update_job(jobId="fw-1", description="firmware 2.1.1")
    assert iot.describe_job(jobId="fw-1")["job"]["description"] == "firmware 2.1.1"

    iot.cancel_job_execution(jobId="fw-1", thingName="a", statusDetails={"why": "operator"})
    canceled = iot.describe_job_execution(jobId="fw-1", thingName="a")["execution"]
    assert canceled["status"] == "CANCELED"
    assert canceled["statusDetails"] == {"detailsMap": {"why": "operator"}}
    with pytest.raises(iot.exceptions.InvalidStateTransitionException):
        iot.cancel_job_execution(jobId="fw-1", thingName="a")
    iot.delete_job_execution(jobId="fw-1", thingName="a", executionNumber=1)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job_execution(jobId="fw-1", thingName="a")

    cancel = iot.cancel_job(jobId="fw-1", reasonCode="SUPERSEDED", comment="2.2 is out")
    assert cancel["jobId"] == "fw-1"
    wait_until("queued executions canceled",
               lambda: _counts(iot, "fw-1")["numberOfCanceledThings"] == 2)
    job = iot.describe_job(jobId="fw-1")["job"]
    assert job["status"] == "CANCELED" and job["reasonCode"] == "SUPERSEDED"
    assert job["comment"] == "2.2 is out"
    iot.delete_job(jobId="fw-1")
    # Again: refused while the deletion is under way, or not found once it is done.
    with pytest.raises((iot.exceptions.InvalidStateTransitionException,
                        iot.exceptions.ResourceNotFoundException)):
        iot.delete_job(jobId="fw-1")

    def gone() -> bool:
        try:
            iot.describe_job(jobId="fw-1")
        except iot.exceptions.ResourceNotFoundException:
            return True
        return False

    wait_until("the job deleted", gone)
    assert iot.list_job_executions_for_thing(thingName="b")["executionSummaries"] == []


def test_templates_and_the_cli(broker: Broker, iot: Any) -> None:
    _things(iot, "pump")
    iot.create_job(jobId="base", targets=[f"{THING_ARN}/pump"], document='{"a":1}',
                   timeoutConfig={"inProgressTimeoutInMinutes": 5})
    created = iot.create_job_template(
        jobTemplateId="upgrade", description="upgrade to a version",
        document='{"firmware":"${aws:iot:parameter:version}"}',
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "ALL", "numberOfRetries": 1}]})
    assert created["jobTemplateArn"] == f"{ARN}:jobtemplate/upgrade"
    with pytest.raises(iot.exceptions.ConflictException):
        iot.create_job_template(jobTemplateId="upgrade", description="again", document="{}")
    copied = iot.create_job_template(jobTemplateId="from-job", description="copy",
                                     jobArn=f"{ARN}:job/base")
    assert iot.describe_job_template(jobTemplateId="from-job")["timeoutConfig"] == {
        "inProgressTimeoutInMinutes": 5}
    assert copied["jobTemplateId"] == "from-job"
    listed = iot.list_job_templates()["jobTemplates"]
    assert [t["jobTemplateId"] for t in listed] == ["from-job", "upgrade"]

    iot.create_job(jobId="v3", targets=[f"{THING_ARN}/pump"],
                   jobTemplateArn=created["jobTemplateArn"], documentParameters={"version": "3.0"})
    assert json.loads(iot.get_job_document(jobId="v3")["document"]) == {"firmware": "3.0"}
    described = iot.describe_job(jobId="v3")["job"]
    assert described["jobTemplateArn"] == created["jobTemplateArn"]
    assert described["jobExecutionsRetryConfig"]["criteriaList"][0]["failureType"] == "ALL"
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId="v4", targets=[f"{THING_ARN}/pump"],
                       jobTemplateArn=created["jobTemplateArn"], documentParameters={})

    # The CLI, unchanged.
    described = aws.cli(broker, "describe-job", "--job-id", "v3")
    assert described["job"]["jobId"] == "v3"
    executions = aws.cli(broker, "list-job-executions-for-thing", "--thing-name", "pump")
    assert {e["jobId"] for e in executions["executionSummaries"]} == {"base", "v3"}
    iot.delete_job_template(jobTemplateId="upgrade")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job_template(jobTemplateId="upgrade")


def test_the_device_mqtt_api_answers_notifies_and_rejects_as_aws(
        broker: Broker, iot: Any, mqtt_client: MakeClient) -> None:
    _things(iot, "lamp")
    prefix = "$aws/things/lamp/jobs"
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe(f"{prefix}/notify", 1)
    watcher.subscribe(f"{prefix}/notify-next", 1)
    device = mqtt_client("lamp")
    device.connect()

    iot.create_job(jobId="j1", targets=[f"{THING_ARN}/lamp"], document='{"step":"one"}')
    notified = {m.topic: _json(m) for m in (watcher.expect(), watcher.expect())}
    queued = notified[f"{prefix}/notify"]["jobs"]["QUEUED"]
    assert [j["jobId"] for j in queued] == ["j1"] and queued[0]["versionNumber"] == 1
    assert isinstance(queued[0]["queuedAt"], int)
    next_execution = notified[f"{prefix}/notify-next"]["execution"]
    assert next_execution["jobId"] == "j1" and next_execution["status"] == "QUEUED"
    assert next_execution["jobDocument"] == {"step": "one"}

    iot.create_job(jobId="j2", targets=[f"{THING_ARN}/lamp"], document='{"step":"two"}')
    later = _json(watcher.expect())
    assert [j["jobId"] for j in later["jobs"]["QUEUED"]] == ["j1", "j2"]
    watcher.expect_none(0.5)  # the next one is still j1: no notify-next

    # Answers reach the requester, which never subscribed, with its clientToken.
    pending = _request(device, f"{prefix}/get", {"clientToken": "c-1"})
    assert pending.topic == f"{prefix}/get/accepted"
    body = _json(pending)
    assert body["clientToken"] == "c-1" and body["inProgressJobs"] == []
    assert [j["jobId"] for j in body["queuedJobs"]] == ["j1", "j2"]

    started = _json(_request(device, f"{prefix}/start-next",
                             {"clientToken": "c-2", "statusDetails": {"progress": "0%"}}))
    execution = started["execution"]
    assert execution["jobId"] == "j1" and execution["status"] == "IN_PROGRESS"
    assert execution["versionNumber"] == 2 and execution["statusDetails"] == {"progress": "0%"}
    assert execution["jobDocument"] == {"step": "one"} and started["clientToken"] == "c-2"
    watcher.expect_none(0.5)  # starting is not notified

    described = _json(_request(device, f"{prefix}/$next/get", {"clientToken": "c-3"}))
    assert described["execution"]["jobId"] == "j1" and "jobDocument" in described["execution"]
    plain = _json(_request(device, f"{prefix}/j2/get", {"includeJobDocument": False}))
    assert plain["execution"]["status"] == "QUEUED" and "jobDocument" not in plain["execution"]

    stale = _json(_request(device, f"{prefix}/j1/update",
                           {"status": "SUCCEEDED", "expectedVersion": 1, "clientToken": "c-4"}))
    assert stale["code"] == "VersionMismatch" and stale["clientToken"] == "c-4"
    assert stale["executionState"]["versionNumber"] == 2

    done = _request(device, f"{prefix}/j1/update",
                    {"status": "SUCCEEDED", "expectedVersion": 2, "includeJobExecutionState": True,
                     "includeJobDocument": True, "statusDetails": {"progress": "100%"}})
    assert done.topic == f"{prefix}/j1/update/accepted"
    accepted = _json(done)
    assert accepted["executionState"] == {"status": "SUCCEEDED", "versionNumber": 3,
                                          "statusDetails": {"progress": "100%"}}
    assert accepted["jobDocument"] == {"step": "one"}
    notified = {m.topic: _json(m) for m in (watcher.expect(), watcher.expect())}
    assert [j["jobId"] for j in notified[f"{prefix}/notify"]["jobs"]["QUEUED"]] == ["j2"]
    assert notified[f"{prefix}/notify-next"]["execution"]["jobId"] == "j2"

    again = _json(_request(device, f"{prefix}/j1/update", {"status": "FAILED", "clientToken": "c-5"}))
    assert again["code"] == "InvalidStateTransition" and again["clientToken"] == "c-5"
    assert again["executionState"]["status"] == "SUCCEEDED"
    terminal = _json(_request(device, f"{prefix}/j1/get", {}))
    assert terminal["code"] == "TerminalStateReached" and "executionState" not in terminal
    missing = _json(_request(device, f"{prefix}/nope/update", {"status": "IN_PROGRESS"}))
    assert missing["code"] == "ResourceNotFound"
    service_state = _json(_request(device, f"{prefix}/j2/update", {"status": "CANCELED"}))
    assert service_state["code"] == "InvalidRequest"
    assert _request(device, f"{prefix}/j2/frobnicate", {}).topic == f"{prefix}/j2/frobnicate/rejected"
    unknown = _json(_request(device, f"{prefix}/j2/frobnicate", {"clientToken": "c-x"}))
    assert unknown["code"] == "InvalidTopic" and unknown["clientToken"] == "c-x"
    broken = _request(device, f"{prefix}/get", b"{not json")
    assert _json(broken)["code"] == "InvalidJson"

    rejected = _json(_request(device, f"{prefix}/j2/update", {"status": "REJECTED"}))
    assert "code" not in rejected
    empty = {m.topic: _json(m) for m in (watcher.expect(), watcher.expect())}
    assert empty[f"{prefix}/notify"]["jobs"] == {}
    assert "execution" not in empty[f"{prefix}/notify-next"]
    nothing = _json(_request(device, f"{prefix}/start-next", {"clientToken": "c-6"}))
    assert "execution" not in nothing and nothing["clientToken"] == "c-6"
    assert _counts(iot, "j2")["numberOfRejectedThings"] == 1
    wait_until("j1 completed", lambda: iot.describe_job(jobId="j1")["job"]["status"] == "COMPLETED")
    assert iot.describe_job(jobId="j1")["job"]["completedAt"] is not None


def _jobs_policy() -> str:
    thing = "${iot:Connection.Thing.ThingName}"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/{thing}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": f"{ARN}:topic/$aws/things/{thing}/jobs/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": f"{ARN}:topicfilter/$aws/things/{thing}/jobs/*"},
            {"Effect": "Allow",
             "Action": ["iot:GetPendingJobExecutions", "iot:StartNextPendingJobExecution",
                        "iot:DescribeJobExecution", "iot:UpdateJobExecution"],
             "Resource": f"{ARN}:thing/{thing}"},
        ],
    })


@pytest.fixture
def jobs_device(iot: Any, tmp_path: Path) -> tuple[Path, Path]:
    created, cert, key = device_certificate(iot, tmp_path, "meter")
    _things(iot, "meter", "other")
    iot.attach_thing_principal(thingName="meter", principal=created["certificateArn"])
    iot.create_policy(policyName="jobs", policyDocument=_jobs_policy())
    iot.attach_policy(policyName="jobs", target=created["certificateArn"])
    return cert, key


def _ca(broker: Broker) -> str:
    return str(broker.data_dir / "tls" / "ca.pem")


def test_the_sdk_jobs_client_runs_the_jobs_sample_flow(
        broker: Broker, iot: Any, jobs_device: tuple[Path, Path]) -> None:
    from awscrt import mqtt as crt_mqtt
    from awsiot import iotjobs, mqtt_connection_builder

    cert, key = jobs_device
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="meter", clean_session=True, keep_alive_secs=30)
    connection.connect().result(WAIT)
    jobs = iotjobs.IotJobsClient(connection)
    qos = crt_mqtt.QoS.AT_LEAST_ONCE
    next_changed: list[Any] = []
    started: list[Future[Any]] = [Future()]
    updated: list[Future[Any]] = [Future()]
    rejected: Future[Any] = Future()

    def on_next(event: Any) -> None:
        next_changed.append(event)

    for subscribe, request, callback in [
        (jobs.subscribe_to_next_job_execution_changed_events,
         iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name="meter"), on_next),
        (jobs.subscribe_to_start_next_pending_job_execution_accepted,
         iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name="meter"),
         lambda r: started[-1].set_result(r)),
        (jobs.subscribe_to_update_job_execution_accepted,
         iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name="meter", job_id="+"),
         lambda r: updated[-1].set_result(r)),
        (jobs.subscribe_to_update_job_execution_rejected,
         iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name="meter", job_id="+"),
         lambda r: rejected.done() or rejected.set_result(r)),
    ]:
        future, _ = subscribe(request=request, qos=qos, callback=callback)
        future.result(WAIT)

    for n in (1, 2):
        iot.create_job(jobId=f"sample-{n}", targets=[f"{THING_ARN}/meter"],
                       document=json.dumps({"operation": "reboot", "n": n}))
    wait_until("notify-next", lambda: next_changed)
    assert next_changed[0].execution.job_id == "sample-1"
    assert next_changed[0].execution.job_document == {"operation": "reboot", "n": 1}

    # The sample's loop: start the next, do it, report SUCCEEDED, until nothing is left.
    done = []
    while True:
        jobs.publish_start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name="meter", client_token=f"s{len(done)}"),
            qos).result(WAIT)
        response = started[-1].result(WAIT)
        started.append(Future())
        if response.execution is None:
            break
        execution = response.execution
        assert execution.status == "IN_PROGRESS" and execution.thing_name == "meter"
        assert execution.queued_at.year >= 2024
        jobs.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
            thing_name="meter", job_id=execution.job_id, status="SUCCEEDED",
            expected_version=execution.version_number, client_token=f"u{len(done)}"), qos).result(WAIT)
        assert updated[-1].result(WAIT).client_token == f"u{len(done)}"
        updated.append(Future())
        done.append(execution.job_id)
    assert done == ["sample-1", "sample-2"]
    wait_until("the last notify-next says nothing is next",
               lambda: next_changed[-1].execution is None)

    jobs.publish_update_job_execution(iotjobs.UpdateJobExecutionRequest(
        thing_name="meter", job_id="sample-1", status="FAILED", client_token="late"), qos).result(WAIT)
    refusal = rejected.result(WAIT)
    assert refusal.code == "InvalidStateTransition" and refusal.client_token == "late"
    assert refusal.execution_state.status == "SUCCEEDED"
    connection.disconnect().result(WAIT)

    # The thing's policy lets it use only its own jobs topics.
    device = Device(broker, "meter", cert, key, protocol=mqtt.MQTTv5)
    device.connect()
    info = device.paho.publish("$aws/things/other/jobs/get", b"{}", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert device.pubacks[info.mid] == NOT_AUTHORIZED
    device.close()


def test_the_sdk_v2_jobs_client(broker: Broker, iot: Any, jobs_device: tuple[Path, Path]) -> None:
    import awsiot
    from awscrt import mqtt5, mqtt_request_response
    from awsiot import iotjobs, mqtt5_client_builder

    cert, key = jobs_device
    connected: Future[None] = Future()
    stopped: Future[None] = Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="meter",
        on_lifecycle_connection_success=lambda _event: connected.set_result(None),
        on_lifecycle_stopped=lambda _event: stopped.set_result(None))
    client.start()
    connected.result(WAIT)
    try:
        jobs = iotjobs.IotJobsClientV2(client, mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=2))
        events: list[Any] = []
        stream = jobs.create_next_job_execution_changed_stream(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name="meter"),
            awsiot.ServiceStreamOptions(incoming_event_listener=events.append))
        stream.open()
        time.sleep(0.5)

        iot.create_job(jobId="v2-job", targets=[f"{THING_ARN}/meter"], document='{"go":true}')
        wait_until("notify-next on the stream", lambda: events)
        assert events[0].execution.job_id == "v2-job"

        pending = jobs.get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name="meter")).result(WAIT)
        assert [j.job_id for j in pending.queued_jobs] == ["v2-job"]
        started = jobs.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name="meter", step_timeout_in_minutes=10)).result(WAIT)
        assert started.execution.status == "IN_PROGRESS"
        described = jobs.describe_job_execution(
            iotjobs.DescribeJobExecutionRequest(thing_name="meter", job_id="v2-job")).result(WAIT)
        assert described.execution.job_document == {"go": True}
        updated = jobs.update_job_execution(iotjobs.UpdateJobExecutionRequest(
            thing_name="meter", job_id="v2-job", status="SUCCEEDED", include_job_execution_state=True)).result(WAIT)
        assert updated.execution_state.status == "SUCCEEDED"
        with pytest.raises(awsiot.V2ServiceException) as refused:
            jobs.update_job_execution(iotjobs.UpdateJobExecutionRequest(
                thing_name="meter", job_id="v2-job", status="FAILED")).result(WAIT)
        assert refused.value.modeled_error.code == "InvalidStateTransition"
    finally:
        client.stop(mqtt5.DisconnectPacket())
        # The native client must be done before the broker goes away under it.
        stopped.result(WAIT)


def test_iot_jobs_data_over_sigv4_and_a_device_certificate(
        broker: Broker, iot: Any, jobs_device: tuple[Path, Path]) -> None:
    data = _jobs_data(broker)
    iot.create_job(jobId="http-1", targets=[f"{THING_ARN}/meter"], document='{"x":1}')
    wait_until("queued", lambda: data.get_pending_job_executions(thingName="meter")["queuedJobs"])
    pending = data.get_pending_job_executions(thingName="meter")
    assert pending["inProgressJobs"] == [] and pending["queuedJobs"][0]["jobId"] == "http-1"
    plain = data.describe_job_execution(thingName="meter", jobId="http-1")["execution"]
    assert "jobDocument" not in plain and plain["status"] == "QUEUED"
    with pytest.raises(data.exceptions.InvalidStateTransitionException) as stale:
        data.update_job_execution(thingName="meter", jobId="http-1", status="IN_PROGRESS", expectedVersion=9)
    assert aws.error(stale)[1] == 409, "iot-jobs-data has no version conflict: a stale version is a 409 transition"
    started = data.start_next_pending_job_execution(thingName="meter", stepTimeoutInMinutes=5)["execution"]
    assert started["jobDocument"] == '{"x":1}' and started["status"] == "IN_PROGRESS"
    assert 0 < started["approximateSecondsBeforeTimedOut"] <= 300
    with_doc = data.describe_job_execution(thingName="meter", jobId="http-1", includeJobDocument=True)
    assert with_doc["execution"]["jobDocument"] == '{"x":1}'
    updated = data.update_job_execution(thingName="meter", jobId="http-1", status="SUCCEEDED",
                                        includeJobExecutionState=True, includeJobDocument=True)
    assert updated["executionState"]["status"] == "SUCCEEDED" and updated["jobDocument"] == '{"x":1}'
    with pytest.raises(data.exceptions.InvalidStateTransitionException) as again:
        data.update_job_execution(thingName="meter", jobId="http-1", status="FAILED")
    assert aws.error(again)[1] == 409
    with pytest.raises(data.exceptions.TerminalStateException) as terminal:
        data.describe_job_execution(thingName="meter", jobId="http-1")
    assert aws.error(terminal)[1] == 410
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.describe_job_execution(thingName="meter", jobId="nope")
    assert data.start_next_pending_job_execution(thingName="meter").get("execution") is None

    # The same operations as the device, over mTLS with its certificate, within its policy.
    cert, key = jobs_device
    iot.create_job(jobId="http-2", targets=[f"{THING_ARN}/meter", f"{THING_ARN}/other"], document="{}")
    context = ssl.create_default_context(cafile=_ca(broker))
    context.load_cert_chain(str(cert), str(key))

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"https://localhost:{broker.tls_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, context=context, timeout=WAIT) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"{}")

    wait_until("queued for the device", lambda: call("GET", "/things/meter/jobs")[1].get("queuedJobs"))
    status, body = call("PUT", "/things/meter/jobs/$next", {})
    assert status == 200 and body["execution"]["jobId"] == "http-2"
    status, body = call("POST", "/things/meter/jobs/http-2", {"status": "SUCCEEDED"})
    assert status == 200
    status, _ = call("GET", "/things/other/jobs")
    assert status == 403


def test_failures_are_retried_and_too_many_abort_the_job(broker: Broker, iot: Any, mqtt_client: MakeClient) -> None:
    names = [f"d{n}" for n in range(6)]
    _things(iot, *names)
    iot.create_job(jobId="risky", targets=[f"{THING_ARN}/{n}" for n in names], document="{}",
                   jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]},
                   abortConfig={"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                                  "thresholdPercentage": 50, "minNumberOfExecutedThings": 2}]})
    data = _jobs_data(broker)
    wait_until("all queued", lambda: _counts(iot, "risky")["numberOfQueuedThings"] == 6)

    # d0 fails once and is queued again as its second execution.
    data.update_job_execution(thingName="d0", jobId="risky", status="FAILED")
    wait_until("d0 retried", lambda: iot.describe_job_execution(
        jobId="risky", thingName="d0")["execution"]["executionNumber"] == 2)
    retried = iot.describe_job_execution(jobId="risky", thingName="d0")["execution"]
    assert retried["status"] == "QUEUED" and retried["versionNumber"] == 1
    summary = iot.list_job_executions_for_thing(thingName="d0")["executionSummaries"][0]
    assert summary["jobExecutionSummary"]["retryAttempt"] == 1

    # Out of retries, d0 and d1 fail for good: 2 of 2 executed things failed, over 50%.
    data.update_job_execution(thingName="d0", jobId="risky", status="FAILED", executionNumber=2)
    data.update_job_execution(thingName="d1", jobId="risky", status="FAILED")
    wait_until("d1 retried", lambda: iot.describe_job_execution(
        jobId="risky", thingName="d1")["execution"]["executionNumber"] == 2)
    data.update_job_execution(thingName="d1", jobId="risky", status="FAILED", executionNumber=2)
    wait_until("the job aborted", lambda: iot.describe_job(jobId="risky")["job"]["status"] == "CANCELED")
    wait_until("queued executions canceled", lambda: _counts(iot, "risky")["numberOfCanceledThings"] == 4)
    counts = _counts(iot, "risky")
    assert counts["numberOfFailedThings"] == 2 and counts["numberOfQueuedThings"] == 0
    assert "abort" in iot.describe_job(jobId="risky")["job"]["comment"].lower()
    assert broker.metrics().value("halyard_jobs_aborted_total") == 1


def test_a_rollout_keeps_to_its_rate(broker: Broker, iot: Any) -> None:
    names = [f"r{n}" for n in range(20)]
    _things(iot, *names)
    began = time.monotonic()
    iot.create_job(jobId="slow", targets=[f"{THING_ARN}/{n}" for n in names], document="{}",
                   jobExecutionsRolloutConfig={"maximumPerMinute": 120})
    time.sleep(3.0)
    queued = sum(_counts(iot, "slow").values())
    elapsed = time.monotonic() - began
    # Two a minute's second: never more than the rate allows, and not stalled.
    assert 3 <= queued <= 2 * elapsed + 1, (queued, elapsed)
    details = iot.describe_job(jobId="slow")["job"]["jobProcessDetails"]
    assert details["processingTargets"], "still rolling out"


def test_a_continuous_job_reaches_things_added_to_its_group_later(broker: Broker, iot: Any) -> None:
    _things(iot, "early", "late")
    iot.create_thing_group(thingGroupName="fleet")
    iot.add_thing_to_thing_group(thingGroupName="fleet", thingName="early")
    iot.create_job(jobId="always", targets=[f"{GROUP_ARN}/fleet"], document="{}",
                   targetSelection="CONTINUOUS")
    wait_until("early queued", lambda: _counts(iot, "always")["numberOfQueuedThings"] == 1)
    iot.add_thing_to_thing_group(thingGroupName="fleet", thingName="late")
    wait_until("late queued", lambda: _counts(iot, "always")["numberOfQueuedThings"] == 2)
    _jobs_data(broker).update_job_execution(thingName="early", jobId="always", status="SUCCEEDED")
    # A thing that leaves the group has its pending execution REMOVED.
    iot.remove_thing_from_thing_group(thingGroupName="fleet", thingName="late")
    wait_until("late removed", lambda: iot.describe_job_execution(
        jobId="always", thingName="late")["execution"]["status"] == "REMOVED")
    time.sleep(1.0)
    assert iot.describe_job(jobId="always")["job"]["status"] == "IN_PROGRESS", "continuous jobs never complete"
    # Back in the group, it runs the job again.
    iot.add_thing_to_thing_group(thingGroupName="fleet", thingName="late")
    wait_until("late queued again", lambda: iot.describe_job_execution(
        jobId="always", thingName="late")["execution"]["status"] == "QUEUED")
    assert iot.describe_job_execution(jobId="always", thingName="late")["execution"]["executionNumber"] == 2


def test_job_events_are_published_once_enabled(broker: Broker, iot: Any, mqtt_client: MakeClient) -> None:
    _things(iot, "beacon")
    listener = mqtt_client("events")
    listener.connect()
    listener.subscribe("$aws/events/job/#", 1)
    listener.subscribe("$aws/events/jobExecution/#", 1)
    data = _jobs_data(broker)
    iot.create_job(jobId="quiet", targets=[f"{THING_ARN}/beacon"], document="{}")
    wait_until("queued", lambda: _counts(iot, "quiet")["numberOfQueuedThings"] == 1)
    data.update_job_execution(thingName="beacon", jobId="quiet", status="SUCCEEDED")
    listener.expect_none(1.5)

    iot.update_event_configurations(eventConfigurations={"JOB": {"Enabled": True},
                                                         "JOB_EXECUTION": {"Enabled": True}})
    configured = iot.describe_event_configurations()["eventConfigurations"]
    assert configured["JOB"] == {"Enabled": True} and configured["THING"] == {"Enabled": False}
    iot.create_job(jobId="loud", targets=[f"{THING_ARN}/beacon"], document="{}")
    wait_until("queued", lambda: _counts(iot, "loud")["numberOfQueuedThings"] == 1)
    data.update_job_execution(thingName="beacon", jobId="loud", status="SUCCEEDED")
    execution_event = listener.expect()
    assert execution_event.topic == "$aws/events/jobExecution/loud/succeeded"
    body = _json(execution_event)
    assert body["eventType"] == "JOB_EXECUTION" and body["thingArn"] == f"{THING_ARN}/beacon"
    assert body["status"] == "SUCCEEDED"
    job_event = listener.expect()
    assert job_event.topic == "$aws/events/job/loud/completed"
    completed = _json(job_event)
    assert completed["eventType"] == "JOB" and completed["status"] == "COMPLETED"
    assert completed["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert completed["createdAt"] > 10**12, "milliseconds"


def test_a_rollout_waits_for_its_maintenance_window(broker: Broker, iot: Any) -> None:
    _things(iot, "w1")
    with pytest.raises(iot.exceptions.InvalidRequestException) as bad:
        iot.create_job(jobId="bad-window", targets=[f"{THING_ARN}/w1"], document="{}",
                       schedulingConfig={"maintenanceWindows": [
                           {"startTime": "cron(0 0 * * * *)", "durationInMinutes": 60}]})
    assert "maintenanceWindows" in aws.error(bad)[2]
    # A window far in the future: nothing rolls out now.
    iot.create_job(jobId="later", targets=[f"{THING_ARN}/w1"], document="{}",
                   schedulingConfig={"maintenanceWindows": [
                       {"startTime": "cron(0 0 1 JAN ? 2090)", "durationInMinutes": 60}]})
    # Every minute of every day: open now.
    iot.create_job(jobId="now", targets=[f"{THING_ARN}/w1"], document="{}",
                   schedulingConfig={"maintenanceWindows": [
                       {"startTime": "cron(* * ? * * *)", "durationInMinutes": 1}]})
    wait_until("the open window's job queued", lambda: _counts(iot, "now")["numberOfQueuedThings"] == 1)
    assert sum(_counts(iot, "later").values()) == 0
    window = iot.describe_job(jobId="later")["job"]["schedulingConfig"]["maintenanceWindows"][0]
    assert window == {"startTime": "cron(0 0 1 JAN ? 2090)", "durationInMinutes": 60}


def test_presigned_url_placeholders_are_signed_when_a_device_gets_the_document(
        tmp_path: Path, moto: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="firmware")
    s3.put_object(Bucket="firmware", Key="fw-2.bin", Body=b"firmware bytes")
    env = {"HALYARD_RULES__AWS_ACCESS_KEY_ID": "testing", "HALYARD_RULES__AWS_SECRET_ACCESS_KEY": "testing"}
    with running_broker(tmp_path, env) as broker:
        key, secret = aws.keys(broker)
        iot = aws.client(broker, key, secret)
        data = aws.client(broker, key, secret, service="iot-jobs-data")
        iot.create_thing(thingName="downloader")
        document = json.dumps({"url": f"${{aws:iot:s3-presigned-url:{moto}/firmware/fw-2.bin}}"})
        with pytest.raises(iot.exceptions.InvalidRequestException):
            iot.create_job(jobId="dl", targets=[f"{THING_ARN}/downloader"], document=document)
        iot.create_job(jobId="dl", targets=[f"{THING_ARN}/downloader"], document=document,
                       presignedUrlConfig={"roleArn": "arn:aws:iam::000000000000:role/jobs",
                                           "expiresInSec": 300})
        wait_until("queued", lambda: data.get_pending_job_executions(thingName="downloader")["queuedJobs"])
        started = data.start_next_pending_job_execution(thingName="downloader")["execution"]
        url = json.loads(started["jobDocument"])["url"]
        assert url.startswith(f"{moto}/firmware/fw-2.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256")
        assert "X-Amz-Expires=300" in url and "X-Amz-Signature=" in url
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert response.read() == b"firmware bytes"
        # Operators see the document as they wrote it.
        assert iot.get_job_document(jobId="dl")["document"] == document
