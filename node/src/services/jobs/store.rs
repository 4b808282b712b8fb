//! Jobs in the replicated store. A job is `job/{id}` (with its resolved targets beside it in
//! `job-targets/{id}`); an execution is `job-exec/{thing}/{job}`, written together with its
//! status in the job's index `job-things/{job}/{thing}` and its timer `job-timer/...`, so that
//! the three never disagree. Every change of an execution is a transaction on the revision it
//! was read at: of two writers (a device and the node that times it out), one wins and the
//! other reads again.

use halyard_raft::{
    Compare, CompareOp, Consistency, KeyValue, Op, RangeRequest, Revision, Store, Txn,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::JobsError;
use super::model::{ExecutionRecord, ExecutionStatus, JobRecord, TemplateRecord};
use crate::store::keys;

/// How many keys one range read returns at most.
const RANGE_BATCH: usize = 1000;

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, JobsError> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        JobsError::Internal(format!(
            "stored record {} is unreadable: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, JobsError> {
    serde_json::to_vec(value).map_err(|e| JobsError::Internal(format!("cannot encode: {e}")))
}

pub fn unchanged_since(key: &str, revision: Revision) -> Compare {
    Compare::mod_revision(key.as_bytes(), CompareOp::Equal, revision)
}

/// A record and the revision it was last written at (0: it does not exist).
#[derive(Debug, Clone)]
pub struct Read<T> {
    pub value: T,
    pub revision: Revision,
}

#[derive(Clone)]
pub struct JobStore {
    store: Store,
}

impl JobStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn raw(&self) -> &Store {
        &self.store
    }

    async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Read<T>>, JobsError> {
        let got = self.store.get(key.as_bytes(), consistency).await?;
        got.kv
            .map(|kv| {
                Ok(Read {
                    value: decode(&kv)?,
                    revision: kv.mod_revision,
                })
            })
            .transpose()
    }

    /// Every key under `prefix` (after `after`, up to `limit`), read in batches.
    pub async fn range_all(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<KeyValue>, bool), JobsError> {
        let mut found = Vec::new();
        let mut start_after = after.map(|a| a.as_bytes().to_vec());
        loop {
            let request = RangeRequest {
                prefix: prefix.as_bytes().to_vec(),
                start_after: start_after.take(),
                limit: RANGE_BATCH.min(limit - found.len()),
            };
            let range = self.store.range(request, consistency).await?;
            let more = range.more;
            start_after = range.kvs.last().map(|kv| kv.key.clone());
            found.extend(range.kvs);
            if !more {
                return Ok((found, false));
            }
            if found.len() >= limit {
                return Ok((found, true));
            }
        }
    }

    pub async fn job(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Read<JobRecord>>, JobsError> {
        self.get(&keys::job(id), consistency).await
    }

    /// Writes a new job and its resolved targets, unless the id is taken; whether it was written.
    pub async fn create_job(&self, job: &JobRecord, targets: &[String]) -> Result<bool, JobsError> {
        let key = keys::job(&job.job_id);
        let mut ops = vec![Op::put(key.clone(), encode(job)?)];
        ops.extend(target_ops(&job.job_id, targets, 0)?);
        let txn = Txn::new().when([unchanged_since(&key, 0)]).and_then(ops);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Replaces a job read at `read_at`, with `more` ops in the same transaction.
    pub async fn replace_job(
        &self,
        job: &JobRecord,
        read_at: Revision,
        more: Vec<Op>,
    ) -> Result<bool, JobsError> {
        let key = keys::job(&job.job_id);
        let mut ops = vec![Op::put(key.clone(), encode(job)?)];
        ops.extend(more);
        let txn = Txn::new()
            .when([unchanged_since(&key, read_at)])
            .and_then(ops);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// The things a job was created for, in rollout order.
    pub async fn targets(&self, id: &str) -> Result<Vec<String>, JobsError> {
        let (chunks, _) = self
            .range_all(&keys::job_targets(id), None, usize::MAX, Consistency::Local)
            .await?;
        let mut targets = Vec::new();
        for chunk in &chunks {
            targets.extend(decode::<Vec<String>>(chunk)?);
        }
        Ok(targets)
    }

    /// Up to `limit` jobs after `after` (a job id), in id order; whether more follow.
    pub async fn jobs(
        &self,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<JobRecord>, bool), JobsError> {
        let after = after.map(keys::job);
        let (kvs, more) = self
            .range_all(keys::JOBS, after.as_deref(), limit, consistency)
            .await?;
        let jobs = kvs.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((jobs, more))
    }

    pub async fn execution(
        &self,
        thing: &str,
        job: &str,
        consistency: Consistency,
    ) -> Result<Option<Read<ExecutionRecord>>, JobsError> {
        self.get(&keys::job_execution(thing, job), consistency)
            .await
    }

    /// Every execution of `thing`.
    pub async fn executions_of_thing(
        &self,
        thing: &str,
        consistency: Consistency,
    ) -> Result<Vec<Read<ExecutionRecord>>, JobsError> {
        let (kvs, _) = self
            .range_all(
                &keys::job_executions_of_thing(thing),
                None,
                usize::MAX,
                consistency,
            )
            .await?;
        kvs.iter()
            .map(|kv| {
                Ok(Read {
                    value: decode(kv)?,
                    revision: kv.mod_revision,
                })
            })
            .collect()
    }

    /// The things with an execution of `job` and its status, in thing order, after `after`.
    pub async fn statuses(
        &self,
        job: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<(Vec<(String, ExecutionStatus)>, bool), JobsError> {
        let prefix = keys::job_things(job);
        let after = after.map(|thing| keys::job_thing(job, thing));
        let (kvs, more) = self
            .range_all(&prefix, after.as_deref(), limit, consistency)
            .await?;
        let statuses = kvs
            .iter()
            .map(|kv| {
                let thing = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                Ok((thing, decode::<ExecutionStatus>(kv)?))
            })
            .collect::<Result<_, JobsError>>()?;
        Ok((statuses, more))
    }

    /// Writes `new` over the execution read as `old` (`None`: there was none), in one
    /// transaction with its index entry and timer and `more`; whether it was written.
    pub async fn write_execution(
        &self,
        old: Option<&Read<ExecutionRecord>>,
        new: &ExecutionRecord,
        more: Vec<Op>,
    ) -> Result<bool, JobsError> {
        let key = keys::job_execution(&new.thing_name, &new.job_id);
        let read_at = old.map_or(0, |o| o.revision);
        let mut ops = execution_ops(old.map(|o| &o.value), new)?;
        ops.extend(more);
        let txn = Txn::new()
            .when([unchanged_since(&key, read_at)])
            .and_then(ops);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// [`JobStore::write_execution`], holding only while `fence` (a key and the revision it
    /// was read at) is unchanged too.
    pub async fn write_execution_fenced(
        &self,
        old: Option<&Read<ExecutionRecord>>,
        new: &ExecutionRecord,
        fence: Option<(String, Revision)>,
    ) -> Result<bool, JobsError> {
        let key = keys::job_execution(&new.thing_name, &new.job_id);
        let read_at = old.map_or(0, |o| o.revision);
        let mut compares = vec![unchanged_since(&key, read_at)];
        if let Some((key, revision)) = fence {
            compares.push(unchanged_since(&key, revision));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(execution_ops(old.map(|o| &o.value), new)?);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes an execution read at `revision`, its index entry and its timer.
    pub async fn delete_execution(
        &self,
        execution: &Read<ExecutionRecord>,
    ) -> Result<bool, JobsError> {
        let e = &execution.value;
        let key = keys::job_execution(&e.thing_name, &e.job_id);
        let txn = Txn::new()
            .when([unchanged_since(&key, execution.revision)])
            .and_then(delete_ops(e));
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Timers due at `now_ms`, earliest first: (thing, job).
    pub async fn due_timers(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, JobsError> {
        let request = RangeRequest {
            prefix: keys::JOB_TIMERS.as_bytes().to_vec(),
            start_after: None,
            limit,
        };
        let range = self.store.range(request, Consistency::Local).await?;
        let mut due = Vec::new();
        for kv in &range.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some((deadline, thing, job)) = keys::parse_job_timer(&key) else {
                continue;
            };
            if deadline > now_ms {
                break;
            }
            due.push((thing.to_owned(), job.to_owned()));
        }
        Ok(due)
    }

    /// The earliest timer's deadline, if any.
    pub async fn next_timer(&self) -> Result<Option<u64>, JobsError> {
        let request = RangeRequest {
            prefix: keys::JOB_TIMERS.as_bytes().to_vec(),
            start_after: None,
            limit: 1,
        };
        let range = self.store.range(request, Consistency::Local).await?;
        Ok(range
            .kvs
            .first()
            .and_then(|kv| keys::parse_job_timer(&String::from_utf8_lossy(&kv.key)).map(|t| t.0)))
    }

    pub async fn template(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Read<TemplateRecord>>, JobsError> {
        self.get(&keys::job_template(id), consistency).await
    }

    pub async fn create_template(&self, template: &TemplateRecord) -> Result<bool, JobsError> {
        let key = keys::job_template(&template.job_template_id);
        let txn = Txn::new()
            .when([unchanged_since(&key, 0)])
            .and_then([Op::put(key, encode(template)?)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    pub async fn delete_template(&self, id: &str) -> Result<bool, JobsError> {
        let key = keys::job_template(id);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_bytes(), CompareOp::Greater, 0)])
            .and_then([Op::delete(key)]);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    pub async fn templates(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TemplateRecord>, bool), JobsError> {
        let after = after.map(keys::job_template);
        let (kvs, more) = self
            .range_all(
                keys::JOB_TEMPLATES,
                after.as_deref(),
                limit,
                Consistency::Linearizable,
            )
            .await?;
        Ok((kvs.iter().map(decode).collect::<Result<_, _>>()?, more))
    }

    /// The account's event configuration: which event types are published.
    pub async fn event_configurations(
        &self,
    ) -> Result<std::collections::BTreeMap<String, bool>, JobsError> {
        Ok(self
            .get(keys::EVENT_CONFIGURATIONS, Consistency::Local)
            .await?
            .map(|r| r.value)
            .unwrap_or_default())
    }

    /// Merges `changes` into the event configuration.
    pub async fn update_event_configurations(
        &self,
        changes: &std::collections::BTreeMap<String, bool>,
    ) -> Result<(), JobsError> {
        for _ in 0..16 {
            let read: Option<Read<std::collections::BTreeMap<String, bool>>> = self
                .get(keys::EVENT_CONFIGURATIONS, Consistency::Linearizable)
                .await?;
            let revision = read.as_ref().map_or(0, |r| r.revision);
            let mut config = read.map(|r| r.value).unwrap_or_default();
            config.extend(changes.iter().map(|(k, v)| (k.clone(), *v)));
            let txn = Txn::new()
                .when([unchanged_since(keys::EVENT_CONFIGURATIONS, revision)])
                .and_then([Op::put(keys::EVENT_CONFIGURATIONS, encode(&config)?)]);
            if self.store.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(JobsError::Unavailable(
            "The event configuration kept changing; try again".into(),
        ))
    }
}

/// Names of things per key of a job's resolved targets: 1,000 of the longest (128 bytes)
/// stay well under the store's largest value.
const TARGETS_PER_CHUNK: usize = 1000;

/// The writes that store `targets` as a job's resolved targets, from the chunk that holds
/// position `from` on (the chunks before it are unchanged).
pub fn target_ops(id: &str, targets: &[String], from: usize) -> Result<Vec<Op>, JobsError> {
    let first = from / TARGETS_PER_CHUNK;
    targets
        .chunks(TARGETS_PER_CHUNK)
        .enumerate()
        .skip(first)
        .map(|(n, chunk)| Ok(Op::put(keys::job_targets_chunk(id, n), encode(&chunk)?)))
        .collect()
}

/// The writes that replace execution `old` by `new`: the record, its status in the job's
/// index, and its timer moved to its new deadline (or removed).
pub fn execution_ops(
    old: Option<&ExecutionRecord>,
    new: &ExecutionRecord,
) -> Result<Vec<Op>, JobsError> {
    let mut ops = vec![
        Op::put(
            keys::job_execution(&new.thing_name, &new.job_id),
            encode(new)?,
        ),
        Op::put(
            keys::job_thing(&new.job_id, &new.thing_name),
            encode(&new.status)?,
        ),
    ];
    let old_timer = old.and_then(|o| o.timeout_at_ms);
    if old_timer != new.timeout_at_ms {
        if let Some(at) = old_timer {
            ops.push(Op::delete(keys::job_timer(
                at,
                &new.thing_name,
                &new.job_id,
            )));
        }
        if let Some(at) = new.timeout_at_ms {
            ops.push(Op::put(
                keys::job_timer(at, &new.thing_name, &new.job_id),
                Vec::new(),
            ));
        }
    }
    Ok(ops)
}

/// The deletes that remove an execution with its index entry and timer.
pub fn delete_ops(execution: &ExecutionRecord) -> Vec<Op> {
    let (thing, job) = (&execution.thing_name, &execution.job_id);
    let mut ops = vec![
        Op::delete(keys::job_execution(thing, job)),
        Op::delete(keys::job_thing(job, thing)),
    ];
    if let Some(at) = execution.timeout_at_ms {
        ops.push(Op::delete(keys::job_timer(at, thing, job)));
    }
    ops
}
