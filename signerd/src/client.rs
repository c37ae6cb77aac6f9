//! An mTLS gRPC client for signerd, used by `signerctl` and the black-box tests.
//!
//! It only connects; it never holds signing keys. The client private key is read into memory
//! for the TLS handshake and is never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use signerd_proto::v1::signer_client::SignerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The endpoint is malformed or the connection failed.
    #[error("{0}")]
    Connect(String),
}

/// Where to connect and with which certificates.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://host:port`.
    pub endpoint: String,
    /// CA that issued the server certificate.
    pub ca: PathBuf,
    /// Client certificate and key; `None` connects without one (the server will refuse).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify in the server certificate, when it differs from the endpoint's host.
    pub server_name: Option<String>,
}

impl ClientSettings {
    /// Settings for a `signerd dev` directory, acting as client `name`.
    pub fn dev(dir: &Path, name: &str, endpoint: String) -> ClientSettings {
        let pki = dir.join("pki");
        ClientSettings {
            endpoint,
            ca: pki.join("ca.pem"),
            identity: Some((
                pki.join(format!("{name}.pem")),
                pki.join(format!("{name}-key.pem")),
            )),
            server_name: None,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Connects (TLS 1.3 with a client certificate) and returns a `signer.v1.Signer` client.
pub async fn connect(s: &ClientSettings) -> Result<SignerClient<Channel>, ClientError> {
    Ok(SignerClient::new(channel(s).await?))
}

/// Connects and returns the raw channel (for health checks and other services).
pub async fn channel(s: &ClientSettings) -> Result<Channel, ClientError> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&s.ca)?));
    if let Some((cert, key)) = &s.identity {
        let key = zeroize::Zeroizing::new(read(key)?);
        tls = tls.identity(Identity::from_pem(read(cert)?, key.as_slice()));
    }
    if let Some(name) = &s.server_name {
        tls = tls.domain_name(name.clone());
    }
    Endpoint::from_shared(s.endpoint.clone())
        .map_err(|e| ClientError::Connect(format!("endpoint `{}`: {e}", s.endpoint)))?
        .tls_config(tls)
        .map_err(|e| ClientError::Connect(format!("TLS settings: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| {
            ClientError::Connect(format!("cannot connect to {}: {}", s.endpoint, chain(&e)))
        })
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
