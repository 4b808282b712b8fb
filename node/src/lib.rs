//! Halyard node: an MQTT 3.1.1/5.0 broker and device gateway, with AWS IoT
//! Core compatible services on top.
//!
//! The data path: [`gateway`] accepts connections and runs their I/O,
//! [`mqtt`] decodes bytes into packets, [`broker`] routes messages between
//! sessions. [`server`] wires them together from a [`config::Config`].

#[cfg(not(madsim))]
pub mod admission;
#[cfg(not(madsim))]
pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod file_watch;
pub mod gateway;
#[cfg(not(madsim))]
pub mod http_client;
pub mod ids;
pub mod metrics;
pub mod mqtt;
pub mod server;
pub mod services;
pub mod store;
pub mod supervisor;
