//! Device shadows under faults: writers on every host update one shadow at once, each its own
//! field and never naming a version, while the nemesis crashes hosts and cuts and degrades the
//! network. Once the faults heal, the document must hold every writer's last accepted value,
//! no two accepted updates may share a version, and the version must count exactly the updates
//! that were applied: the accepted ones plus at most those whose outcome the writer never
//! learned.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use halyard_node::config::ShadowConfig;
use halyard_node::services::shadow::document::parse_update;
use halyard_node::services::shadow::store::{ShadowStore, ShadowStoreError};
use halyard_raft::NodeId;
use madsim::rand::{Rng, thread_rng};
use parking_lot::Mutex;

use crate::cluster::SimCluster;
use crate::store_scenario::{heal_everything, nemesis};

const THING: &str = "pump";
const WRITERS: usize = 4;
const UPDATES_PER_WRITER: u64 = 8;
const VOTERS: u64 = 3;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Outcomes {
    /// (writer, value, version) of every update the writer saw accepted.
    accepted: Vec<(usize, u64, u64)>,
    /// Attempts that failed in a way that leaves unknown whether they applied.
    unknown: u64,
    /// Attempts refused outright (all retries lost to other writers): certainly not applied.
    refused: u64,
}

/// Updates `reported.w{writer}` to `value` through whichever host is up, until one attempt is
/// accepted.
async fn update(cluster: &SimCluster, outcomes: &Mutex<Outcomes>, writer: usize, value: u64) {
    let config = ShadowConfig::default();
    let body = format!(r#"{{"state":{{"reported":{{"w{writer}":{value}}}}}}}"#);
    let request = match parse_update(body.as_bytes(), &config) {
        Ok(r) => r,
        Err(e) => panic!("the scenario's own request is refused: {e}"),
    };
    let hosts = cluster.ids.clone();
    let mut attempt = 0usize;
    loop {
        let host: NodeId = hosts[(writer + attempt) % hosts.len()];
        attempt += 1;
        let Some(store) = cluster.store(host) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shadows = ShadowStore::new(store, config.clone());
        let outcome =
            tokio::time::timeout(OP_TIMEOUT, shadows.update(THING, None, &request, 1)).await;
        match outcome {
            Ok(Ok(updated)) => {
                outcomes
                    .lock()
                    .accepted
                    .push((writer, value, updated.current.version));
                return;
            }
            Ok(Err(ShadowStoreError::Shadow(e))) if e.code == 409 => {
                outcomes.lock().refused += 1;
            }
            Ok(Err(ShadowStoreError::Shadow(e))) => panic!("update refused: {e}"),
            Ok(Err(_)) | Err(_) => outcomes.lock().unknown += 1,
        }
        let pause = thread_rng().gen_range(20..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Runs one seed of the scenario; returns its event log.
pub async fn run() -> String {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    let cluster = Arc::new(SimCluster::start(VOTERS, 0, dir.path().to_path_buf()).await);
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let faults = tokio::spawn(nemesis(Arc::clone(&cluster)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let cluster = Arc::clone(&cluster);
            let outcomes = Arc::clone(&outcomes);
            tokio::spawn(async move {
                for value in 0..UPDATES_PER_WRITER {
                    update(&cluster, &outcomes, writer, value).await;
                    let pause = thread_rng().gen_range(10..150);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        if let Err(e) = writer.await {
            panic!("a writer failed: {e}");
        }
    }
    faults.abort();
    heal_everything(&cluster).await;
    let members = cluster.converge(Duration::from_secs(60)).await;

    let mut documents = Vec::new();
    for id in &members {
        let Some(store) = cluster.store(*id) else {
            panic!("member {id} is down after healing");
        };
        let shadow = match ShadowStore::new(store, ShadowConfig::default())
            .get(THING, None)
            .await
        {
            Ok(Some(d)) => d,
            Ok(None) => panic!("member {id} has no shadow"),
            Err(e) => panic!("member {id} cannot read the shadow: {e}"),
        };
        documents.push(shadow);
    }
    assert!(
        documents.windows(2).all(|w| w[0] == w[1]),
        "members {members:?} read different shadows"
    );
    let document = &documents[0];
    let outcomes = outcomes.lock();
    let reported = document.reported.clone().unwrap_or_default();
    for writer in 0..WRITERS {
        assert_eq!(
            reported.get(&format!("w{writer}")).and_then(|v| v.as_u64()),
            Some(UPDATES_PER_WRITER - 1),
            "writer {writer}'s last accepted update is lost: {reported:?}"
        );
    }
    let versions: BTreeSet<u64> = outcomes.accepted.iter().map(|a| a.2).collect();
    assert_eq!(
        versions.len(),
        outcomes.accepted.len(),
        "two accepted updates were given one version: {:?}",
        outcomes.accepted
    );
    let accepted = outcomes.accepted.len() as u64;
    assert!(
        (accepted..=accepted + outcomes.unknown).contains(&document.version),
        "version {} does not count the applied updates: {accepted} accepted, {} unknown",
        document.version,
        outcomes.unknown
    );
    assert!(
        versions.last().is_some_and(|v| *v <= document.version),
        "an accepted version is above the document's: {versions:?} vs {}",
        document.version
    );
    format!("{outcomes:?}\n{members:?}\n{document:?}")
}
