//! The PKCS#11 key backend: keys generated and kept inside an HSM (SoftHSM2 in tests), used
//! through [`cryptoki`] (PKCS#11 v2.40 / v3.0).
//!
//! - Private keys never leave the token: they are created with `CKA_SENSITIVE` true and
//!   `CKA_EXTRACTABLE` false, and signerd only ever asks the token to sign.
//! - The daemon computes every digest (keccak256 for EVM) and the token signs it with
//!   `CKM_ECDSA`; the result is normalized to low s and its recovery id found by trial
//!   recovery against the key's public point, so a signature that does not verify is never
//!   returned ([`ec`]). Ed25519 keys sign the message with `CKM_EDDSA`, checked the same way.
//! - Calls run on blocking threads with a per-call timeout, over a pool of `sessions`
//!   sessions. When the token fails (removed, `CKR_DEVICE_ERROR`, closed sessions, a call that
//!   hangs) requests fail with UNAVAILABLE, [`KeyBackend::healthy`] turns false, and a monitor
//!   task drops the connection and connects and logs in again until the token is back.
//!
//! The set of keys is read once at start; a key generated while the daemon runs is used after
//! a restart.

mod config;
mod ec;
mod token;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

pub use config::{AdoptConfig, Pkcs11Config};
use token::{Conn, TokenKey};

use super::{
    Algorithm, AuditKeySpec, KeyBackend, KeyError, KeyHandle, KeyInfo, Payload, RawSignature,
};

/// The backend's name in configuration, `KeyInfo` and audit records.
pub const BACKEND_NAME: &str = "pkcs11";

/// How often the monitor looks at the token (and retries a lost one).
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// Keys held in a PKCS#11 token.
pub struct Pkcs11Backend {
    inner: Arc<Inner>,
    /// Stops the monitor (it also stops on shutdown).
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Inner {
    cfg: Pkcs11Config,
    pin: SecretString,
    keys: BTreeMap<String, TokenKey>,
    /// The audit checkpoint key, apart from `keys` (see [`crate::keys::AuditKeySpec`]).
    audit: Option<TokenKey>,
    /// The live connection; `None` while the token is lost.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Why the token is unavailable, for statuses and logs.
    last_error: Mutex<String>,
    healthy: AtomicBool,
    permits: tokio::sync::Semaphore,
    /// Wakes the monitor at once after a failure. Shared so that the sleeping monitor holds
    /// only this, not the backend.
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.inner.cfg.module)
            .field("keys", &self.inner.keys.keys().collect::<Vec<_>>())
            .field("healthy", &self.inner.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Loads the module, logs in, and reads the token's keys. Blocks; call it at start-up.
    /// When called inside a tokio runtime, starts the monitor that detects a lost token and
    /// reconnects.
    ///
    /// With `audit`, the private key labelled `audit.name` is the audit checkpoint key, kept
    /// apart from client keys; it is generated (Ed25519, like any key of signerd's) when
    /// missing and `audit.create` is set. A token without it, when it may not be created,
    /// opens without an audit key.
    pub fn open(
        cfg: &Pkcs11Config,
        pin: SecretString,
        audit: Option<&AuditKeySpec>,
        background: &crate::tasks::Background,
    ) -> Result<Pkcs11Backend, KeyError> {
        cfg.validate().map_err(KeyError::Keystore)?;
        let mut conn = Conn::open(cfg, &pin).map_err(|e| KeyError::Unavailable(e.to_string()))?;
        let label = audit.map(|a| a.name.as_str());
        let (keys, mut audit_key) = conn.scan(cfg, label).map_err(KeyError::Keystore)?;
        if let Some(spec) = audit
            && spec.create
            && audit_key.is_none()
        {
            let key = token::generate(&conn, &spec.name, Algorithm::Ed25519)
                .map_err(KeyError::Keystore)?;
            conn.resolve([(token::AUDIT_SLOT, &key)])
                .map_err(KeyError::Keystore)?;
            tracing::info!(label = %spec.name, "generated the audit checkpoint key in the PKCS#11 token");
            audit_key = Some(key);
        }
        tracing::info!(
            module = %cfg.module.display(),
            keys = keys.len(),
            audit_key = audit_key.is_some(),
            sessions = cfg.sessions,
            "PKCS#11 token opened"
        );
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            pin,
            keys,
            audit: audit_key,
            conn: Mutex::new(Some(Arc::new(conn))),
            last_error: Mutex::new(String::new()),
            healthy: AtomicBool::new(true),
            permits: tokio::sync::Semaphore::new(cfg.sessions),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        let stop = background.child();
        if tokio::runtime::Handle::try_current().is_ok() {
            let (work, stopped) = (monitor(Arc::downgrade(&inner)), stop.clone());
            background.spawn("pkcs11 monitor", async move {
                tokio::select! {
                    () = stopped.cancelled() => {}
                    () = work => {}
                }
            });
        }
        Ok(Pkcs11Backend { inner, stop })
    }

    /// Generates a key pair inside the token (see [`Pkcs11Backend`] for its attributes).
    pub fn generate(
        cfg: &Pkcs11Config,
        pin: &SecretString,
        id: &str,
        algorithm: Algorithm,
    ) -> Result<KeyInfo, KeyError> {
        crate::keys::key_id(id)?;
        cfg.validate().map_err(KeyError::Keystore)?;
        let conn = Conn::open(cfg, pin).map_err(KeyError::Unavailable)?;
        let key = token::generate(&conn, id, algorithm).map_err(KeyError::Keystore)?;
        Ok(key.info)
    }
}

impl Inner {
    /// Signs with `key`, whose handle is in the connection's slot `slot` (its key id, or
    /// [`token::AUDIT_SLOT`]).
    async fn sign_with(
        &self,
        slot: &str,
        key: &TokenKey,
        payload: Payload<'_>,
    ) -> Result<RawSignature, KeyError> {
        let inner = self;
        let id = key.info.id.as_str();
        let algorithm = key.info.algorithm;
        let data: Vec<u8> = match (algorithm, payload) {
            (Algorithm::Secp256k1 | Algorithm::P256, Payload::Prehash(d)) => d.to_vec(),
            (Algorithm::Ed25519, Payload::Message(m)) => m.to_vec(),
            (_, Payload::Prehash(_)) => {
                return Err(KeyError::WrongAlgorithm {
                    id: id.to_owned(),
                    algorithm,
                    what: "it signs messages, not digests".into(),
                });
            }
            (_, Payload::Message(_)) => {
                return Err(KeyError::WrongAlgorithm {
                    id: id.to_owned(),
                    algorithm,
                    what: "it signs digests, not messages".into(),
                });
            }
        };
        let limit = inner.cfg.call_timeout();
        let _permit = tokio::time::timeout(limit, inner.permits.acquire())
            .await
            .map_err(|_| {
                KeyError::Unavailable(format!(
                    "all {} PKCS#11 sessions stayed busy for {} ms",
                    inner.cfg.sessions,
                    limit.as_millis()
                ))
            })?
            .map_err(|_| KeyError::Unavailable("the PKCS#11 backend is closing".into()))?;
        let Some(conn) = inner.lock_conn().clone() else {
            return Err(inner.unavailable());
        };
        let handle = conn
            .handle(slot)
            .ok_or_else(|| KeyError::Unavailable(format!("key `{id}` has no token handle")))?;
        let c = conn.clone();
        let signed = run_blocking(limit, move || {
            let session = c.session()?;
            match token::sign(&session, algorithm, handle, &data) {
                Ok(sig) => {
                    c.put_back(session);
                    Ok(sig)
                }
                // A session that failed is not reused; the error decides the connection's fate.
                Err(e) => Err(token::describe(&e)),
            }
        })
        .await;
        let raw = match signed {
            Ok(raw) => raw,
            Err(e) => {
                // Any failed call may mean a lost token or stale handles; the monitor finds
                // out by reconnecting, which is cheap next to signing with a broken one.
                inner.fail(&conn, e.clone());
                return Err(KeyError::Unavailable(format!(
                    "PKCS#11 signing failed: {e}"
                )));
            }
        };
        let checked = match payload {
            Payload::Prehash(d) => {
                super::verify::normalize_ecdsa(algorithm, &key.info.public_key, d, &raw)
            }
            Payload::Message(m) => super::verify::check_ed25519(&key.info.public_key, m, &raw),
        };
        checked.map_err(|e| {
            tracing::error!(key = %id, error = %e, "PKCS#11 token returned a bad signature");
            KeyError::Unavailable(format!("{e}; nothing was signed"))
        })
    }
}

/// What [`bench_raw`] measured.
#[derive(Debug, Clone)]
pub struct RawBench {
    /// Latency of each successful `C_Sign`.
    pub latencies: Vec<Duration>,
    /// Failed calls.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The benchmark baseline: `threads` threads, each with its own session, call `C_Sign` with
/// `CKM_ECDSA` (or `CKM_EDDSA`) on key `id` over one fixed 32-byte value for `duration`,
/// with nothing around the call (no policy, audit, normalization or transport). The
/// signatures are discarded. Needs the PIN, like key generation.
pub fn bench_raw(
    cfg: &Pkcs11Config,
    pin: &SecretString,
    id: &str,
    threads: usize,
    duration: Duration,
) -> Result<RawBench, KeyError> {
    cfg.validate().map_err(KeyError::Keystore)?;
    let mut conn = Conn::open(cfg, pin).map_err(KeyError::Unavailable)?;
    let (keys, _) = conn.scan(cfg, None).map_err(KeyError::Keystore)?;
    let key = keys
        .get(id)
        .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
    let algorithm = key.info.algorithm;
    let handle = conn
        .handle(id)
        .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
    let sessions = (0..threads)
        .map(|_| conn.session())
        .collect::<Result<Vec<_>, _>>()
        .map_err(KeyError::Unavailable)?;
    use sha2::Digest as _;
    // A fixed value that is neither a transaction nor a message hash of signerd's.
    let data = sha2::Sha256::digest(b"signerd pkcs11 raw baseline; not a transaction");
    let started = std::time::Instant::now();
    let deadline = started + duration;
    let results: Vec<(Vec<Duration>, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    while std::time::Instant::now() < deadline {
                        let t = std::time::Instant::now();
                        match token::sign(&session, algorithm, handle, &data) {
                            Ok(_) => lat.push(t.elapsed()),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed();
    let mut out = RawBench {
        latencies: Vec::new(),
        errors: 0,
        elapsed,
    };
    for (lat, errors) in results {
        out.latencies.extend(lat);
        out.errors += errors;
    }
    Ok(out)
}

impl Inner {
    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<Arc<Conn>>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self) -> KeyError {
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        KeyError::Unavailable(format!("PKCS#11 token unavailable: {why}"))
    }

    /// Drops `failed` (if it is still the live connection) and marks the token unavailable.
    fn fail(&self, failed: &Arc<Conn>, why: String) {
        let mut conn = self.lock_conn();
        if conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            let old = conn.take();
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.clone();
            self.healthy.store(false, Ordering::SeqCst);
            tracing::error!(error = %why, "PKCS#11 token failed: signing is unavailable until it is back");
            // Closing sessions talks to the token, which may hang: never on this thread.
            if let Some(old) = old {
                std::thread::spawn(move || drop(old));
            }
            self.wake.notify_one();
        }
    }
}

/// Watches the token: probes the live connection, and after a failure connects and logs in
/// again until it succeeds. Ends when the backend is dropped.
async fn monitor(inner: Weak<Inner>) {
    let mut logged = String::new();
    loop {
        // Sleeps holding only the notifier: a backend dropped meanwhile is released at once,
        // and the monitor ends at its next wake.
        let Some(notify) = inner.upgrade().map(|i| Arc::clone(&i.wake)) else {
            return;
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(MONITOR_PERIOD) => {}
        }
        let Some(wake) = inner.upgrade() else {
            return;
        };
        let current = wake.lock_conn().clone();
        match current {
            Some(conn) => {
                // Probe only when a session is free: a busy pool finds failures by itself.
                let Ok(_permit) = wake.permits.try_acquire() else {
                    continue;
                };
                let c = conn.clone();
                match run_blocking(wake.cfg.call_timeout(), move || c.probe()).await {
                    Ok(()) => {}
                    Err(e) => wake.fail(&conn, e),
                }
            }
            None => {
                let i = wake.clone();
                let attempt = run_blocking(wake.cfg.call_timeout() * 4, move || {
                    let mut conn = Conn::open(&i.cfg, &i.pin)?;
                    conn.resolve(
                        i.keys
                            .iter()
                            .map(|(id, k)| (id.as_str(), k))
                            .chain(i.audit.iter().map(|k| (token::AUDIT_SLOT, k))),
                    )?;
                    Ok(conn)
                })
                .await;
                match attempt {
                    Ok(conn) => {
                        *wake.lock_conn() = Some(Arc::new(conn));
                        wake.healthy.store(true, Ordering::SeqCst);
                        logged.clear();
                        tracing::info!("PKCS#11 token is back: signing resumes");
                    }
                    Err(e) => {
                        if e != logged {
                            tracing::warn!(error = %e, "PKCS#11 token still unavailable");
                            logged = e.clone();
                        }
                        *wake.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
                    }
                }
            }
        }
    }
}

/// Runs blocking PKCS#11 work on a blocking thread, giving up after `limit`.
async fn run_blocking<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("a PKCS#11 call panicked".to_owned()),
        Err(_) => Err(format!(
            "a PKCS#11 call did not return within {} ms",
            limit.as_millis()
        )),
    }
}

/// A key in the token: signs through the backend's session pool, in the token's slot for it.
struct TokenHandle {
    inner: Arc<Inner>,
    slot: String,
    key: TokenKey,
}

#[async_trait]
impl KeyHandle for TokenHandle {
    fn info(&self) -> &KeyInfo {
        &self.key.info
    }

    fn protection(&self) -> &super::Protection {
        &self.key.protection
    }

    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        self.inner.sign_with(&self.slot, &self.key, payload).await
    }
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn keys(&self) -> Vec<KeyInfo> {
        self.inner.keys.values().map(|k| k.info.clone()).collect()
    }

    fn key(&self, id: &str) -> Option<KeyInfo> {
        self.inner.keys.get(id).map(|k| k.info.clone())
    }

    fn handle(&self, id: &str) -> Option<Arc<dyn KeyHandle>> {
        let key = self.inner.keys.get(id)?.clone();
        Some(Arc::new(TokenHandle {
            inner: self.inner.clone(),
            slot: id.to_owned(),
            key,
        }))
    }

    fn audit_handle(&self) -> Option<Arc<dyn KeyHandle>> {
        let key = self.inner.audit.clone()?;
        Some(Arc::new(TokenHandle {
            inner: self.inner.clone(),
            slot: token::AUDIT_SLOT.to_owned(),
            key,
        }))
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst)
    }

    fn failure(&self) -> Option<KeyError> {
        (!self.healthy()).then(|| self.inner.unavailable())
    }

    fn sessions(&self) -> Option<(usize, usize)> {
        let total = self.inner.cfg.sessions;
        Some((
            total.saturating_sub(self.inner.permits.available_permits()),
            total,
        ))
    }
}
