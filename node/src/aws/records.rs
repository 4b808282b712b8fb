//! Registry records in the replicated store: JSON under `aws/`, read linearizably and changed
//! by transactions conditioned on the revision that was read, so that concurrent updates on
//! any node never overwrite each other.

use halyard_raft::{Compare, CompareOp, Consistency, Op, RangeRequest, Revision, Store, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::AwsError;

/// A record and the revision it was last written at.
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: Revision,
}

#[derive(Clone)]
pub struct Records {
    store: Store,
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, AwsError> {
    serde_json::from_slice(bytes).map_err(|e| {
        AwsError::internal(format!(
            "stored record {} is unreadable: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AwsError> {
    serde_json::to_vec(value)
        .map_err(|e| AwsError::internal(format!("cannot encode a record: {e}")))
}

pub use crate::store::keys::{hex, unhex};

tokio::task_local! {
    /// Set while [`Records::settled`] runs its reads.
    static SETTLED: ();
}

/// Linearizable, unless inside [`Records::settled`], whose barrier already made the node's
/// applied state current.
fn read_consistency() -> Consistency {
    if SETTLED.try_with(|_| ()).is_ok() {
        Consistency::Local
    } else {
        Consistency::Linearizable
    }
}

/// A condition that `key` was last written at `revision` (0: it does not exist).
pub fn unchanged_since(key: &str, revision: Revision) -> Compare {
    Compare::mod_revision(key.as_bytes(), CompareOp::Equal, revision)
}

impl Records {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Runs `reads` after one read barrier, serving every read inside from this node's applied
    /// state: each still sees every write committed before the barrier, as a linearizable
    /// read would, for one round-trip to the leader instead of one per read. Admitting a
    /// device reads its certificate, CA, thing, groups and policies this way.
    pub async fn settled<F: std::future::Future>(&self, reads: F) -> Result<F::Output, AwsError> {
        self.store.read_barrier().await?;
        Ok(SETTLED.scope((), reads).await)
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, AwsError> {
        let got = self.store.get(key.as_bytes(), read_consistency()).await?;
        got.kv
            .map(|kv| {
                Ok(Versioned {
                    value: decode(&kv.key, &kv.value)?,
                    mod_revision: kv.mod_revision,
                })
            })
            .transpose()
    }

    /// Writes `value` at `key` if the key does not exist; whether it was written.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool, AwsError> {
        let txn = Txn::new()
            .when([unchanged_since(key, 0)])
            .and_then([Op::put(key, encode(value)?)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Replaces `key` if it has not changed since `read_at`; whether it was written.
    pub async fn replace<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        read_at: Revision,
    ) -> Result<bool, AwsError> {
        let txn = Txn::new()
            .when([unchanged_since(key, read_at)])
            .and_then([Op::put(key, encode(value)?)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes `key` if it has not changed since `read_at`; whether it was deleted.
    pub async fn delete(&self, key: &str, read_at: Revision) -> Result<bool, AwsError> {
        let txn = Txn::new()
            .when([unchanged_since(key, read_at)])
            .and_then([Op::delete(key)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Changes under `prefix` from the next revision on.
    pub fn watch(&self, prefix: &str) -> Result<halyard_raft::WatchStream, AwsError> {
        Ok(self.store.watch(prefix.as_bytes().to_vec(), None)?)
    }

    /// Runs `txn` as it is.
    pub async fn txn(&self, txn: Txn) -> Result<halyard_raft::TxnResult, AwsError> {
        Ok(self.store.txn(txn).await?)
    }

    /// Up to `limit` records under `prefix` after the key `after`, in key order; whether more
    /// follow.
    pub async fn page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, T)>, bool), AwsError> {
        let request = RangeRequest {
            prefix: prefix.as_bytes().to_vec(),
            start_after: after.map(|a| a.as_bytes().to_vec()),
            limit,
        };
        let range = self.store.range(request, read_consistency()).await?;
        let records = range
            .kvs
            .iter()
            .map(|kv| {
                Ok((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    decode(&kv.key, &kv.value)?,
                ))
            })
            .collect::<Result<Vec<_>, AwsError>>()?;
        Ok((records, range.more))
    }
}
