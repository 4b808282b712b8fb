"""The timestream action written to a real PostgreSQL (Debian's server, started here): one row a
message, dimensions and measures as columns made as they first appear, a value that does not fit
its column failing into the error action alone."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aws
from harness import Broker, Client, free_port, halyard_bin, running_broker, wait_for_rules, wait_until

ROLE = "arn:aws:iam::123456789012:role/rules"


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"PostgreSQL's {name} is not installed (Debian package postgresql)"
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL's server refuses to run as root: as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"postgres://halyard@127.0.0.1:{port}/postgres"

    def query(self, sql: str) -> list[list[str]]:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "halyard", "-d", "postgres", "-At", "-F", "\t", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="halyard-pg-"))
    root.chmod(0o755)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres([_postgres_bin("initdb"), "-D", str(data), "-U", "halyard", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        _as_postgres(
            [
                _postgres_bin("postgres"),
                "-D", str(data),
                "-p", str(port),
                "-k", str(root),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = Postgres(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            db.query("SELECT 1")
            break
        except subprocess.CalledProcessError:
            assert server.poll() is None, "PostgreSQL exited"
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
    yield db
    server.terminate()
    server.wait(timeout=20)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def broker_with_postgres(tmp_path: Path, postgres: Postgres) -> Iterator[Broker]:
    with running_broker(tmp_path, {"HALYARD_RULES__POSTGRES_URL": postgres.url}) as running:
        yield running


def test_messages_become_rows_with_dimensions_and_measures_as_columns(broker_with_postgres: Broker, postgres: Postgres) -> None:
    broker = broker_with_postgres
    key, secret = aws.keys(broker)
    iot = aws.client(broker, key, secret)
    iot.create_topic_rule(
        ruleName="climate_to_pg",
        topicRulePayload={
            "sql": "SELECT temp, humidity, status, tags FROM 'farm/+/climate'",
            "awsIotSqlVersion": "2016-03-23",
            "actions": [
                {
                    "timestream": {
                        "roleArn": ROLE,
                        "databaseName": "farm",
                        "tableName": "climate",
                        "dimensions": [{"name": "device", "value": "${topic(2)}"}, {"name": "site", "value": "north"}],
                        "timestamp": {"value": "${ts}", "unit": "MILLISECONDS"},
                    }
                }
            ],
            "errorAction": {"republish": {"topic": "farm/errors", "roleArn": ROLE}},
        },
    )
    # AWS's shape is stored and echoed.
    echoed = iot.get_topic_rule(ruleName="climate_to_pg")["rule"]["actions"][0]["timestream"]
    assert echoed["timestamp"] == {"value": "${ts}", "unit": "MILLISECONDS"}
    wait_for_rules(broker, 1)
    errors = Client(broker, "pg-errors", 5, True, None)
    errors.connect()
    errors.subscribe("farm/errors", 1)
    device = Client(broker, "pg-device", 5, True, None)
    device.connect()
    device.publish(
        "farm/g7/climate",
        json.dumps({"temp": 21.5, "humidity": 40, "status": "ok", "tags": {"zone": 3}, "ts": 1700000000123}).encode(),
        qos=1,
    )
    rows = wait_until("the row", lambda: postgres.query("SELECT 1 FROM pg_tables WHERE schemaname = 'farm'") and postgres.query(
        "SELECT device, site, temp, humidity, status, tags::text, (extract(epoch FROM time) * 1000)::bigint FROM farm.climate"
    ))
    assert rows == [["g7", "north", "21.5", "40", "ok", '{"zone": 3}', "1700000000123"]]
    types = dict(
        (name, kind)
        for name, kind in postgres.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'farm' AND table_name = 'climate'"
        )
    )
    assert types == {
        "time": "timestamp with time zone",
        "device": "text",
        "site": "text",
        "temp": "double precision",
        "humidity": "bigint",
        "status": "text",
        "tags": "jsonb",
    }

    # A value that does not fit its column fails that message alone, into the error action; the
    # messages around it are written.
    device.publish("farm/g7/climate", json.dumps({"temp": 20, "humidity": 41, "ts": 1700000001000}).encode(), qos=1)
    device.publish("farm/g8/climate", json.dumps({"temp": 19, "humidity": "damp", "ts": 1700000002000}).encode(), qos=1)
    device.publish("farm/g9/climate", json.dumps({"temp": 18, "humidity": 43, "ts": 1700000003000}).encode(), qos=1)
    report = json.loads(errors.expect().payload)
    assert report["ruleName"] == "climate_to_pg"
    assert [f["failedAction"] for f in report["failures"]] == ["TimestreamAction"]
    assert report["failures"][0]["failedResource"] == "farm.climate"
    assert "PostgreSQL refused the row" in report["failures"][0]["errorMessage"]
    assert "bigint" in report["failures"][0]["errorMessage"]
    devices = wait_until("the good rows", lambda: [r[0] for r in postgres.query("SELECT device FROM farm.climate ORDER BY time")] == ["g7", "g7", "g9"])
    assert devices

    # A measure seen for the first time gets its column; rows before it have none.
    iot.replace_topic_rule(
        ruleName="climate_to_pg",
        topicRulePayload={
            "sql": "SELECT * FROM 'farm/+/climate'",
            "actions": [
                {"timestream": {"roleArn": ROLE, "databaseName": "farm", "tableName": "climate", "dimensions": [{"name": "device", "value": "${topic(2)}"}]}}
            ],
        },
    )
    time.sleep(0.5)
    before = time.time()
    device.publish("farm/g10/climate", json.dumps({"temp": 17, "pressure": 1013.25}).encode(), qos=1)
    pressure = wait_until("the new column", lambda: postgres.query("SELECT pressure, extract(epoch FROM time) FROM farm.climate WHERE device = 'g10'"))
    assert pressure[0][0] == "1013.25"
    assert before - 5 < float(pressure[0][1]) < time.time() + 5, "without a timestamp, the time it was processed"

    # Many messages, written in batches, none lost.
    for n in range(300):
        device.publish_nowait("farm/bulk/climate", json.dumps({"temp": n}).encode(), qos=1)
    wait_until("every bulk row", lambda: postgres.query("SELECT count(*) FROM farm.climate WHERE device = 'bulk'") == [["300"]], timeout=20)
    errors.expect_none(0.5)


def test_the_action_without_postgres_configured_fails_into_the_error_action(broker: Broker) -> None:
    key, secret = aws.keys(broker)
    iot = aws.client(broker, key, secret)
    iot.create_topic_rule(
        ruleName="nowhere",
        topicRulePayload={
            "sql": "SELECT * FROM 'farm/+/climate'",
            "actions": [{"timestream": {"roleArn": ROLE, "databaseName": "farm", "tableName": "t", "dimensions": [{"name": "d", "value": "x"}]}}],
            "errorAction": {"republish": {"topic": "farm/errors", "roleArn": ROLE}},
        },
    )
    wait_for_rules(broker, 1)
    errors = Client(broker, "nowhere-errors", 5, True, None)
    errors.connect()
    errors.subscribe("farm/errors", 1)
    device = Client(broker, "nowhere-device", 5, True, None)
    device.connect()
    device.publish("farm/a/climate", b'{"temp": 1}', qos=1)
    report = json.loads(errors.expect().payload)
    assert report["failures"][0]["failedAction"] == "TimestreamAction"
    assert "rules.postgres_url" in report["failures"][0]["errorMessage"]

    # A malformed action is refused when the rule is made.
    with pytest.raises(iot.exceptions.InvalidRequestException) as refused:
        iot.create_topic_rule(
            ruleName="bad_ts",
            topicRulePayload={
                "sql": "SELECT * FROM 'a'",
                "actions": [
                    {
                        "timestream": {
                            "roleArn": ROLE,
                            "databaseName": "farm",
                            "tableName": "t",
                            "dimensions": [{"name": "d", "value": "x"}],
                            "timestamp": {"value": "${ts}", "unit": "HOURS"},
                        }
                    }
                ],
            },
        )
    assert "timestamp.unit HOURS is not one of" in str(refused.value)


def test_a_postgres_url_that_does_not_parse_is_a_config_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALYARD_")}
    env["HALYARD_RULES__POSTGRES_URL"] = "postgres://halyard@127.0.0.1:notaport/db"
    done = subprocess.run(
        [halyard_bin(), "serve", "--data-dir", str(tmp_path / "data"), "--mqtt-listen", "127.0.0.1:0", "--admin-listen", "off",
         "--http-listen", "off", "--mqtts-listen", "off", "--tls-listen", "off", "--ws-listen", "off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "rules.postgres_url" in done.stderr + done.stdout
