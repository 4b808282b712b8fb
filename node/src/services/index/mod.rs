//! Fleet indexing: the thing index (`AWS_Things`: registry, groups, shadows, connectivity)
//! and the thing group index (`AWS_ThingGroups`) that SearchIndex and the aggregations query.
//!
//! Every node keeps both in memory ([`inverted`]), built from its applied copy of the store
//! and kept current by the store's watch (`follow.rs`): a write anywhere in the cluster is
//! searchable on every node once that node has applied it and its follower has read it back,
//! which `halyard_index_lag_seconds` measures. Nothing is written for the index itself but its
//! configuration (`index/config`) and the connectivity of things (`connectivity.rs`), so a
//! node that restarts, or whose watch fell behind the store's compaction, builds its indexes
//! again from the store while it serves the previous ones.

pub mod aggregate;
pub mod config;
pub mod connectivity;
pub mod documents;
mod follow;
pub mod inverted;
mod postings;
pub mod query;

use std::sync::Arc;

use halyard_raft::Store;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use self::config::{GroupIndexing, IndexingConfiguration, ThingIndexing};
use self::documents::Connectivity;
use self::inverted::InvertedIndex;
use super::Service;
use super::error::{Error, Result};
use super::records::{Page, Records};
use super::registry::groups::ThingGroupRecord;
use super::registry::things::ThingRecord;
use super::shadow::document::ShadowDocument;
use crate::metrics::IndexMetrics;
use crate::store::keys;
use crate::supervisor::Supervisor;

/// The thing index's name.
pub const THINGS: &str = "AWS_Things";
/// The thing group index's name.
pub const THING_GROUPS: &str = "AWS_ThingGroups";
/// SearchIndex's page size when none is asked for, and the largest AWS allows.
const DEFAULT_RESULTS: usize = 10;
const MAX_RESULTS: usize = 500;
/// Buckets a terms aggregation returns when none is asked for, and at most.
const DEFAULT_BUCKETS: usize = 10;
const MAX_BUCKETS: usize = 10_000;
/// GetPercentiles' percents when none are asked for.
const DEFAULT_PERCENTS: [f64; 7] = [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Building,
    Rebuilding,
    Active,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Building => "BUILDING",
            Status::Rebuilding => "REBUILDING",
            Status::Active => "ACTIVE",
        }
    }
}

/// The indexes this node serves, and the configuration they were built for.
#[derive(Default)]
pub(crate) struct Indexes {
    pub(crate) built_for: IndexingConfiguration,
    pub(crate) things: Option<InvertedIndex>,
    pub(crate) groups: Option<InvertedIndex>,
    /// A build under way: the configuration it is for.
    pub(crate) building: Option<IndexingConfiguration>,
}

/// The fleet index of this node.
#[derive(Clone)]
pub struct FleetIndex {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: crate::broker::Broker,
    records: Records,
    indexes: RwLock<Indexes>,
    metrics: IndexMetrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A page of SearchIndex's answer.
pub struct SearchPage {
    pub things: Vec<Value>,
    pub thing_groups: Vec<Value>,
    pub next_token: Option<String>,
}

/// Which aggregation to make.
pub enum Aggregation {
    Statistics,
    Cardinality,
    Percentiles(Vec<f64>),
    Buckets(Option<usize>),
}

fn local<T: DeserializeOwned>(store: &Store, key: &str) -> Option<T> {
    let kv = store.get_local(key.as_bytes()).ok()?.kv?;
    serde_json::from_slice(&kv.value).ok()
}

impl FleetIndex {
    pub fn new(
        store: Store,
        broker: crate::broker::Broker,
        metrics: IndexMetrics,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                records: Records::new(store.clone()),
                store,
                broker,
                indexes: RwLock::new(Indexes::default()),
                metrics,
                shutdown,
            }),
        }
    }

    /// The configuration as stored (linearizable).
    pub async fn configuration(&self) -> Result<IndexingConfiguration> {
        Ok(self
            .inner
            .records
            .get::<IndexingConfiguration>(keys::INDEXING_CONFIG)
            .await?
            .map(|v| v.value)
            .unwrap_or_default())
    }

    /// UpdateIndexingConfiguration: the parts given replace theirs.
    pub async fn update_configuration(
        &self,
        thing: Option<ThingIndexing>,
        group: Option<GroupIndexing>,
    ) -> Result<()> {
        for _ in 0..8 {
            let current = self
                .inner
                .records
                .get::<IndexingConfiguration>(keys::INDEXING_CONFIG)
                .await?;
            let (mut config, revision) = match current {
                Some(v) => (v.value, Some(v.mod_revision)),
                None => (IndexingConfiguration::default(), None),
            };
            if let Some(thing) = thing.clone() {
                config.thing = thing;
            }
            if let Some(group) = group.clone() {
                config.group = group;
            }
            let done = match revision {
                Some(revision) => {
                    self.inner
                        .records
                        .replace(keys::INDEXING_CONFIG, &config, revision)
                        .await?
                }
                None => {
                    self.inner
                        .records
                        .create(keys::INDEXING_CONFIG, &config)
                        .await?
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(Error::Conflict(
            "The indexing configuration changed meanwhile; try again".to_owned(),
        ))
    }

    /// ListIndices: the indexes the configuration turns on.
    pub async fn list_indices(&self) -> Result<Vec<&'static str>> {
        let config = self.configuration().await?;
        let mut names = Vec::new();
        if config.thing.on() {
            names.push(THINGS);
        }
        if config.group.on {
            names.push(THING_GROUPS);
        }
        Ok(names)
    }

    /// DescribeIndex: the index's status on this node and its schema.
    pub async fn describe_index(&self, name: &str) -> Result<(Status, &'static str)> {
        let config = self.configuration().await?;
        let indexes = self.inner.indexes.read();
        let building = indexes.building.as_ref();
        match name {
            THINGS if config.thing.on() => {
                let status = match (&indexes.things, building) {
                    (None, _) => Status::Building,
                    (Some(_), Some(b)) if b.thing != indexes.built_for.thing => Status::Rebuilding,
                    (Some(_), _) if indexes.built_for.thing != config.thing => Status::Rebuilding,
                    (Some(_), _) => Status::Active,
                };
                Ok((status, config.thing.schema()))
            }
            THING_GROUPS if config.group.on => {
                let status = match (&indexes.groups, building) {
                    (None, _) => Status::Building,
                    (Some(_), Some(b)) if b.group != indexes.built_for.group => Status::Rebuilding,
                    (Some(_), _) if indexes.built_for.group != config.group => Status::Rebuilding,
                    (Some(_), _) => Status::Active,
                };
                Ok((status, "THING_GROUPS"))
            }
            _ => Err(Error::not_found(format!("Index {name} does not exist"))),
        }
    }

    /// Runs `with` over the named index, if this node has it built.
    fn with_index<T>(
        &self,
        name: &str,
        with: impl FnOnce(&InvertedIndex, &Indexes) -> Result<T>,
    ) -> Result<T> {
        let indexes = self.inner.indexes.read();
        let (index, on, building) = match name {
            THINGS => (
                indexes.things.as_ref(),
                indexes.built_for.thing.on(),
                indexes.building.as_ref().is_some_and(|b| b.thing.on()),
            ),
            THING_GROUPS => (
                indexes.groups.as_ref(),
                indexes.built_for.group.on,
                indexes.building.as_ref().is_some_and(|b| b.group.on),
            ),
            _ => return Err(Error::not_found(format!("Index {name} does not exist"))),
        };
        match index {
            Some(index) if on => with(index, &indexes),
            _ if building => Err(Error::IndexNotReady(format!(
                "Index {name} is being built; try again shortly"
            ))),
            _ => Err(Error::not_found(format!("Index {name} does not exist"))),
        }
    }

    fn parse(query: &str) -> Result<query::Query> {
        query::parse(query).map_err(|e| Error::InvalidQuery(e.to_string()))
    }

    /// SearchIndex.
    pub async fn search(
        &self,
        index: Option<&str>,
        query: &str,
        next_token: Option<&str>,
        max_results: Option<usize>,
    ) -> Result<SearchPage> {
        let started = std::time::Instant::now();
        let name = index.unwrap_or(THINGS);
        let limit = match max_results {
            None => DEFAULT_RESULTS,
            Some(n) if (1..=MAX_RESULTS).contains(&n) => n,
            Some(n) => {
                return Err(Error::validation(
                    "maxResults",
                    &n.to_string(),
                    &format!("Member must have value between 1 and {MAX_RESULTS}"),
                ));
            }
        };
        let page = Page::after_token(limit, next_token)?;
        let parsed = Self::parse(query)?;
        let (names, more, built_for) = self.with_index(name, |index, indexes| {
            let matches = index.matches(&parsed);
            let found = index.page(&matches, page.after(), limit);
            Ok((found.names, found.more, indexes.built_for.clone()))
        })?;
        let next_token = match (more, names.last()) {
            (true, Some(last)) => Some(Page::token_for(last)),
            _ => None,
        };
        let mut out = SearchPage {
            things: Vec::new(),
            thing_groups: Vec::new(),
            next_token,
        };
        for found in &names {
            if name == THINGS {
                if let Some(thing) = self.thing_document(found, &built_for.thing).await {
                    out.things.push(thing);
                }
            } else if let Some(group) = self.group_document(found) {
                out.thing_groups.push(group);
            }
        }
        self.inner.metrics.observe_query("SearchIndex", started);
        Ok(out)
    }

    /// A thing as SearchIndex answers it, read from this node's store.
    async fn thing_document(&self, name: &str, config: &ThingIndexing) -> Option<Value> {
        let store = &self.inner.store;
        let thing: ThingRecord = local(store, &keys::thing(name))?;
        let mut out = Map::new();
        out.insert("thingName".into(), json!(thing.thing_name));
        out.insert("thingId".into(), json!(thing.thing_id));
        if let Some(t) = &thing.thing_type_name {
            out.insert("thingTypeName".into(), json!(t));
        }
        let groups = follow::groups_of(store, name).await;
        if !groups.is_empty() {
            out.insert("thingGroupNames".into(), json!(groups));
        }
        out.insert("attributes".into(), json!(thing.attributes));
        if config.shadows() {
            let classic: Option<ShadowDocument> = local(store, &keys::shadow(name, None));
            let named: Vec<(String, ShadowDocument)> = config
                .filter
                .named_shadow_names
                .iter()
                .filter(|n| config.indexes_named_shadow(n))
                .filter_map(|n| Some((n.clone(), local(store, &keys::shadow(name, Some(n)))?)))
                .collect();
            if let Some(shadow) = documents::shadow_json(classic.as_ref(), &named) {
                out.insert("shadow".into(), json!(shadow));
            }
        }
        if config.connectivity_status {
            let connectivity: Option<Connectivity> = local(store, &keys::connectivity(name));
            out.insert(
                "connectivity".into(),
                connectivity.map_or_else(|| json!({"connected": false}), |c| c.to_json()),
            );
        }
        Some(Value::Object(out))
    }

    fn group_document(&self, name: &str) -> Option<Value> {
        let group: ThingGroupRecord = local(&self.inner.store, &keys::thing_group(name))?;
        let mut out = Map::new();
        out.insert("thingGroupName".into(), json!(group.name));
        out.insert("thingGroupId".into(), json!(group.id));
        if let Some(d) = &group.description {
            out.insert("thingGroupDescription".into(), json!(d));
        }
        out.insert("attributes".into(), json!(group.attributes));
        if !group.root_to_parent.is_empty() {
            out.insert("parentGroupNames".into(), json!(group.root_to_parent));
        }
        Some(Value::Object(out))
    }

    /// GetStatistics, GetCardinality, GetPercentiles and GetBucketsAggregation.
    pub async fn aggregate(
        &self,
        index: Option<&str>,
        query: &str,
        field: Option<&str>,
        aggregation: Aggregation,
    ) -> Result<Value> {
        let started = std::time::Instant::now();
        let name = index.unwrap_or(THINGS);
        let default_field = if name == THING_GROUPS {
            "thingGroupName"
        } else {
            "thingName"
        };
        let field = field.unwrap_or(default_field);
        let parsed = Self::parse(query)?;
        let operation = match &aggregation {
            Aggregation::Statistics => "GetStatistics",
            Aggregation::Cardinality => "GetCardinality",
            Aggregation::Percentiles(_) => "GetPercentiles",
            Aggregation::Buckets(_) => "GetBucketsAggregation",
        };
        let answer = self.with_index(name, |index, _| {
            let matches = index.matches(&parsed);
            let field_index = index.field(field);
            let numeric = field_index.is_some_and(|f| !f.numbers.is_empty());
            Ok(match &aggregation {
                Aggregation::Statistics => {
                    json!({ "statistics": aggregate::statistics(field_index, &matches).to_json() })
                }
                Aggregation::Cardinality => {
                    json!({ "cardinality": aggregate::cardinality(field_index, &matches) })
                }
                Aggregation::Percentiles(percents) => {
                    if field_index.is_some() && !numeric {
                        return Err(Error::InvalidAggregation(format!(
                            "Field {field} holds no numbers; percentiles need a numeric field"
                        )));
                    }
                    let percents: &[f64] = if percents.is_empty() {
                        &DEFAULT_PERCENTS
                    } else {
                        percents
                    };
                    let pairs: Vec<Value> = aggregate::percentiles(field_index, &matches, percents)
                        .into_iter()
                        .map(|(percent, value)| json!({ "percent": percent, "value": value }))
                        .collect();
                    json!({ "percentiles": pairs })
                }
                Aggregation::Buckets(max) => {
                    let limit = max.unwrap_or(DEFAULT_BUCKETS);
                    if !(1..=MAX_BUCKETS).contains(&limit) {
                        return Err(Error::validation(
                            "bucketsAggregationType.termsAggregation.maxBuckets",
                            &limit.to_string(),
                            &format!("Member must have value between 1 and {MAX_BUCKETS}"),
                        ));
                    }
                    let buckets: Vec<Value> = aggregate::buckets(field_index, &matches, limit)
                        .into_iter()
                        .map(|(key, count)| json!({ "keyValue": key, "count": count }))
                        .collect();
                    json!({ "totalCount": matches.len(), "buckets": buckets })
                }
            })
        })?;
        self.inner.metrics.observe_query(operation, started);
        Ok(answer)
    }

    /// GetThingConnectivityData: the thing's connectivity as its node last recorded it.
    pub async fn connectivity(&self, thing: &str) -> Result<Option<Connectivity>> {
        if !self.inner.records.exists(&keys::thing(thing)).await? {
            return Err(Error::not_found(format!("Thing {thing} cannot be found.")));
        }
        Ok(self
            .inner
            .records
            .get::<Connectivity>(&keys::connectivity(thing))
            .await?
            .map(|v| v.value))
    }

    /// Whether connectivity indexing is on, as this node last read the configuration.
    pub fn indexes_connectivity(&self) -> bool {
        let indexes = self.inner.indexes.read();
        indexes.built_for.thing.connectivity_status
            || indexes
                .building
                .as_ref()
                .is_some_and(|b| b.thing.connectivity_status)
    }

    /// Whether the thing index holds this thing (connectivity is recorded for things only).
    pub fn has_thing(&self, name: &str) -> bool {
        self.inner
            .indexes
            .read()
            .things
            .as_ref()
            .is_some_and(|t| t.contains(name))
    }
}

impl Service for FleetIndex {
    fn name(&self) -> &'static str {
        "fleet-index"
    }

    fn start(self: Arc<Self>, tasks: &mut Supervisor) {
        let follower = follow::Follower::from(Arc::clone(&self.inner));
        tasks.spawn_critical("index:follow", follower.run());
        let recorder = connectivity::ConnectivityRecorder::new(
            self.inner.store.clone(),
            self.as_ref().clone(),
        );
        self.inner.broker.observe_presence(
            Arc::downgrade(&recorder) as std::sync::Weak<dyn crate::broker::PresenceObserver>
        );
        tasks.spawn_critical("index:connectivity", recorder.run());
    }
}
