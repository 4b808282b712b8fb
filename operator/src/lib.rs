//! Kubernetes operator for Halyard clusters: the `HalyardCluster` resource and its controller.
//! [`plan`] decides; the controller observes the cluster and carries the decisions out.

pub mod plan;
