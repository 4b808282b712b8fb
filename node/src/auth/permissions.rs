//! What one connection may do: its policies compiled against its own variables, so that a
//! check on the publish path is a scan of byte patterns, with no allocation and no I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::policy::{Context, Effect, Glob, Policy};
use crate::broker::Signal;

/// The actions a device takes, as named in policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
    GetThingShadow,
    UpdateThingShadow,
    DeleteThingShadow,
    ListNamedShadowsForThing,
    GetRetainedMessage,
    ListRetainedMessages,
    DescribeJobExecution,
    GetPendingJobExecutions,
    StartNextPendingJobExecution,
    UpdateJobExecution,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::RetainPublish,
        Action::GetThingShadow,
        Action::UpdateThingShadow,
        Action::DeleteThingShadow,
        Action::ListNamedShadowsForThing,
        Action::GetRetainedMessage,
        Action::ListRetainedMessages,
        Action::DescribeJobExecution,
        Action::GetPendingJobExecutions,
        Action::StartNextPendingJobExecution,
        Action::UpdateJobExecution,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
            Action::GetThingShadow => "iot:GetThingShadow",
            Action::UpdateThingShadow => "iot:UpdateThingShadow",
            Action::DeleteThingShadow => "iot:DeleteThingShadow",
            Action::ListNamedShadowsForThing => "iot:ListNamedShadowsForThing",
            Action::GetRetainedMessage => "iot:GetRetainedMessage",
            Action::ListRetainedMessages => "iot:ListRetainedMessages",
            Action::DescribeJobExecution => "iot:DescribeJobExecution",
            Action::GetPendingJobExecutions => "iot:GetPendingJobExecutions",
            Action::StartNextPendingJobExecution => "iot:StartNextPendingJobExecution",
            Action::UpdateJobExecution => "iot:UpdateJobExecution",
        }
    }

    /// The label of `halyard_authorization_denied_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
            Action::RetainPublish => "retain_publish",
            _ => "other",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// What the action applies to: `client/`, `topic/`, `topicfilter/` or `thing/`.
    pub fn resource_kind(self) -> &'static str {
        match self {
            Action::Connect => "client/",
            Action::Subscribe => "topicfilter/",
            Action::Publish
            | Action::Receive
            | Action::RetainPublish
            | Action::GetRetainedMessage
            | Action::ListRetainedMessages => "topic/",
            _ => "thing/",
        }
    }
}

struct CompiledStatement {
    effect: Effect,
    actions: u32,
    resources: Vec<Vec<Glob>>,
}

/// A connection's policies, compiled.
pub struct Permissions {
    allow_all: bool,
    /// `arn:aws:iot:{region}:{account}:`, the start of every resource.
    arn_prefix: String,
    statements: Vec<CompiledStatement>,
}

impl Permissions {
    /// Everything allowed: the anonymous listener of a development setup.
    pub fn allow_all() -> Self {
        Self {
            allow_all: true,
            arn_prefix: String::new(),
            statements: Vec::new(),
        }
    }

    /// Compiles `policies` for a connection whose variables are `context`. Statements whose
    /// conditions fail for this connection, and resources whose variables have no value,
    /// drop out here, once.
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = &'a Policy>,
        context: &Context,
        arn_prefix: &str,
    ) -> Self {
        let mut statements = Vec::new();
        for policy in policies {
            for statement in policy.statements() {
                if !statement.conditions_hold(context) {
                    continue;
                }
                let actions = Action::ALL
                    .iter()
                    .filter(|a| statement.names_action(a.name(), context))
                    .fold(0, |bits, a| bits | a.bit());
                let resources: Vec<Vec<Glob>> = statement.resolved_resources(context).collect();
                if actions != 0 && !resources.is_empty() {
                    statements.push(CompiledStatement {
                        effect: statement.effect(),
                        actions,
                        resources,
                    });
                }
            }
        }
        // Denials first: the first match decides when it is one.
        statements.sort_by_key(|s| s.effect != Effect::Deny);
        Self {
            allow_all: false,
            arn_prefix: arn_prefix.to_owned(),
            statements,
        }
    }

    /// Whether `action` is allowed on the resource `{arn_prefix}{kind}{name}`.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        if self.allow_all {
            return true;
        }
        let text = [
            self.arn_prefix.as_bytes(),
            action.resource_kind().as_bytes(),
            name.as_bytes(),
        ];
        for statement in &self.statements {
            if statement.actions & action.bit() == 0 {
                continue;
            }
            if statement
                .resources
                .iter()
                .any(|r| super::policy::glob_match_parts(r, &text))
            {
                // Denials come first, so the first match decides.
                return statement.effect == Effect::Allow;
            }
        }
        false
    }
}

/// A connection's access, shared with whatever may change it while the connection lives:
/// policies are swapped in when they change, and a revoked access ends the connection.
pub struct Access {
    permissions: RwLock<Arc<Permissions>>,
    revoked: AtomicBool,
    waker: RwLock<Option<Arc<Signal>>>,
    /// The certificate id or other principal the connection authenticated as; empty for
    /// anonymous connections.
    pub principal: String,
}

impl Access {
    pub fn new(permissions: Permissions, principal: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            permissions: RwLock::new(Arc::new(permissions)),
            revoked: AtomicBool::new(false),
            waker: RwLock::new(None),
            principal: principal.into(),
        })
    }

    pub fn anonymous(permissions: Arc<Permissions>) -> Arc<Self> {
        Arc::new(Self {
            permissions: RwLock::new(permissions),
            revoked: AtomicBool::new(false),
            waker: RwLock::new(None),
            principal: String::new(),
        })
    }

    pub fn allows(&self, action: Action, name: &str) -> bool {
        !self.is_revoked() && self.permissions.read().allows(action, name)
    }

    /// The connection to wake when this access changes.
    pub fn attach(&self, waker: Arc<Signal>) {
        *self.waker.write() = Some(waker);
    }

    pub fn replace(&self, permissions: Permissions) {
        *self.permissions.write() = Arc::new(permissions);
    }

    /// Ends the connection: it notices on its next wake-up.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        if let Some(waker) = self.waker.read().as_ref() {
            waker.wake();
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "arn:aws:iot:us-east-1:000000000000:";

    fn compile(document: &str, context: &Context) -> Permissions {
        let policy = Policy::parse(document).unwrap();
        Permissions::compile([&policy], context, PREFIX)
    }

    #[test]
    fn compiled_permissions_agree_with_the_policy() {
        let document = format!(
            r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Action":"iot:Connect","Resource":"{PREFIX}client/${{iot:Connection.Thing.ThingName}}"}},
            {{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"{PREFIX}topic/things/${{iot:Connection.Thing.ThingName}}/*"}},
            {{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{PREFIX}topicfilter/things/${{iot:Connection.Thing.ThingName}}/#"}},
            {{"Effect":"Deny","Action":"iot:Publish","Resource":"{PREFIX}topic/things/*/admin"}},
            {{"Effect":"Allow","Action":"iot:Pub*","Resource":"{PREFIX}topic/dev-?"}}]}}"#
        );
        let mut context = Context::new();
        context.set("iot:ClientId", "lamp");
        context.set("iot:Connection.Thing.ThingName", "lamp");
        let permissions = compile(&document, &context);
        assert!(permissions.allows(Action::Connect, "lamp"));
        assert!(!permissions.allows(Action::Connect, "lamp2"));
        assert!(permissions.allows(Action::Publish, "things/lamp/state"));
        assert!(permissions.allows(Action::Receive, "things/lamp/state/deep"));
        assert!(!permissions.allows(Action::Publish, "things/lamp/admin"));
        assert!(!permissions.allows(Action::Publish, "things/other/state"));
        assert!(permissions.allows(Action::Subscribe, "things/lamp/#"));
        assert!(!permissions.allows(Action::Subscribe, "things/+/#"));
        assert!(permissions.allows(Action::Publish, "dev-é"));
        assert!(!permissions.allows(Action::Publish, "dev-12"));
        assert!(!permissions.allows(Action::Receive, "dev-1"));

        // Without a thing, the thing's statements never match.
        let bare = compile(&document, &Context::new());
        assert!(!bare.allows(Action::Connect, "lamp"));
        assert!(bare.allows(Action::Publish, "dev-1"));
    }

    #[test]
    fn access_can_be_swapped_and_revoked() {
        let access = Access::anonymous(Arc::new(Permissions::allow_all()));
        assert!(access.allows(Action::Publish, "a"));
        access.replace(compile(
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Subscribe","Resource":"*"}}"#,
            &Context::new(),
        ));
        assert!(!access.allows(Action::Publish, "a"));
        assert!(access.allows(Action::Subscribe, "a"));
        access.revoke();
        assert!(!access.allows(Action::Subscribe, "a"));
    }
}
