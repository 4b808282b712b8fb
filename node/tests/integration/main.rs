//! The node's integration tests: real clients against servers on ephemeral ports. One test
//! binary, so that the node library is linked once.

mod broker_malformed;
mod broker_sessions;
mod broker_v311;
mod broker_v5;
mod cluster_quic;
mod common;
mod ingest;
mod operator_admin;
mod server_tls;
