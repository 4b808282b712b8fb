//! Who a client is, from what it proved: an X.509 certificate, a SigV4 signature made with the
//! cluster's access keys, a JSON Web Token checked against its issuer's keys, or a token
//! signed with one of a custom authorizer's keys.

pub mod jwt;
pub mod signing_key;
pub mod sigv4;
pub mod x509;
