//! The rules engine of one node. It follows the rules in the store (every node runs the same
//! set), and takes each message that enters the broker on this node from a tap: a message
//! forwarded from another node has been through that node's engine, so each message is seen
//! once in the cluster. Rules are matched by their FROM filters in a trie; a Basic Ingest
//! message (`$aws/rules/{rule}/...`) goes to its rule alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use halyard_sql::{Document, Environment, Message as SqlMessage, MqttProperties, Statement, Value};
use parking_lot::RwLock;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
    local::{LocalHistogram, LocalIntCounter},
};
use tokio::sync::watch;

use super::RuleRecord;
use super::actions::{Action, Http, Republish};
use super::aws::{self, AwsEndpoint};
use super::delivery::{Destination, Failure, OutboundJob, OwnedMessage, Report, Sink, Work};
use super::destinations::DestinationRecord;
use crate::broker::{
    Broker, QueueLimits, Session, Signal, Subscriber, SubscriptionTrie, Tapped, Target,
};
use crate::mqtt::SubscriptionOptions;
use crate::services::records::Records;
use crate::services::shadow::service::ShadowService;
use crate::store::keys;
use crate::supervisor::Supervisor;

/// Messages the tap holds for the engine before the publishers filling it pause (and twice
/// that before it refuses what they send): at 100,000 messages a second, 160 ms of work.
const QUEUE: usize = 16_384;
/// Evaluating tasks at most (one per core up to this).
const MAX_EVALUATORS: usize = 8;
/// Messages taken from the tap at once.
const BATCH: usize = 256;
/// Batches waiting for one evaluating task: few, so that a busy engine leaves its backlog in
/// the tap, where it holds its publishers back.
const EVALUATOR_QUEUE: usize = 4;
tokio::task_local! {
    /// A subscriber whose queue a republish by this evaluating task filled.
    static CONGESTED: RefCell<Option<Arc<Session>>>;
}

/// The prefix of Basic Ingest topics.
const BASIC_INGEST: &str = "$aws/rules/";
const BASIC_INGEST_FILTER: &str = "$aws/rules/#";

/// `halyard_rule_*`, by rule.
#[derive(Clone)]
pub struct RuleMetrics {
    matched: IntCounterVec,
    fired: IntCounterVec,
    actions: IntCounterVec,
    evaluation: HistogramVec,
    queue_depth: IntGaugeVec,
    rules: IntGauge,
}

impl RuleMetrics {
    /// Drops the series of a deleted rule.
    fn forget(&self, rule: &Compiled) {
        let name = rule.record.rule_name.as_str();
        let _ = self.matched.remove_label_values(&[name]);
        let _ = self.fired.remove_label_values(&[name]);
        let _ = self.evaluation.remove_label_values(&[name]);
        let positions = (0..rule.actions.len())
            .map(|i| i.to_string())
            .chain(["error".to_owned()]);
        for position in positions {
            let _ = self.queue_depth.remove_label_values(&[name, &position]);
        }
        let outcomes = ["succeeded", "failed", "error_action", "error_action_failed"];
        for action in rule.actions.iter().chain(rule.error_action.iter()) {
            for outcome in outcomes {
                let _ = self
                    .actions
                    .remove_label_values(&[name, &action.failed_action(), outcome]);
            }
        }
    }

    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = RuleMetrics {
            matched: IntCounterVec::new(
                Opts::new(
                    "halyard_rule_messages_matched_total",
                    "Messages whose topic a rule's FROM filter matched (or sent to it by Basic Ingest), by rule",
                ),
                &["rule"],
            )?,
            fired: IntCounterVec::new(
                Opts::new(
                    "halyard_rule_messages_fired_total",
                    "Messages for which a rule's WHERE held and its actions ran, by rule",
                ),
                &["rule"],
            )?,
            actions: IntCounterVec::new(
                Opts::new(
                    "halyard_rule_actions_total",
                    "Actions run, by rule, action and outcome (succeeded, failed, error_action)",
                ),
                &["rule", "action", "outcome"],
            )?,
            evaluation: HistogramVec::new(
                HistogramOpts::new(
                    "halyard_rule_evaluation_seconds",
                    "Time a rule's statement takes over one message, by rule",
                )
                .buckets(vec![1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2]),
                &["rule"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "halyard_rule_action_queue_depth",
                    "Messages waiting for an action that leaves the node, by rule and action position (0 is the first action, error for the error action)",
                ),
                &["rule", "action"],
            )?,
            rules: IntGauge::new("halyard_rules", "Topic rules this node's engine runs")?,
        };
        registry.register(Box::new(metrics.matched.clone()))?;
        registry.register(Box::new(metrics.fired.clone()))?;
        registry.register(Box::new(metrics.actions.clone()))?;
        registry.register(Box::new(metrics.evaluation.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.rules.clone()))?;
        Ok(metrics)
    }
}

/// A rule's series, looked up once when it is compiled rather than by label for every message.
struct RuleCounters {
    matched: IntCounter,
    fired: IntCounter,
    evaluation: Histogram,
    /// Succeeded and failed, by the action's position.
    actions: Vec<[IntCounter; 2]>,
}

impl RuleCounters {
    fn new(metrics: &RuleMetrics, name: &str, actions: &[Action]) -> RuleCounters {
        RuleCounters {
            matched: metrics.matched.with_label_values(&[name]),
            fired: metrics.fired.with_label_values(&[name]),
            evaluation: metrics.evaluation.with_label_values(&[name]),
            actions: actions
                .iter()
                .map(|action| {
                    let kind = action.failed_action();
                    ["succeeded", "failed"]
                        .map(|outcome| metrics.actions.with_label_values(&[name, &kind, outcome]))
                })
                .collect(),
        }
    }
}

/// One evaluating task's counts, added to the rules' series every [`FLUSH_EVERY`] messages and
/// whenever the task waits: every evaluation of every rule incrementing the shared series
/// would have the cores fight over their cache lines.
#[derive(Default)]
struct LocalCounts {
    rules: HashMap<u64, LocalRule>,
    messages: usize,
}

struct LocalRule {
    matched: LocalIntCounter,
    fired: LocalIntCounter,
    evaluation: LocalHistogram,
    actions: Vec<[LocalIntCounter; 2]>,
}

const FLUSH_EVERY: usize = 1024;

impl LocalCounts {
    fn of(&mut self, rule: &Compiled) -> &mut LocalRule {
        self.rules.entry(rule.id).or_insert_with(|| {
            let shared = &rule.counters;
            LocalRule {
                matched: shared.matched.local(),
                fired: shared.fired.local(),
                evaluation: shared.evaluation.local(),
                actions: shared
                    .actions
                    .iter()
                    .map(|pair| pair.each_ref().map(IntCounter::local))
                    .collect(),
            }
        })
    }

    fn flush(&mut self) {
        for rule in self.rules.values() {
            rule.matched.flush();
            rule.fired.flush();
            rule.evaluation.flush();
            for pair in &rule.actions {
                pair.iter().for_each(LocalIntCounter::flush);
            }
        }
        // Rules replaced since are forgotten; the next message makes what it needs.
        self.rules.clear();
        self.messages = 0;
    }
}

impl LocalRule {
    fn count(&mut self, position: usize, ok: bool) {
        if let Some([succeeded, failed]) = self.actions.get_mut(position) {
            if ok { succeeded } else { failed }.inc();
        }
    }
}

/// A rule ready to run.
pub struct Compiled {
    id: u64,
    counters: RuleCounters,
    record: RuleRecord,
    statement: Statement,
    actions: Vec<Action>,
    error_action: Option<Action>,
    /// The queue of each action that leaves the node, by the action's position.
    sinks: Vec<Option<Sink>>,
    /// The error action's queue, if it leaves the node.
    error_sink: Option<Sink>,
}

impl Compiled {
    pub fn name(&self) -> &str {
        &self.record.rule_name
    }

    fn leaves_the_node(&self) -> bool {
        self.sinks.iter().any(Option::is_some)
    }
}

/// Where actions that leave the node go, as the node's configuration says.
#[derive(Clone, Default)]
pub struct Targets {
    /// Where the actions of AWS services go, if anywhere.
    pub aws: Option<Arc<AwsEndpoint>>,
    /// Where the timestream action writes, if anywhere.
    pub postgres: Option<Arc<tokio_postgres::Config>>,
    /// What HTTP actions with `auth.sigv4` sign with: `(access key id, secret)`.
    pub keys: Option<(String, String)>,
}

fn sink_of(action: &Action, targets: &Targets, depth: impl FnOnce() -> IntGauge) -> Option<Sink> {
    let destination = match action {
        Action::Http(http) => match http.batching {
            Some(batching) => Destination::HttpBatched(batching),
            None => Destination::Http,
        },
        Action::Aws(_) => Destination::Http,
        Action::Timestream(_) => Destination::Postgres(Arc::clone(targets.postgres.as_ref()?)),
        Action::Republish(_) | Action::NotRun { .. } => return None,
    };
    Some(Sink::start(destination, depth()))
}

#[derive(Clone)]
struct Rule(Arc<Compiled>);

impl Target for Rule {
    fn target_id(&self) -> u64 {
        self.0.id
    }
}

#[derive(Default)]
struct RuleSet {
    by_name: HashMap<String, Rule>,
    filters: SubscriptionTrie<Rule>,
    destinations: Vec<DestinationRecord>,
}

impl RuleSet {
    /// Why an `http` action may not post to `url`: a destination covers it, and every one
    /// that does is disabled.
    fn refuses(&self, url: &str) -> Option<&DestinationRecord> {
        let mut covering = self
            .destinations
            .iter()
            .filter(|d| d.covers(url))
            .peekable();
        covering.peek()?;
        let mut disabled = None;
        for destination in covering {
            if destination.status == "ENABLED" {
                return None;
            }
            disabled = Some(destination);
        }
        disabled
    }
}

static NEXT_RULE: AtomicU64 = AtomicU64::new(1);

impl RuleSet {
    /// The set of `records`, reusing what is compiled already for a rule that did not change.
    fn build(
        records: Vec<RuleRecord>,
        previous: &RuleSet,
        metrics: &RuleMetrics,
        targets: &Targets,
    ) -> RuleSet {
        let mut set = RuleSet::default();
        for record in records {
            let rule = match previous.by_name.get(&record.rule_name) {
                Some(rule) if rule.0.record == record => rule.clone(),
                _ => match compile(record, metrics, targets) {
                    Ok(rule) => rule,
                    Err((name, e)) => {
                        tracing::warn!(rule = %name, error = %e, "a stored rule does not compile; it is skipped");
                        continue;
                    }
                },
            };
            if let Some(filter) = rule.0.statement.topic_filter() {
                set.filters.insert(
                    filter,
                    None,
                    Subscriber {
                        target: rule.clone(),
                        options: SubscriptionOptions::default(),
                        subscription_id: None,
                    },
                );
            }
            set.by_name.insert(rule.0.record.rule_name.clone(), rule);
        }
        set
    }
}

fn compile(
    record: RuleRecord,
    metrics: &RuleMetrics,
    targets: &Targets,
) -> Result<Rule, (String, String)> {
    let name = record.rule_name.clone();
    let version = record.version();
    let failed = |e: String| (name.clone(), e);
    let statement = Statement::compile(&record.sql, version).map_err(|e| failed(e.to_string()))?;
    let actions = record
        .actions
        .iter()
        .map(|a| Action::parse(a, version))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let error_action = record
        .error_action
        .as_ref()
        .map(|a| Action::parse(a, version))
        .transpose()
        .map_err(failed)?;
    let depth = |action: String| {
        let gauge = metrics.queue_depth.with_label_values(&[&name, &action]);
        move || gauge
    };
    let sinks = actions
        .iter()
        .enumerate()
        .map(|(i, a)| sink_of(a, targets, depth(i.to_string())))
        .collect();
    let error_sink = error_action
        .as_ref()
        .and_then(|a| sink_of(a, targets, depth("error".to_owned())));
    Ok(Rule(Arc::new(Compiled {
        id: NEXT_RULE.fetch_add(1, Ordering::Relaxed),
        counters: RuleCounters::new(metrics, &name, &actions),
        record,
        statement,
        actions,
        error_action,
        sinks,
        error_sink,
    })))
}

/// What the functions that look beyond the message see.
struct NodeEnvironment {
    account_id: String,
    shadows: ShadowService,
}

impl Environment for NodeEnvironment {
    fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The shadow as GetThingShadow answers it, from this node's copy of the store.
    fn thing_shadow(&self, thing: &str, name: Option<&str>) -> Option<Value> {
        let document = match self.shadows.store().get_local(thing, name) {
            Ok(document) => document?,
            Err(e) => {
                tracing::debug!(thing, error = %e, "get_thing_shadow cannot read the shadow");
                return None;
            }
        };
        let (state, metadata) = document.state_and_metadata(true);
        let answer = serde_json::json!({
            "state": state,
            "metadata": metadata,
            "version": document.version,
            "timestamp": crate::clock::epoch_seconds_signed(),
        });
        Some(Value::from(&answer))
    }
}

pub struct RulesEngine {
    broker: Broker,
    records: Records,
    env: NodeEnvironment,
    set: RwLock<Arc<RuleSet>>,
    metrics: RuleMetrics,
    targets: Targets,
    shutdown: watch::Receiver<bool>,
}

impl RulesEngine {
    pub fn new(
        broker: Broker,
        records: Records,
        shadows: ShadowService,
        account_id: &str,
        targets: Targets,
        metrics: RuleMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        RulesEngine {
            broker,
            records,
            env: NodeEnvironment {
                account_id: account_id.to_owned(),
                shadows,
            },
            set: RwLock::new(Arc::new(RuleSet::default())),
            metrics,
            targets,
            shutdown,
        }
    }

    /// Starts following the rules and taking messages; both run until the node stops.
    pub fn start(self: Arc<Self>, tasks: &mut Supervisor) -> Result<(), crate::broker::TapError> {
        // Basic Ingest always; the rules' own filters once they are read.
        let tap = self
            .broker
            .add_tap("rules", &[BASIC_INGEST_FILTER], QUEUE)?;
        tasks.spawn_critical("rules:follow", Arc::clone(&self).follow(tap.filters()));
        tasks.spawn_critical("rules:run", self.run(tap));
        Ok(())
    }

    /// Loads every rule, then again after each change; after a missed change (the watch fell
    /// behind the store's compaction), from scratch.
    async fn follow(self: Arc<Self>, tap: crate::broker::TapFilters) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let mut changes = match self.records.watch(keys::RULES_AND_DESTINATIONS) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the topic rules; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            // Watching began before this read, so no change between the two is missed.
            if let Err(e) = self.reload(&tap).await {
                tracing::warn!(error = %e, "cannot read the topic rules; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            loop {
                tokio::select! {
                    next = changes.next() => match next {
                        Some(Ok(_)) => {
                            if let Err(e) = self.reload(&tap).await {
                                tracing::warn!(error = %e, "cannot read the topic rules");
                            }
                        }
                        Some(Err(_)) | None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Reads every rule, compiles what changed, and has the tap take what the enabled rules'
    /// filters match, and Basic Ingest.
    async fn reload(&self, tap: &crate::broker::TapFilters) -> crate::services::error::Result<()> {
        let mut records = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self
                .records
                .page::<RuleRecord>(keys::RULES, after.as_deref(), 1000)
                .await?;
            after = page.last().map(|(key, _)| key.clone());
            records.extend(page.into_iter().map(|(_, r)| r));
            if !more {
                break;
            }
        }
        let mut destinations = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self
                .records
                .page::<DestinationRecord>(keys::RULE_DESTINATIONS, after.as_deref(), 1000)
                .await?;
            after = page.last().map(|(key, _)| key.clone());
            destinations.extend(page.into_iter().map(|(_, d)| d));
            if !more {
                break;
            }
        }
        let previous = Arc::clone(&self.set.read());
        let mut set = RuleSet::build(records, &previous, &self.metrics, &self.targets);
        set.destinations = destinations;
        for (name, rule) in &previous.by_name {
            if !set.by_name.contains_key(name) {
                self.metrics.forget(&rule.0);
            }
        }
        let set = Arc::new(set);
        let mut filters: Vec<&str> = set
            .by_name
            .values()
            .filter(|r| !r.0.record.rule_disabled)
            .filter_map(|r| r.0.statement.topic_filter())
            .collect();
        filters.push(BASIC_INGEST_FILTER);
        filters.sort_unstable();
        filters.dedup();
        // The set first: a message the widened tap takes finds its rule.
        self.metrics.rules.set(set.by_name.len() as i64);
        *self.set.write() = Arc::clone(&set);
        if let Err(e) = tap.set(&filters) {
            tracing::warn!(error = %e, "a rule's filter is refused by the broker's tap");
        }
        Ok(())
    }

    /// Hands each message from the tap to one of a few evaluators, by its topic, so that the
    /// messages of a topic are evaluated in the order they came and the cores share the work.
    /// A busy evaluator holds the tap back, whose full queue then drops and counts.
    async fn run(self: Arc<Self>, mut tap: crate::broker::Tap) {
        let evaluators = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_EVALUATORS);
        let mut queues = Vec::with_capacity(evaluators);
        for _ in 0..evaluators {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<Tapped>>(EVALUATOR_QUEUE);
            queues.push(sender);
            tokio::spawn(Arc::clone(&self).evaluate(receiver));
        }
        let mut shutdown = self.shutdown.clone();
        let mut taken = Vec::with_capacity(BATCH);
        let mut batches: Vec<Vec<Tapped>> = vec![Vec::new(); evaluators];
        loop {
            // In batches, so that the engine's tasks keep pace with the many connections'
            // tasks that fill the tap (each wake of a task is a turn among all of them).
            tokio::select! {
                n = tap.recv_many(&mut taken, BATCH) => if n == 0 {
                    return;
                },
                _ = shutdown.changed() => return,
            }
            for tapped in taken.drain(..) {
                batches[topic_hash(&tapped.message.topic) % evaluators].push(tapped);
            }
            for (queue, batch) in queues.iter().zip(batches.iter_mut()) {
                if !batch.is_empty() && queue.send(std::mem::take(batch)).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn evaluate(self: Arc<Self>, queue: tokio::sync::mpsc::Receiver<Vec<Tapped>>) {
        CONGESTED
            .scope(RefCell::new(None), self.evaluate_in_scope(queue))
            .await;
    }

    async fn evaluate_in_scope(
        self: &Arc<Self>,
        mut queue: tokio::sync::mpsc::Receiver<Vec<Tapped>>,
    ) {
        let mut counts = LocalCounts::default();
        let signal = Arc::new(Signal::default());
        while let Some(batch) = queue.recv().await {
            for tapped in &batch {
                self.process(tapped, &mut counts);
                if let Some(session) = CONGESTED.with(|c| c.borrow_mut().take()) {
                    counts.flush();
                    self.wait_for_subscriber(&session, &signal).await;
                }
            }
            counts.messages += batch.len();
            if counts.messages >= FLUSH_EVERY || queue.is_empty() {
                counts.flush();
            }
        }
        counts.flush();
    }

    /// Waits until a subscriber the engine's republishing filled has room again, as a
    /// publisher's connection would: the engine then falls behind, its tap fills, and the
    /// publishers feeding it pause, rather than the subscriber losing messages. A subscriber
    /// that takes nothing for `mqtt.slow_subscriber_timeout` is marked slow and waited for no
    /// more.
    async fn wait_for_subscriber(&self, session: &Arc<Session>, signal: &Arc<Signal>) {
        let limits = QueueLimits::of(self.broker.config());
        let timeout = Duration::from_secs(u64::from(self.broker.config().slow_subscriber_timeout));
        let mut progress = session.progress();
        loop {
            let notified = signal.notified();
            session.wait_for_space(signal, limits);
            if session.has_space(limits) {
                return;
            }
            if tokio::time::timeout(timeout, notified).await.is_err() {
                if session.progress() == progress {
                    session.mark_slow();
                    return;
                }
                progress = session.progress();
            }
        }
    }

    /// Runs every rule `tapped` reaches.
    fn process(self: &Arc<Self>, tapped: &Tapped, counts: &mut LocalCounts) {
        let set = Arc::clone(&self.set.read());
        let full_topic: &str = &tapped.message.topic;
        let (topic, rules) = match full_topic.strip_prefix(BASIC_INGEST) {
            Some(rest) => {
                let (name, topic) = rest.split_once('/').unwrap_or((rest, ""));
                (topic, set.by_name.get(name).cloned().into_iter().collect())
            }
            None => {
                let mut matched = Vec::new();
                set.filters.matches(full_topic, &mut matched);
                let rules: Vec<Rule> = matched.into_iter().map(|s| s.target.clone()).collect();
                (full_topic, rules)
            }
        };
        let rules: Vec<Rule> = rules
            .into_iter()
            .filter(|r| !r.0.record.rule_disabled)
            .collect();
        if rules.is_empty() {
            return;
        }
        let payload: &[u8] = &tapped.message.payload;
        let document = Document::parse(payload);
        let properties = sql_properties(&tapped.message);
        let message = SqlMessage {
            topic,
            payload,
            document: &document,
            client_id: tapped.client_id.as_deref(),
            principal: tapped.principal.as_deref(),
            timestamp_ms: i64::try_from(crate::clock::epoch_millis()).unwrap_or(i64::MAX),
            trace_id: None,
            properties: &properties,
        };
        for rule in rules {
            self.run_rule(&rule.0, &message, counts.of(&rule.0));
        }
    }

    fn run_rule(
        self: &Arc<Self>,
        rule: &Arc<Compiled>,
        message: &SqlMessage<'_>,
        counters: &mut LocalRule,
    ) {
        counters.matched.inc();
        let started = Instant::now();
        let output = rule.statement.evaluate(message, &self.env);
        counters.evaluation.observe(started.elapsed().as_secs_f64());
        let Some(output) = output else {
            return;
        };
        counters.fired.inc();
        let json = matches!(output, halyard_sql::Output::Json(_));
        let payload = Bytes::from(output.to_payload());
        if !rule.leaves_the_node() {
            let mut failures = Vec::new();
            for (position, action) in rule.actions.iter().enumerate() {
                let outcome = self.run_here(action, message, &payload);
                counters.count(position, outcome.is_ok());
                failures.extend(outcome.err());
            }
            if !failures.is_empty() {
                self.send_error_report(rule, message, &failures);
            }
            return;
        }
        let report = Report::new(
            Arc::clone(self),
            Arc::clone(rule),
            Arc::new(OwnedMessage::of(message)),
            rule.actions.len(),
        );
        for (position, (action, sink)) in rule.actions.iter().zip(&rule.sinks).enumerate() {
            let Some(sink) = sink else {
                let outcome = self.run_here(action, message, &payload);
                counters.count(position, outcome.is_ok());
                report.done(outcome);
                continue;
            };
            match self.outbound(action, message, json, &payload, &report) {
                Ok(job) => {
                    if let Err(job) = sink.offer(job) {
                        counters.count(position, false);
                        job.report.done(Err(Failure {
                            action: job.action,
                            resource: job.resource,
                            message: "the action's queue is full".to_owned(),
                        }));
                    }
                }
                Err(failure) => {
                    counters.count(position, false);
                    report.done(Err(failure));
                }
            }
        }
        report.sealed();
    }

    /// Counts an action's outcome (the workers of actions that leave the node report here).
    pub(super) fn count_action(&self, rule: &str, action: &str, outcome: &str) {
        self.metrics
            .actions
            .with_label_values(&[rule, action, outcome])
            .inc();
    }

    /// Sends the rule's error action one report of `failures` for `message`.
    pub(super) fn send_error_report(
        &self,
        rule: &Compiled,
        message: &SqlMessage<'_>,
        failures: &[Failure],
    ) {
        let name = rule.record.rule_name.as_str();
        tracing::debug!(
            rule = name,
            failures = failures.len(),
            "rule actions failed"
        );
        let Some(error_action) = &rule.error_action else {
            return;
        };
        let report = serde_json::json!({
            "ruleName": name,
            "topic": message.topic,
            "cloudwatchTraceId": crate::ids::uuid_v4(),
            "clientId": message.client_id.unwrap_or("n/a"),
            "base64OriginalPayload": base64::engine::general_purpose::STANDARD.encode(message.payload),
            "failures": failures.iter().map(Failure::to_json).collect::<Vec<_>>(),
        });
        let payload = Bytes::from(report.to_string());
        let outcome = match &rule.error_sink {
            Some(sink) => {
                // Its own outcome is counted, and reported to no one.
                let quiet = Report::new_detached();
                self.outbound(error_action, message, true, &payload, &quiet)
                    .map_err(|_| ())
                    .and_then(|job| sink.offer(job).map_err(|_| ()))
            }
            None => self
                .run_here(error_action, message, &payload)
                .map_err(|_| ()),
        };
        let label = if outcome.is_ok() {
            "error_action"
        } else {
            "error_action_failed"
        };
        self.count_action(name, &error_action.failed_action(), label);
    }

    /// Runs an action that does not leave the node; on failure, what failed and why.
    fn run_here(
        &self,
        action: &Action,
        message: &SqlMessage<'_>,
        payload: &Bytes,
    ) -> Result<(), Failure> {
        let failed = |resource: String, message: String| Failure {
            action: action.failed_action(),
            resource,
            message,
        };
        match action {
            Action::Republish(republish) => self
                .republish(republish, message, payload)
                .map_err(|(resource, why)| failed(resource, why)),
            Action::Http(http) => Err(failed(
                http.url_text.clone(),
                "the action's queue is gone".to_owned(),
            )),
            Action::Aws(aws) => Err(failed(
                aws.kind.to_owned(),
                "the action's queue is gone".to_owned(),
            )),
            Action::Timestream(timestream) => Err(failed(
                format!("{}.{}", timestream.database, timestream.table),
                "no PostgreSQL is configured for the timestream action (rules.postgres_url)"
                    .to_owned(),
            )),
            Action::NotRun { kind } => Err(failed(
                (*kind).to_owned(),
                format!("the {kind} action is not available on this Halyard node"),
            )),
        }
    }

    /// The request an action that leaves the node makes for `message`, or why it cannot.
    fn outbound(
        &self,
        action: &Action,
        message: &SqlMessage<'_>,
        json: bool,
        payload: &Bytes,
        report: &Arc<Report>,
    ) -> Result<OutboundJob, Failure> {
        let failure = |resource: String, message: String| Failure {
            action: action.failed_action(),
            resource,
            message,
        };
        let (work, resource) = match action {
            Action::Http(http) => {
                let request = http_request(http, message, &self.env, json, payload);
                if let Some(destination) = self.set.read().refuses(&request.url) {
                    return Err(failure(
                        request.url.clone(),
                        format!(
                            "the topic rule destination {} is {}",
                            destination.confirmation_url, destination.status
                        ),
                    ));
                }
                let signing = match &http.sigv4 {
                    None => None,
                    Some(sigv4) => {
                        let Some(keys) = &self.targets.keys else {
                            return Err(failure(
                                request.url.clone(),
                                "auth.sigv4 needs keys to sign with (rules.aws_access_key_id, rules.aws_secret_access_key)".to_owned(),
                            ));
                        };
                        Some(Arc::new(AwsEndpoint {
                            url: String::new(),
                            region: sigv4.region.clone(),
                            keys: Some(keys.clone()),
                        }))
                    }
                };
                let resource = request.resource.clone();
                (
                    Work::Http {
                        request: Box::new(request),
                        signing,
                    },
                    resource,
                )
            }
            Action::Aws(aws_action) => {
                let Some(endpoint) = &self.targets.aws else {
                    return Err(failure(
                        aws_action.kind.to_owned(),
                        "no AWS-compatible endpoint is configured (rules.aws_endpoint)".to_owned(),
                    ));
                };
                let request = aws::prepare(endpoint, aws_action, message, &self.env, payload)
                    .map_err(|(resource, message)| failure(resource, message))?;
                let resource = request.resource.clone();
                (
                    Work::Http {
                        request: Box::new(request),
                        signing: Some(Arc::clone(endpoint)),
                    },
                    resource,
                )
            }
            Action::Timestream(timestream) => {
                let resource = format!("{}.{}", timestream.database, timestream.table);
                if !json {
                    return Err(failure(
                        resource,
                        "the rule's output is not a JSON object".to_owned(),
                    ));
                }
                let row = timestream
                    .row(message, &self.env, payload)
                    .map_err(|why| failure(resource.clone(), why))?;
                (Work::Row(Box::new(row)), resource)
            }
            other => {
                return Err(failure(
                    String::new(),
                    format!("the {} does not leave the node", other.failed_action()),
                ));
            }
        };
        Ok(OutboundJob {
            work,
            resource,
            action: action.failed_action(),
            report: Arc::clone(report),
        })
    }

    fn republish(
        &self,
        republish: &Republish,
        message: &SqlMessage<'_>,
        payload: &Bytes,
    ) -> Result<(), (String, String)> {
        let topic = republish.topic.render(message, &self.env);
        if crate::mqtt::topic::validate_name(&topic, usize::from(u16::MAX), usize::MAX).is_err() {
            return Err((
                topic.clone(),
                format!(
                    "'{topic}' (from '{}') is not a topic a message can be published to",
                    republish.topic_text
                ),
            ));
        }
        let published = self.broker.publish(
            crate::broker::Message {
                topic: topic.as_str().into(),
                payload: payload.clone(),
                qos: republish.qos,
                retain: false,
                properties: None,
                expires_at: None,
                origin: 0,
            },
            None,
        );
        if published.refused {
            return Err((
                topic,
                "the broker refused the message: the store cannot take more now".to_owned(),
            ));
        }
        if let Some(session) = published.congested {
            // Only an evaluating task waits; an error report sent by an action's worker
            // does not.
            let _ = CONGESTED.try_with(|c| *c.borrow_mut() = Some(session));
        }
        Ok(())
    }
}

/// The POST of an HTTP action for `message`: URL and header values from their templates.
fn http_request(
    http: &Http,
    message: &SqlMessage<'_>,
    env: &NodeEnvironment,
    json: bool,
    payload: &Bytes,
) -> aws::Prepared {
    let url = http.url.render(message, env);
    aws::Prepared {
        method: "POST",
        resource: url.clone(),
        url,
        service: http
            .sigv4
            .as_ref()
            .map_or(std::borrow::Cow::Borrowed(""), |s| s.service.clone().into()),
        headers: http
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.render(message, env)))
            .collect(),
        content_type: if json {
            "application/json"
        } else {
            "application/octet-stream"
        },
        body: payload.clone(),
    }
}

/// FNV-1a of a topic: which evaluating task takes its messages.
fn topic_hash(topic: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

/// The MQTT 5 properties the SQL functions read.
fn sql_properties(message: &crate::broker::Message) -> MqttProperties {
    let Some(p) = message.properties.as_deref() else {
        return MqttProperties::default();
    };
    MqttProperties {
        content_type: p.content_type.clone(),
        payload_format_utf8: p.payload_format_indicator.map(|f| f == 1),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|d| d.to_vec()),
        user_properties: p.user_properties.clone(),
    }
}
