//! `/indexing/config`, `/indices...` and `/things/{name}/connectivity-data`: fleet indexing's
//! configuration, search and aggregations, and a thing's connectivity.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::ApiRequest;
use crate::services::index::Aggregation;
use crate::services::index::config::{
    Field, GroupIndexingRequest, IndexingConfiguration, ThingIndexingRequest,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateIndexing {
    thing_indexing_configuration: Option<ThingIndexingRequest>,
    thing_group_indexing_configuration: Option<GroupIndexingRequest>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Search {
    index_name: Option<String>,
    query_string: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TermsAggregation {
    max_buckets: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BucketsAggregationType {
    terms_aggregation: Option<TermsAggregation>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AggregationRequest {
    index_name: Option<String>,
    query_string: Option<String>,
    aggregation_field: Option<String>,
    percents: Option<Vec<f64>>,
    buckets_aggregation_type: Option<BucketsAggregationType>,
}

fn fields(fields: &[Field]) -> Value {
    json!(
        fields
            .iter()
            .map(|f| json!({ "name": f.name, "type": f.field_type }))
            .collect::<Vec<_>>()
    )
}

fn configuration_json(config: &IndexingConfiguration) -> Value {
    let thing = &config.thing;
    let mut thing_json = json!({
        "thingIndexingMode": match thing.thing_indexing_mode {
            crate::services::index::config::ThingIndexingMode::Off => "OFF",
            crate::services::index::config::ThingIndexingMode::Registry => "REGISTRY",
            crate::services::index::config::ThingIndexingMode::RegistryAndShadow => {
                "REGISTRY_AND_SHADOW"
            }
        },
        "thingConnectivityIndexingMode": if thing.connectivity_status { "STATUS" } else { "OFF" },
        "deviceDefenderIndexingMode": "OFF",
        "namedShadowIndexingMode": if thing.named_shadows { "ON" } else { "OFF" },
        "managedFields": fields(&thing.managed_fields()),
        "customFields": fields(&thing.custom_fields),
    });
    if !thing.filter.named_shadow_names.is_empty() {
        thing_json["filter"] = json!({ "namedShadowNames": thing.filter.named_shadow_names });
    }
    json!({
        "thingIndexingConfiguration": thing_json,
        "thingGroupIndexingConfiguration": {
            "thingGroupIndexingMode": if config.group.on { "ON" } else { "OFF" },
            "managedFields": fields(&config.group.managed_fields()),
            "customFields": fields(&config.group.custom_fields),
        },
    })
}

/// A query string AWS requires, at least one character long.
fn query_string(query: Option<String>) -> Result<String, AwsError> {
    match query {
        Some(q) if !q.is_empty() => Ok(q),
        Some(_) => Err(AwsError::invalid_request(
            "1 validation error detected: Value '' at 'queryString' failed to satisfy constraint: Member must have length greater than or equal to 1",
        )),
        None => Err(AwsError::invalid_request("queryString is required")),
    }
}

/// A count AWS models as an integer within bounds; out of range is left to the service.
fn count(name: &str, value: Option<i64>) -> Result<Option<usize>, AwsError> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(AwsError::invalid_request(format!(
            "1 validation error detected: Value '{n}' at '{name}' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ))),
    }
}

impl ControlPlane {
    pub(super) async fn get_indexing_configuration(&self) -> ApiResult {
        let config = self.index.configuration().await?;
        Ok(configuration_json(&config))
    }

    pub(super) async fn update_indexing_configuration(&self, request: &ApiRequest) -> ApiResult {
        let body: UpdateIndexing = request.json()?;
        let thing = body
            .thing_indexing_configuration
            .map(ThingIndexingRequest::into_config)
            .transpose()?;
        let group = body
            .thing_group_indexing_configuration
            .map(GroupIndexingRequest::into_config)
            .transpose()?;
        self.index.update_configuration(thing, group).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_indices(&self) -> ApiResult {
        Ok(json!({ "indexNames": self.index.list_indices().await? }))
    }

    pub(super) async fn describe_index(&self, name: &str) -> ApiResult {
        let (status, schema) = self.index.describe_index(name).await?;
        Ok(json!({ "indexName": name, "indexStatus": status.as_str(), "schema": schema }))
    }

    pub(super) async fn search_index(&self, request: &ApiRequest) -> ApiResult {
        let body: Search = request.json()?;
        let query = query_string(body.query_string)?;
        let page = self
            .index
            .search(
                body.index_name.as_deref(),
                &query,
                body.next_token.as_deref(),
                count("maxResults", body.max_results)?,
            )
            .await?;
        let mut out = json!({ "things": page.things, "thingGroups": page.thing_groups });
        if let Some(token) = page.next_token {
            out["nextToken"] = json!(token);
        }
        Ok(out)
    }

    pub(super) async fn aggregate_index(&self, request: &ApiRequest, kind: &str) -> ApiResult {
        let body: AggregationRequest = request.json()?;
        let query = query_string(body.query_string)?;
        let aggregation = match kind {
            "statistics" => Aggregation::Statistics,
            "cardinality" => Aggregation::Cardinality,
            "percentiles" => Aggregation::Percentiles(body.percents.unwrap_or_default()),
            _ => {
                let max = body
                    .buckets_aggregation_type
                    .and_then(|b| b.terms_aggregation)
                    .and_then(|t| t.max_buckets);
                Aggregation::Buckets(count("maxBuckets", max)?)
            }
        };
        if kind == "buckets" && body.aggregation_field.is_none() {
            return Err(AwsError::invalid_request("aggregationField is required"));
        }
        if let Aggregation::Percentiles(percents) = &aggregation
            && let Some(bad) = percents.iter().find(|p| !(0.0..=100.0).contains(*p))
        {
            return Err(AwsError::invalid_request(format!(
                "1 validation error detected: Value '{bad}' at 'percents' failed to satisfy constraint: Member must have value between 0 and 100"
            )));
        }
        Ok(self
            .index
            .aggregate(
                body.index_name.as_deref(),
                &query,
                body.aggregation_field.as_deref(),
                aggregation,
            )
            .await?)
    }

    pub(super) async fn get_thing_connectivity_data(&self, thing: &str) -> ApiResult {
        let connectivity = self.index.connectivity(thing).await?;
        Ok(match connectivity {
            None => json!({ "thingName": thing, "connected": false }),
            Some(c) => {
                let mut out = json!({
                    "thingName": thing,
                    "connected": c.connected,
                    "timestamp": c.timestamp as f64 / 1000.0,
                    "clientId": c.client_id,
                });
                if let Some(reason) = c.disconnect_reason {
                    out["disconnectReason"] = json!(reason);
                }
                if let Some(k) = c.keep_alive_duration {
                    out["keepAliveDuration"] = json!(k);
                }
                if let Some(clean) = c.clean_session {
                    out["cleanSession"] = json!(clean);
                }
                if let Some(e) = c.session_expiry {
                    out["sessionExpiry"] = json!(e);
                }
                out
            }
        })
    }
}
