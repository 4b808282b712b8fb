//! The openraft state machine: applies committed commands to the engine, tells readers and
//! watchers how far it got, and builds and installs snapshots.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::{broadcast, watch};

use crate::codec::{decode, encode};
use crate::engine::{Cf, EngineError, KvEngine, WriteBatch};
use crate::metrics::RaftMetrics;
use crate::runtime::HalyardRuntime;
use crate::snapshot::{self, SnapshotFile, SnapshotReader};
use crate::state::{self, apply_command, record_applied};
use crate::types::{
    CommandResult, LogId, RevisionEvents, SnapshotMeta, StoredMembership, TypeConfig,
};

const CURRENT_SNAPSHOT: &[u8] = b"snapshot";
const WATCH_BUFFER: usize = 1024;

/// How far the local state has applied the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub applied_index: u64,
    pub revision: u64,
}

/// What watchers hear from the apply loop.
#[derive(Debug, Clone)]
pub enum Notice {
    Applied(Arc<RevisionEvents>),
    /// The state was replaced by a snapshot: re-read history from the engine.
    Reset,
}

/// When a lease runs out, as far as this node knows.
pub struct LeaseClock {
    pub ttl: std::time::Duration,
    pub deadline: crate::clock::Instant,
}

/// State the apply loop publishes to readers, watchers and the status API.
pub struct Shared {
    pub progress: watch::Sender<Progress>,
    /// Every replica tracks grants and revokes as it applies them, so that whichever node
    /// leads next already knows every lease; keep-alives reach the leader only.
    pub leases: parking_lot::Mutex<std::collections::HashMap<u64, LeaseClock>>,
    pub notices: broadcast::Sender<Notice>,
    pub compacted: AtomicU64,
    /// Numbers snapshot files; starts at random so that a restarted node does not reuse the
    /// names of the files its previous life left.
    pub snapshot_seq: AtomicU64,
    pub metrics: RaftMetrics,
}

impl Shared {
    pub fn new(metrics: RaftMetrics) -> Arc<Self> {
        let (progress, _) = watch::channel(Progress::default());
        let (notices, _) = broadcast::channel(WATCH_BUFFER);
        Arc::new(Self {
            progress,
            leases: parking_lot::Mutex::new(std::collections::HashMap::new()),
            notices,
            compacted: AtomicU64::new(0),
            snapshot_seq: AtomicU64::new(crate::runtime::random_u64() >> 16),
            metrics,
        })
    }

    pub fn revision(&self) -> u64 {
        self.progress.borrow().revision
    }

    fn publish(&self, meta: &state::StateMeta) {
        self.compacted.store(meta.compacted, Ordering::Release);
        self.metrics.compacted_revision.set(meta.compacted as i64);
        self.metrics.revision.set(meta.revision as i64);
        let applied_index = meta.applied.as_ref().map_or(0, |id| id.index);
        self.metrics.applied_index.set(applied_index as i64);
        self.progress.send_replace(Progress {
            applied_index,
            revision: meta.revision,
        });
    }
}

pub struct StateMachine {
    engine: Arc<dyn KvEngine>,
    shared: Arc<Shared>,
    snapshot_dir: PathBuf,
    meta: state::StateMeta,
}

impl StateMachine {
    pub fn open(
        engine: Arc<dyn KvEngine>,
        shared: Arc<Shared>,
        snapshot_dir: PathBuf,
    ) -> Result<Self, EngineError> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let meta = state::read_meta(engine.as_ref())?;
        shared.publish(&meta);
        Ok(Self {
            engine,
            shared,
            snapshot_dir,
            meta,
        })
    }
}

fn to_io(e: EngineError) -> io::Error {
    e.into()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

fn snapshot_path(dir: &Path, last: Option<&LogId>, seq: u64) -> PathBuf {
    match last {
        Some(id) => dir.join(format!("{}-{}-{seq}.snap", id.leader_id, id.index)),
        None => dir.join(format!("empty-{seq}.snap")),
    }
}

/// Deletes snapshot files other than `keep`.
fn remove_other_snapshots(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.extension().is_some_and(|e| e == "snap" || e == "part") {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn save_current(
    engine: &dyn KvEngine,
    meta: &SnapshotMeta,
    path: &Path,
) -> Result<(), EngineError> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut batch = WriteBatch::new();
    batch.put(
        Cf::Meta,
        CURRENT_SNAPSHOT,
        encode(&CurrentSnapshot {
            meta: meta.clone(),
            file,
        })?,
    );
    engine.write(batch)?;
    engine.sync()
}

pub struct SnapshotBuilder {
    engine: Arc<dyn KvEngine>,
    shared: Arc<Shared>,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let engine = Arc::clone(&self.engine);
        let shared = Arc::clone(&self.shared);
        let dir = self.snapshot_dir.clone();
        // Dumping the state and its fsyncs take milliseconds to seconds: off the runtime's
        // workers, which meanwhile go on serving clients. The dump reads one consistent view.
        let build = move || -> Result<_, io::Error> {
            let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let partial = dir.join(format!("build-{seq}.part"));
            let summary = snapshot::dump(engine.as_ref(), &partial).map_err(to_io)?;
            // The log may be purged up to this snapshot; the state it captured must not be lost.
            engine.sync().map_err(to_io)?;
            let path = snapshot_path(&dir, summary.applied.as_ref(), seq);
            std::fs::rename(&partial, &path)?;
            let meta = SnapshotMeta {
                last_log_id: summary.applied,
                last_membership: summary.membership,
            };
            save_current(engine.as_ref(), &meta, &path).map_err(to_io)?;
            remove_other_snapshots(&dir, &path);
            shared.metrics.snapshots_built.inc();
            Ok(openraft::Snapshot {
                meta,
                snapshot: SnapshotFile {
                    path,
                    size: summary.size,
                },
            })
        };
        <HalyardRuntime as openraft::AsyncRuntime>::spawn_blocking(build).await?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut batch;
            let result;
            let mut events = Vec::new();
            let mut membership = None;
            match &entry.payload {
                EntryPayload::Normal(command) => {
                    let revision = self.meta.revision + 1;
                    let applied =
                        apply_command(self.engine.as_ref(), command, revision, self.meta.compacted)
                            .map_err(to_io)?;
                    batch = applied.batch;
                    result = applied.result;
                    events = applied.events;
                    self.meta.revision = revision;
                    if let crate::types::Command::Compact { revision: target } = command
                        && *target > self.meta.compacted
                        && *target <= revision
                    {
                        self.meta.compacted = *target;
                    }
                }
                EntryPayload::Membership(m) => {
                    batch = WriteBatch::new();
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    membership = Some(stored);
                    result = CommandResult::None {
                        revision: self.meta.revision,
                    };
                }
                EntryPayload::Blank => {
                    batch = WriteBatch::new();
                    result = CommandResult::None {
                        revision: self.meta.revision,
                    };
                }
            }
            record_applied(&mut batch, &entry.log_id, membership.as_ref()).map_err(to_io)?;
            self.engine.write(batch).map_err(to_io)?;
            self.meta.applied = Some(entry.log_id);
            if let Some(m) = membership {
                self.meta.membership = m;
            }
            match &result {
                CommandResult::LeaseGranted { id, ttl_ms, .. } => {
                    let ttl = std::time::Duration::from_millis(*ttl_ms);
                    let deadline = crate::clock::Instant::now() + ttl;
                    self.shared
                        .leases
                        .lock()
                        .insert(*id, LeaseClock { ttl, deadline });
                }
                CommandResult::LeaseRevoked { .. } => {
                    if let EntryPayload::Normal(crate::types::Command::LeaseRevoke { id, .. }) =
                        &entry.payload
                    {
                        self.shared.leases.lock().remove(id);
                    }
                }
                _ => {}
            }
            self.shared.metrics.applied_entries.inc();
            if !events.is_empty() {
                let notice = RevisionEvents {
                    revision: self.meta.revision,
                    events,
                };
                let _ = self.shared.notices.send(Notice::Applied(Arc::new(notice)));
            }
            self.shared.publish(&self.meta);
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            shared: self.shared.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let mut reader = SnapshotReader::open(&snapshot.path).map_err(to_io)?;
        let mut batch = WriteBatch::new();
        batch.delete_range(Cf::State, Vec::new(), vec![0xff]);
        while let Some((key, value)) = reader.next_record().map_err(to_io)? {
            batch.put(Cf::State, key, value);
        }
        self.engine.write(batch).map_err(to_io)?;
        self.engine.sync().map_err(to_io)?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let path = snapshot_path(&self.snapshot_dir, meta.last_log_id.as_ref(), seq);
        if snapshot.path != path {
            std::fs::rename(&snapshot.path, &path)?;
        }
        save_current(self.engine.as_ref(), meta, &path).map_err(to_io)?;
        remove_other_snapshots(&self.snapshot_dir, &path);
        self.meta = state::read_meta(self.engine.as_ref()).map_err(to_io)?;
        self.shared.metrics.snapshots_installed.inc();
        self.shared.publish(&self.meta);
        let _ = self.shared.notices.send(Notice::Reset);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error>
    {
        let Some(bytes) = self.engine.get(Cf::Meta, CURRENT_SNAPSHOT).map_err(to_io)? else {
            return Ok(None);
        };
        let current: CurrentSnapshot = decode(CURRENT_SNAPSHOT, &bytes).map_err(to_io)?;
        let path = self.snapshot_dir.join(&current.file);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(openraft::Snapshot {
                meta: current.meta,
                snapshot: SnapshotFile {
                    path,
                    size: m.len(),
                },
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
