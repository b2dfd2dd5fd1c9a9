//! TLS of the agent channel, both ends (the agent binary uses the client
//! half from here, so there is one implementation).
//!
//! - Identities: a key pair and a self-signed certificate, created on first
//!   use (PEM files, mode 0600) and renewed with the same key.
//! - Controlplane: [`server_config`] asks every client for a certificate and
//!   accepts any (agents are self-signed; trust comes from the token and the
//!   pin, checked per RPC), but rustls still verifies the handshake
//!   signature, so a client proves it holds the key of the certificate it
//!   shows. [`incoming`] runs the handshakes off the accept loop, bounded in
//!   number and time, and hands tonic [`AgentConn`]s whose connect info
//!   carries the peer certificate's SHA-256 fingerprint.
//! - Agent: [`client_config`] verifies the controlplane either against a CA
//!   file or by pinning its certificate on first contact ([`PinStore`]), and
//!   [`connect`] opens a tonic channel over it.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring as provider, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// Certificates made here are valid this long.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// A certificate is renewed when less than this is left of it.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key pair and its certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// When the certificate file was written (its age decides renewal).
    pub written: SystemTime,
}

// === impl Identity ===

impl Identity {
    /// Reads the identity at `cert_path`/`key_path`, or creates one (files
    /// mode 0600, parent directories created) when neither exists. Returns
    /// it and whether it was created.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
        name: &str,
    ) -> io::Result<(Self, bool)> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(cert_path, key_path)?, false)),
            (false, false) => {
                let key = rcgen::KeyPair::generate().map_err(other)?;
                Ok((Self::issue(cert_path, key_path, &key, name)?, true))
            }
            (true, false) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} exists but its key {} does not; remove the certificate to make a new identity",
                    cert_path.display(),
                    key_path.display()
                ),
            )),
            (false, true) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} exists but its certificate {} does not; remove the key to make a new identity",
                    key_path.display(),
                    cert_path.display()
                ),
            )),
        }
    }

    /// Reads an existing identity.
    pub fn load(cert_path: &Path, key_path: &Path) -> io::Result<Self> {
        let cert =
            CertificateDer::from_pem_file(cert_path).map_err(|e| bad(cert_path, &e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad(key_path, &e.to_string()))?;
        let written = std::fs::metadata(cert_path)?.modified()?;
        Ok(Self {
            cert_der: cert.to_vec(),
            key_der: key.secret_der().to_vec(),
            written,
        })
    }

    /// A new certificate for the same key, written over the old one.
    pub fn renew(&self, cert_path: &Path, key_path: &Path, name: &str) -> io::Result<Self> {
        let key_pem = std::fs::read_to_string(key_path)?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(other)?;
        Self::issue(cert_path, key_path, &key, name)
    }

    /// A certificate for `key` only in memory (tests, benchmarks).
    pub fn ephemeral(name: &str) -> io::Result<Self> {
        let key = rcgen::KeyPair::generate().map_err(other)?;
        let cert = certificate(&key, name)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            written: SystemTime::now(),
        })
    }

    fn issue(
        cert_path: &Path,
        key_path: &Path,
        key: &rcgen::KeyPair,
        name: &str,
    ) -> io::Result<Self> {
        let cert = certificate(key, name)?;
        write_private(key_path, key.serialize_pem().as_bytes())?;
        write_private(cert_path, cert.pem().as_bytes())?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            written: SystemTime::now(),
        })
    }

    /// SHA-256 of the certificate.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Whether the certificate is within [`RENEW_BEFORE`] of its end.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        let age = now.duration_since(self.written).unwrap_or_default();
        age + RENEW_BEFORE >= CERT_VALIDITY
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }
}

/// A self-signed certificate for `key`, valid from a day ago for
/// [`CERT_VALIDITY`].
fn certificate(key: &rcgen::KeyPair, name: &str) -> io::Result<rcgen::Certificate> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(other)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let now = SystemTime::now();
    let (y, m, d) = ymd(now - Duration::from_secs(86_400));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(now + CERT_VALIDITY);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.self_signed(key).map_err(other)
}

/// The UTC civil date (year, month, day) of `t`.
fn ymd(t: SystemTime) -> (i32, u8, u8) {
    let days = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Writes `data` to `path` with mode 0600 (parents created), atomically.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn bad(path: &Path, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

// === controlplane side ===

/// The controlplane's agent listener configuration: mandatory client
/// certificates, any certificate accepted, handshake signatures verified.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(provider::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(identity.chain(), identity.key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any client certificate; the handshake signature is verified.
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// Who is at the other end of an agent connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Remote address.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate it presented.
    pub fingerprint: String,
}

/// An established agent connection; holds its slot of the connection limit.
pub struct AgentConn {
    io: TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("peer", &self.info)
            .finish()
    }
}

impl tonic::transport::server::Connected for AgentConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why a connection attempt was dropped before it reached gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Every connection slot is taken (a flood).
    Full,
    /// The TLS handshake failed (garbage, no certificate, bad signature).
    Handshake,
    /// The TLS handshake took longer than [`HANDSHAKE_TIMEOUT`].
    Timeout,
}

/// Accepts on `listener`, at most `max_connections` at once, runs each TLS
/// handshake in its own task (bounded by [`HANDSHAKE_TIMEOUT`]) and yields
/// the established connections. `dropped` is told about every refusal.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    max_connections: usize,
    dropped: Arc<dyn Fn(Dropped) + Send + Sync>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<AgentConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "agent listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                dropped(Dropped::Full);
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, dropped) = (acceptor.clone(), tx.clone(), dropped.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let Some(fp) = io
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| fingerprint(c))
                        else {
                            dropped(Dropped::Handshake);
                            return;
                        };
                        let conn = AgentConn {
                            io,
                            info: PeerInfo {
                                addr,
                                fingerprint: fp,
                            },
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "agent TLS handshake failed");
                        dropped(Dropped::Handshake);
                    }
                    Err(_) => dropped(Dropped::Timeout),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

// === agent side ===

/// Controlplane certificates pinned on first contact, one per endpoint,
/// kept in a file of `endpoint fingerprint` lines.
#[derive(Debug)]
pub struct PinStore {
    path: Option<PathBuf>,
    pins: Mutex<BTreeMap<String, String>>,
}

/// The controlplane presented a certificate other than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("controlplane {endpoint} presented certificate {got}, pinned {pinned}")]
pub struct PinMismatch {
    /// Endpoint.
    pub endpoint: String,
    /// Pinned fingerprint.
    pub pinned: String,
    /// Presented fingerprint.
    pub got: String,
}

// === impl PinStore ===

impl PinStore {
    /// Pins kept in `path` (read now when it exists); `None`: memory only.
    pub fn open(path: Option<PathBuf>) -> io::Result<Self> {
        let mut pins = BTreeMap::new();
        if let Some(p) = &path {
            if p.exists() {
                for (n, line) in std::fs::read_to_string(p)?.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let mut parts = line.split_whitespace();
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(e), Some(f), None) if f.len() == 64 => {
                            pins.insert(e.to_owned(), f.to_ascii_lowercase());
                        }
                        _ => {
                            return Err(bad(
                                p,
                                &format!("line {}: expected `host:port sha256-hex`", n + 1),
                            ))
                        }
                    }
                }
            }
        }
        Ok(Self {
            path,
            pins: Mutex::new(pins),
        })
    }

    /// Checks `fp` for `endpoint`, pinning it when none is pinned yet.
    pub fn check_or_pin(&self, endpoint: &str, fp: &str) -> Result<(), PinMismatch> {
        let mut pins = self.pins.lock().unwrap_or_else(PoisonError::into_inner);
        match pins.get(endpoint) {
            Some(p) if p == fp => Ok(()),
            Some(p) => Err(PinMismatch {
                endpoint: endpoint.to_owned(),
                pinned: p.clone(),
                got: fp.to_owned(),
            }),
            None => {
                pins.insert(endpoint.to_owned(), fp.to_owned());
                tracing::info!(
                    endpoint,
                    fingerprint = fp,
                    "controlplane certificate pinned (first contact)"
                );
                if let Some(path) = &self.path {
                    let mut text = String::from(
                        "# controlplane certificates pinned on first contact: endpoint sha256\n",
                    );
                    for (e, f) in pins.iter() {
                        text.push_str(&format!("{e} {f}\n"));
                    }
                    if let Err(e) = write_private(path, text.as_bytes()) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot save controlplane pins");
                    }
                }
                Ok(())
            }
        }
    }

    /// The pin of `endpoint`.
    pub fn get(&self, endpoint: &str) -> Option<String> {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned()
    }
}

/// How the agent trusts a controlplane.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Pin its certificate on first contact.
    Pin(Arc<PinStore>),
    /// Verify it against these roots (names are checked against the host
    /// of the endpoint).
    Roots(Arc<RootCertStore>),
}

/// Reads a PEM CA file into a root store.
pub fn roots_from(path: &Path) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(path, &e.to_string()))? {
        let c = c.map_err(|e| bad(path, &e.to_string()))?;
        roots.add(c).map_err(|e| bad(path, &e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(path, "no certificate in the CA file"));
    }
    Ok(roots)
}

/// The agent's client configuration for `endpoint`: presents `identity`,
/// verifies the controlplane per `trust`.
pub fn client_config(
    identity: &Identity,
    endpoint: &str,
    trust: &Trust,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(provider::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut cfg = match trust {
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(identity.chain(), identity.key())?,
        Trust::Pin(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                provider,
                endpoint: endpoint.to_owned(),
                pins: pins.clone(),
            }))
            .with_client_auth_cert(identity.chain(), identity.key())?,
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct PinVerifier {
    provider: Arc<CryptoProvider>,
    endpoint: String,
    pins: Arc<PinStore>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.pins
            .check_or_pin(&self.endpoint, &fingerprint(end_entity))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a gRPC channel to `endpoint` (`host:port`) over TLS with `config`,
/// the connection bounded by `timeout`.
pub async fn connect(
    endpoint: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let target = endpoint.to_owned();
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (config, host, target) = (config.clone(), host.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
}
