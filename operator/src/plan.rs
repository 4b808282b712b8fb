//! The operator's decisions, apart from Kubernetes: from what is observed of a cluster and what
//! its spec asks for, the one next action. It keeps no memory of its own (a restarted operator
//! reads the same state and decides the same), and takes at most one disruptive step at a time:
//! a drain, a leadership transfer, a member removal, a pod replaced or removed. A draining node
//! still votes; a pod is replaced only while the other voters make a quorum, and a member is
//! removed only while the voters left make a quorum of the smaller membership.
//!
//! Pods are a StatefulSet's, by ordinal; the node of ordinal `o` has id `o + 1`. Pods join the
//! store as learners themselves (`--join` through the headless Service) and are promoted once
//! caught up. An upgrade replaces pods one at a time (the StatefulSet's template already names
//! the new version and updates on delete), highest ordinal first, the leader last; a scale-down
//! removes the highest ordinal. Both drain a node before it goes.

use std::collections::BTreeMap;
use std::time::Duration;

/// A StatefulSet pod's index.
pub type Ordinal = u32;
/// A store member's id.
pub type NodeId = u64;

/// The node id of the pod with ordinal `ordinal`.
pub fn node_id(ordinal: Ordinal) -> NodeId {
    u64::from(ordinal) + 1
}

/// What the operator sees of one pod and the node in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The Halyard version it runs.
    pub version: String,
    /// The digest of the pod template it was made from (image, configuration, resources,
    /// placement): a pod whose digest is not the spec's is replaced like an outdated version.
    pub template: String,
    /// Its container runs: the node takes part in the store, draining or not.
    pub running: bool,
    /// Its `/readyz` holds (the node is not draining, its store is caught up).
    pub ready: bool,
    /// Time since it started.
    pub age: Duration,
    /// The node reports a drain begun.
    pub draining: bool,
    /// The node reports its drain done: no client connected, its sessions handed over.
    pub drained: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

/// A store member, as the leader reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    /// Log entries it is behind the leader.
    pub lag: u64,
}

/// The cluster as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The StatefulSet's replicas: pods `0..replicas` are wanted.
    pub replicas: u32,
    pub pods: BTreeMap<Ordinal, Pod>,
    pub members: BTreeMap<NodeId, Member>,
    pub leader: Option<NodeId>,
}

/// What the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub nodes: u32,
    /// Raft voters; the other nodes are learners that serve clients.
    pub voters: u32,
    pub version: String,
    /// The digest of the pod template the spec makes.
    pub template: String,
    /// A pod replaced or added is this old before the next disruptive step.
    pub min_pod_age: Duration,
    /// A member this many entries behind the leader, or fewer, is caught up.
    pub max_lag: u64,
    pub paused: bool,
}

/// The one next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until the observed state changes.
    Wait(Wait),
    /// Sets the StatefulSet's replicas.
    Scale(u32),
    Promote(NodeId),
    /// Makes a voter a learner: the pods that stay have more voters than the spec asks.
    Demote(NodeId),
    /// Starts draining the node of a pod (its admin drain endpoint).
    Drain(Ordinal),
    /// Asks the leader to hand leadership to another voter.
    TransferLeadership {
        from: NodeId,
    },
    RemoveMember(NodeId),
    /// Deletes a drained pod so that the StatefulSet starts it again at the template's version.
    Replace(Ordinal),
    /// The cluster is as the spec asks.
    Done,
}

/// Why nothing can be done now; each maps to a status condition's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    Paused,
    /// A wanted pod is missing or not ready.
    PodNotReady(Ordinal),
    /// A ready pod's node is not a store member yet.
    Joining(Ordinal),
    /// A member is further behind than `max_lag`.
    Lagging(NodeId),
    Draining(Ordinal),
    /// A pod replaced or added is younger than `min_pod_age`.
    Settling(Ordinal),
    /// The step would leave fewer healthy voters than a quorum.
    NoQuorumWithout(NodeId),
    /// Leadership is to move, and no other voter can take it.
    NoOtherLeader(NodeId),
}

/// The members as the leader reports them: `(id, voter, lag)` for each, the lag `None` for a
/// member the leader has not heard from yet, which counts as far behind; the leader itself is
/// caught up.
pub fn members_from_leader(
    leader: NodeId,
    reported: impl IntoIterator<Item = (NodeId, bool, Option<u64>)>,
) -> BTreeMap<NodeId, Member> {
    reported
        .into_iter()
        .map(|(id, voter, lag)| {
            let role = if voter { Role::Voter } else { Role::Learner };
            let lag = if id == leader {
                0
            } else {
                lag.unwrap_or(u64::MAX)
            };
            (id, Member { role, lag })
        })
        .collect()
}

/// The voter to hand leadership to from `from`: ready, not draining, the most caught up.
pub fn successor(observed: &Observed, from: NodeId) -> Option<NodeId> {
    observed
        .members
        .iter()
        .filter(|(id, m)| **id != from && m.role == Role::Voter && serves(observed, **id))
        .min_by_key(|(id, m)| (m.lag, **id))
        .map(|(id, _)| *id)
}

/// The next action that brings `observed` toward `desired`.
pub fn plan(observed: &Observed, desired: &Desired) -> Action {
    if desired.paused {
        return Action::Wait(Wait::Paused);
    }
    let view = View { observed, desired };
    // A node already draining goes first, whatever began it (a restarted operator resumes it).
    if let Some(ordinal) = view.draining() {
        return view.finish_drain(ordinal);
    }
    // The membership follows the StatefulSet: a member whose pod is gone for good (its ordinal
    // past the replicas: the StatefulSet was shrunk by hand, or by an operator that stopped
    // before removing it) leaves, or it would count against every quorum from now on.
    if let Some(id) = view.stray_member() {
        return if view.quorum_after_removal(id) {
            Action::RemoveMember(id)
        } else {
            Action::Wait(Wait::NoQuorumWithout(id))
        };
    }
    for ordinal in 0..observed.replicas {
        match observed.pods.get(&ordinal) {
            Some(pod) if pod.ready => {}
            _ => return Action::Wait(Wait::PodNotReady(ordinal)),
        }
        let id = node_id(ordinal);
        match observed.members.get(&id) {
            None => return Action::Wait(Wait::Joining(ordinal)),
            Some(member) if member.lag > desired.max_lag => {
                return Action::Wait(Wait::Lagging(id));
            }
            Some(_) => {}
        }
    }
    if let Some(id) = view.learner_to_promote() {
        return Action::Promote(id);
    }
    if let Some(id) = view.voter_to_demote() {
        return if view.quorum_after_removal(id) {
            Action::Demote(id)
        } else {
            Action::Wait(Wait::NoQuorumWithout(id))
        };
    }
    if observed.replicas < desired.nodes {
        return Action::Scale(desired.nodes);
    }
    if observed.replicas > desired.nodes {
        let ordinal = observed.replicas - 1;
        let id = node_id(ordinal);
        if observed.members.contains_key(&id) && !view.quorum_after_removal(id) {
            return Action::Wait(Wait::NoQuorumWithout(id));
        }
        return Action::Drain(ordinal);
    }
    if let Some(ordinal) = view.outdated() {
        if let Some(young) = view.settling() {
            return Action::Wait(Wait::Settling(young));
        }
        let id = node_id(ordinal);
        if observed.members.contains_key(&id) && !view.quorum_while_down(id) {
            return Action::Wait(Wait::NoQuorumWithout(id));
        }
        return Action::Drain(ordinal);
    }
    Action::Done
}

struct View<'a> {
    observed: &'a Observed,
    desired: &'a Desired,
}

impl View<'_> {
    fn draining(&self) -> Option<Ordinal> {
        self.observed
            .pods
            .iter()
            .filter(|(_, pod)| pod.draining || pod.drained)
            .map(|(ordinal, _)| *ordinal)
            .max()
    }

    /// The highest member without a pod whose ordinal is past the StatefulSet's replicas.
    fn stray_member(&self) -> Option<NodeId> {
        self.observed
            .members
            .keys()
            .rev()
            .find(|id| {
                ordinal_of(**id).is_none_or(|o| {
                    o >= self.observed.replicas && !self.observed.pods.contains_key(&o)
                })
            })
            .copied()
    }

    fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.observed
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Voter)
            .map(|(id, _)| *id)
    }

    /// Whether the node of `id` serves clients: ready and not draining.
    fn serves(&self, id: NodeId) -> bool {
        serves(self.observed, id)
    }

    /// Whether the node of `id` stays once the spec is met.
    fn stays(&self, id: NodeId) -> bool {
        ordinal_of(id).is_some_and(|o| o < self.desired.nodes)
    }

    /// A member that votes soundly: its pod runs (draining or not) and its log is caught up.
    fn healthy(&self, id: NodeId) -> bool {
        let runs = ordinal_of(id)
            .and_then(|o| self.observed.pods.get(&o))
            .is_some_and(|pod| pod.running);
        let caught_up = self
            .observed
            .members
            .get(&id)
            .is_some_and(|m| m.lag <= self.desired.max_lag);
        runs && caught_up
    }

    /// Whether the healthy voters other than `id` make a quorum of the voters as they are: so
    /// `id`'s pod may stop.
    fn quorum_while_down(&self, id: NodeId) -> bool {
        let voters: Vec<NodeId> = self.voters().collect();
        let others = voters.iter().filter(|v| **v != id && self.healthy(**v));
        others.count() > voters.len() / 2
    }

    /// Whether the healthy voters other than `id` make a quorum of the voters without it: so
    /// `id` may leave the membership.
    fn quorum_after_removal(&self, id: NodeId) -> bool {
        let remaining: Vec<NodeId> = self.voters().filter(|v| *v != id).collect();
        let healthy = remaining.iter().filter(|v| self.healthy(**v)).count();
        !remaining.is_empty() && healthy > remaining.len() / 2
    }

    /// The voters wanted among the pods that stay: the spec's count, odd, at most the nodes.
    fn voters_wanted(&self) -> usize {
        let wanted = self.desired.voters.min(self.desired.nodes).max(1);
        let odd = if wanted.is_multiple_of(2) {
            wanted - 1
        } else {
            wanted
        };
        odd as usize
    }

    /// The lowest learner that stays and is caught up, while the staying voters are too few.
    fn learner_to_promote(&self) -> Option<NodeId> {
        let staying_voters = self.voters().filter(|id| self.stays(*id)).count();
        if staying_voters >= self.voters_wanted() {
            return None;
        }
        self.observed
            .members
            .iter()
            .filter(|(id, m)| m.role == Role::Learner && self.stays(**id) && self.healthy(**id))
            .map(|(id, _)| *id)
            .next()
    }

    /// The highest voter that stays, not the leader, while the staying voters are too many.
    fn voter_to_demote(&self) -> Option<NodeId> {
        let staying: Vec<NodeId> = self.voters().filter(|id| self.stays(*id)).collect();
        if staying.len() <= self.voters_wanted() {
            return None;
        }
        staying
            .into_iter()
            .rev()
            .find(|id| Some(*id) != self.observed.leader)
    }

    /// The pod to replace next: the highest ordinal not at the spec's version or template, the
    /// leader's last.
    fn outdated(&self) -> Option<Ordinal> {
        let leader = self.observed.leader.and_then(ordinal_of);
        let outdated = |(o, pod): (&Ordinal, &Pod)| {
            (*o < self.observed.replicas
                && (pod.version != self.desired.version || pod.template != self.desired.template))
                .then_some(*o)
        };
        let mut candidates: Vec<Ordinal> = self.observed.pods.iter().filter_map(outdated).collect();
        candidates.sort_by_key(|o| (Some(*o) == leader, std::cmp::Reverse(*o)));
        candidates.first().copied()
    }

    /// A pod younger than the spec's minimum age.
    fn settling(&self) -> Option<Ordinal> {
        self.observed
            .pods
            .iter()
            .find(|(o, pod)| **o < self.observed.replicas && pod.age < self.desired.min_pod_age)
            .map(|(o, _)| *o)
    }

    /// The steps after the drain of `ordinal` began: wait for it, move leadership away, then
    /// remove the node (a scale-down) or replace its pod (an upgrade, or a drain no longer
    /// wanted: a drained node serves no more until restarted).
    fn finish_drain(&self, ordinal: Ordinal) -> Action {
        let Some(pod) = self.observed.pods.get(&ordinal) else {
            return Action::Wait(Wait::PodNotReady(ordinal));
        };
        if !pod.drained {
            return Action::Wait(Wait::Draining(ordinal));
        }
        let id = node_id(ordinal);
        if self.observed.leader == Some(id) {
            return if self
                .voters()
                .any(|v| v != id && self.healthy(v) && self.serves(v))
            {
                Action::TransferLeadership { from: id }
            } else {
                Action::Wait(Wait::NoOtherLeader(id))
            };
        }
        let leaving = ordinal >= self.desired.nodes;
        if !leaving {
            return if !self.observed.members.contains_key(&id) || self.quorum_while_down(id) {
                Action::Replace(ordinal)
            } else {
                Action::Wait(Wait::NoQuorumWithout(id))
            };
        }
        if self.observed.members.contains_key(&id) {
            return if self.quorum_after_removal(id) {
                Action::RemoveMember(id)
            } else {
                Action::Wait(Wait::NoQuorumWithout(id))
            };
        }
        if ordinal + 1 == self.observed.replicas {
            Action::Scale(ordinal)
        } else {
            // Drained out of turn: the pods above it leave first, so it serves again meanwhile.
            Action::Replace(ordinal)
        }
    }
}

/// Whether the node of `id` serves clients: its pod ready and not draining.
fn serves(observed: &Observed, id: NodeId) -> bool {
    ordinal_of(id)
        .and_then(|o| observed.pods.get(&o))
        .is_some_and(|pod| pod.ready && !pod.draining && !pod.drained)
}

/// The ordinal of the pod of node `id`.
pub fn ordinal_of(id: NodeId) -> Option<Ordinal> {
    id.checked_sub(1).and_then(|o| Ordinal::try_from(o).ok())
}
