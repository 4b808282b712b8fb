//! `${aws:iot:s3-presigned-url:URL}` in a job document: replaced, each time a device is given
//! the document, by a URL that lets it download the object for `presignedUrlConfig`'s
//! `expiresInSec`, signed (SigV4, service `s3`) with the keys Halyard holds for AWS services
//! (`rules.aws_access_key_id`, `rules.aws_secret_access_key`, `rules.aws_region`).

use std::borrow::Cow;

use serde_json::Value;

use super::error::JobsError;

const OPEN: &str = "${aws:iot:s3-presigned-url:";
const DEFAULT_EXPIRY: u64 = 3600;

/// The keys presigned URLs are signed with.
#[derive(Debug, Clone)]
pub struct Presigner {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

/// Whether `document` holds a presigned-URL placeholder.
pub fn has_placeholder(document: &str) -> bool {
    document.contains(OPEN)
}

/// Checks `presignedUrlConfig`: `expiresInSec` from 60 to 3600.
pub fn check_config(config: &Value) -> Result<(), JobsError> {
    match config.get("expiresInSec") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|s| (60..=3600).contains(&s)) => Ok(()),
        Some(v) => Err(JobsError::invalid(format!(
            "presignedUrlConfig.expiresInSec {v} must be between 60 and 3600"
        ))),
    }
}

/// `document` with each placeholder replaced by a URL presigned at `now` (seconds); as it is
/// when it has none, or when no keys are configured to sign with.
pub fn substitute<'a>(
    document: &'a str,
    config: Option<&Value>,
    presigner: Option<&Presigner>,
    now: i64,
) -> Cow<'a, str> {
    let Some(presigner) = presigner.filter(|_| has_placeholder(document)) else {
        return Cow::Borrowed(document);
    };
    let expires = config
        .and_then(|c| c.get("expiresInSec"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EXPIRY);
    let mut out = String::with_capacity(document.len() + 512);
    let mut rest = document;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Cow::Owned(out);
        };
        let url = &after[..end];
        match sign(url, presigner, now, expires) {
            // The URL lands inside a JSON string of the document.
            Some(signed) => {
                let quoted = Value::String(signed).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
            None => out.push_str(&rest[at..at + OPEN.len() + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn sign(url: &str, presigner: &Presigner, now: i64, expires: u64) -> Option<String> {
    #[cfg(not(madsim))]
    {
        crate::auth::identity::sigv4::presign_url(
            url,
            &presigner.access_key_id,
            &presigner.secret_access_key,
            &presigner.region,
            "s3",
            now,
            expires,
        )
    }
    // The simulation build has no SigV4 (it runs no HTTP); its documents keep their
    // placeholders.
    #[cfg(madsim)]
    {
        let _ = (url, presigner, now, expires);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_presigned_urls() {
        let presigner = Presigner {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            region: "us-east-1".into(),
        };
        let document =
            r#"{"url":"${aws:iot:s3-presigned-url:https://s3.amazonaws.com/bucket/fw.bin}"}"#;
        let config = serde_json::json!({"expiresInSec": 120});
        let signed = substitute(document, Some(&config), Some(&presigner), 1_700_000_000);
        let parsed: Value = serde_json::from_str(&signed).unwrap();
        let url = parsed["url"].as_str().unwrap();
        assert!(url.starts_with("https://s3.amazonaws.com/bucket/fw.bin?X-Amz-Algorithm="));
        assert!(url.contains("X-Amz-Expires=120") && url.contains("X-Amz-Signature="));
        assert_eq!(substitute(document, None, None, 0), document);
        assert!(check_config(&serde_json::json!({"expiresInSec": 30})).is_err());
    }
}
