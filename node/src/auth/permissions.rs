//! What one connection may do: its policies compiled against its own variables, so that a
//! check on the publish path is a scan of byte patterns, with no allocation and no I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::policy::{Context, Effect, Glob, Policy, after_prefix, glob_match_bytes};

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

/// One resource a statement names, as what remains to match after the connection's ARN
/// prefix and the action's resource kind.
struct Residual {
    effect: Effect,
    /// Matches every name: the rest of the pattern is only `*`.
    everything: bool,
    /// The bytes every matching name starts with (up to the first wildcard), checked first.
    literal_start: Vec<u8>,
    /// The longest run of plain bytes in the pattern: a name without it cannot match.
    needle: Vec<u8>,
    /// Every plain byte of the pattern: a name that lacks one of them cannot match.
    required: ByteSet,
    pattern: Vec<Glob>,
}

/// A set of byte values.
#[derive(Clone, Copy, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn of(bytes: impl IntoIterator<Item = u8>) -> Self {
        let mut set = Self::default();
        for b in bytes {
            set.0[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        set
    }

    fn within(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

impl Residual {
    fn new(effect: Effect, pattern: Vec<Glob>) -> Self {
        let everything = pattern.iter().all(|g| matches!(g, Glob::AnyRun));
        let runs = pattern.split(|g| !matches!(g, Glob::Byte(_)));
        let bytes = |run: &[Glob]| -> Vec<u8> {
            run.iter()
                .filter_map(|g| match g {
                    Glob::Byte(b) => Some(*b),
                    _ => None,
                })
                .collect()
        };
        let needle = runs
            .max_by_key(|run| run.len())
            .map(bytes)
            .unwrap_or_default();
        let literal_start = bytes(
            &pattern[..pattern
                .iter()
                .position(|g| !matches!(g, Glob::Byte(_)))
                .unwrap_or(pattern.len())],
        );
        let required = ByteSet::of(pattern.iter().filter_map(|g| match g {
            Glob::Byte(b) => Some(*b),
            _ => None,
        }));
        Self {
            effect,
            everything,
            literal_start,
            needle,
            required,
            pattern,
        }
    }

    fn matches(&self, name: &[u8], name_bytes: &ByteSet) -> bool {
        self.everything
            || ((self.literal_start.is_empty() || name.starts_with(&self.literal_start))
                && self.required.within(name_bytes)
                && contains(name, &self.needle)
                && glob_match_bytes(&self.pattern, name))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| haystack[i + 1..].starts_with(rest))
}

/// A connection's policies, compiled: for each action, what remains of every resource that
/// names it once the fixed start (`arn:aws:iot:{region}:{account}:{kind}`) is matched, denials
/// first.
pub struct Permissions {
    allow_all: bool,
    by_action: Vec<Vec<Residual>>,
}

impl Permissions {
    /// Everything allowed: the anonymous listener of a development setup.
    pub fn allow_all() -> Self {
        Self {
            allow_all: true,
            by_action: Vec::new(),
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
        let mut by_action: Vec<Vec<Residual>> = Action::ALL.iter().map(|_| Vec::new()).collect();
        for policy in policies {
            for statement in policy.statements() {
                if !statement.conditions_hold(context) {
                    continue;
                }
                let resources: Vec<Vec<Glob>> = statement.resolved_resources(context).collect();
                for (index, action) in Action::ALL.iter().enumerate() {
                    if !statement.names_action(action.name(), context) {
                        continue;
                    }
                    let prefix = format!("{arn_prefix}{}", action.resource_kind());
                    for resource in &resources {
                        for pattern in after_prefix(resource, prefix.as_bytes()) {
                            by_action[index].push(Residual::new(statement.effect(), pattern));
                        }
                    }
                }
            }
        }
        for residuals in &mut by_action {
            // Denials first, so that the first match decides.
            residuals.sort_by_key(|r| r.effect != Effect::Deny);
        }
        Self {
            allow_all: false,
            by_action,
        }
    }

    /// Whether `action` is allowed on the resource `{arn_prefix}{kind}{name}`.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        if self.allow_all {
            return true;
        }
        let Some(residuals) = self.by_action.get(action as usize) else {
            return false;
        };
        let name = name.as_bytes();
        let name_bytes = ByteSet::of(name.iter().copied());
        residuals
            .iter()
            .find(|r| r.matches(name, &name_bytes))
            .is_some_and(|r| r.effect == Effect::Allow)
    }
}

/// Whatever must notice when an access changes: the connection holding it.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// A connection's access, shared with whatever may change it while the connection lives:
/// policies are swapped in when they change, and a revoked access ends the connection.
pub struct Access {
    permissions: RwLock<Arc<Permissions>>,
    revoked: AtomicBool,
    waker: RwLock<Option<Arc<dyn Wake>>>,
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
    pub fn attach(&self, waker: Arc<dyn Wake>) {
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

    proptest::proptest! {
        /// The compiled form decides as the document interpreter does, for any resource name.
        #[test]
        fn compiled_and_interpreted_decisions_agree(name in "[a-c:/*+#?é-]{0,12}") {
            let document = format!(
                r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/a*/${{iot:ClientId}}/?"}},
                {{"Effect":"Allow","Action":"iot:Pub*","Resource":"arn:aws:iot:*:000000000000:topic/*:b"}},
                {{"Effect":"Deny","Action":"iot:Publish","Resource":"{PREFIX}topic/a/c*"}},
                {{"Effect":"Allow","Action":"iot:Publish","Resource":"{PREFIX}topic/?/*"}},
                {{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:*:topic/*+b"}}]}}"#
            );
            let policy = Policy::parse(&document).unwrap();
            let mut context = Context::new();
            context.set("iot:ClientId", "c");
            let compiled = Permissions::compile([&policy], &context, PREFIX);
            let interpreted = policy.effect("iot:Publish", &format!("{PREFIX}topic/{name}"), &context)
                == Some(Effect::Allow);
            proptest::prop_assert_eq!(compiled.allows(Action::Publish, &name), interpreted);
        }
    }
}
