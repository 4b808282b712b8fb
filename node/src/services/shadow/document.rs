//! Shadow documents with AWS IoT's semantics, pure: parsing and checking an update request,
//! merging it (a `null` removes a field, `"desired": null` the whole section), per-leaf
//! metadata timestamps, the delta of desired over reported, versions.

use serde_json::{Map, Value, json};

use crate::config::ShadowConfig;

/// Which name of a shadow request breaks AWS's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Thing,
    Shadow,
}

/// A refusal, as the `/rejected` topics and the HTTP API carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ShadowError {
    pub code: u16,
    pub message: String,
}

impl ShadowError {
    fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad(message: &str) -> Self {
        Self::new(400, message)
    }

    pub fn invalid_json() -> Self {
        Self::bad("Invalid JSON")
    }

    pub fn invalid_client_token() -> Self {
        Self::bad("Invalid clientToken")
    }

    pub fn invalid_version() -> Self {
        Self::bad("Invalid version")
    }

    pub fn unsupported_encoding() -> Self {
        Self::new(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        )
    }

    pub fn invalid_name(which: NameError) -> Self {
        Self::bad(match which {
            NameError::Thing => "Invalid thing name",
            NameError::Shadow => "Invalid shadow name",
        })
    }

    pub fn no_shadow(name: &str) -> Self {
        Self::new(404, format!("No shadow exists with name: '{name}'"))
    }

    pub fn too_many_requests() -> Self {
        Self::new(429, "Too Many Requests")
    }

    pub fn internal() -> Self {
        Self::new(500, "Internal service failure")
    }

    pub fn version_conflict() -> Self {
        Self::new(409, "Version conflict")
    }

    pub fn too_large() -> Self {
        Self::new(413, "The payload exceeds the maximum size allowed")
    }

    /// The JSON error document: `{"code", "message", "timestamp", "clientToken"}`.
    pub fn to_json(&self, timestamp: u64, client_token: Option<&str>) -> Value {
        with_token(
            json!({
                "code": self.code,
                "message": self.message,
                "timestamp": timestamp,
            }),
            client_token,
        )
    }
}

/// `value` with the request's `clientToken`, as every answer echoes it.
pub fn with_token(mut value: Value, client_token: Option<&str>) -> Value {
    if let Some(token) = client_token {
        value["clientToken"] = json!(token);
    }
    value
}

/// What a section of an update asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Section {
    /// Not in the request: left as it is.
    Absent,
    /// `null`: the whole section goes.
    Remove,
    /// Merged into the section.
    Merge(Map<String, Value>),
}

/// A checked update request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    pub desired: Section,
    pub reported: Section,
    pub client_token: Option<String>,
    pub version: Option<u64>,
}

/// The client token of a request that may be invalid otherwise, to echo in its rejection.
pub fn client_token_of(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("clientToken")?
        .as_str()
        .map(str::to_owned)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_null_in_array(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().any(has_null_in_array),
        Value::Array(items) => items
            .iter()
            .any(|item| item.is_null() || has_null_in_array(item)),
        _ => false,
    }
}

fn section(
    state: &Map<String, Value>,
    name: &str,
    limits: &ShadowConfig,
) -> Result<Section, ShadowError> {
    let message = match name {
        "desired" => "Desired node must be an object",
        _ => "Reported node must be an object",
    };
    match state.get(name) {
        None => Ok(Section::Absent),
        Some(Value::Null) => Ok(Section::Remove),
        Some(value @ Value::Object(map)) => {
            if depth(value) > limits.max_depth {
                return Err(ShadowError::bad(&format!(
                    "JSON contains too many levels of nesting; maximum is {}",
                    limits.max_depth
                )));
            }
            if has_null_in_array(value) {
                return Err(ShadowError::bad("State contains an invalid node"));
            }
            Ok(Section::Merge(map.clone()))
        }
        Some(_) => Err(ShadowError::bad(message)),
    }
}

/// A request's JSON object, checked to be UTF-8.
fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, ShadowError> {
    let text = std::str::from_utf8(payload).map_err(|_| ShadowError::unsupported_encoding())?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(request)) => Ok(request),
        _ => Err(ShadowError::invalid_json()),
    }
}

/// The `clientToken` and expected `version` a request may carry.
fn token_and_version(
    request: &Map<String, Value>,
    limits: &ShadowConfig,
) -> Result<(Option<String>, Option<u64>), ShadowError> {
    let client_token = match request.get("clientToken") {
        None => None,
        Some(Value::String(t)) if t.len() <= limits.max_client_token_bytes => Some(t.clone()),
        Some(_) => return Err(ShadowError::invalid_client_token()),
    };
    let version = match request.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(ShadowError::invalid_version)?),
    };
    Ok((client_token, version))
}

/// The `clientToken` and `version` of a get or delete request, whose payload may be empty.
pub fn parse_plain_request(
    payload: &[u8],
    limits: &ShadowConfig,
) -> Result<(Option<String>, Option<u64>), ShadowError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    token_and_version(&parse_object(payload)?, limits)
}

/// Parses and checks an update request.
pub fn parse_update(payload: &[u8], limits: &ShadowConfig) -> Result<UpdateRequest, ShadowError> {
    let request = parse_object(payload)?;
    let (client_token, version) = token_and_version(&request, limits)?;
    let state = match request.get("state") {
        None => return Err(ShadowError::bad("Missing required node: state")),
        Some(Value::Object(state)) => state,
        Some(_) => return Err(ShadowError::bad("State node must be an object")),
    };
    if state.keys().any(|k| k != "desired" && k != "reported") {
        return Err(ShadowError::bad("State contains an invalid node"));
    }
    Ok(UpdateRequest {
        desired: section(state, "desired", limits)?,
        reported: section(state, "reported", limits)?,
        client_token,
        version,
    })
}

/// A stored shadow: only `desired` and `reported`, their metadata, and the version. A deleted
/// shadow keeps its version (`exists` false) so that a new one continues from it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShadowDocument {
    pub exists: bool,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_metadata: Option<Map<String, Value>>,
}

/// `{"timestamp": t}` at every leaf of `value` (each element of an array).
pub fn metadata_of(value: &Value, timestamp: u64) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, timestamp)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| metadata_of(v, timestamp)).collect())
        }
        _ => json!({ "timestamp": timestamp }),
    }
}

/// Without the `null`s of a new value (a `null` only ever removes).
fn without_nulls(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), without_nulls(v)?)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Merges `patch` into `state` and its `metadata`: objects recurse, anything else replaces,
/// `null` removes.
fn merge(
    state: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    timestamp: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(inner) if state.get(key).is_some_and(Value::is_object) => {
                if let Some(Value::Object(target)) = state.get_mut(key) {
                    if !metadata.get(key).is_some_and(Value::is_object) {
                        metadata.insert(key.clone(), Value::Object(Map::new()));
                    }
                    if let Some(Value::Object(target_metadata)) = metadata.get_mut(key) {
                        merge(target, target_metadata, inner, timestamp);
                    }
                }
            }
            other => {
                if let Some(clean) = without_nulls(other) {
                    metadata.insert(key.clone(), metadata_of(&clean, timestamp));
                    state.insert(key.clone(), clean);
                }
            }
        }
    }
}

/// The fields of `desired` that `reported` does not have as desired: objects recurse, arrays
/// and other values compare whole; fields only in `reported` are left out.
pub fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, wanted) in desired {
        match (wanted, reported.get(key)) {
            (Value::Object(w), Some(Value::Object(r))) => {
                let inner = delta(w, r);
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (w, Some(r)) if w == r => {}
            (w, _) => {
                out.insert(key.clone(), w.clone());
            }
        }
    }
    out
}

/// The part of `metadata` that describes the fields of `delta`.
pub fn metadata_for(
    delta: &Map<String, Value>,
    metadata: &Map<String, Value>,
) -> Map<String, Value> {
    delta
        .iter()
        .filter_map(|(key, value)| {
            let meta = metadata.get(key)?;
            Some((
                key.clone(),
                match (value, meta) {
                    (Value::Object(d), Value::Object(m)) => Value::Object(metadata_for(d, m)),
                    _ => meta.clone(),
                },
            ))
        })
        .collect()
}

/// Bytes of `map` as compact JSON, counted without building the text.
fn json_length(map: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a map of JSON values always serializes.
    let _ = serde_json::to_writer(&mut counter, map);
    counter.0
}

/// The outcome of an accepted update.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub previous: ShadowDocument,
    pub current: ShadowDocument,
}

impl ShadowDocument {
    /// The delta of desired over reported, when there is one.
    pub fn delta(&self) -> Option<Map<String, Value>> {
        let desired = self.desired.as_ref()?;
        let empty = Map::new();
        let delta = delta(desired, self.reported.as_ref().unwrap_or(&empty));
        (!delta.is_empty()).then_some(delta)
    }

    /// Applies `request` at `timestamp` (epoch seconds).
    pub fn update(
        self,
        request: &UpdateRequest,
        timestamp: u64,
        limits: &ShadowConfig,
    ) -> Result<Updated, ShadowError> {
        if request.version.is_some_and(|v| v != self.version) {
            return Err(ShadowError::version_conflict());
        }
        let mut next = if self.exists {
            self.clone()
        } else {
            ShadowDocument {
                version: self.version,
                ..ShadowDocument::default()
            }
        };
        next.exists = true;
        next.version = self.version + 1;
        for (section, state, metadata) in [
            (
                &request.desired,
                &mut next.desired,
                &mut next.desired_metadata,
            ),
            (
                &request.reported,
                &mut next.reported,
                &mut next.reported_metadata,
            ),
        ] {
            match section {
                Section::Absent => {}
                Section::Remove => {
                    *state = None;
                    *metadata = None;
                }
                Section::Merge(patch) => {
                    let target = state.get_or_insert_with(Map::new);
                    let target_metadata = metadata.get_or_insert_with(Map::new);
                    merge(target, target_metadata, patch, timestamp);
                }
            }
        }
        let size = [&next.desired, &next.reported]
            .iter()
            .filter_map(|s| s.as_ref())
            .map(json_length)
            .sum::<usize>();
        if size > limits.max_state_bytes {
            return Err(ShadowError::too_large());
        }
        Ok(Updated {
            previous: self,
            current: next,
        })
    }

    /// `{"state": {desired, reported[, delta]}, "metadata": {...}}` as GET answers and the
    /// `/update/documents` messages carry (without `delta` there).
    pub fn state_and_metadata(&self, with_delta: bool) -> (Value, Value) {
        let mut state = Map::new();
        let mut metadata = Map::new();
        if let Some(d) = &self.desired {
            state.insert("desired".into(), Value::Object(d.clone()));
        }
        if let Some(r) = &self.reported {
            state.insert("reported".into(), Value::Object(r.clone()));
        }
        if with_delta && let Some(delta) = self.delta() {
            state.insert("delta".into(), Value::Object(delta));
        }
        if let Some(m) = &self.desired_metadata {
            metadata.insert("desired".into(), Value::Object(m.clone()));
        }
        if let Some(m) = &self.reported_metadata {
            metadata.insert("reported".into(), Value::Object(m.clone()));
        }
        (Value::Object(state), Value::Object(metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn update(doc: &ShadowDocument, request: Value, t: u64) -> Result<ShadowDocument, ShadowError> {
        let request = parse_update(request.to_string().as_bytes(), &ShadowConfig::default())?;
        Ok(doc
            .clone()
            .update(&request, t, &ShadowConfig::default())?
            .current)
    }

    #[test]
    fn requests_are_refused_with_aws_messages() {
        let limits = ShadowConfig::default();
        let refused = |payload: &[u8]| parse_update(payload, &limits).unwrap_err();
        assert_eq!(refused(b"{nope").message, "Invalid JSON");
        assert_eq!(refused(b"[]").message, "Invalid JSON");
        assert_eq!(refused(b"{}").message, "Missing required node: state");
        assert_eq!(
            refused(br#"{"state":1}"#).message,
            "State node must be an object"
        );
        assert_eq!(
            refused(br#"{"state":{"desired":[1]}}"#).message,
            "Desired node must be an object"
        );
        assert_eq!(
            refused(br#"{"state":{"reported":"x"}}"#).message,
            "Reported node must be an object"
        );
        assert_eq!(
            refused(br#"{"state":{"delta":{}}}"#).message,
            "State contains an invalid node"
        );
        assert_eq!(
            refused(br#"{"state":{"desired":{"a":[1,null]}}}"#).message,
            "State contains an invalid node"
        );
        assert_eq!(
            refused(br#"{"state":{},"version":-1}"#).message,
            "Invalid version"
        );
        let long = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "t".repeat(65));
        assert_eq!(refused(long.as_bytes()).message, "Invalid clientToken");
        let deep = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}"#;
        assert_eq!(
            refused(deep).message,
            "JSON contains too many levels of nesting; maximum is 6"
        );
        let six = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}}"#;
        assert!(parse_update(six, &limits).is_ok());
        assert_eq!(refused(b"\xff").code, 415);
        assert_eq!(
            client_token_of(br#"{"clientToken":"abc","state":1}"#).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn the_aws_documentation_example_merges_and_deltas_as_aws_does() {
        let doc = ShadowDocument::default();
        let doc = update(
            &doc,
            json!({"state": {"desired": {"color": "RED", "state": "STOP"}, "reported": {"color": "GREEN", "engine": "ON"}}}),
            100,
        )
        .unwrap();
        assert_eq!(doc.version, 1);
        assert_eq!(
            doc.delta(),
            Some(obj(json!({"color": "RED", "state": "STOP"})))
        );
        let doc = update(
            &doc,
            json!({"state": {"reported": {"color": "RED", "state": "STOP", "engine": null}}}),
            200,
        )
        .unwrap();
        assert_eq!(doc.version, 2);
        assert_eq!(doc.delta(), None);
        assert_eq!(
            doc.reported,
            Some(obj(json!({"color": "RED", "state": "STOP"})))
        );
        assert_eq!(
            doc.reported_metadata,
            Some(obj(
                json!({"color": {"timestamp": 200}, "state": {"timestamp": 200}})
            ))
        );
        assert_eq!(
            doc.desired_metadata,
            Some(obj(
                json!({"color": {"timestamp": 100}, "state": {"timestamp": 100}})
            ))
        );
    }

    #[test]
    fn merge_and_delta_follow_the_rules_case_by_case() {
        // (existing desired, update of desired, resulting desired, reported, delta)
        let cases = [
            (
                json!({"a": 1}),
                json!({"b": 2}),
                json!({"a": 1, "b": 2}),
                json!({}),
                json!({"a": 1, "b": 2}),
            ),
            (
                json!({"a": {"x": 1, "y": 2}}),
                json!({"a": {"y": null, "z": 3}}),
                json!({"a": {"x": 1, "z": 3}}),
                json!({"a": {"x": 1}}),
                json!({"a": {"z": 3}}),
            ),
            (
                json!({"a": [1, 2, 3]}),
                json!({"a": [4]}),
                json!({"a": [4]}),
                json!({"a": [4]}),
                json!({}),
            ),
            (
                json!({"a": [1, 2]}),
                json!({}),
                json!({"a": [1, 2]}),
                json!({"a": [2, 1]}),
                json!({"a": [1, 2]}),
            ),
            (
                json!({"a": 1}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
                json!({"a": 1}),
                json!({"a": {"b": 1}}),
            ),
            (
                json!({"a": {"b": 1}}),
                json!({"a": 5}),
                json!({"a": 5}),
                json!({"b": 1}),
                json!({"a": 5}),
            ),
            (
                json!({}),
                json!({"n": {"keep": 1, "drop": null}}),
                json!({"n": {"keep": 1}}),
                json!({"n": {"keep": 1}, "extra": 1}),
                json!({}),
            ),
        ];
        for (existing, patch, merged, reported, expected_delta) in cases {
            let doc = update(
                &ShadowDocument::default(),
                json!({"state": {"desired": existing, "reported": reported}}),
                1,
            )
            .unwrap();
            let doc = update(&doc, json!({"state": {"desired": patch}}), 2).unwrap();
            assert_eq!(doc.desired, Some(obj(merged.clone())), "{patch}");
            assert_eq!(
                doc.delta().unwrap_or_default(),
                obj(expected_delta.clone()),
                "{merged} over {reported}"
            );
        }
    }

    #[test]
    fn metadata_mirrors_every_leaf_and_array_element() {
        let doc = update(
            &ShadowDocument::default(),
            json!({"state": {"desired": {"lights": {"color": "red"}, "list": [1, {"x": 2}]}}}),
            7,
        )
        .unwrap();
        assert_eq!(
            doc.desired_metadata,
            Some(obj(json!({"lights": {"color": {"timestamp": 7}},
                             "list": [{"timestamp": 7}, {"x": {"timestamp": 7}}]})))
        );
        let delta = doc.delta().unwrap();
        assert_eq!(
            metadata_for(&delta, doc.desired_metadata.as_ref().unwrap()),
            obj(json!({"lights": {"color": {"timestamp": 7}},
                       "list": [{"timestamp": 7}, {"x": {"timestamp": 7}}]}))
        );
    }

    #[test]
    fn versions_count_up_conflict_and_survive_deletion() {
        let doc = update(
            &ShadowDocument::default(),
            json!({"state": {"reported": {"a": 1}}}),
            1,
        )
        .unwrap();
        let doc = update(
            &doc,
            json!({"state": {"reported": {"a": 2}}, "version": 1}),
            2,
        )
        .unwrap();
        assert_eq!(doc.version, 2);
        assert_eq!(
            update(
                &doc,
                json!({"state": {"reported": {"a": 3}}, "version": 1}),
                3
            )
            .unwrap_err(),
            ShadowError::version_conflict()
        );
        let deleted = ShadowDocument {
            exists: false,
            version: doc.version,
            ..ShadowDocument::default()
        };
        let again = update(&deleted, json!({"state": {"desired": {"b": 1}}}), 4).unwrap();
        assert_eq!(again.version, 3);
        assert_eq!(again.reported, None);
        let dropped = update(&again, json!({"state": {"desired": null}}), 5).unwrap();
        assert_eq!((dropped.desired, dropped.desired_metadata), (None, None));
    }

    #[test]
    fn the_state_limit_counts_desired_and_reported_after_the_merge() {
        let big = "x".repeat(5000);
        let doc = update(
            &ShadowDocument::default(),
            json!({"state": {"desired": {"a": big}}}),
            1,
        )
        .unwrap();
        let err = update(&doc, json!({"state": {"reported": {"b": big}}}), 2).unwrap_err();
        assert_eq!(err, ShadowError::too_large());
        assert_eq!(err.code, 413);
    }
}
