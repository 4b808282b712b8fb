//! Listeners: accept connections and run each one's I/O shell around the
//! broker's [`Connection`](crate::broker::Connection) state machine.

mod tcp;
mod transport;

pub use tcp::{run_tcp_listener, serve_connection};
pub use transport::Transport;
