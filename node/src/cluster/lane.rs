//! One lane to a peer node, as its sender sees it: the messages handed to it, numbered, kept
//! until the peer acknowledges them, so that a broken stream is resumed on a new one without
//! a gap, and so that each publisher learns when the peer has its message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{AckCursor, Handoff, Message, Signal};
use crate::mqtt::QoS;

/// Unacknowledged messages past which a QoS 0 message is dropped rather than queued.
pub const LANE_CAPACITY: usize = 8192;
/// Past this even QoS 1/2 messages are dropped. Their publishers are held back by their
/// withheld acknowledgements long before, so only messages nobody waits for (events, wills)
/// reach it: while a peer is unreachable for longer than the forward timeout.
pub const LANE_HARD_CAPACITY: usize = 8 * LANE_CAPACITY;

/// The share groups (name, filter) a peer is to serve with a message.
pub type ShareGroups = Vec<(String, String)>;

/// What the sender of a QoS 1/2 message knew when it routed it: the nodes it sent it to or
/// stored it for, itself included, and the store revision its directory of persistent
/// sessions had reached. A persistent session owed the message whose owner is none of them,
/// or that changed owner after that revision, may not have it: whoever finds that stores
/// its copy (see `data_plane.rs`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    pub nodes: Vec<u64>,
    pub seen: u64,
}

impl Coverage {
    /// Whether the message reached the session that `owner` has owned since revision
    /// `owned_since` through the sender's own routing.
    pub fn reached(&self, owner: u64, owned_since: u64) -> bool {
        owned_since <= self.seen && self.nodes.contains(&owner)
    }
}

struct Outgoing {
    seq: u64,
    message: Arc<Message>,
    /// The share groups (name, filter) the peer is to serve with it.
    groups: ShareGroups,
    /// `None` for QoS 0, which nobody stores.
    coverage: Option<Arc<Coverage>>,
    /// The publisher waiting for the peer's receipt.
    waker: Option<Arc<Signal>>,
}

struct Window {
    /// The number the next message gets; the first is 1.
    next_seq: u64,
    /// Every message not yet acknowledged, oldest first.
    unacked: VecDeque<Outgoing>,
    /// How many of `unacked`, from the front, went out on the current stream.
    sent: usize,
    /// When the peer last acknowledged something, or the window last became non-empty.
    last_progress: Instant,
}

/// A message to write, with its share groups and coverage.
pub type Unsent = (Arc<Message>, ShareGroups, Option<Arc<Coverage>>);

/// Why a message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// What became of a message handed to a lane.
#[derive(Debug)]
pub enum Pushed {
    /// Its publisher waits for the peer's acknowledgement (or for the copies the peer's
    /// persistent sessions are owed to be stored, if the peer stops answering).
    Waited(Handoff),
    /// QoS 0: nobody waits.
    Unwaited,
    /// The peer is not answering: the message goes out if it answers again, and meanwhile
    /// the caller stores the copies its persistent sessions are owed.
    Stranded,
}

/// Messages a peer stopped acknowledging, for the store: their publishers wait until the
/// copies the peer's persistent sessions are owed are stored, then the lane is covered up
/// to `last`.
pub struct Strand {
    pub last: u64,
    pub messages: Vec<(Arc<Message>, ShareGroups, Arc<Coverage>)>,
    pub wakers: Vec<Arc<Signal>>,
}

pub struct Lane {
    window: Mutex<Window>,
    /// Wakes the stream's writer when messages arrive.
    ready: Notify,
    cursor: Arc<AckCursor>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                next_seq: 1,
                unacked: VecDeque::new(),
                sent: 0,
                last_progress: Instant::now(),
            }),
            ready: Notify::new(),
            cursor: Arc::new(AckCursor::default()),
        }
    }
}

impl Lane {
    /// Takes `message` for the peer.
    pub fn push(
        &self,
        message: &Arc<Message>,
        groups: ShareGroups,
        coverage: Option<&Arc<Coverage>>,
        waker: Option<&Arc<Signal>>,
    ) -> Result<Pushed, Full> {
        let mut window = self.window.lock();
        let bound = if message.qos == QoS::AtMostOnce {
            LANE_CAPACITY
        } else {
            LANE_HARD_CAPACITY
        };
        if window.unacked.len() >= bound {
            return Err(Full);
        }
        if window.unacked.is_empty() {
            window.last_progress = Instant::now();
        }
        let seq = window.next_seq;
        window.next_seq += 1;
        // Checked under the window's lock, as `strand` sets it: a message is either in a
        // strand or stranded here, never neither.
        let released = self.cursor.is_released();
        let waited = message.qos != QoS::AtMostOnce && !released;
        let stranded = released && message.qos != QoS::AtMostOnce;
        window.unacked.push_back(Outgoing {
            seq,
            message: Arc::clone(message),
            // A stranded message's share groups are served from the store by the caller:
            // sent again later, it must not be dispatched to a second member.
            groups: if stranded { Vec::new() } else { groups },
            coverage: coverage.cloned(),
            waker: waker.filter(|_| waited).cloned(),
        });
        drop(window);
        self.ready.notify_one();
        Ok(if waited {
            Pushed::Waited(Handoff {
                cursor: Arc::clone(&self.cursor),
                seq,
            })
        } else if stranded {
            Pushed::Stranded
        } else {
            Pushed::Unwaited
        })
    }

    /// A new stream begins: everything unacknowledged goes out again on it. The number of
    /// the first message it carries.
    pub fn restart(&self) -> u64 {
        let mut window = self.window.lock();
        window.sent = 0;
        window.unacked.front().map_or(window.next_seq, |o| o.seq)
    }

    /// The next messages to write on the current stream, at most `max`.
    pub fn unsent(&self, max: usize) -> Vec<Unsent> {
        let mut window = self.window.lock();
        let from = window.sent;
        let batch: Vec<Unsent> = window
            .unacked
            .range(from..)
            .take(max)
            .map(|o| (Arc::clone(&o.message), o.groups.clone(), o.coverage.clone()))
            .collect();
        window.sent += batch.len();
        batch
    }

    /// Waits until a message may have arrived since the last [`Lane::unsent`].
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// The peer has every message up to `seq`: they are forgotten and their publishers woken.
    pub fn acknowledged(&self, seq: u64) {
        let mut wakers = Vec::new();
        {
            let mut window = self.window.lock();
            let mut popped = 0;
            while window.unacked.front().is_some_and(|o| o.seq <= seq) {
                if let Some(outgoing) = window.unacked.pop_front()
                    && let Some(waker) = outgoing.waker
                {
                    push_distinct(&mut wakers, waker);
                }
                popped += 1;
            }
            window.sent = window.sent.saturating_sub(popped);
            if popped > 0 {
                window.last_progress = Instant::now();
            }
        }
        self.cursor.advance(seq);
        for waker in wakers {
            waker.wake();
        }
    }

    /// The messages whose publishers wait, if the peer has acknowledged nothing for
    /// `timeout` while they wait for it: from now on, until it acknowledges again, nobody
    /// waits for the peer. The messages stay, to go out when it answers again.
    pub fn strand_overdue(&self, now: Instant, timeout: Duration) -> Option<Strand> {
        let mut window = self.window.lock();
        let overdue =
            !window.unacked.is_empty() && now.duration_since(window.last_progress) >= timeout;
        if !overdue || self.cursor.is_released() {
            return None;
        }
        Some(self.strand_locked(&mut window))
    }

    /// The messages whose publishers wait: the peer left the cluster.
    pub fn strand(&self) -> Strand {
        let mut window = self.window.lock();
        self.strand_locked(&mut window)
    }

    fn strand_locked(&self, window: &mut Window) -> Strand {
        self.cursor.release();
        let mut messages = Vec::new();
        let mut wakers = Vec::new();
        for outgoing in window.unacked.iter_mut() {
            if outgoing.message.qos == QoS::AtMostOnce {
                continue;
            }
            // Its share groups are served from the store now (see `push`).
            messages.push((
                Arc::clone(&outgoing.message),
                std::mem::take(&mut outgoing.groups),
                outgoing.coverage.clone().unwrap_or_default(),
            ));
            if let Some(waker) = outgoing.waker.take() {
                push_distinct(&mut wakers, waker);
            }
        }
        Strand {
            last: window.next_seq - 1,
            messages,
            wakers,
        }
    }

    /// The copies a strand owed are stored: its publishers no longer wait.
    pub fn cover(&self, strand: Strand) {
        self.cursor.cover(strand.last);
        for waker in strand.wakers {
            waker.wake();
        }
    }

    /// Messages waiting for the peer's acknowledgement.
    pub fn depth(&self) -> usize {
        self.window.lock().unacked.len()
    }
}

/// Adds `waker` unless it is the last one added: one publisher's messages come in runs.
fn push_distinct(wakers: &mut Vec<Arc<Signal>>, waker: Arc<Signal>) {
    if wakers.last().is_none_or(|last| !Arc::ptr_eq(last, &waker)) {
        wakers.push(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Lane {
        fn push_plain(
            &self,
            message: &Arc<Message>,
            waker: Option<&Arc<Signal>>,
        ) -> Result<Option<Handoff>, Full> {
            self.push(message, Vec::new(), None, waker)
                .map(|pushed| match pushed {
                    Pushed::Waited(handoff) => Some(handoff),
                    Pushed::Unwaited | Pushed::Stranded => None,
                })
        }
    }

    fn message(qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"m"),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        })
    }

    #[test]
    fn a_publisher_waits_until_the_peer_acknowledges_its_message_or_its_copies_are_stored() {
        let lane = Lane::default();
        let signal = Arc::new(Signal::default());
        let first = lane.push_plain(&message(QoS::AtLeastOnce), Some(&signal));
        let second = lane.push_plain(&message(QoS::AtLeastOnce), Some(&signal));
        let (Ok(Some(first)), Ok(Some(second))) = (first, second) else {
            panic!("QoS 1 messages are waited for");
        };
        assert!(matches!(
            lane.push_plain(&message(QoS::AtMostOnce), None),
            Ok(None)
        ));
        assert!(!first.settled() && !second.settled());
        lane.acknowledged(1);
        assert!(first.settled() && !second.settled());
        assert_eq!(lane.depth(), 2);
        let strand = lane.strand();
        assert_eq!(strand.last, 3);
        assert_eq!(
            strand.messages.len(),
            1,
            "the QoS 1 message not acknowledged"
        );
        assert!(!second.settled(), "not before its copies are stored");
        assert!(matches!(
            lane.push(&message(QoS::AtLeastOnce), Vec::new(), None, Some(&signal),),
            Ok(Pushed::Stranded)
        ));
        lane.cover(strand);
        assert!(second.settled());
        // An acknowledgement after a strand means the peer answers again: waited for anew.
        lane.acknowledged(2);
        let third = lane.push_plain(&message(QoS::ExactlyOnce), Some(&signal));
        assert!(matches!(third, Ok(Some(h)) if !h.settled()));
    }

    #[test]
    fn a_new_stream_resends_everything_unacknowledged_from_its_number() {
        let lane = Lane::default();
        for _ in 0..5 {
            let _ = lane.push_plain(&message(QoS::AtLeastOnce), None);
        }
        assert_eq!(lane.restart(), 1);
        assert_eq!(lane.unsent(3).len(), 3);
        assert_eq!(lane.unsent(10).len(), 2);
        assert!(lane.unsent(10).is_empty());
        lane.acknowledged(2);
        assert!(lane.unsent(10).is_empty());
        assert_eq!(lane.restart(), 3);
        assert_eq!(lane.unsent(10).len(), 3);
    }

    #[test]
    fn a_silent_peer_strands_its_messages_once_after_the_timeout() {
        let lane = Lane::default();
        let handoff = lane.push_plain(&message(QoS::AtLeastOnce), None);
        let Ok(Some(handoff)) = handoff else {
            panic!("QoS 1 messages are waited for");
        };
        let now = Instant::now();
        assert!(lane.strand_overdue(now, Duration::from_secs(3)).is_none());
        let Some(strand) =
            lane.strand_overdue(now + Duration::from_secs(3), Duration::from_secs(3))
        else {
            panic!("overdue after the timeout");
        };
        assert!(
            lane.strand_overdue(now + Duration::from_secs(4), Duration::from_secs(3))
                .is_none()
        );
        assert!(!handoff.settled());
        lane.cover(strand);
        assert!(handoff.settled());
        assert_eq!(lane.depth(), 1);
    }

    #[test]
    fn qos_0_is_dropped_at_the_lane_bound_and_qos_1_only_past_the_hard_bound() {
        let lane = Lane::default();
        for _ in 0..LANE_CAPACITY {
            assert!(lane.push_plain(&message(QoS::AtMostOnce), None).is_ok());
        }
        assert!(matches!(
            lane.push_plain(&message(QoS::AtMostOnce), None),
            Err(Full)
        ));
        assert!(lane.push_plain(&message(QoS::AtLeastOnce), None).is_ok());
        for _ in LANE_CAPACITY + 1..LANE_HARD_CAPACITY {
            let _ = lane.push_plain(&message(QoS::AtLeastOnce), None);
        }
        assert!(matches!(
            lane.push_plain(&message(QoS::AtLeastOnce), None),
            Err(Full)
        ));
    }
}
