//! The Secrets the operator keeps: the admin token the nodes' cluster operations require, and
//! with managed TLS the peer CA (never mounted in a pod) and the peer certificate every node
//! presents (mounted; nodes load a change without a restart), renewed before its end, and the
//! CA rotated in three phases (see [`rotation`](crate::rotation)).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Api;
use kube::{Client, Resource};

use crate::crd::{CertificateStatus, HalyardCluster, TlsMode};
use crate::error::Error;
use crate::pki::{self, Pair};
use crate::resources::{self, Names, TOKEN_KEY};
use crate::rotation::{self, Loaded, Phase, Step};
use crate::writes;

/// Set on a HalyardCluster to rotate its peer CA now; a new value asks again.
pub const ROTATE_ANNOTATION: &str = "halyard.io/rotate-ca";
/// On the CA Secret: the value of [`ROTATE_ANNOTATION`] the last rotation answered.
const ROTATED_ANNOTATION: &str = "halyard.io/rotated-for";

/// The token the nodes' cluster operations require: made once, kept.
pub async fn admin_token(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
) -> Result<String, Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let name = names.admin_token();
    if let Some(secret) = secrets.get_opt(&name).await? {
        return text(&secret, &name, TOKEN_KEY);
    }
    let token = random_token();
    let secret = owned(
        cluster,
        names,
        &name,
        BTreeMap::from([(TOKEN_KEY.to_owned(), token.clone())]),
        BTreeMap::new(),
    );
    writes::create_or_adopt(&secrets, &secret).await?;
    // Read back: a token made by a concurrent round must be the one used.
    let secret = secrets.get(&name).await?;
    text(&secret, &name, TOKEN_KEY)
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn owned(
    cluster: &HalyardCluster,
    names: &Names,
    name: &str,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(names.namespace.clone()),
            labels: Some(resources::selector_labels(names)),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn text(secret: &Secret, name: &str, key: &str) -> Result<String, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| Error::SecretKey {
            secret: name.to_owned(),
            key: key.to_owned(),
        })
}

fn optional_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// The managed peer Secrets, as read.
struct Stored {
    secrets: rotation::Secrets,
    key: String,
    rotated_for: Option<String>,
}

async fn read(client: &Client, names: &Names) -> Result<Option<Stored>, Error> {
    let api = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let (ca_name, peer_name) = (names.peer_ca(), names.peer_tls());
    let (Some(ca), Some(peer)) = (api.get_opt(&ca_name).await?, api.get_opt(&peer_name).await?)
    else {
        return Ok(None);
    };
    let next = match (
        optional_text(&ca, "next.crt"),
        optional_text(&ca, "next.key"),
    ) {
        (Some(certificate_pem), Some(key_pem)) => Some(Pair {
            certificate_pem,
            key_pem,
        }),
        _ => None,
    };
    Ok(Some(Stored {
        secrets: rotation::Secrets {
            ca: Pair {
                certificate_pem: text(&ca, &ca_name, "ca.crt")?,
                key_pem: text(&ca, &ca_name, "ca.key")?,
            },
            next,
            bundle: text(&peer, &peer_name, "ca.crt")?,
            certificate: text(&peer, &peer_name, "tls.crt")?,
        },
        key: text(&peer, &peer_name, "tls.key")?,
        rotated_for: ca
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATED_ANNOTATION).cloned()),
    }))
}

async fn write_ca(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
    ca: &Pair,
    next: Option<&Pair>,
    rotated_for: Option<&str>,
) -> Result<(), Error> {
    let mut data = BTreeMap::from([
        ("ca.crt".to_owned(), ca.certificate_pem.clone()),
        ("ca.key".to_owned(), ca.key_pem.clone()),
    ]);
    if let Some(next) = next {
        data.insert("next.crt".to_owned(), next.certificate_pem.clone());
        data.insert("next.key".to_owned(), next.key_pem.clone());
    }
    let annotations = rotated_for
        .map(|v| BTreeMap::from([(ROTATED_ANNOTATION.to_owned(), v.to_owned())]))
        .unwrap_or_default();
    let secret = owned(cluster, names, &names.peer_ca(), data, annotations);
    let api = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    writes::apply(&api, &names.peer_ca(), &secret).await?;
    Ok(())
}

async fn write_peer(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
    bundle: &str,
    certificate: &Pair,
) -> Result<(), Error> {
    let data = BTreeMap::from([
        ("ca.crt".to_owned(), bundle.to_owned()),
        ("tls.crt".to_owned(), certificate.certificate_pem.clone()),
        ("tls.key".to_owned(), certificate.key_pem.clone()),
    ]);
    let secret = owned(cluster, names, &names.peer_tls(), data, BTreeMap::new());
    let api = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    writes::apply(&api, &names.peer_tls(), &secret).await?;
    Ok(())
}

/// Before the nodes' objects are applied (their pods mount the peer Secret): the CA and the
/// peer certificate exist, and outside a rotation the certificate is reissued from the CA when
/// it nears its end. Returns a note when it reissued one.
pub async fn ensure_peer(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
    now: i64,
) -> Result<Option<String>, Error> {
    let tls = &cluster.spec.tls;
    if tls.mode != TlsMode::Managed {
        return Ok(None);
    }
    let Some(stored) = read(client, names).await? else {
        let api = Api::<Secret>::namespaced(client.clone(), &names.namespace);
        let ca = match api.get_opt(&names.peer_ca()).await? {
            Some(secret) => Pair {
                certificate_pem: text(&secret, &names.peer_ca(), "ca.crt")?,
                key_pem: text(&secret, &names.peer_ca(), "ca.key")?,
            },
            None => {
                let ca = pki::new_ca(now, tls.ca_validity_days)?;
                let secret = owned(
                    cluster,
                    names,
                    &names.peer_ca(),
                    BTreeMap::from([
                        ("ca.crt".to_owned(), ca.certificate_pem.clone()),
                        ("ca.key".to_owned(), ca.key_pem.clone()),
                    ]),
                    BTreeMap::new(),
                );
                writes::create_or_adopt(&api, &secret).await?;
                // Read back: a CA made by a concurrent round must be the one used.
                let secret = api.get(&names.peer_ca()).await?;
                Pair {
                    certificate_pem: text(&secret, &names.peer_ca(), "ca.crt")?,
                    key_pem: text(&secret, &names.peer_ca(), "ca.key")?,
                }
            }
        };
        let peer = pki::issue_peer(&ca, now, tls.cert_validity_days)?;
        write_peer(client, cluster, names, &ca.certificate_pem, &peer).await?;
        return Ok(None);
    };
    let secrets = &stored.secrets;
    let ends = pki::not_after("peer certificate", &secrets.certificate)?;
    if secrets.next.is_some() || !pki::due(ends, now, tls.renew_before_days) {
        return Ok(None);
    }
    let issuer = &secrets.ca;
    let peer = pki::issue_peer(issuer, now, tls.cert_validity_days)?;
    write_peer(client, cluster, names, &secrets.bundle, &peer).await?;
    Ok(Some(
        "the peer certificate was reissued before its end; nodes load it without a restart"
            .to_owned(),
    ))
}

/// Where the peer certificates stand after a round.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub certificates: Vec<CertificateStatus>,
    /// The rotation phase under way and the pods it waits for, if one is.
    pub rotating: Option<(&'static str, Vec<String>)>,
    /// What this round changed, for an Event.
    pub changed: Option<String>,
}

/// After the nodes were observed: one step of the CA's rotation, if one is under way, due (the
/// CA nears its end) or asked for (a new value of [`ROTATE_ANNOTATION`]).
pub async fn rotate_peer_ca(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
    now: i64,
    loaded: &[(String, Option<Loaded>)],
) -> Result<PeerReport, Error> {
    let tls = &cluster.spec.tls;
    if tls.mode != TlsMode::Managed {
        return Ok(PeerReport::default());
    }
    let Some(stored) = read(client, names).await? else {
        return Ok(PeerReport::default());
    };
    let secrets = &stored.secrets;
    let asked = cluster
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .filter(|v| stored.rotated_for.as_deref() != Some(v.as_str()))
        .cloned();
    let ca_ends = pki::not_after("peer CA", &secrets.ca.certificate_pem)?;
    let due = asked.is_some() || pki::due(ca_ends, now, tls.renew_before_days);
    let step = rotation::next_step(secrets, loaded, due)?;
    let mut report = PeerReport::default();
    let rotated_for = asked.or(stored.rotated_for.clone());
    let current = Pair {
        certificate_pem: secrets.certificate.clone(),
        key_pem: stored.key.clone(),
    };
    match &step {
        Step::Steady => {}
        Step::Wait { phase, pods } => report.rotating = Some((phase.reason(), pods.clone())),
        Step::TrustBoth => {
            let next = match &secrets.next {
                Some(next) => next.clone(),
                None => pki::new_ca(now, tls.ca_validity_days)?,
            };
            write_ca(
                client,
                cluster,
                names,
                &secrets.ca,
                Some(&next),
                rotated_for.as_deref(),
            )
            .await?;
            let bundle = format!("{}{}", secrets.ca.certificate_pem, next.certificate_pem);
            write_peer(client, cluster, names, &bundle, &current).await?;
            report.rotating = Some((Phase::TrustBoth.reason(), Vec::new()));
            report.changed =
                Some("CA rotation begun: nodes trust the current CA and the new one".to_owned());
        }
        Step::IssueFromNext => {
            if let Some(next) = &secrets.next {
                let peer = pki::issue_peer(next, now, tls.cert_validity_days)?;
                write_peer(client, cluster, names, &secrets.bundle, &peer).await?;
            }
            report.rotating = Some((Phase::UseNew.reason(), Vec::new()));
            report.changed = Some(
                "every node trusts the new CA: the peer certificate is reissued from it".to_owned(),
            );
        }
        Step::DropOld => {
            if let Some(next) = &secrets.next {
                write_peer(client, cluster, names, &next.certificate_pem, &current).await?;
            }
            report.rotating = Some((Phase::DropOld.reason(), Vec::new()));
            report.changed = Some(
                "every node presents a certificate of the new CA: the old CA is no longer trusted"
                    .to_owned(),
            );
        }
        Step::Finish => {
            if let Some(next) = &secrets.next {
                write_ca(client, cluster, names, next, None, rotated_for.as_deref()).await?;
            }
            report.changed = Some("CA rotation done: every node trusts only the new CA".to_owned());
        }
    }
    let stored = read(client, names).await?;
    if let Some(stored) = stored {
        report.certificates = statuses(names, &stored.secrets, loaded)?;
    }
    Ok(report)
}

/// The certificates of Secrets the operator does not issue (`certManager` or `secrets` TLS):
/// when each ends and which nodes have loaded it. A Secret not there yet (cert-manager has
/// not issued it) is left out; its pods wait for it to start.
pub async fn mounted_certificates(
    client: &Client,
    cluster: &HalyardCluster,
    names: &Names,
    loaded: &[(String, Option<Loaded>)],
    served: &[(String, Option<String>)],
) -> Result<Vec<CertificateStatus>, Error> {
    let spec = &cluster.spec;
    if spec.tls.mode == TlsMode::Managed {
        return Ok(Vec::new());
    }
    let api = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let expiry = |what, pem: &str| -> Result<Time, Error> {
        let at = pki::not_after(what, pem)?;
        Ok(Time(
            jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::MAX),
        ))
    };
    let pods_where = |pick: &dyn Fn(&Loaded) -> bool| -> Vec<String> {
        loaded
            .iter()
            .filter(|(_, l)| l.as_ref().is_some_and(pick))
            .map(|(pod, _)| pod.clone())
            .collect()
    };
    let mut out = Vec::new();
    let peer_name = resources::peer_tls_secret(spec, names);
    if let Some(peer) = api.get_opt(&peer_name).await? {
        if let Some(bundle) = optional_text(&peer, "ca.crt") {
            let mut want = rotation::fingerprints(&bundle)?;
            want.sort();
            out.push(CertificateStatus {
                secret: peer_name.clone(),
                kind: "ca".to_owned(),
                not_after: expiry("peer CA", &bundle)?,
                loaded_by: pods_where(&|l| {
                    let mut have = l.trusted_ca_sha256.clone();
                    have.sort();
                    have == want
                }),
            });
        }
        let certificate = text(&peer, &peer_name, "tls.crt")?;
        let fingerprint = rotation::fingerprints(&certificate)?.into_iter().next();
        out.push(CertificateStatus {
            secret: peer_name.clone(),
            kind: "peer".to_owned(),
            not_after: expiry("peer certificate", &certificate)?,
            loaded_by: pods_where(&|l| Some(&l.certificate_sha256) == fingerprint.as_ref()),
        });
    }
    if let Some(server_name) = resources::server_tls_secret(spec, names)?
        && let Some(server) = api.get_opt(&server_name).await?
    {
        let certificate = text(&server, &server_name, "tls.crt")?;
        let fingerprint = rotation::fingerprints(&certificate)?.into_iter().next();
        out.push(CertificateStatus {
            secret: server_name,
            kind: "server".to_owned(),
            not_after: expiry("server certificate", &certificate)?,
            loaded_by: served
                .iter()
                .filter(|(_, sha)| sha.is_some() && *sha == fingerprint)
                .map(|(pod, _)| pod.clone())
                .collect(),
        });
    }
    Ok(out)
}

fn statuses(
    names: &Names,
    secrets: &rotation::Secrets,
    loaded: &[(String, Option<Loaded>)],
) -> Result<Vec<CertificateStatus>, Error> {
    let expiry = |what, pem: &str| -> Result<Time, Error> {
        let at = pki::not_after(what, pem)?;
        Ok(Time(
            jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::MAX),
        ))
    };
    let certificate = rotation::fingerprints(&secrets.certificate)?;
    let mut bundle = rotation::fingerprints(&secrets.bundle)?;
    bundle.sort();
    let presenting: Vec<String> = loaded
        .iter()
        .filter(|(_, l)| {
            l.as_ref()
                .is_some_and(|l| certificate.first() == Some(&l.certificate_sha256))
        })
        .map(|(pod, _)| pod.clone())
        .collect();
    let trusting: Vec<String> = loaded
        .iter()
        .filter(|(_, l)| {
            l.as_ref().is_some_and(|l| {
                let mut have = l.trusted_ca_sha256.clone();
                have.sort();
                have == bundle
            })
        })
        .map(|(pod, _)| pod.clone())
        .collect();
    let mut out = vec![
        CertificateStatus {
            secret: names.peer_ca(),
            kind: "ca".to_owned(),
            not_after: expiry("peer CA", &secrets.ca.certificate_pem)?,
            loaded_by: trusting,
        },
        CertificateStatus {
            secret: names.peer_tls(),
            kind: "peer".to_owned(),
            not_after: expiry("peer certificate", &secrets.certificate)?,
            loaded_by: presenting,
        },
    ];
    if let Some(next) = &secrets.next {
        out.push(CertificateStatus {
            secret: names.peer_ca(),
            kind: "next-ca".to_owned(),
            not_after: expiry("next peer CA", &next.certificate_pem)?,
            loaded_by: Vec::new(),
        });
    }
    Ok(out)
}
