//! The operator's Grafana dashboard queries only series the operator exports, with label
//! values it uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use halyard_operator::metrics::Metrics;
use halyard_operator::plan::{Action, Wait};
use halyard_operator::resources::Names;
use prometheus::{Encoder, TextEncoder};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/halyard-operator.json"
);

fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["query"].as_str().map(str::to_owned))
        .collect();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.extend(target["expr"].as_str().map(str::to_owned));
        }
    }
    out
}

/// Every `halyard_operator_*` name in `query`.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("halyard_operator_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_operator_dashboard_queries_only_what_the_operator_exports() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let names = Names {
        cluster: "fleet".into(),
        namespace: "iot".into(),
    };
    metrics.reconciled(&names, Duration::from_millis(20), true);
    metrics.reconciled(&names, Duration::from_millis(20), false);
    metrics.planned(&names, &Action::Wait(Wait::PodNotReady(0)));
    metrics.planned(&names, &Action::Done);
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 8, "{queries:?}");
    for query in &queries {
        for name in metric_names(query) {
            assert!(
                text.contains(&format!("\n{name}")) || text.contains(&format!("\n{name}{{")),
                "the dashboard queries {name}, which the operator does not export: {query}"
            );
        }
    }
    // The step names the dashboard leaves out are the ones the operator uses.
    for step in ["Done", "Waiting"] {
        assert!(text.contains(&format!("step=\"{step}\"")), "{text}");
    }
}
