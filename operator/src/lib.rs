//! Kubernetes operator for Halyard clusters: the `HalyardCluster` resource and its controller.
//! [`plan`] decides; the controller observes the cluster and carries the decisions out.

#[cfg(not(madsim))]
pub mod controller;
#[cfg(not(madsim))]
pub mod crd;
#[cfg(not(madsim))]
pub mod error;
#[cfg(not(madsim))]
pub mod metrics;
#[cfg(not(madsim))]
pub mod nodes;
#[cfg(not(madsim))]
pub mod observe;
#[cfg(not(madsim))]
pub mod pki;
pub mod plan;
#[cfg(not(madsim))]
pub mod resources;
#[cfg(not(madsim))]
pub mod rotation;
#[cfg(not(madsim))]
pub mod secrets;
#[cfg(not(madsim))]
pub mod serve;
#[cfg(not(madsim))]
pub mod writes;
