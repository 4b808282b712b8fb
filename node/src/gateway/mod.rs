//! Listeners: accept connections and run each one's I/O shell around the
//! broker's [`Connection`](crate::broker::Connection) state machine.

mod admission;
#[cfg(not(madsim))]
pub mod http;
#[cfg(not(madsim))]
pub mod server_cert;
mod tcp;
#[cfg(not(madsim))]
pub mod tls;
mod transport;
#[cfg(not(madsim))]
pub mod websocket;

pub use admission::{Admission, ConnectCredentials, Gate, GateFuture};
pub use tcp::{run_tcp_listener, serve_connection};
pub use transport::{BufferedStream, Transport};
