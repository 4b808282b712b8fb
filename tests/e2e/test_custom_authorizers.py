"""Custom authorizers, as AWS IoT runs them: the registry operations, the token signature checked
against the authorizer's public key, the authorizer function called over HTTP with AWS's event
and obeyed (its policies, disconnectAfterInSeconds, refreshAfterInSeconds), for MQTT over TLS
with ALPN `mqtt`, MQTT over WebSocket and HTTPS publish."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from aws import error
from device import ARN, NOT_AUTHORIZED, Device
from harness import Broker, MakeClient

AUTHORIZER = "devices"


def _policy(client_scope: bool = True) -> str:
    scope = "${iot:ClientId}" if client_scope else "*"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": f"{ARN}:topic/devices/{scope}/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ARN}:topicfilter/devices/{scope}/*"},
        ],
    })


class Authorizer:
    """An authorizer function as a small web service: `allow-<principal>` tokens are
    authenticated with a policy over `devices/{clientId}/` (or all of `devices/`), anything
    else is not. Every event is kept."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.revoked: set[str] = set()
        self.client_scoped = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.events.append(event)
                token = event.get("token") or ""
                if event.get("protocolData", {}).get("mqtt", {}).get("password"):
                    token = token or base64.b64decode(event["protocolData"]["mqtt"]["password"]).decode()
                if token == "broken":
                    self.send_response(500)
                    self.end_headers()
                    return
                allowed = token.startswith("allow-") and token not in outer.revoked
                answer: dict[str, Any] = {"isAuthenticated": allowed}
                if allowed:
                    answer.update({"principalId": token.removeprefix("allow-"),
                                   "policyDocuments": [_policy(outer.client_scoped)], **outer.extra})
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/authorize"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class SigningKey:
    """The key a token service signs tokens with (RSA-SHA256, as AWS IoT verifies)."""

    def __init__(self, directory: Path) -> None:
        self.private = directory / "token-signing.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(self.private)], check=True, capture_output=True, timeout=60)
        self.public = subprocess.run(["openssl", "pkey", "-in", str(self.private), "-pubout"],
                                     check=True, capture_output=True, text=True, timeout=60).stdout

    def sign(self, token: str) -> str:
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.private)],
                                   input=token.encode(), check=True, capture_output=True, timeout=60).stdout
        return base64.b64encode(signature).decode()


@pytest.fixture
def function() -> Iterator[Authorizer]:
    authorizer = Authorizer()
    yield authorizer
    authorizer.close()


@pytest.fixture
def signing(tmp_path: Path) -> SigningKey:
    return SigningKey(tmp_path)


@pytest.fixture
def authorizer(iot: Any, function: Authorizer, signing: SigningKey) -> str:
    iot.create_authorizer(authorizerName=AUTHORIZER, authorizerFunctionArn=function.url,
                          tokenKeyName="token", tokenSigningPublicKeys={"main": signing.public},
                          status="ACTIVE")
    return AUTHORIZER


def _username(token: str, signature: str, name: str = AUTHORIZER) -> str:
    query = urllib.parse.urlencode({"x-amz-customauthorizer-name": name,
                                    "x-amz-customauthorizer-signature": signature, "token": token})
    return f"device?{query}"


def test_authorizers_are_managed_as_aws_manages_them(
        iot: Any, function: Authorizer, signing: SigningKey) -> None:
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_authorizer(authorizerName="unsigned", authorizerFunctionArn=function.url)
    with pytest.raises(iot.exceptions.InvalidRequestException) as bad_key:
        iot.create_authorizer(authorizerName="bad-key", authorizerFunctionArn=function.url,
                              tokenKeyName="token", tokenSigningPublicKeys={"k": "not a key"})
    assert "not a PEM-encoded" in error(bad_key)[2]
    created = iot.create_authorizer(authorizerName="a1", authorizerFunctionArn=function.url,
                                    tokenKeyName="token", tokenSigningPublicKeys={"k": signing.public})
    assert created["authorizerArn"] == f"{ARN}:authorizer/a1"
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_authorizer(authorizerName="a1", authorizerFunctionArn=function.url,
                              signingDisabled=True)
    iot.create_authorizer(authorizerName="a2", authorizerFunctionArn=function.url,
                          signingDisabled=True, status="INACTIVE")
    described = iot.describe_authorizer(authorizerName="a1")["authorizerDescription"]
    assert described["status"] == "ACTIVE" and described["tokenKeyName"] == "token"
    assert described["signingDisabled"] is False
    assert [a["authorizerName"] for a in iot.list_authorizers()["authorizers"]] == ["a1", "a2"]
    assert [a["authorizerName"] for a in iot.list_authorizers(status="INACTIVE")["authorizers"]] == ["a2"]

    iot.set_default_authorizer(authorizerName="a1")
    assert iot.describe_default_authorizer()["authorizerDescription"]["authorizerName"] == "a1"
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_authorizer(authorizerName="a1")
    iot.update_authorizer(authorizerName="a2", status="ACTIVE", tokenKeyName="t2")
    assert iot.describe_authorizer(authorizerName="a2")["authorizerDescription"]["tokenKeyName"] == "t2"
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_authorizer(authorizerName="a2")
    iot.update_authorizer(authorizerName="a2", status="INACTIVE")
    iot.delete_authorizer(authorizerName="a2")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_authorizer(authorizerName="a2")

    # TestInvokeAuthorizer runs the signature check and the function as a connection would.
    tested = iot.test_invoke_authorizer(authorizerName="a1", token="allow-tester",
                                        tokenSignature=signing.sign("allow-tester"))
    assert tested["isAuthenticated"] is True and tested["principalId"] == "tester"
    assert json.loads(tested["policyDocuments"][0])["Version"] == "2012-10-17"
    with pytest.raises(iot.exceptions.InvalidResponseException):
        iot.test_invoke_authorizer(authorizerName="a1", token="allow-tester",
                                   tokenSignature=signing.sign("something else"))


def test_mqtt_with_alpn_mqtt_gets_what_the_authorizer_returns(
        broker: Broker, authorizer: str, function: Authorizer, signing: SigningKey,
        mqtt_client: MakeClient) -> None:
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("devices/#", 1)
    token = "allow-sensor7"
    device = Device(broker, "sensor-7", protocol=mqtt.MQTTv5, port=broker.tls_port, alpn=["mqtt"],
                    username=_username(token, signing.sign(token)), password=b"secret")
    connack = device.connect()
    assert connack is not None and not connack.is_failure, connack
    info = device.paho.publish("devices/sensor-7/temp", b"21", qos=1)
    assert device.wait(lambda: info.mid in device.pubacks)
    assert watcher.expect().payload == b"21"
    refused = device.paho.publish("devices/other/temp", b"x", qos=1)
    assert device.wait(lambda: refused.mid in device.pubacks)
    assert device.pubacks[refused.mid].value == 0x87
    device.close()

    event = function.events[-1]
    assert event["token"] == token and event["signatureVerified"] is True
    assert set(event["protocols"]) == {"tls", "mqtt"}
    assert event["protocolData"]["mqtt"]["clientId"] == "sensor-7"
    assert base64.b64decode(event["protocolData"]["mqtt"]["password"]) == b"secret"
    assert event["protocolData"]["mqtt"]["username"].startswith("device?")
    assert event["connectionMetadata"]["id"]

    # A bad signature is refused before the function is asked; so is a token it refuses.
    calls = len(function.events)
    forged = Device(broker, "sensor-7", port=broker.tls_port, alpn=["mqtt"],
                    username=_username(token, signing.sign("allow-other")))
    assert forged.connect().value == NOT_AUTHORIZED
    forged.paho.loop_stop()
    assert len(function.events) == calls
    denied = Device(broker, "sensor-7", port=broker.tls_port, alpn=["mqtt"],
                    username=_username("deny", signing.sign("deny")))
    assert denied.connect().value == NOT_AUTHORIZED
    denied.paho.loop_stop()
    broken = Device(broker, "sensor-7", port=broker.tls_port, alpn=["mqtt"],
                    username=_username("broken", signing.sign("broken")))
    assert broken.connect().value == NOT_AUTHORIZED
    broken.paho.loop_stop()
    unknown = Device(broker, "sensor-7", port=broker.tls_port, alpn=["mqtt"],
                     username=_username(token, signing.sign(token), name="nobody"))
    assert unknown.connect().value == NOT_AUTHORIZED
    unknown.paho.loop_stop()
    metrics = broker.metrics()
    assert metrics.value("halyard_custom_authorizations_total", authorizer=AUTHORIZER, outcome="allowed") == 1
    assert metrics.value("halyard_custom_authorizations_total", authorizer=AUTHORIZER, outcome="bad_signature") == 1
    assert metrics.value("halyard_custom_authorizations_total", authorizer=AUTHORIZER, outcome="denied") == 1
    assert metrics.value("halyard_custom_authorizations_total", authorizer=AUTHORIZER,
                         outcome="function_error") == 1


def test_the_authorizers_disconnect_and_refresh_are_obeyed(
        broker: Broker, iot: Any, authorizer: str, function: Authorizer, signing: SigningKey) -> None:
    token = "allow-brief"
    function.extra = {"disconnectAfterInSeconds": 1}
    brief = Device(broker, "brief", port=broker.tls_port, alpn=["mqtt"],
                   username=_username(token, signing.sign(token)))
    assert not brief.connect().is_failure
    started = time.monotonic()
    assert brief.wait(lambda: brief.disconnected, timeout=10)
    assert 0.5 < time.monotonic() - started < 8
    brief.paho.loop_stop()

    # Refreshed every second: connected while the function says yes, cut once it says no.
    token = "allow-refreshed"
    function.extra = {"refreshAfterInSeconds": 1}
    refreshed = Device(broker, "refreshed", port=broker.tls_port, alpn=["mqtt"],
                       username=_username(token, signing.sign(token)))
    assert not refreshed.connect().is_failure
    calls = len(function.events)
    time.sleep(2.5)
    assert not refreshed.disconnected
    assert len(function.events) > calls
    function.revoked.add(token)
    assert refreshed.wait(lambda: refreshed.disconnected, timeout=10)
    refreshed.paho.loop_stop()


def test_default_authorizer_without_signing_over_websocket_and_https(
        broker: Broker, iot: Any, function: Authorizer, mqtt_client: MakeClient) -> None:
    iot.create_authorizer(authorizerName="open", authorizerFunctionArn=function.url,
                          tokenKeyName="x-token", signingDisabled=True)
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("devices/#", 1)

    # Nothing names an authorizer and none is the default yet.
    nobody = Device(broker, "ws-1", port=broker.tls_port, websocket=True)
    assert nobody.connect().value == NOT_AUTHORIZED
    nobody.paho.loop_stop()

    iot.set_default_authorizer(authorizerName="open")
    ws = Device(broker, "ws-1", port=broker.tls_port, websocket=True)
    ws.paho.ws_set_options(path="/mqtt", headers={"x-token": "allow-ws"})
    connack = ws.connect()
    assert connack is not None and not connack.is_failure, connack
    info = ws.paho.publish("devices/ws-1/state", b"via-ws", qos=1)
    assert ws.wait(lambda: info.mid in ws.pubacks)
    assert watcher.expect().payload == b"via-ws"
    ws.close()
    event = function.events[-1]
    assert event["signatureVerified"] is False and event["token"] == "allow-ws"
    assert set(event["protocols"]) == {"tls", "http", "mqtt"}
    assert event["protocolData"]["http"]["headers"]["x-token"] == "allow-ws"

    # HTTPS publish authenticated by the default authorizer (no client id: the policy's
    # ${iot:ClientId} resolves to nothing, so only unscoped resources apply).
    url = f"https://localhost:{broker.tls_port}/topics/devices%2Fhttp%2Fstate?qos=1"
    ca = str(broker.data_dir / "tls" / "ca.pem")

    def curl(token: str) -> str:
        done = subprocess.run(["curl", "-sS", "--cacert", ca, "-w", "\n%{http_code}", "-H", f"x-token: {token}",
                               "--data-binary", "via-https", url],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.rpartition("\n")[2]

    assert curl("allow-http") == "403"
    assert curl("deny") == "401"
    watcher.expect_none(0.3)
    function.client_scoped = False
    assert curl("allow-http") == "200"
    assert watcher.expect().payload == b"via-https"


def test_the_device_sdk_connects_through_a_custom_authorizer(
        broker: Broker, authorizer: str, function: Authorizer, signing: SigningKey,
        mqtt_client: MakeClient) -> None:
    from awscrt import mqtt as crt_mqtt
    from awsiot import mqtt_connection_builder

    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("devices/#", 1)
    token = "allow-sdk"
    sdk = mqtt_connection_builder.websockets_with_custom_authorizer(
        endpoint="localhost", port=broker.tls_port, ca_filepath=str(broker.data_dir / "tls" / "ca.pem"),
        client_id="sdk-1", clean_session=True, auth_username="sdk", auth_authorizer_name=AUTHORIZER,
        auth_authorizer_signature=signing.sign(token), auth_token_key_name="token",
        auth_token_value=token, auth_password=b"pw")
    sdk.connect().result(10)
    published, _ = sdk.publish("devices/sdk-1/hello", b"from-sdk", crt_mqtt.QoS.AT_LEAST_ONCE)
    published.result(10)
    assert watcher.expect().payload == b"from-sdk"
    sdk.disconnect().result(10)
    assert function.events[-1]["protocolData"]["mqtt"]["clientId"] == "sdk-1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """An identity provider's RS256 key, its JWKS file, and the tokens it signs."""

    def __init__(self, directory: Path, kid: str = "idp-1") -> None:
        self.kid = kid
        self.key = directory / f"{kid}.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(self.key)], check=True, capture_output=True, timeout=60)
        modulus = subprocess.run(["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"],
                                 check=True, capture_output=True, text=True, timeout=60).stdout
        n = bytes.fromhex(modulus.strip().split("=", 1)[1])
        self.jwk = {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": _b64url(n), "e": _b64url((65537).to_bytes(3, "big"))}

    def token(self, **claims: Any) -> str:
        signed = (_b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid}).encode()) + "."
                  + _b64url(json.dumps(claims).encode()))
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signed.encode(), check=True, capture_output=True, timeout=60).stdout
        return f"{signed}.{_b64url(signature)}"


def test_the_built_in_jwt_verifier_turns_claims_into_policy_variables(tmp_path: Path) -> None:
    from aws import client, keys
    from harness import Client, start_broker

    issuer = TokenIssuer(tmp_path)
    stranger = TokenIssuer(tmp_path, kid="idp-1-copy")
    stranger.kid = "idp-1"  # the same key id, another key
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [issuer.jwk]}))
    config = tmp_path / "halyard.toml"
    config.write_text(f'[aws.jwt_verifiers.fleet]\njwks_file = "{jwks}"\nissuer = "https://idp.test"\n'
                      'audience = "halyard"\npolicies = ["fleet"]\n')
    broker = start_broker(tmp_path, ["--config", str(config)])
    try:
        iot = client(broker, *keys(broker))
        sub = "${jwt:sub}"
        iot.create_policy(policyName="fleet", policyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ARN}:client/{sub}"},
                {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/fleet/{sub}/*"},
            ]}))
        with pytest.raises(iot.exceptions.InvalidRequestException):
            iot.create_authorizer(authorizerName="nojwt", authorizerFunctionArn="jwt:missing",
                                  signingDisabled=True)
        iot.create_authorizer(authorizerName="jwt", authorizerFunctionArn="jwt:fleet",
                              tokenKeyName="token", signingDisabled=True)
        watcher = Client(broker, "watcher", mqtt.MQTTv5, True, None)
        watcher.connect()
        watcher.subscribe("fleet/#", 1)
        now = int(time.time())
        good = {"sub": "truck7", "iss": "https://idp.test", "aud": "halyard", "exp": now + 600}

        def device(token: str, client_id: str = "truck7") -> Device:
            return Device(broker, client_id, protocol=mqtt.MQTTv5, port=broker.tls_port, alpn=["mqtt"],
                          username="?" + urllib.parse.urlencode(
                              {"x-amz-customauthorizer-name": "jwt", "token": token}))

        truck = device(issuer.token(**good))
        connack = truck.connect()
        assert connack is not None and not connack.is_failure, connack
        info = truck.paho.publish("fleet/truck7/position", b"52.1,4.3", qos=1)
        assert truck.wait(lambda: info.mid in truck.pubacks)
        assert watcher.expect().payload == b"52.1,4.3"
        other = truck.paho.publish("fleet/truck8/position", b"x", qos=1)
        assert truck.wait(lambda: other.mid in truck.pubacks)
        assert truck.pubacks[other.mid].value == 0x87
        truck.close()

        # The claims decide the client id; expired, foreign, misaddressed and forged tokens fail.
        assert device(issuer.token(**good), client_id="truck8").connect().value == NOT_AUTHORIZED
        for bad in (issuer.token(**{**good, "exp": now - 3600}),
                    issuer.token(**{**good, "aud": "someone-else"}),
                    issuer.token(**{**good, "iss": "https://evil.test"}),
                    stranger.token(**good),
                    "not.a.jwt"):
            refused = device(bad)
            assert refused.connect().value == NOT_AUTHORIZED
            refused.paho.loop_stop()

        # HTTPS publish with the token as a bearer token in the Authorization header.
        iot.create_authorizer(authorizerName="bearer", authorizerFunctionArn="jwt:fleet",
                              tokenKeyName="Authorization", signingDisabled=True)
        url = f"https://localhost:{broker.tls_port}/topics/fleet/truck7/position?qos=1"

        def post(token: str) -> str:
            done = subprocess.run(
                ["curl", "-sS", "--cacert", str(broker.data_dir / "tls" / "ca.pem"), "-w", "\n%{http_code}",
                 "-H", "x-amz-customauthorizer-name: bearer", "-H", f"Authorization: Bearer {token}",
                 "--data-binary", "over-https", url],
                capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout.rpartition("\n")[2]

        assert post(issuer.token(**good)) == "200"
        assert watcher.expect().payload == b"over-https"
        assert post(stranger.token(**good)) == "401"
        watcher.close()
    finally:
        assert broker.stop() == 0


def test_http_answers_are_reused_on_a_connection_when_the_authorizer_allows_caching(
        broker: Broker, iot: Any, function: Authorizer, mqtt_client: MakeClient) -> None:
    import http.client
    import ssl

    iot.create_authorizer(authorizerName="cached", authorizerFunctionArn=function.url,
                          tokenKeyName="x-token", signingDisabled=True, enableCachingForHttp=True)
    function.client_scoped = False
    function.extra = {"refreshAfterInSeconds": 300}
    watcher = mqtt_client("watcher")
    watcher.connect()
    watcher.subscribe("devices/#", 1)
    context = ssl.create_default_context(cafile=str(broker.data_dir / "tls" / "ca.pem"))
    headers = {"x-amz-customauthorizer-name": "cached", "x-token": "allow-http"}

    def publish_on(connection: http.client.HTTPSConnection, n: int) -> None:
        connection.request("POST", "/topics/devices/http/n?qos=1", body=str(n).encode(), headers=headers)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
        assert watcher.expect().payload == str(n).encode()

    first = http.client.HTTPSConnection("localhost", broker.tls_port, context=context, timeout=10)
    for n in range(3):
        publish_on(first, n)
    assert len(function.events) == 1
    second = http.client.HTTPSConnection("localhost", broker.tls_port, context=context, timeout=10)
    publish_on(second, 3)
    assert len(function.events) == 2
    first.close()
    second.close()
