//! AWS IoT policy documents: parsed and checked once, when stored, into a form that evaluates
//! an (action, resource) pair without allocation beyond variable substitution.
//!
//! Semantics follow AWS IoT: default deny, an explicit `Deny` beats any `Allow`; in actions and
//! resources `*` matches any run of characters (across `/`) and `?` one character, while MQTT's
//! `+` and `#` are literal; `${iot:...}` variables are replaced by the connection's values, and
//! a statement whose variable has no value does not match.

use std::collections::BTreeMap;

use serde_json::Value;

/// The longest document AWS IoT accepts, counted without whitespace.
pub const MAX_DOCUMENT_CHARS: usize = 2048;

/// The IoT data-plane actions a policy can name without a wildcard.
const IOT_ACTIONS: &[&str] = &[
    "Connect",
    "Publish",
    "Subscribe",
    "Receive",
    "RetainPublish",
    "GetThingShadow",
    "UpdateThingShadow",
    "DeleteThingShadow",
    "ListNamedShadowsForThing",
    "GetRetainedMessage",
    "ListRetainedMessages",
    "DescribeJobExecution",
    "GetPendingJobExecutions",
    "StartNextPendingJobExecution",
    "UpdateJobExecution",
    "DeleteConnection",
    "AssumeRoleWithCertificate",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedPolicy(pub String);

fn malformed(message: impl Into<String>) -> MalformedPolicy {
    MalformedPolicy(message.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// One element of a pattern: text, a wildcard, or a variable resolved at evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(String),
    AnyRun,
    AnyOne,
    Variable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    operator: Operator,
    key: String,
    values: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    effect: Effect,
    actions: Vec<Pattern>,
    resources: Vec<Pattern>,
    conditions: Vec<Condition>,
}

/// A checked policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// The values a connection gives to policy variables and condition keys, by their full name
/// (`iot:ClientId`, `iot:Connection.Thing.ThingName`, `iot:Certificate.Subject.CommonName`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    values: BTreeMap<String, String>,
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) {
        self.values.remove(key);
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

fn parse_pattern(text: &str, variables: bool, place: &str) -> Result<Pattern, MalformedPolicy> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if variables && rest.starts_with("${") {
            let Some(end) = rest.find('}') else {
                return Err(malformed(format!(
                    "{place}: the variable in '{text}' has no closing '}}'"
                )));
            };
            let name = &rest[2..end];
            if name.is_empty() || name.contains("${") {
                return Err(malformed(format!(
                    "{place}: '{text}' contains an invalid policy variable"
                )));
            }
            if !literal.is_empty() {
                tokens.push(Token::Text(std::mem::take(&mut literal)));
            }
            tokens.push(Token::Variable(name.to_owned()));
            rest = &rest[end + 1..];
            continue;
        }
        match c {
            '*' => {
                if !literal.is_empty() {
                    tokens.push(Token::Text(std::mem::take(&mut literal)));
                }
                tokens.push(Token::AnyRun);
            }
            '?' => {
                if !literal.is_empty() {
                    tokens.push(Token::Text(std::mem::take(&mut literal)));
                }
                tokens.push(Token::AnyOne);
            }
            c => literal.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    if !literal.is_empty() {
        tokens.push(Token::Text(literal));
    }
    Ok(Pattern { tokens })
}

/// A string or a non-empty array of strings.
fn string_list(value: &Value, place: &str) -> Result<Vec<String>, MalformedPolicy> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(malformed(format!("{place}: {other} is not a string"))),
            })
            .collect(),
        Value::Array(_) => Err(malformed(format!("{place} must not be empty"))),
        other => Err(malformed(format!(
            "{place} must be a string or a list of strings, not {other}"
        ))),
    }
}

fn check_action(action: &str, place: &str) -> Result<(), MalformedPolicy> {
    if action == "*" {
        return Ok(());
    }
    let Some((service, name)) = action.split_once(':') else {
        return Err(malformed(format!(
            "{place}: '{action}' is not an action of the form service:Action"
        )));
    };
    let well_formed = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?');
    if !well_formed {
        return Err(malformed(format!(
            "{place}: '{action}' is not a valid action"
        )));
    }
    let wildcard = name.contains(['*', '?']);
    if service.eq_ignore_ascii_case("iot")
        && !wildcard
        && !IOT_ACTIONS.iter().any(|a| a.eq_ignore_ascii_case(name))
    {
        return Err(malformed(format!("{place}: unknown action '{action}'")));
    }
    Ok(())
}

fn parse_operator(name: &str) -> Option<Operator> {
    Some(match name {
        "StringEquals" | "ArnEquals" => Operator::StringEquals,
        "StringNotEquals" | "ArnNotEquals" => Operator::StringNotEquals,
        "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
        "StringNotEqualsIgnoreCase" => Operator::StringNotEqualsIgnoreCase,
        "StringLike" | "ArnLike" => Operator::StringLike,
        "StringNotLike" | "ArnNotLike" => Operator::StringNotLike,
        "Bool" => Operator::Bool,
        "Null" => Operator::Null,
        _ => return None,
    })
}

fn parse_conditions(
    value: &Value,
    variables: bool,
    place: &str,
) -> Result<Vec<Condition>, MalformedPolicy> {
    let Value::Object(operators) = value else {
        return Err(malformed(format!("{place}: Condition must be an object")));
    };
    let mut conditions = Vec::new();
    for (operator_name, keys) in operators {
        let operator = parse_operator(operator_name).ok_or_else(|| {
            malformed(format!(
                "{place}: unsupported condition operator '{operator_name}'"
            ))
        })?;
        let Value::Object(keys) = keys else {
            return Err(malformed(format!(
                "{place}: condition '{operator_name}' must map keys to values"
            )));
        };
        for (key, values) in keys {
            let values = match values {
                Value::Bool(b) => vec![b.to_string()],
                Value::Number(n) => vec![n.to_string()],
                other => string_list(other, &format!("{place}: condition {operator_name}.{key}"))?,
            };
            let values = values
                .iter()
                .map(|v| {
                    if operator == Operator::StringLike || operator == Operator::StringNotLike {
                        parse_pattern(v, variables, place)
                    } else {
                        // Only the *Like operators treat `*` and `?` as wildcards.
                        let mut pattern = parse_pattern(v, variables, place)?;
                        pattern.tokens = pattern
                            .tokens
                            .into_iter()
                            .map(|t| match t {
                                Token::AnyRun => Token::Text("*".into()),
                                Token::AnyOne => Token::Text("?".into()),
                                other => other,
                            })
                            .collect();
                        Ok(pattern)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            conditions.push(Condition {
                operator,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(conditions)
}

fn parse_statement(
    value: &Value,
    number: usize,
    variables: bool,
) -> Result<Statement, MalformedPolicy> {
    let place = format!("Statement {number}");
    let Value::Object(fields) = value else {
        return Err(malformed(format!("{place} must be an object")));
    };
    for key in fields.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Action" | "Resource" | "Condition" => {}
            "NotAction" | "NotResource" | "Principal" | "NotPrincipal" => {
                return Err(malformed(format!(
                    "{place}: {key} is not supported in AWS IoT policies"
                )));
            }
            other => return Err(malformed(format!("{place}: unknown field '{other}'"))),
        }
    }
    let effect = match fields.get("Effect") {
        Some(Value::String(e)) if e == "Allow" => Effect::Allow,
        Some(Value::String(e)) if e == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(malformed(format!(
                "{place}: Effect must be \"Allow\" or \"Deny\", not {other}"
            )));
        }
        None => return Err(malformed(format!("{place} has no Effect"))),
    };
    let actions = string_list(
        fields
            .get("Action")
            .ok_or_else(|| malformed(format!("{place} has no Action")))?,
        &format!("{place}: Action"),
    )?;
    let actions = actions
        .iter()
        .map(|a| {
            check_action(a, &place)?;
            parse_pattern(a, false, &place)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resources = string_list(
        fields
            .get("Resource")
            .ok_or_else(|| malformed(format!("{place} has no Resource")))?,
        &format!("{place}: Resource"),
    )?;
    let resources = resources
        .iter()
        .map(|r| {
            if r != "*" && !r.starts_with("arn:") {
                return Err(malformed(format!(
                    "{place}: resource '{r}' is neither an ARN nor \"*\""
                )));
            }
            parse_pattern(r, variables, &place)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let conditions = match fields.get("Condition") {
        Some(c) => parse_conditions(c, variables, &place)?,
        None => Vec::new(),
    };
    Ok(Statement {
        effect,
        actions,
        resources,
        conditions,
    })
}

impl Policy {
    /// Checks a document as AWS IoT does when a policy or a version is created; the error
    /// names what is wrong and where.
    pub fn parse(document: &str) -> Result<Self, MalformedPolicy> {
        let length = document.chars().filter(|c| !c.is_whitespace()).count();
        if length > MAX_DOCUMENT_CHARS {
            return Err(malformed(format!(
                "The policy document is {length} characters long without whitespace; the limit is {MAX_DOCUMENT_CHARS}"
            )));
        }
        let value: Value = serde_json::from_str(document)
            .map_err(|e| malformed(format!("The policy document is not valid JSON: {e}")))?;
        let Value::Object(fields) = &value else {
            return Err(malformed("The policy document must be a JSON object"));
        };
        for key in fields.keys() {
            if !matches!(key.as_str(), "Version" | "Statement" | "Id") {
                return Err(malformed(format!(
                    "Unknown field '{key}' in the policy document"
                )));
            }
        }
        let variables = match fields.get("Version") {
            None => true,
            Some(Value::String(v)) if v == "2012-10-17" => true,
            Some(Value::String(v)) if v == "2008-10-17" => false,
            Some(other) => {
                return Err(malformed(format!(
                    "Version must be \"2012-10-17\" or \"2008-10-17\", not {other}"
                )));
            }
        };
        let statements = match fields.get("Statement") {
            None => return Err(malformed("The policy document has no Statement")),
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(malformed("Statement must not be empty"));
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, s)| parse_statement(s, i + 1, variables))
                .collect::<Result<Vec<_>, _>>()?,
            Some(single) => vec![parse_statement(single, 1, variables)?],
        };
        // Documents of version 2008-10-17 predate variables: `${...}` was parsed as text.
        Ok(Self { statements })
    }

    /// What this policy says about `action` on `resource`: `Deny` if a matching statement
    /// denies it, else `Allow` if one allows it, else nothing.
    pub fn effect(&self, action: &str, resource: &str, context: &Context) -> Option<Effect> {
        let mut allowed = false;
        for statement in &self.statements {
            let matches = statement
                .actions
                .iter()
                .any(|a| a.matches(action, context, true))
                && statement
                    .resources
                    .iter()
                    .any(|r| r.matches(resource, context, false))
                && statement.conditions.iter().all(|c| c.holds(context));
            if matches {
                match statement.effect {
                    Effect::Deny => return Some(Effect::Deny),
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed.then_some(Effect::Allow)
    }

    pub(super) fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

impl Statement {
    pub(super) fn effect(&self) -> Effect {
        self.effect
    }

    pub(super) fn conditions_hold(&self, context: &Context) -> bool {
        self.conditions.iter().all(|c| c.holds(context))
    }

    pub(super) fn names_action(&self, action: &str, context: &Context) -> bool {
        self.actions
            .iter()
            .any(|a| a.matches(action, context, true))
    }

    /// The statement's resources with this connection's variables in place; those with a
    /// variable the connection has no value for are left out.
    pub(super) fn resolved_resources<'a>(
        &'a self,
        context: &'a Context,
    ) -> impl Iterator<Item = Vec<Glob>> + 'a {
        self.resources.iter().filter_map(|r| r.resolve(context))
    }
}

/// One position of a resolved pattern, over bytes: `AnyOne` takes one UTF-8 character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glob {
    Byte(u8),
    AnyRun,
    AnyOne,
}

impl Pattern {
    /// The pattern with its variables replaced by the context's values (as literal text);
    /// `None` when a variable has no value.
    fn resolve(&self, context: &Context) -> Option<Vec<Glob>> {
        let mut out = Vec::new();
        for token in &self.tokens {
            match token {
                Token::Text(t) => out.extend(t.bytes().map(Glob::Byte)),
                Token::AnyRun => out.push(Glob::AnyRun),
                Token::AnyOne => out.push(Glob::AnyOne),
                Token::Variable(name) => out.extend(context.get(name)?.bytes().map(Glob::Byte)),
            }
        }
        Some(out)
    }

    fn matches(&self, text: &str, context: &Context, ignore_case: bool) -> bool {
        self.resolve(context)
            .is_some_and(|glob| glob_match(&glob, text.as_bytes(), ignore_case))
    }

    /// The pattern's text with variables resolved, wildcards kept as written.
    fn resolve_literal(&self, context: &Context) -> Option<String> {
        let mut out = String::new();
        for token in &self.tokens {
            match token {
                Token::Text(t) => out.push_str(t),
                Token::AnyRun => out.push('*'),
                Token::AnyOne => out.push('?'),
                Token::Variable(name) => out.push_str(context.get(name)?),
            }
        }
        Some(out)
    }
}

impl Condition {
    fn holds(&self, context: &Context) -> bool {
        let value = context.get(&self.key);
        let any = |test: &dyn Fn(&Pattern, &str) -> bool| {
            value.is_some_and(|v| self.values.iter().any(|p| test(p, v)))
        };
        let literal_eq = |p: &Pattern, v: &str, fold: bool| {
            p.resolve_literal(context).is_some_and(|l| {
                if fold {
                    l.eq_ignore_ascii_case(v)
                } else {
                    l == v
                }
            })
        };
        match self.operator {
            Operator::StringEquals | Operator::Bool => any(&|p, v| literal_eq(p, v, false)),
            Operator::StringNotEquals => value.is_some() && !any(&|p, v| literal_eq(p, v, false)),
            Operator::StringEqualsIgnoreCase => any(&|p, v| literal_eq(p, v, true)),
            Operator::StringNotEqualsIgnoreCase => {
                value.is_some() && !any(&|p, v| literal_eq(p, v, true))
            }
            Operator::StringLike => any(&|p, v| p.matches(v, context, false)),
            Operator::StringNotLike => {
                value.is_some() && !any(&|p, v| p.matches(v, context, false))
            }
            Operator::Null => {
                // `"Null": {"key": "true"}` holds when the key is absent.
                let absent = value.is_none();
                self.values.iter().any(|p| {
                    p.resolve_literal(context).as_deref()
                        == Some(if absent { "true" } else { "false" })
                })
            }
        }
    }
}

/// Wildcard match over `text` with backtracking to the last `*`: linear in practice, never
/// worse than pattern length times text length.
fn glob_match(pattern: &[Glob], text: &[u8], ignore_case: bool) -> bool {
    let same = |a: u8, b: u8| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // One UTF-8 character from `t`: its lead byte and the continuation bytes after it.
    let char_end = |mut t: usize| {
        t += 1;
        while t < text.len() && text[t] & 0xc0 == 0x80 {
            t += 1;
        }
        t
    };
    let (mut p, mut t) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Glob::AnyRun) => {
                resume = Some((p, t));
                p += 1;
            }
            Some(Glob::AnyOne) => {
                p += 1;
                t = char_end(t);
            }
            Some(Glob::Byte(c)) if same(*c, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((star, from)) => {
                    let next = char_end(from);
                    p = star + 1;
                    t = next;
                    resume = Some((star, next));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|g| matches!(g, Glob::AnyRun))
}

/// A resource pattern against `text`.
pub fn glob_match_bytes(pattern: &[Glob], text: &[u8]) -> bool {
    glob_match(pattern, text, false)
}

/// What is left of `pattern` to match once `prefix` (ASCII) has been matched: every pattern
/// position the prefix can lead to, as the patterns from there on. Empty when no match can
/// start with `prefix`.
pub fn after_prefix(pattern: &[Glob], prefix: &[u8]) -> Vec<Vec<Glob>> {
    let closure = |states: &mut Vec<usize>| {
        let mut i = 0;
        while i < states.len() {
            let at = states[i];
            if matches!(pattern.get(at), Some(Glob::AnyRun)) && !states.contains(&(at + 1)) {
                states.push(at + 1);
            }
            i += 1;
        }
        states.sort_unstable();
        states.dedup();
    };
    let mut states = vec![0];
    closure(&mut states);
    for &c in prefix {
        let mut next = Vec::new();
        for &at in &states {
            match pattern.get(at) {
                Some(Glob::Byte(b)) if *b == c => next.push(at + 1),
                Some(Glob::AnyOne) => next.push(at + 1),
                Some(Glob::AnyRun) => next.push(at),
                _ => {}
            }
        }
        closure(&mut next);
        states = next;
        if states.is_empty() {
            return Vec::new();
        }
    }
    states
        .into_iter()
        .map(|at| pattern[at..].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:iot:us-east-1:000000000000:";

    fn allow(action: &str, resource: &str) -> String {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"{resource}"}}]}}"#
        )
    }

    fn error_of(document: &str) -> String {
        match Policy::parse(document) {
            Err(e) => e.0,
            Ok(_) => panic!("accepted: {document}"),
        }
    }

    #[test]
    fn wildcards_span_levels_and_mqtt_wildcards_are_literal() {
        let policy =
            Policy::parse(&allow("iot:Publish", &format!("{ARN}topic/sensors/*"))).unwrap();
        let ctx = Context::new();
        assert_eq!(
            policy.effect("iot:Publish", &format!("{ARN}topic/sensors/a/b/c"), &ctx),
            Some(Effect::Allow)
        );
        assert_eq!(
            policy.effect("iot:Publish", &format!("{ARN}topic/other"), &ctx),
            None
        );
        assert_eq!(
            policy.effect("iot:Subscribe", &format!("{ARN}topic/sensors/a"), &ctx),
            None
        );

        let plus =
            Policy::parse(&allow("iot:Subscribe", &format!("{ARN}topicfilter/a/+"))).unwrap();
        assert_eq!(
            plus.effect("iot:Subscribe", &format!("{ARN}topicfilter/a/+"), &ctx),
            Some(Effect::Allow)
        );
        assert_eq!(
            plus.effect("iot:Subscribe", &format!("{ARN}topicfilter/a/b"), &ctx),
            None
        );

        let one = Policy::parse(&allow("iot:*", &format!("{ARN}client/dev-?"))).unwrap();
        assert_eq!(
            one.effect("iot:Connect", &format!("{ARN}client/dev-7"), &ctx),
            Some(Effect::Allow)
        );
        assert_eq!(
            one.effect("iot:Connect", &format!("{ARN}client/dev-77"), &ctx),
            None
        );
    }

    #[test]
    fn explicit_deny_beats_allow() {
        let document = format!(
            r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Action":"iot:*","Resource":"*"}},
                {{"Effect":"Deny","Action":["iot:Publish"],"Resource":["{ARN}topic/admin/*"]}}]}}"#
        );
        let policy = Policy::parse(&document).unwrap();
        let ctx = Context::new();
        assert_eq!(
            policy.effect("iot:Publish", &format!("{ARN}topic/admin/x"), &ctx),
            Some(Effect::Deny)
        );
        assert_eq!(
            policy.effect("iot:Publish", &format!("{ARN}topic/user/x"), &ctx),
            Some(Effect::Allow)
        );
    }

    #[test]
    fn variables_resolve_from_the_connection_and_unresolved_ones_never_match() {
        let policy = Policy::parse(&allow(
            "iot:Publish",
            &format!("{ARN}topic/things/${{iot:Connection.Thing.ThingName}}/*"),
        ))
        .unwrap();
        let mut ctx = Context::new();
        let resource = format!("{ARN}topic/things/lamp/state");
        assert_eq!(policy.effect("iot:Publish", &resource, &ctx), None);
        ctx.set("iot:Connection.Thing.ThingName", "lamp");
        assert_eq!(
            policy.effect("iot:Publish", &resource, &ctx),
            Some(Effect::Allow)
        );
        // A value with wildcard characters matches only itself.
        ctx.set("iot:Connection.Thing.ThingName", "*");
        assert_eq!(policy.effect("iot:Publish", &resource, &ctx), None);

        let old = r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:000000000000:client/${iot:ClientId}"}}"#;
        let old = Policy::parse(old).unwrap();
        let mut ctx = Context::new();
        ctx.set("iot:ClientId", "x");
        assert_eq!(
            old.effect("iot:Connect", &format!("{ARN}client/x"), &ctx),
            None
        );
        assert_eq!(
            old.effect(
                "iot:Connect",
                &format!("{ARN}client/${{iot:ClientId}}"),
                &ctx
            ),
            Some(Effect::Allow)
        );
    }

    #[test]
    fn conditions_gate_statements() {
        let document = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iot:Connect","Resource":"{ARN}client/*",
               "Condition":{{"Bool":{{"iot:Connection.Thing.IsAttached":"true"}},
                             "StringLike":{{"iot:Connection.Thing.ThingTypeName":["lamp*"]}}}}}}]}}"#
        );
        let policy = Policy::parse(&document).unwrap();
        let resource = format!("{ARN}client/a");
        let mut ctx = Context::new();
        assert_eq!(policy.effect("iot:Connect", &resource, &ctx), None);
        ctx.set("iot:Connection.Thing.IsAttached", "true");
        ctx.set("iot:Connection.Thing.ThingTypeName", "lamp-v2");
        assert_eq!(
            policy.effect("iot:Connect", &resource, &ctx),
            Some(Effect::Allow)
        );
        ctx.set("iot:Connection.Thing.IsAttached", "false");
        assert_eq!(policy.effect("iot:Connect", &resource, &ctx), None);
    }

    #[test]
    fn malformed_documents_name_the_problem() {
        assert!(error_of("{").contains("not valid JSON"));
        assert!(error_of(r#"{"Version":"2012-10-17"}"#).contains("no Statement"));
        assert!(
            error_of(r#"{"Statement":[{"Effect":"Maybe","Action":"iot:*","Resource":"*"}]}"#)
                .contains("Statement 1: Effect must be")
        );
        assert!(
            error_of(r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"},{"Effect":"Allow","Action":"iot:Publsh","Resource":"*"}]}"#)
                .contains("Statement 2: unknown action 'iot:Publsh'")
        );
        assert!(
            error_of(
                r#"{"Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"topic/x"}}"#
            )
            .contains("neither an ARN")
        );
        assert!(
            error_of(r#"{"Statement":{"Effect":"Allow","Action":"iot:Publish"}}"#)
                .contains("no Resource")
        );
        assert!(
            error_of(r#"{"Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:${iot:ClientId"}}"#)
                .contains("no closing")
        );
        assert!(error_of(r#"{"Version":"2020-01-01","Statement":[]}"#).contains("Version must be"));
        assert!(
            error_of(r#"{"Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*","Condition":{"DateLessThan":{"a":"b"}}}}"#)
                .contains("unsupported condition operator 'DateLessThan'")
        );
        let long = allow("iot:Publish", &format!("{ARN}topic/{}", "a".repeat(2100)));
        assert!(error_of(&long).contains("the limit is 2048"));
    }

    #[test]
    fn glob_backtracks() {
        let glob = |p: &str| {
            parse_pattern(p, false, "")
                .unwrap()
                .resolve(&Context::new())
                .unwrap()
        };
        assert!(glob_match(&glob("a*b*c"), b"aXXbYYbZc", false));
        assert!(!glob_match(&glob("a*b*c"), b"aXXbYY", false));
        assert!(glob_match(&glob("*"), b"", false));
        assert!(glob_match(&glob("IOT:pub*"), b"iot:Publish", true));
        assert!(glob_match(&glob("a?c"), "aéc".as_bytes(), false));
        assert!(!glob_match(&glob("a?c"), "aééc".as_bytes(), false));
    }
}
