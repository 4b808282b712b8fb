//! Encoding of stored records and of the key layout inside the state column family.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::EngineError;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_stdvec(value)
        .map_err(|e| EngineError::Backend(format!("cannot encode record: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Layout of the state column family: one leading byte per record kind.
pub(crate) mod layout {
    use crate::types::{LeaseId, Revision};

    pub const KEY: u8 = b'k';
    pub const EVENT: u8 = b'e';
    pub const LEASE: u8 = b'l';
    pub const ATTACHED: u8 = b'a';

    pub const APPLIED: &[u8] = b"mapplied";
    pub const MEMBERSHIP: &[u8] = b"mmembership";
    pub const REVISION: &[u8] = b"mrevision";
    pub const COMPACTED: &[u8] = b"mcompacted";

    pub fn key(user_key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(user_key.len() + 1);
        k.push(KEY);
        k.extend_from_slice(user_key);
        k
    }

    pub fn event(revision: Revision) -> Vec<u8> {
        let mut k = vec![EVENT];
        k.extend_from_slice(&revision.to_be_bytes());
        k
    }

    pub fn lease(id: LeaseId) -> Vec<u8> {
        let mut k = vec![LEASE];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn attached(id: LeaseId, user_key: &[u8]) -> Vec<u8> {
        let mut k = attached_prefix(id);
        k.extend_from_slice(user_key);
        k
    }

    pub fn attached_prefix(id: LeaseId) -> Vec<u8> {
        let mut k = vec![ATTACHED];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }

    pub fn revision_of_event(key: &[u8]) -> Option<Revision> {
        let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
        Some(Revision::from_be_bytes(bytes))
    }
}
