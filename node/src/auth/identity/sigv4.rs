//! AWS Signature Version 4, verified: requests signed by the AWS CLI, the SDKs and anything
//! else that signs as they do, in the `Authorization` header or in the query (presigned URLs).

use ring::{digest, hmac};
use thiserror::Error;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's signing time may be from this server's clock, as AWS allows.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// The longest a presigned URL may stay valid, as AWS allows (seven days).
pub const MAX_PRESIGNED_EXPIRY_SECS: i64 = 7 * 24 * 3600;
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// A request as it arrived, before any decoding.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent, still percent-encoded.
    pub raw_path: &'a str,
    /// The query as sent, without the `?`.
    pub raw_query: &'a str,
    /// Header names in lowercase, in the order received.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Who signed a request, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
}

/// Why a request is refused; each maps to the error AWS answers with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigV4Error {
    #[error("Missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(String),
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey,
    #[error("{0}")]
    Expired(String),
    #[error("Credential should be scoped to a valid region.")]
    WrongRegion,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    Mismatch,
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
}

impl SigV4Error {
    /// The AWS error code (`x-amzn-ErrorType`) and HTTP status for this refusal.
    pub fn code_and_status(&self) -> (&'static str, u16) {
        match self {
            SigV4Error::Missing => ("MissingAuthenticationTokenException", 403),
            SigV4Error::Incomplete(_) => ("IncompleteSignatureException", 400),
            SigV4Error::UnknownAccessKey => ("UnrecognizedClientException", 403),
            SigV4Error::Expired(_) | SigV4Error::WrongRegion | SigV4Error::Mismatch => {
                ("InvalidSignatureException", 403)
            }
            SigV4Error::PayloadHashMismatch => ("XAmzContentSHA256Mismatch", 400),
        }
    }
}

/// The parts of a signature, from the header or from the query.
struct Presented {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// For a presigned URL, how long it is valid.
    expires: Option<i64>,
}

/// Verifies `request`, signed with the secret `secret_for` returns for its access key, for
/// `region`, at `now` (seconds since the epoch).
pub fn verify(
    request: &SignedRequest<'_>,
    secret_for: impl Fn(&str) -> Option<String>,
    region: &str,
    now: i64,
) -> Result<Signer, SigV4Error> {
    let query = parse_query(request.raw_query);
    let presigned = query.iter().any(|(k, _)| k == "X-Amz-Signature");
    let presented = if presigned {
        from_query(&query)?
    } else {
        let authorization = header(request.headers, "authorization").ok_or(SigV4Error::Missing)?;
        from_header(&authorization, request.headers)?
    };
    if presented.region != region {
        return Err(SigV4Error::WrongRegion);
    }
    let signed_at = parse_amz_date(&presented.amz_date).ok_or_else(|| {
        SigV4Error::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'.",
            presented.amz_date
        ))
    })?;
    if !presented.amz_date.starts_with(&presented.date) {
        return Err(SigV4Error::Mismatch);
    }
    match presented.expires {
        Some(expires) => {
            if now > signed_at + expires {
                return Err(SigV4Error::Expired(format!(
                    "Signature expired: {} is now earlier than {} ({} + {expires} s).",
                    presented.amz_date,
                    format_amz_date(now),
                    presented.amz_date
                )));
            }
            if signed_at > now + MAX_SKEW_SECS {
                return Err(SigV4Error::Expired(format!(
                    "Signature not yet current: {} is still later than {}.",
                    presented.amz_date,
                    format_amz_date(now + MAX_SKEW_SECS)
                )));
            }
        }
        None => {
            if (signed_at - now).abs() > MAX_SKEW_SECS {
                return Err(SigV4Error::Expired(format!(
                    "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                    presented.amz_date,
                    format_amz_date(now - MAX_SKEW_SECS),
                    format_amz_date(now)
                )));
            }
        }
    }
    if !presented.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Incomplete(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let secret = secret_for(&presented.access_key_id).ok_or(SigV4Error::UnknownAccessKey)?;

    let body_hash = hex(digest::digest(&digest::SHA256, request.body).as_ref());
    let payload_hash = match header(request.headers, "x-amz-content-sha256") {
        Some(declared) if declared == UNSIGNED_PAYLOAD => declared,
        Some(declared) if declared != body_hash => return Err(SigV4Error::PayloadHashMismatch),
        _ => body_hash,
    };
    let excluded = if presigned {
        Some("X-Amz-Signature")
    } else {
        None
    };
    let scope = format!(
        "{}/{}/{}/aws4_request",
        presented.date, presented.region, presented.service
    );
    let signed_as = |payload_hash: &str| {
        let canonical = canonical_request(
            request,
            &query,
            excluded,
            &presented.signed_headers,
            payload_hash,
        );
        let expected = signature(
            &secret,
            &presented.date,
            &presented.region,
            &presented.service,
            &string_to_sign(&presented.amz_date, &scope, &canonical),
        );
        constant_time_eq(&expected, &presented.signature)
    };
    // Presigned URLs for services other than S3 are signed either over the body or as an
    // unsigned payload, depending on the signer; accept both.
    let matches = signed_as(&payload_hash) || (presigned && signed_as(UNSIGNED_PAYLOAD));
    if !matches {
        return Err(SigV4Error::Mismatch);
    }
    Ok(Signer {
        access_key_id: presented.access_key_id,
        region: presented.region,
        service: presented.service,
    })
}

fn from_header(authorization: &str, headers: &[(String, String)]) -> Result<Presented, SigV4Error> {
    let rest = authorization.strip_prefix(ALGORITHM).ok_or_else(|| {
        SigV4Error::Incomplete(
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.".into(),
        )
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "Credential" => credential = Some(value.to_owned()),
            "SignedHeaders" => signed_headers = Some(value.to_owned()),
            "Signature" => signature = Some(value.to_owned()),
            _ => {}
        }
    }
    let missing = |name: &str| {
        SigV4Error::Incomplete(format!(
            "Authorization header requires '{name}' parameter. Authorization={authorization}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let amz_date = header(headers, "x-amz-date").ok_or_else(|| {
        SigV4Error::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        )
    })?;
    presented(credential, &signed_headers, signature, amz_date, None)
}

fn from_query(query: &[(String, String)]) -> Result<Presented, SigV4Error> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                SigV4Error::Incomplete(format!(
                    "AWS query-string parameters must include '{name}'. Re-examine the query-string parameters."
                ))
            })
    };
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(SigV4Error::Incomplete(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"".into(),
        ));
    }
    // AWS IoT's WebSocket endpoint takes URLs presigned without an expiry (the Device SDKs
    // sign them so); they are held to the same clock skew as a signed header.
    let expires = match query.iter().find(|(k, _)| k == "X-Amz-Expires") {
        None => None,
        Some((_, v)) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|e| (0..=MAX_PRESIGNED_EXPIRY_SECS).contains(e))
                .ok_or_else(|| {
                    SigV4Error::Incomplete(format!(
                        "X-Amz-Expires must be a number of seconds from 0 to {MAX_PRESIGNED_EXPIRY_SECS}."
                    ))
                })?,
        ),
    };
    presented(
        get("X-Amz-Credential")?,
        &get("X-Amz-SignedHeaders")?,
        get("X-Amz-Signature")?,
        get("X-Amz-Date")?,
        expires,
    )
}

fn presented(
    credential: String,
    signed_headers: &str,
    signature: String,
    amz_date: String,
    expires: Option<i64>,
) -> Result<Presented, SigV4Error> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts[..] else {
        return Err(SigV4Error::Incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
        )));
    };
    if terminator != "aws4_request" {
        return Err(SigV4Error::Incomplete(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    Ok(Presented {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: signed_headers.split(';').map(str::to_owned).collect(),
        signature,
        amz_date,
        expires,
    })
}

/// The value of header `name` (lowercase); repeated headers joined by commas.
fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Query pairs, percent-decoded, in the order sent.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SigV4's URI encoding: every byte but the unreserved characters (and `/` in paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_request(
    request: &SignedRequest<'_>,
    query: &[(String, String)],
    excluded: Option<&str>,
    signed_headers: &[String],
    payload_hash: &str,
) -> String {
    // Services other than S3 encode the path as sent once more.
    let path = if request.raw_path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(request.raw_path, true)
    };
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != excluded)
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let value = header(request.headers, name).unwrap_or_default();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    format!(
        "{}\n{path}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        request.method,
        signed_headers.join(";")
    )
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    )
}

fn hmac_sha256(key: &[u8], data: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
}

fn signature(secret: &str, date: &str, region: &str, service: &str, to_sign: &str) -> String {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac_sha256(k_date.as_ref(), region);
    let k_service = hmac_sha256(k_region.as_ref(), service);
    let k_signing = hmac_sha256(k_service.as_ref(), "aws4_request");
    hex(hmac_sha256(k_signing.as_ref(), to_sign).as_ref())
}

/// Signs a request the way the AWS SDKs do (Authorization header); for tests and tools.
pub fn authorization_header(
    request: &SignedRequest<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let mut signed_headers: Vec<String> = request
        .headers
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k != "authorization")
        .collect();
    signed_headers.sort();
    signed_headers.dedup();
    let payload_hash = hex(digest::digest(&digest::SHA256, request.body).as_ref());
    let query = parse_query(request.raw_query);
    let canonical = canonical_request(request, &query, None, &signed_headers, &payload_hash);
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let signature = signature(
        secret,
        date,
        region,
        service,
        &string_to_sign(amz_date, &scope, &canonical),
    );
    format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        signed_headers.join(";")
    )
}

/// A URL that lets whoever holds it GET `url` for `expires_secs` from `now`: SigV4 query
/// signing, as S3's presigned URLs are made (the host the only signed header, the payload
/// unsigned). `None` for a URL without a scheme and host.
#[allow(clippy::too_many_arguments)]
pub fn presign_url(
    url: &str,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    now: i64,
    expires_secs: u64,
) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path_and_query) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let amz_date = format_amz_date(now);
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let mut params = parse_query(query);
    params.extend([
        ("X-Amz-Algorithm".to_owned(), ALGORITHM.to_owned()),
        (
            "X-Amz-Credential".to_owned(),
            format!("{access_key_id}/{scope}"),
        ),
        ("X-Amz-Date".to_owned(), amz_date.clone()),
        ("X-Amz-Expires".to_owned(), expires_secs.to_string()),
        ("X-Amz-SignedHeaders".to_owned(), "host".to_owned()),
    ]);
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    let canonical_query = encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // S3 encodes the path once: the key as written, each byte outside the unreserved set.
    let canonical_uri = uri_encode(&percent_decode(path), true);
    let canonical = format!(
        "GET\n{canonical_uri}\n{canonical_query}\nhost:{authority}\n\nhost\nUNSIGNED-PAYLOAD"
    );
    let signature = signature(
        secret,
        date,
        region,
        service,
        &string_to_sign(&amz_date, &scope, &canonical),
    );
    Some(format!(
        "{scheme}://{authority}{canonical_uri}?{canonical_query}&X-Amz-Signature={signature}"
    ))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    crate::store::keys::push_hex(&mut out, bytes);
    out
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Seconds since the epoch of an ISO-8601 basic timestamp, `20150830T123600Z`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// `20150830T123600Z` for seconds since the epoch.
pub fn format_amz_date(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// Howard Hinnant's algorithms between civil dates and days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {

    #[test]
    fn presigned_urls_match_aws_s3_example() {
        // AWS's "Authenticating Requests: Using Query Parameters" example for S3.
        let now = parse_amz_date("20130524T000000Z").unwrap();
        let url = presign_url(
            "https://examplebucket.s3.amazonaws.com/test.txt",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "s3",
            now,
            86_400,
        )
        .unwrap();
        assert!(url.starts_with("https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"), "{url}");
        assert!(
            url.ends_with(
                "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
        assert!(presign_url("no-scheme", "a", "b", "r", "s3", now, 60).is_none());
    }

    use super::*;

    // The credentials and time of AWS's SigV4 test suite.
    const KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn suite_headers() -> Vec<(String, String)> {
        vec![
            ("host".into(), "example.amazonaws.com".into()),
            ("x-amz-date".into(), DATE.into()),
        ]
    }

    fn authorization(method: &str, path: &str, query: &str) -> String {
        let headers = suite_headers();
        let request = SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            headers: &headers,
            body: b"",
        };
        authorization_header(&request, KEY, SECRET, "us-east-1", "service", DATE)
    }

    fn signature_of(authorization: &str) -> &str {
        authorization
            .rsplit("Signature=")
            .next()
            .unwrap_or_default()
    }

    #[test]
    fn signs_the_aws_test_suite_requests() {
        assert_eq!(
            authorization("GET", "/", ""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // get-vanilla-query-order-key-case
        assert_eq!(
            signature_of(&authorization("GET", "/", "Param2=value2&Param1=value1")),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
        // post-vanilla
        assert_eq!(
            signature_of(&authorization("POST", "/", "")),
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
        // get-utf8
        assert_eq!(
            signature_of(&authorization("GET", "/ሴ", "")),
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
        );
    }

    fn signed(method: &str, path: &str, query: &str) -> Vec<(String, String)> {
        let mut headers = suite_headers();
        let request = SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            headers: &headers,
            body: b"",
        };
        let auth = authorization_header(&request, KEY, SECRET, "us-east-1", "service", DATE);
        headers.push(("authorization".into(), auth));
        headers
    }

    fn check(
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        now: i64,
    ) -> Result<Signer, SigV4Error> {
        let request = SignedRequest {
            method,
            raw_path: path,
            raw_query: query,
            headers,
            body: b"",
        };
        verify(
            &request,
            |k| (k == KEY).then(|| SECRET.to_owned()),
            "us-east-1",
            now,
        )
    }

    fn suite_time() -> i64 {
        parse_amz_date(DATE).unwrap_or_default()
    }

    #[test]
    fn verifies_a_signed_request_and_names_the_signer() {
        let headers = signed("GET", "/things", "maxResults=5");
        let signer = check("GET", "/things", "maxResults=5", &headers, suite_time());
        assert_eq!(
            signer,
            Ok(Signer {
                access_key_id: KEY.into(),
                region: "us-east-1".into(),
                service: "service".into(),
            })
        );
    }

    #[test]
    fn refuses_tampering_unknown_keys_skew_and_missing_signatures() {
        let headers = signed("GET", "/things", "");
        let now = suite_time();
        assert_eq!(
            check("GET", "/other", "", &headers, now),
            Err(SigV4Error::Mismatch)
        );
        assert_eq!(
            check("DELETE", "/things", "", &headers, now),
            Err(SigV4Error::Mismatch)
        );
        assert!(matches!(
            check("GET", "/things", "", &headers, now + 16 * 60),
            Err(SigV4Error::Expired(_))
        ));
        assert!(check("GET", "/things", "", &headers, now + 14 * 60).is_ok());
        assert_eq!(
            check("GET", "/things", "", &suite_headers(), now),
            Err(SigV4Error::Missing)
        );
        let mut other_key = headers.clone();
        if let Some((_, v)) = other_key.iter_mut().find(|(k, _)| k == "authorization") {
            *v = v.replace("AKIDEXAMPLE", "AKIDOTHER");
        }
        assert_eq!(
            check("GET", "/things", "", &other_key, now),
            Err(SigV4Error::UnknownAccessKey)
        );
        let mut truncated = headers;
        if let Some((_, v)) = truncated.iter_mut().find(|(k, _)| k == "authorization") {
            *v = v.split(", Signature").next().unwrap_or_default().to_owned();
        }
        assert!(matches!(
            check("GET", "/things", "", &truncated, now),
            Err(SigV4Error::Incomplete(_))
        ));
    }

    #[test]
    fn refuses_a_credential_scoped_to_another_region() {
        let mut headers = suite_headers();
        let request = SignedRequest {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: &headers,
            body: b"",
        };
        let auth = authorization_header(&request, KEY, SECRET, "eu-west-1", "service", DATE);
        headers.push(("authorization".into(), auth));
        assert_eq!(
            check("GET", "/", "", &headers, suite_time()),
            Err(SigV4Error::WrongRegion)
        );
    }

    #[test]
    fn verifies_presigned_urls_until_they_expire() {
        // Sign the query form by hand, as a presigning SDK does.
        let headers = vec![("host".to_owned(), "example.amazonaws.com".to_owned())];
        let base = "X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host";
        let request = SignedRequest {
            method: "GET",
            raw_path: "/things",
            raw_query: base,
            headers: &headers,
            body: b"",
        };
        let query = parse_query(base);
        let canonical = canonical_request(
            &request,
            &query,
            None,
            &["host".to_owned()],
            UNSIGNED_PAYLOAD,
        );
        let sig = signature(
            SECRET,
            "20150830",
            "us-east-1",
            "service",
            &string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &canonical),
        );
        let url = format!("{base}&X-Amz-Signature={sig}");
        let now = suite_time();
        assert!(check("GET", "/things", &url, &headers, now + 30).is_ok());
        assert!(matches!(
            check("GET", "/things", &url, &headers, now + 61),
            Err(SigV4Error::Expired(_))
        ));
        let tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
        assert_eq!(
            check("GET", "/things", &tampered, &headers, now + 30),
            Err(SigV4Error::Mismatch)
        );
    }

    #[test]
    fn dates_round_trip_through_the_basic_format() {
        assert_eq!(parse_amz_date(DATE), Some(1_440_938_160));
        assert_eq!(format_amz_date(1_440_938_160), DATE);
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }
}
