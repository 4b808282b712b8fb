//! The subscription trie: topic filters by level, each node holding the
//! sessions subscribed to the filter that ends there.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::session::Session;
use crate::mqtt::SubscriptionOptions;

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    members: Vec<Subscriber>,
    /// Round-robin position; advanced under the read lock.
    cursor: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    direct: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.direct.is_empty() && self.shared.is_empty()
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Subscriber>) {
        out.extend(self.direct.iter());
        for group in &self.shared {
            if let Some(chosen) = pick_member(group) {
                out.push(chosen);
            }
        }
    }
}

/// The next member in round-robin order, preferring connected ones so that
/// a message is not parked with an offline member while others are online.
fn pick_member(group: &SharedGroup) -> Option<&Subscriber> {
    let len = group.members.len();
    if len == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed);
    (0..len)
        .map(|i| &group.members[(start + i) % len])
        .find(|m| m.session.is_connected())
        .or_else(|| group.members.get(start % len))
}

#[derive(Debug, Default)]
pub struct SubscriptionTrie {
    root: Node,
    len: usize,
}

impl SubscriptionTrie {
    /// Number of (session, filter) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `subscriber.session` to `filter`
    /// (in `share_group` when given). Returns true when it is new.
    pub fn insert(
        &mut self,
        filter: &str,
        share_group: Option<&str>,
        subscriber: Subscriber,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match share_group {
            None => &mut node.direct,
            Some(name) => {
                let idx = match node.shared.iter().position(|g| &*g.name == name) {
                    Some(idx) => idx,
                    None => {
                        node.shared.push(SharedGroup {
                            name: name.into(),
                            members: Vec::new(),
                            cursor: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        let id = subscriber.session.id;
        match list.iter_mut().find(|s| s.session.id == id) {
            Some(existing) => {
                *existing = subscriber;
                false
            }
            None => {
                list.push(subscriber);
                self.len += 1;
                true
            }
        }
    }

    /// Removes the subscription of session `session_id` to `filter`;
    /// returns whether it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &str, share_group: Option<&str>, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, share_group, session_id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Every subscriber whose filter matches `topic`: all direct
    /// subscribers and one member of each share group.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a Subscriber>) {
        walk(&self.root, Some(topic), true, topic.starts_with('$'), out);
    }
}

fn walk<'a>(
    node: &'a Node,
    rest: Option<&str>,
    first: bool,
    dollar: bool,
    out: &mut Vec<&'a Subscriber>,
) {
    // Wildcards at the first level never match `$` topics.
    let wildcards = !(first && dollar);
    if wildcards && let Some(hash) = node.children.get("#") {
        hash.collect(out);
    }
    let Some(rest) = rest else {
        node.collect(out);
        return;
    };
    let (level, next) = match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    };
    if let Some(child) = node.children.get(level) {
        walk(child, next, false, dollar, out);
    }
    if wildcards && let Some(plus) = node.children.get("+") {
        walk(plus, next, false, dollar, out);
    }
}

fn remove_at(node: &mut Node, levels: &[&str], share_group: Option<&str>, session_id: u64) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match share_group {
            None => remove_member(&mut node.direct, session_id),
            Some(name) => {
                let Some(idx) = node.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = remove_member(&mut node.shared[idx].members, session_id);
                if node.shared[idx].members.is_empty() {
                    node.shared.swap_remove(idx);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*level) else {
        return false;
    };
    let removed = remove_at(child, rest, share_group, session_id);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

fn remove_member(list: &mut Vec<Subscriber>, session_id: u64) -> bool {
    match list.iter().position(|s| s.session.id == session_id) {
        Some(idx) => {
            list.swap_remove(idx);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::QoS;

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            session: Arc::new(Session::new(id, format!("c{id}").into())),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            subscription_id: None,
        }
    }

    fn matched(trie: &SubscriptionTrie, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        trie.matches(topic, &mut out);
        let mut ids: Vec<u64> = out.iter().map(|s| s.session.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn wildcards_match_per_spec() {
        let mut t = SubscriptionTrie::default();
        t.insert("a/b", None, sub(1));
        t.insert("a/+", None, sub(2));
        t.insert("a/#", None, sub(3));
        t.insert("#", None, sub(4));
        t.insert("+/+/c", None, sub(5));
        assert_eq!(matched(&t, "a/b"), vec![1, 2, 3, 4]);
        assert_eq!(matched(&t, "a"), vec![3, 4]);
        assert_eq!(matched(&t, "a/x/c"), vec![3, 4, 5]);
        assert_eq!(matched(&t, "$SYS/x"), Vec::<u64>::new());
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn dollar_topics_need_explicit_first_level() {
        let mut t = SubscriptionTrie::default();
        t.insert("$aws/things/+/shadow/#", None, sub(1));
        t.insert("+/things/#", None, sub(2));
        assert_eq!(matched(&t, "$aws/things/t1/shadow/update"), vec![1]);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut t = SubscriptionTrie::default();
        assert!(t.insert("a/b/c", None, sub(1)));
        assert!(!t.insert("a/b/c", None, sub(1)));
        assert!(t.remove("a/b/c", None, 1));
        assert!(!t.remove("a/b/c", None, 1));
        assert!(t.root.is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn share_groups_pick_one_member_in_turn() {
        let mut t = SubscriptionTrie::default();
        t.insert("s/+", Some("g"), sub(1));
        t.insert("s/+", Some("g"), sub(2));
        t.insert("s/+", Some("h"), sub(3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let m = matched(&t, "s/x");
            assert_eq!(m.len(), 2);
            assert!(m.contains(&3));
            seen.push(m[0]);
        }
        assert!(seen.contains(&1) && seen.contains(&2));
        assert!(t.remove("s/+", Some("g"), 1));
        assert_eq!(matched(&t, "s/x"), vec![2, 3]);
    }
}
