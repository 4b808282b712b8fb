//! Kubernetes operator for Halyard clusters.

fn main() {}
