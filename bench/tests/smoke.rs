//! A short run of the load generator against an in-process broker, so that
//! the bench keeps working; it asserts delivery, never timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use halyard_bench::{conn, pubsub, shadow};
use halyard_node::config::Config;
use halyard_node::mqtt::{ProtocolVersion, QoS};
use halyard_node::server::Server;

async fn start() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        mqtt_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        mqtts_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        ws_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    (Server::start(config).await.unwrap(), dir)
}

fn options(server: &Server, qos: QoS, version: ProtocolVersion) -> pubsub::PubSubOptions {
    pubsub::PubSubOptions {
        publisher_brokers: vec![server.mqtt_addr().expect("the MQTT listener is on")],
        subscriber_brokers: vec![server.mqtt_addr().expect("the MQTT listener is on")],
        persistent_subscribers: false,
        sources: halyard_bench::loopback_sources(2),
        publishers: 3,
        subscribers: 3,
        topics: 3,
        qos,
        payload: 64,
        rate: Some(600.0),
        duration: Duration::from_millis(500),
        inflight: 16,
        version,
        topic_prefix: format!("smoke{}", qos.as_u8()),
        subscribe_prefix: None,
        drain_timeout: Duration::from_secs(10),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_storm_is_acknowledged_while_traffic_flows() {
    let (server, _dir) = start().await;
    let mut traffic = options(&server, QoS::AtLeastOnce, ProtocolVersion::V311);
    traffic.duration = Duration::from_secs(1);
    let report = halyard_bench::storm::run(halyard_bench::storm::StormOptions {
        traffic,
        subscriptions: 600,
        subscribers: 3,
        per_packet: 10,
    })
    .await
    .unwrap();
    assert_eq!(report.subscribed, 600, "{report:?}");
    for phase in [&report.quiet, &report.storm] {
        assert!(phase.expected > 0, "{phase:?}");
        assert_eq!((phase.lost, phase.duplicates), (0, 0), "{phase:?}");
    }
    assert!(report.p99_ratio > 0.0);
    assert!(
        halyard_bench::storm::run(halyard_bench::storm::StormOptions {
            traffic: options(&server, QoS::AtLeastOnce, ProtocolVersion::V311),
            subscriptions: 10,
            subscribers: 0,
            per_packet: 10,
        })
        .await
        .is_err(),
        "no storm clients is refused up front"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_everything_at_qos_1_and_2() {
    let (server, _dir) = start().await;
    for (qos, version) in [
        (QoS::AtLeastOnce, ProtocolVersion::V311),
        (QoS::ExactlyOnce, ProtocolVersion::V5),
    ] {
        let report = pubsub::run(options(&server, qos, version)).await.unwrap();
        assert!(report.expected > 0, "{report:?}");
        assert_eq!(report.received, report.expected, "{report:?}");
        assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");
        assert_eq!(report.acknowledged, report.published, "{report:?}");
        assert_eq!(report.latency.samples, report.received);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_opens_and_measures_connections() {
    let (server, _dir) = start().await;
    let report = conn::run(conn::ConnOptions {
        broker: server.mqtt_addr().expect("the MQTT listener is on"),
        sources: halyard_bench::loopback_sources(2),
        connections: 50,
        rate: None,
        concurrency: 10,
        hold: Duration::from_millis(10),
        version: ProtocolVersion::V311,
        broker_pid: Some(std::process::id()),
        client_prefix: "smoke".to_owned(),
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!((report.connected, report.failed), (50, 0), "{report:?}");
    assert!(report.broker_rss_connected_bytes.is_some());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_json() {
    let (server, _dir) = start().await;
    let port = server
        .mqtt_addr()
        .expect("the MQTT listener is on")
        .port()
        .to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_halyard-bench"))
            .args([
                "pubsub",
                "--port",
                &port,
                "--publishers",
                "2",
                "--subscribers",
                "2",
            ])
            .args([
                "--topics",
                "1",
                "--qos",
                "1",
                "--rate",
                "200",
                "--duration",
                "0.5",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["lost"], 0);
    assert!(report["received"].as_u64().unwrap() > 0);
    // Two publishers on one topic with two subscribers: each message arrives twice.
    assert_eq!(
        report["expected"].as_u64(),
        report["acknowledged"].as_u64().map(|a| a * 2)
    );
    server.shutdown().await;
}

#[test]
fn bad_arguments_are_refused_with_a_clear_error() {
    for (args, expected) in [
        (
            vec!["pubsub", "--rate", "fast"],
            "--rate must be a number or `max`",
        ),
        (
            vec!["pubsub", "--publishers", "0", "--port", "1"],
            "--publishers must be at least 1",
        ),
        (
            vec!["conn", "--connections", "0", "--port", "1"],
            "--connections must be at least 1",
        ),
        (
            vec!["shadow", "--devices", "0", "--port", "1"],
            "--devices must be at least 1",
        ),
        (
            vec!["shadow", "--via", "http", "--http-port", "1"],
            "--via http needs --credentials",
        ),
        (
            vec!["shadow", "--credentials", "/nonexistent/credentials"],
            "cannot read /nonexistent/credentials",
        ),
        (vec!["shadow", "--rate", "0"], "--rate must be positive"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_halyard-bench"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_updates_are_accepted_over_mqtt_and_http() {
    let (server, dir) = start().await;
    let credentials = shadow::read_credentials(&dir.path().join("credentials")).unwrap();
    for (protocol, target) in [
        (
            shadow::ShadowProtocol::Mqtt,
            server.mqtt_addr().expect("the MQTT listener is on"),
        ),
        (
            shadow::ShadowProtocol::Http,
            server.http_addr().expect("the HTTP listener is on"),
        ),
    ] {
        let report = shadow::run(shadow::ShadowOptions {
            protocol,
            target,
            devices: 3,
            inflight: 2,
            duration: Duration::from_millis(500),
            thing_prefix: "smoke-".into(),
            credentials: Some(credentials.clone()),
            region: "us-east-1".into(),
            rate: None,
        })
        .await
        .unwrap();
        assert!(report.accepted > 0, "{report:?}");
        assert_eq!(report.rejected, 0, "{report:?}");
        assert!(report.latency.samples > 0, "{report:?}");
    }
}
