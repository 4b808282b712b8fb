//! The routes other nodes announced: for each filter (and share group), the nodes that hold it.
//!
//! A cluster's table can hold millions of filters, most of them one per device
//! (`devices/{id}/+`), so it is laid out for size rather than as a tree of maps: the levels of
//! every filter in one arena, their names in one string, one hash table of the edges from a
//! level to its children (keyed by the parent and the child's name, holding only the child's
//! index), and the nodes that hold a filter as bits of a mask, one bit per node (nodes past
//! the 64th are listed aside). Levels and names are kept in fixed-size chunks, so the table
//! grows without copying and without the unused half a doubling buffer leaves. A level costs
//! about 31 bytes and its name, whatever the number of nodes; share groups are few, and list
//! their nodes aside too.
//!
//! Each node's routes are current for one announcement (`generation`): a new snapshot from the
//! node replaces them all, and changes or the end of an older stream are ignored.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use halyard_raft::NodeId;
use hashbrown::HashTable;

use super::control::{RouteDigest, parse_route};

/// Nodes in slots below this are bits of a level's mask; the rest are listed in `wide`.
const MASK_SLOTS: usize = 64;
const ROOT: u32 = 0;
/// The parent of a level that is free for reuse.
const FREE: u32 = u32::MAX;
/// Freed name bytes tolerated before the names are packed again (and at least half of them).
const GARBAGE_SLACK: usize = 1 << 20;

/// A level has a `+` child.
const HAS_PLUS: u8 = 1;
/// A level has a `#` child.
const HAS_HASH: u8 = 2;
/// A level has share groups in `shared`.
const HAS_SHARED: u8 = 4;

/// 24 bytes: most of a route's cost is its levels.
struct Level {
    parent: u32,
    name_at: u32,
    /// Children in the edge table, so that an empty level can be pruned.
    children: u32,
    /// A level of a filter is shorter than the filter, which MQTT bounds to 65,535 bytes.
    name_len: u16,
    flags: u8,
    /// Bit `s` set: the node in slot `s` holds this filter.
    nodes: u64,
}

impl Level {
    fn is_free(&self) -> bool {
        self.parent == FREE
    }
}

/// A share group of one filter, and the nodes with members in it.
struct SharedRoute {
    group: Box<str>,
    filter: Box<str>,
    nodes: Vec<NodeId>,
    /// Round-robin position among `nodes`; advanced under the read lock.
    cursor: AtomicUsize,
}

/// A node whose routes are held, and which of its announcements they come from.
struct Announced {
    slot: usize,
    generation: u64,
    routes: usize,
    digest: RouteDigest,
}

/// One node picked for a share group that a topic matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPick<'a> {
    pub group: &'a str,
    pub filter: &'a str,
    pub node: NodeId,
}

pub struct RouteTable {
    levels: Levels,
    free: Vec<u32>,
    names: Names,
    /// Bytes of `names` that belong to freed levels.
    garbage: usize,
    edges: HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    /// Share groups by level.
    shared: HashMap<u32, Vec<SharedRoute>>,
    /// Slots at or past `MASK_SLOTS` holding a level's filter, by level.
    wide: HashMap<u32, Vec<usize>>,
    slots: Vec<Option<NodeId>>,
    announced: HashMap<NodeId, Announced>,
    next_generation: u64,
    len: usize,
}

impl Default for RouteTable {
    fn default() -> Self {
        let mut levels = Levels::default();
        levels.push(Level {
            parent: ROOT,
            name_at: 0,
            children: 0,
            name_len: 0,
            flags: 0,
            nodes: 0,
        });
        RouteTable {
            levels,
            free: Vec::new(),
            names: Names::default(),
            garbage: 0,
            edges: HashTable::new(),
            hasher: foldhash::fast::FixedState::default(),
            shared: HashMap::new(),
            wide: HashMap::new(),
            slots: Vec::new(),
            announced: HashMap::new(),
            next_generation: 0,
            len: 0,
        }
    }
}

fn name_of<'a>(levels: &Levels, names: &'a Names, at: u32) -> &'a str {
    let level = &levels[at as usize];
    names.get(level.name_at, level.name_len)
}

/// Levels in chunks that never grow past `LEVEL_CHUNK`: the arena grows without copying, and
/// without the half-empty buffer a doubling `Vec` leaves.
#[derive(Default)]
struct Levels {
    chunks: Vec<Vec<Level>>,
}

const LEVEL_CHUNK: usize = 4096;

impl Levels {
    fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * LEVEL_CHUNK + last.len())
    }

    fn push(&mut self, level: Level) -> u32 {
        let at = self.len();
        match self.chunks.last_mut() {
            Some(last) if last.len() < LEVEL_CHUNK => last.push(level),
            _ => {
                let mut chunk = Vec::with_capacity(LEVEL_CHUNK);
                chunk.push(level);
                self.chunks.push(chunk);
            }
        }
        at as u32
    }

    fn iter(&self) -> impl Iterator<Item = &Level> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Level> {
        self.chunks.iter_mut().flatten()
    }
}

impl std::ops::Index<usize> for Levels {
    type Output = Level;

    fn index(&self, at: usize) -> &Level {
        &self.chunks[at / LEVEL_CHUNK][at % LEVEL_CHUNK]
    }
}

impl std::ops::IndexMut<usize> for Levels {
    fn index_mut(&mut self, at: usize) -> &mut Level {
        &mut self.chunks[at / LEVEL_CHUNK][at % LEVEL_CHUNK]
    }
}

/// The levels' names, in strings of `NAME_CHUNK` bytes; a name never straddles two, and is
/// found by its offset as if they were one.
#[derive(Default)]
struct Names {
    chunks: Vec<String>,
    /// Bytes of names pushed (freed ones included, until packed).
    bytes: usize,
}

/// A level's name is at most 65,535 bytes, so it always fits a chunk.
const NAME_CHUNK: usize = 1 << 16;

impl Names {
    /// Whether a filter's names can still be given offsets (a `u32` covers 65,536 chunks,
    /// and one filter's names may open two).
    fn has_room_for_a_filter(&self) -> bool {
        self.chunks.len() + 2 <= u32::MAX as usize / NAME_CHUNK + 1
    }

    fn push(&mut self, name: &str) -> u32 {
        let fits = self
            .chunks
            .last()
            .is_some_and(|last| last.len() + name.len() <= NAME_CHUNK);
        if !fits {
            self.chunks.push(String::with_capacity(NAME_CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let at = index * NAME_CHUNK + chunk.len();
        chunk.push_str(name);
        self.bytes += name.len();
        at as u32
    }

    fn get(&self, at: u32, len: u16) -> &str {
        let (chunk, start) = (at as usize / NAME_CHUNK, at as usize % NAME_CHUNK);
        self.chunks
            .get(chunk)
            .and_then(|c| c.get(start..start + len as usize))
            .unwrap_or("")
    }
}

impl RouteTable {
    /// Routes held: one per node and filter (or share group of a filter).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The nodes whose routes are held.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.announced.keys().copied()
    }

    /// Replaces everything `node` announced with `keys` (filters, or `$share/{group}/{filter}`);
    /// the generation that identifies this announcement.
    pub fn replace<K: AsRef<str>>(
        &mut self,
        node: NodeId,
        keys: impl IntoIterator<Item = K>,
    ) -> u64 {
        // The node's levels stay while the snapshot is added, so that the filters it still
        // holds (most of them, usually) find theirs in place; those it dropped are pruned.
        let (slot, emptied) = match self.announced.remove(&node) {
            Some(old) => {
                self.len -= old.routes;
                (old.slot, self.clear_node(node, &old))
            }
            None => {
                let slot = match self.slots.iter().position(Option::is_none) {
                    Some(slot) => slot,
                    None => {
                        self.slots.push(None);
                        self.slots.len() - 1
                    }
                };
                (slot, Vec::new())
            }
        };
        self.slots[slot] = Some(node);
        self.next_generation += 1;
        let generation = self.next_generation;
        self.announced.insert(
            node,
            Announced {
                slot,
                generation,
                routes: 0,
                digest: RouteDigest::default(),
            },
        );
        for key in keys {
            self.add(node, generation, key.as_ref());
        }
        for at in emptied {
            self.prune(at);
        }
        generation
    }

    /// Adds route `key` of `node`, if `generation` is still its current announcement.
    pub fn add(&mut self, node: NodeId, generation: u64, key: &str) {
        let Some(slot) = self.current_slot(node, generation) else {
            return;
        };
        let Some((filter, group)) = parse_route(key) else {
            return;
        };
        if filter.split('/').any(|name| name.len() > u16::MAX as usize) {
            return;
        }
        if !self.names.has_room_for_a_filter() {
            self.pack_names();
            if !self.names.has_room_for_a_filter() {
                return;
            }
        }
        let mut at = ROOT;
        for name in filter.split('/') {
            at = self.child_or_insert(at, name);
        }
        let added = match group {
            None => self.set_slot(at, slot),
            Some(group) => self.join_group(at, group, filter, node),
        };
        if added {
            self.len += 1;
            if let Some(announced) = self.announced.get_mut(&node) {
                announced.routes += 1;
                announced.digest.added(key);
            }
        }
    }

    /// Removes route `key` of `node`, if `generation` is still its current announcement.
    pub fn remove(&mut self, node: NodeId, generation: u64, key: &str) {
        let Some(slot) = self.current_slot(node, generation) else {
            return;
        };
        let Some((filter, group)) = parse_route(key) else {
            return;
        };
        let Some(at) = self.find(filter) else {
            return;
        };
        let removed = match group {
            None => self.clear_slot(at, slot),
            Some(group) => self.leave_group(at, group, node),
        };
        if removed {
            self.len -= 1;
            if let Some(announced) = self.announced.get_mut(&node) {
                announced.routes -= 1;
                announced.digest.removed(key);
            }
            self.prune(at);
        }
    }

    /// What the routes of `node`'s announcement `generation` amount to, if it is current.
    pub fn digest(&self, node: NodeId, generation: u64) -> Option<RouteDigest> {
        self.announced
            .get(&node)
            .filter(|a| a.generation == generation)
            .map(|a| a.digest)
    }

    /// Drops what `node` announced if `generation` is still its current announcement.
    pub fn end(&mut self, node: NodeId, generation: u64) {
        if self.current_slot(node, generation).is_some() {
            self.drop_node(node);
        }
    }

    /// Drops every route of `node`.
    pub fn drop_node(&mut self, node: NodeId) {
        let Some(announced) = self.announced.remove(&node) else {
            return;
        };
        self.len -= announced.routes;
        let emptied = self.clear_node(node, &announced);
        self.slots[announced.slot] = None;
        for at in emptied {
            self.prune(at);
        }
    }

    /// Takes `node`'s routes out of every level, leaving the levels in place (a snapshot that
    /// follows reuses them); the levels it left, to prune.
    fn clear_node(&mut self, node: NodeId, announced: &Announced) -> Vec<u32> {
        let slot = announced.slot;
        let mut emptied = Vec::new();
        if announced.routes == 0 {
            return emptied;
        }
        if slot < MASK_SLOTS {
            let bit = 1u64 << slot;
            for (at, level) in self.levels.iter_mut().enumerate() {
                if !level.is_free() && level.nodes & bit != 0 {
                    level.nodes &= !bit;
                    emptied.push(at as u32);
                }
            }
        } else {
            self.wide.retain(|at, slots| {
                if let Some(i) = slots.iter().position(|s| *s == slot) {
                    slots.swap_remove(i);
                    emptied.push(*at);
                }
                !slots.is_empty()
            });
        }
        let levels = &mut self.levels;
        self.shared.retain(|at, groups| {
            let before = groups.len();
            for group in groups.iter_mut() {
                group.nodes.retain(|n| *n != node);
            }
            groups.retain(|g| !g.nodes.is_empty());
            if groups.len() != before {
                emptied.push(*at);
            }
            if groups.is_empty() {
                levels[*at as usize].flags &= !HAS_SHARED;
            }
            !groups.is_empty()
        });
        emptied
    }

    /// The nodes holding a filter that matches `topic` (each once, in `direct`), and for each
    /// share group it matches one node with members, in turn (in `shared`).
    pub fn matches<'a>(
        &'a self,
        topic: &str,
        direct: &mut Vec<NodeId>,
        shared: &mut Vec<SharedPick<'a>>,
    ) {
        let mut found = Found {
            mask: 0,
            wide: Vec::new(),
            shared,
        };
        self.walk(ROOT, Some(topic), true, topic.starts_with('$'), &mut found);
        let mut mask = found.mask;
        while mask != 0 {
            let slot = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(Some(node)) = self.slots.get(slot) {
                direct.push(*node);
            }
        }
        for slot in found.wide {
            if let Some(Some(node)) = self.slots.get(slot)
                && !direct.contains(node)
            {
                direct.push(*node);
            }
        }
    }

    /// Whether share group `group` of `filter` has members on some node.
    pub fn has_share_group(&self, filter: &str, group: &str) -> bool {
        self.find(filter)
            .and_then(|at| self.groups_of(at))
            .is_some_and(|groups| groups.iter().any(|g| &*g.group == group))
    }

    /// The routes `node` announced, as held; `None` when none are held for it.
    pub fn routes_of(&self, node: NodeId) -> Option<BTreeSet<String>> {
        let slot = self.announced.get(&node)?.slot;
        let mut routes = BTreeSet::new();
        for (at, level) in self.levels.iter().enumerate() {
            if level.is_free() || at == ROOT as usize {
                continue;
            }
            let at = at as u32;
            let held = if slot < MASK_SLOTS {
                level.nodes & (1u64 << slot) != 0
            } else {
                self.wide.get(&at).is_some_and(|s| s.contains(&slot))
            };
            if held {
                routes.insert(self.filter_of(at));
            }
            for group in self.groups_of(at).unwrap_or_default() {
                if group.nodes.contains(&node) {
                    routes.insert(format!("$share/{}/{}", group.group, group.filter));
                }
            }
        }
        Some(routes)
    }

    fn current_slot(&self, node: NodeId, generation: u64) -> Option<usize> {
        self.announced
            .get(&node)
            .filter(|a| a.generation == generation)
            .map(|a| a.slot)
    }

    fn edge_hash(&self, parent: u32, name: &str) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    fn child(&self, parent: u32, name: &str) -> Option<u32> {
        let (levels, names) = (&self.levels, &self.names);
        self.edges
            .find(self.edge_hash(parent, name), |&at| {
                levels[at as usize].parent == parent && name_of(levels, names, at) == name
            })
            .copied()
    }

    fn find(&self, filter: &str) -> Option<u32> {
        filter
            .split('/')
            .try_fold(ROOT, |at, name| self.child(at, name))
    }

    fn child_or_insert(&mut self, parent: u32, name: &str) -> u32 {
        if let Some(at) = self.child(parent, name) {
            return at;
        }
        let level = Level {
            parent,
            name_at: self.names.push(name),
            children: 0,
            name_len: name.len() as u16,
            flags: 0,
            nodes: 0,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.levels[at as usize] = level;
                at
            }
            None => self.levels.push(level),
        };
        let parent_level = &mut self.levels[parent as usize];
        parent_level.children += 1;
        parent_level.flags |= match name {
            "+" => HAS_PLUS,
            "#" => HAS_HASH,
            _ => 0,
        };
        let hash = self.edge_hash(parent, name);
        let Self {
            levels,
            names,
            edges,
            hasher,
            ..
        } = self;
        edges.insert_unique(hash, at, |&at| {
            let level = &levels[at as usize];
            hasher.hash_one((level.parent, name_of(levels, names, at)))
        });
        at
    }

    /// Frees `at` and its ancestors while they hold nothing.
    fn prune(&mut self, mut at: u32) {
        while at != ROOT {
            let level = &self.levels[at as usize];
            if level.is_free()
                || level.children > 0
                || level.nodes != 0
                || level.flags & HAS_SHARED != 0
                || self.wide.contains_key(&at)
            {
                break;
            }
            let parent = level.parent;
            let name_len = level.name_len as usize;
            let name = name_of(&self.levels, &self.names, at);
            let flag = match name {
                "+" => HAS_PLUS,
                "#" => HAS_HASH,
                _ => 0,
            };
            let hash = self.edge_hash(parent, name);
            if let Ok(entry) = self.edges.find_entry(hash, |&i| i == at) {
                entry.remove();
            }
            self.levels[at as usize].parent = FREE;
            self.free.push(at);
            self.garbage += name_len;
            let parent_level = &mut self.levels[parent as usize];
            parent_level.children -= 1;
            parent_level.flags &= !flag;
            at = parent;
        }
        if self.garbage > GARBAGE_SLACK && self.garbage * 2 > self.names.bytes {
            self.pack_names();
        }
    }

    /// Copies the names of live levels into a new string, leaving freed ones behind.
    fn pack_names(&mut self) {
        let mut packed = Names::default();
        for at in 0..self.levels.len() {
            if self.levels[at].is_free() {
                continue;
            }
            let name_at = packed.push(name_of(&self.levels, &self.names, at as u32));
            self.levels[at].name_at = name_at;
        }
        self.names = packed;
        self.garbage = 0;
    }

    fn set_slot(&mut self, at: u32, slot: usize) -> bool {
        if slot < MASK_SLOTS {
            let level = &mut self.levels[at as usize];
            let bit = 1u64 << slot;
            let added = level.nodes & bit == 0;
            level.nodes |= bit;
            return added;
        }
        let slots = self.wide.entry(at).or_default();
        if slots.contains(&slot) {
            return false;
        }
        slots.push(slot);
        true
    }

    fn clear_slot(&mut self, at: u32, slot: usize) -> bool {
        if slot < MASK_SLOTS {
            let level = &mut self.levels[at as usize];
            let bit = 1u64 << slot;
            let held = level.nodes & bit != 0;
            level.nodes &= !bit;
            return held;
        }
        let Some(slots) = self.wide.get_mut(&at) else {
            return false;
        };
        let Some(i) = slots.iter().position(|s| *s == slot) else {
            return false;
        };
        slots.swap_remove(i);
        if slots.is_empty() {
            self.wide.remove(&at);
        }
        true
    }

    fn groups_of(&self, at: u32) -> Option<&[SharedRoute]> {
        if self.levels[at as usize].flags & HAS_SHARED == 0 {
            return None;
        }
        self.shared.get(&at).map(Vec::as_slice)
    }

    fn join_group(&mut self, at: u32, group: &str, filter: &str, node: NodeId) -> bool {
        self.levels[at as usize].flags |= HAS_SHARED;
        let groups = self.shared.entry(at).or_default();
        match groups.iter_mut().find(|g| &*g.group == group) {
            Some(route) if route.nodes.contains(&node) => false,
            Some(route) => {
                route.nodes.push(node);
                true
            }
            None => {
                groups.push(SharedRoute {
                    group: group.into(),
                    filter: filter.into(),
                    nodes: vec![node],
                    cursor: AtomicUsize::new(0),
                });
                true
            }
        }
    }

    fn leave_group(&mut self, at: u32, group: &str, node: NodeId) -> bool {
        let Some(groups) = self.shared.get_mut(&at) else {
            return false;
        };
        let Some(g) = groups.iter().position(|g| &*g.group == group) else {
            return false;
        };
        let nodes = &mut groups[g].nodes;
        let Some(n) = nodes.iter().position(|n| *n == node) else {
            return false;
        };
        nodes.swap_remove(n);
        if nodes.is_empty() {
            groups.swap_remove(g);
        }
        if groups.is_empty() {
            self.shared.remove(&at);
            self.levels[at as usize].flags &= !HAS_SHARED;
        }
        true
    }

    fn filter_of(&self, mut at: u32) -> String {
        let mut names = Vec::new();
        while at != ROOT {
            names.push(name_of(&self.levels, &self.names, at));
            at = self.levels[at as usize].parent;
        }
        names.reverse();
        names.join("/")
    }

    fn walk<'a>(
        &'a self,
        at: u32,
        rest: Option<&str>,
        first: bool,
        dollar: bool,
        found: &mut Found<'a, '_>,
    ) {
        // Wildcards at the first level never match `$` topics.
        let wildcards = if first && dollar {
            0
        } else {
            self.levels[at as usize].flags
        };
        if wildcards & HAS_HASH != 0
            && let Some(hash) = self.child(at, "#")
        {
            self.collect(hash, found);
        }
        let Some(rest) = rest else {
            self.collect(at, found);
            return;
        };
        let (name, next) = match rest.split_once('/') {
            Some((name, next)) => (name, Some(next)),
            None => (rest, None),
        };
        if let Some(child) = self.child(at, name) {
            self.walk(child, next, false, dollar, found);
        }
        if wildcards & HAS_PLUS != 0
            && let Some(plus) = self.child(at, "+")
        {
            self.walk(plus, next, false, dollar, found);
        }
    }

    fn collect<'a>(&'a self, at: u32, found: &mut Found<'a, '_>) {
        found.mask |= self.levels[at as usize].nodes;
        if let Some(slots) = self.wide.get(&at) {
            found.wide.extend_from_slice(slots);
        }
        for route in self.groups_of(at).unwrap_or_default() {
            let turn = route.cursor.fetch_add(1, Ordering::Relaxed);
            if let Some(node) = route.nodes.get(turn % route.nodes.len().max(1)) {
                found.shared.push(SharedPick {
                    group: &route.group,
                    filter: &route.filter,
                    node: *node,
                });
            }
        }
    }
}

/// What a walk has found so far.
struct Found<'a, 'b> {
    mask: u64,
    wide: Vec<usize>,
    shared: &'b mut Vec<SharedPick<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes_for(table: &RouteTable, topic: &str) -> Vec<NodeId> {
        let mut direct = Vec::new();
        let mut shared = Vec::new();
        table.matches(topic, &mut direct, &mut shared);
        direct.extend(shared.iter().map(|p| p.node));
        direct.sort_unstable();
        direct.dedup();
        direct
    }

    #[test]
    fn wildcards_match_per_spec() {
        let mut t = RouteTable::default();
        t.replace(1, ["a/b"]);
        t.replace(2, ["a/+"]);
        t.replace(3, ["a/#"]);
        t.replace(4, ["#"]);
        t.replace(5, ["+/+/c"]);
        t.replace(6, ["$aws/things/+/shadow/#"]);
        t.replace(7, ["/lead", "+/things/#"]);
        assert_eq!(nodes_for(&t, "a/b"), [1, 2, 3, 4]);
        assert_eq!(nodes_for(&t, "a"), [3, 4]);
        assert_eq!(nodes_for(&t, "a/x/c"), [3, 4, 5]);
        assert_eq!(nodes_for(&t, "/lead"), [4, 7]);
        assert_eq!(nodes_for(&t, "$SYS/x"), Vec::<NodeId>::new());
        assert_eq!(nodes_for(&t, "$aws/things/t1/shadow/update"), [6]);
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn a_snapshot_replaces_a_nodes_routes_and_only_its_own_stream_may_change_or_end_them() {
        let mut t = RouteTable::default();
        let old = t.replace(2, ["a/+", "b"]);
        t.replace(3, ["a/#"]);
        assert_eq!(nodes_for(&t, "a/x"), [2, 3]);
        t.add(2, old, "c");
        t.remove(2, old, "b");
        assert_eq!(nodes_for(&t, "c"), [2]);
        assert!(nodes_for(&t, "b").is_empty());
        // Node 2 restarts: its new snapshot replaces the old one, and the old stream's late
        // changes and end touch nothing.
        let new = t.replace(2, ["d"]);
        t.add(2, old, "e");
        t.end(2, old);
        assert_eq!(nodes_for(&t, "d"), [2]);
        assert!(nodes_for(&t, "e").is_empty());
        assert!(nodes_for(&t, "c").is_empty());
        t.end(2, new);
        assert!(nodes_for(&t, "d").is_empty());
        assert_eq!(nodes_for(&t, "a/x"), [3]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.nodes().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn routes_are_counted_once_and_what_nothing_holds_is_freed() {
        let mut t = RouteTable::default();
        let g = t.replace(1, ["a/b/c", "a/b/c", "a/+", "$share/g/a/+"]);
        assert_eq!(t.len(), 3);
        t.remove(1, g, "a/b/c");
        t.remove(1, g, "a/b/c");
        t.remove(1, g, "a/+");
        t.remove(1, g, "$share/g/a/+");
        t.remove(1, g, "never/held");
        assert!(t.is_empty());
        assert_eq!(t.levels.len() - 1, t.free.len());
        assert_eq!(t.edges.len(), 0);
        assert_eq!(t.levels[ROOT as usize].children, 0);
        assert_eq!(t.levels[ROOT as usize].flags, 0);
        assert!(t.shared.is_empty());
        // Freed levels are reused.
        t.add(1, g, "x/y/z");
        assert_eq!(t.levels.len(), 5);
        assert_eq!(nodes_for(&t, "x/y/z"), [1]);
    }

    #[test]
    fn a_new_snapshot_keeps_the_levels_it_still_uses_and_frees_the_rest() {
        let mut t = RouteTable::default();
        t.replace(1, ["a/b", "a/c", "d/e"]);
        t.replace(2, ["a/b"]);
        let levels = t.levels.len();
        let g = t.replace(1, ["a/b", "a/c"]);
        assert_eq!(t.levels.len(), levels);
        assert_eq!(t.free.len(), 2);
        assert!(nodes_for(&t, "d/e").is_empty());
        assert_eq!(nodes_for(&t, "a/b"), [1, 2]);
        assert_eq!(t.len(), 3);
        t.remove(1, g, "a/c");
        assert!(nodes_for(&t, "a/c").is_empty());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_share_group_picks_its_nodes_in_turn() {
        let mut t = RouteTable::default();
        t.replace(1, ["$share/g/s/+"]);
        t.replace(2, ["$share/g/s/+", "$share/h/s/+"]);
        let mut picked = Vec::new();
        for _ in 0..4 {
            let mut direct = Vec::new();
            let mut shared = Vec::new();
            t.matches("s/x", &mut direct, &mut shared);
            assert!(direct.is_empty());
            assert_eq!(shared.len(), 2);
            let g = shared.iter().find(|p| p.group == "g").map(|p| p.node);
            picked.extend(g);
            assert!(shared.contains(&SharedPick {
                group: "h",
                filter: "s/+",
                node: 2
            }));
        }
        assert!(picked.contains(&1) && picked.contains(&2));
        assert!(t.has_share_group("s/+", "g"));
        t.drop_node(2);
        assert!(!t.has_share_group("s/+", "h"));
        assert_eq!(nodes_for(&t, "s/x"), [1]);
        t.drop_node(1);
        assert!(!t.has_share_group("s/+", "g"));
        assert_eq!(t.edges.len(), 0);
    }

    #[test]
    fn a_node_past_the_mask_is_routed_like_the_others() {
        let mut t = RouteTable::default();
        for node in 0..70 {
            t.replace(node, ["all/#", &format!("only/{node}")]);
        }
        assert_eq!(nodes_for(&t, "all/x"), (0..70).collect::<Vec<_>>());
        assert_eq!(nodes_for(&t, "only/69"), [69]);
        t.drop_node(69);
        assert!(nodes_for(&t, "only/69").is_empty());
        assert_eq!(nodes_for(&t, "all/x").len(), 69);
        assert_eq!(t.len(), 138);
    }

    #[test]
    fn a_nodes_routes_are_listed_as_announced() {
        let mut t = RouteTable::default();
        t.replace(1, ["a/+/c", "/lead", "#", "$share/g/s/#"]);
        t.replace(2, ["a/+/c"]);
        let listed: Vec<String> = t.routes_of(1).unwrap_or_default().into_iter().collect();
        assert_eq!(listed, ["#", "$share/g/s/#", "/lead", "a/+/c"]);
        assert!(t.routes_of(3).is_none());
    }

    #[test]
    fn freed_names_are_packed_away() {
        let mut t = RouteTable::default();
        let g = t.replace(1, ["keep/this"]);
        for round in 0..3 {
            let keys: Vec<String> = (0..40_000).map(|i| format!("r{round}/{i:030}")).collect();
            for key in &keys {
                t.add(1, g, key);
            }
            for key in &keys {
                t.remove(1, g, key);
            }
        }
        assert!(t.names.bytes < 2 * GARBAGE_SLACK);
        assert_eq!(nodes_for(&t, "keep/this"), [1]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_copy_of_a_nodes_routes_has_the_digest_the_node_computes_until_a_change_is_missed() {
        use super::super::control::LocalRoutes;
        let mut local = LocalRoutes::default();
        for key in ["a/+", "$share/g/b/#", "c", "d"] {
            local.subscribed(key);
        }
        local.subscribed("c");
        let mut table = RouteTable::default();
        let generation = table.replace(2, local.counts.keys());
        assert_eq!(table.digest(2, generation), Some(local.digest));
        local.unsubscribed("d");
        table.remove(2, generation, "d");
        local.unsubscribed("c");
        local.subscribed("e");
        table.add(2, generation, "e");
        assert_eq!(local.digest.count, 4);
        assert_eq!(table.digest(2, generation), Some(local.digest));
        // The last "c" left and the peer was not told: the digests differ.
        local.unsubscribed("c");
        assert_ne!(table.digest(2, generation), Some(local.digest));
        // An announcement that is not current has no digest to compare.
        assert_eq!(table.digest(2, generation + 1), None);
    }
}
