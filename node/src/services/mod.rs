//! The AWS IoT services on top of the broker and the store: the registry (things, types,
//! groups), certificates, policies, custom authorizers and shadows. Each takes typed requests
//! and answers with typed results and [`error::Error`]s, from the HTTP adapters in `api` or
//! through the broker's ingest path (as a [`TopicService`]), publishes through the broker's
//! public handle, and keeps its state in the store (`records`, `links`).
//!
//! A service plugs in through [`Service`]: the server builds it from the [`ServiceContext`],
//! [`Services::start`] registers its topics and starts its background tasks under the
//! supervisor, and [`Services::stop`] lets it go before the store closes.

pub mod arn;
#[cfg(not(madsim))]
pub mod authorizers;
#[cfg(not(madsim))]
pub mod certs;
#[cfg(not(madsim))]
pub mod credentials;
pub mod error;
#[cfg(not(madsim))]
pub mod index;
pub mod jobs;
#[cfg(not(madsim))]
pub mod links;
#[cfg(not(madsim))]
pub mod policies;
#[cfg(not(madsim))]
pub mod provisioning;
#[cfg(not(madsim))]
pub mod records;
#[cfg(not(madsim))]
pub mod registry;
#[cfg(not(madsim))]
pub mod rules;
pub mod shadow;

use std::sync::Arc;

use halyard_raft::Store;
use prometheus::Registry;

use crate::broker::{Broker, TopicService};
use crate::supervisor::Supervisor;

/// What a service is built from.
pub struct ServiceContext<'a> {
    pub broker: &'a Broker,
    pub store: &'a Store,
    pub registry: &'a Registry,
    /// Becomes true when the node stops: background tasks end then.
    pub shutdown: &'a tokio::sync::watch::Receiver<bool>,
}

/// One service's life on a node.
pub trait Service: Send + Sync + 'static {
    /// Its name in logs and task names.
    fn name(&self) -> &'static str;

    /// The request topics it answers through the ingest path, if any.
    fn topics(self: Arc<Self>) -> Option<Arc<dyn TopicService>> {
        None
    }

    /// Starts its background tasks; each runs until the node stops.
    fn start(self: Arc<Self>, _tasks: &mut Supervisor) {}
}

/// The services running on a node.
#[derive(Default)]
pub struct Services {
    /// The broker holds topic services weakly (they hold the broker); these keep them alive.
    running: Vec<Arc<dyn TopicService>>,
    names: Vec<&'static str>,
}

impl Services {
    /// Registers each service's topics with `broker` and starts its tasks.
    pub fn start(services: Vec<Arc<dyn Service>>, broker: &Broker, tasks: &mut Supervisor) -> Self {
        let mut started = Services::default();
        for service in services {
            let name = service.name();
            if let Some(topics) = Arc::clone(&service).topics() {
                broker.register_service(&topics);
                started.running.push(topics);
            }
            service.start(tasks);
            tracing::debug!(service = name, "service started");
            started.names.push(name);
        }
        started
    }

    /// Registers and starts more services: those built after the first ones.
    pub fn add(
        &mut self,
        services: Vec<Arc<dyn Service>>,
        broker: &Broker,
        tasks: &mut Supervisor,
    ) {
        let more = Self::start(services, broker, tasks);
        self.running.extend(more.running);
        self.names.extend(more.names);
    }

    /// The names of the running services.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Lets the services go: the broker stops handing them requests.
    pub fn stop(self) {
        drop(self.running);
    }
}
