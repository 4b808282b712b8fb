//! Who a client is and what it may do: identities (`identity`), the AWS IoT policy language
//! (`policy`) compiled into a connection's permissions (`permissions`), and the admission of
//! devices from the registry and custom authorizers (`admission`).

#[cfg(not(madsim))]
pub mod admission;
#[cfg(not(madsim))]
pub mod identity;
pub mod permissions;
pub mod policy;
