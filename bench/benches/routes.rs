//! The cluster's route table: memory per route, a resync of a million routes, and matching a
//! topic against a million routes. Each figure is taken for `RouteTable` and, side by side,
//! for the broker's own subscription trie holding the same routes with one set of filters per
//! node (how routes were held before `RouteTable`).
//!
//! Memory is counted by the allocator: the bytes held after building the table, less those
//! held before, divided by the routes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{Criterion, criterion_group};
use halyard_node::broker::{Subscriber, SubscriptionTrie, Target};
use halyard_node::cluster::RouteTable;

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROUTES: usize = 1_000_000;
const NODES: u64 = 3;

#[derive(Clone)]
struct Peer(u64);

impl Target for Peer {
    fn target_id(&self) -> u64 {
        self.0
    }
}

/// The broker's trie with each node's filters beside it.
#[derive(Default)]
struct TrieRoutes {
    trie: SubscriptionTrie<Peer>,
    by_node: HashMap<u64, HashSet<String>>,
}

impl TrieRoutes {
    fn add(&mut self, node: u64, filter: String) {
        self.trie.insert(
            &filter,
            None,
            Subscriber {
                target: Peer(node),
                options: Default::default(),
                subscription_id: None,
            },
        );
        self.by_node.entry(node).or_default().insert(filter);
    }
}

fn filters(shape: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| shape.replace("{id}", &format!("sensor-{i:07}")))
        .collect()
}

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

fn route_table(filters: &[String]) -> RouteTable {
    let mut table = RouteTable::default();
    let generations: Vec<u64> = (0..NODES)
        .map(|node| table.replace(node, std::iter::empty::<&str>()))
        .collect();
    for (i, filter) in filters.iter().enumerate() {
        let node = i as u64 % NODES;
        table.add(node, generations[node as usize], filter);
    }
    table
}

fn trie_routes(filters: &[String]) -> TrieRoutes {
    let mut routes = TrieRoutes::default();
    for (i, filter) in filters.iter().enumerate() {
        routes.add(i as u64 % NODES, filter.clone());
    }
    routes
}

fn report_memory() {
    println!("bytes per route, {ROUTES} routes over {NODES} nodes:");
    for shape in [
        "devices/{id}/#",
        "devices/{id}/+/telemetry",
        "devices/{id}/telemetry",
    ] {
        let filters = filters(shape, ROUTES);
        let before = held();
        let table = route_table(&filters);
        let table_bytes = held() - before;
        drop(black_box(table));
        let before = held();
        let trie = trie_routes(&filters);
        let trie_bytes = held() - before;
        drop(black_box(trie));
        println!(
            "  {shape:<28} RouteTable {:>6.1} B   broker trie + sets {:>6.1} B",
            table_bytes as f64 / ROUTES as f64,
            trie_bytes as f64 / ROUTES as f64,
        );
    }
}

/// `filters` as a peer sends them and the receiver decodes them.
fn sent_and_received(filters: &[String]) -> Option<Vec<String>> {
    let bytes = postcard::to_stdvec(filters).ok()?;
    postcard::from_bytes(&bytes).ok()
}

/// A peer's resync: its snapshot (every filter) encoded as sent, decoded as received, and
/// applied: over the same million routes (a peer that reconnects), or into an empty table (a
/// peer met for the first time; the time includes dropping the table).
fn resync(c: &mut Criterion) {
    let filters = filters("devices/{id}/+/telemetry", ROUTES);
    let mut group = c.benchmark_group("routes");
    group.sample_size(10);
    group.bench_function("resync_1m/RouteTable", |b| {
        let mut table = RouteTable::default();
        table.replace(1, &filters);
        b.iter(|| {
            let Some(received) = sent_and_received(&filters) else {
                return;
            };
            table.replace(1, received);
            black_box(table.len());
        })
    });
    group.bench_function("first_snapshot_1m/RouteTable", |b| {
        b.iter(|| {
            let Some(received) = sent_and_received(&filters) else {
                return;
            };
            let mut table = RouteTable::default();
            table.replace(1, received);
            black_box(table.len());
        })
    });
    group.bench_function("first_snapshot_1m/broker_trie", |b| {
        b.iter(|| {
            let Some(received) = sent_and_received(&filters) else {
                return;
            };
            let mut routes = TrieRoutes::default();
            for filter in received {
                routes.add(1, filter);
            }
            black_box(routes.trie.len());
        })
    });
    group.bench_function("resync_1m/broker_trie", |b| {
        let mut routes = TrieRoutes::default();
        for filter in &filters {
            routes.add(1, filter.clone());
        }
        b.iter(|| {
            let Some(received) = sent_and_received(&filters) else {
                return;
            };
            if let Some(old) = routes.by_node.remove(&1) {
                for filter in old {
                    routes.trie.remove(&filter, None, 1);
                }
            }
            for filter in received {
                routes.add(1, filter);
            }
            black_box(routes.trie.len());
        })
    });
    group.finish();
}

/// The forwarding path's lookup: which nodes a topic goes to, among a million routes.
fn matching(c: &mut Criterion) {
    let filters = filters("devices/{id}/+/telemetry", ROUTES);
    let table = route_table(&filters);
    let trie = trie_routes(&filters);
    let topic = "devices/sensor-0500000/floor-2/telemetry";
    let mut group = c.benchmark_group("routes");
    group.bench_function("match_1m/RouteTable", |b| {
        let mut direct = Vec::new();
        let mut shared = Vec::new();
        b.iter(|| {
            direct.clear();
            shared.clear();
            table.matches(black_box(topic), &mut direct, &mut shared);
            black_box(direct.len())
        })
    });
    group.bench_function("match_1m/broker_trie", |b| {
        let mut direct = Vec::new();
        let mut shared = Vec::new();
        b.iter(|| {
            direct.clear();
            shared.clear();
            trie.trie
                .matches_split(black_box(topic), &mut direct, &mut shared);
            black_box(direct.len())
        })
    });
    group.finish();
}

criterion_group!(benches, resync, matching);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
