//! Deterministic simulations of Halyard clusters under faults. Everything here runs only in a
//! `RUSTFLAGS="--cfg madsim"` build (see the README); a normal build compiles an empty crate.

#![cfg(madsim)]

pub mod broker_scenario;
pub mod checker;
pub mod cluster;
pub mod cluster_broker_scenario;
pub mod harness;
pub mod jobs_scenario;
pub mod links;
pub mod mqtt_client;
pub mod operator_scenario;
pub mod shadow_scenario;
pub mod store_scenario;
pub mod transport;
