//! How a listener lets clients in: openly (with an optional policy for everyone), or through a
//! [`Gate`] that turns what the client proved (a certificate, a signed URL, a token) and what
//! its CONNECT says into access.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::permissions::{Access, Permissions};
use crate::mqtt::reason;

pub type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<Arc<Access>, u8>> + Send + 'a>>;

/// What a CONNECT offers a gate.
#[derive(Debug, Clone, Copy)]
pub struct ConnectCredentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Decides what one connection's client may do, when its CONNECT arrives.
pub trait Gate: Send + Sync {
    /// The client's access, or the reason code to refuse the CONNECT with.
    fn admit<'a>(&'a self, connect: ConnectCredentials<'a>) -> GateFuture<'a>;
}

#[derive(Clone)]
pub enum Admission {
    /// Anyone may connect; `None` allows everything, else the given permissions.
    Open(Option<Arc<Permissions>>),
    /// Nobody may connect (a listener configured without anonymous access).
    Closed,
    /// The gate decides.
    Gated(Arc<dyn Gate>),
}

impl Admission {
    /// The access a CONNECT gets (`None`: no limits at all), or the reason code to refuse it
    /// with.
    pub async fn admit(&self, connect: ConnectCredentials<'_>) -> Result<Option<Arc<Access>>, u8> {
        match self {
            Admission::Open(None) => Ok(None),
            Admission::Open(Some(permissions)) => Ok(Some(Access::anonymous(permissions.clone()))),
            Admission::Closed => Err(reason::NOT_AUTHORIZED),
            Admission::Gated(gate) => gate.admit(connect).await.map(Some),
        }
    }
}
