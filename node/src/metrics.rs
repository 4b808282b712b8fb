//! Prometheus metrics of the node; every subsystem registers its own set here.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::mqtt::QoS;

/// The broker's metrics. Labels are low-cardinality: QoS and reason only.
#[derive(Clone)]
pub struct BrokerMetrics {
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub sessions: IntGauge,
    pub subscriptions: IntGauge,
    pub retained_messages: IntGauge,
    /// Messages offered to taps, by tap and outcome (accepted, or dropped for a full queue).
    pub tap_messages: IntCounterVec,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    messages_dropped: IntCounterVec,
    publishes_refused: IntCounterVec,
    backlog_refusals: IntCounterVec,
    packet_errors: IntCounterVec,
    denied: IntCounterVec,
    received_by_qos: [IntCounter; 3],
    sent_by_qos: [IntCounter; 3],
}

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Expired,
    PacketTooLarge,
    OfflineQos0,
    NotAuthorized,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::PacketTooLarge => "packet_too_large",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::OfflineQos0 => "offline_qos0",
        }
    }
}

impl BrokerMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntGauge::with_opts(Opts::new(
            "halyard_connections",
            "Open MQTT network connections",
        ))?;
        let connections_total = IntCounter::with_opts(Opts::new(
            "halyard_connections_total",
            "MQTT network connections accepted",
        ))?;
        let sessions = IntGauge::with_opts(Opts::new(
            "halyard_sessions",
            "MQTT sessions, connected or persisted",
        ))?;
        let subscriptions = IntGauge::with_opts(Opts::new(
            "halyard_subscriptions",
            "Topic filter subscriptions held by sessions",
        ))?;
        let retained_messages = IntGauge::with_opts(Opts::new(
            "halyard_retained_messages",
            "Retained messages stored",
        ))?;
        let tap_messages = IntCounterVec::new(
            Opts::new(
                "halyard_tap_messages_total",
                "Messages offered to taps (the rules engine), by tap and outcome: accepted, or \
                 dropped because the tap's queue was full",
            ),
            &["tap", "outcome"],
        )?;
        registry.register(Box::new(tap_messages.clone()))?;
        let messages_received = IntCounterVec::new(
            Opts::new(
                "halyard_messages_received_total",
                "PUBLISH packets received from clients",
            ),
            &["qos"],
        )?;
        let messages_sent = IntCounterVec::new(
            Opts::new(
                "halyard_messages_sent_total",
                "PUBLISH packets sent to clients",
            ),
            &["qos"],
        )?;
        let bytes_received = IntCounter::with_opts(Opts::new(
            "halyard_bytes_received_total",
            "Bytes read from MQTT connections",
        ))?;
        let bytes_sent = IntCounter::with_opts(Opts::new(
            "halyard_bytes_sent_total",
            "Bytes written to MQTT connections",
        ))?;
        let messages_dropped = IntCounterVec::new(
            Opts::new(
                "halyard_messages_dropped_total",
                "Messages not delivered to a subscriber, by reason",
            ),
            &["reason"],
        )?;
        let publishes_refused = IntCounterVec::new(
            Opts::new(
                "halyard_publishes_refused_total",
                "QoS 1/2 messages refused, by reason (store_backlog: before routing, the store \
                 has too many writes waiting; store_wait: the store did not make them durable \
                 within mqtt.store_wait_timeout)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(publishes_refused.clone()))?;
        let backlog_refusals = IntCounterVec::new(
            Opts::new(
                "halyard_backlog_refusals_total",
                "CONNECTs, SUBSCRIBEs and UNSUBSCRIBEs of persistent sessions refused while \
                 the store's write backlog was full, by packet",
            ),
            &["packet"],
        )?;
        registry.register(Box::new(backlog_refusals.clone()))?;
        let packet_errors = IntCounterVec::new(
            Opts::new(
                "halyard_packet_errors_total",
                "Invalid packets received, by reason",
            ),
            &["reason"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "halyard_authorization_denied_total",
                "Client actions refused by policy, by action",
            ),
            &["action"],
        )?;
        registry.register(Box::new(denied.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(retained_messages.clone()))?;
        registry.register(Box::new(messages_received.clone()))?;
        registry.register(Box::new(messages_sent.clone()))?;
        registry.register(Box::new(bytes_received.clone()))?;
        registry.register(Box::new(bytes_sent.clone()))?;
        registry.register(Box::new(messages_dropped.clone()))?;
        registry.register(Box::new(packet_errors.clone()))?;
        let by_qos = |vec: &IntCounterVec| {
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .map(|q| vec.with_label_values(&[q.label()]))
        };
        let received_by_qos = by_qos(&messages_received);
        let sent_by_qos = by_qos(&messages_sent);
        for reason in [
            DropReason::QueueFull,
            DropReason::Expired,
            DropReason::PacketTooLarge,
            DropReason::OfflineQos0,
            DropReason::NotAuthorized,
        ] {
            messages_dropped.with_label_values(&[reason.label()]);
        }
        Ok(BrokerMetrics {
            connections,
            connections_total,
            sessions,
            subscriptions,
            retained_messages,
            tap_messages,
            bytes_received,
            bytes_sent,
            messages_dropped,
            publishes_refused,
            backlog_refusals,
            packet_errors,
            denied,
            received_by_qos,
            sent_by_qos,
        })
    }

    pub fn message_received(&self, qos: QoS) {
        self.received_by_qos[qos as usize].inc();
    }

    pub fn message_sent(&self, qos: QoS) {
        self.sent_by_qos[qos as usize].inc();
    }

    pub fn message_dropped(&self, reason: DropReason) {
        self.messages_dropped
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn publish_refused(&self, reason: &str) {
        self.publishes_refused.with_label_values(&[reason]).inc();
    }

    /// A persistent session's `packet` was refused: the store's write backlog is full.
    pub fn backlog_refusal(&self, packet: &str) {
        self.backlog_refusals.with_label_values(&[packet]).inc();
    }

    pub fn denied(&self, action: &str) {
        self.denied.with_label_values(&[action]).inc();
    }

    pub fn packet_error(&self, reason: &str) {
        self.packet_errors.with_label_values(&[reason]).inc();
    }
}

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot render metrics");
    }
    out
}

/// Jobs: the devices' requests and the executions' changes.
#[derive(Clone)]
pub struct JobsMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    transitions: IntCounterVec,
    /// Executions created by rollouts (things notified).
    pub rolled_out: IntCounter,
    /// Executions timed out by their timers.
    pub timed_out: IntCounter,
    /// Executions queued again after a failure or a timeout.
    pub retried: IntCounter,
    /// Jobs canceled by their abort configuration.
    pub aborted: IntCounter,
    /// 1 on the node whose driver runs the jobs (the store's leader).
    pub driving: IntGauge,
    /// Driver rounds whose work a concurrent change overtook (done again from a fresh read).
    pub conflicts: IntCounter,
}

impl JobsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_jobs_requests_total",
                "Jobs requests of devices by operation, protocol and outcome (accepted or the \
                 rejection's code)",
            ),
            &["operation", "protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_jobs_request_duration_seconds",
                "Time from a device's jobs request to its answer, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["operation"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "halyard_jobs_execution_transitions_total",
                "Job executions entering each status, counted by the node that wrote the change",
            ),
            &["status"],
        )?;
        let rolled_out = IntCounter::new(
            "halyard_jobs_executions_created_total",
            "Job executions created by rollouts (things notified)",
        )?;
        let timed_out = IntCounter::new(
            "halyard_jobs_timeouts_total",
            "Job executions timed out by their timers",
        )?;
        let retried = IntCounter::new(
            "halyard_jobs_retries_total",
            "Job executions queued again after a failure or a timeout",
        )?;
        let aborted = IntCounter::new(
            "halyard_jobs_aborted_total",
            "Jobs canceled by their abort configuration",
        )?;
        let driving = IntGauge::new(
            "halyard_jobs_driver_active",
            "1 on the node that drives rollouts, timers, retries and aborts (the store's leader)",
        )?;
        let conflicts = IntCounter::new(
            "halyard_jobs_driver_conflicts_total",
            "Driver writes overtaken by a concurrent change and done again from a fresh read",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(rolled_out.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        registry.register(Box::new(retried.clone()))?;
        registry.register(Box::new(aborted.clone()))?;
        registry.register(Box::new(driving.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        Ok(Self {
            requests,
            latency,
            transitions,
            rolled_out,
            timed_out,
            retried,
            aborted,
            driving,
            conflicts,
        })
    }

    pub fn request(
        &self,
        operation: &str,
        protocol: &str,
        outcome: &str,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .with_label_values(&[operation, protocol, outcome])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    pub fn transition(&self, status: &str) {
        self.transitions.with_label_values(&[status]).inc();
    }
}

/// Device Shadow requests, over MQTT and HTTP.
#[derive(Clone)]
pub struct ShadowMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl ShadowMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_shadow_requests_total",
                "Device Shadow requests by operation, protocol and outcome (accepted or the \
                 rejection's code)",
            ),
            &["operation", "protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_shadow_request_duration_seconds",
                "Time from a Device Shadow request to its answer, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }

    pub fn request(
        &self,
        operation: &str,
        protocol: &str,
        rejected_with: Option<u16>,
        elapsed: std::time::Duration,
    ) {
        let outcome = match rejected_with {
            None => "accepted",
            Some(400) => "400",
            Some(401) => "401",
            Some(403) => "403",
            Some(404) => "404",
            Some(409) => "409",
            Some(413) => "413",
            Some(415) => "415",
            Some(429) => "429",
            Some(500) => "500",
            Some(_) => "other",
        };
        self.requests
            .with_label_values(&[operation, protocol, outcome])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }
}

/// `halyard_tls_*`: certificate lifetimes and reloads.
#[derive(Clone)]
pub struct TlsMetrics {
    expiry: IntGaugeVec,
    reloads: IntCounterVec,
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "halyard_tls_certificate_expiry_timestamp_seconds",
                "When a certificate this node uses ends (Unix seconds), by certificate: peer \
                 (this node's, between nodes), peer_ca (the first trusted cluster CA to end), \
                 server (the one devices see on the TLS listeners)",
            ),
            &["certificate"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "halyard_tls_reloads_total",
                "Certificate files found changed and loaded again, by certificate and outcome \
                 (ok, or error: the files did not load and the previous ones stay in use)",
            ),
            &["certificate", "outcome"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        // Zero from the start, so that a rate over them is defined before the first reload.
        for certificate in ["peer", "server"] {
            for outcome in ["ok", "error"] {
                reloads.with_label_values(&[certificate, outcome]);
            }
        }
        Ok(TlsMetrics { expiry, reloads })
    }

    pub fn set_expiry(&self, certificate: &str, not_after: i64) {
        self.expiry.with_label_values(&[certificate]).set(not_after);
    }

    pub fn reloaded(&self, certificate: &str, outcome: &str) {
        self.reloads
            .with_label_values(&[certificate, outcome])
            .inc();
    }

    pub fn set_peer_expiry(&self, cert_not_after: i64, ca_not_after: i64) {
        self.expiry.with_label_values(&["peer"]).set(cert_not_after);
        self.expiry
            .with_label_values(&["peer_ca"])
            .set(ca_not_after);
    }
}

/// Fleet provisioning: devices' requests, key pairs, hooks and the sweep of what lapsed.
#[derive(Clone)]
pub struct ProvisioningMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Devices provisioned, by how (fleet, JITP, HTTP registration).
    pub provisioned: IntCounterVec,
    /// Pre-provisioning hook calls by outcome (allowed, denied, failed).
    pub hooks: IntCounterVec,
    /// Certificates registered just in time on a device's first connection.
    pub jit_registered: IntCounter,
    /// Certificates, ownership tokens and claims removed after they lapsed unused.
    pub swept: IntCounter,
    /// Key pairs waiting in the pool.
    pub keys_pooled: IntGauge,
    /// Key pairs handed out from the pool, and made on demand because it was empty.
    pub keys_taken: IntCounterVec,
}

impl ProvisioningMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_provisioning_requests_total",
                "Fleet provisioning requests by operation, protocol and outcome (accepted or \
                 the rejection's code)",
            ),
            &["operation", "protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_provisioning_request_duration_seconds",
                "Time from a provisioning request to its answer, by operation",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["operation"],
        )?;
        let provisioned = IntCounterVec::new(
            Opts::new(
                "halyard_provisioning_devices_total",
                "Devices whose template's resources were created, by how (fleet, jitp, register)",
            ),
            &["via"],
        )?;
        let hooks = IntCounterVec::new(
            Opts::new(
                "halyard_provisioning_hook_calls_total",
                "Pre-provisioning hook calls by outcome (allowed, denied, failed)",
            ),
            &["outcome"],
        )?;
        let jit_registered = IntCounter::new(
            "halyard_provisioning_jit_registrations_total",
            "Device certificates registered just in time by a CA with auto-registration",
        )?;
        let swept = IntCounter::new(
            "halyard_provisioning_swept_total",
            "Unused provisioning certificates, ownership tokens and claims removed once lapsed",
        )?;
        let keys_pooled = IntGauge::new(
            "halyard_provisioning_keys_pooled",
            "Device key pairs made ahead of demand and waiting in the pool",
        )?;
        let keys_taken = IntCounterVec::new(
            Opts::new(
                "halyard_provisioning_keys_total",
                "Device key pairs handed out, from the pool or made on demand",
            ),
            &["source"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(provisioned.clone()))?;
        registry.register(Box::new(hooks.clone()))?;
        registry.register(Box::new(jit_registered.clone()))?;
        registry.register(Box::new(swept.clone()))?;
        registry.register(Box::new(keys_pooled.clone()))?;
        registry.register(Box::new(keys_taken.clone()))?;
        Ok(Self {
            requests,
            latency,
            provisioned,
            hooks,
            jit_registered,
            swept,
            keys_pooled,
            keys_taken,
        })
    }

    pub fn request(
        &self,
        operation: &str,
        protocol: &str,
        outcome: &str,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .with_label_values(&[operation, protocol, outcome])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }
}

/// Fleet indexing's metrics.
#[derive(Clone)]
pub struct IndexMetrics {
    /// Documents in each index on this node.
    pub documents: IntGaugeVec,
    /// Time from a change being applied to this node's store to it being searchable here.
    pub lag: prometheus::Histogram,
    /// How long the last build of the indexes took.
    pub build_seconds: prometheus::Gauge,
    pub builds: IntCounter,
    query_seconds: HistogramVec,
    /// Connectivity records written, by outcome (written, superseded, failed).
    pub connectivity_writes: IntCounterVec,
}

impl IndexMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let documents = IntGaugeVec::new(
            Opts::new(
                "halyard_index_documents",
                "Documents in each fleet index on this node",
            ),
            &["index"],
        )?;
        let lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "halyard_index_lag_seconds",
                "Time from a change being applied to this node's store to it being searchable \
                 in this node's fleet index",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let build_seconds = prometheus::Gauge::new(
            "halyard_index_build_seconds",
            "How long the last build of this node's fleet indexes from the store took",
        )?;
        let builds = IntCounter::new(
            "halyard_index_builds_total",
            "Builds of this node's fleet indexes: at start, after a configuration change, and \
             after the store's watch fell behind its compaction",
        )?;
        let query_seconds = HistogramVec::new(
            HistogramOpts::new(
                "halyard_index_query_seconds",
                "Time to answer a search or an aggregation, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["operation"],
        )?;
        let connectivity_writes = IntCounterVec::new(
            Opts::new(
                "halyard_index_connectivity_writes_total",
                "Connectivity records of things written by this node, by outcome (written, \
                 superseded by a later connection, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(documents.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(build_seconds.clone()))?;
        registry.register(Box::new(builds.clone()))?;
        registry.register(Box::new(query_seconds.clone()))?;
        registry.register(Box::new(connectivity_writes.clone()))?;
        Ok(Self {
            documents,
            lag,
            build_seconds,
            builds,
            query_seconds,
            connectivity_writes,
        })
    }

    pub fn observe_query(&self, operation: &str, started: std::time::Instant) {
        self.query_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }
}
