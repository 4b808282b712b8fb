"""Real AWS clients pointed at a running Halyard: boto3 and the AWS CLI, signing with the
cluster's access key from `{data-dir}/credentials`."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from harness import Broker


def keys(broker: Broker) -> tuple[str, str]:
    profile = configparser.ConfigParser()
    profile.read(broker.data_dir / "credentials")
    section = profile["halyard"]
    return section["aws_access_key_id"], section["aws_secret_access_key"]


def client(broker: Broker, key: str, secret: str, region: str = "us-east-1", service: str = "iot") -> Any:
    """A boto3 client of `service` (`iot`, `iot-data`) for the broker's HTTP API."""
    return boto3.client(
        service,
        endpoint_url=broker.http_url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def error(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[str, int, str]:
    """The AWS error code, HTTP status and message of a refused call."""
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def cli(broker: Broker, *args: str) -> Any:
    """Runs `aws iot <args>` with the documented profile; the parsed JSON output."""
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or "aws"
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=str(broker.data_dir / "credentials"))
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    command = [aws, "--profile", "halyard", "--region", "us-east-1",
               "--endpoint-url", broker.http_url, "iot", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None
