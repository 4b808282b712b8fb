//! What the policies say for a principal: which apply (its own, then those of its thing's
//! groups and their ancestors), the policy variables of a connection, and what they allow
//! (TestAuthorization).

use std::collections::BTreeSet;

use super::{Policies, PolicyRecord};
use crate::auth::policy::{Context, Effect, Policy};
use crate::services::error::{Error, Result};
use crate::services::links;
use crate::services::registry::check_name;
use crate::store::keys;

/// The action a TestAuthorization question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionType {
    Publish,
    Subscribe,
    Receive,
    Connect,
}

impl ActionType {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "PUBLISH" => Self::Publish,
            "SUBSCRIBE" => Self::Subscribe,
            "RECEIVE" => Self::Receive,
            "CONNECT" => Self::Connect,
            other => {
                return Err(Error::validation(
                    "authInfos.member.actionType",
                    other,
                    "Member must satisfy enum value set: [PUBLISH, SUBSCRIBE, RECEIVE, CONNECT]",
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "PUBLISH",
            Self::Subscribe => "SUBSCRIBE",
            Self::Receive => "RECEIVE",
            Self::Connect => "CONNECT",
        }
    }

    fn iot_action(self) -> &'static str {
        match self {
            Self::Publish => "iot:Publish",
            Self::Subscribe => "iot:Subscribe",
            Self::Receive => "iot:Receive",
            Self::Connect => "iot:Connect",
        }
    }
}

/// One question: may the principal take `action` on every one of `resources`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub action: ActionType,
    pub resources: Vec<String>,
}

/// TestAuthorization's request.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationTest {
    pub principal: Option<String>,
    pub client_id: Option<String>,
    pub auth_infos: Vec<AuthInfo>,
    pub policies_to_add: Vec<String>,
    pub policies_to_skip: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    ExplicitDeny,
    ImplicitDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "ALLOWED",
            Self::ExplicitDeny => "EXPLICIT_DENY",
            Self::ImplicitDeny => "IMPLICIT_DENY",
        }
    }
}

/// The answer to one question, with the names of the policies behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResult {
    pub info: AuthInfo,
    pub decision: Decision,
    pub allowing: Vec<String>,
    pub explicitly_denying: Vec<String>,
    /// With an implicit deny: the policies that allowed none of it.
    pub implicitly_denying: Vec<String>,
}

/// At most this many questions in one TestAuthorization.
const MAX_AUTH_INFOS: usize = 10;

impl Policies {
    /// The names of the policies in effect for `principal` connected as `thing`: the
    /// principal's own, then those of the thing's groups and their ancestors.
    pub async fn effective_names(
        &self,
        principal: Option<&str>,
        thing: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut names = Vec::new();
        if let Some(p) = principal {
            names.extend(links::policies_of(&self.records, p).await?);
        }
        if let Some(t) = thing {
            for group in self.registry.groups_and_ancestors_of(t).await? {
                let arn = self.registry.group_arn(&group);
                for p in links::policies_of(&self.records, &arn).await? {
                    if !names.contains(&p) {
                        names.push(p);
                    }
                }
            }
        }
        Ok(names)
    }

    /// The default version's document of each named policy that still exists.
    pub async fn documents(&self, names: &[String]) -> Result<Vec<(String, String)>> {
        let mut documents = Vec::new();
        for name in names {
            let Some(policy) = self
                .records
                .get::<PolicyRecord>(&keys::policy(name))
                .await?
            else {
                continue;
            };
            let version = self
                .version_record(name, policy.value.default_version)
                .await?;
            documents.push((name.clone(), version.document));
        }
        Ok(documents)
    }

    /// GetEffectivePolicies: the name and document of each policy in effect.
    pub async fn effective(
        &self,
        principal: Option<&str>,
        thing: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        if let Some(t) = thing {
            check_name("thingName", t)?;
            self.registry.thing(t).await?;
        }
        if let Some(p) = principal {
            self.check_target(p).await?;
        }
        let names = self.effective_names(principal, thing).await?;
        self.documents(&names).await
    }

    /// The values a connection with `client_id` authenticated as `principal` gives to policy
    /// variables: the thing of that name if the principal is attached to it; and that thing.
    pub async fn connection_context(
        &self,
        client_id: Option<&str>,
        principal: Option<&str>,
    ) -> Result<(Context, Option<String>)> {
        let mut context = Context::new();
        let Some(client_id) = client_id else {
            return Ok((context, None));
        };
        context.set("iot:ClientId", client_id);
        let attached = match principal {
            Some(p) => links::principal_has_thing(&self.records, p, client_id).await?,
            None => false,
        };
        let thing = if attached {
            self.registry.find_thing(client_id).await?
        } else {
            None
        };
        let Some(thing) = thing else {
            context.set("iot:Connection.Thing.IsAttached", "false");
            return Ok((context, None));
        };
        context.set("iot:Connection.Thing.ThingName", thing.thing_name.clone());
        if let Some(t) = &thing.thing_type_name {
            context.set("iot:Connection.Thing.ThingTypeName", t.clone());
        }
        for (k, v) in &thing.attributes {
            context.set(format!("iot:Connection.Thing.Attributes[{k}]"), v.clone());
        }
        context.set("iot:Connection.Thing.IsAttached", "true");
        Ok((context, Some(thing.thing_name)))
    }

    /// TestAuthorization: what the principal's policies (give or take some) decide for each
    /// question.
    pub async fn test_authorization(&self, test: AuthorizationTest) -> Result<Vec<AuthResult>> {
        if test.auth_infos.is_empty() || test.auth_infos.len() > MAX_AUTH_INFOS {
            return Err(Error::validation(
                "authInfos",
                &test.auth_infos.len().to_string(),
                "Member must have length between 1 and 10",
            ));
        }
        if let Some(p) = &test.principal {
            self.check_target(p).await?;
        }
        let (context, thing) = self
            .connection_context(test.client_id.as_deref(), test.principal.as_deref())
            .await?;
        let mut names = self
            .effective_names(test.principal.as_deref(), thing.as_deref())
            .await?;
        for extra in &test.policies_to_add {
            self.versioned(extra).await?;
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names.retain(|n| !test.policies_to_skip.contains(n));
        let mut policies = Vec::new();
        for (name, document) in self.documents(&names).await? {
            let parsed = Policy::parse(&document).map_err(|e| {
                Error::internal(format!("stored policy {name} is unreadable: {}", e.0))
            })?;
            policies.push((name, parsed));
        }
        test.auth_infos
            .into_iter()
            .map(|info| decide(&policies, &context, info))
            .collect()
    }
}

fn decide(policies: &[(String, Policy)], context: &Context, info: AuthInfo) -> Result<AuthResult> {
    if info.resources.is_empty() {
        return Err(Error::invalid("Each authInfo needs at least one resource"));
    }
    let action = info.action.iot_action();
    let mut allowing = BTreeSet::new();
    let mut denying = BTreeSet::new();
    let mut all_allowed = true;
    for resource in &info.resources {
        let mut allowed_here = false;
        for (name, policy) in policies {
            match policy.effect(action, resource, context) {
                Some(Effect::Deny) => {
                    denying.insert(name.clone());
                }
                Some(Effect::Allow) => {
                    allowing.insert(name.clone());
                    allowed_here = true;
                }
                None => {}
            }
        }
        all_allowed &= allowed_here;
    }
    let decision = if !denying.is_empty() {
        Decision::ExplicitDeny
    } else if all_allowed {
        Decision::Allowed
    } else {
        Decision::ImplicitDeny
    };
    let implicitly_denying = if decision == Decision::ImplicitDeny {
        policies
            .iter()
            .filter(|(n, _)| !allowing.contains(n))
            .map(|(n, _)| n.clone())
            .collect()
    } else {
        Vec::new()
    };
    Ok(AuthResult {
        info,
        decision,
        allowing: allowing.into_iter().collect(),
        explicitly_denying: denying.into_iter().collect(),
        implicitly_denying,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_types_map_to_iot_actions() {
        assert_eq!(
            ActionType::parse("PUBLISH").map(ActionType::iot_action),
            Ok("iot:Publish")
        );
        assert!(ActionType::parse("publish").is_err());
    }

    #[test]
    fn a_deny_wins_and_every_resource_must_be_allowed() {
        let allow = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:r:a:topic/ok/*"}]}"#,
        )
        .unwrap();
        let deny = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:r:a:topic/ok/secret"}]}"#,
        )
        .unwrap();
        let policies = vec![("allow".to_owned(), allow), ("deny".to_owned(), deny)];
        let ask = |resources: &[&str]| {
            decide(
                &policies,
                &Context::new(),
                AuthInfo {
                    action: ActionType::Publish,
                    resources: resources.iter().map(|r| (*r).to_owned()).collect(),
                },
            )
            .unwrap()
        };
        let ok = ask(&["arn:aws:iot:r:a:topic/ok/1"]);
        assert_eq!(ok.decision, Decision::Allowed);
        assert_eq!(ok.allowing, vec!["allow".to_owned()]);
        assert_eq!(
            ask(&["arn:aws:iot:r:a:topic/ok/secret"]).decision,
            Decision::ExplicitDeny
        );
        let partly = ask(&["arn:aws:iot:r:a:topic/ok/1", "arn:aws:iot:r:a:topic/other"]);
        assert_eq!(partly.decision, Decision::ImplicitDeny);
        assert_eq!(partly.implicitly_denying, vec!["deny".to_owned()]);
    }
}
