//! Listeners: accept connections and run each one's I/O shell around the
//! broker's [`Connection`](crate::broker::Connection) state machine.

mod admission;
mod tcp;
#[cfg(not(madsim))]
pub mod tls;
mod transport;

pub use admission::{Admission, Gate, GateFuture};
pub use tcp::{run_tcp_listener, serve_connection};
pub use transport::{BufferedStream, Transport};
