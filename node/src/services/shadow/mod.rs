//! Device Shadow: documents with AWS IoT's semantics.

pub mod document;
pub mod store;
