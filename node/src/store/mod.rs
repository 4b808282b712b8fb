//! What the node keeps in the replicated store, seen from the node: the layout of its keys.
//! Record codecs live with the services that own the records.

pub mod keys;
