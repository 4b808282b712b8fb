//! Every persistent session of the cluster as the store holds it: the node that owns it and
//! the filters it subscribes to. Each node keeps it by following the store's watch, so that a
//! message for a session whose node cannot take it now (dead, cut off, restarting, or not
//! answering) is written to that session's queue in the store instead of being lost: the node
//! that owns the session then, or claims it later, finds it there.

use std::collections::HashMap;
use std::sync::Arc;

use halyard_raft::NodeId;

use crate::broker::durable::SessionRecord;
use crate::broker::{Subscriber, SubscriptionTrie, Target};
use crate::mqtt::SubscriptionOptions;
use crate::store::keys;

/// A stored session as a subscriber of the directory's tries: which session, and its owner
/// when the subscription was read.
#[derive(Debug, Clone)]
pub struct StoredSession {
    number: u64,
    pub client_id: Arc<str>,
    pub owner: Option<NodeId>,
    /// The store revision from which `owner` has owned it (at most).
    pub owned_since: u64,
    /// For a share group's member: the group and its filter. Members are kept apart and all
    /// match, so that the one owed a copy can be picked by its owner.
    group: Option<(Arc<str>, Arc<str>)>,
}

impl Target for StoredSession {
    fn target_id(&self) -> u64 {
        self.number
    }
}

struct Entry {
    number: u64,
    owner: Option<NodeId>,
    revision: u64,
    owned_since: u64,
    filters: Vec<(String, Option<String>)>,
}

/// A copy of a message owed to a stored session: its client id and how the subscription
/// wants it.
pub struct Owed<'a> {
    pub client_id: &'a str,
    pub owner: Option<NodeId>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

#[derive(Default)]
pub struct Directory {
    sessions: HashMap<String, Entry>,
    trie: SubscriptionTrie<StoredSession>,
    members: SubscriptionTrie<StoredSession>,
    /// Sessions each node owns.
    owners: HashMap<Option<NodeId>, usize>,
    next_number: u64,
    /// The store revision the directory has caught up with.
    seen: u64,
}

impl Directory {
    /// The session record stored under `key` was written (`Some`) or deleted (`None`) at
    /// `revision`; the client id it is for.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>, revision: u64) -> Option<String> {
        self.seen = self.seen.max(revision);
        let client_id = key
            .strip_prefix(keys::SESSION.as_bytes())
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(keys::unhex)?;
        match value.and_then(|v| serde_json::from_slice::<SessionRecord>(v).ok()) {
            Some(record) => self.put(record, revision),
            None => self.remove(&client_id),
        }
        Some(client_id)
    }

    fn put(&mut self, record: SessionRecord, revision: u64) {
        let owned_since = match self.sessions.get(&record.client_id) {
            Some(held) if held.owner == record.node => held.owned_since,
            _ => revision,
        };
        self.remove(&record.client_id);
        self.next_number += 1;
        let number = self.next_number;
        let client_id: Arc<str> = Arc::from(record.client_id.as_str());
        let mut filters = Vec::with_capacity(record.subscriptions.len());
        for sub in &record.subscriptions {
            let Some((parsed, options)) = sub.decode() else {
                continue;
            };
            let target = StoredSession {
                number,
                client_id: Arc::clone(&client_id),
                owner: record.node,
                owned_since,
                group: parsed
                    .share_group
                    .map(|group| (Arc::from(group), Arc::from(parsed.filter))),
            };
            let trie = if parsed.share_group.is_some() {
                &mut self.members
            } else {
                &mut self.trie
            };
            trie.insert(
                parsed.filter,
                None,
                Subscriber {
                    target,
                    options,
                    subscription_id: sub.subscription_id,
                },
            );
            filters.push((
                parsed.filter.to_owned(),
                parsed.share_group.map(str::to_owned),
            ));
        }
        *self.owners.entry(record.node).or_default() += 1;
        self.sessions.insert(
            record.client_id,
            Entry {
                number,
                owner: record.node,
                revision,
                owned_since,
                filters,
            },
        );
    }

    fn remove(&mut self, client_id: &str) {
        let Some(entry) = self.sessions.remove(client_id) else {
            return;
        };
        for (filter, group) in &entry.filters {
            let trie = if group.is_some() {
                &mut self.members
            } else {
                &mut self.trie
            };
            trie.remove(filter, None, entry.number);
        }
        if let Some(count) = self.owners.get_mut(&entry.owner) {
            *count -= 1;
            if *count == 0 {
                self.owners.remove(&entry.owner);
            }
        }
    }

    /// Forgets everything, before the store is read afresh at `revision`.
    pub fn clear(&mut self, revision: u64) {
        *self = Self {
            next_number: self.next_number,
            seen: revision,
            ..Self::default()
        };
    }

    /// The store revision the directory has caught up with.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The nodes that own stored sessions (`None` for records that name none).
    pub fn owners(&self) -> impl Iterator<Item = Option<NodeId>> + '_ {
        self.owners.keys().copied()
    }

    /// The owner of the stored session of `client_id`: `None` if there is none, `Some(None)`
    /// if its record names no node.
    pub fn owner(&self, client_id: &str) -> Option<Option<NodeId>> {
        self.sessions.get(client_id).map(|e| e.owner)
    }

    /// The stored session of `client_id`: the node its record names, and the revision from
    /// which that node has owned it.
    pub fn record(&self, client_id: &str) -> Option<(Option<NodeId>, u64)> {
        self.sessions
            .get(client_id)
            .map(|e| (e.owner, e.owned_since))
    }

    /// The sessions whose record names a node other than `node`, with the revision each was
    /// written at.
    pub fn not_owned_by(&self, node: NodeId) -> Vec<(String, u64)> {
        self.sessions
            .iter()
            .filter(|(_, e)| e.owner.is_some_and(|o| o != node))
            .map(|(client, e)| (client.clone(), e.revision))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// The stored sessions a message on `topic` is owed to that `stranded` says their owner
    /// cannot take it for, each once with its highest QoS; and one member of each share group `wanted`
    /// lets through (a group whose member gets it elsewhere is not owed it again): one whose
    /// owner cannot take it if there is one, else any, as whichever node holds a member's
    /// session takes what is stored for it.
    pub fn owed(
        &self,
        topic: &str,
        stranded: impl Fn(&StoredSession) -> bool,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Vec<Owed<'_>> {
        let mut picked = Vec::new();
        self.trie.matches(topic, &mut picked);
        picked.retain(|s| stranded(&s.target));
        let mut members = Vec::new();
        self.members.matches(topic, &mut members);
        let mut chosen: Vec<&Subscriber<StoredSession>> = Vec::new();
        for member in members {
            let Some((group, filter)) = &member.target.group else {
                continue;
            };
            if !wanted(group, filter) {
                continue;
            }
            match chosen
                .iter_mut()
                .find(|c| c.target.group == member.target.group)
            {
                // The first member seen, unless a later one's node cannot take it and the
                // first's can.
                Some(first) => {
                    if stranded(&member.target) && !stranded(&first.target) {
                        *first = member;
                    }
                }
                None => chosen.push(member),
            }
        }
        picked.extend(chosen);
        let mut owed: Vec<Owed<'_>> = Vec::new();
        for sub in picked {
            let client_id = &*sub.target.client_id;
            match owed.iter_mut().find(|o| o.client_id == client_id) {
                Some(o) if o.options.qos < sub.options.qos => {
                    o.options = sub.options;
                    o.subscription_id = sub.subscription_id.or(o.subscription_id);
                }
                Some(_) => {}
                None => owed.push(Owed {
                    client_id,
                    owner: sub.target.owner,
                    options: sub.options,
                    subscription_id: sub.subscription_id,
                }),
            }
        }
        owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::durable::SubscriptionRecord;
    use crate::mqtt::QoS;

    fn record(client_id: &str, node: NodeId, filters: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        };
        let record = SessionRecord {
            client_id: client_id.to_owned(),
            expiry_interval: u32::MAX,
            subscriptions: filters
                .iter()
                .map(|f| SubscriptionRecord::new(f, options, None))
                .collect(),
            node: Some(node),
            owner: None,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        (keys::session(client_id), value)
    }

    fn owed_to(directory: &Directory, topic: &str, down: NodeId, groups: bool) -> Vec<String> {
        let mut owed: Vec<String> = directory
            .owed(topic, |s| s.owner == Some(down), |_, _| groups)
            .iter()
            .map(|o| o.client_id.to_owned())
            .collect();
        owed.sort();
        owed
    }

    #[test]
    fn a_message_is_owed_once_to_each_stored_session_of_a_node_that_cannot_take_it() {
        let mut directory = Directory::default();
        for (client, node, filters) in [
            ("a", 1, &["t/#", "t/+"][..]),
            ("b", 2, &["t/1"][..]),
            ("c", 2, &["u/#"][..]),
            ("d", 2, &["$share/g/t/#"][..]),
            ("e", 2, &["$share/g/t/#"][..]),
        ] {
            let (key, value) = record(client, node, filters);
            directory.apply(&key, Some(&value), 1);
        }
        assert_eq!(owed_to(&directory, "t/1", 1, false), ["a"]);
        let to_two = owed_to(&directory, "t/1", 2, true);
        assert_eq!(to_two.len(), 2, "b and one member of the group: {to_two:?}");
        assert!(to_two.contains(&"b".to_owned()));
        assert_eq!(owed_to(&directory, "v", 2, true), Vec::<String>::new());
        // A group no node that answers serves gets its copy even when none of its members is
        // on the node that cannot take it: their own node takes it from the store.
        let to_one = owed_to(&directory, "t/1", 1, true);
        assert_eq!(to_one.len(), 2, "a and one member of the group: {to_one:?}");

        // The session moves to node 3, then is deleted.
        let (key, value) = record("a", 3, &["t/#"]);
        directory.apply(&key, Some(&value), 2);
        assert!(owed_to(&directory, "t/1", 1, false).is_empty());
        assert_eq!(owed_to(&directory, "t/1", 3, false), ["a"]);
        directory.apply(&key, None, 3);
        assert!(owed_to(&directory, "t/1", 3, false).is_empty());
        assert_eq!(directory.len(), 4);
        assert_eq!(directory.owners().count(), 1);
    }

    #[test]
    fn a_session_is_owned_since_its_owner_last_changed_and_a_sender_reached_it_only_if_it_knew() {
        use crate::cluster::lane::Coverage;
        let mut directory = Directory::default();
        let owned_since = |directory: &Directory| {
            let since = std::cell::RefCell::new(Vec::new());
            directory.owed(
                "t/1",
                |s| {
                    since.borrow_mut().push((s.owner, s.owned_since));
                    false
                },
                |_, _| false,
            );
            since.into_inner()
        };
        let (key, value) = record("a", 1, &["t/#"]);
        directory.apply(&key, Some(&value), 5);
        // A new subscription rewrites the record; the owner is the same.
        let (key, value) = record("a", 1, &["t/#", "u"]);
        directory.apply(&key, Some(&value), 9);
        assert_eq!(owned_since(&directory), [(Some(1), 5)]);
        assert_eq!(directory.seen(), 9);
        // Node 2 claims it.
        let (key, value) = record("a", 2, &["t/#", "u"]);
        directory.apply(&key, Some(&value), 12);
        assert_eq!(owned_since(&directory), [(Some(2), 12)]);

        // A sender that sent to node 2 after hearing of the claim reached it; one that had
        // not heard of it yet, or did not send to node 2, did not.
        let sent_to = |nodes: &[NodeId], seen| Coverage {
            nodes: nodes.to_vec(),
            seen,
        };
        assert!(sent_to(&[3, 2], 12).reached(2, 12));
        assert!(!sent_to(&[3, 2], 11).reached(2, 12));
        assert!(!sent_to(&[3, 1], 12).reached(2, 12));
    }
}
