//! Starts and stops a node: binds every listener and runs its tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::collections::BTreeMap;

use halyard_raft::{KvEngine, RaftTransport, Store, StoreConfig};

use crate::broker::{Broker, Durable, Remote};
use crate::config::Config;
use crate::gateway;
use crate::metrics::BrokerMetrics;
use crate::services::shadow::service::ShadowService;
use crate::services::{Service, ServiceContext, Services};
use crate::supervisor::{Health, Supervisor};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the {listener} listener to {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot open the store in {path}: {source}")]
    Engine {
        path: std::path::PathBuf,
        source: halyard_raft::engine::EngineError,
    },
    #[error("store: {0}")]
    Store(#[from] halyard_raft::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[cfg(not(madsim))]
    #[error("AWS API: {0}")]
    Aws(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running node.
pub struct Server {
    broker: Broker,
    store: Store,
    durable: Arc<Durable>,
    durable_writer: JoinHandle<()>,
    registry: Arc<Registry>,
    health: Arc<Health>,
    listeners: Listeners,
    shutdown: watch::Sender<bool>,
    tasks: Supervisor,
    services: Services,
    jobs: Arc<crate::services::jobs::Jobs>,
    drain: Arc<crate::drain::Drain>,
    /// The other nodes as the broker sees them; held here, the broker holds it weakly.
    _remote: Option<Arc<dyn Remote>>,
}

/// Where each listener is bound; `None` for one configured `off`.
#[derive(Debug, Clone, Copy, Default)]
struct Listeners {
    mqtt: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    http: Option<SocketAddr>,
    mqtts: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
}

/// How long startup waits for the store to find a leader and replay its log.
const STORE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a graceful shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts whatever answers the other nodes, once the store exists; returns its tasks.
pub type PeerServer = Box<
    dyn FnOnce(
            &Store,
            &crate::metrics::TlsMetrics,
            &Arc<crate::cluster::PeerTlsStatus>,
            watch::Receiver<bool>,
        ) -> Result<Vec<JoinHandle<()>>, ServerError>
        + Send,
>;

/// Joins the broker to the other nodes once it exists, before its sessions are restored: the
/// broker's view of them, and the task that keeps it current. `None` for a node alone.
pub type BrokerLink = Box<
    dyn FnOnce(
            &Broker,
            &Store,
            &Registry,
            watch::Receiver<bool>,
        ) -> Result<Option<(Arc<dyn Remote>, RemoteTask)>, ServerError>
        + Send,
>;

/// The task that keeps a broker's view of the other nodes current.
pub type RemoteTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Server {
    /// Opens the store in `{data_dir}/raft`, binds the listeners of `config` and starts serving.
    /// With `cluster.peer_listen` the store replicates to the other nodes over QUIC.
    #[cfg(not(madsim))]
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let db = config.data_dir.join("raft").join("db");
        let engine = halyard_raft::RocksEngine::open(&db)
            .map_err(|source| ServerError::Engine { path: db, source })?;
        let Some(peer_listen) = config.cluster.peer_listen else {
            return Self::start_standalone(config, Arc::new(engine)).await;
        };
        let cluster = &config.cluster;
        let (Some(ca), Some(cert), Some(key)) = (&cluster.ca_cert, &cluster.cert, &cluster.key)
        else {
            return Err(ServerError::Cluster(crate::cluster::ClusterError::Tls(
                "cluster.ca_cert, cluster.cert and cluster.key are required".into(),
            )));
        };
        let peer_files = crate::cluster::certs::PeerFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        let tls = peer_files.load()?;
        let expiry = (tls.cert_not_after, tls.ca_not_after);
        let loaded = tls.loaded.clone();
        let tls_check = Duration::from_millis(cluster.tls_check_ms);
        let transport = crate::cluster::QuicTransport::bind(peer_listen, tls)?;
        if let Some(addr) = transport.local_addr() {
            tracing::info!(listener = %"peer", %addr, "listening");
        }
        let endpoint = transport.endpoint();
        let inbound = crate::cluster::Inbound::default();
        let serve: PeerServer = {
            let inbound = Arc::clone(&inbound);
            let transport = Arc::clone(&transport);
            Box::new(move |store, tls_metrics, tls_status, shutdown| {
                tls_metrics.set_peer_expiry(expiry.0, expiry.1);
                tls_status.set(loaded);
                Ok(vec![
                    tokio::spawn(crate::cluster::serve_peers(
                        endpoint,
                        store.service(),
                        inbound,
                        shutdown.clone(),
                    )),
                    tokio::spawn(crate::cluster::certs::follow_peer_files(
                        peer_files,
                        transport,
                        tls_metrics.clone(),
                        Arc::clone(tls_status),
                        tls_check,
                        shutdown,
                    )),
                ])
            })
        };
        let link: BrokerLink = {
            let transport = Arc::clone(&transport);
            let forward_timeout = Duration::from_millis(cluster.forward_timeout_ms);
            Box::new(move |broker, store, registry, shutdown| {
                let (plane, task) = crate::cluster::DataPlane::start(
                    broker,
                    store,
                    transport as Arc<dyn crate::cluster::links::PeerLinks>,
                    forward_timeout,
                    registry,
                    shutdown,
                )?;
                let _ = inbound.set(Arc::clone(&plane));
                let remote: Arc<dyn Remote> = plane;
                Ok(Some((remote, Box::pin(task) as RemoteTask)))
            })
        };
        Self::start_with(config, Arc::new(engine), transport, serve, link).await
    }

    /// Starts a node that is a cluster of one, on the given storage engine.
    pub async fn start_standalone(
        config: Config,
        engine: Arc<dyn KvEngine>,
    ) -> Result<Server, ServerError> {
        let node_id = config.cluster.node_id;
        let network = halyard_raft::local::LocalNetwork::new();
        let transport = network.transport(node_id);
        let register: PeerServer = Box::new(move |store, _, _, _| {
            network.register(node_id, store.service());
            Ok(Vec::new())
        });
        Self::start_with(
            config,
            engine,
            transport,
            register,
            Box::new(|_, _, _, _| Ok(None)),
        )
        .await
    }

    /// Starts on the given storage engine and peer transport; `peers` starts answering the
    /// other nodes before the store waits for a quorum.
    pub async fn start_with(
        config: Config,
        engine: Arc<dyn KvEngine>,
        transport: Arc<dyn RaftTransport>,
        peers: PeerServer,
        link: BrokerLink,
    ) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let registry = Arc::new(Registry::new());
        let raft_metrics = halyard_raft::RaftMetrics::new(&registry)?;
        let cluster = &config.cluster;
        let node_id = cluster.node_id;
        let advertised = cluster.advertised().unwrap_or_else(|| "local".to_owned());
        let mut store_config = StoreConfig::new(
            node_id,
            advertised.clone(),
            config.data_dir.join("raft").join("snapshots"),
        );
        store_config.heartbeat_interval = Duration::from_millis(cluster.heartbeat_ms);
        store_config.election_timeout = Duration::from_millis(cluster.election_timeout_ms);
        store_config.snapshot_every = cluster.snapshot_every;
        store_config.history_revisions = cluster.history_revisions;
        let store = Store::open(store_config, engine, transport, raft_metrics).await?;
        let (shutdown, watch_rx) = watch::channel(false);
        let health = Health::new(&registry)?;
        let mut tasks = Supervisor::new(Arc::clone(&health));
        let peer_tls = Arc::new(crate::cluster::PeerTlsStatus::default());
        let tls_metrics = crate::metrics::TlsMetrics::new(&registry)?;
        for task in peers(&store, &tls_metrics, &peer_tls, watch_rx.clone())? {
            tasks.spawn(task);
        }
        let members = cluster.members()?;
        if !cluster.forms()? {
            let as_voter = cluster.join_as == crate::config::JoinRole::Voter;
            store
                .join(&cluster.join_addresses(), as_voter, STORE_READY_TIMEOUT)
                .await?;
        } else if members.is_empty() {
            store
                .initialize(BTreeMap::from([(node_id, advertised)]))
                .await?;
        } else if members.iter().map(|(id, _)| *id).min() == Some(node_id) {
            store.initialize(members.into_iter().collect()).await?;
        }
        tracing::info!(node_id, "waiting for the cluster's leader");
        store.wait_ready(STORE_READY_TIMEOUT).await?;
        let durable = Durable::new(store.clone(), &registry)?;
        durable.begin_life().await?;
        let broker = Broker::new(
            config.mqtt.clone(),
            BrokerMetrics::new(&registry)?,
            Some(Arc::clone(&durable)),
        );
        let remote = match link(&broker, &store, &registry, watch_rx.clone())? {
            Some((remote, task)) => {
                tasks.spawn_critical("data-plane", task);
                Some(remote)
            }
            None => None,
        };
        let retained = durable.load_retained().await?;
        let sessions = durable.load_sessions().await?;
        tracing::info!(
            retained = retained.len(),
            sessions = sessions.len(),
            revision = store.revision(),
            "restored broker state"
        );
        broker.restore(retained, sessions);
        let context = ServiceContext {
            broker: &broker,
            store: &store,
            registry: &registry,
            shutdown: &watch_rx,
        };
        let shadows = Arc::new(ShadowService::build(&context, config.shadow.clone())?);
        let presigner = config
            .rules
            .aws_access_key_id
            .clone()
            .zip(config.rules.aws_secret_access_key.clone())
            .map(
                |(access_key_id, secret_access_key)| crate::services::jobs::presign::Presigner {
                    access_key_id,
                    secret_access_key,
                    region: config
                        .rules
                        .aws_region
                        .clone()
                        .unwrap_or_else(|| config.aws.region.clone()),
                },
            );
        let jobs = Arc::new(crate::services::jobs::Jobs::build(
            &context,
            crate::services::arn::Arns::new(&config.aws.region, &config.aws.account_id),
            presigner,
        )?);
        #[allow(unused_mut)]
        let mut services = Services::start(
            vec![
                Arc::clone(&shadows) as Arc<dyn Service>,
                Arc::clone(&jobs) as Arc<dyn Service>,
            ],
            &broker,
            &mut tasks,
        );
        let durable_writer =
            tasks.spawn_critical_detached("durable-writer", Arc::clone(&durable).run());
        tasks.spawn_critical("deadlines", broker.clone().run_deadlines(watch_rx.clone()));
        let mut listeners = Listeners::default();
        let anonymous = anonymous_admission(&config)?;
        if let Some((mqtt, addr)) = bind("mqtt", config.mqtt_listen).await? {
            listeners.mqtt = Some(addr);
            tasks.spawn_critical(
                "listener:mqtt",
                gateway::run_tcp_listener(
                    mqtt,
                    broker.clone(),
                    anonymous.clone(),
                    watch_rx.clone(),
                ),
            );
        }
        let drain = crate::drain::Drain::new(
            broker.clone(),
            store.clone(),
            Arc::clone(&health),
            config.cluster.drain_rate,
            config.cluster.server_reference.clone(),
            Duration::from_millis(config.cluster.drain_handover_ms),
            &registry,
        )?;
        #[cfg(not(madsim))]
        let server_tls = crate::api::admin::ServerTls::default();
        // The admin API runs on hyper, which the simulation does not carry.
        #[cfg(not(madsim))]
        if let Some((admin, addr)) = bind("admin", config.admin_listen).await? {
            listeners.admin = Some(addr);
            tasks.spawn_critical(
                "listener:admin",
                crate::api::admin::run(
                    admin,
                    crate::api::admin::AdminState {
                        registry: Arc::clone(&registry),
                        store: store.clone(),
                        token: config.admin_token.clone(),
                        health: Arc::clone(&health),
                        drain: Arc::clone(&drain),
                        peer_tls: Arc::clone(&peer_tls),
                        server_tls: Arc::clone(&server_tls),
                    },
                    watch_rx.clone(),
                ),
            );
        }
        #[cfg(not(madsim))]
        {
            let (api, aws_services) = aws_api(
                &config, &store, &broker, &shadows, &jobs, &registry, &watch_rx,
            )
            .await?;
            let api = Arc::new(api);
            services.add(aws_services, &broker, &mut tasks);
            let engine = Arc::new(crate::services::rules::engine::RulesEngine::new(
                broker.clone(),
                crate::services::records::Records::new(store.clone()),
                shadows.as_ref().clone(),
                &config.aws.account_id,
                crate::services::rules::engine::Targets {
                    aws: config.rules.aws_endpoint.as_ref().map(|url| {
                        Arc::new(crate::services::rules::AwsEndpoint {
                            url: url.trim_end_matches('/').to_owned(),
                            region: config
                                .rules
                                .aws_region
                                .clone()
                                .unwrap_or_else(|| config.aws.region.clone()),
                            keys: config
                                .rules
                                .aws_access_key_id
                                .clone()
                                .zip(config.rules.aws_secret_access_key.clone()),
                        })
                    }),
                    postgres: config.rules.postgres_config()?.map(Arc::new),
                    keys: config
                        .rules
                        .aws_access_key_id
                        .clone()
                        .zip(config.rules.aws_secret_access_key.clone()),
                },
                crate::services::rules::engine::RuleMetrics::new(&registry)?,
                watch_rx.clone(),
            ));
            engine
                .start(&mut tasks)
                .map_err(|e| ServerError::Aws(e.to_string()))?;
            let devices: Arc<dyn gateway::tls::Devices> =
                Arc::new(crate::api::routes::DeviceServices::new(Arc::clone(&api)));
            if let Some((http, addr)) = bind("http", config.http_listen).await? {
                listeners.http = Some(addr);
                tasks.spawn_critical(
                    "listener:http",
                    crate::api::routes::run(http, Arc::clone(&api), None, watch_rx.clone()),
                );
            }
            if let Some((ws, addr)) = bind("ws", config.ws_listen).await? {
                listeners.ws = Some(addr);
                tasks.spawn_critical(
                    "listener:ws",
                    crate::api::routes::run(
                        ws,
                        Arc::clone(&api),
                        Some(anonymous.clone()),
                        watch_rx.clone(),
                    ),
                );
            }
            let served = server_certificate(&config, &tls_metrics, &mut tasks, &watch_rx)?;
            let _ = server_tls.set(Arc::clone(&served));
            let tls_config = |port| {
                gateway::tls::device_server_config(Arc::clone(&served), port)
                    .map_err(|e| ServerError::Aws(e.to_string()))
            };
            for (name, addr, port) in [
                ("mqtts", config.mqtts_listen, gateway::tls::TlsPort::Mqtt),
                ("tls", config.tls_listen, gateway::tls::TlsPort::Multiplexed),
            ] {
                let Some((listener, bound)) = bind(name, addr).await? else {
                    continue;
                };
                match port {
                    gateway::tls::TlsPort::Mqtt => listeners.mqtts = Some(bound),
                    gateway::tls::TlsPort::Multiplexed => listeners.tls = Some(bound),
                }
                tasks.spawn_critical(
                    &format!("listener:{name}"),
                    gateway::tls::run_tls_listener(
                        listener,
                        tls_config(port)?,
                        port,
                        broker.clone(),
                        Arc::clone(&devices),
                        watch_rx.clone(),
                    ),
                );
            }
            tasks.spawn_critical(
                "registry-follower",
                crate::admission::follow_registry(Arc::clone(&api.admission), watch_rx.clone()),
            );
        }
        health.set_serving();
        Ok(Server {
            broker,
            store,
            durable,
            durable_writer,
            registry,
            health,
            listeners,
            shutdown,
            tasks,
            services,
            jobs,
            drain,
            _remote: remote,
        })
    }

    /// Where the plain MQTT listener is bound; `None` when it is off.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.listeners.mqtt
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.http
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.listeners.mqtts
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listeners.tls
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.listeners.ws
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.listeners.admin
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The jobs service of this node.
    pub fn jobs(&self) -> &crate::services::jobs::Jobs {
        &self.jobs
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Why the node is not ready; empty when it is.
    pub fn unready_reasons(&self) -> Vec<String> {
        self.health.reasons(Some(&self.store.status()))
    }

    /// Leaves the cluster in order (see `drain`): clients sent to other nodes, offline
    /// sessions handed over, the store's leadership given up. The node keeps running.
    pub async fn drain(&self) -> crate::drain::Drained {
        self.drain.run().await
    }

    /// See [`crate::drain::Drain::status`].
    pub fn drain_status(&self) -> crate::drain::DrainStatus {
        self.drain.status()
    }

    /// Whether the node is part of a cluster of more than one node.
    pub fn is_clustered(&self) -> bool {
        self._remote.is_some() && self.store.status().members.len() > 1
    }

    /// Stops accepting, tells every client the server is going away, and
    /// waits (bounded) for connections to close.
    pub async fn shutdown(self) {
        self.health.begin_shutdown();
        self.broker.begin_shutdown();
        let _ = self.shutdown.send(true);
        self.tasks.join().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.broker.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.durable.flush(SHUTDOWN_GRACE).await {
            tracing::warn!("shutting down with broker state not yet persisted");
        }
        self.durable.stop();
        let _ = self.durable_writer.await;
        self.services.stop();
        self.store.shutdown().await;
    }
}

/// How the plain listener admits clients: openly (limited by `mqtt_anonymous_policy` if
/// set) or not at all.
fn anonymous_admission(config: &Config) -> Result<gateway::Admission, ServerError> {
    if !config.mqtt_anonymous {
        return Ok(gateway::Admission::Closed);
    }
    let Some(path) = &config.mqtt_anonymous_policy else {
        return Ok(gateway::Admission::Open(None));
    };
    let invalid = |message: String| {
        ServerError::Config(crate::config::ConfigError::Invalid {
            key: "mqtt_anonymous_policy".into(),
            message,
        })
    };
    let document = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let policy = crate::auth::policy::Policy::parse(&document)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let mut context = crate::auth::policy::Context::new();
    context.set("iot:Connection.Thing.IsAttached", "false");
    let prefix = format!(
        "arn:aws:iot:{}:{}:",
        config.aws.region, config.aws.account_id
    );
    let permissions = crate::auth::permissions::Permissions::compile([&policy], &context, &prefix);
    Ok(gateway::Admission::Open(Some(Arc::new(permissions))))
}

/// Pending connections the kernel holds for a listener (capped by `net.core.somaxconn`): a
/// connection storm must not overflow it.
#[cfg(not(madsim))]
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `listener` at `addr`, unless it is off; the listener and the address it got.
async fn bind(
    listener: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, ServerError> {
    let Some(addr) = addr else {
        tracing::info!(listener, "off");
        return Ok(None);
    };
    let bound = bind_at(listener, addr).await?;
    let local = bound.local_addr().map_err(|source| ServerError::Bind {
        listener,
        addr,
        source,
    })?;
    tracing::info!(listener = %listener, addr = %local, "listening");
    Ok(Some((bound, local)))
}

async fn bind_at(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let error = |source| ServerError::Bind {
        listener,
        addr,
        source,
    };
    #[cfg(not(madsim))]
    {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(error)?;
        socket.set_reuseaddr(true).map_err(error)?;
        socket.bind(addr).map_err(error)?;
        socket.listen(LISTEN_BACKLOG).map_err(error)
    }
    #[cfg(madsim)]
    {
        TcpListener::bind(addr).await.map_err(error)
    }
}

/// The certificate the TLS listeners present: `aws.server_cert` and `aws.server_key`,
/// followed for changes, or else the one issued to this node from the cluster CA (written
/// to `{data_dir}/tls/` by [`aws_api`]).
#[cfg(not(madsim))]
fn server_certificate(
    config: &Config,
    metrics: &crate::metrics::TlsMetrics,
    tasks: &mut Supervisor,
    shutdown: &watch::Receiver<bool>,
) -> Result<Arc<gateway::server_cert::ServerCertificate>, ServerError> {
    use gateway::server_cert::{ServerCertificate, ServerFiles};
    let tls_dir = config.data_dir.join("tls");
    let (files, follow) = match (&config.aws.server_cert, &config.aws.server_key) {
        (Some(certificate), Some(key)) => (
            ServerFiles {
                certificate: certificate.clone(),
                key: key.clone(),
            },
            true,
        ),
        _ => (
            ServerFiles {
                certificate: tls_dir.join("server.pem"),
                key: tls_dir.join("server.key"),
            },
            false,
        ),
    };
    let served = ServerCertificate::load(&files).map_err(|e| ServerError::Aws(e.to_string()))?;
    metrics.set_expiry("server", served.loaded().not_after);
    if follow {
        let check = Duration::from_millis(config.cluster.tls_check_ms);
        tasks.spawn(tokio::spawn(gateway::server_cert::follow(
            files,
            Arc::clone(&served),
            metrics.clone(),
            check,
            shutdown.clone(),
        )));
    }
    Ok(served)
}

/// The AWS services of this node and the HTTP API in front of them. The cluster's access
/// keys and CA are loaded (or, on the cluster's first start, created) first, and
/// `{data_dir}/credentials` and `{data_dir}/tls/` written.
#[cfg(not(madsim))]
async fn aws_api(
    config: &Config,
    store: &Store,
    broker: &Broker,
    shadows: &crate::services::shadow::service::ShadowService,
    jobs: &crate::services::jobs::Jobs,
    metrics: &prometheus::Registry,
    shutdown: &watch::Receiver<bool>,
) -> Result<(crate::api::aws::Api, Vec<Arc<dyn Service>>), ServerError> {
    use crate::admission::DeviceAdmission;
    use crate::admission::custom_auth::{AuthorizerMetrics, CustomAuth};
    use crate::api::aws::{Api, ApiMetrics};
    use crate::api::iot::ControlPlane;
    use crate::api::iot_data::DataPlane;
    use crate::services::arn::Arns;
    use crate::services::authorizers::Authorizers;
    use crate::services::certs::{Certificates, authority};
    use crate::services::credentials;
    use crate::services::policies::Policies;
    use crate::services::records::Records;
    use crate::services::registry::Registry;

    let aws = &config.aws;
    let failed = |e: crate::services::error::Error| ServerError::Aws(e.to_string());
    let records = Records::new(store.clone());
    let keys = credentials::load(&records, &config.data_dir, &aws.access_keys)
        .await
        .map_err(failed)?;
    let ca = authority::load(&records, &config.data_dir, aws)
        .await
        .map_err(failed)?;
    let arns = Arns::new(&aws.region, &aws.account_id);
    let key_pool = crate::services::certs::keygen::KeyPool::new(
        config.provisioning.key_algorithm,
        config.provisioning.key_pool,
    );
    let certs = Certificates::new(records.clone(), arns.clone(), ca, key_pool).map_err(failed)?;
    let registry = Registry::new(
        records.clone(),
        arns.clone(),
        certs.clone(),
        broker.clone(),
        &aws.account_id,
    );
    let policies = Policies::new(
        records.clone(),
        arns.clone(),
        registry.clone(),
        certs.clone(),
    );
    let rules = crate::services::rules::Rules::new(records.clone(), arns.clone());
    let authorizers = Authorizers::new(
        records.clone(),
        arns.clone(),
        aws.jwt_verifiers.keys().cloned(),
    );
    let custom = Arc::new(CustomAuth::new(
        authorizers.clone(),
        policies.clone(),
        arns.clone(),
        aws,
        AuthorizerMetrics::new(metrics)?,
    ));
    let provisioning = crate::services::provisioning::Provisioning::new(
        crate::services::provisioning::Parts {
            records: records.clone(),
            arns: arns.clone(),
            registry: registry.clone(),
            certs: certs.clone(),
            policies: policies.clone(),
            broker: broker.clone(),
            config: config.provisioning.clone(),
            account_id: aws.account_id.clone(),
            region: aws.region.clone(),
            metrics: crate::metrics::ProvisioningMetrics::new(metrics)?,
        },
        shutdown.clone(),
    );
    let index = crate::services::index::FleetIndex::new(
        store.clone(),
        broker.clone(),
        crate::metrics::IndexMetrics::new(metrics)?,
        shutdown.clone(),
    );
    let admission = Arc::new(DeviceAdmission::new(
        records,
        arns,
        certs.clone(),
        policies.clone(),
        Arc::clone(&custom),
        provisioning.clone(),
    ));
    let api = Api::new(
        ControlPlane {
            registry,
            certs,
            policies,
            authorizers,
            rules,
            jobs: jobs.clone(),
            provisioning: provisioning.clone(),
            index: index.clone(),
            custom,
            config: aws.clone(),
        },
        DataPlane {
            broker: broker.clone(),
            shadows: shadows.clone(),
            jobs: jobs.clone(),
        },
        admission,
        keys,
        ApiMetrics::new(metrics)?,
    );
    Ok((
        api,
        vec![
            Arc::new(provisioning) as Arc<dyn Service>,
            Arc::new(index) as Arc<dyn Service>,
        ],
    ))
}
