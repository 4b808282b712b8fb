//! The `HalyardCluster` custom resource (`halyard.io/v1alpha1`): what a platform team asks for,
//! and what the operator reports back. The CRD that the Helm chart installs is generated from
//! these types (`halyard-operator crd`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image users run unless the spec names another.
pub const DEFAULT_IMAGE: &str = "ghcr.io/halyard-iot/halyard";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "halyard.io",
    version = "v1alpha1",
    kind = "HalyardCluster",
    plural = "halyardclusters",
    shortname = "hc",
    category = "halyard",
    namespaced,
    status = "HalyardClusterStatus",
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".spec.nodes"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyNodes"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Leader","type":"string","jsonPath":".status.leaderPod"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.voters % 2 == 1").message("voters must be odd (a majority of an even count tolerates no more failures than one fewer)"))]
#[serde(rename_all = "camelCase")]
pub struct HalyardClusterSpec {
    /// Container image, without the tag.
    #[serde(default = "default_image")]
    pub image: String,
    /// The Halyard version: the image's tag. Changing it rolls the cluster, one node at a time.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Nodes in the cluster, each a pod of the StatefulSet.
    #[serde(default = "default_nodes")]
    #[schemars(range(min = 1, max = 65535))]
    pub nodes: u32,
    /// How many of the nodes vote in the replicated store (odd); the rest are learners that
    /// serve clients and replicate without voting. At most `nodes` of them vote.
    #[serde(default = "default_voters")]
    #[schemars(range(min = 1, max = 7))]
    pub voters: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub service: ClientService,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub upgrade: UpgradePolicy,
    #[serde(default)]
    pub drain: DrainPolicy,
    /// While true, the operator changes nothing and reports `ReconciliationPaused`.
    #[serde(default)]
    pub paused: bool,
    /// The node's TOML configuration, merged under what the operator sets (identity, listeners,
    /// cluster membership and certificates). A change rolls the pods, one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default)]
    pub pod_template: PodOverrides,
    #[serde(default)]
    pub monitoring: Monitoring,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

fn default_nodes() -> u32 {
    3
}

fn default_voters() -> u32 {
    3
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Volume size per node, a Kubernetes quantity.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// The StorageClass; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to a removed node's volume on scale-down.
    #[serde(default)]
    pub on_scale_down: VolumeRetention,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
            on_scale_down: VolumeRetention::default(),
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumeRetention {
    /// Kept: a later scale-up finds the node's data (it rejoins as a fresh member).
    #[default]
    Retain,
    Delete,
}

/// One client listener: its container port and whether it is served.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub enabled: bool,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// MQTT over TCP.
    #[serde(default = "mqtt_listener")]
    pub mqtt: Listener,
    /// MQTT over TLS with X.509 client certificates (8883).
    #[serde(default = "mqtts_listener")]
    pub mqtts: Listener,
    /// MQTT, HTTPS and WebSocket by ALPN on one TLS port, as AWS IoT's 443.
    #[serde(default = "tls_listener")]
    pub tls: Listener,
    /// The AWS-shaped HTTP API (SigV4).
    #[serde(default = "http_listener")]
    pub http: Listener,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            mqtt: mqtt_listener(),
            mqtts: mqtts_listener(),
            tls: tls_listener(),
            http: http_listener(),
        }
    }
}

fn mqtt_listener() -> Listener {
    Listener {
        enabled: true,
        port: 1883,
    }
}

fn mqtts_listener() -> Listener {
    Listener {
        enabled: true,
        port: 8883,
    }
}

fn tls_listener() -> Listener {
    Listener {
        enabled: true,
        port: 8443,
    }
}

fn http_listener() -> Listener {
    Listener {
        enabled: true,
        port: 8080,
    }
}

/// The Service that clients connect through.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientService {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `Local` keeps the client's address visible to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// Service port per enabled listener, when it differs from the container port (for
    /// example 443 for `tls`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    #[serde(default)]
    pub mode: TlsMode,
    /// With `certManager`: the issuer of the node and server certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// With `secrets`: Secrets that exist already, each with `tls.crt`, `tls.key` and `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<ExistingSecrets>,
    /// Lifetime of the CA that signs node certificates (managed mode).
    #[serde(default = "default_ca_days")]
    #[schemars(range(min = 1))]
    pub ca_validity_days: u32,
    /// Lifetime of node and server certificates.
    #[serde(default = "default_cert_days")]
    #[schemars(range(min = 1))]
    pub cert_validity_days: u32,
    /// A certificate this close to its end is reissued; the CA this close to its end is
    /// rotated (trust both, reissue, drop the old).
    #[serde(default = "default_renew_days")]
    #[schemars(range(min = 1))]
    pub renew_before_days: u32,
    /// Extra DNS names in the server certificate devices see (the public endpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: TlsMode::default(),
            issuer_ref: None,
            secrets: None,
            ca_validity_days: default_ca_days(),
            cert_validity_days: default_cert_days(),
            renew_before_days: default_renew_days(),
            server_names: Vec::new(),
        }
    }
}

fn default_ca_days() -> u32 {
    3650
}

fn default_cert_days() -> u32 {
    90
}

fn default_renew_days() -> u32 {
    30
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// The operator keeps a CA and issues and renews every certificate.
    #[default]
    Managed,
    /// cert-manager issues them from `issuerRef`.
    CertManager,
    /// The Secrets named in `secrets`, renewed by their owner.
    Secrets,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExistingSecrets {
    /// The certificate every node presents to the others (mutual TLS, QUIC).
    pub node: String,
    /// The certificate devices see on the TLS listeners.
    pub server: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePolicy {
    /// Nodes down at once during a roll. Only 1 is supported: a node's sessions move to the
    /// others before it stops.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1))]
    pub max_unavailable: u32,
    /// A replaced node is this old, and ready, before the next one goes.
    #[serde(default = "default_min_pod_age")]
    pub min_pod_age_seconds: u32,
    /// A member this many log entries behind the leader, or fewer, is caught up.
    #[serde(default = "default_max_lag")]
    pub max_raft_lag: u64,
}

impl Default for UpgradePolicy {
    fn default() -> Self {
        UpgradePolicy {
            max_unavailable: one(),
            min_pod_age_seconds: default_min_pod_age(),
            max_raft_lag: default_max_lag(),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_min_pod_age() -> u32 {
    30
}

fn default_max_lag() -> u64 {
    1000
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainPolicy {
    /// Connections per second a draining node sends away.
    #[serde(default = "default_drain_rate")]
    #[schemars(range(min = 1))]
    pub connections_per_second: u32,
    /// How long a drain waits for clients to take their sessions over on other nodes before
    /// the node hands the rest over itself.
    #[serde(default = "default_handover_wait")]
    pub session_handover_seconds: u32,
    /// Sent to MQTT 5 clients in the DISCONNECT (Server Reference), for example the public
    /// endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_reference: Option<String>,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            connections_per_second: default_drain_rate(),
            session_handover_seconds: default_handover_wait(),
            server_reference: None,
        }
    }
}

fn default_drain_rate() -> u32 {
    500
}

fn default_handover_wait() -> u32 {
    5
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Replaces the default, which spreads nodes over hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Time a stopping node has to drain; the drain's own pace is `drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    #[serde(default)]
    pub service_monitor: ServiceMonitor,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    /// Creates a Prometheus Operator ServiceMonitor for the nodes' metrics.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_scrape_interval")]
    pub interval: String,
    /// Labels the Prometheus instance selects ServiceMonitors by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitor {
    fn default() -> Self {
        ServiceMonitor {
            enabled: false,
            interval: default_scrape_interval(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_scrape_interval() -> String {
    "15s".to_owned()
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HalyardClusterStatus {
    /// The generation of the spec this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing`, `Degraded`, `Draining`, `Upgrading`,
    /// `CertificatesRotating`, `ReconciliationPaused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The step under way, or `Done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Whether the store has formed: from then on no node forms a new one.
    #[serde(default)]
    pub formed: bool,
    #[serde(default)]
    pub ready_nodes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub pod: String,
    pub node_id: u64,
    /// `Voter` or `Learner`.
    pub role: String,
    /// Log entries behind the leader.
    pub lag: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub pod: String,
    pub node_id: u64,
    pub version: String,
    pub ready: bool,
    pub connections: u64,
    pub draining: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The Secret holding it.
    pub secret: String,
    /// `ca`, `node` or `server`.
    pub kind: String,
    pub not_after: Time,
    /// Pods that have loaded the current one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loaded_by: Vec<String>,
}

/// The CRD as the Helm chart carries it.
pub fn yaml() -> Result<String, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    let body = serde_saphyr::to_string(&HalyardCluster::crd())?;
    Ok(format!(
        "# Generated by `halyard-operator crd` from operator/src/crd.rs; do not edit.\n{body}"
    ))
}
