//! AWS IoT SQL evaluation: the statements rules typically run, over one message. `evaluate`
//! is the rule's own cost (the payload is parsed once per message for every rule, outside
//! it); `message` adds that parse and writing the output, as a rule with one action pays.

#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use halyard_sql::{Document, Message, MqttProperties, NoEnvironment, SqlVersion, Statement};

const PAYLOAD: &[u8] = br#"{"temp":72,"humidity":40.5,"status":"ok","level":2,"device":{"model":"t-1000","firmware":"2.3.1"}}"#;
const TOPIC: &str = "sensors/dev-42/telemetry";

const STATEMENTS: [(&str, &str); 3] = [
    (
        "select_where_alias",
        "SELECT temp, topic(2) AS device FROM 'sensors/+/telemetry' WHERE temp > 50",
    ),
    (
        "nested_case",
        "SELECT CASE status WHEN 'ok' THEN (CASE level WHEN 1 THEN 'low' WHEN 2 THEN 'mid' ELSE 'high' END) ELSE 'fault' END AS state, device.model AS model FROM 'sensors/#'",
    ),
    (
        "function_mix",
        "SELECT upper(status) AS s, round(temp * 1.8 + 32) AS fahrenheit, concat(topic(2), '-', clientid()) AS id, md5(device.firmware) AS h, substring(device.model, 2) AS m FROM 'sensors/#' WHERE startswith(status, 'o') AND humidity < 80",
    ),
];

fn evaluation(c: &mut Criterion) {
    let properties = MqttProperties::default();
    for (name, sql) in STATEMENTS {
        let statement = Statement::compile(sql, SqlVersion::V2016_03_23).expect("statement");
        let document = Document::parse(PAYLOAD);
        c.bench_function(&format!("sql/evaluate/{name}"), |b| {
            b.iter(|| {
                let message = Message {
                    topic: TOPIC,
                    payload: PAYLOAD,
                    document: &document,
                    client_id: Some("dev-42"),
                    principal: None,
                    timestamp_ms: 1_700_000_000_000,
                    trace_id: None,
                    properties: &properties,
                };
                black_box(statement.evaluate(black_box(&message), &NoEnvironment))
            })
        });
        c.bench_function(&format!("sql/message/{name}"), |b| {
            b.iter(|| {
                let document = Document::parse(black_box(PAYLOAD));
                let message = Message {
                    topic: TOPIC,
                    payload: PAYLOAD,
                    document: &document,
                    client_id: Some("dev-42"),
                    principal: None,
                    timestamp_ms: 1_700_000_000_000,
                    trace_id: None,
                    properties: &properties,
                };
                black_box(
                    statement
                        .evaluate(&message, &NoEnvironment)
                        .map(|o| o.to_payload()),
                )
            })
        });
    }
}

criterion_group!(benches, evaluation);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
