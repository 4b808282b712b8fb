//! The AWS IoT services on top of the broker and the store. Each subscribes and publishes
//! through the broker's public handle like any client and keeps its state in the store.

pub mod shadow;
