//! How a listener lets clients in: openly (with an optional policy for everyone), or by an
//! identity the transport proved (a client certificate) that a [`Gate`] turns into access.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::permissions::{Access, Permissions};

pub type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<Arc<Access>, u8>> + Send + 'a>>;

/// Decides what an authenticated client may do, when its CONNECT arrives.
pub trait Gate: Send + Sync {
    /// The access of `principal` (a certificate id) connecting as `client_id`, or the reason
    /// code to refuse the CONNECT with.
    fn admit<'a>(&'a self, principal: &'a str, client_id: &'a str) -> GateFuture<'a>;
}

#[derive(Clone)]
pub enum Admission {
    /// Anyone may connect; `None` allows everything, else the given permissions.
    Open(Option<Arc<Permissions>>),
    /// Nobody may connect (a listener configured without anonymous access).
    Closed,
    /// The client proved `principal`; `gate` decides.
    Authenticated {
        principal: String,
        gate: Arc<dyn Gate>,
    },
}
