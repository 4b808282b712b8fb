//! The public keys a custom authorizer checks its tokens' signatures with.

/// A token signing key, parsed from PEM (`PUBLIC KEY`, SubjectPublicKeyInfo): RSA (PKCS#1
/// v1.5, SHA-256) or EC P-256 (ECDSA, SHA-256), as AWS IoT accepts.
pub enum SigningKey {
    Rsa(Vec<u8>),
    EcP256(Vec<u8>),
}

impl SigningKey {
    pub fn parse(pem: &str) -> Option<Self> {
        use rustls::pki_types::SubjectPublicKeyInfoDer;
        use rustls::pki_types::pem::PemObject;
        use x509_parser::prelude::FromDer;
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.trim().as_bytes()).ok()?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).ok()?;
        let key = spki.subject_public_key.data.to_vec();
        match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.113549.1.1.1" => Some(Self::Rsa(key)),
            "1.2.840.10045.2.1" => Some(Self::EcP256(key)),
            _ => None,
        }
    }

    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
        };
        match self {
            Self::Rsa(key) => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(message, signature)
                .is_ok(),
            Self::EcP256(key) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_keys_verify_ec_signatures() {
        use ring::rand::SystemRandom;
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let pem = key.public_key_pem();
        let signing = SigningKey::parse(&pem).unwrap();
        let signature = pair.sign(&rng, b"token").unwrap();
        assert!(signing.verifies(b"token", signature.as_ref()));
        assert!(!signing.verifies(b"other", signature.as_ref()));
        assert!(pair.public_key().as_ref().len() == 65);
        assert!(SigningKey::parse("not a key").is_none());
    }
}
