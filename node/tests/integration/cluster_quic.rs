//! Three nodes on loopback, replicating over QUIC with mutual TLS: the cluster forms, a
//! follower's writes reach the leader, a dead leader is replaced without losing acknowledged
//! writes, and the dead node catches up when it returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use crate::common::free_udp_port;
use std::path::Path;
use std::time::Duration;

use halyard_node::config::Config;
use halyard_node::server::Server;
use halyard_raft::{Consistency, RangeRequest, StoreError};

/// Starts node `id` again on its peer port. The stopped node's UDP socket is released once its
/// QUIC endpoint has drained, which on a loaded machine can take a moment after shutdown.
async fn restart(dir: &Path, id: u64, peers: &[(u64, u16)]) -> Server {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Server::start(node_config(dir, id, peers)).await {
            Ok(server) => return server,
            // The socket, or the store's lock, held until the stopped node's last peer
            // stream has ended.
            Err(e)
                if std::time::Instant::now() < deadline
                    && (e.to_string().contains("in use") || e.to_string().contains("lock")) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node {id} did not start again: {e}"),
        }
    }
}

fn node_config(dir: &Path, id: u64, peers: &[(u64, u16)]) -> Config {
    let certs = dir.join("certs");
    let mut config = crate::common::local_config(&dir.join(format!("node-{id}")));
    let port = peers.iter().find(|(p, _)| *p == id).unwrap().1;
    config.cluster.node_id = id;
    config.cluster.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    config.cluster.initial_members = Some(
        peers
            .iter()
            .map(|(p, port)| format!("{p}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    config.cluster.ca_cert = Some(certs.join("ca.pem"));
    config.cluster.cert = Some(certs.join(format!("node-{id}.pem")));
    config.cluster.key = Some(certs.join(format!("node-{id}.key")));
    config.cluster.heartbeat_ms = 50;
    config.cluster.election_timeout_ms = 300;
    config.validate().unwrap();
    config
}

async fn leader(servers: &[Option<Server>]) -> usize {
    for _ in 0..200 {
        for (i, s) in servers.iter().enumerate() {
            if let Some(s) = s
                && s.store().raft().is_leader()
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_survive_the_leader_dying() {
    let dir = tempfile::tempdir().unwrap();
    // Node 3's certificate is issued later, from the same CA key, as for a node added later.
    halyard_node::cluster::certs::generate(&dir.path().join("certs"), &[1, 2]).unwrap();
    halyard_node::cluster::certs::generate(&dir.path().join("certs"), &[3]).unwrap();
    let peers: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_udp_port())).collect();
    let starts = (1..=3).map(|id| Server::start(node_config(dir.path(), id, &peers)));
    let mut servers: Vec<Option<Server>> = futures_join(starts)
        .await
        .into_iter()
        .map(|s| Some(s.unwrap()))
        .collect();

    let leader_index = leader(&servers).await;
    let follower = (leader_index + 1) % 3;
    let store = servers[follower].as_ref().unwrap().store().clone();
    for i in 0..20 {
        store.put(format!("k{i:02}"), "v").await.unwrap();
    }

    // The leader dies; the other two elect a new one and keep every acknowledged write.
    let dead = servers[leader_index].take().unwrap();
    dead.shutdown().await;
    for i in 20..30 {
        let mut attempt = 0;
        loop {
            match store.put(format!("k{i:02}"), "v").await {
                Ok(_) => break,
                Err(StoreError::Timeout(_) | StoreError::Unavailable(_)) if attempt < 5 => {
                    attempt += 1
                }
                Err(e) => panic!("write after failover failed: {e}"),
            }
        }
    }
    let new_leader = leader(&servers).await;
    assert_ne!(new_leader, leader_index);
    for s in servers.iter().flatten() {
        let range = s
            .store()
            .range(RangeRequest::prefix("k"), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(range.kvs.len(), 30);
    }

    // It comes back with its data and catches up.
    let id = leader_index as u64 + 1;
    servers[leader_index] = Some(restart(dir.path(), id, &peers).await);
    let back = servers[leader_index].as_ref().unwrap().store().clone();
    let range = back
        .range(RangeRequest::prefix("k"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(range.kvs.len(), 30);
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}

/// Starts every future at once: a node waits for a quorum before `start` returns.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Starts nodes 1 to 3 of a new cluster under `dir`, each with its config changed by `tweak`;
/// the servers, and each node's peer port.
async fn three_nodes(dir: &Path, tweak: impl Fn(&mut Config)) -> (Vec<Server>, Vec<(u64, u16)>) {
    halyard_node::cluster::certs::generate(&dir.join("certs"), &[1, 2, 3]).unwrap();
    let peers: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_udp_port())).collect();
    let starts = (1..=3).map(|id| {
        let mut config = node_config(dir, id, &peers);
        tweak(&mut config);
        Server::start(config)
    });
    let servers = futures_join(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    (servers, peers)
}

/// The `version` (and, for a get, the reported state) of a shadow answer on `topic`.
fn shadow_answer(packet: &rumqttc::Packet, topic: &str) -> Option<serde_json::Value> {
    match packet {
        rumqttc::Packet::Publish(p) if p.topic == topic => serde_json::from_slice(&p.payload).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_for_every_shadow_and_no_update_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    let mut writers = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mut options = rumqttc::MqttOptions::new(
            format!("writer-{i}"),
            "127.0.0.1",
            server.mqtt_addr().expect("the MQTT listener is on").port(),
        );
        options.set_keep_alive(Duration::from_secs(30));
        writers.push(crate::common::v4_connect(options).await.0);
    }
    const SHADOW: &str = "$aws/things/pump/shadow";
    let rounds = 10;
    // One writer per node, all on the same shadow at once, none naming a version.
    for round in 0..rounds {
        for (i, writer) in writers.iter().enumerate() {
            let update = format!(r#"{{"state":{{"reported":{{"node{i}":{round}}}}}}}"#);
            writer
                .client
                .publish(
                    format!("{SHADOW}/update"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    update,
                )
                .await
                .unwrap();
        }
    }
    let mut versions = Vec::new();
    for writer in &mut writers {
        for _ in 0..rounds {
            let accepted = writer
                .wait_for("update/accepted", |p| {
                    shadow_answer(p, &format!("{SHADOW}/update/accepted"))
                })
                .await;
            versions.push(accepted["version"].as_u64().unwrap());
        }
    }
    versions.sort_unstable();
    let all: Vec<u64> = (1..=3 * rounds).collect();
    assert_eq!(versions, all, "every update applied once, one version each");
    for writer in &mut writers {
        writer
            .client
            .publish(
                format!("{SHADOW}/get"),
                rumqttc::QoS::AtLeastOnce,
                false,
                "",
            )
            .await
            .unwrap();
        let got = writer
            .wait_for("get/accepted", |p| {
                shadow_answer(p, &format!("{SHADOW}/get/accepted"))
            })
            .await;
        assert_eq!(got["version"], 3 * rounds);
        assert_eq!(
            got["state"]["reported"],
            serde_json::json!({"node0": 9, "node1": 9, "node2": 9})
        );
    }
    drop(writers);
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_ready_and_serves_the_retained_messages_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    // One retained message published on each node; a QoS 1 PUBACK means it is in the store.
    for (i, server) in servers.iter().enumerate() {
        let options = rumqttc::MqttOptions::new(
            format!("retainer-{i}"),
            "127.0.0.1",
            server.mqtt_addr().expect("the MQTT listener is on").port(),
        );
        let (mut client, _) = crate::common::v4_connect(options).await;
        client
            .publish(
                &format!("plant/{i}/state"),
                rumqttc::QoS::AtLeastOnce,
                true,
                b"on",
            )
            .await;
        client.disconnect().await;
    }
    // What GetRetainedMessage and ListRetainedMessages read, on every node.
    for server in &servers {
        crate::common::wait_until("readiness", || server.unready_reasons().is_empty()).await;
        let durable = server.broker().durable().expect("durable").clone();
        let (page, more) = durable.retained_page(None, 10).await.unwrap();
        let topics: Vec<String> = page.iter().map(|(m, _)| m.topic.to_string()).collect();
        assert_eq!(topics, ["plant/0/state", "plant/1/state", "plant/2/state"]);
        assert!(!more);
        for i in 0..3 {
            let (message, modified_ms) = durable
                .retained(&format!("plant/{i}/state"))
                .await
                .unwrap()
                .expect("retained");
            assert_eq!(&message.payload[..], b"on");
            assert!(modified_ms > 0);
        }
    }
    // And what a subscriber on any node is sent: the retained messages of every node.
    for (i, server) in servers.iter().enumerate() {
        crate::common::wait_until("every retained message is indexed", || {
            metric(server, "halyard_retained_messages") == 3.0
        })
        .await;
        let mut subscriber = client(server, &format!("reader-{i}")).await;
        subscriber
            .subscribe("plant/+/state", rumqttc::QoS::AtLeastOnce)
            .await;
        let mut topics: Vec<String> = subscriber
            .recv_n(3)
            .await
            .iter()
            .map(|p| p.topic.to_string())
            .collect();
        topics.sort();
        assert_eq!(topics, ["plant/0/state", "plant/1/state", "plant/2/state"]);
    }
    for server in servers {
        server.shutdown().await;
    }
}

/// The value of the sample `series` (with its labels as rendered) of `server`; 0 when absent.
fn metric(server: &Server, series: &str) -> f64 {
    let text = halyard_node::metrics::render(server.registry());
    crate::common::parse_metric(&text, series).unwrap_or(0.0)
}

/// Waits until every node has a control stream to each of the others.
async fn control_streams_up(servers: &[Server]) {
    crate::common::wait_until("every node has a control stream to each peer", || {
        servers.iter().all(|s| {
            (1..=3u64).filter(|&p| p != s.store().id()).all(|p| {
                metric(
                    s,
                    &format!("halyard_cluster_route_resyncs_total{{peer=\"{p}\"}}"),
                ) >= 1.0
            })
        })
    })
    .await;
}

async fn client(server: &Server, id: &str) -> crate::common::V4 {
    let options = rumqttc::MqttOptions::new(
        id,
        "127.0.0.1",
        server.mqtt_addr().expect("the MQTT listener is on").port(),
    );
    crate::common::v4_connect(options).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_subscribers_on_the_others_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    let mut exact = client(&servers[1], "exact-on-2").await;
    exact
        .subscribe("fleet/7/temp", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut wildcard = client(&servers[2], "wildcard-on-3").await;
    wildcard
        .subscribe("fleet/#", rumqttc::QoS::AtLeastOnce)
        .await;
    // Node 1 learns both routes from its peers.
    crate::common::wait_until("node 1 knows the routes of nodes 2 and 3", || {
        metric(&servers[0], "halyard_cluster_remote_routes") >= 2.0
    })
    .await;

    let mut publisher = client(&servers[0], "publisher-on-1").await;
    for n in 0..50u32 {
        publisher
            .publish(
                "fleet/7/temp",
                rumqttc::QoS::AtLeastOnce,
                false,
                &n.to_be_bytes(),
            )
            .await;
    }
    publisher
        .publish("fleet/8/temp", rumqttc::QoS::AtMostOnce, false, b"other")
        .await;
    for subscriber in [&mut exact, &mut wildcard] {
        let got = subscriber.recv_n(50).await;
        let order: Vec<u32> = got
            .iter()
            .map(|p| u32::from_be_bytes(p.payload[..4].try_into().unwrap()))
            .collect();
        assert_eq!(order, (0..50).collect::<Vec<_>>(), "in publish order");
        assert!(got.iter().all(|p| &*p.topic == "fleet/7/temp"));
    }
    // Only the wildcard subscriber's node wanted the other topic.
    assert_eq!(&wildcard.recv().await.payload[..], b"other");
    exact.expect_no_publish(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&servers[0], "halyard_cluster_forwarded_total{peer=\"2\"}"),
        50.0
    );
    assert_eq!(
        metric(&servers[0], "halyard_cluster_forwarded_total{peer=\"3\"}"),
        51.0
    );

    // A subscriber that leaves takes its node's route with it.
    exact.disconnect().await;
    crate::common::wait_until("node 1 forgets node 2's route", || {
        metric(&servers[0], "halyard_cluster_remote_routes") == 1.0
    })
    .await;
    publisher
        .publish("fleet/7/temp", rumqttc::QoS::AtLeastOnce, false, b"late")
        .await;
    assert_eq!(&wildcard.recv().await.payload[..], b"late");
    assert_eq!(
        metric(&servers[0], "halyard_cluster_forwarded_total{peer=\"2\"}"),
        50.0
    );

    // A message retained on node 1, where nobody subscribes to it, is there for a subscriber
    // who comes to node 2 later.
    publisher
        .publish("fleet/config", rumqttc::QoS::AtLeastOnce, true, b"v2")
        .await;
    crate::common::wait_until("node 2 holds the retained message", || {
        metric(&servers[1], "halyard_retained_messages") >= 1.0
    })
    .await;
    let mut late = client(&servers[1], "late-on-2").await;
    late.subscribe("fleet/config", rumqttc::QoS::AtLeastOnce)
        .await;
    let retained = late.recv().await;
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"v2");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_is_restored_by_its_own_node_only_and_gets_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, peers) = three_nodes(dir.path(), |_| {}).await;
    let (mut keeper, _) = crate::common::v4_connect(persistent_v4(&servers[1], "keeper")).await;
    keeper
        .subscribe("alerts/#", rumqttc::QoS::AtLeastOnce)
        .await;
    keeper.disconnect().await;
    crate::common::wait_until("node 1 knows the offline session's route", || {
        metric(&servers[0], "halyard_cluster_remote_routes") == 1.0
    })
    .await;
    // Queued on node 2 for the offline session, from node 1.
    let mut publisher = client(&servers[0], "alarm-on-1").await;
    for n in 0..5u8 {
        publisher
            .publish("alerts/fire", rumqttc::QoS::AtLeastOnce, false, &[n])
            .await;
    }
    // Each PUBACK came once node 2 had queued and stored the message.
    assert_eq!(
        metric(&servers[1], "halyard_cluster_received_total{peer=\"1\"}"),
        5.0
    );
    publisher.disconnect().await;

    // Node 1 restarts: the session is node 2's, so node 1 does not take it back (before,
    // every node restored every session and queued each message once more).
    let mut servers = servers;
    let first = servers.remove(0);
    first.shutdown().await;
    let first = restart(dir.path(), 1, &peers).await;
    crate::common::wait_until("node 1 is ready again", || {
        first.unready_reasons().is_empty()
    })
    .await;
    assert_eq!(metric(&first, "halyard_cluster_local_routes"), 0.0);
    assert_eq!(metric(&servers[0], "halyard_cluster_local_routes"), 1.0);
    servers.insert(0, first);
    // On node 2 the session gets what was queued for it while it was away, once.
    let (mut keeper, ack) = crate::common::v4_connect(persistent_v4(&servers[1], "keeper")).await;
    assert!(ack.session_present);
    let got: Vec<u8> = keeper
        .recv_n(5)
        .await
        .iter()
        .map(|p| p.payload[0])
        .collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    keeper.expect_no_publish(Duration::from_millis(300)).await;
    for server in servers {
        server.shutdown().await;
    }
}

fn v5_options(server: &Server, id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(
        id,
        "127.0.0.1",
        server.mqtt_addr().expect("the MQTT listener is on").port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    options
}

fn persistent_v4(server: &Server, id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(
        id,
        "127.0.0.1",
        server.mqtt_addr().expect("the MQTT listener is on").port(),
    );
    options.set_clean_session(false);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_has_one_connection_in_the_cluster_and_its_session_follows_it_to_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    control_streams_up(&servers).await;

    // A clean v5 client on node 1, then the same client id on node 2: node 1 closes the first
    // with "session taken over".
    let (mut first, _) = crate::common::v5_connect(v5_options(&servers[0], "twin")).await;
    let (_second, ack) = crate::common::v5_connect(v5_options(&servers[1], "twin")).await;
    assert!(!ack.session_present);
    let ended = first.closed().await;
    assert_eq!(
        crate::common::server_disconnect(&ended),
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver)
    );

    // A persistent session made on node 2 and left offline collects messages published on
    // node 1; its client comes back on node 3, which takes it over: session present, the
    // queued messages, and the later ones, with node 2 holding nothing any more.
    let (mut keeper, _) = crate::common::v4_connect(persistent_v4(&servers[1], "keeper")).await;
    keeper
        .subscribe("alerts/#", rumqttc::QoS::AtLeastOnce)
        .await;
    keeper.disconnect().await;
    crate::common::wait_until("node 1 knows the offline session's route", || {
        metric(&servers[0], "halyard_cluster_remote_routes") >= 1.0
    })
    .await;
    let mut publisher = client(&servers[0], "alarm-on-1").await;
    for n in 0..5u8 {
        publisher
            .publish("alerts/fire", rumqttc::QoS::AtLeastOnce, false, &[n])
            .await;
    }
    let (mut keeper, ack) = crate::common::v4_connect(persistent_v4(&servers[2], "keeper")).await;
    assert!(ack.session_present, "the session moved with its client");
    let got: Vec<u8> = keeper
        .recv_n(5)
        .await
        .iter()
        .map(|p| p.payload[0])
        .collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(
        metric(
            &servers[2],
            "halyard_cluster_session_claims_total{outcome=\"peer\"}"
        ),
        1.0,
        "taken from node 2, which answered"
    );
    crate::common::wait_until("node 2 let the session and its route go", || {
        metric(&servers[1], "halyard_cluster_local_routes") == 0.0
    })
    .await;
    crate::common::wait_until("node 1 routes the session's messages to node 3", || {
        metric(&servers[0], "halyard_cluster_remote_routes") >= 1.0
    })
    .await;
    publisher
        .publish("alerts/smoke", rumqttc::QoS::AtLeastOnce, false, &[9])
        .await;
    assert_eq!(&keeper.recv().await.payload[..], &[9]);
    keeper.expect_no_publish(Duration::from_millis(300)).await;

    // The same client, still connected to node 3, connects to node 1: node 3's connection is
    // closed, and node 1 has the session.
    let (_again, ack) = crate::common::v4_connect(persistent_v4(&servers[0], "keeper")).await;
    assert!(ack.session_present);
    keeper.closed().await;
    publisher.disconnect().await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_spread_over_nodes_gets_each_message_once_and_locally_first() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    let mut on_2 = client(&servers[1], "worker-on-2").await;
    on_2.subscribe("$share/workers/jobs/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut on_3 = client(&servers[2], "worker-on-3").await;
    on_3.subscribe("$share/workers/jobs/#", rumqttc::QoS::AtLeastOnce)
        .await;
    crate::common::wait_until("node 1 knows both members", || {
        metric(&servers[0], "halyard_cluster_remote_routes") >= 2.0
    })
    .await;

    // No member on node 1: each message goes to one node's member, in turn.
    let mut publisher = client(&servers[0], "dispatcher-on-1").await;
    for n in 0..40u8 {
        publisher
            .publish("jobs/print", rumqttc::QoS::AtLeastOnce, false, &[n])
            .await;
    }
    let mut got = Vec::new();
    for worker in [&mut on_2, &mut on_3] {
        while let Some(p) = worker.try_recv(Duration::from_millis(500)).await {
            got.push(p.payload[0]);
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (0..40).collect::<Vec<u8>>(),
        "each message once in the group"
    );
    assert!(metric(&servers[1], "halyard_cluster_received_total{peer=\"1\"}") >= 1.0);
    assert!(metric(&servers[2], "halyard_cluster_received_total{peer=\"1\"}") >= 1.0);

    // A connected member on the publisher's node takes them all, without crossing nodes.
    let mut on_1 = client(&servers[0], "worker-on-1").await;
    on_1.subscribe("$share/workers/jobs/#", rumqttc::QoS::AtLeastOnce)
        .await;
    for n in 0..10u8 {
        publisher
            .publish("jobs/print", rumqttc::QoS::AtLeastOnce, false, &[n])
            .await;
    }
    assert_eq!(on_1.recv_n(10).await.len(), 10);
    on_2.expect_no_publish(Duration::from_millis(300)).await;
    on_3.expect_no_publish(Duration::from_millis(300)).await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_its_clients_away_and_hands_its_sessions_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |config| {
        config.cluster.server_reference = Some("mqtt.example.com:8883".into());
    })
    .await;
    // An offline persistent session on node 2 with messages queued for it.
    let (mut keeper, _) = crate::common::v4_connect(persistent_v4(&servers[1], "keeper")).await;
    keeper
        .subscribe("orders/#", rumqttc::QoS::AtLeastOnce)
        .await;
    keeper.disconnect().await;
    crate::common::wait_until("node 1 knows the offline session's route", || {
        metric(&servers[0], "halyard_cluster_remote_routes") >= 1.0
    })
    .await;
    let mut publisher = client(&servers[0], "shop-on-1").await;
    for n in 0..3u8 {
        publisher
            .publish("orders/new", rumqttc::QoS::AtLeastOnce, false, &[n])
            .await;
    }
    let (mut live, _) = crate::common::v5_connect(v5_options(&servers[1], "live")).await;

    let before = servers[1].drain_status();
    assert!(!before.draining && before.done.is_none(), "{before:?}");
    let drained = servers[1].drain().await;
    assert_eq!(drained.sessions_left, 0, "{drained:?}");
    assert_eq!(drained.sessions_handed_over, 1, "{drained:?}");
    let after = servers[1].drain_status();
    assert!(after.draining, "{after:?}");
    assert_eq!(after.done.map(|d| d.sessions_handed_over), Some(1));
    let ended = live.closed().await;
    assert_eq!(
        crate::common::server_disconnect(&ended),
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::UseAnotherServer)
    );
    assert!(
        servers[1]
            .unready_reasons()
            .iter()
            .any(|r| r.contains("draining"))
    );
    let mut late = crate::common::Raw::open_addr(servers[1].mqtt_addr().unwrap()).await;
    let refused = late
        .connect(crate::common::connect_packet(
            halyard_node::mqtt::ProtocolVersion::V5,
            "late",
            true,
            30,
        ))
        .await;
    assert_eq!(refused.reason_code, 0x9C, "use another server");
    assert_eq!(
        refused.properties.server_reference.as_deref(),
        Some("mqtt.example.com:8883")
    );

    // The session lives on another node now, and still collects what is published.
    crate::common::wait_until("another node holds the session's route", || {
        metric(&servers[0], "halyard_cluster_local_routes")
            + metric(&servers[2], "halyard_cluster_local_routes")
            == 1.0
    })
    .await;
    crate::common::wait_until("node 1 routes to it", || {
        metric(&servers[0], "halyard_cluster_local_routes") == 1.0
            || metric(&servers[0], "halyard_cluster_remote_routes") >= 1.0
    })
    .await;
    publisher
        .publish("orders/new", rumqttc::QoS::AtLeastOnce, false, &[3])
        .await;
    let (mut keeper, ack) = crate::common::v4_connect(persistent_v4(&servers[2], "keeper")).await;
    assert!(ack.session_present);
    let got: Vec<u8> = keeper
        .recv_n(4)
        .await
        .iter()
        .map(|p| p.payload[0])
        .collect();
    assert_eq!(got, [0, 1, 2, 3]);
    publisher.disconnect().await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_any_node_after_the_suback_reaches_the_new_subscription() {
    // The route barrier: SUBACK waits until every linked node has applied the new route, so
    // a publisher told "subscribed" by its subscriber never publishes into a stale route table.
    let dir = tempfile::tempdir().unwrap();
    let (servers, _) = three_nodes(dir.path(), |_| {}).await;
    control_streams_up(&servers).await;
    let mut publishers = [
        client(&servers[0], "barrier-pub-1").await,
        client(&servers[2], "barrier-pub-3").await,
    ];
    let mut subscriber = client(&servers[1], "barrier-sub").await;
    for n in 0..20u8 {
        let filter = format!("barrier/{n}/#");
        subscriber
            .subscribe(&filter, rumqttc::QoS::AtLeastOnce)
            .await;
        let publisher = &mut publishers[usize::from(n % 2)];
        publisher
            .publish(
                &format!("barrier/{n}/x"),
                rumqttc::QoS::AtLeastOnce,
                false,
                &[n],
            )
            .await;
        assert_eq!(
            &subscriber.recv().await.payload[..],
            &[n],
            "message {n} published right after the SUBACK"
        );
    }
    for server in servers {
        server.shutdown().await;
    }
}

async fn reloaded(server: &Server, outcome: &str, at_least: f64) {
    for _ in 0..200 {
        if metric(
            server,
            &format!("halyard_tls_reloads_total{{certificate=\"peer\",outcome=\"{outcome}\"}}"),
        ) >= at_least
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {outcome} reload number {at_least}");
}

/// The CA rotation the operator runs, in three phases, with no node restarted: trust the old
/// and the new CA, present certificates of the new one, drop the old. A node that knows only
/// the new CA then joins the cluster, which it could not if either node still presented a
/// certificate of the old one. A bundle that does not load changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_certificates_rotate_to_a_new_ca_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-ca");
    let new = dir.path().join("new-ca");
    halyard_node::cluster::certs::generate(&old, &[1, 2]).unwrap();
    halyard_node::cluster::certs::generate(&new, &[1, 2, 3]).unwrap();
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap();
    // Each node's files, as a mounted Secret would hold them.
    let files = |id: u64| dir.path().join(format!("node-{id}-tls"));
    let install = |id: u64, ca: String, from: &Path| {
        let to = files(id);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("ca.pem"), ca).unwrap();
        std::fs::copy(from.join(format!("node-{id}.pem")), to.join("cert.pem")).unwrap();
        std::fs::copy(from.join(format!("node-{id}.key")), to.join("key.pem")).unwrap();
    };
    let peers: Vec<(u64, u16)> = (1..=3).map(|id| (id, free_udp_port())).collect();
    let config = |id: u64| {
        let mut config = node_config(dir.path(), id, &peers);
        config.cluster.initial_members = Some(format!(
            "1=127.0.0.1:{},2=127.0.0.1:{}",
            peers[0].1, peers[1].1
        ));
        config.cluster.ca_cert = Some(files(id).join("ca.pem"));
        config.cluster.cert = Some(files(id).join("cert.pem"));
        config.cluster.key = Some(files(id).join("key.pem"));
        config.cluster.tls_check_ms = 50;
        config
    };
    for id in [1, 2] {
        install(id, read(old.join("ca.pem")), &old);
    }
    let servers = futures_join([1u64, 2].into_iter().map(|id| Server::start(config(id))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    servers[0].store().put("formed", "yes").await.unwrap();

    // A garbled bundle is refused and the node goes on with what it had.
    std::fs::write(files(1).join("ca.pem"), "not a certificate").unwrap();
    reloaded(&servers[0], "error", 1.0).await;
    let both = format!("{}{}", read(old.join("ca.pem")), read(new.join("ca.pem")));
    let mut phase = 1.0;
    for (bundle, issuer) in [
        (both.clone(), &old),
        (both, &new),
        (read(new.join("ca.pem")), &new),
    ] {
        for id in [1u64, 2] {
            install(id, bundle.clone(), issuer);
        }
        for server in &servers {
            reloaded(server, "ok", phase).await;
        }
        phase += 1.0;
    }
    let new_expiry = metric(
        &servers[0],
        "halyard_tls_certificate_expiry_timestamp_seconds{certificate=\"peer\"}",
    );
    assert!(new_expiry > 0.0);

    // Node 3 trusts only the new CA; its dials are answered with certificates of the new CA,
    // and its own is accepted.
    install(3, read(new.join("ca.pem")), &new);
    let mut third = config(3);
    third.cluster.initial_members = None;
    third.cluster.join = Some(format!("127.0.0.1:{}", peers[0].1));
    let third = Server::start(third).await.unwrap();
    third.store().put("rotated", "yes").await.unwrap();
    for server in servers.iter().chain([&third]) {
        let got = server
            .store()
            .get(b"rotated", Consistency::Linearizable)
            .await
            .unwrap();
        assert!(
            got.kv.is_some(),
            "the write through node 3 reached every node"
        );
    }
    third.shutdown().await;
    for server in servers {
        server.shutdown().await;
    }
}
