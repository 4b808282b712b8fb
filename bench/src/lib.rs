//! `halyard-bench`: an MQTT load generator that targets any broker, and a
//! runner that measures Halyard side by side with other brokers.

pub mod client;
pub mod compare;
pub mod conn;
pub mod handshakes;
pub mod index;
pub mod jobs;
pub mod provision;
pub mod pubsub;
pub mod shadow;
pub mod stats;
pub mod store;
pub mod storm;

use std::net::{IpAddr, Ipv4Addr};

/// `count` loopback source addresses 127.0.0.1, 127.0.0.2, ...: every
/// address has its own range of ephemeral ports.
pub fn loopback_sources(count: usize) -> Vec<IpAddr> {
    (1..=count.clamp(1, 254))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect()
}
