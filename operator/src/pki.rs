//! The managed certificates: a CA per cluster, kept in a Secret the pods never mount, and the
//! certificate every node presents to the others (one for all: nodes verify the CA and the
//! name `halyard-peer`, not which node a peer is).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The name every node certificate carries and every node dials.
pub const PEER_SERVER_NAME: &str = "halyard-peer";
const DAY: i64 = 24 * 60 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub certificate_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not a PEM certificate: {message}")]
    Parse { what: &'static str, message: String },
}

fn validity(params: &mut CertificateParams, now: i64, days: u32) -> Result<(), PkiError> {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| PkiError::Parse {
            what: "validity",
            message: e.to_string(),
        })
    };
    // An hour of slack for clocks a little behind the operator's.
    params.not_before = at(now - 3600)?;
    params.not_after = at(now + i64::from(days) * DAY)?;
    Ok(())
}

fn ca_params(now: i64, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Halyard cluster CA {now}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, days)?;
    Ok(params)
}

/// A new CA, valid `days` from `now` (Unix seconds).
pub fn new_ca(now: i64, days: u32) -> Result<Pair, PkiError> {
    let key = KeyPair::generate()?;
    let certificate = ca_params(now, days)?.self_signed(&key)?;
    Ok(Pair {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The peer certificate, signed by `ca`, valid `days` from `now`.
pub fn issue_peer(ca: &Pair, now: i64, days: u32) -> Result<Pair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.certificate_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "halyard node");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, now, days)?;
    let certificate = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// When the first certificate in `pem` ends, in Unix seconds.
pub fn not_after(what: &'static str, pem: &str) -> Result<i64, PkiError> {
    let parse = |message: String| PkiError::Parse { what, message };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| parse(e.to_string()))?;
    let certificate = block.parse_x509().map_err(|e| parse(e.to_string()))?;
    Ok(certificate.validity().not_after.timestamp())
}

/// Whether the certificate `pem` was signed by the CA `ca_pem`.
pub fn issued_by(pem: &str, ca_pem: &str) -> Result<bool, PkiError> {
    let parse = |what: &'static str, pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map(|(_, block)| block)
            .map_err(|e| PkiError::Parse {
                what,
                message: e.to_string(),
            })
    };
    let (block, ca_block) = (parse("certificate", pem)?, parse("CA", ca_pem)?);
    let certificate = block.parse_x509().map_err(|e| PkiError::Parse {
        what: "certificate",
        message: e.to_string(),
    })?;
    let ca = ca_block.parse_x509().map_err(|e| PkiError::Parse {
        what: "CA",
        message: e.to_string(),
    })?;
    Ok(certificate.issuer() == ca.subject()
        && certificate.verify_signature(Some(ca.public_key())).is_ok())
}

/// Whether a certificate ending at `not_after` is due for renewal at `now`.
pub fn due(not_after: i64, now: i64, renew_before_days: u32) -> bool {
    not_after - now <= i64::from(renew_before_days) * DAY
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_peer_certificate_chains_to_its_ca_and_ends_when_asked() {
        let ca = new_ca(NOW, 3650).unwrap();
        let peer = issue_peer(&ca, NOW, 90).unwrap();
        assert_eq!(
            not_after("peer", &peer.certificate_pem).unwrap(),
            NOW + 90 * DAY
        );
        assert_eq!(
            not_after("ca", &ca.certificate_pem).unwrap(),
            NOW + 3650 * DAY
        );
        let (_, ca_block) =
            x509_parser::pem::parse_x509_pem(ca.certificate_pem.as_bytes()).unwrap();
        let (_, peer_block) =
            x509_parser::pem::parse_x509_pem(peer.certificate_pem.as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        let peer_cert = peer_block.parse_x509().unwrap();
        peer_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap();
        assert!(issued_by(&peer.certificate_pem, &ca.certificate_pem).unwrap());
        let other = new_ca(NOW + 1, 3650).unwrap();
        assert!(!issued_by(&peer.certificate_pem, &other.certificate_pem).unwrap());
        assert!(due(NOW + 29 * DAY, NOW, 30));
        assert!(!due(NOW + 31 * DAY, NOW, 30));
    }

    #[test]
    fn a_garbled_certificate_is_an_error_naming_it() {
        let err = not_after("peer certificate", "not a pem").unwrap_err();
        assert!(err.to_string().contains("peer certificate"), "{err}");
    }
}
