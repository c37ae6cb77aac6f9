//! Mutual TLS for the gRPC listener: rustls configuration (TLS 1.3 only, client certificates
//! required and checked against the configured CA and CRLs), the accept loop with its
//! connection limits, and the mapping from a verified client certificate to an [`Identity`].
//!
//! A handshake never blocks the accept loop: each one runs in its own task under a deadline.
//! A certificate that verifies but maps to no configured identity is not an identity: requests
//! on such a connection are refused by the API layer.
//!
//! No client holds a connection it does not use: the accept loop never waits for a free slot
//! (a connection beyond `server.max_connections` is closed at once, so a client learns it
//! immediately instead of hanging in the listen backlog); after its handshake a connection
//! counts against its identity's cap ([`caps`]), must send the HTTP/2 client preface within
//! `server.preface_timeout` ([`preface`]), and is closed once it has had no request in flight
//! for `server.idle_timeout` ([`idle`]).

pub mod caps;
pub mod idle;
pub mod pki;
pub mod preface;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use signerd_policy::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{IdentityConfig, TlsConfig, normalize_fingerprint};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Loads every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Builds the server configuration: TLS 1.3, client certificate required, ALPN h2.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&cfg.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| file_err(&cfg.client_ca, format!("not a usable CA certificate: {e}")))?;
    }
    let mut crls = Vec::new();
    for path in &cfg.crls {
        let list = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| file_err(path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e))?;
        if list.is_empty() {
            return Err(file_err(path, "no CRL found"));
        }
        crls.extend(list);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;

    crate::config::check_secret_file(&cfg.key).map_err(TlsError::Config)?;
    let chain = load_certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err(&cfg.key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How configured identities are found from a client certificate.
#[derive(Debug, Clone, Default)]
pub struct IdentityMap {
    entries: Vec<(Matcher, Identity)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    SubjectCn(String),
    SanUri(String),
    Sha256(String),
}

/// A verified client certificate, and what it maps to.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
    /// The identity, or why there is none.
    pub identity: Result<Identity, String>,
}

impl IdentityMap {
    /// Builds the map from the configuration (already validated).
    pub fn new(entries: &[IdentityConfig]) -> IdentityMap {
        let entries = entries
            .iter()
            .filter_map(|e| {
                let m = if let Some(cn) = &e.subject_cn {
                    Matcher::SubjectCn(cn.clone())
                } else if let Some(uri) = &e.san_uri {
                    Matcher::SanUri(uri.clone())
                } else {
                    Matcher::Sha256(normalize_fingerprint(e.sha256.as_deref()?)?)
                };
                Some((
                    m,
                    Identity {
                        id: e.id.clone(),
                        roles: e.roles.clone(),
                    },
                ))
            })
            .collect();
        IdentityMap { entries }
    }

    /// Maps a certificate that rustls has already verified.
    pub fn resolve(&self, der: &[u8]) -> ClientCert {
        let sha256 = hex::encode(Sha256::digest(der));
        let identity = self.identity_of(der, &sha256);
        ClientCert { sha256, identity }
    }

    fn identity_of(&self, der: &[u8], sha256: &str) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("client certificate cannot be parsed: {e}"))?;
        let cns: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect();
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut found: Vec<&Identity> = self
            .entries
            .iter()
            .filter(|(m, _)| match m {
                Matcher::SubjectCn(cn) => cns.contains(&cn.as_str()),
                Matcher::SanUri(uri) => uris.contains(&uri.as_str()),
                Matcher::Sha256(fp) => fp == sha256,
            })
            .map(|(_, id)| id)
            .collect();
        found.dedup_by(|a, b| a.id == b.id);
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "client certificate (subject CN {cns:?}, sha256 {sha256}) is not mapped to any identity"
            )),
            many => Err(format!(
                "client certificate sha256 {sha256} matches several identities ({}); refusing",
                many.iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// What the API layer learns about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The verified client certificate.
    pub cert: Option<ClientCert>,
    /// The connection's requests in flight, counted by [`idle::TrackRequests`].
    pub activity: Arc<idle::ConnActivity>,
}

/// An accepted, handshaken mTLS connection that has sent its HTTP/2 preface. Holds its
/// connection-limit permit and its slot under its identity's cap.
///
/// Reads hand on the preface read by the accept path first, then the TLS stream. Once the
/// connection has had no request in flight for the idle timeout, it sends TLS close_notify,
/// shuts down its sending side and reads as ended, so the HTTP/2 server closes it.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: ConnInfo,
    /// The preface and first SETTINGS frame, read before the HTTP/2 server saw the connection.
    replay: Vec<u8>,
    /// How much of `replay` was handed on.
    replayed: usize,
    idle: idle::IdleTimer,
    /// The idle timeout passed: the connection is being closed.
    closing: bool,
    _permit: OwnedSemaphorePermit,
    _cap: caps::CapSlot,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if !this.closing && this.idle.poll_expired(cx).is_ready() {
            this.closing = true;
            tracing::debug!(peer = %this.info.peer, "closing a connection idle for server.idle_timeout");
        }
        if this.closing {
            // close_notify and FIN, then the end of the stream for the HTTP/2 server, which has
            // no stream open on this connection.
            if let Err(e) = std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
                tracing::debug!(peer = %this.info.peer, error = %e, "closing an idle connection");
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A handshake that failed, or a connection refused over its identity's cap: who tried and
/// why (reported to the audit log).
#[derive(Debug, Clone)]
pub struct HandshakeFailure {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The client certificate's SHA-256, when the handshake verified one.
    pub cert_sha256: Option<String>,
    /// rustls's reason, the deadline, or the cap.
    pub reason: String,
}

/// Accept-loop settings.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// Deadline for one handshake.
    pub handshake_timeout: Duration,
    /// Deadline, after the handshake, for the HTTP/2 client preface.
    pub preface_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections of one identity.
    pub max_connections_per_identity: usize,
    /// Most connections of all unmapped certificates together.
    pub max_connections_unmapped: usize,
}

/// How often, at most, the accept loop logs that it closed connections over
/// `server.max_connections`.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands back handshaken [`TlsConn`]s that sent their HTTP/2
/// preface on a channel. Each connection is set up in its own task: the handshake under
/// `handshake_timeout`, its identity's cap, then the preface under `preface_timeout`.
/// Handshake failures and connections over a cap go to `failures`. The loop and the set-ups
/// are tracked by `background`; the loop ends when it is cancelled or the receiver is dropped.
pub fn accept_loop(
    background: &crate::tasks::Background,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    identities: Arc<IdentityMap>,
    opts: AcceptOptions,
    failures: mpsc::UnboundedSender<HandshakeFailure>,
) -> mpsc::Receiver<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let caps = caps::ConnCaps::new(
        opts.max_connections_per_identity,
        opts.max_connections_unmapped,
    );
    let bg = background.clone();
    background.spawn("TLS accept loop", async move {
        let mut full = FullWarning::default();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
                () = bg.cancelled() => return,
            };
            // Never wait for a slot: a client kept in the listen backlog would only see its
            // deadline pass. Closed at once, it can retry or go elsewhere.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(tcp);
                full.refused(opts.max_connections);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let setup = Setup {
                acceptor: acceptor.clone(),
                identities: identities.clone(),
                caps: caps.clone(),
                opts: opts.clone(),
                failures: failures.clone(),
            };
            let tx = tx.clone();
            bg.spawn("TLS connection set-up", async move {
                if let Some(conn) = setup.run(tcp, peer, permit).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    rx
}

/// Logs connections closed over `server.max_connections`, at most every
/// [`FULL_WARNING_EVERY`].
#[derive(Debug, Default)]
struct FullWarning {
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl FullWarning {
    fn refused(&mut self, max: usize) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < FULL_WARNING_EVERY) {
            return;
        }
        tracing::warn!(
            closed = self.since,
            max_connections = max,
            "server.max_connections connections are open: closing new connections at once"
        );
        self.last = Some(tokio::time::Instant::now());
        self.since = 0;
    }
}

/// What one connection's set-up needs.
struct Setup {
    acceptor: TlsAcceptor,
    identities: Arc<IdentityMap>,
    caps: Arc<caps::ConnCaps>,
    opts: AcceptOptions,
    failures: mpsc::UnboundedSender<HandshakeFailure>,
}

/// Longest a connection refused over a cap is kept to be told why.
const REFUSAL_WAIT: Duration = Duration::from_millis(250);

/// Sends a refused connection's GOAWAY, reads (and drops) what the client sends until it
/// closes or [`REFUSAL_WAIT`] passes, so that closing does not reset the connection before the
/// client read why, then closes it (TLS close_notify). Bounded: about twice `REFUSAL_WAIT`.
async fn tell_refused(stream: &mut TlsStream<TcpStream>, reason: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let told = async {
        stream.write_all(&preface::refusal(reason)).await?;
        stream.flush().await?;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, told).await;
    let _ = tokio::time::timeout(REFUSAL_WAIT, stream.shutdown()).await;
}

impl Setup {
    /// Handshake, cap, preface: the connection, or `None` when it was closed.
    async fn run(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<TlsConn> {
        let deadline = self.opts.handshake_timeout;
        let refuse = |cert_sha256: Option<String>, reason: String| {
            tracing::info!(%peer, %reason, "connection refused");
            let _ = self.failures.send(HandshakeFailure {
                peer,
                cert_sha256,
                reason,
            });
        };
        let mut stream = match tokio::time::timeout(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                refuse(None, e.to_string());
                return None;
            }
            Err(_) => {
                refuse(
                    None,
                    format!("TLS handshake not completed within {deadline:?}"),
                );
                return None;
            }
        };
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| self.identities.resolve(der));
        let holder = match cert.as_ref().map(|c| &c.identity) {
            Some(Ok(identity)) => caps::Holder::Identity(identity.id.clone()),
            _ => caps::Holder::Unmapped,
        };
        let cap = match self.caps.take(holder) {
            Ok(slot) => slot,
            Err(reason) => {
                refuse(cert.map(|c| c.sha256), reason.clone());
                // The connection no longer counts; the client is told why (a GOAWAY that
                // gRPC clients report as RESOURCE_EXHAUSTED) within a short, fixed time.
                drop(permit);
                let _ =
                    tokio::time::timeout(REFUSAL_WAIT, tell_refused(&mut stream, &reason)).await;
                return None;
            }
        };
        let wait = self.opts.preface_timeout;
        let replay = match tokio::time::timeout(wait, preface::read(&mut stream)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed before serving");
                return None;
            }
            Err(_) => {
                tracing::info!(
                    %peer,
                    "no HTTP/2 client preface within server.preface_timeout ({wait:?}): closing"
                );
                return None;
            }
        };
        let activity = idle::ConnActivity::new();
        Some(TlsConn {
            inner: stream,
            info: ConnInfo {
                peer,
                cert,
                activity: activity.clone(),
            },
            replay,
            replayed: 0,
            idle: idle::IdleTimer::new(activity, self.opts.idle_timeout),
            closing: false,
            _permit: permit,
            _cap: cap,
        })
    }
}
