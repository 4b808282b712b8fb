"""Fleet provisioning against a real node: the templates' control plane with boto3, the Device
SDK's identity clients (V1 and V2) provisioning a device by claim, RegisterThing over HTTP, the
pre-provisioning webhook, claim certificates, and just-in-time registration and provisioning
of certificates of a registered CA."""

from __future__ import annotations

import datetime
import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import botocore.exceptions
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import aws
from device import ARN, NOT_AUTHORIZED, Device, device_certificate
from harness import Broker, MakeClient, running_broker, wait_until

WAIT = 10.0
ROLE = "arn:aws:iam::000000000000:role/provisioning"

DEVICE_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": f"{ARN}:topic/things/${{iot:Connection.Thing.ThingName}}/*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": f"{ARN}:topicfilter/things/${{iot:Connection.Thing.ThingName}}/*"},
    ],
})

FLEET_TEMPLATE = json.dumps({
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Model": {"Type": "String", "Default": "m1"},
    },
    "Mappings": {"Firmware": {"m1": {"url": "https://example.com/fw/m1"}}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["meter_", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"model": {"Ref": "Model"}},
                "ThingGroups": ["meters"],
            },
            "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "MERGE"},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": json.loads(DEVICE_POLICY)}},
    },
    "DeviceConfiguration": {"firmware": {"Fn::FindInMap": ["Firmware", {"Ref": "Model"}, "url"]}},
})


def claim_policy(template: str) -> str:
    """AWS's documented policy of a claim certificate."""
    topics = [f"{ARN}:topic/$aws/certificates/create/*",
              f"{ARN}:topic/$aws/provisioning-templates/{template}/provision/*"]
    filters = [f"{ARN}:topicfilter/$aws/certificates/create/*",
               f"{ARN}:topicfilter/$aws/provisioning-templates/{template}/provision/*"]
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": topics},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": filters},
        ],
    })


def _ca(broker: Broker) -> str:
    return str(broker.data_dir / "tls" / "ca.pem")


def _fleet(iot: Any, tmp_path: Path, template: str = "meters", body: str = FLEET_TEMPLATE,
           **extra: Any) -> tuple[Path, Path]:
    """A fleet template, its group, and a claim certificate with the claim policy."""
    iot.create_thing_group(thingGroupName="meters")
    iot.create_provisioning_template(templateName=template, templateBody=body, enabled=True,
                                     provisioningRoleArn=ROLE, **extra)
    created, cert, key = device_certificate(iot, tmp_path, "claim")
    iot.create_policy(policyName="claim", policyDocument=claim_policy(template))
    iot.attach_policy(policyName="claim", target=created["certificateArn"])
    return cert, key


def _error(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[str, int, str]:
    return aws.error(excinfo)


def _check_provisioned_device(broker: Broker, iot: Any, tmp_path: Path, thing: str,
                              certificate_pem: str, private_key: str) -> None:
    """The new identity connects as its thing and may do only what the template's policy allows."""
    cert = tmp_path / f"{thing}.pem"
    key = tmp_path / f"{thing}.key"
    cert.write_text(certificate_pem)
    key.write_text(private_key)
    described = iot.describe_thing(thingName=thing)
    assert described["attributes"]["model"] == "m1"
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"]] == ["meters"]
    principals = iot.list_thing_principals(thingName=thing)["principals"]
    assert len(principals) == 1
    certificate_id = principals[0].rsplit("/", 1)[1]
    assert iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"] == "ACTIVE"

    device = Device(broker, thing, cert, key, protocol=mqtt.MQTTv5)
    assert device.connect() == 0
    own = device.paho.publish(f"things/{thing}/telemetry", b"{}", qos=1)
    other = device.paho.publish("things/someone-else/telemetry", b"{}", qos=1)
    assert device.wait(lambda: own.mid in device.pubacks and other.mid in device.pubacks)
    assert not device.pubacks[own.mid].is_failure
    assert device.pubacks[other.mid] == NOT_AUTHORIZED
    device.close()
    # Another client id than its thing's is refused by the template's policy.
    imposter = Device(broker, "not-the-thing", cert, key)
    assert imposter.connect() != 0
    imposter.close()


def test_templates_control_plane_as_aws(broker: Broker, iot: Any) -> None:
    created = iot.create_provisioning_template(
        templateName="meters", description="meters", templateBody=FLEET_TEMPLATE,
        provisioningRoleArn=ROLE, enabled=True)
    assert created["templateArn"] == f"{ARN}:provisioningtemplate/meters"
    assert created["defaultVersionId"] == 1
    described = iot.describe_provisioning_template(templateName="meters")
    assert described["templateBody"] == FLEET_TEMPLATE
    assert described["enabled"] is True and described["type"] == "FLEET_PROVISIONING"
    assert isinstance(described["creationDate"], datetime.datetime)

    with pytest.raises(botocore.exceptions.ClientError) as duplicate:
        iot.create_provisioning_template(templateName="meters", templateBody=FLEET_TEMPLATE,
                                         provisioningRoleArn=ROLE)
    assert _error(duplicate)[:2] == ("ResourceAlreadyExistsException", 409)

    bad = json.loads(FLEET_TEMPLATE)
    bad["Resources"]["thing"]["Properties"]["ThingName"] = {"Ref": "Undeclared"}
    with pytest.raises(botocore.exceptions.ClientError) as invalid:
        iot.create_provisioning_template(templateName="bad", templateBody=json.dumps(bad),
                                         provisioningRoleArn=ROLE)
    code, status, message = _error(invalid)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "Resource thing ThingName refers to Undeclared" in message

    for n in range(2, 6):
        version = iot.create_provisioning_template_version(templateName="meters", templateBody=FLEET_TEMPLATE,
                                                           setAsDefault=(n == 3))
        assert version["versionId"] == n and version["isDefaultVersion"] == (n == 3)
    with pytest.raises(botocore.exceptions.ClientError) as too_many:
        iot.create_provisioning_template_version(templateName="meters", templateBody=FLEET_TEMPLATE)
    assert _error(too_many)[:2] == ("VersionsLimitExceededException", 409)
    versions = iot.list_provisioning_template_versions(templateName="meters")["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [
        (1, False), (2, False), (3, True), (4, False), (5, False)]
    with pytest.raises(botocore.exceptions.ClientError) as default:
        iot.delete_provisioning_template_version(templateName="meters", versionId=3)
    assert _error(default)[:2] == ("DeleteConflictException", 409)
    iot.delete_provisioning_template_version(templateName="meters", versionId=1)
    assert iot.describe_provisioning_template_version(templateName="meters", versionId=3)["isDefaultVersion"]

    iot.update_provisioning_template(templateName="meters", enabled=False, defaultVersionId=2,
                                     preProvisioningHook={"targetArn": "http://127.0.0.1:9/hook"})
    described = iot.describe_provisioning_template(templateName="meters")
    assert described["enabled"] is False and described["defaultVersionId"] == 2
    assert described["preProvisioningHook"] == {"targetArn": "http://127.0.0.1:9/hook",
                                                "payloadVersion": "2020-04-01"}
    iot.update_provisioning_template(templateName="meters", removePreProvisioningHook=True)
    assert "preProvisioningHook" not in iot.describe_provisioning_template(templateName="meters")

    listed = iot.list_provisioning_templates()["templates"]
    assert [t["templateName"] for t in listed] == ["meters"]
    # The AWS CLI reads the same shapes.
    assert aws.cli(broker, "list-provisioning-templates")["templates"][0]["templateName"] == "meters"
    iot.delete_provisioning_template(templateName="meters")
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        iot.describe_provisioning_template(templateName="meters")
    assert _error(gone)[:2] == ("ResourceNotFoundException", 404)


def test_the_sdk_identity_client_provisions_a_device_by_claim(broker: Broker, iot: Any, tmp_path: Path) -> None:
    from awscrt import mqtt as crt_mqtt
    from awsiot import iotidentity, mqtt_connection_builder

    cert, key = _fleet(iot, tmp_path)
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="factory-1", clean_session=True, keep_alive_secs=30)
    connection.connect().result(WAIT)
    identity = iotidentity.IotIdentityClient(connection)
    qos = crt_mqtt.QoS.AT_LEAST_ONCE
    created: Future[Any] = Future()
    registered: Future[Any] = Future()
    rejected: Future[Any] = Future()
    for subscribe, request, callback in [
        (identity.subscribe_to_create_keys_and_certificate_accepted,
         iotidentity.CreateKeysAndCertificateSubscriptionRequest(), created.set_result),
        (identity.subscribe_to_register_thing_accepted,
         iotidentity.RegisterThingSubscriptionRequest(template_name="meters"), registered.set_result),
        (identity.subscribe_to_register_thing_rejected,
         iotidentity.RegisterThingSubscriptionRequest(template_name="meters"),
         lambda r: rejected.done() or rejected.set_result(r)),
    ]:
        future, _ = subscribe(request=request, qos=qos, callback=callback)
        future.result(WAIT)

    identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), qos).result(WAIT)
    keys = created.result(WAIT)
    # As AWS makes them: RSA 2048 in PKCS#1.
    assert keys.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert keys.certificate_ownership_token
    pending = iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]
    assert pending["status"] == "PENDING_ACTIVATION"

    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name="meters", certificate_ownership_token="not-a-token",
        parameters={"SerialNumber": "0001"}), qos).result(WAIT)
    refusal = rejected.result(WAIT)
    assert (refusal.status_code, refusal.error_code) == (400, "InvalidCertificateOwnershipToken")

    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name="meters", certificate_ownership_token=keys.certificate_ownership_token,
        parameters={"SerialNumber": "0001"}), qos).result(WAIT)
    answer = registered.result(WAIT)
    assert answer.thing_name == "meter_0001"
    assert answer.device_configuration == {"firmware": "https://example.com/fw/m1"}
    connection.disconnect().result(WAIT)

    _check_provisioned_device(broker, iot, tmp_path, "meter_0001", keys.certificate_pem, keys.private_key)
    # The claim certificate can do nothing but provision.
    claim = Device(broker, "factory-2", cert, key, protocol=mqtt.MQTTv5)
    assert claim.connect() == 0
    info = claim.paho.publish("things/meter_0001/telemetry", b"{}", qos=1)
    assert claim.wait(lambda: info.mid in claim.pubacks)
    assert claim.pubacks[info.mid] == NOT_AUTHORIZED
    claim.close()


def test_the_v2_identity_client_provisions_from_a_csr(broker: Broker, iot: Any, tmp_path: Path) -> None:
    import awsiot
    from awscrt import mqtt5, mqtt_request_response
    from awsiot import iotidentity, mqtt5_client_builder

    body = json.loads(FLEET_TEMPLATE)
    cert, key = _fleet(iot, tmp_path, body=json.dumps(body))
    # The claim policy must also allow create-from-csr for this flow.
    iot.create_policy_version(policyName="claim", setAsDefault=True, policyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"],
                       "Resource": "*"}]}))
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meter")]))
           .sign(device_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    connected: Future[None] = Future()
    stopped: Future[None] = Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="localhost", port=broker.mqtts_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=_ca(broker), client_id="factory-v2",
        on_lifecycle_connection_success=lambda _event: connected.set_result(None),
        on_lifecycle_stopped=lambda _event: stopped.set_result(None))
    client.start()
    connected.result(WAIT)
    try:
        identity = iotidentity.IotIdentityClientV2(client, mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=2))
        made = identity.create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)).result(WAIT)
        assert made.certificate_ownership_token and made.certificate_pem.startswith("-----BEGIN CERTIFICATE")
        with pytest.raises(awsiot.V2ServiceException) as refused:
            identity.register_thing(iotidentity.RegisterThingRequest(
                template_name="meters", certificate_ownership_token="",
                parameters={"SerialNumber": "0002"})).result(WAIT)
        assert refused.value.modeled_error.error_code == "InvalidCertificateOwnershipToken"
        answer = identity.register_thing(iotidentity.RegisterThingRequest(
            template_name="meters", certificate_ownership_token=made.certificate_ownership_token,
            parameters={"SerialNumber": "0002"})).result(WAIT)
        assert answer.thing_name == "meter_0002"
    finally:
        client.stop(mqtt5.DisconnectPacket())
        stopped.result(WAIT)
    private_key = device_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode()
    _check_provisioned_device(broker, iot, tmp_path, "meter_0002", made.certificate_pem, private_key)


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        length = int(self.headers.get("content-length", "0"))
        type(self).seen.append(json.loads(self.rfile.read(length)))
        body = json.dumps(type(self).answers.pop(0)).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.answers, _Hook.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _provision(device: Device, template: str, parameters: dict[str, str]) -> dict[str, Any]:
    """CreateKeysAndCertificate then RegisterThing with raw MQTT; the RegisterThing answer."""
    device.subscribe("$aws/certificates/create/json/+")
    device.subscribe(f"$aws/provisioning-templates/{template}/provision/json/+")
    before = len(device.messages)
    device.paho.publish("$aws/certificates/create/json", b"{}", qos=1)
    assert device.wait(lambda: len(device.messages) > before)
    keys = json.loads(device.messages[-1].payload)
    before = len(device.messages)
    device.paho.publish(f"$aws/provisioning-templates/{template}/provision/json", json.dumps({
        "certificateOwnershipToken": keys["certificateOwnershipToken"], "parameters": parameters}), qos=1)
    assert device.wait(lambda: len(device.messages) > before)
    message = device.messages[-1]
    return {"topic": message.topic, **json.loads(message.payload), "keys": keys}


def test_the_pre_provisioning_hook_allows_with_overrides_or_denies(
        broker: Broker, iot: Any, tmp_path: Path, hook: str) -> None:
    cert, key = _fleet(iot, tmp_path, preProvisioningHook={"targetArn": hook, "payloadVersion": "2020-04-01"})
    device = Device(broker, "factory-hook", cert, key)
    assert device.connect() == 0
    # Another device of the fleet, subscribed to the same requests and answers, must not see
    # this one's private key or token.
    eavesdropper = Device(broker, "factory-other", cert, key)
    assert eavesdropper.connect() == 0
    for topic in ("$aws/certificates/create/json", "$aws/certificates/create/json/+",
                  "$aws/provisioning-templates/meters/provision/json",
                  "$aws/provisioning-templates/meters/provision/json/+"):
        eavesdropper.subscribe(topic)

    _Hook.answers.append({"allowProvisioning": True, "parameterOverrides": {"SerialNumber": "from-hook"}})
    answer = _provision(device, "meters", {"SerialNumber": "0003"})
    assert answer["topic"].endswith("/accepted"), answer
    assert answer["thingName"] == "meter_from-hook"
    seen = _Hook.seen[0]
    assert seen["templateArn"] == f"{ARN}:provisioningtemplate/meters"
    assert seen["clientId"] == "factory-hook" and seen["parameters"] == {"SerialNumber": "0003"}
    assert seen["certificateId"] == answer["keys"]["certificateId"]
    assert seen["certificatePem"].startswith("-----BEGIN CERTIFICATE")
    assert len(seen["claimCertificateId"]) == 64

    _Hook.answers.append({"allowProvisioning": False})
    denied = _provision(device, "meters", {"SerialNumber": "0004"})
    assert denied["topic"].endswith("/rejected")
    assert (denied["statusCode"], denied["errorCode"]) == (403, "AccessDenied")
    with pytest.raises(botocore.exceptions.ClientError):
        iot.describe_thing(thingName="meter_0004")
    device.close()
    assert eavesdropper.messages == []
    eavesdropper.close()


def test_a_template_is_all_or_nothing_and_register_thing_over_http(broker: Broker, iot: Any) -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bulk")]))
           .sign(device_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    template = {
        "Parameters": {"Name": {"Type": "String"}, "Csr": {"Type": "String"}, "Group": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing",
                      "Properties": {"ThingName": {"Ref": "Name"}, "ThingGroups": [{"Ref": "Group"}]}},
            "certificate": {"Type": "AWS::IoT::Certificate",
                            "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": DEVICE_POLICY}},
        },
    }
    # A group that does not exist fails the whole template: no thing, no certificate, no policy.
    with pytest.raises(botocore.exceptions.ClientError) as failed:
        iot.register_thing(templateBody=json.dumps(template),
                           parameters={"Name": "bulk-1", "Csr": csr, "Group": "missing"})
    code, status, message = _error(failed)
    assert (code, status) == ("ResourceRegistrationFailureException", 400)
    assert "missing" in message
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []

    iot.create_thing_group(thingGroupName="bulk")
    registered = iot.register_thing(templateBody=json.dumps(template),
                                    parameters={"Name": "bulk-1", "Csr": csr, "Group": "bulk"})
    assert registered["certificatePem"].startswith("-----BEGIN CERTIFICATE")
    arns = registered["resourceArns"]
    assert arns["thing"] == f"{ARN}:thing/bulk-1"
    assert arns["certificate"].startswith(f"{ARN}:cert/")
    assert arns["policy"].startswith(f"{ARN}:policy/")
    assert iot.list_thing_principals(thingName="bulk-1")["principals"] == [arns["certificate"]]
    policies = iot.list_attached_policies(target=arns["certificate"])["policies"]
    assert [p["policyArn"] for p in policies] == [arns["policy"]]


def test_a_claim_certificate_from_create_provisioning_claim(broker: Broker, iot: Any, tmp_path: Path) -> None:
    iot.create_thing_group(thingGroupName="meters")
    iot.create_provisioning_template(templateName="meters", templateBody=FLEET_TEMPLATE, enabled=True,
                                     provisioningRoleArn=ROLE)
    claim = iot.create_provisioning_claim(templateName="meters")
    assert claim["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    lasts = claim["expiration"] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(minutes=4) < lasts <= datetime.timedelta(minutes=5)
    # Claims are not the account's certificates.
    assert iot.list_certificates()["certificates"] == []
    cert, key = tmp_path / "claim.pem", tmp_path / "claim.key"
    cert.write_text(claim["certificatePem"])
    key.write_text(claim["keyPair"]["PrivateKey"])
    device = Device(broker, "factory-claim", cert, key, protocol=mqtt.MQTTv5)
    assert device.connect() == 0
    answer = _provision(device, "meters", {"SerialNumber": "0005"})
    assert answer["topic"].endswith("/accepted"), answer
    assert answer["thingName"] == "meter_0005"
    # A token provisions once.
    before = len(device.messages)
    device.paho.publish("$aws/provisioning-templates/meters/provision/json", json.dumps({
        "certificateOwnershipToken": answer["keys"]["certificateOwnershipToken"],
        "parameters": {"SerialNumber": "0006"}}), qos=1)
    assert device.wait(lambda: len(device.messages) > before)
    assert device.messages[-1].topic.endswith("/rejected")
    assert json.loads(device.messages[-1].payload)["errorCode"] == "InvalidCertificateOwnershipToken"
    info = device.paho.publish("things/meter_0005/telemetry", b"{}", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert device.pubacks[info.mid] == NOT_AUTHORIZED
    device.close()


def _own_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    return key, certificate


def _signed_device(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str,
                   directory: Path) -> tuple[Path, Path, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{common_name}.pem", directory / f"{common_name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, certificate


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _connect_by_name(broker: Broker, client_id: str, cert: Path, key: Path, host: str) -> Any:
    """A connection to `host` (a name sends SNI, an address does not); its CONNACK reason."""
    device = Device(broker, client_id, cert, key)
    try:
        device.paho.connect(host, broker.mqtts_port, keepalive=30)
    except OSError:
        return None
    device.paho.loop_start()
    device.wait(lambda: device.connack is not None or device.disconnected)
    reason = device.connack
    device.close()
    return reason


JITP_TEMPLATE = json.dumps({
    "Parameters": {
        "AWS::IoT::Certificate::CommonName": {"Type": "String"},
        "AWS::IoT::Certificate::Organization": {"Type": "String"},
    },
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
            "AttributePayload": {"maker": {"Ref": "AWS::IoT::Certificate::Organization"}}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": DEVICE_POLICY}},
    },
})


def test_jitp_provisions_on_the_first_connection_and_jitr_announces_the_certificate(
        broker: Broker, iot: Any, tmp_path: Path, mqtt_client: MakeClient) -> None:
    provisioning_ca = _own_ca("Acme provisioning CA")
    registered = iot.register_ca_certificate(
        caCertificate=_pem(provisioning_ca[1]), setAsActive=True, allowAutoRegistration=True,
        certificateMode="SNI_ONLY", registrationConfig={"templateBody": JITP_TEMPLATE, "roleArn": ROLE})
    described = iot.describe_ca_certificate(certificateId=registered["certificateId"])
    assert described["registrationConfig"]["templateBody"] == JITP_TEMPLATE
    assert described["certificateDescription"]["autoRegistrationStatus"] == "ENABLE"

    cert, key, _ = _signed_device(provisioning_ca, "sensor-1", tmp_path)
    # Without SNI nothing is registered.
    assert _connect_by_name(broker, "sensor-1", cert, key, "127.0.0.1") != 0
    assert iot.list_certificates()["certificates"] == []
    # With it, the device is provisioned and admitted on its first connection.
    assert _connect_by_name(broker, "sensor-1", cert, key, "localhost") == 0
    assert iot.describe_thing(thingName="sensor-1")["attributes"] == {"maker": "Acme"}
    [certificate] = iot.list_certificates()["certificates"]
    assert certificate["status"] == "ACTIVE"
    assert iot.list_thing_principals(thingName="sensor-1")["principals"] == [certificate["certificateArn"]]

    # JITR: a CA without a registration config registers the certificate and announces it.
    registration_ca = _own_ca("Acme registration CA")
    jitr = iot.register_ca_certificate(caCertificate=_pem(registration_ca[1]), setAsActive=True,
                                       allowAutoRegistration=True)
    events = mqtt_client("listener")
    events.connect()
    events.subscribe(f"$aws/events/certificates/registered/{jitr['certificateId']}", 1)
    cert2, key2, device_cert = _signed_device(registration_ca, "sensor-2", tmp_path)
    assert _connect_by_name(broker, "sensor-2", cert2, key2, "localhost") != 0
    event = json.loads(events.expect(timeout=WAIT).payload)
    certificate_id = device_cert.fingerprint(hashes.SHA256()).hex()
    assert event["certificateId"] == certificate_id
    assert event["caCertificateId"] == jitr["certificateId"]
    assert event["certificateStatus"] == "PENDING_ACTIVATION"
    assert event["awsAccountId"] == "000000000000"
    status = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"]
    assert status == "PENDING_ACTIVATION"
    # What a JITR Lambda does: activate it, give it a thing and a policy; then it connects.
    iot.update_certificate(certificateId=certificate_id, newStatus="ACTIVE")
    iot.create_thing(thingName="sensor-2")
    arn = f"{ARN}:cert/{certificate_id}"
    iot.attach_thing_principal(thingName="sensor-2", principal=arn)
    iot.create_policy(policyName="sensors", policyDocument=DEVICE_POLICY)
    iot.attach_policy(policyName="sensors", target=arn)
    assert _connect_by_name(broker, "sensor-2", cert2, key2, "localhost") == 0


def test_certificates_left_unprovisioned_are_removed_when_their_token_expires(tmp_path: Path) -> None:
    with running_broker(tmp_path, {"HALYARD_PROVISIONING__OWNERSHIP_TOKEN_SECONDS": "1"}) as broker:
        key_id, secret = aws.keys(broker)
        iot = aws.client(broker, key_id, secret)
        cert, key = _fleet(iot, tmp_path)
        device = Device(broker, "factory-late", cert, key)
        assert device.connect() == 0
        device.subscribe("$aws/certificates/create/json/+")
        device.subscribe("$aws/provisioning-templates/meters/provision/json/+")
        device.paho.publish("$aws/certificates/create/json", b"", qos=1)
        assert device.wait(lambda: len(device.messages) == 1)
        keys = json.loads(device.messages[0].payload)
        wait_until("the unused certificate is removed", lambda: all(
            c["certificateId"] != keys["certificateId"] for c in iot.list_certificates()["certificates"]),
            timeout=20)
        device.paho.publish("$aws/provisioning-templates/meters/provision/json", json.dumps({
            "certificateOwnershipToken": keys["certificateOwnershipToken"],
            "parameters": {"SerialNumber": "late"}}), qos=1)
        assert device.wait(lambda: len(device.messages) == 2)
        refusal = json.loads(device.messages[1].payload)
        assert device.messages[1].topic.endswith("/rejected")
        assert refusal["errorCode"] == "InvalidCertificateOwnershipToken"
        device.close()
