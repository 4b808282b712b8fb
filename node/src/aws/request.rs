//! A signed request taken apart for the operations, and paging through the store.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::AwsError;
use super::records::{Records, hex, unhex};

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

/// One page of a listing: how many records, and after which key (from `nextToken`).
pub struct Page {
    limit: usize,
    after: Option<String>,
}

/// A page token is the hex of the key the page starts after.
fn encode_token(key: &str) -> String {
    hex(key)
}

fn decode_token(token: &str) -> Option<String> {
    unhex(token)
}

impl Page {
    pub fn first(limit: usize) -> Self {
        Self { limit, after: None }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Where this page starts, for listings that page over more than one prefix.
    pub fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// The `nextToken` for a page starting after `position`.
    pub fn token_for(position: &str) -> String {
        encode_token(position)
    }

    /// `maxResults` (default `default`, at most `max`) and `nextToken` of the request.
    pub fn from_request(
        request: &ApiRequest,
        default: usize,
        max: usize,
    ) -> Result<Self, AwsError> {
        let limit = match request.query("maxResults") {
            None => default,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    AwsError::validation(
                        "maxResults",
                        v,
                        &format!("Member must have value between 1 and {max}"),
                    )
                })?,
        };
        let after = match request.query("nextToken") {
            None | Some("") => None,
            Some(token) => Some(
                decode_token(token)
                    .ok_or_else(|| AwsError::invalid_request("The nextToken is invalid."))?,
            ),
        };
        Ok(Self { limit, after })
    }

    /// The records under `prefix` that `keep` accepts, from this page's start, read from the
    /// store batch by batch; the token of the next page if more may follow.
    pub async fn collect<T: DeserializeOwned>(
        &self,
        records: &Records,
        prefix: &str,
        keep: impl Fn(&T) -> bool,
    ) -> Result<(Vec<T>, Option<String>), AwsError> {
        let mut after = self.after.as_ref().map(|a| format!("{prefix}{a}"));
        let mut found = Vec::new();
        let batch = self.limit.clamp(100, 1000);
        loop {
            let (page, more) = records.page::<T>(prefix, after.as_deref(), batch).await?;
            let count = page.len();
            for (n, (key, record)) in page.into_iter().enumerate() {
                if keep(&record) {
                    found.push(record);
                    if found.len() == self.limit {
                        let rest = n + 1 < count || more;
                        let token = rest.then(|| encode_token(&key[prefix.len()..]));
                        return Ok((found, token));
                    }
                }
                after = Some(key);
            }
            if !more {
                return Ok((found, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_token(&encode_token("thing-7")),
            Some("thing-7".into())
        );
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("abc"), None);
    }
}
