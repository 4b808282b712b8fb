//! JSON Web Tokens checked against a JSON Web Key Set: the built-in authorizer function for
//! fleets whose devices carry tokens from an identity provider (RS256/384/512, ES256/384).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// How long a key set is used before it is read again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// A token naming a key the cached set lacks refetches the set, at most this often.
const JWKS_REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 60;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JSON Web Token")]
    Malformed,
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    #[error("no key in the key set verifies the token")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not {0}")]
    Issuer(String),
    #[error("the token is not for audience {0}")]
    Audience(String),
    #[error("cannot read the key set: {0}")]
    KeySet(String),
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    pub fn parse(bytes: &[u8]) -> Result<Self, JwtError> {
        serde_json::from_slice(bytes).map_err(|e| JwtError::KeySet(e.to_string()))
    }

    fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn b64(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)
}

/// The claims of `token` if a key of `keys` signed it, it is within its validity at `now`
/// (seconds), and its issuer and audience are the expected ones.
pub fn verify(
    token: &str,
    keys: &KeySet,
    issuer: Option<&str>,
    audience: Option<&str>,
    now: i64,
) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let parsed: Header = serde_json::from_slice(&b64(header)?).map_err(|_| JwtError::Malformed)?;
    let signed = &token.trim()[..header.len() + 1 + payload.len()];
    let signature = b64(sig)?;
    let candidates = keys
        .keys
        .iter()
        .filter(|k| parsed.kid.is_none() || k.kid == parsed.kid);
    let mut verified = false;
    for key in candidates {
        if verifies(&parsed.alg, key, signed.as_bytes(), &signature)? {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(JwtError::Signature);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(payload)?).map_err(|_| JwtError::Malformed)?;
    let seconds = |name: &str| claims.get(name).and_then(Value::as_i64);
    if seconds("exp").is_some_and(|exp| now > exp + LEEWAY_SECS) {
        return Err(JwtError::Expired);
    }
    if seconds("nbf").is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if let Some(expected) = issuer
        && claims.get("iss").and_then(Value::as_str) != Some(expected)
    {
        return Err(JwtError::Issuer(expected.to_owned()));
    }
    if let Some(expected) = audience {
        let matches = match claims.get("aud") {
            Some(Value::String(a)) => a == expected,
            Some(Value::Array(items)) => items.iter().any(|a| a.as_str() == Some(expected)),
            _ => false,
        };
        if !matches {
            return Err(JwtError::Audience(expected.to_owned()));
        }
    }
    Ok(claims)
}

/// Whether `key` verifies `signature` over `message` under `alg`; a key of another type is
/// simply not the one.
fn verifies(alg: &str, key: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
    let rsa = match alg {
        "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        _ => None,
    };
    if let Some(algorithm) = rsa {
        let (Some(n), Some(e)) = (&key.n, &key.e) else {
            return Ok(false);
        };
        if key.kty != "RSA" {
            return Ok(false);
        }
        let components = RsaPublicKeyComponents {
            n: b64(n)?,
            e: b64(e)?,
        };
        return Ok(components.verify(algorithm, message, signature).is_ok());
    }
    let (algorithm, curve) = match alg {
        "ES256" => (&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
        "ES384" => (&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
        other => return Err(JwtError::Algorithm(other.to_owned())),
    };
    let (Some(x), Some(y)) = (&key.x, &key.y) else {
        return Ok(false);
    };
    if key.kty != "EC" || key.crv.as_deref() != Some(curve) {
        return Ok(false);
    }
    let mut point = vec![0x04];
    point.extend(b64(x)?);
    point.extend(b64(y)?);
    Ok(UnparsedPublicKey::new(algorithm, point)
        .verify(message, signature)
        .is_ok())
}

/// Where a key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    File(std::path::PathBuf),
    Url(String),
}

/// Key sets by source, read again after a while or when a token names a key they lack.
#[derive(Default)]
pub struct KeySets {
    cached: Mutex<HashMap<KeySource, (Instant, Arc<KeySet>)>>,
}

impl KeySets {
    /// The key set of `source`, fresh enough to know key `kid`.
    pub async fn get(
        &self,
        source: &KeySource,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, JwtError> {
        if let Some((read_at, keys)) = self.cached.lock().get(source).cloned() {
            let age = read_at.elapsed();
            let knows_kid = kid.is_none_or(|k| keys.has(k));
            if age < JWKS_TTL && (knows_kid || age < JWKS_REFETCH_AFTER) {
                return Ok(keys);
            }
        }
        let keys = Arc::new(match source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| JwtError::KeySet(format!("{}: {e}", path.display())))?;
                KeySet::parse(&bytes)?
            }
            KeySource::Url(url) => {
                let value = crate::http_client::shared()
                    .get_json(url, FETCH_TIMEOUT)
                    .await
                    .map_err(|e| JwtError::KeySet(e.to_string()))?;
                serde_json::from_value(value).map_err(|e| JwtError::KeySet(e.to_string()))?
            }
        });
        self.cached
            .lock()
            .insert(source.clone(), (Instant::now(), Arc::clone(&keys)));
        Ok(keys)
    }
}

/// The key id a token's header names, if any, without verifying anything.
pub fn key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    serde_json::from_slice::<Header>(&b64(header).ok()?)
        .ok()?
        .kid
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    fn encode(value: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn es256() -> (EcdsaKeyPair, KeySet) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let b = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "other", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "P-256", "x": b(&point[1..33]), "y": b(&point[33..])},
        ]});
        (pair, KeySet::parse(jwks.to_string().as_bytes()).unwrap())
    }

    fn token(pair: &EcdsaKeyPair, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            encode(&json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})),
            encode(claims)
        );
        let sig = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!(
            "{signed}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }

    #[test]
    fn a_signed_current_token_for_us_yields_its_claims() {
        let (pair, keys) = es256();
        let now = 1_800_000_000;
        let claims = json!({"sub": "dev1", "iss": "idp", "aud": ["halyard"], "exp": now + 60});
        let t = token(&pair, &claims);
        let got = verify(&t, &keys, Some("idp"), Some("halyard"), now).unwrap();
        assert_eq!(got["sub"], "dev1");
        assert_eq!(key_id(&t).as_deref(), Some("k1"));

        assert_eq!(
            verify(&t, &keys, Some("other"), None, now),
            Err(JwtError::Issuer("other".into()))
        );
        assert_eq!(
            verify(&t, &keys, None, Some("else"), now),
            Err(JwtError::Audience("else".into()))
        );
        assert_eq!(
            verify(&t, &keys, None, None, now + 3600),
            Err(JwtError::Expired)
        );
        let mut tampered = t.clone();
        tampered.insert_str(t.find('.').unwrap() + 1, "e30");
        assert!(verify(&tampered, &keys, None, None, now).is_err());
        let (stranger, _) = es256();
        assert_eq!(
            verify(&token(&stranger, &claims), &keys, None, None, now),
            Err(JwtError::Signature)
        );
        assert_eq!(
            verify("a.b", &keys, None, None, now),
            Err(JwtError::Malformed)
        );
    }
}
