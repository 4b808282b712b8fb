//! Raft-replicated transactional key-value store (filled by the raft issue).
