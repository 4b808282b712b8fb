//! One client connection's protocol state machine, without I/O: the shell
//! in `gateway` feeds it packets, timeouts and wake-ups, and writes out
//! what it leaves in [`Connection::out`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::close::CloseKind;
use super::ingest::Ingress;
use super::lifecycle::Presence;
use super::session::{Attachment, Inflight, QueueLimits, Session, Signal};
use super::{Broker, Claim, ClaimOutcome, Delivery, Handoff, Message};
use crate::auth::permissions::{Access, Action};
use crate::metrics::DropReason;
use crate::mqtt::topic::{self, TopicError};
use crate::mqtt::{
    Ack, AckKind, ConnAck, Connect, DecodeError, Disconnect, Encoder, Packet, Properties,
    ProtocolVersion, Publish, PublishRef, QoS, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Will, reason,
};

/// Once this much is waiting to be written, deliveries pause until it is flushed.
const FLUSH_THRESHOLD: usize = 64 * 1024;

/// Topics under this prefix are AWS IoT reserved topics, exempt from the
/// topic length and depth limits as in AWS IoT Core.
const RESERVED_PREFIX: &str = "$aws/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Active,
    Closed,
}

/// Topic aliases of a v5 connection, both ways.
#[derive(Default)]
struct TopicAliases {
    inbound: HashMap<u16, Arc<str>>,
    outbound: HashMap<Arc<str>, u16>,
}

/// Packets held back while paused; beyond this the shell stops reading.
const HOLD_LIMIT: usize = 64;

/// Responses waiting for their store writes past which no more packets are read.
const RESPONSE_BACKLOG_LIMIT: usize = 1024;

/// A response held until the store write it reports on is durable.
enum Response {
    Ack(AckKind, u16, u8),
    /// A SUBACK and the retained messages that follow it.
    SubAck(Packet, Vec<Delivery>),
    Packet(Packet),
}

/// What a CONNECT settled before its session could be opened.
struct PendingConnect {
    claim: Option<Arc<Claim>>,
    client_id: String,
    clean_start: bool,
    assigned_client_id: Option<String>,
    server_keep_alive: Option<u16>,
    requested_expiry: u32,
    claimed_at: u64,
}

/// What a response waits for: a store write (0: none) and other nodes' receipts.
#[derive(Default)]
struct Wait {
    durable_seq: u64,
    handoffs: Vec<Handoff>,
    /// When the response began to wait, once it has to.
    since: Option<Instant>,
}

impl Wait {
    fn durable(seq: u64) -> Self {
        Wait {
            durable_seq: seq,
            ..Wait::default()
        }
    }
}

/// What a paused publisher waits for.
enum Congested {
    /// A subscriber's queue to drain.
    Subscriber(Arc<Session>),
    /// A tap's consumer (the rules engine) to catch up.
    Tap(Arc<crate::broker::TapQueue>),
}

impl Congested {
    fn progress(&self) -> u64 {
        match self {
            Congested::Subscriber(session) => session.progress(),
            Congested::Tap(tap) => tap.progress(),
        }
    }

    fn has_space(&self, limits: QueueLimits) -> bool {
        match self {
            Congested::Subscriber(session) => session.has_space(limits),
            Congested::Tap(tap) => tap.has_space(),
        }
    }

    fn wait_for_space(&self, publisher: &Arc<Signal>, limits: QueueLimits) {
        match self {
            Congested::Subscriber(session) => session.wait_for_space(publisher, limits),
            Congested::Tap(tap) => tap.wait_for_space(publisher),
        }
    }
}

/// A publisher paused until a congested subscriber's queue drains or a tap catches up.
struct Pause {
    on: Congested,
    /// When to look again whether the subscriber is making progress.
    until: Instant,
    /// The subscriber's progress when the pause began or was last checked.
    progress: u64,
}

pub struct Connection {
    broker: Broker,
    paused: Option<Pause>,
    /// Packets that arrived while paused, handled in order on resume.
    /// Boxed: only a paused connection has any, and an empty VecDeque
    /// inline would cost every connection its 32 bytes.
    #[allow(clippy::box_collection)]
    held: Option<Box<VecDeque<Packet>>>,
    /// Responses in the order they must be sent, each with what it waits for (besides the
    /// ones before it). Boxed for the same reason as `held`.
    #[allow(clippy::box_collection)]
    responses: Option<Box<VecDeque<(Wait, Response)>>>,
    id: u64,
    waker: Arc<Signal>,
    phase: Phase,
    close_kind: Option<CloseKind>,
    version: ProtocolVersion,
    session: Option<Arc<Session>>,
    /// Boxed: most connections have none, and every byte here is paid per connection.
    will: Option<Box<Will>>,
    last_received: Instant,
    keep_alive: Option<Duration>,
    session_expiry: u32,
    client_receive_maximum: usize,
    client_max_packet_size: usize,
    client_topic_alias_maximum: u16,
    /// Created by the first topic alias, in either direction.
    aliases: Option<Box<TopicAliases>>,
    encoder: Encoder,
    /// What the client may do; none: everything (an anonymous listener that allows all).
    access: Option<Arc<Access>>,
    peer: Option<std::net::IpAddr>,
    /// Set once connected, when lifecycle events are on.
    presence: Option<Box<Presence>>,
    /// A CONNECT waiting for its session to be claimed from another node.
    claiming: Option<Box<PendingConnect>>,
    /// Encoded packets waiting to be written to the socket.
    pub out: BytesMut,
}

impl Connection {
    pub fn new(broker: Broker, now: Instant) -> Connection {
        let id = broker.next_id();
        let waker = Arc::new(Signal::default());
        broker.deadlines().register(id, &waker);
        Connection {
            broker,
            paused: None,
            held: None,
            responses: None,
            id,
            waker,
            phase: Phase::AwaitingConnect,
            close_kind: None,
            version: ProtocolVersion::V311,
            session: None,
            will: None,
            last_received: now,
            keep_alive: None,
            session_expiry: 0,
            client_receive_maximum: usize::from(u16::MAX),
            client_max_packet_size: usize::MAX,
            client_topic_alias_maximum: 0,
            aliases: None,
            encoder: Encoder::new(),
            access: None,
            peer: None,
            presence: None,
            claiming: None,
            out: BytesMut::new(),
        }
    }

    /// Limits the connection to what `access` allows, from its CONNECT on.
    pub fn set_access(&mut self, access: Arc<Access>) {
        access.attach(Arc::clone(&self.waker) as Arc<dyn crate::auth::permissions::Wake>);
        self.access = Some(access);
    }

    /// The client's address, for lifecycle events.
    pub fn set_peer(&mut self, peer: std::net::IpAddr) {
        self.peer = Some(peer);
    }

    /// Refuses the CONNECT before it is handled: authentication failed.
    pub fn refuse_connect(&mut self, version: ProtocolVersion, code: u8) {
        self.version = version;
        self.broker.metrics().denied("connect");
        self.refuse(code);
    }

    fn permitted(&self, action: Action, resource: &str) -> bool {
        let allowed = self
            .access
            .as_ref()
            .is_none_or(|a| a.allows(action, resource));
        if !allowed {
            self.broker.metrics().denied(action.metric_label());
        }
        allowed
    }

    /// Notified whenever the session has something for this connection, or
    /// another connection took the session over.
    pub fn waker(&self) -> Arc<Signal> {
        Arc::clone(&self.waker)
    }

    pub fn metrics(&self) -> &crate::metrics::BrokerMetrics {
        self.broker.metrics()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.broker.is_shutting_down()
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Largest packet accepted from the client.
    pub fn max_packet_size(&self) -> usize {
        self.broker.config().max_packet_size as usize
    }

    /// The connection's signal fired: notices a server shutdown or a passed
    /// deadline, and resumes publishing if the subscriber it was paused on
    /// has room again.
    pub fn woken(&mut self, now: Instant) {
        if self.broker.is_shutting_down() {
            return self.shutdown();
        }
        if self.phase == Phase::Active && self.session.as_ref().is_some_and(|s| s.is_evicted()) {
            return self.send_away();
        }
        if let Some(outcome) = self
            .claiming
            .as_ref()
            .and_then(|p| p.claim.as_ref())
            .and_then(|c| c.outcome())
            && let Some(pending) = self.claiming.take()
        {
            match outcome {
                // A connection made on another node since: that one wins, and this one's
                // session must not be started afresh under it.
                ClaimOutcome::Owned
                    if self
                        .broker
                        .superseded(&pending.client_id, pending.claimed_at) =>
                {
                    self.refuse(reason::SERVER_UNAVAILABLE)
                }
                // The session it claimed was taken from here again before it could attach:
                // started afresh, it would overwrite the stored one.
                ClaimOutcome::Owned
                    if pending.claim.as_ref().is_some_and(|c| c.had_stored())
                        && !pending.clean_start
                        && !self.broker.holds_session(&pending.client_id) =>
                {
                    self.refuse(reason::SERVER_UNAVAILABLE)
                }
                ClaimOutcome::Owned => {
                    self.accept_connect(*pending, now);
                    // Packets that came behind the CONNECT.
                    self.resume(now);
                }
                ClaimOutcome::Unavailable => self.refuse(reason::SERVER_UNAVAILABLE),
            }
            return;
        }
        if self.access.as_ref().is_some_and(|a| a.is_revoked()) && self.phase != Phase::Closed {
            tracing::debug!(connection = self.id, "access revoked; disconnecting");
            return self.close(reason::NOT_AUTHORIZED, CloseKind::NotAuthorized);
        }
        self.release_responses();
        if self.deadline().is_some_and(|d| d <= now) {
            self.timed_out(now);
        }
        let max_queued = QueueLimits::of(self.broker.config());
        if let Some(pause) = &self.paused {
            if pause.on.has_space(max_queued) {
                self.resume(now);
            } else {
                pause.on.wait_for_space(&self.waker, max_queued);
            }
        }
    }

    /// Whether the shell should read and hand over more packets. While
    /// paused, acknowledgements are still handled (so that two clients
    /// publishing to each other drain each other's queues) and everything
    /// else is held, up to a bound.
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closed
            && self.claiming.is_none()
            && self.held.as_ref().is_none_or(|h| h.len() < HOLD_LIMIT)
            && self
                .responses
                .as_ref()
                .is_none_or(|r| r.len() < RESPONSE_BACKLOG_LIMIT)
    }

    /// The congestion cleared: held packets are handled, in order, until
    /// the connection pauses again.
    pub fn resume(&mut self, now: Instant) {
        if self.paused.take().is_some() {
            self.last_received = now;
        }
        while self.paused.is_none()
            && self.phase != Phase::Closed
            && let Some(packet) = self.held.as_mut().and_then(|h| h.pop_front())
        {
            self.dispatch(packet, now);
        }
        if self.held.as_ref().is_some_and(|h| h.is_empty()) {
            self.held = None;
        }
    }

    /// When the connection times out: CONNECT not received in time, or
    /// 1.5 times the keep-alive without a packet; while paused, when the
    /// subscriber it waits for counts as too slow; when its oldest held response has waited
    /// for the store for as long as it may.
    pub fn deadline(&self) -> Option<Instant> {
        let deadline = self.pause_or_keep_alive_deadline();
        match (deadline, self.store_wait_deadline()) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        }
    }

    fn store_wait_deadline(&self) -> Option<Instant> {
        let since = self.responses.as_ref()?.front()?.0.since?;
        Some(since + Duration::from_secs(u64::from(self.broker.config().store_wait_timeout)))
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingConnect => Some(
                // Nothing but CONNECT is accepted before CONNECT, so the
                // last packet time is still the time the connection opened.
                self.last_received
                    + Duration::from_secs(u64::from(self.broker.config().connect_timeout)),
            ),
            Phase::Active => self.keep_alive.map(|ka| self.last_received + ka * 3 / 2),
            Phase::Closed => None,
        }
    }

    fn pause_or_keep_alive_deadline(&self) -> Option<Instant> {
        let timeout = self.keep_alive_deadline();
        match (&self.paused, timeout) {
            // Not reading, the keep-alive cannot be held against the client.
            (Some(pause), _) if !self.wants_input() => Some(pause.until),
            (Some(pause), Some(t)) => Some(pause.until.min(t)),
            (Some(pause), None) => Some(pause.until),
            (None, t) => t,
        }
    }

    fn slow_subscriber_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.broker.config().slow_subscriber_timeout))
    }

    /// Publishes the current deadline for the broker's sweep to watch.
    pub fn arm_deadline(&self) {
        let ticks = self
            .deadline()
            .map_or(0, |d| self.broker.deadlines().ticks(d));
        self.waker.set_deadline(ticks);
    }

    /// The deadline passed.
    pub fn timed_out(&mut self, now: Instant) {
        if self.store_wait_deadline().is_some_and(|d| d <= now) {
            self.give_up_on_store(now);
        }
        if self.phase == Phase::Closed
            || self
                .pause_or_keep_alive_deadline()
                .is_none_or(|deadline| deadline > now)
        {
            return;
        }
        let timeout = self.slow_subscriber_timeout();
        if let Some(pause) = self.paused.as_mut().filter(|p| p.until <= now) {
            let progress = pause.on.progress();
            if progress != pause.progress {
                // Busy, not stuck: keep waiting for it.
                pause.progress = progress;
                pause.until = now + timeout;
                return;
            }
            match &pause.on {
                Congested::Subscriber(session) => {
                    tracing::debug!(connection = self.id, client_id = %session.client_id, "slow subscriber");
                    session.mark_slow();
                }
                // A tap that stopped taking refuses what would go beyond its hard limit.
                Congested::Tap(_) => {
                    tracing::debug!(connection = self.id, "a tap takes nothing; resuming");
                }
            }
            self.resume(now);
            return;
        }
        if self.phase == Phase::Active {
            self.close(reason::KEEP_ALIVE_TIMEOUT, CloseKind::KeepAliveTimeout);
        } else if self.claiming.take().is_some() {
            // The CONNECT came, but its session could not be claimed in time (the store has
            // no quorum here): the client is told, and the abandoned claim stops.
            self.refuse(reason::SERVER_UNAVAILABLE);
        } else {
            self.close_silently(CloseKind::ProtocolError);
        }
    }

    /// The server is stopping.
    pub fn shutdown(&mut self) {
        self.close(reason::SERVER_SHUTTING_DOWN, CloseKind::ServerShutdown);
    }

    /// The peer closed the socket or it failed.
    pub fn peer_closed(&mut self) {
        self.close_silently(CloseKind::PeerClosed);
    }

    /// Bytes that do not decode: the connection ends with the reason code
    /// the error maps to (CONNACK before CONNECT completes, DISCONNECT after).
    pub fn decode_error(&mut self, err: &DecodeError) {
        self.broker.metrics().packet_error(err.label());
        tracing::debug!(connection = self.id, error = %err, "invalid packet");
        match (self.phase, err) {
            (Phase::AwaitingConnect, DecodeError::UnsupportedProtocolVersion(level)) => {
                // The client's own level decides the CONNACK layout it can read.
                if *level >= 5 {
                    self.version = ProtocolVersion::V5;
                }
                self.refuse(reason::UNSUPPORTED_PROTOCOL_VERSION);
            }
            (Phase::AwaitingConnect, _) => self.close_silently(CloseKind::ProtocolError),
            _ => {
                self.close_with_reason(err.reason_code(), CloseKind::ProtocolError, err.to_string())
            }
        }
    }

    /// Handles one packet from the client.
    pub fn handle(&mut self, packet: Packet, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_received = now;
        let acknowledgement = matches!(
            packet,
            Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
                | Packet::PingReq
        );
        if (self.paused.is_some() && !acknowledgement) || self.claiming.is_some() {
            self.held
                .get_or_insert_with(Default::default)
                .push_back(packet);
            return;
        }
        self.dispatch(packet, now);
    }

    fn dispatch(&mut self, mut packet: Packet, now: Instant) {
        if self.phase == Phase::AwaitingConnect {
            match packet {
                Packet::Connect(connect) => self.on_connect(*connect, now),
                other => {
                    self.broker.metrics().packet_error("protocol_error");
                    tracing::debug!(
                        connection = self.id,
                        packet = other.name(),
                        "packet before CONNECT"
                    );
                    self.close_silently(CloseKind::ProtocolError);
                }
            }
            return;
        }
        // By reference: packets are large and this is the publish path.
        match &mut packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::Subscribe(s) => self.on_subscribe(s, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(d),
            other => {
                self.broker.metrics().packet_error("protocol_error");
                tracing::debug!(
                    connection = self.id,
                    packet = other.name(),
                    "unexpected packet"
                );
                self.close(reason::PROTOCOL_ERROR, CloseKind::ProtocolError);
            }
        }
    }

    /// Moves queued deliveries into `out`, within the client's Receive
    /// Maximum; notices a takeover.
    pub fn pump(&mut self, now: Instant) {
        if self.phase != Phase::Active {
            return;
        }
        let Some(session) = self.session.clone() else {
            return;
        };
        let mut state = session.state.lock();
        if state
            .attached
            .as_ref()
            .is_none_or(|a| a.connection_id != self.id)
        {
            drop(state);
            self.close(reason::SESSION_TAKEN_OVER, CloseKind::TakenOver);
            return;
        }
        let queued_before = state.queue.len();
        while self.out.len() < FLUSH_THRESHOLD {
            let Some(front) = state.queue.front() else {
                break;
            };
            if front.fence != 0 {
                break;
            }
            if front.qos != QoS::AtMostOnce && state.inflight.len() >= self.client_receive_maximum {
                break;
            }
            let Some(delivery) = state.queue.pop_front() else {
                break;
            };
            if delivery.message.is_expired(now) {
                self.broker.metrics().message_dropped(DropReason::Expired);
                continue;
            }
            let packet_id = if delivery.qos == QoS::AtMostOnce {
                0
            } else {
                match state.allocate_packet_id() {
                    Some(id) => id,
                    None => {
                        state.queue.push_front(delivery);
                        break;
                    }
                }
            };
            if self.write_delivery(&delivery, packet_id, false, now) && packet_id != 0 {
                state.inflight.insert(packet_id, Inflight::Sent(delivery));
            }
        }
        if self.out.len() >= FLUSH_THRESHOLD && !state.queue.is_empty() {
            // Continue after this batch is written.
            self.waker.wake();
        }
        let popped = queued_before - state.queue.len();
        session.drained(&mut state, popped, QueueLimits::of(self.broker.config()));
    }

    /// Runs once the socket is gone: detaches the session and publishes the
    /// will when the connection did not end normally.
    pub fn finish(&mut self) {
        self.phase = Phase::Closed;
        let Some(session) = self.session.take() else {
            return;
        };
        let generation = self.broker.close_session(&session, self.id);
        if let Some(presence) = self.presence.take() {
            presence.disconnected(&self.broker, self.close_kind);
        }
        let Some(will) = self.will.take().map(|w| *w) else {
            return;
        };
        if self.close_kind == Some(CloseKind::Normal) {
            return;
        }
        let delay = will
            .properties
            .will_delay_interval
            .unwrap_or(0)
            .min(self.session_expiry);
        let message = will_message(will, session.id);
        match generation {
            Some(generation) if delay > 0 && session.is_alive() => {
                self.broker
                    .schedule_will(message, delay, session, generation);
            }
            // Taken over by a connection that resumed the session: the
            // delayed will is cancelled, as a reconnect within the delay would.
            None if delay > 0 && session.is_alive() => {}
            _ => {
                self.broker.publish(message, None);
            }
        }
    }

    /// Sends `response` once what it waits for (and every response before it) is done.
    fn respond(&mut self, mut wait: Wait, response: Response) {
        if self.responses.is_none() && self.broker.is_settled(wait.durable_seq, &wait.handoffs) {
            return self.send_response(response);
        }
        wait.since = Some(Instant::now());
        self.responses
            .get_or_insert_with(Default::default)
            .push_back((wait, response));
    }

    /// Sends the held responses whose waits are over.
    fn release_responses(&mut self) {
        while let Some(queue) = self.responses.as_mut() {
            match queue.front() {
                Some((wait, _)) if self.broker.is_settled(wait.durable_seq, &wait.handoffs) => {}
                Some(_) => return,
                None => {
                    self.responses = None;
                    return;
                }
            }
            if let Some((_, response)) = queue.pop_front() {
                self.send_response(response);
            }
        }
    }

    /// The oldest held response has waited for the store longer than `store_wait_timeout`
    /// (the store has no quorum here, or is stuck): what it answers is not durable, so it is
    /// refused rather than left hanging or acknowledged. A v5 publisher gets PUBACK/PUBREC
    /// 0x97 for each message that waited that long and may send it again (it may then arrive
    /// twice, never lost); anything else, or a 3.1.1 client, loses the connection.
    fn give_up_on_store(&mut self, now: Instant) {
        let timeout = Duration::from_secs(u64::from(self.broker.config().store_wait_timeout));
        while let Some(queue) = self.responses.as_mut() {
            let expired = queue
                .front()
                .and_then(|(wait, _)| wait.since)
                .is_some_and(|since| since + timeout <= now);
            if !expired {
                break;
            }
            let Some((_, response)) = queue.pop_front() else {
                break;
            };
            let publish = match response {
                Response::Ack(kind @ (AckKind::PubAck | AckKind::PubRec), packet_id, _) => {
                    Some((kind, packet_id))
                }
                _ => None,
            };
            if publish.is_some() {
                self.broker.metrics().publish_refused("store_wait");
            }
            match publish {
                Some((kind, packet_id)) if self.version.is_v5() => {
                    self.send_ack(kind, packet_id, reason::QUOTA_EXCEEDED);
                }
                _ => {
                    return self.close_with_reason(
                        reason::QUOTA_EXCEEDED,
                        CloseKind::ServerBusy,
                        "the store did not take the write in time".to_owned(),
                    );
                }
            }
        }
        if self.responses.as_ref().is_some_and(|q| q.is_empty()) {
            self.responses = None;
        }
        // Responses behind the refused ones may be settled already.
        self.release_responses();
    }

    fn send_response(&mut self, response: Response) {
        match response {
            Response::Ack(kind, packet_id, code) => self.send_ack(kind, packet_id, code),
            Response::Packet(packet) => self.send(&packet),
            Response::SubAck(packet, retained) => {
                self.send(&packet);
                let Some(session) = self.session.clone() else {
                    return;
                };
                let max_queued = QueueLimits::of(self.broker.config());
                for delivery in retained {
                    if let super::Enqueued::Dropped(r) = session.enqueue(delivery, max_queued) {
                        self.broker.metrics().message_dropped(r);
                    }
                }
            }
        }
    }

    fn send(&mut self, packet: &Packet) {
        if let Err(e) = self.encoder.encode(packet, self.version, &mut self.out) {
            tracing::warn!(connection = self.id, error = %e, packet = packet.name(), "cannot encode packet");
        }
    }

    /// Ends the connection, telling a v5 client why.
    fn close(&mut self, code: u8, kind: CloseKind) {
        self.close_with_reason(code, kind, reason::describe(code).to_owned());
    }

    /// The node drains: the client is told to use another server (named if configured).
    fn send_away(&mut self) {
        self.close(reason::USE_ANOTHER_SERVER, CloseKind::ServerShutdown);
    }

    fn server_reference(&self) -> Option<String> {
        self.broker
            .draining()
            .flatten()
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
    }

    fn close_with_reason(&mut self, code: u8, kind: CloseKind, reason_string: String) {
        if self.phase == Phase::Active && self.version.is_v5() {
            let mut disconnect = Disconnect {
                reason_code: code,
                properties: Properties {
                    reason_string: Some(reason_string),
                    server_reference: if code == reason::USE_ANOTHER_SERVER {
                        self.server_reference()
                    } else {
                        None
                    },
                    ..Properties::default()
                },
            };
            // The Reason String is left out rather than exceed the client's
            // Maximum Packet Size [MQTT-3.14.2-3].
            let mut probe = BytesMut::new();
            let fits = self
                .encoder
                .encode(
                    &Packet::Disconnect(disconnect.clone()),
                    self.version,
                    &mut probe,
                )
                .is_ok_and(|size| size <= self.client_max_packet_size);
            if !fits {
                disconnect.properties.reason_string = None;
            }
            self.send(&Packet::Disconnect(disconnect));
        }
        self.close_silently(kind);
    }

    fn close_silently(&mut self, kind: CloseKind) {
        self.phase = Phase::Closed;
        self.close_kind.get_or_insert(kind);
    }

    /// Refuses a CONNECT with `code` (mapped to a 3.1.1 return code as needed).
    fn refuse(&mut self, code: u8) {
        let mut properties = Properties::default();
        if self.version.is_v5() {
            properties.reason_string = Some(reason::describe(code).to_owned());
            if code == reason::USE_ANOTHER_SERVER {
                properties.server_reference = self.server_reference();
            }
        }
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties,
        }));
        self.close_silently(CloseKind::Refused);
    }

    fn topic_limits(&self, name: &str) -> (usize, usize) {
        if name.starts_with(RESERVED_PREFIX) {
            (usize::from(u16::MAX), usize::MAX)
        } else {
            let c = self.broker.config();
            (c.max_topic_length, c.max_topic_levels)
        }
    }

    fn validate_topic_name(&self, name: &str) -> Result<(), TopicError> {
        let (len, levels) = self.topic_limits(name);
        topic::validate_name(name, len, levels)
    }

    fn on_connect(&mut self, c: Connect, now: Instant) {
        self.version = c.protocol;
        let v5 = c.protocol.is_v5();
        let config = self.broker.config().clone();
        if self.broker.draining().is_some() {
            return self.refuse(reason::USE_ANOTHER_SERVER);
        }

        let mut assigned_client_id = None;
        let client_id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                return self.refuse(reason::CLIENT_IDENTIFIER_NOT_VALID);
            }
            let id = format!("halyard-{:016x}", rand::random::<u64>());
            if v5 {
                assigned_client_id = Some(id.clone());
            }
            id
        } else {
            c.client_id
        };
        if client_id.len() > config.max_client_id_length {
            return self.refuse(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if !self.permitted(Action::Connect, &client_id) {
            return self.refuse(reason::NOT_AUTHORIZED);
        }
        if c.properties.authentication_method.is_some() {
            return self.refuse(reason::BAD_AUTHENTICATION_METHOD);
        }
        if let Some(will) = &c.will {
            if self.validate_topic_name(&will.topic).is_err() {
                return self.refuse(reason::TOPIC_NAME_INVALID);
            }
            if will.qos.as_u8() > config.maximum_qos {
                return self.refuse(reason::QOS_NOT_SUPPORTED);
            }
            if will.retain && !config.retain_available {
                return self.refuse(reason::RETAIN_NOT_SUPPORTED);
            }
            if will.payload.len() > config.max_payload_size as usize {
                return self.refuse(reason::PACKET_TOO_LARGE);
            }
            if !self.permitted(Action::Publish, &will.topic)
                || (will.retain && !self.permitted(Action::RetainPublish, &will.topic))
            {
                return self.refuse(reason::NOT_AUTHORIZED);
            }
        }

        let requested_expiry = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            config.persistent_session_expiry
        };
        self.session_expiry = requested_expiry.min(config.max_session_expiry);
        // A persistent session is written to the store as it starts: with the store's backlog
        // full, it is refused rather than added to what cannot be written.
        if self.session_expiry > 0 && self.broker.store_backlogged() {
            self.broker.metrics().backlog_refusal("connect");
            return self.refuse(reason::SERVER_BUSY);
        }

        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        if let Some(k) = config.server_keep_alive {
            keep_alive = k;
            server_keep_alive = Some(k);
        } else if keep_alive > config.max_keep_alive || (keep_alive == 0 && v5) {
            // A client that asks for no keep-alive gets the longest one, as
            // AWS IoT Core does, so that dead connections are found.
            keep_alive = config.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }
        if keep_alive == 0 {
            keep_alive = config.max_keep_alive;
        }
        self.keep_alive = Some(Duration::from_secs(u64::from(keep_alive)));

        if let Some(rm) = c.properties.receive_maximum {
            self.client_receive_maximum = usize::from(rm);
        }
        self.client_receive_maximum = self
            .client_receive_maximum
            .min(usize::from(config.max_inflight_messages));
        if let Some(mps) = c.properties.maximum_packet_size {
            self.client_max_packet_size = mps as usize;
        }
        self.client_topic_alias_maximum = c.properties.topic_alias_maximum.unwrap_or(0);
        self.will = c.will.map(Box::new);

        let claimed_at = crate::clock::epoch_micros();
        let mut pending = PendingConnect {
            claim: None,
            client_id,
            clean_start: c.clean_start,
            assigned_client_id,
            server_keep_alive,
            requested_expiry,
            claimed_at,
        };
        pending.claim = self.broker.claim_session(
            &pending.client_id,
            c.clean_start,
            self.session_expiry,
            claimed_at,
            &self.waker,
        );
        if pending.claim.is_some() {
            // Answered once the session is this node's: see `woken`.
            self.claiming = Some(Box::new(pending));
            return;
        }
        self.accept_connect(pending, now);
    }

    /// Opens the session a CONNECT asked for and answers CONNACK.
    fn accept_connect(&mut self, pending: PendingConnect, now: Instant) {
        let PendingConnect {
            client_id,
            clean_start,
            assigned_client_id,
            server_keep_alive,
            requested_expiry,
            claimed_at,
            claim,
            ..
        } = pending;
        let v5 = self.version.is_v5();
        let config = self.broker.config().clone();
        let opened = self.broker.open_session(
            &client_id,
            clean_start,
            Attachment {
                connection_id: self.id,
                waker: Arc::clone(&self.waker),
                claimed_at,
            },
            self.session_expiry,
        );
        if !opened.present
            && let Some(claim) = claim
        {
            opened.session.set_owned_since(claim.fresh_from());
        }
        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned_client_id;
            properties.server_keep_alive = server_keep_alive;
            properties.receive_maximum = Some(config.receive_maximum);
            properties.topic_alias_maximum = Some(config.topic_alias_maximum);
            properties.maximum_packet_size = Some(config.max_packet_size);
            if config.maximum_qos < 2 {
                properties.maximum_qos = Some(config.maximum_qos);
            }
            if !config.retain_available {
                properties.retain_available = Some(0);
            }
            if requested_expiry != self.session_expiry {
                properties.session_expiry_interval = Some(self.session_expiry);
            }
        }
        self.send(&Packet::ConnAck(ConnAck {
            session_present: opened.present,
            reason_code: reason::SUCCESS,
            properties,
        }));
        self.phase = Phase::Active;
        self.session = Some(Arc::clone(&opened.session));
        opened
            .session
            .set_principal(self.access.as_ref().map_or("", |a| a.principal.as_str()));
        tracing::debug!(connection = self.id, client_id = %client_id, present = opened.present, "connected");
        if config.lifecycle_events || self.broker.presence_observer().is_some() {
            let presence = Presence {
                client_id,
                session_identifier: format!("{:032x}", rand::random::<u128>()),
                principal: self
                    .access
                    .as_ref()
                    .map(|a| a.principal.clone())
                    .unwrap_or_default(),
                ip: self.peer,
                version: self.id,
                keep_alive_seconds: self
                    .keep_alive
                    .map_or(0, |k| u16::try_from(k.as_secs()).unwrap_or(u16::MAX)),
                clean_start,
                session_expiry_seconds: self.session_expiry,
                publish_events: config.lifecycle_events,
            };
            presence.connected(&self.broker);
            self.presence = Some(Box::new(presence));
        }
        if opened.present {
            self.resend_inflight(&opened.session, now);
        }
    }

    /// On resume, unacknowledged deliveries go again with DUP set, and
    /// released QoS 2 messages get their PUBREL again.
    fn resend_inflight(&mut self, session: &Arc<Session>, now: Instant) {
        let state = session.state.lock();
        for (&packet_id, inflight) in state.inflight.iter() {
            match inflight {
                Inflight::Sent(delivery) => {
                    self.write_delivery(delivery, packet_id, true, now);
                }
                Inflight::Released => self.send_ack(AckKind::PubRel, packet_id, reason::SUCCESS),
            }
        }
    }

    /// Encodes one delivery into `out`; false when it was dropped because
    /// it exceeds the client's Maximum Packet Size.
    fn write_delivery(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Instant) -> bool {
        let msg = &d.message;
        if !self.permitted(Action::Receive, &msg.topic) {
            self.broker
                .metrics()
                .message_dropped(DropReason::NotAuthorized);
            return false;
        }
        let v5 = self.version.is_v5();
        let mut topic: &str = &msg.topic;
        let mut alias = None;
        let mut new_alias = false;
        if v5 && self.client_topic_alias_maximum > 0 {
            let aliases = self.aliases.get_or_insert_with(Default::default);
            if let Some(&a) = aliases.outbound.get(&msg.topic) {
                alias = Some(a);
                topic = "";
            } else if aliases.outbound.len() < usize::from(self.client_topic_alias_maximum) {
                alias = Some(aliases.outbound.len() as u16 + 1);
                new_alias = true;
            }
        }
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            payload: &msg.payload,
            properties: msg.properties.as_deref().filter(|_| v5),
            message_expiry_interval: msg.remaining_expiry(now),
            subscription_identifiers: &d.subscription_ids,
            topic_alias: alias,
        };
        match self.encoder.publish(
            &publish,
            self.version,
            self.client_max_packet_size,
            &mut self.out,
        ) {
            Ok(_) => {
                if new_alias && let Some(a) = alias {
                    self.aliases
                        .get_or_insert_with(Default::default)
                        .outbound
                        .insert(Arc::clone(&msg.topic), a);
                }
                self.broker.metrics().message_sent(d.qos);
                true
            }
            Err(_) => {
                self.broker
                    .metrics()
                    .message_dropped(DropReason::PacketTooLarge);
                false
            }
        }
    }

    fn on_publish(&mut self, p: &mut Publish, now: Instant) {
        let v5 = self.version.is_v5();
        let config = self.broker.config();
        self.broker.metrics().message_received(p.qos);
        if p.qos.as_u8() > config.maximum_qos {
            return self.close(reason::QOS_NOT_SUPPORTED, CloseKind::ProtocolError);
        }
        if p.retain && !config.retain_available {
            return self.close(reason::RETAIN_NOT_SUPPORTED, CloseKind::ProtocolError);
        }
        if p.payload.len() > config.max_payload_size as usize {
            return self.close(reason::PACKET_TOO_LARGE, CloseKind::ProtocolError);
        }
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias > self.broker.config().topic_alias_maximum {
                return self.close(reason::TOPIC_ALIAS_INVALID, CloseKind::ProtocolError);
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.close(reason::PROTOCOL_ERROR, CloseKind::ProtocolError),
                }
            } else {
                self.aliases
                    .get_or_insert_with(Default::default)
                    .inbound
                    .insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = self.validate_topic_name(&p.topic) {
            tracing::debug!(connection = self.id, topic = %p.topic, error = %e, "invalid topic name");
            self.broker.metrics().packet_error("topic_name_invalid");
            if v5 && p.qos != QoS::AtMostOnce {
                return self.ack_publish(p, reason::TOPIC_NAME_INVALID);
            }
            return self.close(reason::TOPIC_NAME_INVALID, CloseKind::ProtocolError);
        }
        if !self.permitted(Action::Publish, &p.topic)
            || (p.retain && !self.permitted(Action::RetainPublish, &p.topic))
        {
            tracing::debug!(connection = self.id, topic = %p.topic, "publish not authorized");
            if v5 && p.qos != QoS::AtMostOnce {
                return self.ack_publish(p, reason::NOT_AUTHORIZED);
            }
            return self.close(reason::NOT_AUTHORIZED, CloseKind::NotAuthorized);
        }
        if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            self.broker.metrics().packet_error("payload_format_invalid");
            if p.qos != QoS::AtMostOnce {
                return self.ack_publish(p, reason::PAYLOAD_FORMAT_INVALID);
            }
            return self.close(reason::PAYLOAD_FORMAT_INVALID, CloseKind::ProtocolError);
        }
        if p.qos == QoS::ExactlyOnce {
            let Some(session) = self.session.clone() else {
                return;
            };
            let mut state = session.state.lock();
            if state.incoming_qos2.contains(p.packet_id) {
                // A retransmission of a message already taken: acknowledge only.
                drop(state);
                return self.ack_publish(p, reason::SUCCESS);
            }
            if state.incoming_qos2.len() >= usize::from(self.broker.config().receive_maximum) {
                drop(state);
                return self.close(reason::RECEIVE_MAXIMUM_EXCEEDED, CloseKind::ProtocolError);
            }
            state.incoming_qos2.insert(p.packet_id);
        }
        let origin = self.session.as_ref().map_or(0, |s| s.id);
        let message = inbound_message(p, origin, now);
        let published = self.broker.ingest(
            message,
            Ingress {
                publisher: self.session.as_ref(),
                reply_to: None,
                waker: Some(&self.waker),
            },
        );
        if published.refused {
            // Not taken: a QoS 2 retry must be taken as new.
            if p.qos == QoS::ExactlyOnce
                && let Some(session) = &self.session
            {
                session.state.lock().incoming_qos2.remove(p.packet_id);
            }
            if v5 {
                return self.ack_publish(p, reason::QUOTA_EXCEEDED);
            }
            return self.close(reason::QUOTA_EXCEEDED, CloseKind::ServerBusy);
        }
        let max_queued = QueueLimits::of(self.broker.config());
        let congested = published
            .congested
            .map(Congested::Subscriber)
            .or(published.tap_congested.map(Congested::Tap));
        if let Some(on) = congested {
            on.wait_for_space(&self.waker, max_queued);
            self.paused = Some(Pause {
                progress: on.progress(),
                on,
                until: now + self.slow_subscriber_timeout(),
            });
        }
        if p.qos != QoS::AtMostOnce {
            let code = if published.offered == 0 && published.served == 0 && v5 {
                reason::NO_MATCHING_SUBSCRIBERS
            } else {
                reason::SUCCESS
            };
            // Held until the retained copy and the copies queued for persistent sessions are
            // durable, and every other node it went to has it: once acknowledged, a crash
            // must not lose the message.
            self.ack_publish_after(
                p,
                code,
                Wait {
                    durable_seq: published.durable_seq,
                    handoffs: published.handoffs,
                    since: None,
                },
            );
        }
    }

    fn ack_publish(&mut self, p: &Publish, code: u8) {
        self.ack_publish_after(p, code, Wait::default());
    }

    /// Acknowledges once `wait` is over: the publisher may forget the message only when a
    /// crash can no longer lose it.
    fn ack_publish_after(&mut self, p: &Publish, code: u8, wait: Wait) {
        let kind = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => AckKind::PubAck,
            QoS::ExactlyOnce => AckKind::PubRec,
        };
        self.respond(wait, Response::Ack(kind, p.packet_id, code));
    }

    fn send_ack(&mut self, kind: AckKind, packet_id: u16, code: u8) {
        self.encoder
            .ack(kind, packet_id, code, self.version, &mut self.out);
    }

    fn on_puback(&mut self, a: &Ack) {
        if let Some(session) = &self.session {
            let mut state = session.state.lock();
            if matches!(state.inflight.get(&a.packet_id), Some(Inflight::Sent(d)) if d.qos == QoS::AtLeastOnce)
                && let Some(Inflight::Sent(d)) = state.inflight.remove(&a.packet_id)
            {
                drop(state);
                self.broker.delivered(session, d.stored);
            }
        }
    }

    fn on_pubrec(&mut self, a: &Ack) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let mut state = session.state.lock();
        let known = matches!(state.inflight.get(&a.packet_id), Some(Inflight::Sent(d)) if d.qos == QoS::ExactlyOnce)
            || matches!(state.inflight.get(&a.packet_id), Some(Inflight::Released));
        if !known {
            drop(state);
            return self.send_ack(
                AckKind::PubRel,
                a.packet_id,
                reason::PACKET_IDENTIFIER_NOT_FOUND,
            );
        }
        let previous = if a.reason_code >= 0x80 {
            state.inflight.remove(&a.packet_id)
        } else {
            state.inflight.insert(a.packet_id, Inflight::Released)
        };
        drop(state);
        if let Some(Inflight::Sent(d)) = previous {
            self.broker.delivered(&session, d.stored);
        }
        if a.reason_code >= 0x80 {
            return;
        }
        self.send_ack(AckKind::PubRel, a.packet_id, reason::SUCCESS);
    }

    fn on_pubrel(&mut self, a: &Ack) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let known = session.state.lock().incoming_qos2.remove(a.packet_id);
        let code = if known {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send_ack(AckKind::PubComp, a.packet_id, code);
    }

    fn on_pubcomp(&mut self, a: &Ack) {
        if let Some(session) = &self.session {
            let mut state = session.state.lock();
            if matches!(state.inflight.get(&a.packet_id), Some(Inflight::Released)) {
                state.inflight.remove(&a.packet_id);
            }
        }
    }

    fn on_subscribe(&mut self, s: &Subscribe, now: Instant) {
        let Some(session) = self.session.clone() else {
            return;
        };
        let v5 = self.version.is_v5();
        let failure = if v5 {
            reason::TOPIC_FILTER_INVALID
        } else {
            reason::v311::SUBACK_FAILURE
        };
        if session.is_persistent() && self.broker.store_backlogged() {
            // Nothing changes: a persistent session's subscriptions could not be stored.
            self.broker.metrics().backlog_refusal("subscribe");
            let refused = if v5 {
                reason::QUOTA_EXCEEDED
            } else {
                reason::v311::SUBACK_FAILURE
            };
            let suback = Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reason_codes: vec![refused; s.subscriptions.len()],
                properties: Properties::default(),
            });
            return self.respond(Wait::default(), Response::SubAck(suback, Vec::new()));
        }
        let subscription_id = s.properties.subscription_identifiers.first().copied();
        let maximum_qos =
            QoS::from_u8(self.broker.config().maximum_qos).unwrap_or(QoS::AtLeastOnce);
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut granted: Vec<&str> = Vec::new();
        let mut accepted = Vec::with_capacity(s.subscriptions.len());
        for sub in &s.subscriptions {
            let parsed = match topic::parse_filter(&sub.filter) {
                Ok(p) => p,
                Err(_) => {
                    codes.push(failure);
                    continue;
                }
            };
            if parsed.share_group.is_some() && sub.options.no_local && v5 {
                return self.close(reason::PROTOCOL_ERROR, CloseKind::ProtocolError);
            }
            let (len, levels) = self.topic_limits(parsed.filter);
            if topic::validate_filter(parsed.filter, len, levels).is_err() {
                self.broker.metrics().packet_error("topic_filter_invalid");
                codes.push(failure);
                continue;
            }
            if !self.permitted(Action::Subscribe, &sub.filter) {
                codes.push(if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::v311::SUBACK_FAILURE
                });
                continue;
            }
            let mut options = sub.options;
            options.qos = options.qos.min(maximum_qos);
            if !v5 {
                options = crate::mqtt::SubscriptionOptions {
                    qos: options.qos,
                    ..Default::default()
                };
            }
            codes.push(options.qos.as_u8());
            granted.push(&sub.filter);
            accepted.push((sub.filter.as_str(), parsed, options));
        }
        let is_new = self
            .broker
            .subscribe_all(&session, &accepted, subscription_id);
        let mut retained = Vec::new();
        for ((_, parsed, options), is_new) in accepted.iter().zip(is_new) {
            let send_retained = parsed.share_group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendIfNewSubscription => is_new,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in self.broker.retained_matching(parsed.filter, now) {
                    retained.push(Delivery {
                        qos: message.qos.min(options.qos),
                        retain: true,
                        subscription_ids: subscription_id.into_iter().collect(),
                        message,
                        stored: 0,
                        fence: 0,
                    });
                }
            }
        }
        let seq = self.broker.persist_subscriptions(&session, &self.waker);
        if let Some(presence) = &self.presence {
            presence.subscriptions(&self.broker, "subscribed", &granted);
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        });
        // A message published on any node after the SUBACK reaches the new subscription.
        let wait = Wait {
            durable_seq: seq,
            handoffs: self.broker.route_barrier(&self.waker),
            since: None,
        };
        self.respond(wait, Response::SubAck(suback, retained));
    }

    fn on_unsubscribe(&mut self, u: &Unsubscribe) {
        let Some(session) = self.session.clone() else {
            return;
        };
        if session.is_persistent() && self.broker.store_backlogged() {
            // Nothing changes. A 3.1.1 UNSUBACK cannot say so: the connection ends instead.
            self.broker.metrics().backlog_refusal("unsubscribe");
            if !self.version.is_v5() {
                return self.close(reason::SERVER_BUSY, CloseKind::ServerBusy);
            }
            let unsuback = Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reason_codes: vec![reason::UNSPECIFIED_ERROR; u.filters.len()],
                properties: Properties::default(),
            });
            return self.respond(Wait::default(), Response::Packet(unsuback));
        }
        let mut removed: Vec<&str> = Vec::new();
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&session, f) {
                    removed.push(f);
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let seq = self.broker.persist_subscriptions(&session, &self.waker);
        if let Some(presence) = &self.presence {
            presence.subscriptions(&self.broker, "unsubscribed", &removed);
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        });
        self.respond(Wait::durable(seq), Response::Packet(unsuback));
    }

    fn on_disconnect(&mut self, d: &Disconnect) {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry > 0 {
                return self.close(reason::PROTOCOL_ERROR, CloseKind::ProtocolError);
            }
            self.session_expiry = expiry.min(self.broker.config().max_session_expiry);
            if let Some(session) = &self.session {
                session.state.lock().expiry_interval = self.session_expiry;
            }
        }
        let kind = if d.reason_code == reason::DISCONNECT_WITH_WILL {
            CloseKind::NormalWithWill
        } else if d.reason_code == reason::SUCCESS {
            CloseKind::Normal
        } else {
            CloseKind::PeerClosed
        };
        self.close_silently(kind);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.broker.deadlines().unregister(self.id);
    }
}

/// Turns a received PUBLISH into a routed message, keeping only the
/// properties that travel with it.
fn inbound_message(p: &mut Publish, origin: u64, now: Instant) -> Message {
    let mut properties = std::mem::take(&mut p.properties);
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| now + Duration::from_secs(u64::from(secs)));
    properties.subscription_identifiers.clear();
    properties.topic_alias = None;
    Message {
        topic: Arc::clone(&p.topic),
        payload: p.payload.clone(),
        qos: p.qos,
        retain: p.retain,
        properties: (!properties.is_empty()).then(|| Box::new(properties)),
        expires_at,
        origin,
    }
}

fn will_message(will: Will, origin: u64) -> Message {
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
    Message {
        topic: Arc::from(will.topic),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: (!properties.is_empty()).then(|| Box::new(properties)),
        expires_at,
        origin,
    }
}
