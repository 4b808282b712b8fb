//! The connections admitted by certificate that are still open, and how a burst of registry
//! changes reaches them: each change under `aws/` is read as the connections it may concern
//! (a certificate's, a thing's, those compiled from a policy, or all of them), and only those
//! are re-evaluated.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::DeviceAdmission;
use crate::auth::permissions::{Access, Action};
use crate::mqtt::reason;
use crate::store::keys::Key;

/// How long changes are gathered before the live connections are re-evaluated.
const SETTLE: Duration = Duration::from_millis(100);

struct LiveEntry {
    access: Weak<Access>,
    certificate: String,
    client_id: String,
    /// The policies it was last compiled from, to find it when one of them changes.
    policies: Mutex<Vec<String>>,
}

/// The connections admitted by certificate that are still open.
#[derive(Default)]
pub struct LiveConnections {
    entries: Mutex<LiveList>,
}

#[derive(Default)]
struct LiveList {
    entries: Vec<Arc<LiveEntry>>,
    /// Closed connections are swept out when the list reaches this length, which then
    /// doubles: a CONNECT costs the same with a thousand devices connected as with a million.
    sweep_at: usize,
}

/// The shortest list worth sweeping.
const MIN_SWEEP: usize = 1024;

impl LiveConnections {
    pub(super) fn add(
        &self,
        access: &Arc<Access>,
        certificate: &str,
        client_id: &str,
        policies: Vec<String>,
    ) {
        let mut live = self.entries.lock();
        if live.entries.len() >= live.sweep_at {
            live.entries.retain(|e| e.access.strong_count() > 0);
            live.sweep_at = (live.entries.len() * 2).max(MIN_SWEEP);
        }
        live.entries.push(Arc::new(LiveEntry {
            access: Arc::downgrade(access),
            certificate: certificate.to_owned(),
            client_id: client_id.to_owned(),
            policies: Mutex::new(policies),
        }));
    }

    fn affected(&self, by: &Affected) -> Vec<(Arc<LiveEntry>, Arc<Access>)> {
        let mut live = self.entries.lock();
        live.entries.retain(|e| e.access.strong_count() > 0);
        live.sweep_at = (live.entries.len() * 2).max(MIN_SWEEP);
        live.entries
            .iter()
            .filter(|e| by.touches(e))
            .filter_map(|e| Some((Arc::clone(e), e.access.upgrade()?)))
            .collect()
    }
}

/// What a burst of registry changes may change for live connections: anything (a change
/// whose reach is not worked out, such as a group's hierarchy or a CA), or the connections of
/// some certificates, of some things (client id = thing name), or compiled from some policies.
#[derive(Debug, Default)]
struct Affected {
    everything: bool,
    certificates: HashSet<String>,
    things: HashSet<String>,
    policies: HashSet<String>,
}

impl Affected {
    fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    fn is_empty(&self) -> bool {
        !self.everything
            && self.certificates.is_empty()
            && self.things.is_empty()
            && self.policies.is_empty()
    }

    /// The connections of `principal` (an ARN): a certificate's, or everything for another
    /// kind (a thing group's policies reach its things and its subgroups' things).
    fn principal(&mut self, principal: &str) {
        match principal.split_once(":cert/") {
            Some((_, id)) => {
                self.certificates.insert(id.to_owned());
            }
            None => self.everything = true,
        }
    }

    /// Notes the change of `key`.
    fn note(&mut self, key: &str) {
        match Key::parse(key) {
            Some(Key::Certificate { id }) => {
                self.certificates.insert(id.to_owned());
            }
            Some(
                Key::PrincipalThing { principal, .. }
                | Key::TargetPolicy {
                    target: principal, ..
                },
            ) => self.principal(&principal),
            Some(
                Key::ThingPrincipal { thing, .. }
                | Key::Thing { name: thing }
                | Key::GroupOfThing { thing, .. }
                | Key::GroupThing { thing, .. },
            ) => {
                self.things.insert(thing.to_owned());
            }
            Some(Key::Policy { name } | Key::PolicyVersion { name, .. }) => {
                self.policies.insert(name.to_owned());
            }
            // The other half of an attachment noted above, or nothing a certificate's access
            // depends on.
            Some(
                Key::PolicyTarget { .. }
                | Key::ThingType { .. }
                | Key::Authorizer { .. }
                | Key::DefaultAuthorizer
                | Key::Credentials
                | Key::OwnCa,
            ) => {}
            // A group's hierarchy or a CA, whose reach is not worked out, or a key that does
            // not parse.
            _ => self.everything = true,
        }
    }

    fn touches(&self, entry: &LiveEntry) -> bool {
        self.everything
            || self.certificates.contains(&entry.certificate)
            || self.things.contains(&entry.client_id)
            || entry
                .policies
                .lock()
                .iter()
                .any(|p| self.policies.contains(p))
    }
}

impl DeviceAdmission {
    /// Re-evaluates the live certificate connections `affected` reaches: new permissions,
    /// or the end of them.
    async fn refresh_live(&self, affected: &Affected) {
        for (entry, access) in self.live.affected(affected) {
            let (certificate, client_id) = (&entry.certificate, &entry.client_id);
            match self.device_permissions(certificate, client_id).await {
                Ok((permissions, names)) if permissions.allows(Action::Connect, client_id) => {
                    access.replace(permissions);
                    *entry.policies.lock() = names;
                }
                Err(reason::SERVER_UNAVAILABLE) => {}
                _ => {
                    tracing::info!(certificate = %certificate, client_id = %client_id, "access revoked");
                    access.revoke();
                }
            }
        }
    }
}

/// Follows registry changes and re-evaluates live device connections after each burst.
pub async fn follow_registry(admission: Arc<DeviceAdmission>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let mut changes = match admission.records.watch(crate::store::keys::REGISTRY) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                next = changes.next() => match next {
                    Some(Ok(first)) => {
                        // Gather the rest of the burst.
                        let mut affected = Affected::default();
                        for event in &first.events {
                            affected.note(&String::from_utf8_lossy(&event.kv.key));
                        }
                        while let Ok(Some(Ok(more))) = tokio::time::timeout(SETTLE, changes.next()).await {
                            for event in &more.events {
                                affected.note(&String::from_utf8_lossy(&event.kv.key));
                            }
                        }
                        if !affected.is_empty() {
                            admission.refresh_live(&affected).await;
                        }
                    }
                    // Behind the compaction point or closed: start over from now, after a
                    // full re-evaluation so that nothing missed stays in force.
                    Some(Err(_)) | None => {
                        admission.refresh_live(&Affected::everything()).await;
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::hex;

    fn entry(certificate: &str, client_id: &str, policies: &[&str]) -> LiveEntry {
        LiveEntry {
            access: Weak::new(),
            certificate: certificate.to_owned(),
            client_id: client_id.to_owned(),
            policies: Mutex::new(policies.iter().map(|p| (*p).to_owned()).collect()),
        }
    }

    fn after(keys: &[String]) -> Affected {
        let mut affected = Affected::default();
        for key in keys {
            affected.note(key);
        }
        affected
    }

    #[test]
    fn a_change_reaches_only_the_connections_it_concerns() {
        let lamp = entry("c1", "lamp", &["thing-scoped"]);
        let fan = entry("c2", "fan", &["fan-policy"]);
        let cert_arn = "arn:aws:iot:us-east-1:000000000000:cert/c1";
        let group_arn = "arn:aws:iot:us-east-1:000000000000:thinggroup/floor";
        let cases: Vec<(Vec<String>, bool, bool)> = vec![
            (vec!["aws/certificates/c1".into()], true, false),
            (
                vec![format!("aws/principal-things/{}/lamp", hex(cert_arn))],
                true,
                false,
            ),
            (
                vec![crate::store::keys::thing_principal("fan", cert_arn)],
                false,
                true,
            ),
            (vec!["aws/things/lamp".into()], true, false),
            (vec!["aws/thing-group-things/floor/fan".into()], false, true),
            (
                vec!["aws/policy-versions/fan-policy/0000000002".into()],
                false,
                true,
            ),
            (
                vec![
                    format!("aws/target-policies/{}/p", hex(cert_arn)),
                    format!("aws/policy-targets/p/{}", hex(cert_arn)),
                ],
                true,
                false,
            ),
            (
                vec![format!("aws/target-policies/{}/p", hex(group_arn))],
                true,
                true,
            ),
            (
                vec!["aws/thing-group-children/floor/room".into()],
                true,
                true,
            ),
            (vec!["aws/ca-certificates/x".into()], true, true),
            (
                vec!["aws/authorizer/a".into(), "aws/thing-types/t".into()],
                false,
                false,
            ),
        ];
        for (keys, reaches_lamp, reaches_fan) in cases {
            let affected = after(&keys);
            assert_eq!(affected.touches(&lamp), reaches_lamp, "{keys:?}");
            assert_eq!(affected.touches(&fan), reaches_fan, "{keys:?}");
        }
        assert!(after(&["aws/authorizer/a".into()]).is_empty());
    }
}
