//! One `Config`: defaults, then a TOML file, then `HALYARD_*` environment
//! variables, then command-line flags. Every error names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The node's whole configuration. Field names are the TOML keys; nested
/// tables map to environment variables with `__`, e.g.
/// `HALYARD_MQTT__MAX_QUEUED_MESSAGES`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// Plain MQTT listener (TCP). Port 0 binds an ephemeral port. Every listener is an address,
    /// or `"off"` for none.
    #[serde(with = "listen")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(with = "listen")]
    pub admin_listen: Option<SocketAddr>,
    /// The AWS-compatible HTTP API (SigV4-signed), e.g. for `aws --endpoint-url`.
    #[serde(with = "listen")]
    pub http_listen: Option<SocketAddr>,
    /// MQTT over TLS for devices with X.509 client certificates.
    #[serde(with = "listen")]
    pub mqtts_listen: Option<SocketAddr>,
    /// One TLS port for everything, chosen by ALPN as AWS IoT's port 443: MQTT with a
    /// certificate (`x-amzn-mqtt-ca`) or a custom authorizer (`mqtt`), HTTPS publish with a
    /// certificate (`x-amzn-http-ca`), and HTTP (`http/1.1`, `h2`): the APIs, HTTPS publish and
    /// MQTT over WebSocket at `/mqtt`.
    #[serde(with = "listen")]
    pub tls_listen: Option<SocketAddr>,
    /// Plain HTTP with MQTT over WebSocket at `/mqtt`, for development: clients without
    /// credentials are admitted as on `mqtt_listen`.
    #[serde(with = "listen")]
    pub ws_listen: Option<SocketAddr>,
    /// Whether the plain MQTT listener lets clients in without credentials.
    pub mqtt_anonymous: bool,
    /// A policy document (JSON file) limiting what anonymous clients may do; none: anything.
    pub mqtt_anonymous_policy: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `halyard_node=debug`.
    pub log_level: String,
    /// Bearer token the admin API's cluster operations require; unset refuses them.
    pub admin_token: Option<String>,
    pub mqtt: MqttConfig,
    pub cluster: ClusterConfig,
    pub aws: AwsConfig,
    pub shadow: ShadowConfig,
    pub rules: RulesConfig,
    pub provisioning: ProvisioningConfig,
}

/// What the AWS-compatible API presents itself as, and who may call it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// The region clients sign for; it appears in every ARN.
    pub region: String,
    /// The twelve-digit account id in every ARN.
    pub account_id: String,
    /// Access keys accepted besides the generated one the `credentials` file in `data_dir`
    /// holds.
    pub access_keys: Vec<AccessKey>,
    /// Names (DNS or IP) the node's server certificate carries besides localhost and
    /// 127.0.0.1.
    pub server_names: Vec<String>,
    /// The host name devices and applications reach the cluster at, as `DescribeEndpoint`
    /// answers it; unset: the first of `server_names`, else the host the caller asked.
    pub public_host: Option<String>,
    /// PEM: a CA certificate to issue device and server certificates from, instead of the one
    /// generated on the cluster's first start. Set together with `ca_key`.
    pub ca_cert: Option<PathBuf>,
    /// PEM: the private key of `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// PEM: the certificate (and its chain) devices see on the TLS listeners, instead of one
    /// issued from the cluster's CA; read again when it changes (every `cluster.tls_check_ms`),
    /// so a renewed Secret needs no restart. Set together with `server_key`.
    pub server_cert: Option<PathBuf>,
    /// PEM: the private key of `server_cert`.
    pub server_key: Option<PathBuf>,
    /// Custom authorizer functions by ARN: the URL each is called at (an authorizer whose
    /// function ARN is itself an `http(s)://` URL needs no entry).
    pub authorizer_functions: std::collections::BTreeMap<String, String>,
    /// Built-in authorizer functions that check JSON Web Tokens, by name: an authorizer whose
    /// function ARN is `jwt:{name}` uses the settings under that name.
    pub jwt_verifiers: std::collections::BTreeMap<String, JwtVerifierConfig>,
}

/// How the built-in JWT authorizer function checks a token and what it grants.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct JwtVerifierConfig {
    /// The issuer's JSON Web Key Set, from a file ...
    pub jwks_file: Option<PathBuf>,
    /// ... or from a URL (read again every five minutes, or sooner for an unknown key id).
    pub jwks_url: Option<String>,
    /// The `iss` a token must carry, if set.
    pub issuer: Option<String>,
    /// The `aud` a token must carry, if set.
    pub audience: Option<String>,
    /// The claim that names the principal; `sub` when unset.
    pub principal_claim: Option<String>,
    /// The IoT policies (by name, from the registry) a token's holder gets; its claims are
    /// the policy variables `${jwt:claim}`.
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: "us-east-1".to_owned(),
            account_id: "000000000000".to_owned(),
            access_keys: Vec::new(),
            server_names: Vec::new(),
            public_host: None,
            ca_cert: None,
            ca_key: None,
            server_cert: None,
            server_key: None,
            authorizer_functions: std::collections::BTreeMap::new(),
            jwt_verifiers: std::collections::BTreeMap::new(),
        }
    }
}

/// The replicated store's cluster. Without `peer_listen` the node is a cluster of one.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster and never reused (1 to 65535).
    pub node_id: u64,
    /// The ordinal of this node's pod in a Kubernetes StatefulSet; when set, the node id is
    /// `ordinal + 1` (the pod label `apps.kubernetes.io/pod-index`, through the downward API).
    pub ordinal: Option<u64>,
    /// QUIC listener for the other nodes.
    pub peer_listen: Option<SocketAddr>,
    /// The address other nodes reach this one at; defaults to `peer_listen`.
    pub advertise_addr: Option<String>,
    /// Members of a new cluster, `id=host:port` separated by commas; the lowest id forms it.
    pub initial_members: Option<String>,
    /// Addresses of running members to join through, separated by commas, tried in turn.
    /// With `initial_members` too, a node listed there forms the cluster and any other joins.
    pub join: Option<String>,
    /// What a joining node becomes: a `voter` at once, or a `learner` that an operator
    /// promotes once it has caught up.
    pub join_as: JoinRole,
    /// PEM: the cluster CA that signs every node certificate.
    pub ca_cert: Option<PathBuf>,
    /// PEM: this node's certificate, signed by the cluster CA.
    pub cert: Option<PathBuf>,
    /// PEM: this node's private key.
    pub key: Option<PathBuf>,
    /// How often the three files above (and `aws.server_cert`, `aws.server_key`) are read for
    /// a change, in milliseconds: a changed certificate or CA bundle is used without a restart.
    pub tls_check_ms: u64,
    /// Leader heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// Follower silence before it stands for election, in milliseconds.
    pub election_timeout_ms: u64,
    /// Log entries between snapshots. A snapshot dumps the whole state with its watch
    /// history, so on a busy node it must be rare; the state lives in RocksDB and a restart
    /// replays nothing, so the log kept in between only costs disk.
    pub snapshot_every: u64,
    /// Revisions of watch history kept.
    pub history_revisions: u64,
    /// How long a publisher's acknowledgement waits for a peer node that has stopped
    /// answering before it is given without that node's receipt, in milliseconds.
    pub forward_timeout_ms: u64,
    /// Connections per second a drain sends away.
    pub drain_rate: u32,
    /// What a drain tells clients to use instead (MQTT 5 Server Reference), if anything.
    pub server_reference: Option<String>,
    /// How long a drain waits for the other nodes to claim the sessions it hands over, in
    /// milliseconds; what is left is in the store for whichever node the client reaches.
    pub drain_handover_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 1,
            peer_listen: None,
            advertise_addr: None,
            initial_members: None,
            join: None,
            join_as: JoinRole::Voter,
            ordinal: None,
            ca_cert: None,
            cert: None,
            key: None,
            tls_check_ms: 10_000,
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            snapshot_every: 100_000,
            history_revisions: 10_000,
            forward_timeout_ms: 3000,
            drain_rate: 500,
            server_reference: None,
            drain_handover_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    Voter,
    Learner,
}

impl ClusterConfig {
    /// `join` split into its addresses.
    pub fn join_addresses(&self) -> Vec<String> {
        self.join
            .iter()
            .flat_map(|raw| raw.split(','))
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether this node forms the cluster rather than joins it.
    pub fn forms(&self) -> Result<bool, ConfigError> {
        Ok(self.join.is_none() || self.members()?.iter().any(|(id, _)| *id == self.node_id))
    }

    /// `initial_members` parsed; errors name the key.
    pub fn members(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        let Some(raw) = &self.initial_members else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| {
                let (id, addr) =
                    part.trim()
                        .split_once('=')
                        .ok_or_else(|| ConfigError::Invalid {
                            key: "cluster.initial_members".into(),
                            message: format!("`{part}` is not id=host:port"),
                        })?;
                let id = id
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "cluster.initial_members".into(),
                        message: format!("`{id}` is not a node id (a positive integer)"),
                    })?;
                Ok((id, addr.trim().to_owned()))
            })
            .collect()
    }

    /// The address this node gives the others.
    pub fn advertised(&self) -> Option<String> {
        self.advertise_addr
            .clone()
            .or_else(|| self.peer_listen.map(|a| a.to_string()))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// MQTT protocol limits. Defaults follow AWS IoT Core's where it has one.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, in bytes, as the v5 CONNACK announces it
    /// (AWS: 149,504: a 128 KiB payload and its headers).
    pub max_packet_size: u32,
    /// Largest PUBLISH payload accepted, in bytes (AWS: 128 KiB).
    pub max_payload_size: u32,
    /// Unacknowledged QoS 2 PUBLISHes a client may have outstanding (v5 Receive Maximum).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1/2 deliveries to one client at a time (capped by its Receive Maximum).
    pub max_inflight_messages: u16,
    /// Messages held for a session beyond its in-flight window. An offline
    /// session drops what comes beyond it (counted); for a connected one the
    /// publishers feeding it are paused until it catches up.
    pub max_queued_messages: usize,
    /// Store writes (retained messages, queued copies) that may wait for a store without
    /// quorum; beyond them QoS 1/2 publishes are refused (v5: PUBACK 0x97; 3.1.1: the
    /// connection is closed; HTTPS: 503), so that nothing unwritten is acknowledged.
    pub max_pending_writes: usize,
    /// Topic and payload bytes held for a session beyond its in-flight window, as
    /// `max_queued_messages` counts messages: whichever is reached first bounds the queue.
    pub max_queued_bytes: usize,
    /// Seconds a response that waits for the store (a QoS 1/2 publish's PUBACK/PUBREC, a
    /// persistent session's SUBACK) may wait before it is refused instead (v5: PUBACK/PUBREC
    /// 0x97; otherwise the connection is closed): a node cut off from the store's quorum
    /// answers its clients rather than leaving them waiting, and never acknowledges falsely.
    pub store_wait_timeout: u16,
    /// Seconds a publisher waits for a congested subscriber before that
    /// subscriber is treated as too slow: its excess is then dropped instead.
    pub slow_subscriber_timeout: u16,
    /// Topic aliases a v5 client may use towards the broker (AWS: 8).
    pub topic_alias_maximum: u16,
    /// Longest keep-alive a client gets, in seconds (AWS: 1200); longer requests are lowered.
    pub max_keep_alive: u16,
    /// When set, every client gets this keep-alive; v5 clients are told so
    /// (Server Keep Alive), 3.1.1 clients cannot be and must ping within it.
    pub server_keep_alive: Option<u16>,
    /// How long an MQTT 3.1.1 persistent session outlives its connection, in seconds (AWS: 3600).
    pub persistent_session_expiry: u32,
    /// Upper bound for a v5 client's Session Expiry Interval, in seconds (AWS: 3600 unless
    /// raised, at most 7 days).
    pub max_session_expiry: u32,
    /// Longest topic name or filter, in bytes (AWS: 256); `$aws/` topics are exempt.
    pub max_topic_length: usize,
    /// Most levels in a topic (AWS: 8, i.e. 7 slashes); `$aws/` topics are exempt.
    pub max_topic_levels: usize,
    /// Longest client identifier, in bytes (AWS: 128).
    pub max_client_id_length: usize,
    /// Whether retained messages are accepted.
    pub retain_available: bool,
    /// Highest QoS the broker grants (0, 1 or 2; AWS IoT Core: 1).
    pub maximum_qos: u8,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u16,
    /// Whether connects, disconnects and subscriptions are published as AWS IoT lifecycle
    /// events under `$aws/events/`.
    pub lifecycle_events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            mqtt_listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            mqtts_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            tls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            ws_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            mqtt_anonymous: true,
            mqtt_anonymous_policy: None,
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            admin_token: None,
            mqtt: MqttConfig::default(),
            cluster: ClusterConfig::default(),
            aws: AwsConfig::default(),
            shadow: ShadowConfig::default(),
            rules: RulesConfig::default(),
            provisioning: ProvisioningConfig::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 149_504,
            max_payload_size: 128 * 1024,
            receive_maximum: 100,
            max_inflight_messages: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_pending_writes: 100_000,
            slow_subscriber_timeout: 5,
            store_wait_timeout: 10,
            topic_alias_maximum: 8,
            max_keep_alive: 1200,
            server_keep_alive: None,
            persistent_session_expiry: 3600,
            max_session_expiry: 3600,
            max_topic_length: 256,
            max_topic_levels: 8,
            max_client_id_length: 128,
            retain_available: true,
            maximum_qos: 2,
            connect_timeout: 10,
            lifecycle_events: true,
        }
    }
}

/// The key pairs CreateKeysAndCertificate makes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA 2048, PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), as AWS IoT returns.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// EC P-256, PKCS#8 PEM: far faster to make.
    #[serde(rename = "ec-p256")]
    EcP256,
}

/// Fleet provisioning and the keys Halyard makes for devices.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// The key pairs CreateKeysAndCertificate returns, over HTTP and MQTT.
    pub key_algorithm: KeyAlgorithm,
    /// Key pairs made ahead of demand: an RSA key takes tens of milliseconds of a core, so a
    /// burst of devices is served from the pool while it refills in the background.
    pub key_pool: usize,
    /// How long a pre-provisioning hook may take to answer before the device is refused.
    pub hook_timeout_ms: u64,
    /// Provisioning requests (MQTT) one connection may have unanswered.
    pub max_inflight_requests: u32,
    /// How long a certificate ownership token is valid (AWS: one hour); a certificate made
    /// for provisioning that no template activated or attached by then is removed.
    pub ownership_token_seconds: u64,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::Rsa2048,
            key_pool: 16,
            hook_timeout_ms: 5_000,
            max_inflight_requests: 10,
            ownership_token_seconds: 3_600,
        }
    }
}

/// Limits of the Device Shadow service, AWS IoT's by default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Bytes of `desired` and `reported` together, metadata excluded (AWS: 8 KB).
    pub max_state_bytes: usize,
    /// Levels of nesting inside `desired` or `reported` (AWS: 6).
    pub max_depth: usize,
    /// Longest `clientToken`, in bytes (AWS: 64).
    pub max_client_token_bytes: usize,
    /// MQTT requests one connection may have unanswered; beyond them a request is
    /// rejected with 429 (AWS: 10).
    pub max_inflight_requests: u32,
    /// Requests, MQTT and HTTP together, that may wait for one shadow behind the one being
    /// served; beyond them a request is rejected with 429 (ThrottlingException over HTTP).
    pub max_queued_requests: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            max_state_bytes: 8 * 1024,
            max_depth: 6,
            max_client_token_bytes: 64,
            max_inflight_requests: 10,
            max_queued_requests: 100,
        }
    }
}

/// Where the rules engine sends the actions of AWS services (s3, sqs, sns, kinesis, firehose,
/// lambda, dynamoDBv2): one AWS-compatible endpoint (MinIO, LocalStack, moto, or AWS itself),
/// requests signed with SigV4 by the keys given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// The endpoint's URL (`http://minio:9000`); unset, those actions fail into the error
    /// action.
    pub aws_endpoint: Option<String>,
    /// The region requests are signed for; unset, `aws.region`.
    pub aws_region: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    /// Where the timestream action writes (`postgres://user:password@host:5432/metrics`, or
    /// `host=... user=...`); unset, that action fails into the error action.
    pub postgres_url: Option<String>,
}

#[cfg(not(madsim))]
impl RulesConfig {
    /// The connection `postgres_url` describes, if set.
    pub fn postgres_config(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        self.postgres_url
            .as_deref()
            .map(|url| {
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| ConfigError::Invalid {
                        key: "rules.postgres_url".to_owned(),
                        message: format!("is not a PostgreSQL connection string: {e}"),
                    })
            })
            .transpose()
    }
}

/// Values given on the command line; `None` leaves the layer below in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    /// `Some(None)` turns a listener off.
    pub mqtt_listen: Option<Option<SocketAddr>>,
    pub admin_listen: Option<Option<SocketAddr>>,
    pub http_listen: Option<Option<SocketAddr>>,
    pub mqtts_listen: Option<Option<SocketAddr>>,
    pub tls_listen: Option<Option<SocketAddr>>,
    pub ws_listen: Option<Option<SocketAddr>>,
    pub log_format: Option<LogFormat>,
    pub node_id: Option<u64>,
    pub peer_listen: Option<SocketAddr>,
    pub initial_members: Option<String>,
    pub join: Option<String>,
}

const ENV_PREFIX: &str = "HALYARD_";

/// Every key an environment variable may set. Other `HALYARD_*` variables
/// are not config (Kubernetes, for one, injects `HALYARD_SERVICE_HOST` and
/// the like for a Service named halyard) and are left alone;
/// [`Config::unknown_env`] lists them for a warning.
/// What an environment variable's text is read as: a string key keeps any text as it is (an
/// account id of twelve digits stays a string), a number or a flag is parsed when it can be
/// and otherwise handed on as text, for the error to name the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Text,
    Number,
    Flag,
}

const ENV_KEYS: &[(&str, EnvKind)] = &[
    ("data_dir", EnvKind::Text),
    ("mqtt_listen", EnvKind::Text),
    ("admin_listen", EnvKind::Text),
    ("http_listen", EnvKind::Text),
    ("mqtts_listen", EnvKind::Text),
    ("tls_listen", EnvKind::Text),
    ("ws_listen", EnvKind::Text),
    ("mqtt_anonymous", EnvKind::Flag),
    ("mqtt_anonymous_policy", EnvKind::Text),
    ("log_format", EnvKind::Text),
    ("log_level", EnvKind::Text),
    ("admin_token", EnvKind::Text),
    ("mqtt.max_packet_size", EnvKind::Number),
    ("mqtt.max_payload_size", EnvKind::Number),
    ("mqtt.receive_maximum", EnvKind::Number),
    ("mqtt.max_inflight_messages", EnvKind::Number),
    ("mqtt.max_queued_messages", EnvKind::Number),
    ("mqtt.max_queued_bytes", EnvKind::Number),
    ("mqtt.max_pending_writes", EnvKind::Number),
    ("mqtt.slow_subscriber_timeout", EnvKind::Number),
    ("mqtt.store_wait_timeout", EnvKind::Number),
    ("mqtt.topic_alias_maximum", EnvKind::Number),
    ("mqtt.max_keep_alive", EnvKind::Number),
    ("mqtt.server_keep_alive", EnvKind::Number),
    ("mqtt.persistent_session_expiry", EnvKind::Number),
    ("mqtt.max_session_expiry", EnvKind::Number),
    ("mqtt.max_topic_length", EnvKind::Number),
    ("mqtt.max_topic_levels", EnvKind::Number),
    ("mqtt.max_client_id_length", EnvKind::Number),
    ("mqtt.retain_available", EnvKind::Flag),
    ("mqtt.maximum_qos", EnvKind::Number),
    ("mqtt.connect_timeout", EnvKind::Number),
    ("mqtt.lifecycle_events", EnvKind::Flag),
    ("rules.aws_endpoint", EnvKind::Text),
    ("rules.postgres_url", EnvKind::Text),
    ("rules.aws_region", EnvKind::Text),
    ("rules.aws_access_key_id", EnvKind::Text),
    ("rules.aws_secret_access_key", EnvKind::Text),
    ("provisioning.key_algorithm", EnvKind::Text),
    ("provisioning.key_pool", EnvKind::Number),
    ("provisioning.hook_timeout_ms", EnvKind::Number),
    ("provisioning.max_inflight_requests", EnvKind::Number),
    ("provisioning.ownership_token_seconds", EnvKind::Number),
    ("shadow.max_state_bytes", EnvKind::Number),
    ("shadow.max_depth", EnvKind::Number),
    ("shadow.max_client_token_bytes", EnvKind::Number),
    ("shadow.max_inflight_requests", EnvKind::Number),
    ("shadow.max_queued_requests", EnvKind::Number),
    ("cluster.node_id", EnvKind::Number),
    ("cluster.peer_listen", EnvKind::Text),
    ("cluster.advertise_addr", EnvKind::Text),
    ("cluster.initial_members", EnvKind::Text),
    ("cluster.join", EnvKind::Text),
    ("cluster.join_as", EnvKind::Text),
    ("cluster.ordinal", EnvKind::Number),
    ("cluster.ca_cert", EnvKind::Text),
    ("cluster.cert", EnvKind::Text),
    ("cluster.key", EnvKind::Text),
    ("cluster.tls_check_ms", EnvKind::Number),
    ("cluster.heartbeat_ms", EnvKind::Number),
    ("cluster.election_timeout_ms", EnvKind::Number),
    ("cluster.snapshot_every", EnvKind::Number),
    ("cluster.history_revisions", EnvKind::Number),
    ("cluster.forward_timeout_ms", EnvKind::Number),
    ("cluster.drain_rate", EnvKind::Number),
    ("cluster.server_reference", EnvKind::Text),
    ("cluster.drain_handover_ms", EnvKind::Number),
    ("aws.region", EnvKind::Text),
    ("aws.account_id", EnvKind::Text),
    ("aws.public_host", EnvKind::Text),
    ("aws.ca_cert", EnvKind::Text),
    ("aws.ca_key", EnvKind::Text),
    ("aws.server_cert", EnvKind::Text),
    ("aws.server_key", EnvKind::Text),
];

/// The config key a `HALYARD_*` variable names, if it names one, and what its value is read as.
fn env_key(name: &str) -> Option<(String, EnvKind)> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let key = rest
        .split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".");
    let kind = ENV_KEYS.iter().find(|(k, _)| *k == key)?.1;
    Some((key, kind))
}

impl Config {
    /// Builds the configuration from every layer.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if let Some((key, kind)) = env_key(&name) {
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                set_path(&mut table, &path, env_value(kind, &value));
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    key,
                    message: e.into_inner().message().to_owned(),
                }
            })?;
        if let Some(v) = &overrides.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = overrides.mqtt_listen {
            config.mqtt_listen = v;
        }
        if let Some(v) = overrides.admin_listen {
            config.admin_listen = v;
        }
        if let Some(v) = overrides.http_listen {
            config.http_listen = v;
        }
        if let Some(v) = overrides.mqtts_listen {
            config.mqtts_listen = v;
        }
        if let Some(v) = overrides.tls_listen {
            config.tls_listen = v;
        }
        if let Some(v) = overrides.ws_listen {
            config.ws_listen = v;
        }
        if let Some(v) = overrides.log_format {
            config.log_format = v;
        }
        if let Some(v) = overrides.node_id {
            config.cluster.node_id = v;
        }
        if let Some(v) = overrides.peer_listen {
            config.cluster.peer_listen = Some(v);
        }
        if let Some(v) = &overrides.initial_members {
            config.cluster.initial_members = Some(v.clone());
        }
        if let Some(v) = &overrides.join {
            config.cluster.join = Some(v.clone());
        }
        if let Some(ordinal) = config.cluster.ordinal {
            if ordinal >= 65_535 {
                return Err(ConfigError::Invalid {
                    key: "cluster.ordinal".into(),
                    message: "must be at most 65534 (the node id is ordinal + 1)".into(),
                });
            }
            config.cluster.node_id = ordinal + 1;
        }
        config.validate()?;
        Ok(config)
    }

    /// `HALYARD_*` variables that set no config key (the config file's own
    /// `HALYARD_CONFIG` aside): likely typos, worth a warning.
    pub fn unknown_env(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        env.into_iter()
            .map(|(name, _)| name)
            .filter(|name| {
                name.starts_with(ENV_PREFIX) && name != "HALYARD_CONFIG" && env_key(name).is_none()
            })
            .collect()
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if m.max_packet_size < 64 {
            return invalid("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if self.provisioning.key_pool > 1024 {
            return invalid("provisioning.key_pool", "must be at most 1024 key pairs");
        }
        if !(100..=60_000).contains(&self.provisioning.hook_timeout_ms) {
            return invalid(
                "provisioning.hook_timeout_ms",
                "must be between 100 and 60000 milliseconds",
            );
        }
        if !(1..=86_400).contains(&self.provisioning.ownership_token_seconds) {
            return invalid(
                "provisioning.ownership_token_seconds",
                "must be between 1 and 86400 seconds",
            );
        }
        if self.provisioning.max_inflight_requests == 0 {
            return invalid("provisioning.max_inflight_requests", "must be at least 1");
        }
        if m.max_packet_size > 268_435_455 {
            return invalid("mqtt.max_packet_size", "must be at most 268435455 bytes");
        }
        if m.max_payload_size == 0 || m.max_payload_size > m.max_packet_size {
            return invalid(
                "mqtt.max_payload_size",
                "must be between 1 and mqtt.max_packet_size",
            );
        }
        if m.receive_maximum == 0 {
            return invalid("mqtt.receive_maximum", "must be at least 1");
        }
        if m.max_inflight_messages == 0 {
            return invalid("mqtt.max_inflight_messages", "must be at least 1");
        }
        if m.max_queued_messages == 0 {
            return invalid("mqtt.max_queued_messages", "must be at least 1");
        }
        if m.max_pending_writes == 0 {
            return invalid("mqtt.max_pending_writes", "must be at least 1");
        }
        if (m.max_queued_bytes as u64) < u64::from(m.max_packet_size) {
            return invalid(
                "mqtt.max_queued_bytes",
                "must be at least mqtt.max_packet_size, so that one message always fits",
            );
        }
        if m.slow_subscriber_timeout == 0 {
            return invalid("mqtt.slow_subscriber_timeout", "must be at least 1 second");
        }
        if m.store_wait_timeout == 0 {
            return invalid("mqtt.store_wait_timeout", "must be at least 1 second");
        }
        if m.max_keep_alive == 0 {
            return invalid("mqtt.max_keep_alive", "must be at least 1 second");
        }
        if m.server_keep_alive.is_some_and(|k| k > m.max_keep_alive) {
            return invalid(
                "mqtt.server_keep_alive",
                "must not exceed mqtt.max_keep_alive",
            );
        }
        if m.max_topic_length == 0 || m.max_topic_length > 65_535 {
            return invalid("mqtt.max_topic_length", "must be between 1 and 65535");
        }
        if m.max_topic_levels == 0 {
            return invalid("mqtt.max_topic_levels", "must be at least 1");
        }
        if m.max_client_id_length == 0 || m.max_client_id_length > 65_535 {
            return invalid("mqtt.max_client_id_length", "must be between 1 and 65535");
        }
        if m.maximum_qos > 2 {
            return invalid("mqtt.maximum_qos", "must be 0, 1 or 2");
        }
        if m.connect_timeout == 0 {
            return invalid("mqtt.connect_timeout", "must be at least 1 second");
        }
        if self.log_level.trim().is_empty() {
            return invalid("log_level", "must not be empty");
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return invalid("admin_token", "must be at least 16 characters");
        }
        let aws = &self.aws;
        if aws.account_id.len() != 12 || !aws.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return invalid("aws.account_id", "must be twelve digits");
        }
        let region_ok = !aws.region.is_empty()
            && aws
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return invalid(
                "aws.region",
                "must be a region name such as us-east-1 (lowercase letters, digits, dashes)",
            );
        }
        for key in &aws.access_keys {
            if key.access_key_id.len() < 16 || key.secret_access_key.len() < 16 {
                return invalid(
                    "aws.access_keys",
                    "access_key_id and secret_access_key must be at least 16 characters",
                );
            }
        }
        for (arn, url) in &aws.authorizer_functions {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return invalid(
                    "aws.authorizer_functions",
                    &format!("{arn}: {url:?} is not an http:// or https:// URL"),
                );
            }
        }
        for (name, verifier) in &aws.jwt_verifiers {
            let key = format!("aws.jwt_verifiers.{name}");
            if verifier.jwks_file.is_some() == verifier.jwks_url.is_some() {
                return invalid(&key, "set exactly one of jwks_file and jwks_url");
            }
            if let Some(url) = &verifier.jwks_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return invalid(&key, "jwks_url must be an http:// or https:// URL");
            }
            if verifier.policies.is_empty() {
                return invalid(&key, "policies must name at least one policy");
            }
        }
        match (&aws.ca_cert, &aws.ca_key) {
            (Some(_), None) => return invalid("aws.ca_key", "must be set when aws.ca_cert is"),
            (None, Some(_)) => return invalid("aws.ca_cert", "must be set when aws.ca_key is"),
            _ => {}
        }
        match (&aws.server_cert, &aws.server_key) {
            (Some(_), None) => {
                return invalid("aws.server_key", "must be set when aws.server_cert is");
            }
            (None, Some(_)) => {
                return invalid("aws.server_cert", "must be set when aws.server_key is");
            }
            _ => {}
        }
        let shadow = &self.shadow;
        if shadow.max_state_bytes == 0 {
            return invalid("shadow.max_state_bytes", "must be at least 1");
        }
        if shadow.max_depth == 0 {
            return invalid("shadow.max_depth", "must be at least 1");
        }
        if shadow.max_client_token_bytes == 0 {
            return invalid("shadow.max_client_token_bytes", "must be at least 1");
        }
        if shadow.max_inflight_requests == 0 {
            return invalid("shadow.max_inflight_requests", "must be at least 1");
        }
        if shadow.max_queued_requests == 0 {
            return invalid("shadow.max_queued_requests", "must be at least 1");
        }
        let rules = &self.rules;
        #[cfg(not(madsim))]
        rules.postgres_config()?;
        if let Some(endpoint) = &rules.aws_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return invalid("rules.aws_endpoint", "must be an http:// or https:// URL");
        }
        match (&rules.aws_access_key_id, &rules.aws_secret_access_key) {
            (Some(_), None) => {
                return invalid(
                    "rules.aws_secret_access_key",
                    "must be set when rules.aws_access_key_id is",
                );
            }
            (None, Some(_)) => {
                return invalid(
                    "rules.aws_access_key_id",
                    "must be set when rules.aws_secret_access_key is",
                );
            }
            _ => {}
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if c.node_id == 0 {
            return invalid("cluster.node_id", "must be at least 1");
        }
        // Queue entries carry the id of the node that wrote them in 16 bits.
        if c.node_id > 65_535 {
            return invalid("cluster.node_id", "must be at most 65535");
        }
        if c.heartbeat_ms == 0 {
            return invalid("cluster.heartbeat_ms", "must be at least 1");
        }
        if c.election_timeout_ms < c.heartbeat_ms * 3 {
            return invalid(
                "cluster.election_timeout_ms",
                "must be at least three heartbeats (cluster.heartbeat_ms)",
            );
        }
        if c.forward_timeout_ms == 0 {
            return invalid("cluster.forward_timeout_ms", "must be at least 1");
        }
        if c.tls_check_ms == 0 {
            return invalid("cluster.tls_check_ms", "must be at least 1");
        }
        if c.drain_rate == 0 {
            return invalid(
                "cluster.drain_rate",
                "must be at least 1 connection per second",
            );
        }
        if c.snapshot_every < 10 {
            return invalid("cluster.snapshot_every", "must be at least 10 entries");
        }
        let members = c.members()?;
        if c.peer_listen.is_none() {
            if !members.is_empty() || c.join.is_some() {
                return invalid(
                    "cluster.peer_listen",
                    "is required to form or join a cluster",
                );
            }
            return Ok(());
        }
        for (key, value) in [
            ("cluster.ca_cert", &c.ca_cert),
            ("cluster.cert", &c.cert),
            ("cluster.key", &c.key),
        ] {
            if value.is_none() {
                return invalid(
                    key,
                    "is required with cluster.peer_listen (mutual TLS between nodes)",
                );
            }
        }
        if c.join.is_some() && c.join_addresses().is_empty() {
            return invalid("cluster.join", "names no address");
        }
        if c.join.is_none()
            && !members.is_empty()
            && !members.iter().any(|(id, _)| *id == c.node_id)
        {
            return invalid(
                "cluster.initial_members",
                "must include this node's cluster.node_id",
            );
        }
        Ok(())
    }
}

/// An environment value as the TOML its key takes, so `HALYARD_DATA_DIR=/var/lib/halyard`
/// needs no quotes and `HALYARD_AWS__ACCOUNT_ID=123456789012` stays a string.
fn env_value(kind: EnvKind, raw: &str) -> toml::Value {
    match kind {
        EnvKind::Number => match raw.parse::<i64>() {
            Ok(v) => toml::Value::Integer(v),
            Err(_) => toml::Value::String(raw.to_owned()),
        },
        EnvKind::Flag => match raw {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => toml::Value::String(raw.to_owned()),
        },
        EnvKind::Text => toml::Value::String(raw.to_owned()),
    }
}

/// Listener addresses: `"host:port"`, or `"off"` for no listener.
mod listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub const OFF: &str = "off";

    /// `addr`, or `None` for `off`.
    pub fn parse(raw: &str) -> Result<Option<SocketAddr>, String> {
        if raw.trim().eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        raw.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("`{raw}` is not an address such as 127.0.0.1:1883, nor `off`"))
    }

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A listener address from the command line: `host:port`, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenArg(pub Option<SocketAddr>);

impl std::str::FromStr for ListenArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        listen::parse(raw).map(ListenArg)
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mqtt_listen, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("halyard.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nmqtt_listen = \"127.0.0.1:1000\"\n[mqtt]\nmax_queued_messages = 5\nreceive_maximum = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("HALYARD_MQTT_LISTEN", "127.0.0.1:2000"),
                ("HALYARD_MQTT__MAX_QUEUED_MESSAGES", "9"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                mqtt_listen: Some(Some("127.0.0.1:3000".parse().unwrap())),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.mqtt_listen, Some("127.0.0.1:3000".parse().unwrap()));
        assert_eq!(c.mqtt.max_queued_messages, 9);
        assert_eq!(c.mqtt.receive_maximum, 7);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(
            None,
            env(&[("HALYARD_MQTT__RECEIVE_MAXIMUM", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mqtt.receive_maximum"), "{err}");

        let err = Config::load(
            None,
            env(&[("HALYARD_MQTT__RECEIVE_MAXIMUM", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mqtt.receive_maximum"), "{err}");

        let err = Config::load(
            None,
            env(&[("HALYARD_MQTT_LISTEN", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mqtt_listen"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("typo.toml");
        std::fs::write(&file, "[mqtt]\nno_such_key = 1\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn string_keys_keep_numeric_looking_values_as_strings() {
        let c = Config::load(
            None,
            env(&[
                ("HALYARD_AWS__ACCOUNT_ID", "123456789012"),
                ("HALYARD_ADMIN_TOKEN", "1234567890123456"),
                ("HALYARD_MQTT__MAX_QUEUED_MESSAGES", "42"),
                ("HALYARD_MQTT__RETAIN_AVAILABLE", "false"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.aws.account_id, "123456789012");
        assert_eq!(c.admin_token.as_deref(), Some("1234567890123456"));
        assert_eq!(c.mqtt.max_queued_messages, 42);
        assert!(!c.mqtt.retain_available);

        let err = Config::load(
            None,
            env(&[("HALYARD_MQTT__RETAIN_AVAILABLE", "maybe")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mqtt.retain_available"), "{err}");
    }

    #[test]
    fn every_listener_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("halyard.toml");
        std::fs::write(&file, "ws_listen = \"off\"\ntls_listen = \"OFF\"\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("HALYARD_MQTTS_LISTEN", "off")]),
            &Overrides {
                http_listen: Some(None),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            (c.ws_listen, c.tls_listen, c.mqtts_listen, c.http_listen),
            (None, None, None, None)
        );
        assert!(c.mqtt_listen.is_some() && c.admin_listen.is_some());
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("ws_listen = \"off\""), "{text}");

        let err = Config::load(
            None,
            env(&[("HALYARD_WS_LISTEN", "of")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ws_listen"), "{err}");
        assert!(err.to_string().contains("`off`"), "{err}");
    }

    #[test]
    fn new_bounds_are_checked_and_name_their_key() {
        for (variable, value, key) in [
            (
                "HALYARD_MQTT__MAX_QUEUED_BYTES",
                "1000",
                "mqtt.max_queued_bytes",
            ),
            (
                "HALYARD_MQTT__MAX_PENDING_WRITES",
                "0",
                "mqtt.max_pending_writes",
            ),
            (
                "HALYARD_SHADOW__MAX_QUEUED_REQUESTS",
                "0",
                "shadow.max_queued_requests",
            ),
            (
                "HALYARD_MQTT__STORE_WAIT_TIMEOUT",
                "0",
                "mqtt.store_wait_timeout",
            ),
        ] {
            let err =
                Config::load(None, env(&[(variable, value)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn mqtt_limits_default_to_aws_iot_cores() {
        let m = MqttConfig::default();
        assert_eq!(m.max_packet_size, 149_504);
        assert_eq!(m.max_session_expiry, 3600);
        assert_eq!(m.topic_alias_maximum, 8);
        assert_eq!(m.max_payload_size, 128 * 1024);
    }

    #[test]
    fn a_statefulset_pod_takes_its_node_id_from_its_ordinal() {
        let vars = env(&[
            ("HALYARD_CLUSTER__ORDINAL", "2"),
            ("HALYARD_CLUSTER__PEER_LISTEN", "0.0.0.0:7000"),
            ("HALYARD_CLUSTER__CA_CERT", "/tls/ca.crt"),
            ("HALYARD_CLUSTER__CERT", "/tls/tls.crt"),
            ("HALYARD_CLUSTER__KEY", "/tls/tls.key"),
            ("HALYARD_CLUSTER__INITIAL_MEMBERS", "1=hc-0.hc-peers:7000"),
            (
                "HALYARD_CLUSTER__JOIN",
                "hc-0.hc-peers:7000, hc-1.hc-peers:7000,",
            ),
            ("HALYARD_CLUSTER__JOIN_AS", "learner"),
        ]);
        let c = Config::load(None, vars, &Overrides::default()).unwrap();
        assert_eq!(c.cluster.node_id, 3);
        assert_eq!(c.cluster.join_as, JoinRole::Learner);
        assert_eq!(
            c.cluster.join_addresses(),
            vec!["hc-0.hc-peers:7000", "hc-1.hc-peers:7000"]
        );
        // Not among the initial members: it joins the cluster that node 1 formed.
        assert!(!c.cluster.forms().unwrap());
        let mut first = c.cluster.clone();
        first.node_id = 1;
        assert!(first.forms().unwrap());

        let err = Config::load(
            None,
            env(&[("HALYARD_CLUSTER__ORDINAL", "65535")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cluster.ordinal"), "{err}");
        let err = Config::load(
            None,
            env(&[("HALYARD_CLUSTER__JOIN_AS", "observer")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cluster.join_as"), "{err}");
        let clustered = [
            ("HALYARD_CLUSTER__PEER_LISTEN", "0.0.0.0:7000"),
            ("HALYARD_CLUSTER__CA_CERT", "/tls/ca.crt"),
            ("HALYARD_CLUSTER__CERT", "/tls/tls.crt"),
            ("HALYARD_CLUSTER__KEY", "/tls/tls.key"),
        ];
        for (variable, value, key) in [
            ("HALYARD_CLUSTER__JOIN", " , ", "cluster.join"),
            ("HALYARD_CLUSTER__TLS_CHECK_MS", "0", "cluster.tls_check_ms"),
        ] {
            let mut vars = clustered.to_vec();
            vars.push((variable, value));
            let err = Config::load(None, env(&vars), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn other_halyard_variables_are_not_config() {
        let vars = env(&[
            ("HALYARD_SERVICE_HOST", "10.0.0.1"),
            ("HALYARD_PORT_1883_TCP", "tcp://10.0.0.1:1883"),
            ("HALYARD_CONFIG", "/etc/halyard.toml"),
            ("HALYARD_MQTT__MAXIMUM_QOS", "1"),
        ]);
        let c = Config::load(None, vars.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.mqtt.maximum_qos, 1);
        assert_eq!(
            Config::unknown_env(vars),
            vec!["HALYARD_SERVICE_HOST", "HALYARD_PORT_1883_TCP"]
        );
    }

    #[test]
    fn every_key_can_be_set_from_the_environment() {
        let mut config = Config::default();
        config.mqtt.server_keep_alive = Some(60);
        config.admin_token = Some("t".repeat(16));
        let c = &mut config.cluster;
        c.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], 7001)));
        c.advertise_addr = Some("node-1:7001".into());
        c.initial_members = Some("1=node-1:7001".into());
        c.join = Some("node-2:7001".into());
        c.ordinal = Some(0);
        c.ca_cert = Some("ca.pem".into());
        c.cert = Some("node.pem".into());
        c.key = Some("node.key".into());
        c.server_reference = Some("mqtt.example.com".into());
        config.aws.ca_cert = Some("own-ca.pem".into());
        config.mqtt_anonymous_policy = Some("anonymous.json".into());
        config.aws.ca_key = Some("own-ca.key".into());
        config.aws.server_cert = Some("server.pem".into());
        config.rules.aws_endpoint = Some("http://minio:9000".into());
        config.rules.aws_region = Some("eu-west-1".into());
        config.rules.aws_access_key_id = Some("AKIA".into());
        config.rules.aws_secret_access_key = Some("secret".into());
        config.rules.postgres_url = Some("postgres://halyard@db/metrics".into());
        config.aws.server_key = Some("server.key".into());
        config.aws.public_host = Some("iot.example.com".into());
        let table = toml::Table::try_from(&config).unwrap();
        let mut keys = Vec::new();
        let kind_of = |v: &toml::Value| match v {
            toml::Value::String(_) => EnvKind::Text,
            toml::Value::Boolean(_) => EnvKind::Flag,
            _ => EnvKind::Number,
        };
        let mut kinds = Vec::new();
        for (k, v) in &table {
            match v {
                toml::Value::Table(inner) => {
                    for (i, value) in inner {
                        keys.push(format!("{k}.{i}"));
                        kinds.push((format!("{k}.{i}"), kind_of(value)));
                    }
                }
                _ => {
                    keys.push(k.clone());
                    kinds.push((k.clone(), kind_of(v)));
                }
            }
        }
        // Each variable is read as what its key holds.
        for (key, kind) in kinds {
            if let Some((_, listed)) = ENV_KEYS.iter().find(|(k, _)| *k == key) {
                assert_eq!(*listed, kind, "{key}");
            }
        }
        // Lists have no one-variable form; they are set in the config file.
        keys.retain(|k| {
            k != "aws.access_keys"
                && k != "aws.server_names"
                && k != "aws.authorizer_functions"
                && k != "aws.jwt_verifiers"
        });
        keys.sort();
        let mut listed: Vec<String> = ENV_KEYS.iter().map(|(k, _)| (*k).to_owned()).collect();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn a_ca_certificate_needs_its_key() {
        let only_cert = [("HALYARD_AWS__CA_CERT".to_owned(), "ca.pem".to_owned())];
        let err = Config::load(None, only_cert, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("aws.ca_key"), "{err}");
        let only_key = [("HALYARD_AWS__CA_KEY".to_owned(), "ca.key".to_owned())];
        let err = Config::load(None, only_key, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("aws.ca_cert"), "{err}");
    }

    #[test]
    fn a_server_certificate_needs_its_key() {
        let only_cert = [("HALYARD_AWS__SERVER_CERT".to_owned(), "tls.crt".to_owned())];
        let err = Config::load(None, only_cert, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("aws.server_key"), "{err}");
        let only_key = [("HALYARD_AWS__SERVER_KEY".to_owned(), "tls.key".to_owned())];
        let err = Config::load(None, only_key, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("aws.server_cert"), "{err}");
    }

    #[test]
    fn aws_settings_are_checked_and_name_their_key() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
        let c = load(&[("HALYARD_AWS__REGION", "eu-west-3")]).unwrap();
        assert_eq!(c.aws.region, "eu-west-3");
        assert_eq!(c.aws.account_id, "000000000000");
        let err = load(&[("HALYARD_AWS__ACCOUNT_ID", "12345")]).unwrap_err();
        assert!(err.to_string().contains("aws.account_id"), "{err}");
        let err = load(&[("HALYARD_AWS__REGION", "EU West")]).unwrap_err();
        assert!(err.to_string().contains("aws.region"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        std::fs::write(
            &file,
            "[[aws.access_keys]]\naccess_key_id = \"AKIASHORT\"\nsecret_access_key = \"s\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("aws.access_keys"), "{err}");
    }

    #[test]
    fn authorizer_functions_and_jwt_verifiers_are_checked_and_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("halyard.toml");
        let load = |toml: &str| {
            std::fs::write(&file, toml).unwrap();
            Config::load(Some(&file), env(&[]), &Overrides::default())
        };
        let good = load(
            "[aws.authorizer_functions]\n\"arn:aws:lambda:us-east-1:000000000000:function:f\" = \"http://auth:8000/\"\n\
             [aws.jwt_verifiers.fleet]\njwks_url = \"https://idp/jwks.json\"\npolicies = [\"p\"]\n",
        )
        .unwrap();
        assert_eq!(good.aws.jwt_verifiers["fleet"].policies, ["p"]);
        for (toml, key, words) in [
            (
                "[aws.authorizer_functions]\n\"arn\" = \"ftp://x\"\n",
                "aws.authorizer_functions",
                "not an http:// or https:// URL",
            ),
            (
                "[aws.jwt_verifiers.fleet]\npolicies = [\"p\"]\n",
                "aws.jwt_verifiers.fleet",
                "exactly one of jwks_file and jwks_url",
            ),
            (
                "[aws.jwt_verifiers.fleet]\njwks_url = \"file:///x\"\npolicies = [\"p\"]\n",
                "aws.jwt_verifiers.fleet",
                "jwks_url must be an http",
            ),
            (
                "[aws.jwt_verifiers.fleet]\njwks_file = \"/x\"\n",
                "aws.jwt_verifiers.fleet",
                "at least one policy",
            ),
        ] {
            let err = load(toml).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(words), "{err}");
        }
    }

    #[test]
    fn shadow_limits_default_to_aws_and_name_their_key() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
        let c = load(&[]).unwrap();
        assert_eq!(
            (
                c.shadow.max_state_bytes,
                c.shadow.max_depth,
                c.shadow.max_client_token_bytes,
                c.shadow.max_inflight_requests
            ),
            (8192, 6, 64, 10)
        );
        let c = load(&[("HALYARD_SHADOW__MAX_STATE_BYTES", "16384")]).unwrap();
        assert_eq!(c.shadow.max_state_bytes, 16384);
        for key in [
            "max_state_bytes",
            "max_depth",
            "max_client_token_bytes",
            "max_inflight_requests",
        ] {
            let var = format!("HALYARD_SHADOW__{}", key.to_ascii_uppercase());
            let err = load(&[(var.as_str(), "0")]).unwrap_err().to_string();
            assert!(err.contains(&format!("shadow.{key}")), "{err}");
        }
    }

    #[test]
    fn cluster_settings_are_checked_and_name_their_key() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default());
        let err = load(&[("HALYARD_CLUSTER__INITIAL_MEMBERS", "1=a:1")]).unwrap_err();
        assert!(err.to_string().contains("cluster.peer_listen"), "{err}");
        let with_peer = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                ("HALYARD_CLUSTER__PEER_LISTEN", "127.0.0.1:7001"),
                ("HALYARD_CLUSTER__CA_CERT", "ca.pem"),
                ("HALYARD_CLUSTER__CERT", "n.pem"),
                ("HALYARD_CLUSTER__KEY", "n.key"),
            ];
            vars.extend_from_slice(extra);
            Config::load(None, env(&vars), &Overrides::default())
        };
        let err = with_peer(&[("HALYARD_CLUSTER__INITIAL_MEMBERS", "2=b:1,3=c:1")]).unwrap_err();
        assert!(err.to_string().contains("must include this node"), "{err}");
        let err = with_peer(&[("HALYARD_CLUSTER__INITIAL_MEMBERS", "x=b:1")]).unwrap_err();
        assert!(err.to_string().contains("cluster.initial_members"), "{err}");
        let ok = with_peer(&[("HALYARD_CLUSTER__INITIAL_MEMBERS", "1=a:1, 2=b:1")]).unwrap();
        assert_eq!(
            ok.cluster.members().unwrap(),
            vec![(1, "a:1".into()), (2, "b:1".into())]
        );
        let err = load(&[("HALYARD_CLUSTER__NODE_ID", "0")]).unwrap_err();
        assert!(err.to_string().contains("cluster.node_id"), "{err}");
        let err = load(&[("HALYARD_CLUSTER__NODE_ID", "65536")]).unwrap_err();
        assert!(err.to_string().contains("at most 65535"), "{err}");
        let err = load(&[("HALYARD_CLUSTER__FORWARD_TIMEOUT_MS", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("cluster.forward_timeout_ms"),
            "{err}"
        );
        let err = load(&[("HALYARD_CLUSTER__DRAIN_RATE", "0")]).unwrap_err();
        assert!(err.to_string().contains("cluster.drain_rate"), "{err}");
        let err = load(&[("HALYARD_ADMIN_TOKEN", "short")]).unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
    }

    #[test]
    fn bad_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "mqtt = [").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let missing = dir.path().join("missing.toml");
        let err = Config::load(Some(&missing), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
