//! An inverted index of named documents, in memory: for each field, its string terms and its
//! number terms in order (exact values, prefixes, wildcards and ranges are walks of ordered
//! maps) and its booleans, each term holding the set of documents that have it.
//!
//! A document is made of sections (a thing's registry record, its groups, each of its shadows,
//! its connectivity), each replaced whole when what it comes from changes, so that a change of
//! a shadow touches that shadow's terms only.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::postings::Posting;
use super::query::{Literal, Query};

/// A value a field holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
}

impl Term {
    pub fn str(s: &str) -> Self {
        Term::Str(s.into())
    }
}

/// A number ordered totally, `-0` and `0` as one.
#[derive(Debug, Clone, Copy)]
pub struct Num(f64);

impl Num {
    fn new(n: f64) -> Self {
        Num(if n == 0.0 { 0.0 } else { n })
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Num {}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Num {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Which part of a document a set of terms comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Section {
    Registry,
    Groups,
    /// The classic shadow (`None`) or a named one.
    Shadow(Option<Box<str>>),
    Connectivity,
}

#[derive(Default)]
pub struct FieldIndex {
    pub strings: BTreeMap<Box<str>, Posting>,
    pub numbers: BTreeMap<Num, Posting>,
    pub booleans: [Option<Posting>; 2],
    /// The documents with any value in this field.
    pub present: RoaringBitmap,
}

/// A section's terms: field ids and values.
type SectionTerms = Box<[(u32, Term)]>;

struct Document {
    name: Arc<str>,
    sections: Vec<(Section, SectionTerms)>,
}

#[derive(Default)]
pub struct InvertedIndex {
    field_ids: HashMap<Box<str>, u32>,
    fields: Vec<FieldIndex>,
    by_name: BTreeMap<Arc<str>, u32>,
    documents: Vec<Option<Document>>,
    free: Vec<u32>,
    all: RoaringBitmap,
}

/// Where a page of results ends.
pub struct Page {
    pub names: Vec<Arc<str>>,
    pub more: bool,
}

impl InvertedIndex {
    pub fn len(&self) -> u64 {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The field's index, if any document ever had it.
    pub fn field(&self, name: &str) -> Option<&FieldIndex> {
        self.field_ids
            .get(name)
            .and_then(|id| self.fields.get(*id as usize))
    }

    fn field_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.field_ids.get(name) {
            return *id;
        }
        let id = self.fields.len() as u32;
        self.fields.push(FieldIndex::default());
        self.field_ids.insert(name.into(), id);
        id
    }

    /// Adds the document if it is new; its id.
    fn document(&mut self, name: &str) -> u32 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let name: Arc<str> = name.into();
        let document = Document {
            name: Arc::clone(&name),
            sections: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.documents[id as usize] = Some(document);
                id
            }
            None => {
                self.documents.push(Some(document));
                (self.documents.len() - 1) as u32
            }
        };
        self.by_name.insert(name, id);
        self.all.insert(id);
        id
    }

    /// Replaces one section of a document. The registry section creates the document; other
    /// sections of a document that does not exist are dropped (a shadow of no thing is not
    /// indexed).
    pub fn set_section(&mut self, name: &str, section: Section, terms: Vec<(String, Term)>) {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None if section == Section::Registry => self.document(name),
            None => return,
        };
        self.clear_section(id, &section);
        let mut terms: Vec<(u32, Term)> = terms
            .into_iter()
            .map(|(field, term)| (self.field_id(&field), term))
            .collect();
        terms.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| term_order(&a.1, &b.1)));
        terms.dedup();
        if terms.is_empty() {
            return;
        }
        for (field, term) in &terms {
            let index = &mut self.fields[*field as usize];
            index.present.insert(id);
            let posting = match term {
                Term::Str(s) => index.strings.get_mut(s.as_ref()),
                Term::Num(n) => index.numbers.get_mut(&Num::new(*n)),
                Term::Bool(b) => index.booleans[usize::from(*b)].as_mut(),
            };
            match posting {
                Some(posting) => posting.insert(id),
                None => {
                    let posting = Posting::new(id);
                    match term {
                        Term::Str(s) => {
                            index.strings.insert(s.clone(), posting);
                        }
                        Term::Num(n) => {
                            index.numbers.insert(Num::new(*n), posting);
                        }
                        Term::Bool(b) => index.booleans[usize::from(*b)] = Some(posting),
                    }
                }
            }
        }
        if let Some(Some(document)) = self.documents.get_mut(id as usize) {
            document.sections.push((section, terms.into_boxed_slice()));
        }
    }

    /// Removes a section's terms from the postings and the document.
    fn clear_section(&mut self, id: u32, section: &Section) {
        let Some(Some(document)) = self.documents.get_mut(id as usize) else {
            return;
        };
        let Some(at) = document.sections.iter().position(|(s, _)| s == section) else {
            return;
        };
        let (_, terms) = document.sections.swap_remove(at);
        for (field, term) in terms.iter() {
            let index = &mut self.fields[*field as usize];
            index.present.remove(id);
            match term {
                Term::Str(s) => {
                    if index
                        .strings
                        .get_mut(s.as_ref())
                        .is_some_and(|p| p.remove(id))
                    {
                        index.strings.remove(s.as_ref());
                    }
                }
                Term::Num(n) => {
                    let key = Num::new(*n);
                    if index.numbers.get_mut(&key).is_some_and(|p| p.remove(id)) {
                        index.numbers.remove(&key);
                    }
                }
                Term::Bool(b) => {
                    let slot = &mut index.booleans[usize::from(*b)];
                    if slot.as_mut().is_some_and(|p| p.remove(id)) {
                        *slot = None;
                    }
                }
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        let Some(id) = self.by_name.get(name).copied() else {
            return;
        };
        let sections: Vec<Section> = self.documents[id as usize]
            .as_ref()
            .map(|d| d.sections.iter().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default();
        for section in sections {
            self.clear_section(id, &section);
        }
        self.by_name.remove(name);
        self.documents[id as usize] = None;
        self.all.remove(id);
        self.free.push(id);
    }

    /// The documents the query matches.
    pub fn matches(&self, query: &Query) -> RoaringBitmap {
        match query {
            Query::All => self.all.clone(),
            Query::Equals { field, value } => self.equals(field, value),
            Query::Pattern { field, pattern } => {
                let mut out = RoaringBitmap::new();
                if let Some(index) = self.field(field) {
                    let prefix = pattern.prefix();
                    let from = Bound::Included(prefix.as_str());
                    for (term, posting) in index
                        .strings
                        .range::<str, _>((from, Bound::Unbounded))
                        .take_while(|(term, _)| term.starts_with(prefix.as_str()))
                    {
                        if pattern.matches(term) {
                            posting.add_to(&mut out);
                        }
                    }
                }
                out
            }
            Query::Exists { field } => self
                .field(field)
                .map(|f| f.present.clone())
                .unwrap_or_default(),
            Query::Range {
                field,
                lower,
                upper,
            } => self.range(field, lower, upper),
            Query::And(terms) => {
                let (negated, positive): (Vec<&Query>, Vec<&Query>) =
                    terms.iter().partition(|q| matches!(q, Query::Not(_)));
                let mut sets: Vec<RoaringBitmap> =
                    positive.into_iter().map(|q| self.matches(q)).collect();
                sets.sort_by_key(RoaringBitmap::len);
                let mut out = match sets.first() {
                    Some(_) => sets.remove(0),
                    None => self.all.clone(),
                };
                for set in &sets {
                    if out.is_empty() {
                        break;
                    }
                    out &= set;
                }
                for query in negated {
                    if out.is_empty() {
                        break;
                    }
                    if let Query::Not(inner) = query {
                        out -= self.matches(inner);
                    }
                }
                out
            }
            Query::Or(terms) => {
                let mut out = RoaringBitmap::new();
                for query in terms {
                    out |= self.matches(query);
                }
                out
            }
            Query::Not(inner) => &self.all - self.matches(inner),
        }
    }

    fn equals(&self, field: &str, value: &Literal) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        let Some(index) = self.field(field) else {
            return out;
        };
        if let Some(posting) = index.strings.get(value.text.as_str()) {
            posting.add_to(&mut out);
        }
        if let Some(n) = value.number
            && let Some(posting) = index.numbers.get(&Num::new(n))
        {
            posting.add_to(&mut out);
        }
        if let Some(b) = value.boolean
            && let Some(posting) = &index.booleans[usize::from(b)]
        {
            posting.add_to(&mut out);
        }
        out
    }

    fn range(&self, field: &str, lower: &Bound<Literal>, upper: &Bound<Literal>) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        let Some(index) = self.field(field) else {
            return out;
        };
        fn text(b: &Bound<Literal>) -> Bound<&str> {
            match b {
                Bound::Included(l) => Bound::Included(l.text.as_str()),
                Bound::Excluded(l) => Bound::Excluded(l.text.as_str()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        if !empty_range(&text(lower), &text(upper)) {
            for (_, posting) in index.strings.range::<str, _>((text(lower), text(upper))) {
                posting.add_to(&mut out);
            }
        }
        // A bound that is not a number leaves the numbers out.
        let number = |b: &Bound<Literal>| match b {
            Bound::Included(l) => l.number.map(|n| Bound::Included(Num::new(n))),
            Bound::Excluded(l) => l.number.map(|n| Bound::Excluded(Num::new(n))),
            Bound::Unbounded => Some(Bound::Unbounded),
        };
        if let (Some(lower), Some(upper)) = (number(lower), number(upper))
            && !empty_range(&lower, &upper)
        {
            for (_, posting) in index.numbers.range((lower, upper)) {
                posting.add_to(&mut out);
            }
        }
        out
    }

    /// A page of the names of `matches` in name order, after `after`.
    pub fn page(&self, matches: &RoaringBitmap, after: Option<&str>, limit: usize) -> Page {
        let limit = limit.max(1);
        let total = self.all.len().max(1);
        let found = matches.len();
        let name_of = |id: u32| {
            self.documents
                .get(id as usize)
                .and_then(Option::as_ref)
                .map(|d| Arc::clone(&d.name))
        };
        // Walking the names in order visits about limit × total / found of them; gathering
        // the matches visits each once.
        let walk = (limit as u64).saturating_mul(total) / found.max(1) < found;
        let mut names: Vec<Arc<str>> = if walk {
            let from = match after {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            self.by_name
                .range::<str, _>((from, Bound::Unbounded))
                .filter(|(_, id)| matches.contains(**id))
                .take(limit + 1)
                .map(|(name, _)| Arc::clone(name))
                .collect()
        } else {
            let mut all: Vec<Arc<str>> = matches
                .iter()
                .filter_map(name_of)
                .filter(|n| after.is_none_or(|a| n.as_ref() > a))
                .collect();
            if all.len() > limit + 1 {
                all.select_nth_unstable(limit);
                all.truncate(limit + 1);
            }
            all.sort_unstable();
            all
        };
        let more = names.len() > limit;
        names.truncate(limit);
        Page { names, more }
    }
}

fn term_order(a: &Term, b: &Term) -> Ordering {
    match (a, b) {
        (Term::Str(x), Term::Str(y)) => x.cmp(y),
        (Term::Num(x), Term::Num(y)) => Num::new(*x).cmp(&Num::new(*y)),
        (Term::Bool(x), Term::Bool(y)) => x.cmp(y),
        (Term::Str(_), _) => Ordering::Less,
        (_, Term::Str(_)) => Ordering::Greater,
        (Term::Num(_), _) => Ordering::Less,
        (_, Term::Num(_)) => Ordering::Greater,
    }
}

/// Whether bounds enclose nothing (a `BTreeMap` range of them would panic).
fn empty_range<T: Ord>(lower: &Bound<T>, upper: &Bound<T>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u))
        | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::query::parse;
    use super::*;

    fn thing(index: &mut InvertedIndex, name: &str, model: &str, temp: f64, connected: bool) {
        index.set_section(
            name,
            Section::Registry,
            vec![
                ("thingName".into(), Term::str(name)),
                ("attributes.model".into(), Term::str(model)),
            ],
        );
        index.set_section(
            name,
            Section::Shadow(None),
            vec![("shadow.reported.temp".into(), Term::Num(temp))],
        );
        index.set_section(
            name,
            Section::Connectivity,
            vec![("connectivity.connected".into(), Term::Bool(connected))],
        );
    }

    fn search(index: &InvertedIndex, query: &str) -> Vec<String> {
        let matches = index.matches(&parse(query).unwrap());
        index
            .page(&matches, None, 100)
            .names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    fn fleet() -> InvertedIndex {
        let mut index = InvertedIndex::default();
        thing(&mut index, "m1", "X", 20.0, true);
        thing(&mut index, "m2", "X", 30.5, false);
        thing(&mut index, "m3", "Y", -5.0, true);
        thing(&mut index, "s1", "Y z", 0.0, true);
        index
    }

    #[test]
    fn queries_find_what_they_name() {
        let index = fleet();
        assert_eq!(
            search(&index, "attributes.model:X AND connectivity.connected:true"),
            ["m1"]
        );
        assert_eq!(search(&index, "thingName:m*"), ["m1", "m2", "m3"]);
        assert_eq!(search(&index, "thingName:?1"), ["m1", "s1"]);
        assert_eq!(search(&index, "shadow.reported.temp>=20"), ["m1", "m2"]);
        assert_eq!(search(&index, "shadow.reported.temp:[-5 TO 0}"), ["m3"]);
        assert_eq!(search(&index, "shadow.reported.temp:-0"), ["s1"]);
        assert_eq!(search(&index, r#"attributes.model:"Y z""#), ["s1"]);
        assert_eq!(search(&index, "NOT attributes.model:X"), ["m3", "s1"]);
        assert_eq!(
            search(&index, "attributes.model:X OR connectivity.connected:false"),
            ["m1", "m2"]
        );
        assert_eq!(
            search(&index, "attributes.model:* AND NOT thingName:m?"),
            ["s1"]
        );
        assert_eq!(search(&index, "attributes.nothing:1"), Vec::<String>::new());
        assert_eq!(
            search(&index, "shadow.reported.temp:[30 TO 20]"),
            Vec::<String>::new()
        );
        assert_eq!(search(&index, "*").len(), 4);
    }

    #[test]
    fn a_section_replaced_or_removed_leaves_no_trace() {
        let mut index = fleet();
        index.set_section(
            "m1",
            Section::Shadow(None),
            vec![("shadow.reported.temp".into(), Term::Num(99.0))],
        );
        assert_eq!(
            search(&index, "shadow.reported.temp:20"),
            Vec::<String>::new()
        );
        assert_eq!(search(&index, "shadow.reported.temp>50"), ["m1"]);
        index.remove("m1");
        assert_eq!(
            search(&index, "shadow.reported.temp>50"),
            Vec::<String>::new()
        );
        assert_eq!(search(&index, "connectivity.connected:true"), ["m3", "s1"]);
        // A shadow of a thing the index does not have is not indexed.
        index.set_section(
            "ghost",
            Section::Shadow(None),
            vec![("shadow.reported.temp".into(), Term::Num(1.0))],
        );
        assert!(!index.contains("ghost"));
        // The freed id serves the next thing.
        thing(&mut index, "n1", "X", 1.0, true);
        assert_eq!(search(&index, "attributes.model:X"), ["m2", "n1"]);
    }

    #[test]
    fn pages_follow_name_order_whichever_way_they_are_gathered() {
        let mut index = InvertedIndex::default();
        for n in 0..500 {
            thing(
                &mut index,
                &format!("t{n:03}"),
                if n % 50 == 0 { "rare" } else { "common" },
                0.0,
                true,
            );
        }
        for query in ["attributes.model:rare", "attributes.model:common"] {
            let matches = index.matches(&parse(query).unwrap());
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = index.page(&matches, after.as_deref(), 7);
                seen.extend(page.names.iter().map(|n| n.to_string()));
                if !page.more {
                    break;
                }
                after = seen.last().cloned();
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(seen, sorted);
            assert_eq!(seen.len() as u64, matches.len());
        }
    }
}
