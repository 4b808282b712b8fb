//! What nodes tell each other on their control streams: each node's routes (announced as
//! they change, to every linked peer) and the messages of session takeover.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use halyard_raft::NodeId;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::broker::{AckCursor, Handoff, Signal};

/// What a node tells a peer on its control stream, in order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum Control {
    /// The sender's first local subscription to a filter.
    Add(String),
    /// More of the routes of the snapshot that opened the stream, for a snapshot too large
    /// for one frame.
    AddAll(Vec<String>),
    /// The sender's last local subscription to a filter went.
    Remove(String),
    /// A client connected to the sender (see `Remote::connecting`).
    Connecting {
        client_id: String,
        clean_start: bool,
        claimed_at: u64,
    },
    /// The sender claims the client's session for a connection made at `claimed_at`: let it
    /// go (unless a later connection holds it here), make your writes for it durable, and
    /// answer `Released`.
    Release {
        client_id: String,
        clean_start: bool,
        claimed_at: u64,
    },
    Released {
        client_id: String,
    },
    /// The sender is leaving the cluster: claim this offline session from it.
    Adopt {
        client_id: String,
    },
    /// What the sender's routes amount to at this point of the stream: the receiver, having
    /// applied everything before it, compares its copy and resynchronises on a difference.
    Digest(RouteDigest),
}

/// An order-free summary of a set of routes: how many, and the XOR of their keys' hashes
/// (FNV-1a, the same on every node and build).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteDigest {
    pub count: u64,
    pub hash: u64,
}

impl RouteDigest {
    pub fn added(&mut self, key: &str) {
        self.count += 1;
        self.hash ^= route_hash(key);
    }

    pub fn removed(&mut self, key: &str) {
        self.count = self.count.saturating_sub(1);
        self.hash ^= route_hash(key);
    }
}

fn route_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How a route is named between nodes: its filter, or `$share/{group}/{filter}` for a share
/// group, as MQTT writes it.
pub(super) fn route_key(filter: &str, share_group: Option<&str>) -> String {
    match share_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}

/// A route's filter and share group, from its name; `None` for a name no node would send.
pub(super) fn parse_route(key: &str) -> Option<(&str, Option<&str>)> {
    let parsed = crate::mqtt::topic::parse_filter(key).ok()?;
    Some((parsed.filter, parsed.share_group))
}

/// How far a peer has applied what this node wrote on one control stream after its snapshot:
/// the route barrier. A connection whose SUBSCRIBE added a route answers SUBACK once every
/// linked peer has applied it, so that a message published anywhere after the SUBACK reaches
/// it.
#[derive(Debug, Default)]
pub(super) struct ControlAcks {
    /// Control messages queued for the stream.
    sent: AtomicU64,
    cursor: Arc<AckCursor>,
    /// Connections waiting for the peer to apply the control message numbered here.
    waiting: Mutex<Vec<(u64, Arc<Signal>)>>,
}

impl ControlAcks {
    fn queued(&self) {
        self.sent.fetch_add(1, Ordering::AcqRel);
    }

    /// What `waker`'s connection waits for until the peer has applied everything queued so
    /// far; `None` when it has.
    pub(super) fn barrier(&self, waker: &Arc<Signal>) -> Option<Handoff> {
        let seq = self.sent.load(Ordering::Acquire);
        let handoff = Handoff {
            cursor: Arc::clone(&self.cursor),
            seq,
        };
        if handoff.settled() {
            return None;
        }
        self.waiting.lock().push((seq, Arc::clone(waker)));
        Some(handoff)
    }

    /// Whether the peer has not yet applied some of what was queued.
    pub(super) fn behind(&self) -> bool {
        self.cursor.acked() < self.sent.load(Ordering::Acquire)
    }

    /// The peer applied the first `count` control messages.
    pub(super) fn applied(&self, count: u64) {
        self.cursor.advance(count);
        let mut woken = Vec::new();
        self.waiting.lock().retain(|(seq, waker)| {
            let done = *seq <= count;
            if done {
                woken.push(Arc::clone(waker));
            }
            !done
        });
        for waker in woken {
            waker.wake();
        }
    }

    /// The stream is over: nobody waits for it any more. The peer gets this node's routes
    /// again in the snapshot that opens the next stream, or is gone.
    pub(super) fn end(&self) {
        self.cursor.cover(u64::MAX);
        for (_, waker) in std::mem::take(&mut *self.waiting.lock()) {
            waker.wake();
        }
    }
}

/// A linked peer's queue of changes and how far it applied them.
pub(super) struct Listener {
    pub(super) changes: mpsc::Sender<Control>,
    pub(super) acks: Arc<ControlAcks>,
}

impl Listener {
    fn send(&self, control: Control) -> bool {
        let sent = self.changes.try_send(control).is_ok();
        if sent {
            self.acks.queued();
        } else {
            self.acks.end();
        }
        sent
    }
}

/// This node's routes and who is told of their changes.
#[derive(Default)]
pub(super) struct LocalRoutes {
    /// Filter to the number of local subscriptions to it.
    pub(super) counts: HashMap<String, usize>,
    /// Each linked peer's queue of changes; dropping one makes that peer resynchronise.
    pub(super) listeners: HashMap<NodeId, Listener>,
    /// What `counts`' filters amount to.
    pub(super) digest: RouteDigest,
}

impl LocalRoutes {
    /// One more local subscription to `filter`: announced if it is the first.
    pub(super) fn subscribed(&mut self, filter: &str) {
        let count = self.counts.entry(filter.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.digest.added(filter);
            self.broadcast(&Control::Add(filter.to_owned()));
        }
    }

    /// One local subscription to `filter` fewer: announced if it was the last.
    pub(super) fn unsubscribed(&mut self, filter: &str) {
        let Some(count) = self.counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(filter);
            self.digest.removed(filter);
            self.broadcast(&Control::Remove(filter.to_owned()));
        }
    }

    /// Sends `control` to peer `node` on its control stream; false if there is none now.
    pub(super) fn send(&mut self, node: NodeId, control: Control) -> bool {
        let sent = self
            .listeners
            .get(&node)
            .is_some_and(|listener| listener.send(control));
        if !sent {
            // Behind or gone: resynchronised on its next stream.
            self.listeners.remove(&node);
        }
        sent
    }

    /// Sends `control` to every peer; one that falls behind is dropped, to resynchronise.
    pub(super) fn broadcast(&mut self, control: &Control) {
        self.listeners
            .retain(|_, listener| listener.send(control.clone()));
    }

    /// What `waker`'s connection waits for until every linked peer has applied the route
    /// changes made so far.
    pub(super) fn barrier(&self, waker: &Arc<Signal>) -> Vec<Handoff> {
        self.listeners
            .values()
            .filter_map(|listener| listener.acks.barrier(waker))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_is_announced_when_its_first_subscriber_comes_and_its_last_leaves() {
        let mut local = LocalRoutes::default();
        let (tx, mut rx) = mpsc::channel(4);
        local.listeners.insert(
            2,
            Listener {
                changes: tx,
                acks: Arc::default(),
            },
        );
        local.subscribed("t");
        local.subscribed("t");
        local.unsubscribed("t");
        local.unsubscribed("t");
        local.unsubscribed("never held");
        assert!(matches!(rx.try_recv(), Ok(Control::Add(f)) if f == "t"));
        assert!(matches!(rx.try_recv(), Ok(Control::Remove(f)) if f == "t"));
        assert!(rx.try_recv().is_err());
        // A listener that falls behind is dropped, and so resynchronised.
        for n in 0..5 {
            local.subscribed(&format!("f{n}"));
        }
        assert!(local.listeners.is_empty());
    }

    #[test]
    fn a_route_barrier_holds_until_the_peer_applied_the_change_or_its_stream_ended() {
        let mut local = LocalRoutes::default();
        let (tx, _rx) = mpsc::channel(8);
        let acks = Arc::new(ControlAcks::default());
        local.listeners.insert(
            2,
            Listener {
                changes: tx,
                acks: Arc::clone(&acks),
            },
        );
        let waker = Arc::new(Signal::default());
        assert!(
            local.barrier(&waker).is_empty(),
            "nothing sent, nothing to wait for"
        );
        local.subscribed("a");
        local.subscribed("b");
        let held = local.barrier(&waker);
        assert_eq!(held.len(), 1);
        assert!(!held[0].settled());
        acks.applied(1);
        assert!(!held[0].settled(), "applied the first change only");
        acks.applied(2);
        assert!(held[0].settled());
        local.subscribed("c");
        let held = local.barrier(&waker);
        assert!(acks.behind());
        acks.end();
        assert!(held[0].settled(), "a stream that ended holds nobody");
    }
}
