//! Services that answer requests published on their topics (`$aws/things/{thing}/shadow/update`
//! and the like). A request is handed to the service of the node that received it, never
//! forwarded: the service works on the replicated store, so any node answers for any thing,
//! and it answers the requester's own session, which lives here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::session::Session;

/// A message published on a service's request topic.
pub struct ServiceRequest {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The session that published it; `None` for a request that came over HTTP.
    pub requester: Option<Arc<Session>>,
}

pub trait TopicService: Send + Sync {
    /// Whether `topic` is one of this service's request topics.
    fn answers(&self, topic: &str) -> bool;

    /// Takes a request published on one of its topics. Must not block: the caller is a
    /// connection's packet loop.
    fn request(&self, request: ServiceRequest);

    /// Whether its requests are for it alone: no subscriber, tap or other node sees them (a
    /// fleet provisioning request carries a device's ownership token).
    fn private(&self) -> bool {
        false
    }
}

/// Counts a session's requests until they are answered, to hold each connection to a limit.
pub struct InFlight {
    session: Arc<Session>,
    released: AtomicBool,
}

impl InFlight {
    /// Counts one more request of `session`, unless it already has `limit` unanswered.
    pub fn begin(session: &Arc<Session>, limit: u32) -> Option<InFlight> {
        session
            .service_requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight {
            session: Arc::clone(session),
            released: AtomicBool::new(false),
        })
    }

    /// Stops counting the request: called before its answer is published, since the client
    /// may send its next request the moment the answer arrives.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.session.service_requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
    }
}
