//! Who a client is and what it may do: the AWS IoT policy language, checked when a policy is
//! stored and evaluated for every action a device takes.

#[cfg(not(madsim))]
pub mod identity;
pub mod permissions;
pub mod policy;
