//! Keeps this node's indexes current: builds them from the store, then follows the store's
//! watch. A change marks what it touched (a thing's registry record, its groups, one shadow,
//! its connectivity, a thing group) and the marks are applied by reading that part again from
//! this node's applied state, so that the order and number of changes do not matter and a
//! change seen twice (once by the build, once by the watch) is harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_raft::{Consistency, RangeRequest, RevisionEvents, Store, StoreError};

use super::config::IndexingConfiguration;
use super::documents::{self, Connectivity, Terms};
use super::inverted::{InvertedIndex, Section};
use super::{Inner, local};
use crate::services::registry::groups::ThingGroupRecord;
use crate::services::registry::things::ThingRecord;
use crate::services::shadow::document::ShadowDocument;
use crate::store::keys::{self, Key};

/// Marks gathered before they are applied even while changes keep coming.
const APPLY_EVERY: usize = 1024;
/// Records read per range while building.
const SCAN_BATCH: usize = 1000;

/// A part of a document to read again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Mark {
    Thing(String),
    Groups(String),
    Shadow(String, Option<String>),
    Connectivity(String),
    Group(String),
}

enum Update {
    Remove(String),
    Section(String, Section, Terms),
    RemoveGroup(String),
    Group(String, Terms),
}

enum Ended {
    Shutdown,
    Rebuild,
}

pub(super) struct Follower {
    store: Store,
    inner: Arc<Inner>,
}

impl From<Arc<Inner>> for Follower {
    fn from(inner: Arc<Inner>) -> Self {
        Self {
            store: inner.store.clone(),
            inner,
        }
    }
}

/// The groups a thing is a member of, as this node has applied them (at most 10 static ones,
/// and its dynamic ones).
pub(super) async fn groups_of(store: &Store, thing: &str) -> Vec<String> {
    let prefix = keys::groups_of_thing(thing);
    let Ok(found) = store
        .range(
            RangeRequest {
                prefix: prefix.as_bytes().to_vec(),
                start_after: None,
                limit: SCAN_BATCH,
            },
            Consistency::Local,
        )
        .await
    else {
        return Vec::new();
    };
    found
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(&kv.key).ok()?;
            Some(key.strip_prefix(prefix.as_str())?.to_owned())
        })
        .collect()
}

impl Follower {
    pub(super) async fn run(self) {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            match self.round().await {
                Ok(Ended::Shutdown) | Err(StoreError::Shutdown) => return,
                Ok(Ended::Rebuild) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet index lost the store's changes; building it again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Builds the indexes the stored configuration asks for, then follows the changes until
    /// the configuration changes or the watch breaks.
    async fn round(&self) -> Result<Ended, StoreError> {
        let from = self.store.revision() + 1;
        // Watching from before the build: whatever changes while it reads is read again.
        let mut registry = self.store.watch(keys::REGISTRY, Some(from))?;
        let mut shadows = self.store.watch(keys::SHADOW, Some(from))?;
        let mut connectivity = self.store.watch(keys::CONNECTIVITY, Some(from))?;
        let mut configuration = self.store.watch(keys::INDEXING_CONFIG, Some(from))?;
        let config: IndexingConfiguration =
            local(&self.store, keys::INDEXING_CONFIG).unwrap_or_default();
        self.inner.indexes.write().building = Some(config.clone());
        let started = Instant::now();
        let things = match config.thing.on() {
            true => Some(self.build_things(&config).await?),
            false => None,
        };
        let groups = match config.group.on {
            true => Some(self.build_groups(&config).await?),
            false => None,
        };
        let metrics = &self.inner.metrics;
        if config.thing.on() || config.group.on {
            metrics.build_seconds.set(started.elapsed().as_secs_f64());
            metrics.builds.inc();
        }
        {
            let mut indexes = self.inner.indexes.write();
            indexes.things = things;
            indexes.groups = groups;
            indexes.built_for = config.clone();
            indexes.building = None;
            self.count(&indexes);
        }
        tracing::info!(
            things = config.thing.on(),
            groups = config.group.on,
            seconds = started.elapsed().as_secs_f64(),
            "fleet index built"
        );
        let mut marks: HashMap<Mark, Instant> = HashMap::new();
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(Ended::Shutdown),
                next = configuration.next() => {
                    next_or_end(next)?;
                    let now: IndexingConfiguration =
                        local(&self.store, keys::INDEXING_CONFIG).unwrap_or_default();
                    if now != config {
                        self.apply(&mut marks, &config).await;
                        return Ok(Ended::Rebuild);
                    }
                }
                next = registry.next() => mark(next_or_end(next)?, &config, &mut marks),
                next = shadows.next() => mark(next_or_end(next)?, &config, &mut marks),
                next = connectivity.next() => mark(next_or_end(next)?, &config, &mut marks),
                () = std::future::ready(()), if !marks.is_empty() => {
                    self.apply(&mut marks, &config).await;
                }
            }
            if marks.len() >= APPLY_EVERY {
                self.apply(&mut marks, &config).await;
            }
        }
    }

    fn count(&self, indexes: &super::Indexes) {
        let metrics = &self.inner.metrics;
        metrics
            .documents
            .with_label_values(&[super::THINGS])
            .set(indexes.things.as_ref().map_or(0, InvertedIndex::len) as i64);
        metrics
            .documents
            .with_label_values(&[super::THING_GROUPS])
            .set(indexes.groups.as_ref().map_or(0, InvertedIndex::len) as i64);
    }

    /// Every record under `prefix`, in key order, from this node's applied state.
    async fn scan(
        &self,
        prefix: &str,
        mut each: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let found = self
                .store
                .range(
                    RangeRequest {
                        prefix: prefix.as_bytes().to_vec(),
                        start_after: after.take(),
                        limit: SCAN_BATCH,
                    },
                    Consistency::Local,
                )
                .await?;
            for kv in &found.kvs {
                if let Ok(key) = std::str::from_utf8(&kv.key) {
                    each(key, &kv.value);
                }
            }
            after = found.kvs.last().map(|kv| kv.key.clone());
            if !found.more || after.is_none() {
                return Ok(());
            }
            // A build of a large fleet must not hold a worker thread for its whole length.
            tokio::task::yield_now().await;
        }
    }

    async fn build_things(
        &self,
        config: &IndexingConfiguration,
    ) -> Result<InvertedIndex, StoreError> {
        let thing_config = &config.thing;
        let types = thing_config.field_types();
        let mut index = InvertedIndex::default();
        self.scan(keys::THINGS, |_, value| {
            if let Ok(thing) = serde_json::from_slice::<ThingRecord>(value) {
                index.set_section(
                    &thing.thing_name,
                    Section::Registry,
                    documents::registry_terms(&thing, &types),
                );
                if thing_config.connectivity_status {
                    index.set_section(
                        &thing.thing_name,
                        Section::Connectivity,
                        documents::connectivity_terms(None),
                    );
                }
            }
        })
        .await?;
        // A thing's memberships are contiguous keys: gathered, then set at once.
        let mut current: Option<(String, Vec<String>)> = None;
        self.scan(keys::GROUPS_OF_THING, |key, _| {
            if let Some(Key::GroupOfThing { thing, group }) = Key::parse(key) {
                match &mut current {
                    Some((of, groups)) if of == thing => groups.push(group.to_owned()),
                    _ => {
                        if let Some((of, groups)) = current.take() {
                            index.set_section(
                                &of,
                                Section::Groups,
                                documents::group_terms(&groups),
                            );
                        }
                        current = Some((thing.to_owned(), vec![group.to_owned()]));
                    }
                }
            }
        })
        .await?;
        if let Some((of, groups)) = current.take() {
            index.set_section(&of, Section::Groups, documents::group_terms(&groups));
        }
        if thing_config.shadows() {
            self.scan(keys::SHADOW, |key, value| {
                if let Some(Key::Shadow { thing, shadow }) = Key::parse(key)
                    && shadow.is_none_or(|n| thing_config.indexes_named_shadow(n))
                    && let Ok(document) = serde_json::from_slice::<ShadowDocument>(value)
                {
                    index.set_section(
                        thing,
                        Section::Shadow(shadow.map(Into::into)),
                        documents::shadow_terms(shadow, &document, &types),
                    );
                }
            })
            .await?;
        }
        if thing_config.connectivity_status {
            self.scan(keys::CONNECTIVITY, |key, value| {
                if let Some(thing) = key.strip_prefix(keys::CONNECTIVITY)
                    && let Ok(c) = serde_json::from_slice::<Connectivity>(value)
                {
                    index.set_section(
                        thing,
                        Section::Connectivity,
                        documents::connectivity_terms(Some(&c)),
                    );
                }
            })
            .await?;
        }
        Ok(index)
    }

    async fn build_groups(
        &self,
        config: &IndexingConfiguration,
    ) -> Result<InvertedIndex, StoreError> {
        let types = config.group.field_types();
        let mut index = InvertedIndex::default();
        self.scan(keys::THING_GROUPS, |_, value| {
            if let Ok(group) = serde_json::from_slice::<ThingGroupRecord>(value) {
                index.set_section(
                    &group.name,
                    Section::Registry,
                    documents::thing_group_terms(&group, &types),
                );
            }
        })
        .await?;
        Ok(index)
    }

    /// A thing's sections other than its registry record, for a thing new to the index.
    async fn other_sections(
        &self,
        thing: &str,
        config: &IndexingConfiguration,
    ) -> Vec<(Section, Terms)> {
        let types = config.thing.field_types();
        let mut sections = vec![(
            Section::Groups,
            documents::group_terms(&groups_of(&self.store, thing).await),
        )];
        if config.thing.shadows() {
            if let Some(shadow) = local::<ShadowDocument>(&self.store, &keys::shadow(thing, None)) {
                sections.push((
                    Section::Shadow(None),
                    documents::shadow_terms(None, &shadow, &types),
                ));
            }
            for name in &config.thing.filter.named_shadow_names {
                if config.thing.indexes_named_shadow(name)
                    && let Some(shadow) =
                        local::<ShadowDocument>(&self.store, &keys::shadow(thing, Some(name)))
                {
                    sections.push((
                        Section::Shadow(Some(name.as_str().into())),
                        documents::shadow_terms(Some(name), &shadow, &types),
                    ));
                }
            }
        }
        if config.thing.connectivity_status {
            let c: Option<Connectivity> = local(&self.store, &keys::connectivity(thing));
            sections.push((
                Section::Connectivity,
                documents::connectivity_terms(c.as_ref()),
            ));
        }
        sections
    }

    /// Reads again what the marks name and applies it to the indexes.
    async fn apply(&self, marks: &mut HashMap<Mark, Instant>, config: &IndexingConfiguration) {
        if marks.is_empty() {
            return;
        }
        let types = config.thing.field_types();
        let group_types = config.group.field_types();
        let mut updates = Vec::with_capacity(marks.len());
        for mark in marks.keys() {
            match mark {
                Mark::Thing(name) => match local::<ThingRecord>(&self.store, &keys::thing(name)) {
                    None => updates.push(Update::Remove(name.clone())),
                    Some(thing) => {
                        let known = self
                            .inner
                            .indexes
                            .read()
                            .things
                            .as_ref()
                            .is_some_and(|t| t.contains(name));
                        updates.push(Update::Section(
                            name.clone(),
                            Section::Registry,
                            documents::registry_terms(&thing, &types),
                        ));
                        if !known {
                            for (section, terms) in self.other_sections(name, config).await {
                                updates.push(Update::Section(name.clone(), section, terms));
                            }
                        }
                    }
                },
                Mark::Groups(name) => updates.push(Update::Section(
                    name.clone(),
                    Section::Groups,
                    documents::group_terms(&groups_of(&self.store, name).await),
                )),
                Mark::Shadow(name, shadow) => {
                    let document: Option<ShadowDocument> =
                        local(&self.store, &keys::shadow(name, shadow.as_deref()));
                    updates.push(Update::Section(
                        name.clone(),
                        Section::Shadow(shadow.as_deref().map(Into::into)),
                        document.map_or_else(Vec::new, |d| {
                            documents::shadow_terms(shadow.as_deref(), &d, &types)
                        }),
                    ));
                }
                Mark::Connectivity(name) => {
                    let c: Option<Connectivity> = local(&self.store, &keys::connectivity(name));
                    updates.push(Update::Section(
                        name.clone(),
                        Section::Connectivity,
                        documents::connectivity_terms(c.as_ref()),
                    ));
                }
                Mark::Group(name) => {
                    match local::<ThingGroupRecord>(&self.store, &keys::thing_group(name)) {
                        None => updates.push(Update::RemoveGroup(name.clone())),
                        Some(group) => updates.push(Update::Group(
                            name.clone(),
                            documents::thing_group_terms(&group, &group_types),
                        )),
                    }
                }
            }
        }
        {
            let mut indexes = self.inner.indexes.write();
            for update in updates {
                match update {
                    Update::Remove(name) => {
                        if let Some(things) = indexes.things.as_mut() {
                            things.remove(&name);
                        }
                    }
                    Update::Section(name, section, terms) => {
                        if let Some(things) = indexes.things.as_mut() {
                            things.set_section(&name, section, terms);
                        }
                    }
                    Update::RemoveGroup(name) => {
                        if let Some(groups) = indexes.groups.as_mut() {
                            groups.remove(&name);
                        }
                    }
                    Update::Group(name, terms) => {
                        if let Some(groups) = indexes.groups.as_mut() {
                            groups.set_section(&name, Section::Registry, terms);
                        }
                    }
                }
            }
            self.count(&indexes);
        }
        let lag = &self.inner.metrics.lag;
        for (_, seen) in marks.drain() {
            lag.observe(seen.elapsed().as_secs_f64());
        }
        tokio::task::yield_now().await;
    }
}

/// The changes of a watch, or why it ended.
fn next_or_end(
    next: Option<Result<RevisionEvents, StoreError>>,
) -> Result<RevisionEvents, StoreError> {
    match next {
        Some(result) => result,
        None => Err(StoreError::Shutdown),
    }
}

/// Marks what a revision's changes touched, as far as the configuration indexes it.
fn mark(
    changes: RevisionEvents,
    config: &IndexingConfiguration,
    marks: &mut HashMap<Mark, Instant>,
) {
    let now = Instant::now();
    let thing = &config.thing;
    for event in changes.events {
        let Ok(key) = std::str::from_utf8(&event.kv.key) else {
            continue;
        };
        let found = if let Some(name) = key.strip_prefix(keys::CONNECTIVITY) {
            thing
                .connectivity_status
                .then(|| Mark::Connectivity(name.to_owned()))
        } else {
            match Key::parse(key) {
                Some(Key::Thing { name }) if thing.on() => Some(Mark::Thing(name.to_owned())),
                Some(Key::GroupOfThing { thing: name, .. }) if thing.on() => {
                    Some(Mark::Groups(name.to_owned()))
                }
                Some(Key::Shadow {
                    thing: name,
                    shadow,
                }) if thing.shadows() && shadow.is_none_or(|n| thing.indexes_named_shadow(n)) => {
                    Some(Mark::Shadow(name.to_owned(), shadow.map(str::to_owned)))
                }
                Some(Key::ThingGroup { name }) if config.group.on => {
                    Some(Mark::Group(name.to_owned()))
                }
                _ => None,
            }
        };
        if let Some(found) = found {
            marks.entry(found).or_insert(now);
        }
    }
}
