//! The Kubernetes objects a `HalyardCluster` owns, built from its spec alone (no I/O): the
//! StatefulSet of nodes, the headless Service they find each other through, the Service
//! clients connect to, the PodDisruptionBudget, the node configuration, and the
//! ServiceMonitor. The controller applies them with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use crate::crd::{HalyardCluster, HalyardClusterSpec, Listener, ServiceType, TlsMode};

/// The container's name in every node pod.
pub const CONTAINER: &str = "halyard";
/// QUIC between nodes: Raft and forwarded messages.
pub const PEER_PORT: u16 = 7000;
/// Metrics, probes and the cluster operations the operator calls.
pub const ADMIN_PORT: u16 = 9090;
const DATA_DIR: &str = "/var/lib/halyard";
const CONFIG_DIR: &str = "/etc/halyard";
const CONFIG_FILE: &str = "halyard.toml";
const PEER_TLS_DIR: &str = "/etc/halyard/peer-tls";
const SERVER_TLS_DIR: &str = "/etc/halyard/server-tls";
/// The key of the admin token in its Secret.
pub const TOKEN_KEY: &str = "token";
/// The pod template annotation with the digest of the node configuration.
const CONFIG_HASH: &str = "halyard.io/config-hash";
/// The pod template annotation with the digest of the whole template, which a pod keeps.
pub const TEMPLATE_HASH: &str = "halyard.io/template-hash";
/// Tells the headless Service from the client one.
const SERVICE_ROLE: &str = "halyard.io/service";
/// Non-root, as distroless's `nonroot` user.
const USER: i64 = 65532;

/// The names of a cluster's objects, all derived from the cluster's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &HalyardCluster) -> Names {
        Names {
            cluster: cluster.metadata.name.clone().unwrap_or_default(),
            namespace: cluster
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
        }
    }

    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    pub fn peer_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }

    pub fn admin_token(&self) -> String {
        format!("{}-admin-token", self.cluster)
    }

    /// The certificate every node presents to the others (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn peer_tls(&self) -> String {
        format!("{}-peer-tls", self.cluster)
    }

    /// The certificate devices see, when cert-manager issues it.
    pub fn server_tls(&self) -> String {
        format!("{}-server-tls", self.cluster)
    }

    /// cert-manager's Certificate for the peer Secret.
    pub fn peer_certificate(&self) -> String {
        format!("{}-peer", self.cluster)
    }

    /// cert-manager's Certificate for the server Secret.
    pub fn server_certificate(&self) -> String {
        format!("{}-server", self.cluster)
    }

    /// The CA that signs the peer certificate (managed TLS); never mounted in a pod.
    pub fn peer_ca(&self) -> String {
        format!("{}-peer-ca", self.cluster)
    }

    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// A pod's stable DNS name through the headless Service.
    pub fn pod_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.peer_service(),
            self.namespace
        )
    }

    pub fn pod_admin_url(&self, ordinal: u32) -> String {
        format!("http://{}:{ADMIN_PORT}", self.pod_host(ordinal))
    }

    /// The volume claim of a pod, as the StatefulSet names it.
    pub fn volume_claim(&self, ordinal: u32) -> String {
        format!("data-{}", self.pod(ordinal))
    }
}

/// The labels every object of the cluster carries; pods are selected by them.
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "halyard".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            names.cluster.clone(),
        ),
    ])
}

fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "halyard-operator".to_owned(),
    );
    labels
}

fn owner(cluster: &HalyardCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

fn meta(cluster: &HalyardCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: owner(cluster).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The enabled client listeners: (name, listener).
fn listeners(spec: &HalyardClusterSpec) -> Vec<(&'static str, Listener)> {
    let l = &spec.listeners;
    [
        ("mqtt", l.mqtt),
        ("mqtts", l.mqtts),
        ("tls", l.tls),
        ("http", l.http),
    ]
    .into_iter()
    .filter(|(_, listener)| listener.enabled)
    .collect()
}

/// The node's configuration file: the spec's own TOML, with what the operator decides laid over
/// it. `formed` says whether the store exists already: until it does, node 1 forms it; after,
/// every node (node 1 on a fresh volume too) only joins.
pub fn node_config(
    spec: &HalyardClusterSpec,
    names: &Names,
    formed: bool,
) -> Result<String, ConfigError> {
    let mut root: toml::Table = match &spec.config {
        Some(text) => text.parse().map_err(ConfigError::Parse)?,
        None => toml::Table::new(),
    };
    let set = |table: &mut toml::Table, key: &str, value: toml::Value| {
        table.insert(key.to_owned(), value);
    };
    let text = |v: &str| toml::Value::String(v.to_owned());
    set(&mut root, "data_dir", text(DATA_DIR));
    set(
        &mut root,
        "admin_listen",
        text(&format!("0.0.0.0:{ADMIN_PORT}")),
    );
    let all = [
        ("mqtt", "mqtt_listen"),
        ("mqtts", "mqtts_listen"),
        ("tls", "tls_listen"),
        ("http", "http_listen"),
    ];
    let enabled = listeners(spec);
    for (name, key) in all {
        let value = match enabled.iter().find(|(n, _)| *n == name) {
            Some((_, l)) => format!("0.0.0.0:{}", l.port),
            None => "off".to_owned(),
        };
        set(&mut root, key, text(&value));
    }
    set(&mut root, "ws_listen", text("off"));
    let mut cluster_table = take_table(&mut root, "cluster");
    let cluster = &mut cluster_table;
    set(
        cluster,
        "peer_listen",
        text(&format!("0.0.0.0:{PEER_PORT}")),
    );
    let voters = spec.voters.min(spec.nodes).max(1);
    let addresses: Vec<String> = (0..voters.max(spec.nodes))
        .map(|o| format!("{}:{PEER_PORT}", names.pod_host(o)))
        .collect();
    if formed {
        cluster.remove("initial_members");
    } else {
        set(
            cluster,
            "initial_members",
            text(&format!(
                "1={}",
                addresses.first().cloned().unwrap_or_default()
            )),
        );
    }
    set(cluster, "join", text(&addresses.join(",")));
    set(cluster, "join_as", text("learner"));
    set(cluster, "ca_cert", text(&format!("{PEER_TLS_DIR}/ca.crt")));
    set(cluster, "cert", text(&format!("{PEER_TLS_DIR}/tls.crt")));
    set(cluster, "key", text(&format!("{PEER_TLS_DIR}/tls.key")));
    set(
        cluster,
        "drain_rate",
        toml::Value::Integer(i64::from(spec.drain.connections_per_second)),
    );
    set(
        cluster,
        "drain_handover_ms",
        toml::Value::Integer(i64::from(spec.drain.session_handover_seconds) * 1000),
    );
    match &spec.drain.server_reference {
        Some(reference) => set(cluster, "server_reference", text(reference)),
        None => {
            cluster.remove("server_reference");
        }
    }
    root.insert("cluster".to_owned(), toml::Value::Table(cluster_table));
    let mut aws = take_table(&mut root, "aws");
    if !spec.tls.server_names.is_empty() {
        set(
            &mut aws,
            "server_names",
            toml::Value::Array(spec.tls.server_names.iter().map(|n| text(n)).collect()),
        );
    }
    // A Secret-held server certificate replaces the one each node issues from the cluster CA.
    if server_tls_secret(spec, names)?.is_some() {
        set(
            &mut aws,
            "server_cert",
            text(&format!("{SERVER_TLS_DIR}/tls.crt")),
        );
        set(
            &mut aws,
            "server_key",
            text(&format!("{SERVER_TLS_DIR}/tls.key")),
        );
    }
    if !aws.is_empty() {
        root.insert("aws".to_owned(), toml::Value::Table(aws));
    }
    toml::to_string(&root).map_err(ConfigError::Serialize)
}

/// Why the node configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("spec.config is not valid TOML: {0}")]
    Parse(toml::de::Error),
    #[error("the node configuration does not serialize: {0}")]
    Serialize(toml::ser::Error),
    #[error("spec.tls.issuerRef is required when spec.tls.mode is certManager")]
    MissingIssuer,
    #[error("spec.tls.secrets is required when spec.tls.mode is secrets")]
    MissingSecrets,
}

/// The sub-table `key` taken out of `root` (empty if absent or not a table), to be put back.
fn take_table(root: &mut toml::Table, key: &str) -> toml::Table {
    match root.remove(key) {
        Some(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    }
}

pub fn config_map(cluster: &HalyardCluster, names: &Names, config: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(cluster, names, names.config_map()),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), config)])),
        ..ConfigMap::default()
    }
}

/// Where nodes find each other: every pod's DNS name, ready or not (a node must be reachable
/// by the others while it catches up, before it is ready for clients).
pub fn peer_service(cluster: &HalyardCluster, names: &Names) -> Service {
    let mut metadata = meta(cluster, names, names.peer_service());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(SERVICE_ROLE.to_owned(), "peers".to_owned());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names)),
            ports: Some(vec![
                port("peer", PEER_PORT, PEER_PORT, "UDP"),
                port("admin", ADMIN_PORT, ADMIN_PORT, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, port: u16, target: u16, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        protocol: Some(protocol.to_owned()),
        ..ServicePort::default()
    }
}

/// What clients connect to: ready nodes only, so a draining node gets no new client.
pub fn client_service(cluster: &HalyardCluster, names: &Names) -> Service {
    let spec = &cluster.spec;
    let ports = listeners(spec)
        .into_iter()
        .map(|(name, l)| {
            let exposed = spec.service.ports.get(name).copied().unwrap_or(l.port);
            port(name, exposed, l.port, "TCP")
        })
        .collect();
    let mut metadata = meta(cluster, names, names.client_service());
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    let type_ = match spec.service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector_labels(names)),
            ports: Some(ports),
            load_balancer_class: spec.service.load_balancer_class.clone(),
            external_traffic_policy: spec.service.external_traffic_policy.clone(),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one node down by choice (a node drain, a cluster autoscaler): the operator's own
/// steps take one node at a time too.
pub fn disruption_budget(cluster: &HalyardCluster, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(cluster, names, names.statefulset()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The nodes. Pods are replaced by the operator (`OnDelete`), one at a time and the store's
/// leader last, which a rolling update by ordinal cannot do; `replicas` is the operator's too.
pub fn statefulset(
    cluster: &HalyardCluster,
    names: &Names,
    replicas: u32,
    config_hash: &str,
) -> StatefulSet {
    let spec = &cluster.spec;
    let pod_labels = {
        let mut l = selector_labels(names);
        l.extend(spec.pod_template.labels.clone());
        l.extend(selector_labels(names));
        l
    };
    let mut annotations = spec.pod_template.annotations.clone();
    // A node reads its configuration file at start, so the file's digest is part of the
    // template: a changed configuration makes a changed template, which the planner rolls.
    annotations.insert(CONFIG_HASH.to_owned(), config_hash.to_owned());
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(spec, names)),
    };
    let digest = template_digest(&template);
    if let Some(annotations) = template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.insert(TEMPLATE_HASH.to_owned(), digest);
    }
    let retention = match spec.storage.on_scale_down {
        crate::crd::VolumeRetention::Retain => "Retain",
        crate::crd::VolumeRetention::Delete => "Delete",
    };
    StatefulSet {
        metadata: meta(cluster, names, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(names.peer_service()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..LabelSelector::default()
            },
            // Every pod starts at once: the store forms from node 1 and the others join it;
            // the operator orders what must be ordered.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some(retention.to_owned()),
                },
            ),
            template,
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_owned()),
                    labels: Some(selector_labels(names)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(spec.storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The image a pod of this spec runs.
pub fn image(spec: &HalyardClusterSpec) -> String {
    format!("{}:{}", spec.image, spec.version)
}

fn pod_spec(spec: &HalyardClusterSpec, names: &Names) -> PodSpec {
    let overrides = &spec.pod_template;
    // An invalid TLS spec is reported by the node configuration, made first.
    let server_tls = server_tls_secret(spec, names).ok().flatten();
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.to_owned(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    };
    let env = vec![
        EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(field("metadata.name")),
            ..EnvVar::default()
        },
        EnvVar {
            name: "HALYARD_CLUSTER__ORDINAL".to_owned(),
            value_from: Some(field("metadata.labels['apps.kubernetes.io/pod-index']")),
            ..EnvVar::default()
        },
        EnvVar {
            name: "HALYARD_CLUSTER__ADVERTISE_ADDR".to_owned(),
            value: Some(format!(
                "$(POD_NAME).{}.{}.svc:{PEER_PORT}",
                names.peer_service(),
                names.namespace
            )),
            ..EnvVar::default()
        },
        EnvVar {
            name: "HALYARD_ADMIN_TOKEN".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.admin_token(),
                    key: TOKEN_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        EnvVar {
            name: "HALYARD_LOG_FORMAT".to_owned(),
            value: Some("json".to_owned()),
            ..EnvVar::default()
        },
    ];
    let mut ports: Vec<ContainerPort> = listeners(spec)
        .into_iter()
        .map(|(name, l)| container_port(name, l.port, "TCP"))
        .collect();
    ports.push(container_port("admin", ADMIN_PORT, "TCP"));
    ports.push(container_port("peer", PEER_PORT, "UDP"));
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(image(spec)),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(vec![
            "serve".to_owned(),
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(env),
        ports: Some(ports),
        resources: spec.resources.clone(),
        // Opening the store and catching up can take a while on a large one.
        startup_probe: Some(probe("/healthz", 2, 150)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 2, 1)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            [
                mount("data", DATA_DIR),
                mount("config", CONFIG_DIR),
                mount("peer-tls", PEER_TLS_DIR),
                mount("tmp", "/tmp"),
            ]
            .into_iter()
            .chain(
                server_tls
                    .is_some()
                    .then(|| mount("server-tls", SERVER_TLS_DIR)),
            )
            .collect(),
        ),
        ..Container::default()
    };
    let affinity = overrides.affinity.clone().or_else(|| {
        Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".to_owned(),
                            label_selector: Some(LabelSelector {
                                match_labels: Some(selector_labels(names)),
                                ..LabelSelector::default()
                            }),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        })
    });
    PodSpec {
        containers: vec![container],
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        service_account_name: overrides.service_account_name.clone(),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(
            overrides.termination_grace_period_seconds.unwrap_or(120),
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(USER),
            run_as_group: Some(USER),
            fs_group: Some(USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        affinity,
        tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
        topology_spread_constraints: (!overrides.topology_spread_constraints.is_empty())
            .then(|| overrides.topology_spread_constraints.clone()),
        node_selector: (!overrides.node_selector.is_empty())
            .then(|| overrides.node_selector.clone()),
        priority_class_name: overrides.priority_class_name.clone(),
        volumes: Some(
            [
                Volume {
                    name: "config".to_owned(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: names.config_map(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "peer-tls".to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(peer_tls_secret(spec, names)),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]
            .into_iter()
            .chain(server_tls.map(|secret| Volume {
                name: "server-tls".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }))
            .collect(),
        ),
        ..PodSpec::default()
    }
}

/// The Secret holding the certificate nodes present to each other.
pub fn peer_tls_secret(spec: &HalyardClusterSpec, names: &Names) -> String {
    match (spec.tls.mode, &spec.tls.secrets) {
        (TlsMode::Secrets, Some(secrets)) => secrets.node.clone(),
        _ => names.peer_tls(),
    }
}

/// The Secret holding the certificate devices see, if one does: with managed TLS each node
/// issues its own from the cluster CA (the one device certificates chain to).
pub fn server_tls_secret(
    spec: &HalyardClusterSpec,
    names: &Names,
) -> Result<Option<String>, ConfigError> {
    match spec.tls.mode {
        TlsMode::Managed => Ok(None),
        TlsMode::CertManager => {
            if spec.tls.issuer_ref.is_none() {
                return Err(ConfigError::MissingIssuer);
            }
            Ok(Some(names.server_tls()))
        }
        TlsMode::Secrets => match &spec.tls.secrets {
            Some(secrets) => Ok(Some(secrets.server.clone())),
            None => Err(ConfigError::MissingSecrets),
        },
    }
}

/// cert-manager's Certificates for the peer and server Secrets (`certManager` TLS; none
/// otherwise). cert-manager renews them before their end, and the nodes load the renewed
/// files without a restart.
pub fn certificates(cluster: &HalyardCluster, names: &Names) -> Vec<DynamicObject> {
    let spec = &cluster.spec;
    let (TlsMode::CertManager, Some(issuer)) = (spec.tls.mode, &spec.tls.issuer_ref) else {
        return Vec::new();
    };
    let resource = certificate_resource();
    let hours = |days: u32| format!("{}h", u64::from(days) * 24);
    // cert-manager refuses a renewal window as long as the certificate's life.
    let renew_before = hours(
        spec.tls
            .renew_before_days
            .min(spec.tls.cert_validity_days.saturating_sub(1))
            .max(1),
    );
    let certificate = |name: String, secret: String, common_name: &str, dns: Vec<String>| {
        let mut object = DynamicObject::new(&name, &resource).within(&names.namespace);
        object.metadata = meta(cluster, names, name.clone());
        object.data = serde_json::json!({
            "spec": {
                "secretName": secret,
                "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
                "commonName": common_name,
                "dnsNames": dns,
                "duration": hours(spec.tls.cert_validity_days),
                "renewBefore": renew_before,
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                "secretTemplate": {"labels": selector_labels(names)},
            }
        });
        object
    };
    let service = names.client_service();
    let ns = &names.namespace;
    let mut server_names = spec.tls.server_names.clone();
    server_names.extend([
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
    ]);
    vec![
        // Nodes dial each other by one name whatever their address; the CA is what they trust.
        certificate(
            names.peer_certificate(),
            names.peer_tls(),
            "halyard node",
            vec![crate::pki::PEER_SERVER_NAME.to_owned()],
        ),
        certificate(
            names.server_certificate(),
            names.server_tls(),
            &service,
            server_names,
        ),
    ]
}

pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

fn container_port(name: &str, port: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

/// The Prometheus Operator's ServiceMonitor for the nodes' metrics, through the headless
/// Service (every node, ready or not).
pub fn service_monitor(cluster: &HalyardCluster, names: &Names) -> DynamicObject {
    let resource = service_monitor_resource();
    let monitoring = &cluster.spec.monitoring.service_monitor;
    let mut metadata = meta(cluster, names, names.cluster.clone());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.extend(monitoring.labels.clone());
    }
    let mut object = DynamicObject::new(&names.cluster, &resource).within(&names.namespace);
    object.metadata = metadata;
    object.data = serde_json::json!({
        "spec": {
            "selector": { "matchLabels": {
                "app.kubernetes.io/instance": names.cluster,
                SERVICE_ROLE: "peers",
            } },
            "namespaceSelector": { "matchNames": [names.namespace] },
            "endpoints": [{
                "port": "admin",
                "path": "/metrics",
                "interval": monitoring.interval,
            }],
        }
    });
    object
}

pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    ))
}

/// Why the objects of a cluster cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
}

/// The objects of a new cluster (`halyard-operator render`), as YAML documents.
pub fn render(cluster: &HalyardCluster) -> Result<String, RenderError> {
    let names = Names::of(cluster);
    let config = node_config(&cluster.spec, &names, false)?;
    let hash = steady_config_hash(&cluster.spec, &names)?;
    let mut documents = vec![
        serde_saphyr::to_string(&config_map(cluster, &names, config))?,
        serde_saphyr::to_string(&peer_service(cluster, &names))?,
        serde_saphyr::to_string(&client_service(cluster, &names))?,
        serde_saphyr::to_string(&disruption_budget(cluster, &names))?,
        serde_saphyr::to_string(&statefulset(cluster, &names, cluster.spec.nodes, &hash))?,
    ];
    if cluster.spec.monitoring.service_monitor.enabled {
        documents.push(serde_saphyr::to_string(&service_monitor(cluster, &names))?);
    }
    for certificate in certificates(cluster, &names) {
        documents.push(serde_saphyr::to_string(&certificate)?);
    }
    Ok(documents
        .iter()
        .map(|d| format!("---\n{d}"))
        .collect::<String>())
}

/// The digest of a pod template, as its `halyard.io/template-hash` annotation records it.
fn template_digest(template: &PodTemplateSpec) -> String {
    // Serialised maps are ordered (k8s-openapi's are `BTreeMap`s), so equal templates give
    // equal text.
    config_hash(&serde_json::to_string(template).unwrap_or_default())
}

/// The digest of the pod template that a StatefulSet's pods are made from now.
pub fn template_hash(statefulset: &StatefulSet) -> String {
    statefulset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(TEMPLATE_HASH))
        .cloned()
        .unwrap_or_default()
}

/// The digest of the configuration a node of a formed cluster reads, less what changes with
/// the cluster's shape and matters only to a node joining: node 1's `initial_members`, and the
/// `join` list, which grows with `nodes`. Forming the store or scaling rolls no pod.
pub fn steady_config_hash(spec: &HalyardClusterSpec, names: &Names) -> Result<String, ConfigError> {
    let mut config: toml::Table = node_config(spec, names, true)?
        .parse()
        .map_err(ConfigError::Parse)?;
    if let Some(toml::Value::Table(cluster)) = config.get_mut("cluster") {
        cluster.remove("join");
    }
    Ok(config_hash(&config.to_string()))
}

/// A short, stable digest of the node configuration, for the pod template's annotation.
pub fn config_hash(text: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
