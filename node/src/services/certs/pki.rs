//! X.509 for the registry: Halyard's CA, device and server certificates it issues, and the
//! parsing and chain checks that registering a certificate or a CA takes.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

pub use crate::auth::identity::x509::{certificate_id, name_fields};

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot generate: {0}")]
    Generate(String),
    #[error("{0}")]
    Invalid(String),
}

fn generate_error(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

/// A CA that signs: its certificate and private key, both PEM.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaPair {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// What the registry keeps of a parsed certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCertificate {
    pub der: Vec<u8>,
    /// Lowercase hex SHA-256 of the DER, AWS's certificate id.
    pub id: String,
    pub subject: String,
    pub issuer: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
}

/// A new device key pair and its certificate.
pub struct IssuedKeys {
    pub certificate_pem: String,
    pub public_key_pem: String,
    pub private_key_pem: String,
}

/// Generates a self-signed CA for the cluster.
pub fn generate_ca(common_name: &str) -> Result<CaPair, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Halyard");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = KeyPair::generate().map_err(generate_error)?;
    let certificate = params.self_signed(&key).map_err(generate_error)?;
    Ok(CaPair {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &CaPair) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)
        .map_err(|e| PkiError::Invalid(format!("the CA key is unreadable: {e}")))?;
    Issuer::from_ca_cert_pem(&ca.certificate_pem, key)
        .map_err(|e| PkiError::Invalid(format!("the CA certificate is unreadable: {e}")))
}

fn device_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    // The subject AWS IoT gives the certificates it creates.
    params
        .distinguished_name
        .push(DnType::CommonName, "AWS IoT Certificate");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    Ok(params)
}

fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    // Positive, as DER integers for serials must be.
    serial[0] &= 0x7f;
    serial
}

/// A new EC P-256 key pair and a client certificate for it, signed by `ca`.
pub fn issue_device(ca: &CaPair) -> Result<IssuedKeys, PkiError> {
    let key = super::keygen::generate(crate::config::KeyAlgorithm::EcP256)?;
    Ok(IssuedKeys {
        certificate_pem: issue_for_key(ca, &key)?,
        public_key_pem: key.public_key_pem,
        private_key_pem: key.private_key_pem,
    })
}

/// A client certificate for `key`, signed by `ca`.
pub fn issue_for_key(ca: &CaPair, key: &super::keygen::DeviceKey) -> Result<String, PkiError> {
    let public = rcgen::SubjectPublicKeyInfo::from_der(&key.public_key_der)
        .map_err(|e| PkiError::Invalid(format!("the device key is unusable: {e}")))?;
    Ok(device_params()?
        .signed_by(&public, &issuer(ca)?)
        .map_err(generate_error)?
        .pem())
}

/// A client certificate for the key of a certificate signing request, signed by `ca`.
pub fn issue_from_csr(ca: &CaPair, csr_pem: &str) -> Result<String, PkiError> {
    let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        PkiError::Invalid(format!("The certificate signing request is invalid: {e}"))
    })?;
    let mut params = device_params()?;
    // The subject the device asked for, with the validity and usages of an IoT certificate.
    params.distinguished_name = request.params.distinguished_name.clone();
    let request = CertificateSigningRequestParams {
        params,
        public_key: request.public_key,
    };
    Ok(request
        .signed_by(&issuer(ca)?)
        .map_err(generate_error)?
        .pem())
}

/// A server certificate for `names` (DNS names or IP addresses), signed by `ca`.
pub fn issue_server(ca: &CaPair, names: &[String]) -> Result<CaPair, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("halyard", String::as_str),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(generate_error),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    let key = KeyPair::generate().map_err(generate_error)?;
    let certificate = params
        .signed_by(&key, &issuer(ca)?)
        .map_err(generate_error)?;
    Ok(CaPair {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Parses the first certificate of a PEM text.
pub fn parse(pem: &str) -> Result<ParsedCertificate, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| {
        PkiError::Invalid("The certificate is not a PEM-encoded X.509 certificate".into())
    })?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::Invalid(format!(
            "Expected a CERTIFICATE PEM block, found {}",
            block.label
        )));
    }
    let certificate = block
        .parse_x509()
        .map_err(|e| PkiError::Invalid(format!("The certificate is not valid X.509: {e}")))?;
    let validity = certificate.validity();
    Ok(ParsedCertificate {
        id: certificate_id(&block.contents),
        subject: certificate.subject().to_string(),
        issuer: certificate.issuer().to_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_ca: certificate.is_ca(),
        der: block.contents,
    })
}

/// Checks that `pair` can serve as an issuing CA: a CA certificate, and the private key of
/// its public key.
pub fn check_ca_pair(pair: &CaPair) -> Result<(), PkiError> {
    let parsed = parse(&pair.certificate_pem)?;
    if !parsed.is_ca {
        return Err(PkiError::Invalid(
            "the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
        ));
    }
    let key = KeyPair::from_pem(&pair.key_pem)
        .map_err(|e| PkiError::Invalid(format!("the private key is unreadable: {e}")))?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&parsed.der)
        .map_err(|e| PkiError::Invalid(format!("The certificate is not valid X.509: {e}")))?;
    if certificate.public_key().subject_public_key.data.as_ref()
        != rcgen::PublicKeyData::der_bytes(&key)
    {
        return Err(PkiError::Invalid(
            "the private key does not belong to the certificate".into(),
        ));
    }
    Ok(())
}

/// Whether `certificate` (DER) was signed by the key of `ca` (DER).
pub fn signed_by(certificate: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, certificate)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(certificate),
        x509_parser::parse_x509_certificate(ca),
    ) else {
        return false;
    };
    certificate.issuer() == ca.subject()
        && certificate.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_pair_must_be_a_ca_with_its_own_key() {
        let ca = generate_ca("test CA").unwrap();
        let other = generate_ca("other CA").unwrap();
        assert!(check_ca_pair(&ca).is_ok());
        let mismatched = CaPair {
            certificate_pem: ca.certificate_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        assert!(
            check_ca_pair(&mismatched)
                .unwrap_err()
                .to_string()
                .contains("does not belong")
        );
        let device = issue_device(&ca).unwrap();
        let leaf = CaPair {
            certificate_pem: device.certificate_pem,
            key_pem: device.private_key_pem,
        };
        assert!(
            check_ca_pair(&leaf)
                .unwrap_err()
                .to_string()
                .contains("not a CA")
        );
    }

    #[test]
    fn issued_certificates_chain_to_their_ca_and_no_other() {
        let ca = generate_ca("test CA").unwrap();
        let other = generate_ca("other CA").unwrap();
        let device = issue_device(&ca).unwrap();
        let parsed = parse(&device.certificate_pem).unwrap();
        let ca_parsed = parse(&ca.certificate_pem).unwrap();
        assert!(ca_parsed.is_ca);
        assert!(!parsed.is_ca);
        assert_eq!(parsed.id.len(), 64);
        assert_eq!(parsed.id, certificate_id(&parsed.der));
        assert!(parsed.subject.contains("AWS IoT Certificate"));
        assert!(signed_by(&parsed.der, &ca_parsed.der));
        assert!(!signed_by(
            &parsed.der,
            &parse(&other.certificate_pem).unwrap().der
        ));
        assert!(device.private_key_pem.contains("PRIVATE KEY"));
        assert!(device.public_key_pem.contains("PUBLIC KEY"));
    }

    #[test]
    fn a_csr_gets_a_certificate_for_its_own_key_and_subject() {
        let ca = generate_ca("test CA").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "sensor-42");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = issue_from_csr(&ca, &csr).unwrap();
        let parsed = parse(&pem).unwrap();
        assert!(parsed.subject.contains("sensor-42"));
        assert!(signed_by(
            &parsed.der,
            &parse(&ca.certificate_pem).unwrap().der
        ));
        let (_, cert) = x509_parser::parse_x509_certificate(&parsed.der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        assert!(issue_from_csr(&ca, "not a csr").is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(parse("hello").is_err());
        assert!(parse("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn server_certificates_name_hosts_and_addresses() {
        let ca = generate_ca("test CA").unwrap();
        let server = issue_server(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let parsed = parse(&server.certificate_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&parsed.der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
    }
}
