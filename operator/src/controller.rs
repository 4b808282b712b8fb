//! The reconcile loop: the I/O around the planner. Each round applies the owned objects
//! (server-side apply), observes pods and nodes, asks [`plan`](crate::plan::plan) for the one
//! next step, takes it, and reports the status. It keeps no state between rounds: a restarted
//! operator reads the cluster and carries on where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::crd::{HalyardCluster, HalyardClusterSpec, HalyardClusterStatus};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::nodes::{Endpoint, NodeAdmin};
use crate::observe::{self, Observation};
use crate::plan::{self, Action, Desired, Wait};
use crate::resources::{self, Names};
use crate::secrets::{self, PeerReport};
use crate::writes::{self, MANAGER};

pub const FINALIZER: &str = "halyard.io/cleanup";

/// After a step: soon, to see its effect and take the next.
const AFTER_STEP: Duration = Duration::from_secs(2);
/// While waiting on the cluster (a pod starting, a drain).
const WHILE_WAITING: Duration = Duration::from_secs(5);
/// The first and the longest delay before a failed round is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);
/// Progress held this long by one wait is reported as `Degraded`.
const STALLED_AFTER: Duration = Duration::from_secs(600);
/// Once the cluster is as asked: certificates and drift are checked this often.
const WHEN_DONE: Duration = Duration::from_secs(60);

/// What every round shares.
pub struct Context<N> {
    pub client: Client,
    pub admin: N,
    pub metrics: Metrics,
    pub reporter: Reporter,
    /// The wall clock, as the planner's pod ages and the certificates need it.
    pub now: fn() -> jiff::Timestamp,
    /// Failed rounds in a row, by cluster (namespace/name).
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl<N: NodeAdmin> Context<N> {
    pub fn new(client: Client, admin: N, metrics: Metrics) -> Self {
        Context {
            client,
            admin,
            metrics,
            reporter: Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            now: jiff::Timestamp::now,
            failures: std::sync::Mutex::default(),
        }
    }
}

impl<N> Context<N> {
    /// Counts a failed round of `names`' cluster; the failures in a row so far.
    fn failed(&self, names: &Names) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures
            .entry(format!("{}/{}", names.namespace, names.cluster))
            .or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded(&self, names: &Names) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&format!("{}/{}", names.namespace, names.cluster));
    }
}

/// Runs the controller over the clusters of `namespace` (every namespace when `None`), until
/// a signal stops it.
pub async fn run<N: NodeAdmin>(namespace: Option<String>, ctx: Arc<Context<N>>) {
    let client = ctx.client.clone();
    let (clusters, statefulsets, pods) = match &namespace {
        Some(ns) => (
            Api::<HalyardCluster>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "reconciling HalyardClusters"
    );
    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=halyard-operator");
    // A pod's readiness or its end is what most waits are for; pods belong to the StatefulSet,
    // so they are mapped to their cluster by label.
    let node_pods = watcher::Config::default().labels("app.kubernetes.io/name=halyard");
    Controller::new(clusters, watcher::Config::default())
        .owns(statefulsets, managed)
        .watches(pods, node_pods, |pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance")?.clone();
            let ns = pod.namespace()?;
            Some(ObjectRef::new(&cluster).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile round failed");
            }
        })
        .await;
}

pub async fn reconcile<N: NodeAdmin>(
    cluster: Arc<HalyardCluster>,
    ctx: Arc<Context<N>>,
) -> Result<Requeue, Error> {
    let names = Names::of(&cluster);
    let api: Api<HalyardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalized::Apply(cluster) => apply(&cluster, &ctx).await,
            Finalized::Cleanup(cluster) => cleanup(&cluster, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(&names, started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.succeeded(&names);
    }
    result
}

/// After a failed round: again after a delay that doubles with each failure in a row of the
/// same cluster (5 s to 5 minutes), so that a broken API server or node is not hammered.
pub fn error_policy<N: NodeAdmin>(
    cluster: Arc<HalyardCluster>,
    error: &Error,
    ctx: Arc<Context<N>>,
) -> Requeue {
    let names = Names::of(&cluster);
    let failures = ctx.failed(&names);
    let delay = backoff(failures);
    tracing::warn!(cluster = %cluster.name_any(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// The delay before retrying after `failures` failed rounds in a row.
pub fn backoff(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(LAST_RETRY)
}

async fn cleanup<N: NodeAdmin>(
    cluster: &HalyardCluster,
    ctx: &Context<N>,
) -> Result<Requeue, Error> {
    // The owned objects go with the cluster (owner references); the volumes stay unless the
    // StatefulSet's retention says otherwise. Only the operator's own bookkeeping is left.
    ctx.metrics.forget(&Names::of(cluster));
    writes::event(
        &ctx.client,
        &ctx.reporter,
        cluster,
        false,
        "Deleting",
        "the cluster's objects go with it; volumes are kept".into(),
    )
    .await;
    Ok(Requeue::await_change())
}

fn desired(spec: &HalyardClusterSpec, template: String) -> Desired {
    Desired {
        nodes: spec.nodes,
        voters: spec.voters,
        version: spec.version.clone(),
        template,
        min_pod_age: Duration::from_secs(u64::from(spec.upgrade.min_pod_age_seconds)),
        max_lag: spec.upgrade.max_raft_lag,
        paused: spec.paused,
    }
}

async fn apply<N: NodeAdmin>(cluster: &HalyardCluster, ctx: &Context<N>) -> Result<Requeue, Error> {
    let names = Names::of(cluster);
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let now = (ctx.now)();
    let status = cluster.status.clone().unwrap_or_default();
    if cluster.spec.paused {
        write_status(ctx, cluster, &names, status_paused(cluster, &status, now)).await?;
        return Ok(Requeue::requeue(WHEN_DONE));
    }
    let config = match resources::node_config(&cluster.spec, &names, status.formed) {
        Ok(config) => config,
        Err(e) => {
            let status = status_invalid(cluster, &status, now, &e.to_string());
            write_status(ctx, cluster, &names, status).await?;
            return Ok(Requeue::requeue(WHEN_DONE));
        }
    };
    let token = secrets::admin_token(client, cluster, &names).await?;
    if let Some(note) = secrets::ensure_peer(client, cluster, &names, now.as_second()).await? {
        writes::event(
            client,
            &ctx.reporter,
            cluster,
            false,
            "CertificateRenewed",
            note,
        )
        .await;
    }
    let config_hash = resources::steady_config_hash(&cluster.spec, &names)?;
    writes::apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &names.config_map(),
        &resources::config_map(cluster, &names, config),
    )
    .await?;
    writes::apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &names.peer_service(),
        &resources::peer_service(cluster, &names),
    )
    .await?;
    writes::apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &names.client_service(),
        &resources::client_service(cluster, &names),
    )
    .await?;
    writes::apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &names.statefulset(),
        &resources::disruption_budget(cluster, &names),
    )
    .await?;
    apply_service_monitor(client, cluster, &names).await?;
    apply_certificates(client, cluster, &names).await?;

    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let existing = statefulsets.get_opt(&names.statefulset()).await?;
    let replicas = match &existing {
        // The StatefulSet's replicas move only by the planner's Scale step.
        Some(sts) => sts
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        // A new cluster starts whole: node 1 forms the store, the others join it.
        None => cluster.spec.nodes,
    };
    let statefulset = resources::statefulset(cluster, &names, replicas, &config_hash);
    let template = resources::template_hash(&statefulset);
    writes::apply(&statefulsets, &names.statefulset(), &statefulset).await?;

    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector(&names)))
        .await?
        .items;
    let observation = observe::observe(&ctx.admin, &names, &token, replicas, &pods, now).await;
    let mut peer =
        secrets::rotate_peer_ca(client, cluster, &names, now.as_second(), &observation.tls).await?;
    peer.certificates.extend(
        secrets::mounted_certificates(
            client,
            cluster,
            &names,
            &observation.tls,
            &observation.served,
        )
        .await?,
    );
    if let Some(note) = &peer.changed {
        writes::event(
            client,
            &ctx.reporter,
            cluster,
            false,
            "CertificateRotation",
            note.clone(),
        )
        .await;
    }
    let desired = desired(&cluster.spec, template);
    let action = plan::plan(&observation.observed, &desired);
    ctx.metrics.planned(&names, &action);
    let step = Step {
        cluster,
        names: &names,
        token: &token,
        config_hash: &config_hash,
        observation: &observation,
        desired: &desired,
    };
    let outcome = take(ctx, &step, &action).await;
    let status = status_after(&step, &status, &action, peer, outcome.as_ref().err(), now);
    write_status(ctx, cluster, &names, status).await?;
    outcome?;
    Ok(match action {
        Action::Done => Requeue::requeue(WHEN_DONE),
        Action::Wait(_) => Requeue::requeue(WHILE_WAITING),
        _ => Requeue::requeue(AFTER_STEP),
    })
}

fn selector(names: &Names) -> String {
    resources::selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn apply_service_monitor(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
) -> Result<(), Error> {
    let resource = resources::service_monitor_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, &resource);
    if cluster.spec.monitoring.service_monitor.enabled {
        writes::apply(
            &api,
            &names.cluster,
            &resources::service_monitor(cluster, names),
        )
        .await?;
    } else {
        // Orphaned when monitoring is turned off; absent (404), or the CRD missing, is fine.
        writes::delete(&api, &names.cluster).await?;
    }
    Ok(())
}

/// cert-manager's Certificates with `certManager` TLS; removed in any other mode, where the
/// Secrets they kept are no longer mounted.
async fn apply_certificates(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
) -> Result<(), Error> {
    let resource = resources::certificate_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, &resource);
    let wanted = resources::certificates(cluster, names);
    for certificate in &wanted {
        writes::apply(&api, &certificate.name_any(), certificate).await?;
    }
    if wanted.is_empty() {
        for name in [names.peer_certificate(), names.server_certificate()] {
            // Read first: without cert-manager installed the kind is unknown, and there is
            // nothing to remove.
            if api.get_opt(&name).await?.is_some() {
                writes::delete(&api, &name).await?;
            }
        }
    }
    Ok(())
}

/// What a step is taken on.
struct Step<'a> {
    cluster: &'a HalyardCluster,
    names: &'a Names,
    token: &'a str,
    config_hash: &'a str,
    observation: &'a Observation,
    desired: &'a Desired,
}

/// Takes the planner's step.
async fn take<N: NodeAdmin>(
    ctx: &Context<N>,
    step: &Step<'_>,
    action: &Action,
) -> Result<(), Error> {
    let Step {
        cluster,
        names,
        token,
        config_hash,
        observation,
        ..
    } = *step;
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let endpoint = |ordinal: u32| Endpoint {
        base: names.pod_admin_url(ordinal),
        token: token.to_owned(),
    };
    let leader = || observation.leader_ordinal().map(endpoint);
    let note = match action {
        Action::Wait(_) | Action::Done => return Ok(()),
        Action::Scale(to) => {
            let from = observation.observed.replicas;
            // A volume left by a node removed earlier (retained on scale-down) holds a store
            // that is no longer a member; the new node starts empty and joins.
            let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
            for ordinal in from..*to {
                writes::delete(&claims, &names.volume_claim(ordinal)).await?;
            }
            // The whole object, as every round applies it: applying only the replicas would
            // give up every other field this manager owns.
            let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), ns);
            let scaled = resources::statefulset(cluster, names, *to, config_hash);
            writes::apply(&statefulsets, &names.statefulset(), &scaled).await?;
            format!("scaling from {from} to {to} nodes")
        }
        Action::Promote(id) => {
            if let Some(leader) = leader() {
                ctx.admin.promote(&leader, *id).await?;
            }
            format!("node {id} caught up: promoted to voter")
        }
        Action::Demote(id) => {
            if let Some(leader) = leader() {
                ctx.admin.demote(&leader, *id).await?;
            }
            format!("node {id} demoted to learner: more voters than the spec asks")
        }
        Action::Drain(ordinal) => {
            ctx.admin.start_drain(&endpoint(*ordinal)).await?;
            format!(
                "draining {}: its clients move to the other nodes",
                names.pod(*ordinal)
            )
        }
        Action::TransferLeadership { from } => {
            let to = plan::successor(&observation.observed, *from);
            if let (Some(leader), Some(to)) = (leader(), to) {
                ctx.admin.transfer_leader(&leader, to).await?;
            }
            format!(
                "leadership handed from node {from} to node {}",
                to.unwrap_or(0)
            )
        }
        Action::RemoveMember(id) => {
            if let Some(leader) = leader() {
                ctx.admin.remove_member(&leader, *id).await?;
            }
            format!("node {id} removed from the store's membership")
        }
        Action::Replace(ordinal) => {
            let pods = Api::<Pod>::namespaced(client.clone(), ns);
            writes::delete(&pods, &names.pod(*ordinal)).await?;
            format!(
                "{} drained: replaced at version {}",
                names.pod(*ordinal),
                cluster.spec.version
            )
        }
    };
    tracing::info!(cluster = %names.cluster, namespace = %names.namespace, step = ?action, "{note}");
    writes::event(
        client,
        &ctx.reporter,
        cluster,
        false,
        step_name(action),
        note,
    )
    .await;
    Ok(())
}

pub fn step_name(action: &Action) -> &'static str {
    match action {
        Action::Wait(_) => "Waiting",
        Action::Scale(_) => "Scale",
        Action::Promote(_) => "Promote",
        Action::Demote(_) => "Demote",
        Action::Drain(_) => "Drain",
        Action::TransferLeadership { .. } => "TransferLeadership",
        Action::RemoveMember(_) => "RemoveMember",
        Action::Replace(_) => "Replace",
        Action::Done => "Done",
    }
}

/// Every reason [`wait_reason`] gives.
pub const WAIT_REASONS: [&str; 8] = [
    "Paused",
    "PodNotReady",
    "Joining",
    "Lagging",
    "Draining",
    "Settling",
    "NoQuorumWithout",
    "NoOtherLeader",
];

pub fn wait_reason(wait: &Wait) -> (&'static str, String) {
    match wait {
        Wait::Paused => ("Paused", "reconciliation is paused".into()),
        Wait::PodNotReady(o) => ("PodNotReady", format!("pod {o} is not ready")),
        Wait::Joining(o) => ("Joining", format!("pod {o} is not a store member yet")),
        Wait::Lagging(id) => ("Lagging", format!("node {id} is behind the leader")),
        Wait::Draining(o) => ("Draining", format!("pod {o} is draining")),
        Wait::Settling(o) => (
            "Settling",
            format!("pod {o} is younger than the minimum pod age"),
        ),
        Wait::NoQuorumWithout(id) => (
            "NoQuorumWithout",
            format!("the next step would leave the store without a quorum if node {id} went"),
        ),
        Wait::NoOtherLeader(id) => (
            "NoOtherLeader",
            format!("node {id} leads and no other voter can take over"),
        ),
    }
}

fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// `old` with one condition set (and the generation it answers), the others as they were.
fn with_condition(
    cluster: &HalyardCluster,
    old: &HalyardClusterStatus,
    now: jiff::Timestamp,
    (type_, reason, message): (&str, &str, String),
) -> HalyardClusterStatus {
    let mut status = old.clone();
    let generation = cluster.metadata.generation;
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(condition(
        &old.conditions,
        type_,
        true,
        reason,
        message,
        generation,
        now,
    ));
    status.observed_generation = generation;
    status
}

fn status_paused(
    cluster: &HalyardCluster,
    old: &HalyardClusterStatus,
    now: jiff::Timestamp,
) -> HalyardClusterStatus {
    let mut status = with_condition(
        cluster,
        old,
        now,
        (
            "ReconciliationPaused",
            "Paused",
            "spec.paused is true: the operator changes nothing".into(),
        ),
    );
    status.step = Some("Paused".into());
    status
}

fn status_invalid(
    cluster: &HalyardCluster,
    old: &HalyardClusterStatus,
    now: jiff::Timestamp,
    message: &str,
) -> HalyardClusterStatus {
    with_condition(
        cluster,
        old,
        now,
        ("Degraded", "InvalidSpec", message.to_owned()),
    )
}

fn status_after(
    step: &Step<'_>,
    old: &HalyardClusterStatus,
    action: &Action,
    peer: PeerReport,
    error: Option<&Error>,
    now: jiff::Timestamp,
) -> HalyardClusterStatus {
    let Step {
        cluster,
        names,
        observation,
        desired,
        ..
    } = *step;
    let generation = cluster.metadata.generation;
    let observed = &observation.observed;
    let ready = observed.pods.values().filter(|p| p.ready).count() as u32;
    let voters: Vec<u64> = observed
        .members
        .iter()
        .filter(|(_, m)| m.role == plan::Role::Voter)
        .map(|(id, _)| *id)
        .collect();
    let ready_voters = voters
        .iter()
        .filter(|id| {
            plan::ordinal_of(**id)
                .and_then(|o| observed.pods.get(&o))
                .is_some_and(|p| p.ready)
        })
        .count();
    let available = observed.leader.is_some() && ready_voters > voters.len() / 2;
    let draining: Vec<String> = observed
        .pods
        .iter()
        .filter(|(_, p)| p.draining || p.drained)
        .map(|(o, _)| names.pod(*o))
        .collect();
    let outdated: Vec<String> = observed
        .pods
        .iter()
        .filter(|(_, p)| p.version != cluster.spec.version || p.template != desired.template)
        .map(|(o, _)| names.pod(*o))
        .collect();
    let new_version = observed
        .pods
        .values()
        .any(|p| p.version != cluster.spec.version);
    // Progress that has waited this long on one gate (a pod that does not become ready or
    // catch up) is a fault to look at, as a Deployment's progress deadline.
    let stalled = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "True")
        .is_some_and(|c| {
            now.as_second() - c.last_transition_time.0.as_second() >= STALLED_AFTER.as_secs() as i64
        });
    let (degraded, degraded_reason, degraded_message) = match (error, action) {
        (Some(e), _) => (true, e.reason(), e.to_string()),
        (None, Action::Wait(w @ (Wait::NoQuorumWithout(_) | Wait::NoOtherLeader(_)))) => {
            let (reason, message) = wait_reason(w);
            (true, reason, message)
        }
        (None, Action::Wait(w)) if stalled => {
            let (reason, message) = wait_reason(w);
            (
                true,
                "Stalled",
                format!(
                    "no progress for {} minutes: {reason}: {message}",
                    STALLED_AFTER.as_secs() / 60
                ),
            )
        }
        _ if !available && old.formed => (
            true,
            "NoQuorum",
            "the store has no leader or too few ready voters".to_owned(),
        ),
        _ => (false, "Healthy", "no fault seen".to_owned()),
    };
    let (progress_reason, progress_message) = match action {
        Action::Done => ("Reconciled", "the cluster is as the spec asks".to_owned()),
        Action::Wait(w) => wait_reason(w),
        other => (step_name(other), format!("{other:?}")),
    };
    let c = |type_: &str, status: bool, reason: &str, message: String| {
        condition(
            &old.conditions,
            type_,
            status,
            reason,
            message,
            generation,
            now,
        )
    };
    let conditions = vec![
        c(
            "Available",
            available,
            if available { "QuorumReady" } else { "NoQuorum" },
            format!(
                "{ready_voters} of {} voters ready, leader {}",
                voters.len(),
                observed
                    .leader
                    .map_or("unknown".to_owned(), |l| l.to_string())
            ),
        ),
        c(
            "Progressing",
            *action != Action::Done,
            progress_reason,
            progress_message,
        ),
        c("Degraded", degraded, degraded_reason, degraded_message),
        c(
            "Draining",
            !draining.is_empty(),
            if draining.is_empty() {
                "NoDrain"
            } else {
                "Draining"
            },
            draining.join(", "),
        ),
        c(
            "Upgrading",
            !outdated.is_empty(),
            if outdated.is_empty() {
                "AtVersion"
            } else if new_version {
                "RollingUpgrade"
            } else {
                "RollingRestart"
            },
            if outdated.is_empty() {
                format!("every node runs {}", cluster.spec.version)
            } else if !new_version {
                format!(
                    "restarting for a changed configuration or pod template: {}",
                    outdated.join(", ")
                )
            } else {
                format!(
                    "not yet at {}: {}",
                    cluster.spec.version,
                    outdated.join(", ")
                )
            },
        ),
        match &peer.rotating {
            Some((phase, pods)) => c(
                "CertificatesRotating",
                true,
                phase,
                if pods.is_empty() {
                    "the phase has begun".to_owned()
                } else {
                    format!("waiting for {} to load it", pods.join(", "))
                },
            ),
            None => c(
                "CertificatesRotating",
                false,
                "NoRotation",
                "no certificate rotation under way".into(),
            ),
        },
        c(
            "ReconciliationPaused",
            false,
            "Reconciling",
            "the operator reconciles this cluster".into(),
        ),
    ];
    HalyardClusterStatus {
        observed_generation: generation,
        conditions,
        step: Some(step_name(action).to_owned()),
        formed: old.formed || observed.leader.is_some(),
        ready_nodes: ready,
        leader: observed.leader,
        leader_pod: observation.leader_ordinal().map(|o| names.pod(o)),
        term: observation.store.as_ref().map(|s| s.term),
        members: observation.members(names),
        nodes: observation.nodes.clone(),
        certificates: peer.certificates,
    }
}

async fn write_status<N>(
    ctx: &Context<N>,
    cluster: &HalyardCluster,
    names: &Names,
    status: HalyardClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<HalyardCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = serde_json::json!({
        "apiVersion": "halyard.io/v1alpha1",
        "kind": "HalyardCluster",
        "status": status,
    });
    api.patch_status(
        &names.cluster,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
