//! Device Shadow: documents with AWS IoT's semantics, kept in the replicated store and served
//! over MQTT and HTTP.

pub mod document;
pub mod service;
pub mod store;
