//! Topic rule destinations: the HTTP URLs the `http` action may post to. AWS confirms a
//! destination by a request to its URL; Halyard confirms it at once (the cluster's operators
//! choose its rules), and keeps the rest of the life cycle: a DISABLED destination stops
//! every `http` action whose URL it covers, until it is enabled again.

use serde::{Deserialize, Serialize};

use super::Rules;
use crate::clock::epoch_seconds_fraction;
use crate::services::arn::Kind;
use crate::services::error::{Error, Result};
use crate::services::records::Page;
use crate::store::keys;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRecord {
    pub id: String,
    pub confirmation_url: String,
    /// ENABLED or DISABLED.
    pub status: String,
    pub created_at: f64,
    pub last_updated_at: f64,
}

impl DestinationRecord {
    /// Whether it covers `url` (its confirmation URL is a prefix of it).
    pub fn covers(&self, url: &str) -> bool {
        url.starts_with(&self.confirmation_url)
    }
}

const MAX_URL: usize = 2000;

impl Rules {
    pub fn destination_arn(&self, id: &str) -> String {
        self.arns.of(Kind::RuleDestination, id)
    }

    fn destination_id<'a>(&self, arn: &'a str) -> Result<&'a str> {
        self.arns
            .name(Kind::RuleDestination, arn)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| Error::invalid(format!("{arn} is not a topic rule destination ARN")))
    }

    fn destination_denied(arn: &str) -> Error {
        Error::Unauthorized(format!(
            "Access to topic rule destination '{arn}' was denied"
        ))
    }

    async fn all_destinations(&self) -> Result<Vec<DestinationRecord>> {
        Ok(Page::first(10_000)
            .collect(
                &self.records,
                keys::RULE_DESTINATIONS,
                |_: &DestinationRecord| true,
            )
            .await?
            .0)
    }

    /// CreateTopicRuleDestination: confirmed, and ENABLED, at once.
    pub async fn create_destination(&self, confirmation_url: &str) -> Result<DestinationRecord> {
        if confirmation_url.len() > MAX_URL
            || !(confirmation_url.starts_with("https://")
                || confirmation_url.starts_with("http://"))
        {
            return Err(Error::invalid(format!(
                "confirmationUrl {confirmation_url} is not an https:// or http:// URL of at most {MAX_URL} characters"
            )));
        }
        if let Some(existing) = self
            .all_destinations()
            .await?
            .into_iter()
            .find(|d| d.confirmation_url == confirmation_url)
        {
            return Err(Error::already_exists(
                format!("A topic rule destination for {confirmation_url} already exists"),
                existing.id.as_str(),
                self.destination_arn(&existing.id),
            ));
        }
        let now = epoch_seconds_fraction();
        let record = DestinationRecord {
            id: crate::ids::uuid_v4(),
            confirmation_url: confirmation_url.to_owned(),
            status: "ENABLED".to_owned(),
            created_at: now,
            last_updated_at: now,
        };
        if !self
            .records
            .create(&keys::rule_destination(&record.id), &record)
            .await?
        {
            return Err(Error::conflict("The destination changed meanwhile; retry."));
        }
        Ok(record)
    }

    pub async fn destination(&self, arn: &str) -> Result<DestinationRecord> {
        let id = self.destination_id(arn)?;
        self.records
            .get::<DestinationRecord>(&keys::rule_destination(id))
            .await?
            .map(|d| d.value)
            .ok_or_else(|| Self::destination_denied(arn))
    }

    pub async fn list_destinations(
        &self,
        page: &Page,
    ) -> Result<(Vec<DestinationRecord>, Option<String>)> {
        page.collect(
            &self.records,
            keys::RULE_DESTINATIONS,
            |_: &DestinationRecord| true,
        )
        .await
    }

    /// UpdateTopicRuleDestination: ENABLED or DISABLED.
    pub async fn update_destination(&self, arn: &str, status: &str) -> Result<()> {
        if !matches!(status, "ENABLED" | "DISABLED") {
            return Err(Error::invalid(format!(
                "A topic rule destination's status can be set to ENABLED or DISABLED, not {status}"
            )));
        }
        let id = self.destination_id(arn)?;
        let key = keys::rule_destination(id);
        let current = self
            .records
            .get::<DestinationRecord>(&key)
            .await?
            .ok_or_else(|| Self::destination_denied(arn))?;
        let mut record = current.value;
        record.status = status.to_owned();
        record.last_updated_at = epoch_seconds_fraction();
        if !self
            .records
            .replace(&key, &record, current.mod_revision)
            .await?
        {
            return Err(Error::conflict("The destination changed meanwhile; retry."));
        }
        Ok(())
    }

    pub async fn delete_destination(&self, arn: &str) -> Result<()> {
        let id = self.destination_id(arn)?;
        let key = keys::rule_destination(id);
        let current = self
            .records
            .get::<DestinationRecord>(&key)
            .await?
            .ok_or_else(|| Self::destination_denied(arn))?;
        if !self.records.delete(&key, current.mod_revision).await? {
            return Err(Error::conflict("The destination changed meanwhile; retry."));
        }
        Ok(())
    }

    /// A destination for every `http` action's URL that none covers yet (its confirmation
    /// URL, or the URL up to its first template), as AWS creates them with the rule.
    pub(super) async fn ensure_destinations(&self, urls: &[String]) -> Result<()> {
        if urls.is_empty() {
            return Ok(());
        }
        let existing = self.all_destinations().await?;
        for url in urls {
            if existing.iter().any(|d| d.covers(url)) {
                continue;
            }
            match self.create_destination(url).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
