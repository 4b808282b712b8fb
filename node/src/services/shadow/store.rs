//! Shadows in the replicated store, under `shadow/{thing}` (classic) and
//! `shadow/{thing}/{name}` (named), each written by a transaction on the revision it was read
//! at, so that concurrent updates on any node never lose one another.

use halyard_raft::{
    Compare, CompareOp, Consistency, Op, RangeRequest, Revision, Store, StoreError, Txn,
};

use super::document::{ShadowDocument, ShadowError, UpdateRequest, Updated};
use crate::config::ShadowConfig;

/// How often an update is retried when another one changed the shadow first.
const ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ShadowStoreError {
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored shadow {0} is unreadable")]
    Corrupt(String),
}

fn key(thing: &str, shadow: Option<&str>) -> String {
    crate::store::keys::shadow(thing, shadow)
}

/// The first attempt reads this node's applied state, which the write's comparison checks
/// anyway: a stale read costs a retry, not a lost update. Later attempts read the latest.
fn read_for(attempt: usize) -> Consistency {
    if attempt == 0 {
        Consistency::Local
    } else {
        Consistency::Linearizable
    }
}

#[derive(Clone)]
pub struct ShadowStore {
    store: Store,
    limits: ShadowConfig,
}

impl ShadowStore {
    pub fn new(store: Store, limits: ShadowConfig) -> Self {
        Self { store, limits }
    }

    /// The shadow (existing or deleted, with its version) and the revision it was read at.
    async fn read(
        &self,
        thing: &str,
        shadow: Option<&str>,
        consistency: Consistency,
    ) -> Result<(ShadowDocument, Revision), ShadowStoreError> {
        let key = key(thing, shadow);
        let got = self.store.get(key.as_bytes(), consistency).await?;
        match got.kv {
            None => Ok((ShadowDocument::default(), 0)),
            Some(kv) => Ok((
                serde_json::from_slice(&kv.value).map_err(|_| ShadowStoreError::Corrupt(key))?,
                kv.mod_revision,
            )),
        }
    }

    /// The shadow if it exists, as this node has applied it, read without waiting (the rules
    /// engine's `get_thing_shadow`).
    pub fn get_local(
        &self,
        thing: &str,
        shadow: Option<&str>,
    ) -> Result<Option<ShadowDocument>, ShadowStoreError> {
        let key = key(thing, shadow);
        let Some(kv) = self.store.get_local(key.as_bytes())?.kv else {
            return Ok(None);
        };
        let document: ShadowDocument =
            serde_json::from_slice(&kv.value).map_err(|_| ShadowStoreError::Corrupt(key))?;
        Ok(document.exists.then_some(document))
    }

    /// The shadow if it exists.
    pub async fn get(
        &self,
        thing: &str,
        shadow: Option<&str>,
    ) -> Result<Option<ShadowDocument>, ShadowStoreError> {
        let (document, _) = self.read(thing, shadow, Consistency::Linearizable).await?;
        Ok(document.exists.then_some(document))
    }

    async fn write_if_unchanged(
        &self,
        thing: &str,
        shadow: Option<&str>,
        document: &ShadowDocument,
        read_at: Revision,
    ) -> Result<bool, ShadowStoreError> {
        let key = key(thing, shadow);
        let value =
            serde_json::to_vec(document).map_err(|_| ShadowStoreError::Corrupt(key.clone()))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_bytes(),
                CompareOp::Equal,
                read_at,
            )])
            .and_then([Op::put(key, value)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Applies `request` at `timestamp`, on the version it names or on the latest.
    pub async fn update(
        &self,
        thing: &str,
        shadow: Option<&str>,
        request: &UpdateRequest,
        timestamp: u64,
    ) -> Result<Updated, ShadowStoreError> {
        for attempt in 0..ATTEMPTS {
            let (current, read_at) = self.read(thing, shadow, read_for(attempt)).await?;
            let updated = match current.update(request, timestamp, &self.limits) {
                Ok(updated) => updated,
                // A refusal is only final when it was made on the latest document.
                Err(_) if attempt == 0 => continue,
                Err(e) => return Err(e.into()),
            };
            if self
                .write_if_unchanged(thing, shadow, &updated.current, read_at)
                .await?
            {
                return Ok(updated);
            }
        }
        Err(ShadowError::version_conflict().into())
    }

    /// Deletes the shadow, keeping its version; the deleted document, or `None` if there was
    /// no shadow.
    pub async fn delete(
        &self,
        thing: &str,
        shadow: Option<&str>,
        version: Option<u64>,
    ) -> Result<Option<ShadowDocument>, ShadowStoreError> {
        for attempt in 0..ATTEMPTS {
            let (current, read_at) = self.read(thing, shadow, read_for(attempt)).await?;
            let refused = !current.exists || version.is_some_and(|v| v != current.version);
            if refused && attempt == 0 {
                continue;
            }
            if !current.exists {
                return Ok(None);
            }
            if refused {
                return Err(ShadowError::version_conflict().into());
            }
            let tombstone = ShadowDocument {
                exists: false,
                version: current.version,
                ..ShadowDocument::default()
            };
            if self
                .write_if_unchanged(thing, shadow, &tombstone, read_at)
                .await?
            {
                return Ok(Some(current));
            }
        }
        Err(ShadowError::version_conflict().into())
    }

    /// Names of the thing's named shadows that exist, in order, after `after`; whether more
    /// follow.
    pub async fn named(
        &self,
        thing: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ShadowStoreError> {
        let prefix = crate::store::keys::named_shadows(thing);
        let mut names = Vec::new();
        let mut start_after = after.map(|a| format!("{prefix}{a}").into_bytes());
        loop {
            let range = self
                .store
                .range(
                    RangeRequest {
                        prefix: prefix.as_bytes().to_vec(),
                        start_after: start_after.clone(),
                        limit: limit.max(1) * 2,
                    },
                    Consistency::Linearizable,
                )
                .await?;
            for kv in &range.kvs {
                start_after = Some(kv.key.clone());
                let exists = serde_json::from_slice::<ShadowDocument>(&kv.value)
                    .map(|d| d.exists)
                    .unwrap_or(false);
                if exists {
                    if names.len() == limit {
                        return Ok((names, true));
                    }
                    names.push(String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned());
                }
            }
            if !range.more {
                return Ok((names, false));
            }
        }
    }
}
