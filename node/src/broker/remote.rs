//! The broker's view of other nodes: it tells them which filters its sessions hold, and hands
//! them the messages their sessions want. `cluster` implements it; a node alone has none.

use std::sync::Arc;

use super::Message;

pub trait Remote: Send + Sync + 'static {
    /// A local session now holds a subscription to `filter` (one call per session and filter;
    /// shared subscriptions by their underlying filter). Called under the trie's write lock,
    /// so calls for one filter arrive in the order they happened: it must not block.
    fn subscribed(&self, filter: &str);

    /// A local session no longer holds its subscription to `filter`. As for `subscribed`.
    fn unsubscribed(&self, filter: &str);

    /// Hands `message`, routed locally already, to every other node with a subscriber whose
    /// filter matches it. Must not block the publisher.
    fn forward(&self, message: &Arc<Message>);
}
