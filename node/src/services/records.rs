//! The AWS resources' records in the replicated store: JSON under `aws/`, read linearizably
//! and changed by transactions conditioned on the revision that was read, so that concurrent
//! updates on any node never overwrite each other; and listings paged through them.

use halyard_raft::{Compare, CompareOp, Consistency, Op, RangeRequest, Revision, Store, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Error, Result};
use crate::store::keys::{hex, unhex};

/// A record and the revision it was last written at.
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: Revision,
}

#[derive(Clone)]
pub struct Records {
    store: Store,
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::internal(format!(
            "stored record {} is unreadable: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("cannot encode a record: {e}")))
}

/// A name stored as the value of an index key (a group's member, a thing's principal).
pub fn encode_name(name: &str) -> Vec<u8> {
    // Encoding a string as JSON cannot fail; an empty string stands in all the same.
    serde_json::to_vec(name).unwrap_or_else(|_| b"\"\"".to_vec())
}

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

/// Writes of several services committed as one transaction, each holding only while what it
/// read is unchanged: how a provisioning template creates its thing, certificate and policy
/// all or nothing. Each service stages its own records into it.
#[derive(Default)]
pub struct Batch {
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

impl Batch {
    /// The batch holds only while `key` is still as read at `revision` (0: absent).
    pub fn read(&mut self, key: &str, revision: Revision) {
        self.compares.push(unchanged_since(key, revision));
    }

    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        self.ops.push(Op::put(key, encode(value)?));
        Ok(())
    }

    pub fn ops(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }
}

impl Records {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store the records live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `reads` after one read barrier, serving every read inside from this node's applied
    /// state: each still sees every write committed before the barrier, as a linearizable
    /// read would, for one round-trip to the leader instead of one per read. Admitting a
    /// device reads its certificate, CA, thing, groups and policies this way.
    pub async fn settled<F: std::future::Future>(&self, reads: F) -> Result<F::Output> {
        self.store.read_barrier().await?;
        Ok(SETTLED.scope((), reads).await)
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>> {
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

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let got = self.store.get(key.as_bytes(), read_consistency()).await?;
        Ok(got.kv.is_some())
    }

    /// Writes `value` at `key` if the key does not exist; whether it was written.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool> {
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
    ) -> Result<bool> {
        let txn = Txn::new()
            .when([unchanged_since(key, read_at)])
            .and_then([Op::put(key, encode(value)?)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes `key` if it has not changed since `read_at`; whether it was deleted.
    pub async fn delete(&self, key: &str, read_at: Revision) -> Result<bool> {
        let txn = Txn::new()
            .when([unchanged_since(key, read_at)])
            .and_then([Op::delete(key)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Changes under `prefix` from the next revision on.
    pub fn watch(&self, prefix: &str) -> Result<halyard_raft::WatchStream> {
        Ok(self.store.watch(prefix.as_bytes().to_vec(), None)?)
    }

    /// Commits `batch`; whether all it read was unchanged, and so it was written.
    pub async fn commit(&self, batch: Batch) -> Result<bool> {
        let txn = Txn::new().when(batch.compares).and_then(batch.ops);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Runs `txn` as it is.
    pub async fn txn(&self, txn: Txn) -> Result<halyard_raft::TxnResult> {
        Ok(self.store.txn(txn).await?)
    }

    /// Up to `limit` records under `prefix` after the key `after`, in key order; whether more
    /// follow.
    pub async fn page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, T)>, bool)> {
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
            .collect::<Result<Vec<_>>>()?;
        Ok((records, range.more))
    }

    /// Up to `limit` names stored under the index `prefix`, in key order.
    pub async fn names(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        Ok(Page::first(limit)
            .collect(self, prefix, |_: &String| true)
            .await?
            .0)
    }
}

/// One page of a listing: how many records, and after which key. Its token is opaque to
/// clients: the hex of the position the next page starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    limit: usize,
    after: Option<String>,
}

impl Page {
    pub fn first(limit: usize) -> Self {
        Self { limit, after: None }
    }

    /// The page of `limit` records after `token` (a `nextToken` handed out before).
    pub fn after_token(limit: usize, token: Option<&str>) -> Result<Self> {
        let after = match token {
            None | Some("") => None,
            Some(token) => {
                Some(unhex(token).ok_or_else(|| Error::invalid("The nextToken is invalid."))?)
            }
        };
        Ok(Self { limit, after })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Where this page starts, for listings that page over more than one prefix.
    pub fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// The token of a page starting after `position`.
    pub fn token_for(position: &str) -> String {
        hex(position)
    }

    /// The records under `prefix` that `keep` accepts, from this page's start, read from the
    /// store batch by batch; the token of the next page if more may follow.
    pub async fn collect<T: DeserializeOwned>(
        &self,
        records: &Records,
        prefix: &str,
        keep: impl Fn(&T) -> bool,
    ) -> Result<(Vec<T>, Option<String>)> {
        let mut after = self.after.as_ref().map(|a| format!("{prefix}{a}"));
        let mut found = Vec::new();
        let batch = self.limit.clamp(100, 1000);
        loop {
            let (page, more) = records.page::<T>(prefix, after.as_deref(), batch).await?;
            let count = page.len();
            for (n, (key, record)) in page.into_iter().enumerate() {
                if keep(&record) {
                    found.push(record);
                    if found.len() == self.limit {
                        let rest = n + 1 < count || more;
                        let token = rest.then(|| Self::token_for(&key[prefix.len()..]));
                        return Ok((found, token));
                    }
                }
                after = Some(key);
            }
            if !more {
                return Ok((found, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let page = Page::after_token(5, Some(&Page::token_for("thing-7"))).unwrap();
        assert_eq!(page.after(), Some("thing-7"));
        assert_eq!(page.limit(), 5);
        assert!(Page::after_token(5, Some("zz")).is_err());
        assert!(Page::after_token(5, Some("abc")).is_err());
        assert_eq!(Page::after_token(5, Some("")).unwrap(), Page::first(5));
    }

    #[test]
    fn names_are_stored_as_json_strings() {
        assert_eq!(encode_name("lamp"), br#""lamp""#.to_vec());
        assert_eq!(
            serde_json::from_slice::<String>(&encode_name("a\"b")).unwrap(),
            "a\"b"
        );
    }
}
