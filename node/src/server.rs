//! Starts and stops a node: binds every listener and runs its tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::gateway;
use crate::metrics::BrokerMetrics;

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
}

/// A running node.
pub struct Server {
    broker: Broker,
    registry: Arc<Registry>,
    mqtt_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long a graceful shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Server {
    /// Binds the listeners of `config` and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let registry = Arc::new(Registry::new());
        let broker = Broker::new(config.mqtt.clone(), BrokerMetrics::new(&registry)?);
        let mqtt = bind("mqtt", config.mqtt_listen).await?;
        let admin = bind("admin", config.admin_listen).await?;
        let mqtt_addr = local_addr("mqtt", &mqtt, config.mqtt_listen)?;
        let admin_addr = local_addr("admin", &admin, config.admin_listen)?;
        let (shutdown, watch_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(broker.clone().run_deadlines(watch_rx.clone())),
            tokio::spawn(gateway::run_tcp_listener(
                mqtt,
                broker.clone(),
                watch_rx.clone(),
            )),
            tokio::spawn(crate::api::admin::run(
                admin,
                Arc::clone(&registry),
                watch_rx,
            )),
        ];
        tracing::info!(listener = %"mqtt", addr = %mqtt_addr, "listening");
        tracing::info!(listener = %"admin", addr = %admin_addr, "listening");
        Ok(Server {
            broker,
            registry,
            mqtt_addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops accepting, tells every client the server is going away, and
    /// waits (bounded) for connections to close.
    pub async fn shutdown(self) {
        self.broker.begin_shutdown();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.broker.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Pending connections the kernel holds for a listener (capped by
/// `net.core.somaxconn`): a connection storm must not overflow it.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let error = |source| ServerError::Bind {
        listener,
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

fn local_addr(
    listener: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(|source| ServerError::Bind {
        listener,
        addr,
        source,
    })
}
