//! The one way a message enters the broker, whoever sent it: an MQTT client's PUBLISH, an HTTPS
//! publish, a service's answer, an event of the broker's own (lifecycle, registry, shadow), and
//! in a cluster a message forwarded by another node. In order, a message is
//!
//! 1. handed to every service whose request topics it matches (`$aws/things/+/shadow/update`..),
//! 2. offered to every tap whose filters it matches (bounded queues: a full tap loses the
//!    message, counted, and never holds up the publisher),
//! 3. routed to the sessions subscribed to it, with its retained copy and the copies queued
//!    for persistent sessions written to the store.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::durable::{self, Durable};
use super::message::{Delivery, Message};
use super::services::{ServiceRequest, TopicService};
use super::session::{Enqueued, QueueLimits, Session, Signal};
use super::taps::{Offered, TapQueue, Tapped};
use super::{Broker, GroupKey, Handoff, Published};
use crate::mqtt::QoS;

/// Who a message came from and what it is owed.
#[derive(Default, Clone, Copy)]
pub struct Ingress<'a> {
    /// The client session that published it: services answer it, taps learn its client id,
    /// and No Local subscriptions of its own skip it.
    pub publisher: Option<&'a Arc<Session>>,
    /// A service's answer reaches this session even without a subscription that matches, as
    /// AWS IoT answers shadow and job requests; once only if it has one.
    pub reply_to: Option<&'a Arc<Session>>,
    /// Woken when the store writes the message needs are durable.
    pub waker: Option<&'a Arc<Signal>>,
}

/// A message of the broker's own (an AWS IoT event or a service's answer): QoS 1, not retained.
pub(super) fn event(topic: String, payload: impl Into<Bytes>) -> Message {
    Message {
        topic: topic.into(),
        payload: payload.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        origin: 0,
    }
}

/// Topics that go to one topic rule only (`$aws/rules/{rule}/...`).
pub const BASIC_INGEST: &str = "$aws/rules/";

/// Where a message entered the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival<'a> {
    /// At this node: from a client, a service or the broker itself.
    Here,
    /// Forwarded by the node it arrived at, which chose this node to serve the share groups
    /// (name, filter) listed.
    Forwarded(&'a [(String, String)]),
}

impl Broker {
    /// Whether `mqtt.max_pending_writes` store writes wait already (the store has no quorum
    /// or cannot keep up): what would add to them is refused, so that the backlog is bounded
    /// and nothing is acknowledged that the store cannot keep.
    pub fn store_backlogged(&self) -> bool {
        self.inner
            .durable
            .as_ref()
            .is_some_and(|durable| durable.backlog() >= self.inner.config.max_pending_writes)
    }

    /// Takes `message` through the services, the taps and the subscriptions, in that order.
    /// A QoS 1/2 message is refused (`Published::refused`) while more than
    /// `mqtt.max_pending_writes` store writes wait for a store without quorum: it could not be
    /// made durable, so it must not be acknowledged, and the backlog must not grow without end;
    /// and while a tap it matches is at its hard limit, since an acknowledged message must be
    /// in every tap (see [`super::taps`]).
    pub fn ingest(&self, message: Message, ingress: Ingress<'_>) -> Published {
        if message.qos != QoS::AtMostOnce && self.store_backlogged() {
            self.inner.metrics.publish_refused("store_backlog");
            return Published {
                refused: true,
                ..Published::default()
            };
        }
        let taps = self.matching_taps(&message.topic);
        // Refused as a whole before anything acts on it: acknowledged, it must be in every tap.
        if message.qos != QoS::AtMostOnce && taps.iter().any(|t| t.is_full()) {
            self.inner.metrics.publish_refused("tap_full");
            return Published {
                refused: true,
                ..Published::default()
            };
        }
        let message = Arc::new(message);
        let (served, private) = self.serve(&message, ingress.publisher);
        if private {
            return Published {
                served,
                ..Published::default()
            };
        }
        let tap_congested = self.tap(taps, &message, ingress.publisher);
        // Basic Ingest: the rules engine's tap has it; no subscriber, retained copy or other
        // node does.
        let mut published = if message.topic.starts_with(BASIC_INGEST) {
            Published::default()
        } else {
            self.route(
                &message,
                ingress.waker,
                ingress.reply_to.map(|s| s.id),
                Arrival::Here,
            )
        };
        published.served = served;
        published.tap_congested = tap_congested;
        if let Some(requester) = ingress.reply_to
            && !published.requester_offered
        {
            self.deliver_to(requester, message);
        }
        published
    }

    /// Queues `message` for `requester` alone, whatever it subscribed to.
    fn deliver_to(&self, requester: &Arc<Session>, message: Arc<Message>) {
        let delivery = Delivery {
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            stored: 0,
            fence: 0,
        };
        if let Enqueued::Dropped(reason) =
            requester.enqueue(delivery, QueueLimits::of(&self.inner.config))
        {
            self.inner.metrics.message_dropped(reason);
        }
    }

    /// Ingests a message that no client published (a will, an HTTPS publish).
    pub fn publish(&self, message: Message, waker: Option<&Arc<Signal>>) -> Published {
        self.ingest(
            message,
            Ingress {
                waker,
                ..Ingress::default()
            },
        )
    }

    /// Publishes an event of the broker's own (an AWS IoT event): QoS 1, not retained. Callers
    /// that build the payload first ask [`Broker::wants`].
    pub fn publish_event(&self, topic: String, payload: String) {
        self.publish(event(topic, payload), None);
    }

    /// Publishes a service's answer, to `requester` even when it did not subscribe.
    pub fn reply(
        &self,
        topic: String,
        payload: impl Into<Bytes>,
        requester: Option<&Arc<Session>>,
    ) {
        self.ingest(
            event(topic, payload),
            Ingress {
                reply_to: requester,
                ..Ingress::default()
            },
        );
    }

    /// Delivers a service's answer to `requester` alone: no other subscriber, node, tap or
    /// rule sees it. What fleet provisioning answers holds a device's private key and its
    /// ownership token, which every other device subscribed to the same topic would otherwise
    /// receive.
    pub fn reply_privately(
        &self,
        topic: String,
        payload: impl Into<Bytes>,
        requester: Option<&Arc<Session>>,
    ) {
        if let Some(requester) = requester {
            self.deliver_to(requester, Arc::new(event(topic, payload)));
        }
    }

    /// Publishes `message` and returns once the store writes it needs (its retained copy, the
    /// copies queued for persistent sessions) are durable and every other node it went to has
    /// it; false if that is not so within `timeout`, or if the message was refused.
    pub async fn publish_persisted(&self, message: Message, timeout: Duration) -> bool {
        let signal = Arc::new(Signal::default());
        let published = self.publish(message, Some(&signal));
        if published.refused {
            return false;
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before looking, so that a wake between the look and the wait counts.
            let notified = signal.notified();
            if self.is_settled(published.durable_seq, &published.handoffs) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                return self.is_settled(published.durable_seq, &published.handoffs);
            }
        }
    }

    /// Whether store write `durable_seq` is durable and every node in `handoffs` has its copy:
    /// what a publisher waits for before its message is acknowledged.
    pub fn is_settled(&self, durable_seq: u64, handoffs: &[Handoff]) -> bool {
        let durable = durable_seq == 0
            || self
                .inner
                .durable
                .as_ref()
                .is_none_or(|d| d.is_durable(durable_seq));
        durable && handoffs.iter().all(Handoff::settled)
    }

    /// Whether a message on `topic` would reach anyone (a service, a tap, a subscriber here
    /// or on another node): a message nobody takes need not be built.
    pub fn wants(&self, topic: &str) -> bool {
        self.answering(topic).next().is_some()
            || self.inner.taps.read().has_match(topic)
            || self.inner.trie.read().has_match(topic)
            || self.remote().is_some_and(|r| r.reaches(topic))
    }

    /// Adds a service that answers requests published on its topics, for as long as the
    /// caller keeps it.
    pub fn register_service(&self, service: &Arc<dyn TopicService>) {
        self.inner.services.write().push(Arc::downgrade(service));
    }

    /// The services whose request topics include `topic`; only `$aws/` topics have any.
    fn answering(&self, topic: &str) -> impl Iterator<Item = Arc<dyn TopicService>> {
        let services: Vec<Arc<dyn TopicService>> = if topic.starts_with("$aws/") {
            self.inner
                .services
                .read()
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|s| s.answers(topic))
                .collect()
        } else {
            Vec::new()
        };
        services.into_iter()
    }

    /// Hands `message` to every service that answers its topic; how many took it, and
    /// Whether one of them keeps its requests private.
    fn serve(&self, message: &Arc<Message>, requester: Option<&Arc<Session>>) -> (usize, bool) {
        let mut served = 0;
        let mut private = false;
        for service in self.answering(&message.topic) {
            private |= service.private();
            service.request(ServiceRequest {
                topic: Arc::clone(&message.topic),
                payload: message.payload.clone(),
                requester: requester.cloned(),
            });
            served += 1;
        }
        (served, private)
    }

    /// The taps whose filters match `topic`, each once.
    fn matching_taps(&self, topic: &str) -> Vec<Arc<TapQueue>> {
        let taps = self.inner.taps.read();
        if taps.is_empty() {
            return Vec::new();
        }
        let mut matches = Vec::new();
        taps.matches(topic, &mut matches);
        if matches.len() > 1 {
            // A tap with overlapping filters sees a message once.
            matches.sort_unstable_by_key(|s| s.target.id());
            matches.dedup_by_key(|s| s.target.id());
        }
        matches.into_iter().map(|s| Arc::clone(&s.target)).collect()
    }

    /// Offers `message` to `taps`; returns one that holds more than its capacity now.
    fn tap(
        &self,
        taps: Vec<Arc<TapQueue>>,
        message: &Arc<Message>,
        publisher: Option<&Arc<Session>>,
    ) -> Option<Arc<TapQueue>> {
        let mut congested = None;
        for tap in taps {
            let offered = tap.offer(Tapped {
                message: Arc::clone(message),
                client_id: publisher.map(|s| Arc::clone(&s.client_id)),
                principal: publisher.and_then(|s| s.principal()),
            });
            if offered == Offered::Congested {
                congested = Some(tap);
            }
        }
        congested
    }

    /// Routes `message` to every matching subscription and stores it when retained; notes
    /// whether the session `requester` was among those offered it.
    fn route(
        &self,
        message: &Arc<Message>,
        waker: Option<&Arc<Signal>>,
        requester: Option<u64>,
        arrival: Arrival<'_>,
    ) -> Published {
        let durable = self.inner.durable.as_ref();
        let mut ops = Vec::new();
        if message.retain && self.inner.config.retain_available {
            // The node it arrived at stores it; the others only index it.
            let store = durable.filter(|_| arrival == Arrival::Here);
            self.retain(message, store, &mut ops);
        }
        let trie = self.inner.trie.read();
        let mut matches = Vec::new();
        let mut shared = Vec::new();
        trie.matches_split(&message.topic, &mut matches, &mut shared);
        // Each share group gets the message once in the cluster: here when this node has a
        // connected member (or nobody else has one), else from a node the arrival node picks.
        let mut served: Vec<GroupKey<'_>> = Vec::new();
        // Which of the groups another node sent here have a member here.
        let mut named_taken = match arrival {
            Arrival::Forwarded(groups) => vec![false; groups.len()],
            Arrival::Here => Vec::new(),
        };
        for pick in shared {
            let key = (pick.group, pick.filter);
            let take = match arrival {
                Arrival::Here => {
                    let take = pick.subscriber.target.is_connected()
                        || self.remote().is_none_or(|r| !r.has_share_member(key));
                    if take {
                        served.push(key);
                    }
                    take
                }
                Arrival::Forwarded(groups) => {
                    let named = groups
                        .iter()
                        .position(|(group, filter)| group == pick.group && filter == pick.filter);
                    if let Some(i) = named {
                        named_taken[i] = true;
                    }
                    named.is_some()
                }
            };
            if take {
                matches.push(pick.subscriber);
            }
        }
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|s| s.target.id);
        }
        let max_queued = QueueLimits::of(&self.inner.config);
        let mut outcome = Published {
            unserved_groups: named_taken
                .iter()
                .enumerate()
                .filter(|(_, taken)| !**taken)
                .map(|(i, _)| i)
                .collect(),
            ..Published::default()
        };
        // Overlapping subscriptions of one session yield one delivery at the highest QoS,
        // carrying every subscription identifier.
        for group in matches.chunk_by(|a, b| a.target.id == b.target.id) {
            let session = &group[0].target;
            let mut delivery: Option<Delivery> = None;
            for sub in group {
                if sub.options.no_local && session.id == message.origin {
                    continue;
                }
                let d = delivery.get_or_insert_with(|| Delivery {
                    message: Arc::clone(message),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    stored: 0,
                    fence: 0,
                });
                d.qos = d.qos.max(message.qos.min(sub.options.qos));
                d.retain |= sub.options.retain_as_published && message.retain;
                if let Some(id) = sub.subscription_id {
                    d.subscription_ids.push(id);
                }
            }
            let Some(mut delivery) = delivery else {
                continue;
            };
            outcome.offered += 1;
            outcome.requester_offered |= requester == Some(session.id);
            let mut stored = None;
            if let Some(durable) = durable
                && delivery.qos != QoS::AtMostOnce
                && session.is_persistent()
            {
                delivery.stored = durable.next_message_seq();
                if session.is_catching_up() {
                    delivery.fence = durable.submitted() + 1;
                }
                stored = Some(halyard_raft::Op::put(
                    session.queue_key(delivery.stored),
                    durable::encode_message(
                        message,
                        delivery.qos,
                        delivery.retain,
                        &delivery.subscription_ids,
                    ),
                ));
            }
            let lingering = (stored.is_some() && session.is_lingering()).then(|| delivery.clone());
            let held = delivery.fence != 0;
            let enqueued = session.enqueue(delivery, max_queued);
            if held && matches!(enqueued, Enqueued::Queued | Enqueued::Congested) {
                self.hold(session);
            }
            if let Some(op) = stored
                && !matches!(enqueued, Enqueued::Dropped(_) | Enqueued::Gone)
            {
                ops.push(op);
                if let Some(copy) = lingering
                    && let Some(remote) = self.remote()
                {
                    remote.stored_lingering(&session.client_id, copy);
                }
            }
            match enqueued {
                Enqueued::Dropped(reason) => self.inner.metrics.message_dropped(reason),
                // Never pause a publisher on its own session: paused, it stops reading the
                // acks that would drain that session.
                Enqueued::Congested
                    if outcome.congested.is_none() && session.id != message.origin =>
                {
                    outcome.congested = Some(Arc::clone(session));
                }
                _ => {}
            }
        }
        if arrival == Arrival::Here
            && let Some(remote) = self.remote()
        {
            outcome.handoffs = remote.forward(message, waker, &served, &mut ops);
        }
        if let Some(durable) = durable
            && !ops.is_empty()
        {
            outcome.durable_seq = durable.submit(ops, waker);
        }
        outcome
    }

    /// Delivers a message another node forwarded to this node's subscribers. It has been
    /// through that node's services and taps, and goes to no other node from here. `waker` is
    /// woken when the copies it queued for persistent sessions are durable.
    pub fn deliver_forwarded(
        &self,
        message: &Arc<Message>,
        waker: &Arc<Signal>,
        share_groups: &[(String, String)],
    ) -> Published {
        self.route(message, Some(waker), None, Arrival::Forwarded(share_groups))
    }

    /// Follows the store's retained messages, which any node may have changed: `stored` is
    /// the record of `topic` as written at `modified_ms` (`None`: cleared). A record older
    /// than the one held is a change this node made after it, and does not undo it.
    pub fn apply_stored_retained(&self, topic: &str, stored: Option<(Message, u64)>) {
        let mut retained = self.inner.retained.write();
        match stored {
            Some((message, modified_ms)) => {
                if retained
                    .get(topic)
                    .is_some_and(|held| held.modified_ms > modified_ms)
                {
                    return;
                }
                retained.update(&Arc::new(message), modified_ms);
            }
            None => retained.remove(topic),
        }
        self.inner
            .metrics
            .retained_messages
            .set(retained.len() as i64);
    }

    /// Keeps `message` as its topic's retained message (an empty payload clears it).
    fn retain(
        &self,
        message: &Arc<Message>,
        durable: Option<&Arc<Durable>>,
        ops: &mut Vec<halyard_raft::Op>,
    ) {
        let modified_ms = crate::clock::epoch_millis();
        let mut retained = self.inner.retained.write();
        retained.update(message, modified_ms);
        self.inner
            .metrics
            .retained_messages
            .set(retained.len() as i64);
        drop(retained);
        if durable.is_some() {
            let key = crate::store::keys::retained(&message.topic);
            ops.push(if message.payload.is_empty() {
                halyard_raft::Op::delete(key)
            } else {
                halyard_raft::Op::put(key, durable::encode_retained(message, modified_ms))
            });
        }
    }
}
