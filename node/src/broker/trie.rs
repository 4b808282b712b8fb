//! The subscription trie: topic filters by level, each node holding the subscribers to the
//! filter that ends there. Generic over what a subscriber is (a local session, a tap, and, in a
//! cluster, a peer node), so that every kind of destination is matched by the same walk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::session::Session;
use crate::mqtt::SubscriptionOptions;

/// Something that can subscribe: identified by a number unique among its kind.
pub trait Target: Clone {
    /// Tells two subscriptions of one target apart from those of others; a target has at most
    /// one subscription per filter and share group.
    fn target_id(&self) -> u64;

    /// Whether a share group should prefer it now (a connected session over an offline one).
    fn is_available(&self) -> bool {
        true
    }
}

impl Target for Arc<Session> {
    fn target_id(&self) -> u64 {
        self.id
    }

    fn is_available(&self) -> bool {
        self.is_connected()
    }
}

#[derive(Debug, Clone)]
pub struct Subscriber<T = Arc<Session>> {
    pub target: T,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// Subscribers in insertion order with an index by target, so that adding, replacing and
/// removing one costs the same with ten subscribers to a filter as with a million.
#[derive(Debug)]
struct Members<T> {
    list: Vec<Subscriber<T>>,
    position: HashMap<u64, usize, foldhash::fast::RandomState>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members {
            list: Vec::new(),
            position: HashMap::default(),
        }
    }
}

impl<T: Target> Members<T> {
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Adds or replaces; true when new.
    fn upsert(&mut self, subscriber: Subscriber<T>) -> bool {
        let id = subscriber.target.target_id();
        match self.position.get(&id) {
            Some(&at) => {
                self.list[at] = subscriber;
                false
            }
            None => {
                self.position.insert(id, self.list.len());
                self.list.push(subscriber);
                true
            }
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.position.remove(&id) else {
            return false;
        };
        self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at) {
            self.position.insert(moved.target.target_id(), at);
        }
        true
    }
}

#[derive(Debug)]
struct SharedGroup<T> {
    name: Box<str>,
    /// The filter its members share, to name the group across tries.
    filter: Box<str>,
    members: Members<T>,
    /// Round-robin position; advanced under the read lock.
    cursor: AtomicUsize,
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>, foldhash::fast::RandomState>,
    direct: Members<T>,
    shared: Vec<SharedGroup<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            direct: Members::default(),
            shared: Vec::new(),
        }
    }
}

impl<T: Target> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.direct.is_empty() && self.shared.is_empty()
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Subscriber<T>>, shared: &mut SharedSink<'a, '_, T>) {
        out.extend(self.direct.list.iter());
        for group in &self.shared {
            if let Some(chosen) = pick_member(group) {
                match shared {
                    Some(picks) => picks.push(SharedMatch {
                        group: &group.name,
                        filter: &group.filter,
                        subscriber: chosen,
                    }),
                    None => out.push(chosen),
                }
            }
        }
    }
}

/// One member picked from a share group that matched.
#[derive(Debug)]
pub struct SharedMatch<'a, T> {
    pub group: &'a str,
    pub filter: &'a str,
    pub subscriber: &'a Subscriber<T>,
}

/// Where a walk puts the members it picks from share groups: apart, or with the others.
type SharedSink<'a, 'b, T> = Option<&'b mut Vec<SharedMatch<'a, T>>>;

/// The next member in round-robin order, preferring available ones so that a message is not
/// parked with an offline member while others are online.
fn pick_member<T: Target>(group: &SharedGroup<T>) -> Option<&Subscriber<T>> {
    let members = &group.members.list;
    let len = members.len();
    if len == 0 {
        return None;
    }
    let start = group.cursor.fetch_add(1, Ordering::Relaxed);
    (0..len)
        .map(|i| &members[(start + i) % len])
        .find(|m| m.target.is_available())
        .or_else(|| members.get(start % len))
}

#[derive(Debug)]
pub struct SubscriptionTrie<T = Arc<Session>> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for SubscriptionTrie<T> {
    fn default() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Target> SubscriptionTrie<T> {
    /// Number of (target, filter) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `subscriber.target` to `filter` (in `share_group`
    /// when given). Returns true when it is new.
    pub fn insert(
        &mut self,
        filter: &str,
        share_group: Option<&str>,
        subscriber: Subscriber<T>,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let members = match share_group {
            None => &mut node.direct,
            Some(name) => {
                let idx = match node.shared.iter().position(|g| &*g.name == name) {
                    Some(idx) => idx,
                    None => {
                        node.shared.push(SharedGroup {
                            name: name.into(),
                            filter: filter.into(),
                            members: Members::default(),
                            cursor: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        let is_new = members.upsert(subscriber);
        if is_new {
            self.len += 1;
        }
        is_new
    }

    /// Removes the subscription of target `target_id` to `filter`; returns whether it existed.
    /// Empty nodes are pruned.
    pub fn remove(&mut self, filter: &str, share_group: Option<&str>, target_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, share_group, target_id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Every subscriber whose filter matches `topic`: all direct subscribers and one member of
    /// each share group.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a Subscriber<T>>) {
        walk(
            &self.root,
            Some(topic),
            true,
            topic.starts_with('$'),
            out,
            &mut None,
        );
    }

    /// As [`SubscriptionTrie::matches`], with the member picked from each share group in
    /// `shared`, named by its group, rather than in `direct`.
    pub fn matches_split<'a>(
        &'a self,
        topic: &str,
        direct: &mut Vec<&'a Subscriber<T>>,
        shared: &mut Vec<SharedMatch<'a, T>>,
    ) {
        walk(
            &self.root,
            Some(topic),
            true,
            topic.starts_with('$'),
            direct,
            &mut Some(shared),
        );
    }

    /// Calls `f` with the filter (and share group) of every subscription held: once per
    /// target, filter and group.
    pub fn for_each_filter(&self, mut f: impl FnMut(&str, Option<&str>)) {
        fn visit<T>(node: &Node<T>, path: &mut String, f: &mut impl FnMut(&str, Option<&str>)) {
            for _ in 0..node.direct.list.len() {
                f(path, None);
            }
            for group in &node.shared {
                for _ in 0..group.members.list.len() {
                    f(path, Some(&group.name));
                }
            }
            for (level, child) in &node.children {
                let before = path.len();
                path.push('/');
                path.push_str(level);
                visit(child, path, f);
                path.truncate(before);
            }
        }
        let mut path = String::new();
        for (level, child) in &self.root.children {
            path.clear();
            path.push_str(level);
            visit(child, &mut path, &mut f);
        }
    }

    /// Whether share group `group` of `filter` has a member.
    pub fn has_share_group(&self, filter: &str, group: &str) -> bool {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.shared
            .iter()
            .any(|g| &*g.name == group && !g.members.is_empty())
    }

    /// Whether any filter matches `topic`, without collecting who.
    pub fn has_match(&self, topic: &str) -> bool {
        let mut out = Vec::new();
        self.matches(topic, &mut out);
        !out.is_empty()
    }
}

fn walk<'a, T: Target>(
    node: &'a Node<T>,
    rest: Option<&str>,
    first: bool,
    dollar: bool,
    out: &mut Vec<&'a Subscriber<T>>,
    shared: &mut SharedSink<'a, '_, T>,
) {
    // Wildcards at the first level never match `$` topics.
    let wildcards = !(first && dollar);
    if wildcards && let Some(hash) = node.children.get("#") {
        hash.collect(out, shared);
    }
    let Some(rest) = rest else {
        node.collect(out, shared);
        return;
    };
    let (level, next) = match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    };
    if let Some(child) = node.children.get(level) {
        walk(child, next, false, dollar, out, shared);
    }
    if wildcards && let Some(plus) = node.children.get("+") {
        walk(plus, next, false, dollar, out, shared);
    }
}

fn remove_at<T: Target>(
    node: &mut Node<T>,
    levels: &[&str],
    share_group: Option<&str>,
    target_id: u64,
) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match share_group {
            None => node.direct.remove(target_id),
            Some(name) => {
                let Some(idx) = node.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = node.shared[idx].members.remove(target_id);
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
    let removed = remove_at(child, rest, share_group, target_id);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::QoS;

    #[test]
    fn every_held_filter_is_listed_once_per_subscription() {
        let mut trie = SubscriptionTrie::default();
        trie.insert("a/+/c", None, sub(1));
        trie.insert("a/+/c", None, sub(2));
        trie.insert("/lead", None, sub(1));
        trie.insert("#", Some("group"), sub(3));
        trie.insert("x", None, sub(1));
        trie.remove("x", None, 1);
        let mut filters = Vec::new();
        trie.for_each_filter(|f, _| filters.push(f.to_owned()));
        filters.sort();
        assert_eq!(filters, ["#", "/lead", "a/+/c", "a/+/c"]);
    }

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            target: Arc::new(Session::new(id, format!("c{id}").into())),
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
        let mut ids: Vec<u64> = out.iter().map(|s| s.target.id).collect();
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

    #[test]
    fn removing_from_the_middle_keeps_every_other_member_findable() {
        let mut t = SubscriptionTrie::default();
        for id in 1..=5 {
            assert!(t.insert("a/b", None, sub(id)));
        }
        assert!(t.remove("a/b", None, 2));
        assert!(
            !t.insert("a/b", None, sub(5)),
            "5 is still there after 2 moved"
        );
        assert!(t.remove("a/b", None, 5));
        assert!(t.remove("a/b", None, 1));
        assert_eq!(matched(&t, "a/b"), vec![3, 4]);
        assert_eq!(t.len(), 2);
    }

    /// A second kind of subscriber, as taps and peer nodes are.
    #[derive(Clone)]
    struct Tap(u64);

    impl Target for Tap {
        fn target_id(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn any_target_can_subscribe() {
        let mut t = SubscriptionTrie::<Tap>::default();
        let tap = |id| Subscriber {
            target: Tap(id),
            options: SubscriptionOptions::default(),
            subscription_id: None,
        };
        t.insert("rules/#", None, tap(7));
        t.insert("rules/+/x", None, tap(8));
        assert!(t.has_match("rules/a/x"));
        assert!(!t.has_match("other"));
        let mut out = Vec::new();
        t.matches("rules/a/x", &mut out);
        let mut ids: Vec<u64> = out.iter().map(|s| s.target.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![7, 8]);
    }
}
