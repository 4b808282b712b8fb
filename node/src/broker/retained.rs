//! Retained messages: the last retained message of each topic.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::message::Message;
use crate::mqtt::topic;

#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: HashMap<Arc<str>, Arc<Message>>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Stores `message` for its topic, or clears the topic when its payload is empty.
    pub fn update(&mut self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
        } else {
            self.messages
                .insert(message.topic.clone(), Arc::clone(message));
        }
    }

    /// Unexpired retained messages whose topic matches `filter`; expired
    /// ones found on the way are removed.
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let found: Vec<Arc<Message>> = if filter.contains(['+', '#']) {
            self.messages
                .iter()
                .filter(|(t, _)| topic::matches(filter, t))
                .map(|(_, m)| Arc::clone(m))
                .collect()
        } else {
            self.messages.get(filter).cloned().into_iter().collect()
        };
        let (live, expired): (Vec<_>, Vec<_>) = found.into_iter().partition(|m| !m.is_expired(now));
        for m in expired {
            self.messages.remove(&m.topic);
        }
        live
    }
}
