//! Retained messages: the last retained message of each topic, in a tree of topic levels so
//! that a wildcard subscription visits only the branches its filter can match.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::message::Message;

/// A topic's retained message and when it was last set.
#[derive(Debug, Clone)]
pub struct Retained {
    pub message: Arc<Message>,
    /// Milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

#[derive(Debug, Default)]
struct Level {
    children: HashMap<Box<str>, Level, foldhash::fast::RandomState>,
    retained: Option<Retained>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.retained.is_none()
    }

    /// Every retained message at or under this level.
    fn collect_all<'a>(&'a self, first: bool, out: &mut Vec<&'a Retained>) {
        out.extend(self.retained.as_ref());
        for (name, child) in &self.children {
            // A wildcard in a filter's first level never matches a `$` topic.
            if first && name.starts_with('$') {
                continue;
            }
            child.collect_all(false, out);
        }
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Level,
    len: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `message` for its topic, or clears the topic when its payload is empty.
    pub fn update(&mut self, message: &Arc<Message>, modified_ms: u64) {
        if message.payload.is_empty() {
            self.remove(&message.topic);
            return;
        }
        let mut level = &mut self.root;
        for name in message.topic.split('/') {
            level = level.children.entry(name.into()).or_default();
        }
        let previous = level.retained.replace(Retained {
            message: Arc::clone(message),
            modified_ms,
        });
        if previous.is_none() {
            self.len += 1;
        }
    }

    /// Removes the retained message of `topic`, pruning the levels it leaves empty.
    pub fn remove(&mut self, topic: &str) {
        fn remove_at(level: &mut Level, names: &[&str]) -> bool {
            let Some((name, rest)) = names.split_first() else {
                return level.retained.take().is_some();
            };
            let Some(child) = level.children.get_mut(*name) else {
                return false;
            };
            let removed = remove_at(child, rest);
            if child.is_empty() {
                level.children.remove(*name);
            }
            removed
        }
        let names: Vec<&str> = topic.split('/').collect();
        if remove_at(&mut self.root, &names) {
            self.len -= 1;
        }
    }

    /// The retained message of `topic`.
    pub fn get(&self, topic: &str) -> Option<&Retained> {
        let mut level = &self.root;
        for name in topic.split('/') {
            level = level.children.get(name)?;
        }
        level.retained.as_ref()
    }

    /// Retained messages whose topic matches `filter`: the unexpired ones, then the topics of
    /// expired ones found on the way, for the caller to remove.
    pub fn matching(&self, filter: &str, now: Instant) -> (Vec<Arc<Message>>, Vec<Arc<str>>) {
        let mut found = Vec::new();
        let names: Vec<&str> = filter.split('/').collect();
        walk(&self.root, &names, true, &mut found);
        let mut live = Vec::with_capacity(found.len());
        let mut expired = Vec::new();
        for retained in found {
            if retained.message.is_expired(now) {
                expired.push(Arc::clone(&retained.message.topic));
            } else {
                live.push(Arc::clone(&retained.message));
            }
        }
        (live, expired)
    }

    /// Removes the messages of `topics` that have expired by `now`.
    pub fn remove_expired(&mut self, topics: &[Arc<str>], now: Instant) {
        for topic in topics {
            if self.get(topic).is_some_and(|r| r.message.is_expired(now)) {
                self.remove(topic);
            }
        }
    }
}

fn walk<'a>(level: &'a Level, names: &[&str], first: bool, out: &mut Vec<&'a Retained>) {
    let Some((name, rest)) = names.split_first() else {
        out.extend(level.retained.as_ref());
        return;
    };
    match *name {
        // `a/#` matches `a` itself and everything under it.
        "#" => level.collect_all(first, out),
        "+" => {
            for (child_name, child) in &level.children {
                if first && child_name.starts_with('$') {
                    continue;
                }
                walk(child, rest, false, out);
            }
        }
        exact => {
            if let Some(child) = level.children.get(exact) {
                walk(child, rest, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::QoS;

    fn message(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: payload.to_owned().into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: 0,
        })
    }

    fn matched(store: &RetainedStore, filter: &str) -> Vec<String> {
        let (live, _) = store.matching(filter, Instant::now());
        let mut topics: Vec<String> = live.iter().map(|m| m.topic.to_string()).collect();
        topics.sort();
        topics
    }

    #[test]
    fn filters_match_as_subscriptions_do() {
        let mut store = RetainedStore::default();
        for topic in ["a", "a/b", "a/b/c", "a/x/c", "b/b", "$SYS/a", "/lead"] {
            store.update(&message(topic, "1"), 7);
        }
        assert_eq!(matched(&store, "a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(matched(&store, "a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(matched(&store, "+/b"), ["a/b", "b/b"]);
        assert_eq!(
            matched(&store, "#"),
            ["/lead", "a", "a/b", "a/b/c", "a/x/c", "b/b"]
        );
        assert_eq!(matched(&store, "+/a"), Vec::<String>::new());
        assert_eq!(matched(&store, "$SYS/#"), ["$SYS/a"]);
        assert_eq!(matched(&store, "+/lead"), ["/lead"]);
        assert_eq!(matched(&store, "a/b"), ["a/b"]);
        assert_eq!(store.len(), 7);
    }

    #[test]
    fn an_empty_payload_clears_and_prunes() {
        let mut store = RetainedStore::default();
        store.update(&message("a/b/c", "1"), 1);
        store.update(&message("a/b/c", ""), 2);
        assert!(store.is_empty());
        assert!(store.root.is_empty());
        assert!(store.get("a/b/c").is_none());
    }

    #[test]
    fn replacing_a_message_keeps_the_count() {
        let mut store = RetainedStore::default();
        store.update(&message("a", "1"), 1);
        store.update(&message("a", "2"), 2);
        assert_eq!(store.len(), 1);
        assert_eq!(store.get("a").map(|r| r.modified_ms), Some(2));
    }
}
