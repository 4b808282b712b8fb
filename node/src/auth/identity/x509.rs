//! What an X.509 client certificate says about its holder: its id as AWS IoT names it, and the
//! subject and issuer fields that policies read as variables.

use ring::digest;

/// A certificate's id as AWS IoT gives it: the lowercase hex SHA-256 of its DER.
pub fn certificate_id(der: &[u8]) -> String {
    let mut id = String::with_capacity(64);
    crate::store::keys::push_hex(&mut id, digest::digest(&digest::SHA256, der).as_ref());
    id
}

/// The subject and issuer attributes of a certificate, as AWS IoT policy variables name them
/// (`Subject.CommonName`, `Issuer.Organization`, ...).
pub fn name_fields(der: &[u8]) -> Vec<(String, String)> {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for (side, name) in [
        ("Subject", certificate.subject()),
        ("Issuer", certificate.issuer()),
    ] {
        for attribute in name.iter_attributes() {
            let oid = attribute.attr_type();
            let label = if *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME {
                "CommonName"
            } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
                "Organization"
            } else if *oid == x509_parser::oid_registry::OID_X509_ORGANIZATIONAL_UNIT {
                "OrganizationalUnit"
            } else if *oid == x509_parser::oid_registry::OID_X509_COUNTRY_NAME {
                "Country"
            } else if *oid == x509_parser::oid_registry::OID_X509_STATE_OR_PROVINCE_NAME {
                "State"
            } else if *oid == x509_parser::oid_registry::OID_X509_LOCALITY_NAME {
                "Locality"
            } else if *oid == x509_parser::oid_registry::OID_X509_SERIALNUMBER {
                "SerialNumber"
            } else {
                continue;
            };
            if let Ok(value) = attribute.as_str() {
                fields.push((format!("{side}.{label}"), value.to_owned()));
            }
        }
    }
    fields.push((
        "SerialNumber".to_owned(),
        certificate.raw_serial_as_string().replace(':', ""),
    ));
    fields
}
