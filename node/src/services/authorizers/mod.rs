//! Custom authorizers' registry: Create/Describe/List/Update/Delete and the default one. How a
//! client is authenticated through one is `admission::custom_auth`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::arn::{Arns, Kind};
use super::error::{Error, Result};
use super::records::{Page, Records, Versioned};
use super::registry::check_name;
use crate::auth::identity::signing_key::SigningKey;
use crate::clock::epoch_seconds_fraction;
use crate::store::keys;

/// AWS IoT allows this many authorizers per account.
const MAX_AUTHORIZERS: usize = 100;
/// A function ARN `jwt:{name}` is the built-in JWT verifier configured under that name.
pub const JWT_FUNCTION_PREFIX: &str = "jwt:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizerStatus {
    Active,
    Inactive,
}

impl AuthorizerStatus {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "ACTIVE" => Ok(Self::Active),
            "INACTIVE" => Ok(Self::Inactive),
            other => Err(Error::validation(
                "status",
                other,
                "Member must satisfy enum value set: [ACTIVE, INACTIVE]",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerRecord {
    pub authorizer_name: String,
    pub authorizer_function_arn: String,
    pub token_key_name: Option<String>,
    pub token_signing_public_keys: BTreeMap<String, String>,
    pub status: AuthorizerStatus,
    pub signing_disabled: bool,
    pub enable_caching_for_http: bool,
    pub creation_date: f64,
    pub last_modified_date: f64,
}

/// CreateAuthorizer's request.
#[derive(Debug, Clone)]
pub struct NewAuthorizer {
    pub function_arn: String,
    pub token_key_name: Option<String>,
    pub token_signing_public_keys: BTreeMap<String, String>,
    pub status: AuthorizerStatus,
    pub signing_disabled: bool,
    pub enable_caching_for_http: bool,
}

/// UpdateAuthorizer's request: what is given changes.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerUpdate {
    pub function_arn: Option<String>,
    pub token_key_name: Option<String>,
    pub token_signing_public_keys: Option<BTreeMap<String, String>>,
    pub status: Option<AuthorizerStatus>,
    pub enable_caching_for_http: Option<bool>,
}

/// The custom authorizers of one account.
#[derive(Clone)]
pub struct Authorizers {
    records: Records,
    arns: Arns,
    /// The names of the configured JWT verifiers (`aws.jwt_verifiers`).
    jwt_verifiers: Arc<BTreeSet<String>>,
}

fn check_authorizer_name(name: &str) -> Result<()> {
    check_name("authorizerName", name)?;
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_=,@-".contains(&b))
    {
        Ok(())
    } else {
        Err(Error::validation(
            "authorizerName",
            name,
            "Member must satisfy regular expression pattern: [\\w=,@-]+",
        ))
    }
}

fn check_token_key_name(name: &str) -> Result<()> {
    let valid = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::validation(
            "tokenKeyName",
            name,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ))
    }
}

/// Every key must be a usable RSA or EC public key, so that a bad one is refused here rather
/// than failing every connection later.
fn check_public_keys(keys: &BTreeMap<String, String>) -> Result<()> {
    for (name, pem) in keys {
        let valid_name = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b));
        if !valid_name {
            return Err(Error::validation(
                "tokenSigningPublicKeys",
                name,
                "Member must have keys matching [a-zA-Z0-9:_-]+",
            ));
        }
        if pem.len() > 5120 || SigningKey::parse(pem).is_none() {
            return Err(Error::invalid(format!(
                "The token signing public key {name} is not a PEM-encoded RSA or EC public key"
            )));
        }
    }
    Ok(())
}

fn changed_meanwhile() -> Error {
    Error::conflict("The authorizer changed meanwhile; retry.")
}

impl Authorizers {
    pub fn new(
        records: Records,
        arns: Arns,
        jwt_verifiers: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            records,
            arns,
            jwt_verifiers: Arc::new(jwt_verifiers.into_iter().collect()),
        }
    }

    pub fn arn(&self, name: &str) -> String {
        self.arns.of(Kind::Authorizer, name)
    }

    fn check_function(&self, arn: &str) -> Result<()> {
        if arn.len() > 2048 {
            return Err(Error::validation(
                "authorizerFunctionArn",
                arn,
                "Member must have length less than or equal to 2048",
            ));
        }
        if let Some(verifier) = arn.strip_prefix(JWT_FUNCTION_PREFIX)
            && !self.jwt_verifiers.contains(verifier)
        {
            return Err(Error::invalid(format!(
                "No JWT verifier {verifier} is configured (aws.jwt_verifiers)"
            )));
        }
        Ok(())
    }

    async fn versioned(&self, name: &str) -> Result<Versioned<AuthorizerRecord>> {
        self.records
            .get::<AuthorizerRecord>(&keys::authorizer(name))
            .await?
            .ok_or_else(|| Error::not_found(format!("Authorizer {name} does not exist")))
    }

    /// The authorizer `name`; not found if it does not exist.
    pub async fn authorizer(&self, name: &str) -> Result<AuthorizerRecord> {
        Ok(self.versioned(name).await?.value)
    }

    /// CreateAuthorizer.
    pub async fn create(&self, name: &str, new: NewAuthorizer) -> Result<()> {
        check_authorizer_name(name)?;
        if new.function_arn.is_empty() {
            return Err(Error::invalid("authorizerFunctionArn is required"));
        }
        self.check_function(&new.function_arn)?;
        if let Some(key_name) = &new.token_key_name {
            check_token_key_name(key_name)?;
        }
        if !new.signing_disabled
            && (new.token_signing_public_keys.is_empty() || new.token_key_name.is_none())
        {
            return Err(Error::invalid(
                "tokenKeyName and tokenSigningPublicKeys are required unless signingDisabled is true",
            ));
        }
        check_public_keys(&new.token_signing_public_keys)?;
        let (existing, _) = self
            .records
            .page::<AuthorizerRecord>(keys::AUTHORIZERS, None, MAX_AUTHORIZERS)
            .await?;
        if existing.len() >= MAX_AUTHORIZERS {
            return Err(Error::LimitExceeded(format!(
                "At most {MAX_AUTHORIZERS} authorizers may exist"
            )));
        }
        let now = epoch_seconds_fraction();
        let record = AuthorizerRecord {
            authorizer_name: name.to_owned(),
            authorizer_function_arn: new.function_arn,
            token_key_name: new.token_key_name,
            token_signing_public_keys: new.token_signing_public_keys,
            status: new.status,
            signing_disabled: new.signing_disabled,
            enable_caching_for_http: new.enable_caching_for_http,
            creation_date: now,
            last_modified_date: now,
        };
        if !self
            .records
            .create(&keys::authorizer(name), &record)
            .await?
        {
            return Err(Error::already_exists(
                format!("Authorizer {name} already exists"),
                name,
                self.arn(name),
            ));
        }
        Ok(())
    }

    /// ListAuthorizers, all or those of one status.
    pub async fn list(
        &self,
        status: Option<AuthorizerStatus>,
        page: &Page,
    ) -> Result<(Vec<AuthorizerRecord>, Option<String>)> {
        page.collect(&self.records, keys::AUTHORIZERS, |a: &AuthorizerRecord| {
            status.is_none_or(|s| a.status == s)
        })
        .await
    }

    /// UpdateAuthorizer.
    pub async fn update(&self, name: &str, update: AuthorizerUpdate) -> Result<()> {
        let current = self.versioned(name).await?;
        let mut record = current.value;
        if let Some(function) = update.function_arn {
            self.check_function(&function)?;
            record.authorizer_function_arn = function;
        }
        if let Some(key_name) = update.token_key_name {
            check_token_key_name(&key_name)?;
            record.token_key_name = Some(key_name);
        }
        if let Some(keys) = update.token_signing_public_keys {
            check_public_keys(&keys)?;
            record.token_signing_public_keys = keys;
        }
        if let Some(status) = update.status {
            record.status = status;
        }
        if let Some(caching) = update.enable_caching_for_http {
            record.enable_caching_for_http = caching;
        }
        if !record.signing_disabled && record.token_signing_public_keys.is_empty() {
            return Err(Error::invalid(
                "An authorizer that checks signatures needs tokenSigningPublicKeys",
            ));
        }
        record.last_modified_date = epoch_seconds_fraction();
        if !self
            .records
            .replace(&keys::authorizer(name), &record, current.mod_revision)
            .await?
        {
            return Err(changed_meanwhile());
        }
        Ok(())
    }

    /// DeleteAuthorizer: only an inactive one that is not the default.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let current = self.versioned(name).await?;
        if current.value.status == AuthorizerStatus::Active {
            return Err(Error::DeleteConflict(format!(
                "Authorizer {name} is ACTIVE; set it INACTIVE before deleting it"
            )));
        }
        if self.default_name().await?.as_deref() == Some(name) {
            return Err(Error::DeleteConflict(format!(
                "Authorizer {name} is the default authorizer"
            )));
        }
        if !self
            .records
            .delete(&keys::authorizer(name), current.mod_revision)
            .await?
        {
            return Err(changed_meanwhile());
        }
        Ok(())
    }

    /// The default authorizer's name, if one is set.
    pub async fn default_name(&self) -> Result<Option<String>> {
        Ok(self
            .records
            .get::<String>(keys::DEFAULT_AUTHORIZER)
            .await?
            .map(|r| r.value))
    }

    /// SetDefaultAuthorizer.
    pub async fn set_default(&self, name: &str) -> Result<()> {
        self.authorizer(name).await?;
        let current = self.records.get::<String>(keys::DEFAULT_AUTHORIZER).await?;
        if current.as_ref().is_some_and(|c| c.value == name) {
            return Err(Error::already_exists(
                format!("Authorizer {name} is already the default authorizer"),
                name,
                self.arn(name),
            ));
        }
        let revision = current.map_or(0, |c| c.mod_revision);
        if !self
            .records
            .replace(keys::DEFAULT_AUTHORIZER, &name, revision)
            .await?
        {
            return Err(Error::conflict(
                "The default authorizer changed meanwhile; retry.",
            ));
        }
        Ok(())
    }

    /// DescribeDefaultAuthorizer.
    pub async fn default_authorizer(&self) -> Result<AuthorizerRecord> {
        let name = self
            .default_name()
            .await?
            .ok_or_else(|| Error::not_found("No default authorizer is set"))?;
        self.authorizer(&name).await
    }
}
