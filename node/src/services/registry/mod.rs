//! The registry: things, thing types, static thing groups, and the principals (certificates)
//! attached to things. A thing's creation, update and deletion are announced on
//! `$aws/events/thing/{name}/{created|updated|deleted}`, as AWS IoT's registry events are.

pub mod groups;
mod principals;
mod provisioned;

pub use provisioned::StagedThing;
pub mod things;
pub mod types;

use std::collections::BTreeMap;

use serde_json::json;

use super::arn::{Arns, Kind};
use super::certs::Certificates;
use super::error::{Error, Result};
use super::records::Records;
use crate::broker::Broker;
use things::ThingRecord;

/// The registry of one account.
#[derive(Clone)]
pub struct Registry {
    records: Records,
    arns: Arns,
    certs: Certificates,
    broker: Broker,
    account_id: String,
}

/// A change of attributes: merged into the present ones, or replacing them all. An empty
/// value removes its attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeChange {
    pub attributes: BTreeMap<String, String>,
    pub merge: bool,
}

impl AttributeChange {
    fn apply(self, to: &mut BTreeMap<String, String>) {
        if !self.merge {
            to.clear();
        }
        for (name, value) in self.attributes {
            if value.is_empty() {
                to.remove(&name);
            } else {
                to.insert(name, value);
            }
        }
    }
}

/// A new resource's attributes: those with an empty value are not set.
fn initial_attributes(attributes: BTreeMap<String, String>) -> BTreeMap<String, String> {
    attributes
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// A name of a thing, thing type or group: AWS's pattern and length.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::validation(
            field,
            name,
            "Member must have length between 1 and 128",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        return Err(Error::validation(
            field,
            name,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+",
        ));
    }
    Ok(())
}

/// An attribute name of a thing or group, by AWS's pattern and length.
fn check_attribute_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b))
    {
        return Err(Error::validation(
            field,
            name,
            "Map keys must satisfy constraint: [Member must have length less than or equal to 128, Member must satisfy regular expression pattern: [a-zA-Z0-9_.,@/:#-]+]",
        ));
    }
    Ok(())
}

impl Registry {
    pub fn new(
        records: Records,
        arns: Arns,
        certs: Certificates,
        broker: Broker,
        account_id: &str,
    ) -> Self {
        Self {
            records,
            arns,
            certs,
            broker,
            account_id: account_id.to_owned(),
        }
    }

    pub fn arns(&self) -> &Arns {
        &self.arns
    }

    pub fn thing_arn(&self, name: &str) -> String {
        self.arns.of(Kind::Thing, name)
    }

    pub fn group_arn(&self, name: &str) -> String {
        self.arns.of(Kind::ThingGroup, name)
    }

    pub fn thing_type_arn(&self, name: &str) -> String {
        self.arns.of(Kind::ThingType, name)
    }

    /// Publishes a registry event on `$aws/events/thing/{name}/{operation}`, as AWS IoT does,
    /// if anyone listens.
    pub(crate) fn thing_event(&self, operation: &str, thing: &ThingRecord) {
        let topic = format!(
            "$aws/events/thing/{}/{}",
            thing.thing_name,
            operation.to_ascii_lowercase()
        );
        if !self.broker.wants(&topic) {
            return;
        }
        let payload = json!({
            "eventType": "THING_EVENT",
            "eventId": crate::ids::uuid_v4(),
            "timestamp": crate::clock::epoch_millis(),
            "operation": operation,
            "accountId": self.account_id,
            "thingId": thing.thing_id,
            "thingName": thing.thing_name,
            "versionNumber": thing.version,
            "thingTypeName": thing.thing_type_name,
            "attributes": thing.attributes,
        });
        self.broker.publish_event(topic, payload.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_aws_rules() {
        assert!(check_name("thingName", "sensor-1:a_b").is_ok());
        assert!(check_name("thingName", "").is_err());
        assert!(check_name("thingName", "has space").is_err());
        assert!(check_name("thingName", &"x".repeat(129)).is_err());
    }

    #[test]
    fn attribute_changes_merge_or_replace_and_empty_values_remove() {
        let mut attributes = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        AttributeChange {
            attributes: BTreeMap::from([
                ("a".to_owned(), String::new()),
                ("c".to_owned(), "3".to_owned()),
            ]),
            merge: true,
        }
        .apply(&mut attributes);
        assert_eq!(
            attributes,
            BTreeMap::from([
                ("b".to_owned(), "2".to_owned()),
                ("c".to_owned(), "3".to_owned())
            ])
        );
        AttributeChange {
            attributes: BTreeMap::from([("d".to_owned(), "4".to_owned())]),
            merge: false,
        }
        .apply(&mut attributes);
        assert_eq!(
            attributes,
            BTreeMap::from([("d".to_owned(), "4".to_owned())])
        );
    }
}
