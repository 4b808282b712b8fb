//! A signed request taken apart for the operations: path, query, headers, JSON body and the
//! page a listing asks for.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use serde_json::{Value, json};

use super::error::AwsError;
use crate::services::records::Page;

pub struct ApiRequest {
    pub method: String,
    /// Path segments, each percent-decoded after splitting, so that an encoded `/` stays in
    /// its segment.
    pub segments: Vec<String>,
    /// Query pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ApiRequest {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_u64(&self, name: &str) -> Result<Option<u64>, AwsError> {
        self.query(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| AwsError::validation(name, v, "Member must be a whole number"))
            })
            .transpose()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter; absent is false.
    pub fn query_flag(&self, name: &str) -> Result<bool, AwsError> {
        match self.query(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(AwsError::validation(
                name,
                other,
                "Member must be true or false",
            )),
        }
    }

    /// The JSON body; an empty body is the default value.
    pub fn json<T: DeserializeOwned + Default>(&self) -> Result<T, AwsError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            AwsError::invalid_request(format!(
                "Could not read the request body at '{path}': {}",
                e.into_inner()
            ))
        })
    }
}

impl ApiRequest {
    /// The page `maxResults` (default `default`, at most `max`) and `nextToken` ask for.
    pub fn page(&self, default: usize, max: usize) -> Result<Page, AwsError> {
        self.page_named("maxResults", "nextToken", default, max)
    }

    /// The page `pageSize` (default and at most 250) and `marker` ask for, as the older
    /// listings (certificates, policies, authorizers) take them.
    pub fn marker_page(&self) -> Result<Page, AwsError> {
        self.page_named("pageSize", "marker", 250, 250)
    }

    fn page_named(
        &self,
        size: &str,
        token: &str,
        default: usize,
        max: usize,
    ) -> Result<Page, AwsError> {
        let limit = match self.query(size) {
            None => default,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    AwsError::validation(
                        size,
                        v,
                        &format!("Member must have value between 1 and {max}"),
                    )
                })?,
        };
        Ok(Page::after_token(limit, self.query(token))?)
    }
}

/// `answer` with `field` set to the next page's token, if there is one.
pub fn with_token(mut answer: Value, field: &str, next: Option<String>) -> Value {
    if let Some(token) = next {
        answer[field] = json!(token);
    }
    answer
}
