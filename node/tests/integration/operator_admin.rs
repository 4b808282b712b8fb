//! The operator's client of the admin API (`halyard_operator::nodes::HttpAdmin`) against real
//! nodes: what it reads of the store and of a drain, and each membership step it takes, as it
//! takes them when it scales a cluster, and what a node reports of its certificates. A node joins as a learner through a list of addresses
//! whose first does not answer, as a pod does through its StatefulSet's other pods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use crate::common::free_udp_port;
use std::time::Duration;

use halyard_node::config::{Config, JoinRole};
use halyard_node::server::Server;
use halyard_operator::nodes::{Endpoint, HttpAdmin, NodeAdmin, StoreStatus};
use halyard_operator::rotation::fingerprints;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn config(dir: &std::path::Path, id: u64, port: u16) -> Config {
    let certs = dir.join("certs");
    let mut config = crate::common::local_config(&dir.join(format!("node-{id}")));
    config.admin_token = Some(TOKEN.to_owned());
    config.cluster.node_id = id;
    config.cluster.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    config.cluster.ca_cert = Some(certs.join("ca.pem"));
    config.cluster.cert = Some(certs.join(format!("node-{id}.pem")));
    config.cluster.key = Some(certs.join(format!("node-{id}.key")));
    config.cluster.heartbeat_ms = 50;
    config.cluster.election_timeout_ms = 300;
    config
}

fn endpoint(server: &Server) -> Endpoint {
    Endpoint {
        base: format!("http://{}", server.admin_addr().unwrap()),
        token: TOKEN.to_owned(),
    }
}

/// The leader's status, once one node names a leader that reports `check` true.
async fn leader_status(
    admin: &HttpAdmin,
    servers: &[&Server],
    check: impl Fn(&StoreStatus) -> bool,
) -> (usize, StoreStatus) {
    for _ in 0..400 {
        for (i, server) in servers.iter().enumerate() {
            if let Ok(status) = admin.store_status(&endpoint(server)).await
                && status.leader == Some(status.id)
                && check(&status)
            {
                return (i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader whose status passes the check");
}

fn voter(status: &StoreStatus, id: u64) -> Option<bool> {
    status.members.iter().find(|m| m.id == id).map(|m| m.voter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_admin_client_scales_a_cluster_of_real_nodes() {
    let dir = tempfile::tempdir().unwrap();
    halyard_node::cluster::certs::generate(&dir.path().join("certs"), &[1, 2, 3]).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let members = format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[0], ports[1]);
    let starts = [1u64, 2].map(|id| {
        let mut c = config(dir.path(), id, ports[id as usize - 1]);
        c.cluster.initial_members = Some(members.clone());
        tokio::spawn(Server::start(c))
    });
    let mut servers = Vec::new();
    for start in starts {
        servers.push(start.await.unwrap().unwrap());
    }
    // Node 3 joins as a learner, through a dead address first and then node 2.
    let mut third = config(dir.path(), 3, ports[2]);
    third.cluster.join = Some(format!(
        "127.0.0.1:{},127.0.0.1:{}",
        free_udp_port(),
        ports[1]
    ));
    third.cluster.join_as = JoinRole::Learner;
    servers.push(Server::start(third).await.unwrap());
    let admin = HttpAdmin::default();
    let all: Vec<&Server> = servers.iter().collect();

    // What a node reports it has loaded is what the operator computes of the files.
    let certs = dir.path().join("certs");
    let read = |name: &str| std::fs::read_to_string(certs.join(name)).unwrap();
    let loaded = admin.tls(&endpoint(all[0])).await.unwrap().peer.unwrap();
    assert_eq!(
        vec![loaded.certificate_sha256.clone()],
        fingerprints(&read("node-1.pem")).unwrap()
    );
    assert_eq!(
        loaded.trusted_ca_sha256,
        fingerprints(&read("ca.pem")).unwrap()
    );
    assert!(loaded.not_after > 0);

    let (leader, status) = leader_status(&admin, &all, |s| voter(s, 3).is_some()).await;
    assert_eq!(
        voter(&status, 3),
        Some(false),
        "joined as a learner: {status:?}"
    );
    assert_eq!(voter(&status, 1), Some(true));
    assert!(status.members.iter().all(|m| m.lag.is_some()), "{status:?}");

    admin.promote(&endpoint(all[leader]), 3).await.unwrap();
    let (leader, _) = leader_status(&admin, &all, |s| voter(s, 3) == Some(true)).await;
    admin.demote(&endpoint(all[leader]), 3).await.unwrap();
    let (leader, _) = leader_status(&admin, &all, |s| voter(s, 3) == Some(false)).await;

    // Leadership moves to the other voter.
    let other = [1u64, 2]
        .into_iter()
        .find(|id| *id != leader as u64 + 1)
        .unwrap();
    admin
        .transfer_leader(&endpoint(all[leader]), other)
        .await
        .unwrap();
    let (leader, _) = leader_status(&admin, &all, |s| s.id == other).await;

    // Node 3 drains, then leaves the membership.
    let third = endpoint(all[2]);
    let before = admin.drain_status(&third).await.unwrap();
    assert!(!before.draining && before.done.is_none(), "{before:?}");
    admin.start_drain(&third).await.unwrap();
    let mut drained = false;
    for _ in 0..400 {
        let report = admin.drain_status(&third).await.unwrap();
        if report.done.is_some() {
            assert!(report.draining);
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(drained, "the drain ended");
    admin
        .remove_member(&endpoint(all[leader]), 3)
        .await
        .unwrap();
    let (_, status) = leader_status(&admin, &all, |s| voter(s, 3).is_none()).await;
    assert_eq!(status.members.len(), 2);

    // Without the token, the node refuses, and the client says who answered what.
    let refused = admin
        .promote(
            &Endpoint {
                base: endpoint(all[0]).base,
                token: "wrong".into(),
            },
            3,
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    for server in servers {
        server.shutdown().await;
    }
}
