//! HTTP routers.

pub mod admin;
