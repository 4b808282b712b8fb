//! The terms of a thing's sections (its registry record, its groups, its shadows, its
//! connectivity) and of a thing group, as the query language names their fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::{FieldType, FieldTypes};
use super::inverted::Term;
use crate::services::registry::groups::ThingGroupRecord;
use crate::services::registry::things::ThingRecord;
use crate::services::shadow::document::ShadowDocument;

pub type Terms = Vec<(String, Term)>;

/// How deep a shadow's objects are indexed.
const MAX_SHADOW_DEPTH: usize = 8;

/// A thing's connectivity as its node records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connectivity {
    pub connected: bool,
    /// When it connected or disconnected, epoch milliseconds.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<String>,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_session: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<u64>,
    /// The node that wrote it, when that node started (epoch milliseconds), and its number
    /// for the connection: together, the connection.
    pub node: u64,
    #[serde(default)]
    pub life: u64,
    #[serde(default)]
    pub connection: u64,
}

impl Connectivity {
    /// The `connectivity` of a search result.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("connected".into(), Value::Bool(self.connected));
        out.insert("timestamp".into(), Value::from(self.timestamp));
        if let Some(reason) = &self.disconnect_reason {
            out.insert("disconnectReason".into(), Value::from(reason.as_str()));
        }
        out.insert("clientId".into(), Value::from(self.client_id.as_str()));
        if let Some(k) = self.keep_alive_duration {
            out.insert("keepAliveDuration".into(), Value::from(k));
        }
        if let Some(c) = self.clean_session {
            out.insert("cleanSession".into(), Value::Bool(c));
        }
        if let Some(s) = self.session_expiry {
            out.insert("sessionExpiry".into(), Value::from(s));
        }
        Value::Object(out)
    }
}

/// A string as the custom field's type would have it; `None` when it does not fit the type.
fn typed(value: &str, declared: Option<&FieldType>) -> Option<Term> {
    match declared {
        Some(FieldType::Number) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Term::Num),
        Some(FieldType::Boolean) => match value {
            "true" => Some(Term::Bool(true)),
            "false" => Some(Term::Bool(false)),
            _ => None,
        },
        _ => Some(Term::str(value)),
    }
}

pub fn registry_terms(thing: &ThingRecord, types: &FieldTypes) -> Terms {
    let mut terms = vec![
        ("thingName".to_owned(), Term::str(&thing.thing_name)),
        ("thingId".to_owned(), Term::str(&thing.thing_id)),
        (
            "registry.version".to_owned(),
            Term::Num(thing.version as f64),
        ),
    ];
    if let Some(t) = &thing.thing_type_name {
        terms.push(("thingTypeName".to_owned(), Term::str(t)));
    }
    for (name, value) in &thing.attributes {
        let field = format!("attributes.{name}");
        if let Some(term) = typed(value, types.get(&field)) {
            terms.push((field, term));
        }
    }
    terms
}

pub fn group_terms(groups: &[String]) -> Terms {
    groups
        .iter()
        .map(|g| ("thingGroupNames".to_owned(), Term::str(g)))
        .collect()
}

/// The field prefix of a shadow: `shadow.` or `shadow.name.{name}.`.
fn shadow_prefix(name: Option<&str>) -> String {
    match name {
        None => "shadow.".to_owned(),
        Some(n) => format!("shadow.name.{n}."),
    }
}

pub fn shadow_terms(name: Option<&str>, shadow: &ShadowDocument, types: &FieldTypes) -> Terms {
    let mut terms = Vec::new();
    if !shadow.exists {
        return terms;
    }
    let prefix = shadow_prefix(name);
    for (section, state) in [("desired", &shadow.desired), ("reported", &shadow.reported)] {
        if let Some(state) = state {
            let mut path = format!("{prefix}{section}");
            flatten(
                &mut terms,
                &mut path,
                &Value::Object(state.clone()),
                types,
                0,
            );
        }
    }
    terms.push((format!("{prefix}version"), Term::Num(shadow.version as f64)));
    terms.push((
        format!("{prefix}hasDelta"),
        Term::Bool(shadow.delta().is_some()),
    ));
    terms
}

/// Every leaf of `value` under `path`; each element of an array under the array's path.
fn flatten(terms: &mut Terms, path: &mut String, value: &Value, types: &FieldTypes, depth: usize) {
    match value {
        Value::Object(map) => {
            if depth >= MAX_SHADOW_DEPTH {
                return;
            }
            for (key, inner) in map {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                flatten(terms, path, inner, types, depth + 1);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for item in items {
                flatten(terms, path, item, types, depth + 1);
            }
        }
        Value::Null => {}
        Value::Bool(b) => terms.push((path.clone(), Term::Bool(*b))),
        Value::Number(n) => {
            let term = match (types.get(path.as_str()), n.as_f64()) {
                (Some(FieldType::String), _) => Some(Term::str(&n.to_string())),
                (_, Some(f)) if f.is_finite() => Some(Term::Num(f)),
                _ => None,
            };
            if let Some(term) = term {
                terms.push((path.clone(), term));
            }
        }
        Value::String(s) => {
            if let Some(term) = typed(s, types.get(path.as_str())) {
                terms.push((path.clone(), term));
            }
        }
    }
}

pub fn connectivity_terms(connectivity: Option<&Connectivity>) -> Terms {
    match connectivity {
        None => vec![("connectivity.connected".to_owned(), Term::Bool(false))],
        Some(c) => {
            let mut terms = vec![
                ("connectivity.connected".to_owned(), Term::Bool(c.connected)),
                (
                    "connectivity.timestamp".to_owned(),
                    Term::Num(c.timestamp as f64),
                ),
            ];
            if let Some(reason) = &c.disconnect_reason {
                terms.push((
                    "connectivity.disconnectReason".to_owned(),
                    Term::str(reason),
                ));
            }
            terms
        }
    }
}

pub fn thing_group_terms(group: &ThingGroupRecord, types: &FieldTypes) -> Terms {
    let mut terms = vec![
        ("thingGroupName".to_owned(), Term::str(&group.name)),
        ("thingGroupId".to_owned(), Term::str(&group.id)),
    ];
    if let Some(d) = &group.description {
        terms.push(("thingGroupDescription".to_owned(), Term::str(d)));
    }
    for parent in &group.root_to_parent {
        terms.push(("parentGroupNames".to_owned(), Term::str(parent)));
    }
    for (name, value) in &group.attributes {
        let field = format!("attributes.{name}");
        if let Some(term) = typed(value, types.get(&field)) {
            terms.push((field, term));
        }
    }
    terms
}

/// The `shadow` of a search result: AWS's JSON string of the shadows the index holds.
pub fn shadow_json(
    classic: Option<&ShadowDocument>,
    named: &[(String, ShadowDocument)],
) -> Option<String> {
    fn one(shadow: &ShadowDocument) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(d) = &shadow.desired {
            out.insert("desired".into(), Value::Object(d.clone()));
        }
        if let Some(r) = &shadow.reported {
            out.insert("reported".into(), Value::Object(r.clone()));
        }
        let mut metadata = Map::new();
        if let Some(m) = &shadow.desired_metadata {
            metadata.insert("desired".into(), Value::Object(m.clone()));
        }
        if let Some(m) = &shadow.reported_metadata {
            metadata.insert("reported".into(), Value::Object(m.clone()));
        }
        out.insert("metadata".into(), Value::Object(metadata));
        out.insert("version".into(), Value::from(shadow.version));
        out.insert("hasDelta".into(), Value::Bool(shadow.delta().is_some()));
        out
    }
    let mut out = classic.filter(|s| s.exists).map(one).unwrap_or_default();
    let named: Map<String, Value> = named
        .iter()
        .filter(|(_, s)| s.exists)
        .map(|(n, s)| (n.clone(), Value::Object(one(s))))
        .collect();
    if !named.is_empty() {
        out.insert("name".into(), Value::Object(named));
    }
    (!out.is_empty()).then(|| Value::Object(out).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn custom_fields_type_attributes_and_shadows_keep_their_json_types() {
        let thing = ThingRecord {
            thing_name: "m1".into(),
            thing_id: "id".into(),
            thing_type_name: Some("meter".into()),
            attributes: BTreeMap::from([
                ("version".to_owned(), "2.3".to_owned()),
                ("model".to_owned(), "X".to_owned()),
            ]),
            version: 4,
        };
        let types = FieldTypes::from([("attributes.version".to_owned(), FieldType::Number)]);
        let terms = registry_terms(&thing, &types);
        assert!(terms.contains(&("attributes.version".into(), Term::Num(2.3))));
        assert!(terms.contains(&("attributes.model".into(), Term::str("X"))));
        assert!(terms.contains(&("thingTypeName".into(), Term::str("meter"))));

        let shadow = ShadowDocument {
            exists: true,
            version: 7,
            desired: json!({"mode": "eco"}).as_object().cloned(),
            reported: json!({"temp": 21.5, "ok": true, "tags": ["a", "b"], "pos": {"x": 1}})
                .as_object()
                .cloned(),
            ..Default::default()
        };
        let terms = shadow_terms(Some("cfg"), &shadow, &FieldTypes::new());
        for expected in [
            ("shadow.name.cfg.reported.temp", Term::Num(21.5)),
            ("shadow.name.cfg.reported.ok", Term::Bool(true)),
            ("shadow.name.cfg.reported.tags", Term::str("b")),
            ("shadow.name.cfg.reported.pos.x", Term::Num(1.0)),
            ("shadow.name.cfg.desired.mode", Term::str("eco")),
            ("shadow.name.cfg.hasDelta", Term::Bool(true)),
            ("shadow.name.cfg.version", Term::Num(7.0)),
        ] {
            assert!(
                terms.contains(&(expected.0.to_owned(), expected.1.clone())),
                "{expected:?} in {terms:?}"
            );
        }
        let rendered: Value =
            serde_json::from_str(&shadow_json(Some(&shadow), &[]).unwrap()).unwrap();
        assert_eq!(rendered["reported"]["temp"], json!(21.5));
        assert_eq!(rendered["hasDelta"], json!(true));
    }
}
