//! Every key the node writes to the replicated store, in one place: its prefixes, how a key
//! is built, and [`Key::parse`] for whoever must recognise a key seen in a watch (admission
//! follows registry changes by key). Names that may hold `/` or `:` (client ids, ARNs) are
//! hex-encoded so that a key's structure survives them.

use std::fmt::Write as _;

/// MQTT: a topic's retained message.
pub const RETAINED: &str = "mqtt/retained/";
/// MQTT: a persistent session's subscriptions and expiry, by hex client id.
pub const SESSION: &str = "mqtt/session/";
/// MQTT: the QoS 1/2 messages queued for a persistent session, by hex client id and sequence.
pub const QUEUE: &str = "mqtt/queue/";
/// MQTT: a persistent session's current ownership (a token its owner writes under), by hex
/// client id.
pub const SESSION_OWNER: &str = "mqtt/owner/";
/// MQTT: per broker node, by node id, its current life (`/life`, the fencing token of its
/// writes) and the message numbers it reserved (`/numbers`).
pub const BROKER_NODE: &str = "mqtt/node/";
/// Device Shadow documents, by thing and shadow name.
pub const SHADOW: &str = "shadow/";
/// The registry and its security records: everything admission follows.
pub const REGISTRY: &str = "aws/";
pub const THINGS: &str = "aws/things/";
pub const THING_TYPES: &str = "aws/thing-types/";
pub const THING_GROUPS: &str = "aws/thing-groups/";
/// `{parent}/{child}`.
pub const GROUP_CHILDREN: &str = "aws/thing-group-children/";
/// `{group}/{thing}`.
pub const GROUP_THINGS: &str = "aws/thing-group-things/";
/// `{thing}/{group}`.
pub const GROUPS_OF_THING: &str = "aws/groups-of-thing/";
pub const CERTIFICATES: &str = "aws/certificates/";
pub const CA_CERTIFICATES: &str = "aws/ca-certificates/";
/// `{thing}/{hex principal}`.
pub const THING_PRINCIPALS: &str = "aws/thing-principals/";
/// `{hex principal}/{thing}`.
pub const PRINCIPAL_THINGS: &str = "aws/principal-things/";
pub const POLICIES: &str = "aws/policies/";
/// `{policy}/{version, ten digits}`.
pub const POLICY_VERSIONS: &str = "aws/policy-versions/";
/// `{policy}/{hex target}`.
pub const POLICY_TARGETS: &str = "aws/policy-targets/";
/// `{hex target}/{policy}`.
pub const TARGET_POLICIES: &str = "aws/target-policies/";
pub const AUTHORIZERS: &str = "aws/authorizer/";
pub const DEFAULT_AUTHORIZER: &str = "aws/default-authorizer";
/// Topic rules, by name: outside `aws/`, so that admission does not follow them.
pub const RULES: &str = "rule/";
/// Topic rule destinations, by id.
pub const RULE_DESTINATIONS: &str = "rule-destination/";
/// Both of the above: what the rules engine follows.
pub const RULES_AND_DESTINATIONS: &str = "rule";
/// The cluster's generated access keys.
/// `job/{id}`: a job (`services::jobs`).
pub const JOBS: &str = "job/";
/// `job-targets/{id}/{chunk}`: the things a job was created for, resolved once (a snapshot
/// job's groups as they were then), 1,000 to a key.
pub const JOB_TARGETS: &str = "job-targets/";
/// `job-exec/{thing}/{job}`: a thing's execution of a job.
pub const JOB_EXECUTIONS: &str = "job-exec/";
/// `job-things/{job}/{thing}`: the status of each execution of a job, kept with it.
pub const JOB_THINGS: &str = "job-things/";
/// `job-timer/{deadline ms, 13 digits}/{thing}/{job}`: when an execution times out, kept with it.
pub const JOB_TIMERS: &str = "job-timer/";
/// `job-template/{id}`.
pub const JOB_TEMPLATES: &str = "job-template/";
/// Which kinds of event the account publishes (UpdateEventConfigurations).
/// `provisioning/template/{name}`: a provisioning template.
pub const PROVISIONING_TEMPLATES: &str = "provisioning/template/";
/// `provisioning/template-version/{name}/{version:010}`: a template's body, by version.
pub const PROVISIONING_TEMPLATE_VERSIONS: &str = "provisioning/template-version/";
/// `provisioning/token/{token}`: a certificate ownership token and the certificate it proves.
pub const OWNERSHIP_TOKENS: &str = "provisioning/token/";
/// `provisioning/claim/{certificate id}`: a temporary claim certificate (CreateProvisioningClaim).
pub const PROVISIONING_CLAIMS: &str = "provisioning/claim/";
/// `provisioning/expiry/{deadline ms:013}/{certificate id}`: when a certificate made for
/// provisioning (or a claim) lapses, for the sweeper.
pub const PROVISIONING_EXPIRIES: &str = "provisioning/expiry/";
pub const EVENT_CONFIGURATIONS: &str = "aws/event-configurations";
/// The fleet indexing configuration (`services::index`).
pub const INDEXING_CONFIG: &str = "index/config";
/// `connectivity/{thing}`: whether the thing's client is connected, as its node last wrote it.
pub const CONNECTIVITY: &str = "connectivity/";
pub const CREDENTIALS: &str = "aws/credentials/halyard";
/// The cluster's own CA.
pub const OWN_CA: &str = "aws/ca/halyard";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out` as lowercase hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// `s` as it appears inside a key.
pub fn hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    push_hex(&mut out, s.as_bytes());
    out
}

/// The value [`hex`] encoded; `None` for anything else.
pub fn unhex(s: &str) -> Option<String> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let raw = s.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = raw
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect();
    String::from_utf8(bytes?).ok()
}

fn joined(parts: &[&str]) -> String {
    parts.concat()
}

pub fn retained(topic: &str) -> Vec<u8> {
    joined(&[RETAINED, topic]).into_bytes()
}

pub fn node_life(node: u64) -> Vec<u8> {
    format!("{BROKER_NODE}{node}/life").into_bytes()
}

pub fn node_numbers(node: u64) -> Vec<u8> {
    format!("{BROKER_NODE}{node}/numbers").into_bytes()
}

pub fn session(client_id: &str) -> Vec<u8> {
    let mut key = String::from(SESSION);
    push_hex(&mut key, client_id.as_bytes());
    key.into_bytes()
}

pub fn session_owner(client_id: &str) -> Vec<u8> {
    let mut key = String::from(SESSION_OWNER);
    push_hex(&mut key, client_id.as_bytes());
    key.into_bytes()
}

pub fn queue_prefix(client_id: &str) -> Vec<u8> {
    let mut key = String::from(QUEUE);
    push_hex(&mut key, client_id.as_bytes());
    key.push('/');
    key.into_bytes()
}

/// Sequence numbers are fixed-width hex, so that a prefix range yields them in order.
pub fn queue(client_id: &str, seq: u64) -> Vec<u8> {
    queue_under(&queue_prefix(client_id), seq)
}

/// [`queue`], for a client's [`queue_prefix`] made once (a session makes its own once, and
/// two keys for each message it is sent: queued, then acknowledged).
pub fn queue_under(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 16);
    key.extend_from_slice(prefix);
    key.extend(
        (0..16)
            .rev()
            .map(|digit| HEX[((seq >> (digit * 4)) & 0x0f) as usize]),
    );
    key
}

/// The sequence number at the end of a queue key under `prefix`.
pub fn queue_seq(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    u64::from_str_radix(rest, 16).ok()
}

pub fn shadow(thing: &str, shadow: Option<&str>) -> String {
    match shadow {
        None => joined(&[SHADOW, thing]),
        Some(name) => joined(&[SHADOW, thing, "/", name]),
    }
}

/// The named shadows of `thing`.
pub fn named_shadows(thing: &str) -> String {
    joined(&[SHADOW, thing, "/"])
}

pub fn connectivity(thing: &str) -> String {
    joined(&[CONNECTIVITY, thing])
}

pub fn thing(name: &str) -> String {
    joined(&[THINGS, name])
}

pub fn thing_type(name: &str) -> String {
    joined(&[THING_TYPES, name])
}

pub fn rule(name: &str) -> String {
    joined(&[RULES, name])
}

pub fn rule_destination(id: &str) -> String {
    joined(&[RULE_DESTINATIONS, id])
}

pub fn job(id: &str) -> String {
    joined(&[JOBS, id])
}

/// The chunks of a job's resolved targets.
pub fn job_targets(id: &str) -> String {
    joined(&[JOB_TARGETS, id, "/"])
}

/// Chunk `n` of a job's resolved targets (at most 1,000 names each).
pub fn job_targets_chunk(id: &str, n: usize) -> String {
    let mut key = job_targets(id);
    let _ = write!(key, "{n:06}");
    key
}

pub fn job_execution(thing: &str, job: &str) -> String {
    joined(&[JOB_EXECUTIONS, thing, "/", job])
}

/// The executions of `thing`.
pub fn job_executions_of_thing(thing: &str) -> String {
    joined(&[JOB_EXECUTIONS, thing, "/"])
}

pub fn job_thing(job: &str, thing: &str) -> String {
    joined(&[JOB_THINGS, job, "/", thing])
}

/// The executions of `job`, by thing.
pub fn job_things(job: &str) -> String {
    joined(&[JOB_THINGS, job, "/"])
}

pub fn job_timer(deadline_ms: u64, thing: &str, job: &str) -> String {
    let mut key = String::from(JOB_TIMERS);
    let _ = write!(key, "{deadline_ms:013}/{thing}/{job}");
    key
}

/// The thing and job of a timer key.
pub fn parse_job_timer(key: &str) -> Option<(u64, &str, &str)> {
    let rest = key.strip_prefix(JOB_TIMERS)?;
    let (deadline, rest) = rest.split_once('/')?;
    let (thing, job) = rest.split_once('/')?;
    Some((deadline.parse().ok()?, thing, job))
}

pub fn job_template(id: &str) -> String {
    joined(&[JOB_TEMPLATES, id])
}

pub fn thing_group(name: &str) -> String {
    joined(&[THING_GROUPS, name])
}

pub fn group_child(parent: &str, child: &str) -> String {
    joined(&[GROUP_CHILDREN, parent, "/", child])
}

pub fn group_thing(group: &str, thing: &str) -> String {
    joined(&[GROUP_THINGS, group, "/", thing])
}

pub fn group_of_thing(thing: &str, group: &str) -> String {
    joined(&[GROUPS_OF_THING, thing, "/", group])
}

/// The groups directly under `parent`.
pub fn group_children(parent: &str) -> String {
    joined(&[GROUP_CHILDREN, parent, "/"])
}

/// The things in `group`.
pub fn group_things(group: &str) -> String {
    joined(&[GROUP_THINGS, group, "/"])
}

/// The groups `thing` is in.
pub fn groups_of_thing(thing: &str) -> String {
    joined(&[GROUPS_OF_THING, thing, "/"])
}

/// The principals attached to `thing`.
pub fn thing_principals(thing: &str) -> String {
    joined(&[THING_PRINCIPALS, thing, "/"])
}

pub fn certificate(id: &str) -> String {
    joined(&[CERTIFICATES, id])
}

pub fn ca_certificate(id: &str) -> String {
    joined(&[CA_CERTIFICATES, id])
}

pub fn thing_principal(thing: &str, principal: &str) -> String {
    let mut key = joined(&[THING_PRINCIPALS, thing, "/"]);
    push_hex(&mut key, principal.as_bytes());
    key
}

pub fn principal_thing(principal: &str, thing: &str) -> String {
    let mut key = String::from(PRINCIPAL_THINGS);
    push_hex(&mut key, principal.as_bytes());
    key.push('/');
    key.push_str(thing);
    key
}

/// The things attached to `principal`.
pub fn principal_things(principal: &str) -> String {
    let mut key = String::from(PRINCIPAL_THINGS);
    push_hex(&mut key, principal.as_bytes());
    key.push('/');
    key
}

pub fn policy(name: &str) -> String {
    joined(&[POLICIES, name])
}

pub fn policy_version(name: &str, version: u32) -> String {
    let mut key = joined(&[POLICY_VERSIONS, name, "/"]);
    let _ = write!(key, "{version:010}");
    key
}

/// The versions of policy `name`, oldest first.
pub fn policy_versions(name: &str) -> String {
    joined(&[POLICY_VERSIONS, name, "/"])
}

/// The targets `policy` is attached to.
pub fn policy_targets(policy: &str) -> String {
    joined(&[POLICY_TARGETS, policy, "/"])
}

pub fn policy_target(policy: &str, target: &str) -> String {
    let mut key = joined(&[POLICY_TARGETS, policy, "/"]);
    push_hex(&mut key, target.as_bytes());
    key
}

pub fn target_policy(target: &str, policy: &str) -> String {
    let mut key = String::from(TARGET_POLICIES);
    push_hex(&mut key, target.as_bytes());
    key.push('/');
    key.push_str(policy);
    key
}

/// The policies attached to `target`.
pub fn target_policies(target: &str) -> String {
    let mut key = String::from(TARGET_POLICIES);
    push_hex(&mut key, target.as_bytes());
    key.push('/');
    key
}

pub fn provisioning_template(name: &str) -> String {
    joined(&[PROVISIONING_TEMPLATES, name])
}

pub fn provisioning_template_version(name: &str, version: u32) -> String {
    format!("{PROVISIONING_TEMPLATE_VERSIONS}{name}/{version:010}")
}

/// The versions of template `name`.
pub fn provisioning_template_versions(name: &str) -> String {
    joined(&[PROVISIONING_TEMPLATE_VERSIONS, name, "/"])
}

pub fn ownership_token(token: &str) -> String {
    joined(&[OWNERSHIP_TOKENS, token])
}

pub fn provisioning_claim(certificate_id: &str) -> String {
    joined(&[PROVISIONING_CLAIMS, certificate_id])
}

pub fn provisioning_expiry(deadline_ms: u64, certificate_id: &str) -> String {
    format!("{PROVISIONING_EXPIRIES}{deadline_ms:013}/{certificate_id}")
}

/// The deadline and certificate of a `provisioning/expiry/` key.
pub fn parse_provisioning_expiry(key: &str) -> Option<(u64, &str)> {
    let rest = key.strip_prefix(PROVISIONING_EXPIRIES)?;
    let (deadline, certificate) = rest.split_once('/')?;
    Some((deadline.parse().ok()?, certificate))
}

pub fn authorizer(name: &str) -> String {
    joined(&[AUTHORIZERS, name])
}

/// A key of the node's, recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Retained {
        topic: &'a str,
    },
    Session {
        client_id: String,
    },
    Queued {
        client_id: String,
        seq: u64,
    },
    Shadow {
        thing: &'a str,
        shadow: Option<&'a str>,
    },
    Thing {
        name: &'a str,
    },
    ThingType {
        name: &'a str,
    },
    ThingGroup {
        name: &'a str,
    },
    GroupChild {
        parent: &'a str,
        child: &'a str,
    },
    GroupThing {
        group: &'a str,
        thing: &'a str,
    },
    GroupOfThing {
        thing: &'a str,
        group: &'a str,
    },
    Certificate {
        id: &'a str,
    },
    CaCertificate {
        id: &'a str,
    },
    ThingPrincipal {
        thing: &'a str,
        principal: String,
    },
    PrincipalThing {
        principal: String,
        thing: &'a str,
    },
    Policy {
        name: &'a str,
    },
    PolicyVersion {
        name: &'a str,
        version: u32,
    },
    PolicyTarget {
        policy: &'a str,
        target: String,
    },
    TargetPolicy {
        target: String,
        policy: &'a str,
    },
    Authorizer {
        name: &'a str,
    },
    DefaultAuthorizer,
    Credentials,
    OwnCa,
}

impl<'a> Key<'a> {
    /// What `key` is; `None` for a key the node does not write, or one whose hex part is
    /// not hex.
    pub fn parse(key: &'a str) -> Option<Key<'a>> {
        let pair = |rest: &'a str| rest.split_once('/');
        if let Some(topic) = key.strip_prefix(RETAINED) {
            return Some(Key::Retained { topic });
        }
        if let Some(rest) = key.strip_prefix(SESSION) {
            return Some(Key::Session {
                client_id: unhex(rest)?,
            });
        }
        if let Some(rest) = key.strip_prefix(QUEUE) {
            let (client, seq) = pair(rest)?;
            return Some(Key::Queued {
                client_id: unhex(client)?,
                seq: u64::from_str_radix(seq, 16).ok()?,
            });
        }
        if let Some(rest) = key.strip_prefix(SHADOW) {
            return Some(match pair(rest) {
                Some((thing, shadow)) => Key::Shadow {
                    thing,
                    shadow: Some(shadow),
                },
                None => Key::Shadow {
                    thing: rest,
                    shadow: None,
                },
            });
        }
        if key == DEFAULT_AUTHORIZER {
            return Some(Key::DefaultAuthorizer);
        }
        if key == CREDENTIALS {
            return Some(Key::Credentials);
        }
        if key == OWN_CA {
            return Some(Key::OwnCa);
        }
        let prefixed = |prefix: &str| key.strip_prefix(prefix);
        Some(if let Some(name) = prefixed(THINGS) {
            Key::Thing { name }
        } else if let Some(name) = prefixed(THING_TYPES) {
            Key::ThingType { name }
        } else if let Some(name) = prefixed(THING_GROUPS) {
            Key::ThingGroup { name }
        } else if let Some(rest) = prefixed(GROUP_CHILDREN) {
            let (parent, child) = pair(rest)?;
            Key::GroupChild { parent, child }
        } else if let Some(rest) = prefixed(GROUP_THINGS) {
            let (group, thing) = pair(rest)?;
            Key::GroupThing { group, thing }
        } else if let Some(rest) = prefixed(GROUPS_OF_THING) {
            let (thing, group) = pair(rest)?;
            Key::GroupOfThing { thing, group }
        } else if let Some(id) = prefixed(CERTIFICATES) {
            Key::Certificate { id }
        } else if let Some(id) = prefixed(CA_CERTIFICATES) {
            Key::CaCertificate { id }
        } else if let Some(rest) = prefixed(THING_PRINCIPALS) {
            let (thing, principal) = pair(rest)?;
            Key::ThingPrincipal {
                thing,
                principal: unhex(principal)?,
            }
        } else if let Some(rest) = prefixed(PRINCIPAL_THINGS) {
            let (principal, thing) = pair(rest)?;
            Key::PrincipalThing {
                principal: unhex(principal)?,
                thing,
            }
        } else if let Some(name) = prefixed(POLICIES) {
            Key::Policy { name }
        } else if let Some(rest) = prefixed(POLICY_VERSIONS) {
            let (name, version) = pair(rest)?;
            Key::PolicyVersion {
                name,
                version: version.parse().ok()?,
            }
        } else if let Some(rest) = prefixed(POLICY_TARGETS) {
            let (policy, target) = pair(rest)?;
            Key::PolicyTarget {
                policy,
                target: unhex(target)?,
            }
        } else if let Some(rest) = prefixed(TARGET_POLICIES) {
            let (target, policy) = pair(rest)?;
            Key::TargetPolicy {
                target: unhex(target)?,
                policy,
            }
        } else if let Some(name) = prefixed(AUTHORIZERS) {
            Key::Authorizer { name }
        } else {
            return None;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_key_parses_back() {
        let arn = "arn:aws:iot:us-east-1:000000000000:cert/ab";
        let cases = [
            (thing("lamp"), Key::Thing { name: "lamp" }),
            (
                group_thing("floor", "lamp"),
                Key::GroupThing {
                    group: "floor",
                    thing: "lamp",
                },
            ),
            (
                principal_thing(arn, "lamp"),
                Key::PrincipalThing {
                    principal: arn.into(),
                    thing: "lamp",
                },
            ),
            (
                thing_principal("lamp", arn),
                Key::ThingPrincipal {
                    thing: "lamp",
                    principal: arn.into(),
                },
            ),
            (
                target_policy(arn, "p"),
                Key::TargetPolicy {
                    target: arn.into(),
                    policy: "p",
                },
            ),
            (
                policy_target("p", arn),
                Key::PolicyTarget {
                    policy: "p",
                    target: arn.into(),
                },
            ),
            (
                policy_version("p", 12),
                Key::PolicyVersion {
                    name: "p",
                    version: 12,
                },
            ),
            (
                shadow("lamp", Some("cfg")),
                Key::Shadow {
                    thing: "lamp",
                    shadow: Some("cfg"),
                },
            ),
            (DEFAULT_AUTHORIZER.to_owned(), Key::DefaultAuthorizer),
        ];
        for (key, expected) in cases {
            assert_eq!(Key::parse(&key), Some(expected), "{key}");
        }
        let queued = String::from_utf8(queue("dev/1", 42)).unwrap();
        assert_eq!(
            Key::parse(&queued),
            Some(Key::Queued {
                client_id: "dev/1".into(),
                seq: 42
            })
        );
        assert_eq!(Key::parse("aws/target-policies/zz/p"), None);
        assert_eq!(Key::parse("elsewhere/x"), None);
    }

    #[test]
    fn client_ids_with_slashes_get_disjoint_queue_prefixes() {
        let a = queue_prefix("a");
        let ab = queue_prefix("a/b");
        assert!(!ab.starts_with(&a));
        assert!(queue("a", 2) > queue("a", 1));
        assert_eq!(queue_seq(&queue("a", 7), &a), Some(7));
        assert_eq!(unhex(&hex("dev/ice-1")).as_deref(), Some("dev/ice-1"));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn policy_versions_sort_by_number() {
        assert!(policy_version("p", 9) < policy_version("p", 10));
    }
}
