"""Certificates in the registry with boto3: issued by Halyard's CA, from a CSR, registered with
and without a CA, their states, and the principals attached to things."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

import aws
from harness import Broker, halyard_bin, start_broker


def _code(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[str, int]:
    code, status, _ = aws.error(excinfo)
    return code, status


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_the_ca_and_server_certificate_are_written_to_the_data_dir(broker: Broker) -> None:
    tls = broker.data_dir / "tls"
    assert (tls / "ca.key").stat().st_mode & 0o077 == 0
    ca = (tls / "ca.pem").read_text()
    server = (tls / "server.pem").read_text()
    context = ssl.create_default_context(cadata=ca)
    assert context.cert_store_stats()["x509_ca"] == 1
    assert "BEGIN CERTIFICATE" in server


def test_created_keys_and_certificate_follow_aws_state_rules(broker: Broker, iot: Any) -> None:
    created = iot.create_keys_and_certificate(setAsActive=True)
    pem = created["certificatePem"]
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert created["certificateId"] == hashlib.sha256(der).hexdigest()
    assert created["certificateArn"].endswith(f":cert/{created['certificateId']}")
    assert "PRIVATE KEY" in created["keyPair"]["PrivateKey"]
    cert_id = created["certificateId"]
    described = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    assert described["certificatePem"] == pem

    iot.create_thing(thingName="device-1")
    iot.attach_thing_principal(thingName="device-1", principal=created["certificateArn"])
    assert iot.list_thing_principals(thingName="device-1")["principals"] == [created["certificateArn"]]
    assert iot.list_principal_things(principal=created["certificateArn"])["things"] == ["device-1"]

    with pytest.raises(botocore.exceptions.ClientError) as active:
        iot.delete_certificate(certificateId=cert_id)
    assert _code(active) == ("CertificateStateException", 406)
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    with pytest.raises(botocore.exceptions.ClientError) as attached:
        iot.delete_certificate(certificateId=cert_id)
    assert _code(attached) == ("DeleteConflictException", 409)
    with pytest.raises(botocore.exceptions.ClientError) as thing_has_principal:
        iot.delete_thing(thingName="device-1")
    assert _code(thing_has_principal) == ("InvalidRequestException", 400)
    iot.detach_thing_principal(thingName="device-1", principal=created["certificateArn"])
    assert iot.list_thing_principals(thingName="device-1")["principals"] == []

    iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    with pytest.raises(botocore.exceptions.ClientError) as revoked:
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    assert _code(revoked) == ("CertificateStateException", 406)
    iot.delete_certificate(certificateId=cert_id)
    with pytest.raises(botocore.exceptions.ClientError) as gone:
        iot.describe_certificate(certificateId=cert_id)
    assert _code(gone) == ("ResourceNotFoundException", 404)
    with pytest.raises(botocore.exceptions.ClientError) as bad_status:
        iot.update_certificate(certificateId="a" * 64, newStatus="ACTIVE")
    assert _code(bad_status) == ("ResourceNotFoundException", 404)


def test_csr_and_registration_with_and_without_a_ca(tmp_path: Path, iot: Any) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "device.key", "-subj", "/CN=csr-device", "-out", "device.csr", cwd=tmp_path)
    from_csr = iot.create_certificate_from_csr(
        certificateSigningRequest=(tmp_path / "device.csr").read_text(), setAsActive=True
    )
    assert "BEGIN CERTIFICATE" in from_csr["certificatePem"]
    with pytest.raises(botocore.exceptions.ClientError) as bad_csr:
        iot.create_certificate_from_csr(certificateSigningRequest="not a csr")
    assert _code(bad_csr) == ("InvalidRequestException", 400)

    # An outside CA, registered, then a device certificate it signed.
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-subj", "/CN=fleet-ca", "-days", "30", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE", cwd=tmp_path)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "leaf.key", "-subj", "/CN=fleet-device", "-out", "leaf.csr", cwd=tmp_path)
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "30", "-out", "leaf.pem", cwd=tmp_path)
    ca_pem = (tmp_path / "ca.pem").read_text()
    leaf_pem = (tmp_path / "leaf.pem").read_text()

    with pytest.raises(botocore.exceptions.ClientError) as unknown_ca:
        iot.register_certificate(certificatePem=leaf_pem)
    assert _code(unknown_ca) == ("CertificateValidationException", 400)
    ca = iot.register_ca_certificate(caCertificate=ca_pem, setAsActive=True)
    with pytest.raises(botocore.exceptions.ClientError) as twice:
        iot.register_ca_certificate(caCertificate=ca_pem)
    assert _code(twice) == ("ResourceAlreadyExistsException", 409)
    registered = iot.register_certificate(certificatePem=leaf_pem, status="ACTIVE")
    described = iot.describe_certificate(certificateId=registered["certificateId"])["certificateDescription"]
    assert described["caCertificateId"] == ca["certificateId"]
    by_ca = iot.list_certificates_by_ca(caCertificateId=ca["certificateId"])["certificates"]
    assert [c["certificateId"] for c in by_ca] == [registered["certificateId"]]
    with pytest.raises(botocore.exceptions.ClientError) as duplicate:
        iot.register_certificate(certificatePem=leaf_pem)
    assert _code(duplicate) == ("ResourceAlreadyExistsException", 409)

    # Without a CA, any well-formed certificate is accepted.
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "self.key", "-subj", "/CN=self", "-days", "30", "-out", "self.pem", cwd=tmp_path)
    no_ca = iot.register_certificate_without_ca(certificatePem=(tmp_path / "self.pem").read_text())
    mode = iot.describe_certificate(certificateId=no_ca["certificateId"])["certificateDescription"]
    assert mode["certificateMode"] == "SNI_ONLY"
    with pytest.raises(botocore.exceptions.ClientError) as garbage:
        iot.register_certificate_without_ca(certificatePem="garbage")
    assert _code(garbage) == ("CertificateValidationException", 400)

    ids = {c["certificateId"] for c in iot.list_certificates()["certificates"]}
    assert ids == {from_csr["certificateId"], registered["certificateId"], no_ca["certificateId"]}
    with pytest.raises(botocore.exceptions.ClientError) as ca_active:
        iot.delete_ca_certificate(certificateId=ca["certificateId"])
    assert _code(ca_active) == ("CertificateStateException", 406)


def _own_ca(directory: Path) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "own-ca.key", "-out", "own-ca.pem", "-days", "30", "-subj", "/CN=Own CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return directory / "own-ca.pem", directory / "own-ca.key"


def test_a_configured_ca_issues_the_certificates(tmp_path: Path) -> None:
    ca_pem, ca_key = _own_ca(tmp_path)
    config = tmp_path / "halyard.toml"
    config.write_text(f'[aws]\nca_cert = "{ca_pem}"\nca_key = "{ca_key}"\n')
    broker = start_broker(tmp_path, ["--config", str(config)])
    try:
        key, secret = aws.keys(broker)
        iot = aws.client(broker, key, secret)
        created = iot.create_keys_and_certificate(setAsActive=True)
        (tmp_path / "device.pem").write_text(created["certificatePem"])
        _openssl("verify", "-CAfile", str(ca_pem), "device.pem", cwd=tmp_path)
        assert (broker.data_dir / "tls" / "ca.pem").read_text() == ca_pem.read_text()
        (tmp_path / "server.pem").write_bytes((broker.data_dir / "tls" / "server.pem").read_bytes())
        _openssl("verify", "-CAfile", str(ca_pem), "server.pem", cwd=tmp_path)
    finally:
        assert broker.stop() == 0


def test_a_configured_ca_with_the_wrong_key_stops_the_start(tmp_path: Path) -> None:
    ca_pem, _ = _own_ca(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = _own_ca(other)
    config = tmp_path / "halyard.toml"
    config.write_text(f'[aws]\nca_cert = "{ca_pem}"\nca_key = "{wrong_key}"\n')
    done = subprocess.run(
        [halyard_bin(), "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"),
         "--mqtts-listen", "127.0.0.1:0",
         "--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0
    assert "aws.ca_cert" in done.stderr + done.stdout
    assert "does not belong" in done.stderr + done.stdout
