//! Helpers for this crate's tests and the workspace's integration tests;
//! not part of the controlplane's API. They panic on failure, as tests do.
#![allow(clippy::expect_used)]

/// A fresh CA and a certificate for `127.0.0.1` it signs: (CA PEM, leaf
/// PEM, leaf key PEM in PKCS#8). Each call makes new keys, so two calls give
/// two CAs that do not trust each other's leaves.
///
/// # Panics
///
/// When key generation or signing fails (it does not with these
/// parameters).
pub fn ca_and_leaf() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "opengslb test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf parameters");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "cp-1");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}
