//! TLS client configurations for `https` checks: one that verifies the
//! server certificate against the webpki roots (the default) and one for
//! checks with `tls_verify: false`, which still verifies the handshake
//! signatures but accepts any certificate. Both use the `ring` provider.

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::Result;

/// The two client configurations, built once and shared by every probe.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    verify: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
}

// === impl TlsConfigs ===

impl TlsConfigs {
    /// Builds both configurations.
    pub fn new() -> Result<Self> {
        let provider = Arc::new(ring::default_provider());
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut verify = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        verify.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut insecure = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        insecure.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            verify: Arc::new(verify),
            insecure: Arc::new(insecure),
        })
    }

    /// The configuration for a check with `tls_verify`.
    pub(crate) fn get(&self, verify: bool) -> Arc<ClientConfig> {
        if verify {
            self.verify.clone()
        } else {
            self.insecure.clone()
        }
    }
}

/// Accepts any certificate (`tls_verify: false`); signatures still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
