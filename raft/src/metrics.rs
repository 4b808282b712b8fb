//! `halyard_raft_*` Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct RaftMetrics {
    pub term: IntGauge,
    pub leader: IntGauge,
    /// 1 for the role this node holds, 0 for the others.
    pub role: IntGaugeVec,
    pub last_log_index: IntGauge,
    pub committed_index: IntGauge,
    pub applied_index: IntGauge,
    pub revision: IntGauge,
    pub compacted_revision: IntGauge,
    pub member_match_index: IntGaugeVec,
    pub member_lag: IntGaugeVec,
    pub fsyncs: IntCounter,
    pub fsync_group: Histogram,
    pub proposals: IntCounterVec,
    /// From a write's proposal on this node to its commit (and answer) by the leader.
    pub proposal_seconds: Histogram,
    pub leader_changes: IntCounter,
    pub forwarded: IntCounter,
    pub applied_entries: IntCounter,
    pub snapshots_built: IntCounter,
    pub snapshots_installed: IntCounter,
    pub watchers: IntGauge,
    pub leases: IntGauge,
    pub leases_expired: IntCounter,
}

impl RaftMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help));
        let metrics = Self {
            term: gauge("halyard_raft_term", "Current Raft term.")?,
            leader: gauge(
                "halyard_raft_leader_id",
                "Node id of the known leader, 0 if none.",
            )?,
            role: IntGaugeVec::new(
                Opts::new("halyard_raft_role", "1 for the role this node holds."),
                &["role"],
            )?,
            last_log_index: gauge(
                "halyard_raft_last_log_index",
                "Index of the last log entry.",
            )?,
            committed_index: gauge("halyard_raft_committed_index", "Highest committed index.")?,
            applied_index: gauge("halyard_raft_applied_index", "Highest applied index.")?,
            revision: gauge(
                "halyard_raft_revision",
                "Revision of the applied key-value state.",
            )?,
            compacted_revision: gauge(
                "halyard_raft_compacted_revision",
                "Watch history is kept from this revision on.",
            )?,
            member_match_index: IntGaugeVec::new(
                Opts::new(
                    "halyard_raft_member_match_index",
                    "Last log index known replicated on each member (leader only).",
                ),
                &["member"],
            )?,
            member_lag: IntGaugeVec::new(
                Opts::new(
                    "halyard_raft_member_lag_entries",
                    "Entries each member is behind the leader's last log index (leader only).",
                ),
                &["member"],
            )?,
            fsyncs: IntCounter::with_opts(Opts::new(
                "halyard_raft_fsyncs_total",
                "Log fsyncs issued.",
            ))?,
            fsync_group: Histogram::with_opts(
                HistogramOpts::new(
                    "halyard_raft_fsync_group_size",
                    "Log writes made durable by one fsync.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            proposals: IntCounterVec::new(
                Opts::new(
                    "halyard_raft_proposals_total",
                    "Commands proposed by this node.",
                ),
                &["outcome"],
            )?,
            proposal_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "halyard_raft_proposal_seconds",
                    "Time from proposing a write on this node to its commit, forwarding to the \
                     leader included.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            leader_changes: IntCounter::with_opts(Opts::new(
                "halyard_raft_leader_changes_total",
                "Times this node saw the leader change (to another node, or to none).",
            ))?,
            forwarded: IntCounter::with_opts(Opts::new(
                "halyard_raft_forwarded_total",
                "Commands forwarded to the leader.",
            ))?,
            applied_entries: IntCounter::with_opts(Opts::new(
                "halyard_raft_applied_entries_total",
                "Log entries applied to the state machine.",
            ))?,
            snapshots_built: IntCounter::with_opts(Opts::new(
                "halyard_raft_snapshots_built_total",
                "Snapshots built.",
            ))?,
            snapshots_installed: IntCounter::with_opts(Opts::new(
                "halyard_raft_snapshots_installed_total",
                "Snapshots received from the leader and installed.",
            ))?,
            watchers: gauge("halyard_raft_watchers", "Open watch streams.")?,
            leases: gauge("halyard_raft_leases", "Leases tracked by the leader.")?,
            leases_expired: IntCounter::with_opts(Opts::new(
                "halyard_raft_leases_expired_total",
                "Leases revoked because their TTL ran out.",
            ))?,
        };
        registry.register(Box::new(metrics.term.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        registry.register(Box::new(metrics.role.clone()))?;
        registry.register(Box::new(metrics.last_log_index.clone()))?;
        registry.register(Box::new(metrics.committed_index.clone()))?;
        registry.register(Box::new(metrics.applied_index.clone()))?;
        registry.register(Box::new(metrics.revision.clone()))?;
        registry.register(Box::new(metrics.compacted_revision.clone()))?;
        registry.register(Box::new(metrics.member_match_index.clone()))?;
        registry.register(Box::new(metrics.member_lag.clone()))?;
        registry.register(Box::new(metrics.fsyncs.clone()))?;
        registry.register(Box::new(metrics.fsync_group.clone()))?;
        registry.register(Box::new(metrics.proposals.clone()))?;
        registry.register(Box::new(metrics.proposal_seconds.clone()))?;
        registry.register(Box::new(metrics.leader_changes.clone()))?;
        registry.register(Box::new(metrics.forwarded.clone()))?;
        registry.register(Box::new(metrics.applied_entries.clone()))?;
        registry.register(Box::new(metrics.snapshots_built.clone()))?;
        registry.register(Box::new(metrics.snapshots_installed.clone()))?;
        registry.register(Box::new(metrics.watchers.clone()))?;
        registry.register(Box::new(metrics.leases.clone()))?;
        registry.register(Box::new(metrics.leases_expired.clone()))?;
        Ok(metrics)
    }

    /// Metrics that go nowhere, for nodes built without a registry.
    pub fn unregistered() -> Self {
        match Self::new(&Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable!("metric definitions are static and valid: {e}"),
        }
    }
}
