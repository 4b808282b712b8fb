//! Rotating the peer CA with no node restarted, in three phases, each begun only once every
//! node reports (`GET /cluster/tls`) that it has loaded the previous one:
//!
//! 1. trust both: the peer Secret's `ca.crt` holds the old CA and the new one, while nodes
//!    still present certificates of the old;
//! 2. use the new: the peer certificate is reissued from the new CA (every node already trusts
//!    it, so old and new certificates are accepted alike);
//! 3. drop the old: `ca.crt` holds the new CA only; once every node trusts only it, the new CA
//!    becomes the CA and the rotation ends.
//!
//! The phase is read from the Secrets alone (the CA Secret's `next.crt` says a rotation is under
//! way; the peer Secret's bundle and issuer say how far), so an operator restarted at any point
//! carries on. What to do is decided here; the controller writes the Secrets.

use crate::pki::{self, Pair, PkiError};

/// What a node reports it has loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub pod: String,
    pub certificate_sha256: String,
    pub trusted_ca_sha256: Vec<String>,
}

/// The Secrets as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The CA (the CA Secret's `ca.crt` and `ca.key`).
    pub ca: Pair,
    /// The CA being rotated to (`next.crt`, `next.key`), during a rotation.
    pub next: Option<Pair>,
    /// The peer Secret's `ca.crt`: what nodes trust.
    pub bundle: String,
    /// The peer Secret's `tls.crt`: what nodes present.
    pub certificate: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    TrustBoth,
    UseNew,
    DropOld,
}

impl Phase {
    pub fn reason(self) -> &'static str {
        match self {
            Phase::TrustBoth => "TrustingBothCAs",
            Phase::UseNew => "IssuingFromNewCA",
            Phase::DropOld => "DroppingOldCA",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No rotation under way, none due.
    Steady,
    /// Begin (or write again, after a crash between the two Secrets): trust the old CA and
    /// `next` (made now by the caller when none exists).
    TrustBoth,
    /// Every node trusts both: reissue the peer certificate from the new CA.
    IssueFromNext,
    /// Every node presents a certificate of the new CA: trust only the new CA.
    DropOld,
    /// Every node trusts only the new CA: make it the CA.
    Finish,
    /// The phase under way waits for these pods to load it.
    Wait { phase: Phase, pods: Vec<String> },
}

/// SHA-256 of the DER of each certificate in `pem`, in order.
pub fn fingerprints(pem: &str) -> Result<Vec<String>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Parse {
            what: "certificate bundle",
            message: e.to_string(),
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &block.contents);
        out.push(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect());
    }
    Ok(out)
}

fn fingerprint(what: &'static str, pem: &str) -> Result<String, PkiError> {
    fingerprints(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Parse {
            what,
            message: "no certificate".into(),
        })
}

/// The step to take, given the Secrets, what each node of the cluster has loaded (`None`
/// for a node that did not say), and whether a rotation is due (the CA nears its end, or one
/// was asked for).
pub fn next_step(
    secrets: &Secrets,
    nodes: &[(String, Option<Loaded>)],
    due: bool,
) -> Result<Step, PkiError> {
    let Some(next) = &secrets.next else {
        return Ok(if due { Step::TrustBoth } else { Step::Steady });
    };
    let old = fingerprint("CA", &secrets.ca.certificate_pem)?;
    let new = fingerprint("next CA", &next.certificate_pem)?;
    let mut bundle = fingerprints(&secrets.bundle)?;
    bundle.sort();
    let mut both = vec![old.clone(), new.clone()];
    both.sort();
    let certificate = fingerprint("peer certificate", &secrets.certificate)?;
    let from_new = pki::issued_by(&secrets.certificate, &next.certificate_pem)?;
    let waiting = |phase: Phase, loaded: &dyn Fn(&Loaded) -> bool| {
        let pods: Vec<String> = nodes
            .iter()
            .filter(|(_, l)| !l.as_ref().is_some_and(loaded))
            .map(|(pod, _)| pod.clone())
            .collect();
        (!pods.is_empty()).then_some(Step::Wait { phase, pods })
    };
    let trusts = |l: &Loaded, want: &[String]| {
        let mut have = l.trusted_ca_sha256.clone();
        have.sort();
        have == want
    };
    if bundle == both && !from_new {
        return Ok(waiting(Phase::TrustBoth, &|l| trusts(l, &both)).unwrap_or(Step::IssueFromNext));
    }
    if bundle == both && from_new {
        return Ok(
            waiting(Phase::UseNew, &|l| l.certificate_sha256 == certificate)
                .unwrap_or(Step::DropOld),
        );
    }
    if bundle == [new.clone()] && from_new {
        let only_new = [new];
        return Ok(waiting(Phase::DropOld, &|l| trusts(l, &only_new)).unwrap_or(Step::Finish));
    }
    // The CA Secret has a next CA the peer Secret does not show yet (a crash between the two
    // writes): write the first phase again.
    Ok(Step::TrustBoth)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn loaded(pod: &str, certificate: &str, trusted: &[&str]) -> (String, Option<Loaded>) {
        (
            pod.to_owned(),
            Some(Loaded {
                pod: pod.to_owned(),
                certificate_sha256: fingerprint("c", certificate).unwrap(),
                trusted_ca_sha256: trusted
                    .iter()
                    .map(|t| fingerprint("t", t).unwrap())
                    .collect(),
            }),
        )
    }

    #[test]
    fn a_rotation_moves_a_phase_only_once_every_node_has_loaded_the_last() {
        let old = pki::new_ca(NOW, 10).unwrap();
        let new = pki::new_ca(NOW + 1, 3650).unwrap();
        let old_cert = pki::issue_peer(&old, NOW, 90).unwrap().certificate_pem;
        let new_cert = pki::issue_peer(&new, NOW, 90).unwrap().certificate_pem;
        let (o, n) = (&old.certificate_pem, &new.certificate_pem);
        let mut secrets = Secrets {
            ca: old.clone(),
            next: None,
            bundle: o.clone(),
            certificate: old_cert.clone(),
        };
        let steady = [
            loaded("hc-0", &old_cert, &[o]),
            loaded("hc-1", &old_cert, &[o]),
        ];
        assert_eq!(next_step(&secrets, &steady, false).unwrap(), Step::Steady);
        assert_eq!(next_step(&secrets, &steady, true).unwrap(), Step::TrustBoth);

        // The CA Secret has the next CA; the peer Secret not yet (the operator stopped).
        secrets.next = Some(new.clone());
        assert_eq!(
            next_step(&secrets, &steady, false).unwrap(),
            Step::TrustBoth
        );

        secrets.bundle = format!("{o}{n}");
        let one_loaded = [
            loaded("hc-0", &old_cert, &[o, n]),
            loaded("hc-1", &old_cert, &[o]),
        ];
        assert_eq!(
            next_step(&secrets, &one_loaded, false).unwrap(),
            Step::Wait {
                phase: Phase::TrustBoth,
                pods: vec!["hc-1".into()]
            }
        );
        let silent = [
            loaded("hc-0", &old_cert, &[o, n]),
            ("hc-1".to_owned(), None),
        ];
        assert!(matches!(
            next_step(&secrets, &silent, false).unwrap(),
            Step::Wait { .. }
        ));
        let both = [
            loaded("hc-0", &old_cert, &[n, o]),
            loaded("hc-1", &old_cert, &[o, n]),
        ];
        assert_eq!(
            next_step(&secrets, &both, false).unwrap(),
            Step::IssueFromNext
        );

        secrets.certificate = new_cert.clone();
        assert!(matches!(
            next_step(&secrets, &both, false).unwrap(),
            Step::Wait {
                phase: Phase::UseNew,
                ..
            }
        ));
        let using = [
            loaded("hc-0", &new_cert, &[o, n]),
            loaded("hc-1", &new_cert, &[o, n]),
        ];
        assert_eq!(next_step(&secrets, &using, false).unwrap(), Step::DropOld);

        secrets.bundle = n.clone();
        assert!(matches!(
            next_step(&secrets, &using, false).unwrap(),
            Step::Wait {
                phase: Phase::DropOld,
                ..
            }
        ));
        let done = [
            loaded("hc-0", &new_cert, &[n]),
            loaded("hc-1", &new_cert, &[n]),
        ];
        assert_eq!(next_step(&secrets, &done, false).unwrap(), Step::Finish);
    }
}
