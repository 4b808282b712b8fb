//! What the operator sees of a cluster: its pods (from Kubernetes) and its nodes (from their
//! admin API), turned into the planner's [`Observed`] and the status it reports.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod as KubePod;

use crate::crd::{MemberStatus, NodeStatus};
use crate::nodes::{Endpoint, NodeAdmin, StoreStatus};
use crate::plan::{self, Observed, Ordinal, Role};
use crate::resources::{CONTAINER, Names};
use crate::rotation::Loaded;

/// One round's observation.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub observed: Observed,
    /// The leader's view of the store, when a leader answered.
    pub store: Option<StoreStatus>,
    pub nodes: Vec<NodeStatus>,
    /// What each running node has loaded of the peer certificates (`None`: it did not say).
    pub tls: Vec<(String, Option<Loaded>)>,
    /// The fingerprint of the server certificate each running node presents to devices.
    pub served: Vec<(String, Option<String>)>,
}

impl Observation {
    pub fn leader_ordinal(&self) -> Option<Ordinal> {
        self.observed.leader.and_then(plan::ordinal_of)
    }

    pub fn members(&self, names: &Names) -> Vec<MemberStatus> {
        self.observed
            .members
            .iter()
            .map(|(id, m)| MemberStatus {
                pod: plan::ordinal_of(*id)
                    .map(|o| names.pod(o))
                    .unwrap_or_default(),
                node_id: *id,
                role: match m.role {
                    Role::Voter => "Voter",
                    Role::Learner => "Learner",
                }
                .to_owned(),
                lag: m.lag,
            })
            .collect()
    }
}

/// The ordinal of a pod of the cluster, from its name.
pub fn ordinal(names: &Names, pod: &KubePod) -> Option<Ordinal> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(&names.cluster)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The version a pod runs: its image's tag.
pub fn version(pod: &KubePod) -> String {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default();
    image_tag(image).to_owned()
}

/// The digest of the template the pod was made from; empty for a pod made before templates
/// carried one, which is then replaced as outdated.
fn template(pod: &KubePod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::resources::TEMPLATE_HASH))
        .cloned()
        .unwrap_or_default()
}

/// The tag of an image reference (`registry:5000/halyard:1.2` is `1.2`), or "latest".
pub fn image_tag(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

fn running(pod: &KubePod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.state.as_ref())
            .is_some_and(|state| state.running.is_some())
}

fn ready(pod: &KubePod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn age(pod: &KubePod, now: jiff::Timestamp) -> Duration {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .unwrap_or_default()
}

/// Observes the cluster of `pods` (`replicas` wanted), asking each running node for its drain
/// and the leader for the store's members.
pub async fn observe<N: NodeAdmin>(
    admin: &N,
    names: &Names,
    token: &str,
    replicas: u32,
    pods: &[KubePod],
    now: jiff::Timestamp,
) -> Observation {
    let endpoint = |ordinal: Ordinal| Endpoint {
        base: names.pod_admin_url(ordinal),
        token: token.to_owned(),
    };
    let mut observed = Observed {
        replicas,
        ..Observed::default()
    };
    let mut nodes = Vec::new();
    let mut tls = Vec::new();
    let mut served = Vec::new();
    for kube_pod in pods {
        let Some(ordinal) = ordinal(names, kube_pod) else {
            continue;
        };
        let running = running(kube_pod);
        // A node that does not answer is taken as not draining this round: a drain already
        // begun is found again on the next, and the planner waits for readiness meanwhile.
        let drain = if running {
            admin.drain_status(&endpoint(ordinal)).await.ok()
        } else {
            None
        };
        if running {
            let report = admin.tls(&endpoint(ordinal)).await.ok();
            let server = report
                .as_ref()
                .and_then(|r| r.server.as_ref())
                .map(|s| s.certificate_sha256.clone());
            let loaded = report.and_then(|r| r.peer).map(|peer| Loaded {
                pod: names.pod(ordinal),
                certificate_sha256: peer.certificate_sha256,
                trusted_ca_sha256: peer.trusted_ca_sha256,
            });
            tls.push((names.pod(ordinal), loaded));
            served.push((names.pod(ordinal), server));
        }
        let pod = plan::Pod {
            version: version(kube_pod),
            template: template(kube_pod),
            running,
            ready: ready(kube_pod),
            age: age(kube_pod, now),
            draining: drain.as_ref().is_some_and(|d| d.draining),
            drained: drain.as_ref().is_some_and(|d| d.done.is_some()),
        };
        nodes.push(NodeStatus {
            pod: names.pod(ordinal),
            node_id: plan::node_id(ordinal),
            version: pod.version.clone(),
            ready: pod.ready,
            connections: drain.as_ref().map_or(0, |d| d.connections),
            draining: pod.draining || pod.drained,
        });
        observed.pods.insert(ordinal, pod);
    }
    let store = leader_status(admin, &observed, &endpoint).await;
    if let Some(status) = &store {
        observed.leader = status.leader;
        if let Some(leader) = status.leader {
            observed.members = plan::members_from_leader(
                leader,
                status.members.iter().map(|m| (m.id, m.voter, m.lag)),
            );
        }
    }
    Observation {
        observed,
        store,
        nodes,
        tls,
        served,
    }
}

/// The leader's own status: asked of running nodes in turn until one names a leader, then of
/// the leader, which alone knows the members' lag.
async fn leader_status<N: NodeAdmin>(
    admin: &N,
    observed: &Observed,
    endpoint: &impl Fn(Ordinal) -> Endpoint,
) -> Option<StoreStatus> {
    let running = observed
        .pods
        .iter()
        .filter(|(_, p)| p.running)
        .map(|(o, _)| *o);
    for ordinal in running {
        let Ok(status) = admin.store_status(&endpoint(ordinal)).await else {
            continue;
        };
        let Some(leader) = status.leader else {
            continue;
        };
        if leader == status.id {
            return Some(status);
        }
        let leader_ordinal = plan::ordinal_of(leader)?;
        return admin.store_status(&endpoint(leader_ordinal)).await.ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_of_an_image_reference() {
        assert_eq!(image_tag("ghcr.io/halyard-iot/halyard:0.2.0"), "0.2.0");
        assert_eq!(image_tag("registry:5000/halyard:1.2"), "1.2");
        assert_eq!(image_tag("registry:5000/halyard"), "latest");
        assert_eq!(image_tag("halyard:1.2@sha256:abc"), "1.2");
    }
}
