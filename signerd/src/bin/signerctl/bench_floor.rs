//! `signerctl bench --baseline floor`: the transport floor. A gRPC server in its own process,
//! as signerd is, on the same stack as signerd (tonic over rustls, TLS 1.3, client certificate
//! required, the same accept loop) whose handler only hashes the EIP-191 message and signs it with an in-memory
//! secp256k1 key: no policy, no idempotency record, no audit log. What signerd achieves
//! against it is the cost of everything signerd adds to a signature.
//!
//! The server's certificates come from a throw-away CA made for the run, in a private
//! temporary directory removed afterwards; the key is random and dropped with the server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use signerd::client::ClientSettings;
use signerd::tls::pki::{ClientOptions, DevCa};
use signerd_proto::v1::{self, signer_server};
use tonic::{Request, Response, Status};

/// A running floor server (a child process); dropping it stops the server and removes its
/// files.
pub(crate) struct Floor {
    /// Client settings that reach it as a mapped client.
    pub(crate) settings: ClientSettings,
    // Dropped (and so removed) after `drop` below has stopped the server.
    _dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing its stdin stops it; killing it covers a server that does not listen.
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct FloorSigner {
    key: k256::ecdsa::SigningKey,
}

fn sign(key: &k256::ecdsa::SigningKey, hash: &[u8; 32]) -> Result<v1::Signature, Status> {
    let (sig, recid) = key
        .sign_prehash_recoverable(hash)
        .map_err(|_| Status::internal("signing failed"))?;
    let bytes = sig.to_bytes();
    let y_parity = u32::from(recid.is_y_odd());
    let mut all = bytes.to_vec();
    all.push(27 + recid.to_byte());
    Ok(v1::Signature {
        r: bytes[..32].to_vec(),
        s: bytes[32..].to_vec(),
        y_parity,
        v: 27 + u64::from(y_parity),
        bytes: all,
    })
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the floor server only signs"))
}

#[tonic::async_trait]
impl signer_server::Signer for FloorSigner {
    async fn list_keys(
        &self,
        _: Request<v1::ListKeysRequest>,
    ) -> Result<Response<v1::ListKeysResponse>, Status> {
        unimplemented()
    }

    async fn get_key(&self, _: Request<v1::GetKeyRequest>) -> Result<Response<v1::Key>, Status> {
        unimplemented()
    }

    async fn sign_evm_transaction(
        &self,
        _: Request<v1::SignEvmTransactionRequest>,
    ) -> Result<Response<v1::SignEvmTransactionResponse>, Status> {
        unimplemented()
    }

    async fn sign_evm_message(
        &self,
        req: Request<v1::SignEvmMessageRequest>,
    ) -> Result<Response<v1::SignEvmMessageResponse>, Status> {
        let req = req.into_inner();
        let (hash, _) = signerd::chain::evm::prepare_message(&req.key_id, &req.message)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let signature = sign(&self.key, &hash.0)?;
        Ok(Response::new(v1::SignEvmMessageResponse {
            signature: Some(signature),
            signing_hash: hash.to_vec(),
            ..Default::default()
        }))
    }

    async fn sign_typed_data(
        &self,
        _: Request<v1::SignTypedDataRequest>,
    ) -> Result<Response<v1::SignTypedDataResponse>, Status> {
        unimplemented()
    }

    async fn sign_digest(
        &self,
        _: Request<v1::SignDigestRequest>,
    ) -> Result<Response<v1::SignDigestResponse>, Status> {
        unimplemented()
    }

    async fn get_sign_request(
        &self,
        _: Request<v1::GetSignRequestRequest>,
    ) -> Result<Response<v1::SignRequestState>, Status> {
        unimplemented()
    }

    type WatchSignRequestStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::SignRequestState, Status>> + Send>,
    >;

    async fn watch_sign_request(
        &self,
        _: Request<v1::WatchSignRequestRequest>,
    ) -> Result<Response<Self::WatchSignRequestStream>, Status> {
        unimplemented()
    }
}

fn write(path: &std::path::Path, body: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.write_all(body.as_bytes())?;
    Ok(())
}

/// Starts the floor server, in its own process like signerd, on a free loopback port.
pub(crate) fn start() -> anyhow::Result<Floor> {
    // Mode 0700, removed when the floor is dropped.
    let temp = tempfile::Builder::new()
        .prefix("signerctl-floor-")
        .tempdir()
        .context("creating the floor's temporary directory")?;
    let dir = temp.path().to_path_buf();
    let mut floor = Floor {
        settings: ClientSettings {
            endpoint: String::new(),
            ca: dir.join("ca.pem"),
            identity: Some((dir.join("client.pem"), dir.join("client-key.pem"))),
            server_name: None,
        },
        _dir: temp,
        child: None,
    };
    let ca = DevCa::generate("signerctl floor CA")?;
    let server = ca.issue_server(&["127.0.0.1", "localhost"])?;
    let client = ca.issue_client("bench", &ClientOptions::default())?;
    write(&dir.join("ca.pem"), &ca.cert_pem(), 0o644)?;
    write(&dir.join("server.pem"), &server.cert_pem, 0o644)?;
    write(&dir.join("server-key.pem"), &server.key_pem, 0o600)?;
    write(&dir.join("client.pem"), &client.cert_pem, 0o644)?;
    write(&dir.join("client-key.pem"), &client.key_pem, 0o600)?;
    let exe = std::env::current_exe().context("cannot find signerctl's own executable")?;
    let mut child = std::process::Command::new(exe)
        .arg("bench-floor-server")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the floor server process")?;
    let stdout = child.stdout.take();
    floor.child = Some(child);
    let mut line = String::new();
    if let Some(stdout) = stdout {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .context("reading the floor server's address")?;
    }
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .context("the floor server did not start")?;
    floor.settings.endpoint = format!("https://{addr}");
    Ok(floor)
}

/// The floor server process (`signerctl bench-floor-server DIR`): serves with the certificates
/// in `DIR` on a free loopback port, prints `listening ADDR`, and stops when its standard
/// input closes.
pub(crate) async fn serve(dir: PathBuf) -> anyhow::Result<()> {
    let tls = signerd::tls::server_config(&signerd::config::TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: dir.join("ca.pem"),
        crls: Vec::new(),
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let (fail_tx, _fail_rx) = tokio::sync::mpsc::unbounded_channel();
    let background = signerd::tasks::Background::new();
    let conns = signerd::tls::accept_loop(
        &background,
        listener,
        tls,
        Arc::new(signerd::tls::IdentityMap::new(&[])),
        // The daemon's connection handling, without caps that would refuse the load generator
        // (its certificates map to no identity here).
        signerd::tls::AcceptOptions {
            handshake_timeout: std::time::Duration::from_secs(5),
            preface_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(300),
            max_connections: 4096,
            max_connections_per_identity: 4096,
            max_connections_unmapped: 4096,
        },
        fail_tx,
    );
    let service = signer_server::SignerServer::new(FloorSigner {
        key: k256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
    });
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
    };
    tonic::transport::Server::builder()
        .layer(signerd::tls::idle::TrackRequests)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conns),
            stdin_closed,
        )
        .await?;
    background.shutdown(signerd::tasks::SHUTDOWN_WAIT).await;
    Ok(())
}
