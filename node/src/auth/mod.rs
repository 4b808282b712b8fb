//! Who a client is and what it may do, without reference to where either is kept: identities
//! from what a client proved (`identity`), and the AWS IoT policy language (`policy`) compiled
//! into a connection's permissions (`permissions`). Deciding a device's access from the
//! registry is `admission`'s job, above the services.

#[cfg(not(madsim))]
pub mod identity;
pub mod permissions;
pub mod policy;
