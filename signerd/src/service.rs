//! The signing pipeline: one request from decoded input to durable, audited answer.
//!
//! Order matters and is the same for every method: validate and decode the request into the
//! exact bytes to sign and an [`Action`]; take the per-request-id lock and replay a stored
//! answer if there is one; evaluate the policy; record request and decision; sign; record the
//! result and wait until it is fsynced; store the answer for retries; answer. Any failure on
//! the way fails closed: no signature leaves without its durable `sign.result` record.
//!
//! This module never builds `tonic::Status`; [`ServiceError`] is mapped in [`crate::api`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use alloy_primitives::B256;
use sha2::{Digest, Sha256};
use signerd_policy::{Action, BucketKey, Decision, Identity, Kind, Policy, Request, Usage, Used};

use crate::api::wire;
use crate::audit::events::{self, Outcome, PolicySource};
use crate::audit::{AuditLog, Receipt};
use crate::chain::evm::{self, PreparedTx};
use crate::ids::RequestId;
use crate::keys::{Algorithm, KeyBackend, KeyError, KeyInfo, Payload, RawSignature};
use crate::request::{
    Evaluation, Method, PolicyReloaded, SignOutcome, SignRequest, SignatureParts, Signed,
};
use crate::state::{Claim, Lookup, StateStore, StoredOutcome, StoredRequest};

/// How much longer than a claim's lease a request waits for another replica to let go of it.
const CLAIM_WAIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

mod admission;
pub mod answers;
mod approvals;
pub mod auth_failures;
mod pins;
#[cfg(test)]
mod pipeline_tests;
pub use admission::Admission;
pub use approvals::VoteRequest;
use approvals::Waiting;
pub(crate) use approvals::check_ballot;

/// Longest accepted `request_id`.
pub const MAX_REQUEST_ID_LEN: usize = crate::ids::MAX_REQUEST_ID_LEN;

/// Why a request was not signed. Each variant maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The key does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The policy denied it (PERMISSION_DENIED).
    #[error("{reason}")]
    PermissionDenied {
        /// The deciding rule, if any.
        rule: Option<String>,
        /// Human-readable reason naming the rule.
        reason: String,
    },
    /// The `request_id` was used for a different request (ABORTED).
    #[error("{0}")]
    Aborted(String),
    /// The operation conflicts with the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller has no identity (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A backend, the state store or the audit log cannot serve (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The daemon is overloaded: the request waited longer than `server.queue_timeout` for
    /// its turn and was shed before its work started (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
}

/// A key backend's failure as the client sees it. A backend that cannot serve, including one
/// that refuses signerd's own credentials (a revoked Vault token), is UNAVAILABLE: clients
/// retry it and it is never mistaken for a policy denial, which alone is PERMISSION_DENIED.
impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> ServiceError {
        match e {
            KeyError::NotFound(m) => ServiceError::NotFound(format!("key `{m}` not found")),
            KeyError::WrongAlgorithm { .. } => ServiceError::InvalidArgument(e.to_string()),
            KeyError::CredentialsRefused(_) => ServiceError::Unavailable(format!(
                "{e}; nothing was signed; signing resumes by itself once the key backend \
                 accepts signerd's credentials again"
            )),
            KeyError::Unavailable(_) => ServiceError::Unavailable(format!(
                "{e}; nothing was signed; signing resumes by itself once the key backend \
                 answers again"
            )),
            KeyError::Keystore(_) => ServiceError::Unavailable(format!("{e}; nothing was signed")),
        }
    }
}

impl ServiceError {
    /// (decision, gRPC status name) for metrics: `deny` for a policy denial, `none` for a
    /// request refused before the policy or failed after it (a key backend included).
    pub fn metric_labels(&self) -> (&'static str, &'static str) {
        match self {
            ServiceError::InvalidArgument(_) => ("none", "INVALID_ARGUMENT"),
            ServiceError::NotFound(_) => ("none", "NOT_FOUND"),
            ServiceError::PermissionDenied { .. } => ("deny", "PERMISSION_DENIED"),
            ServiceError::Aborted(_) => ("none", "ABORTED"),
            ServiceError::FailedPrecondition(_) => ("none", "FAILED_PRECONDITION"),
            ServiceError::Unauthenticated(_) => ("none", "UNAUTHENTICATED"),
            ServiceError::Unavailable(_) => ("none", "UNAVAILABLE"),
            ServiceError::ResourceExhausted(_) => ("none", "RESOURCE_EXHAUSTED"),
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The mapped identity.
    pub identity: Identity,
    /// SHA-256 of the client certificate, hex.
    pub cert_sha256: String,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
}

/// A decoded request, ready for policy and signing.
pub(crate) struct Prepared {
    method: Method,
    /// The request as received (encoded only for a request that waits for approval).
    request: SignRequest,
    /// Evaluate and explain only.
    dry_run: bool,
    pub(crate) request_id: RequestId,
    key: KeyInfo,
    pub(crate) action: Action,
    /// What the fingerprint commits to: the signing hash, or the raw digest.
    commitment: [u8; 32],
    payload: PayloadKind,
}

impl Prepared {
    /// The approval fingerprint of this request under the policy with SHA-256 `policy_hash`.
    pub(crate) fn approval_fingerprint(&self, policy_hash: &[u8; 32]) -> [u8; 32] {
        crate::approvals::fingerprint(
            self.method.as_str(),
            &self.key.id,
            self.action.chain_id,
            &self.commitment,
            policy_hash,
        )
    }

    /// The transaction to sign, for transaction requests.
    pub(crate) fn transaction(&self) -> Option<&PreparedTx> {
        match &self.payload {
            PayloadKind::Tx(tx) => Some(tx),
            _ => None,
        }
    }
}

/// A secp256k1 request over a 32-byte hash (EIP-191, EIP-712).
fn hash_prepared(
    method: Method,
    request: SignRequest,
    (request_id, dry_run): (RequestId, bool),
    key: KeyInfo,
    hash: B256,
    action: Action,
) -> Prepared {
    Prepared {
        method,
        request,
        dry_run,
        request_id,
        key,
        action,
        commitment: hash.0,
        payload: PayloadKind::EcdsaHash,
    }
}

enum PayloadKind {
    Tx(Box<PreparedTx>),
    /// ECDSA (secp256k1, or P-256 for raw digests) over a 32-byte hash; `v` is 27 + parity.
    EcdsaHash,
    /// Ed25519 over the 32 bytes of a raw digest.
    Ed25519Digest,
}

/// Per-(client, request_id) locks of requests in progress.
type InFlight = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// The claims this process holds in a shared store, by request: the token of each.
type Claims = Mutex<HashMap<(String, String), i64>>;

/// The signing service shared by every connection.
pub struct Signer {
    keys: Arc<dyn KeyBackend>,
    policy: RwLock<Arc<Policy>>,
    /// The policy file, re-read on reload.
    policy_path: PathBuf,
    /// Serializes reloads, so two cannot interleave their checks and swaps.
    reload: Mutex<()>,
    state: Arc<dyn StateStore>,
    audit: AuditLog,
    inflight: InFlight,
    /// The claims held in a shared store (their tokens), so that an answer's write lets go of
    /// its request's claim in the same trip.
    claims: Claims,
    /// False from a failed state store write (or probe) until a restart: signing is refused,
    /// before anything is signed.
    state_ok: std::sync::atomic::AtomicBool,
    /// Answers whose `sign.result` is durable but which a shared store did not take (it
    /// failed): written again before signing resumes.
    unstored: Mutex<Vec<(String, String, StoredRequest)>>,
    /// Bumped whenever a request waiting for approval changes, to wake watchers.
    changes: tokio::sync::watch::Sender<u64>,
    /// Heavy preparations (typed data, large requests) running at once: at most one per
    /// core, on blocking threads, so that they can neither starve the runtime's workers nor
    /// grow the blocking pool without bound.
    heavy: Arc<tokio::sync::Semaphore>,
    /// The turns of signing work (`server.max_in_flight`, `server.queue_timeout`).
    gate: admission::Gate,
    /// Where the approval sweep, approved signings and watch streams run: tracked, and
    /// stopped on shutdown before the audit log closes.
    background: crate::tasks::Background,
    /// The public key of each (key, version) as first served, from the audit log.
    pins: pins::Pins,
    /// Set when witnesses are configured: paused while one lags beyond
    /// `audit.witness_max_lag`.
    witness_gate: std::sync::OnceLock<Arc<crate::witness::Gate>>,
    /// EVM addresses of the public keys seen, so that a call's `self` (the signing key's
    /// address) costs no point decompression per request.
    addresses: Mutex<HashMap<Vec<u8>, Option<alloy_primitives::Address>>>,
    /// What reloads check policy signatures with; without it every reload is refused.
    policy_trust: std::sync::OnceLock<crate::policy_file::Trust>,
    /// Repeated authentication failures, folded before they reach the audit log.
    auth_failures: Mutex<auth_failures::Folder>,
    /// `[state] idempotency_retention`, for the messages of expired requests.
    retention: std::sync::OnceLock<std::time::Duration>,
    /// Answers between their durable `sign.result` and the state store.
    answers: Arc<answers::AnswerWatermark>,
}

/// Most public keys [`Signer::signer_address`] remembers; more keys than this (every key
/// version of a large deployment) start it afresh.
const MAX_REMEMBERED_ADDRESSES: usize = 4096;

/// A request whose encoding is larger than this, and every typed-data request, is prepared
/// (decoded, validated, hashed) on a blocking thread instead of a runtime worker.
const HEAVY_REQUEST_BYTES: usize = 16 * 1024;
/// Most a heavy request waits for its turn and its preparation together. Every preparation
/// is bounded in size by its decoder; this bounds the wait when many arrive at once.
const HEAVY_PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("backend", &self.keys.name())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Assembles the service.
    pub fn new(
        keys: Arc<dyn KeyBackend>,
        policy: Policy,
        policy_path: PathBuf,
        state: Arc<dyn StateStore>,
        audit: AuditLog,
        background: crate::tasks::Background,
    ) -> Signer {
        Signer {
            keys,
            policy: RwLock::new(Arc::new(policy)),
            policy_path,
            reload: Mutex::new(()),
            state,
            audit,
            inflight: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            state_ok: std::sync::atomic::AtomicBool::new(true),
            unstored: Mutex::new(Vec::new()),
            changes: tokio::sync::watch::Sender::new(0),
            heavy: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
            gate: admission::Gate::new(Admission::DEFAULT),
            background,
            pins: pins::Pins::default(),
            witness_gate: std::sync::OnceLock::new(),
            addresses: Mutex::new(HashMap::new()),
            policy_trust: std::sync::OnceLock::new(),
            auth_failures: Mutex::new(auth_failures::Folder::new(
                crate::config::DEFAULT_AUTH_FAILURE_WINDOW,
            )),
            retention: std::sync::OnceLock::new(),
            answers: Arc::default(),
        }
    }

    /// Sets how much signing work runs at once and how long a request waits for its turn
    /// (before the service is shared).
    #[must_use]
    pub fn with_admission(mut self, admission: Admission) -> Signer {
        self.gate = admission::Gate::new(admission);
        self
    }

    /// How much signing work runs at once and how long a request waits for its turn.
    pub fn admission(&self) -> Admission {
        self.gate.admission()
    }

    /// Which answers are in the state store (see [`answers`]).
    pub fn answers(&self) -> &Arc<answers::AnswerWatermark> {
        &self.answers
    }

    /// The EVM address of `key` (`self` in the policy's argument matchers); `None` for keys
    /// that have none, which leaves `self` unknown to the policy (indeterminate).
    fn signer_address(&self, key: &KeyInfo) -> Option<alloy_primitives::Address> {
        if key.algorithm != Algorithm::Secp256k1 {
            return None;
        }
        let mut known = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = known.get(&key.public_key) {
            return *a;
        }
        let a = evm::address_of(&key.public_key).ok();
        if known.len() >= MAX_REMEMBERED_ADDRESSES {
            known.clear();
        }
        known.insert(key.public_key.clone(), a);
        a
    }

    /// Installs the key pins the audit log holds (`(seq, key.pin record)`, in log order) and
    /// the keys that may sign although they are weak (`keys.allow_weak_keys`). Called once at
    /// start, before serving. Returns how many pins were learned.
    pub fn learn_pins(
        &self,
        pins: Vec<(u64, events::KeyPin)>,
        allow_weak_keys: &[String],
    ) -> Result<usize, String> {
        self.pins.learn(pins, allow_weak_keys)
    }

    /// Sets what reloads check the policy administrators' signatures with (the audit log's
    /// origin, the trust anchor, the signature file). Set once, before serving; until it is
    /// set, every reload is refused.
    pub fn set_policy_trust(&self, trust: crate::policy_file::Trust) {
        let _ = self.policy_trust.set(trust);
    }

    /// Makes admission wait for witnesses: while `gate` is paused, new requests are refused
    /// (UNAVAILABLE). Set once, before serving.
    pub fn set_witness_gate(&self, gate: Arc<crate::witness::Gate>) {
        let _ = self.witness_gate.set(gate);
    }

    /// Why witnesses pause signing, if they do.
    pub fn witness_paused(&self) -> Option<String> {
        self.witness_gate.get().and_then(|g| g.paused())
    }

    /// With witnesses configured: whether some witness's last `add-checkpoint` failed.
    pub fn witness_failing(&self) -> Option<bool> {
        self.witness_gate.get().map(|g| g.failing())
    }

    /// Probes the state store (a small durable write); false once a probe
    /// or an answer's write has failed. A failure is final until a restart: a store that failed
    /// a write may still accept a small one, and sled keeps no promise after an I/O error.
    /// Polled by the health watcher.
    ///
    /// A shared store (a database) fails when the network or the server does, and comes back:
    /// once it takes the answers it missed and a probe, signing resumes.
    pub async fn probe_state(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.state_ok.load(Ordering::Relaxed) {
            if !self.state.shared() || !self.store_missed_answers().await {
                return false;
            }
            if self.state.probe().await.is_err() {
                return false;
            }
            tracing::warn!("the state database answers again; signing resumes");
            self.state_ok.store(true, Ordering::Relaxed);
            return true;
        }
        let failure = match self.state.probe().await {
            Ok(()) => return true,
            Err(e) => e.to_string(),
        };
        if self.state.shared() {
            tracing::error!(error = %failure, "state database probe failed; signing stops until it answers again");
        } else {
            tracing::error!(error = %failure, "state store probe failed; signing stops until a restart");
        }
        self.state_ok.store(false, Ordering::Relaxed);
        false
    }

    /// Writes the answers a shared store missed; true when none is left. An answer another
    /// replica stored meanwhile (it took the request over) is left as it is.
    async fn store_missed_answers(&self) -> bool {
        let missed = std::mem::take(&mut *self.unstored.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for (client, request_id, rec) in missed {
            let stored = match self.state.get_request(&client, &request_id).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => self.state.put_request(&client, &request_id, &rec).await,
                Err(e) => Err(e),
            };
            if stored.is_err() {
                left.push((client, request_id, rec));
            }
        }
        let done = left.is_empty();
        self.unstored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(left);
        done
    }

    /// The key backend.
    pub fn keys(&self) -> &dyn KeyBackend {
        self.keys.as_ref()
    }

    /// The key backend, shared (for health watching).
    pub fn keys_arc(&self) -> Arc<dyn KeyBackend> {
        self.keys.clone()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The policy in force: (serial, SHA-256 hex).
    pub fn policy_version(&self) -> (u64, String) {
        let p = self.policy();
        (p.serial(), p.hash_hex())
    }

    fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records the policy the daemon starts with; `forced` when its serial is lower than one
    /// the log has loaded and the start allowed that.
    pub fn record_startup_policy(
        &self,
        forced: bool,
        admitted: &signerd_policy::Admitted,
    ) -> Result<(), ServiceError> {
        let p = self.policy();
        let rec = events::PolicyLoad {
            source: PolicySource::Startup,
            actor: None,
            file: self.policy_path.display().to_string(),
            old_serial: None,
            old_hash: None,
            new_serial: p.serial(),
            new_hash: p.hash_hex(),
            forced,
            signers: admitted.signers.clone(),
            threshold: Some(threshold_of(admitted)),
            book_entries: crate::policy_file::book_entries(p.first_loaded()),
        };
        self.audit.append(rec).map_err(unavailable)
    }

    /// Re-reads, validates and atomically installs the policy file. The running policy stays
    /// on any error, and every refusal is recorded (`policy.refused`). A serial that does not
    /// increase is refused unless `force`.
    pub async fn reload_policy(
        &self,
        source: PolicySource,
        actor: Option<&str>,
        force: bool,
    ) -> Result<PolicyReloaded, ServiceError> {
        let mut signers = Vec::new();
        let reloaded = self
            .install_policy(source, actor, force, &mut signers)
            .await;
        if let Err(
            e @ (ServiceError::FailedPrecondition(_) | ServiceError::PermissionDenied { .. }),
        ) = &reloaded
        {
            self.record_policy_refused(source, actor, &e.to_string(), signers);
        }
        reloaded
    }

    /// Records a reload that installed nothing (best effort: the refusal is the answer either
    /// way, and a log that cannot take it refuses signing by itself).
    /// `signers`: the policy administrators whose valid signatures were found.
    pub fn record_policy_refused(
        &self,
        source: PolicySource,
        actor: Option<&str>,
        reason: &str,
        signers: Vec<String>,
    ) {
        let rec = events::PolicyRefused {
            source,
            actor: actor.map(str::to_owned),
            file: self.policy_path.display().to_string(),
            reason: reason.to_owned(),
            signers,
        };
        if let Err(e) = self.audit.append(rec) {
            tracing::error!(error = %e, "cannot record policy.refused");
        }
    }

    async fn install_policy(
        &self,
        source: PolicySource,
        actor: Option<&str>,
        force: bool,
        signers: &mut Vec<String>,
    ) -> Result<PolicyReloaded, ServiceError> {
        let path = self.policy_path.clone();
        let archive = self.audit.dir().to_owned();
        let held: Vec<String> = self.keys.keys().into_iter().map(|k| k.id).collect();
        let trust = self.policy_trust.get().cloned().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "policy not reloaded: no trust anchor for policy signatures is set".into(),
            )
        })?;
        let running = self.policy();
        let (running_serial, running_hash) = (running.serial(), running.hash());
        // The policy is admitted (signed by enough administrators of the running policy's
        // governance), then archived beside the log (checked again below, under the reload
        // lock; a policy archived and then not installed is harmless).
        let new = tokio::task::spawn_blocking(move || {
            let (new, source) = crate::policy_file::load_policy_source(&path)
                .map_err(|e| (format!("policy not reloaded: {e}"), Vec::new()))?;
            crate::policy_file::check_keys(&new, held)
                .map_err(|e| (format!("policy not reloaded: {e}"), Vec::new()))?;
            let mut admitted = None;
            if new.hash() != running_hash && (new.serial() > running_serial || force) {
                let governance = running.governance().unwrap_or(&trust.anchor);
                let a = crate::policy_file::admit(&path, &new, &trust, governance, Some(&running))
                    .map_err(|e| (format!("policy not reloaded: {e}"), e.signers().to_vec()))?;
                crate::audit::archive::store(&archive, source.as_bytes())
                    .map_err(|e| (format!("policy not reloaded: {e}"), a.signers.clone()))?;
                admitted = Some(a);
            }
            Ok::<_, (String, Vec<String>)>((new, admitted))
        })
        .await
        .map_err(|e| ServiceError::Unavailable(format!("policy reload: {e}")))?;
        let (mut new, admitted) = match new {
            Ok(n) => n,
            Err((reason, found)) => {
                *signers = found;
                return Err(ServiceError::FailedPrecondition(reason));
            }
        };
        let record = {
            let _serial = self.reload.lock().unwrap_or_else(|p| p.into_inner());
            let old = self.policy();
            // Admitted against the policy that was running when the reload began.
            if admitted.is_some() && old.hash() != running_hash {
                return Err(ServiceError::FailedPrecondition(
                    "policy not reloaded: another reload replaced the running policy meanwhile; \
                     reload again"
                        .into(),
                ));
            }
            let mut response = PolicyReloaded {
                serial: new.serial(),
                hash: new.hash_hex(),
                previous_serial: old.serial(),
                previous_hash: old.hash_hex(),
                changed: new.hash() != old.hash(),
            };
            if !response.changed {
                response.serial = old.serial();
                return Ok(response);
            }
            if new.serial() <= old.serial() && !force {
                return Err(ServiceError::FailedPrecondition(format!(
                    "policy not reloaded: serial {} is not higher than the running serial {}; \
                     raise `serial`, or force the reload",
                    new.serial(),
                    old.serial()
                )));
            }
            // Only an admitted policy is installed.
            let Some(admitted) = admitted else {
                return Err(ServiceError::FailedPrecondition(
                    "policy not reloaded: its signatures were not checked".into(),
                ));
            };
            // Entries the running policy holds keep their first load; new ones start now.
            new.set_first_loaded(old.first_loaded(), Some(unix_now()));
            let rec = events::PolicyLoad {
                source,
                actor: Some(actor.map(str::to_owned)),
                file: self.policy_path.display().to_string(),
                old_serial: Some(old.serial()),
                old_hash: Some(old.hash_hex()),
                new_serial: new.serial(),
                new_hash: new.hash_hex(),
                forced: force && new.serial() <= old.serial(),
                threshold: Some(threshold_of(&admitted)),
                signers: admitted.signers,
                book_entries: crate::policy_file::book_entries(new.first_loaded()),
            };
            let mut slot = self.policy.write().unwrap_or_else(|p| p.into_inner());
            *slot = Arc::new(new);
            (rec, response)
        };
        let (rec, response) = record;
        // Every decision after the swap names the new hash; the load record says when it began.
        self.audit.append_durable(rec).await.map_err(unavailable)?;
        tracing::info!(
            serial = response.serial,
            hash = %response.hash,
            previous_serial = response.previous_serial,
            source = source.as_str(),
            "policy loaded"
        );
        Ok(response)
    }

    /// Sets the window over which repeated authentication failures are folded
    /// (`audit.auth_failure_window`); called once at start, before serving.
    pub fn set_auth_failure_window(&self, window: std::time::Duration) {
        let mut folder = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        *folder = auth_failures::Folder::new(window);
    }

    /// Records a refused authentication (no mapped identity, failed handshake, a connection
    /// over its cap): at once when it is the first of its certificate (or address) and reason
    /// in a window, else folded (see [`auth_failures`]).
    pub fn record_auth_failure(
        &self,
        peer: Option<SocketAddr>,
        cert_sha256: Option<&str>,
        reason: &str,
    ) {
        let now = tokio::time::Instant::now();
        let rec = {
            let mut folder = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
            folder.failure(now, peer, cert_sha256, reason)
        };
        if let Some(rec) = rec {
            self.append_auth_failure(rec);
        }
    }

    /// Writes the folded `auth.failure` records of windows that have ended; with `all`, every
    /// folded record (at shutdown). Returns the window, for the caller's next look.
    pub fn flush_auth_failures(&self, all: bool) -> std::time::Duration {
        let now = tokio::time::Instant::now();
        let (records, window) = {
            let mut folder = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
            let records = if all { folder.drain() } else { folder.due(now) };
            (records, folder.window())
        };
        for rec in records {
            self.append_auth_failure(rec);
        }
        window
    }

    fn append_auth_failure(&self, rec: events::AuthFailure) {
        if let Err(e) = self.audit.append(rec) {
            tracing::error!(error = %e, "cannot record auth.failure");
        }
    }

    /// Signs one request: prepares it, replays a stored answer, evaluates the policy, then
    /// signs, waits for approval or denies, with every step on record.
    pub async fn sign(
        self: &Arc<Self>,
        caller: Caller,
        request: SignRequest,
    ) -> Result<SignOutcome, ServiceError> {
        let this = self.clone();
        let method = request.method();
        let (request_id, key_id) = (request.request_id().to_owned(), request.key_id().to_owned());
        let heavy = method == Method::SignTypedData || request.encoded_len() > HEAVY_REQUEST_BYTES;
        self.run(caller, method, request_id, key_id, heavy, move || {
            this.prepare(request)
        })
        .await
    }

    /// Validates a request into what to sign. A request that waited for approval is prepared
    /// again from its stored bytes the same way.
    fn prepare(&self, request: SignRequest) -> Result<Prepared, ServiceError> {
        let mut p = prepare_request(&|id| self.keys.key(id), request)?;
        // Only calls (with calldata, a Safe transaction's too) can meet an argument matcher.
        if p.action.calldata.is_some() {
            p.action.signer = self.signer_address(&p.key);
        }
        Ok(p)
    }

    /// Runs a heavy preparation on a blocking thread, one per core at a time, refusing the
    /// request when its turn and its work together take longer than
    /// [`HEAVY_PREPARE_TIMEOUT`] (a preparation already running finishes, bounded by its
    /// decoder's limits, and its result is dropped).
    async fn prepare_heavy(
        &self,
        prepare: impl FnOnce() -> Result<Prepared, ServiceError> + Send + 'static,
    ) -> Result<Prepared, ServiceError> {
        let work = async {
            let permit = self.heavy.clone().acquire_owned().await.map_err(|_| {
                ServiceError::Unavailable("signerd is shutting down; nothing was signed".into())
            })?;
            // The permit goes with the work: a preparation that outlives the timeout still
            // holds its core's turn until it ends.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                prepare()
            })
            .await
            .map_err(|_| {
                ServiceError::Unavailable(
                    "internal error while decoding the request; nothing was signed".into(),
                )
            })?
        };
        match tokio::time::timeout(HEAVY_PREPARE_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(ServiceError::Unavailable(format!(
                "decoding the request took longer than {} ms (too many large requests at once); \
                 nothing was signed; retry later",
                HEAVY_PREPARE_TIMEOUT.as_millis()
            ))),
        }
    }

    /// Runs one request to completion on its own task, so a client that disconnects cannot
    /// cut the pipeline between signing and auditing.
    async fn run(
        self: &Arc<Self>,
        caller: Caller,
        method: Method,
        request_id: String,
        key_id: String,
        heavy: bool,
        prepare: impl FnOnce() -> Result<Prepared, ServiceError> + Send + 'static,
    ) -> Result<SignOutcome, ServiceError> {
        let this = self.clone();
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "request",
            req_id = tracing::field::Empty,
            client = %caller.identity.id,
            method = method.as_str()
        );
        // Only a well-formed request id reaches the daemon's log (it is checked again, with
        // an answer for the client, in `process`).
        if validate_request_id(&request_id).is_ok() {
            span.record("req_id", request_id.as_str());
        }
        // Boxed: the request's future is large (about 3.5 KiB), and spawning moves a task's
        // future several times; a box moves as a pointer.
        let result = to_completion(
            tracing::Instrument::instrument(
                Box::pin(async move {
                    this.process(caller, method, request_id, key_id, heavy, prepare)
                        .await
                }),
                span,
            ),
            "internal error; nothing was signed",
        )
        .await;
        let (decision, status) = match &result {
            Ok(_) => ("allow", "OK"),
            Err(e) => e.metric_labels(),
        };
        crate::metrics::request(method.as_str(), decision, status, started.elapsed());
        result
    }

    async fn process(
        self: Arc<Self>,
        caller: Caller,
        method: Method,
        request_id: String,
        key_id: String,
        heavy: bool,
        prepare: impl FnOnce() -> Result<Prepared, ServiceError> + Send + 'static,
    ) -> Result<SignOutcome, ServiceError> {
        if let Some(why) = self.witness_paused() {
            return Err(ServiceError::Unavailable(why));
        }
        if !self.audit.is_healthy() {
            // The backend's error is in the daemon's log, not in answers to clients.
            return Err(ServiceError::Unavailable(if self.audit.is_paused() {
                "audit checkpoints cannot be signed, and nothing is answered before one covers \
                 it; nothing was signed; signing resumes by itself once the audit signing key \
                 signs again"
                    .into()
            } else if let Some(took) = self.audit.stalled() {
                format!(
                    "the audit log's disk has not finished a write for {} s; nothing was \
                     signed; signing resumes by itself once it does",
                    took.as_secs()
                )
            } else if let Some(why) = self.audit.failure() {
                // Every answer says why, not only the one whose write failed.
                format!("audit log unavailable: {why}")
            } else {
                "audit log unavailable; signing is stopped until an operator restarts signerd"
                    .into()
            }));
        }
        self.check_state()?;
        // The request's turn: shed here, before anything is evaluated, reserved, signed,
        // recorded or stored, when it cannot start within `server.queue_timeout`. Held until
        // the request ends, on every path.
        let _turn = self.gate.enter(method).await?;
        // This request may soon want a durable result: the audit writer may hold its current
        // batch briefly so that one fdatasync covers this result too. Dropped before any wait
        // on the log other than the signing path's own result.
        let expected = self.audit.expect();
        // A malformed request id is refused before a heavy request takes a core's turn.
        let prepared = match validate_request_id(&request_id) {
            Err(e) => Err(e),
            Ok(_) if heavy => self.prepare_heavy(prepare).await,
            Ok(_) => prepare(),
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Malformed requests are recorded too; nothing was signed, so no need to wait.
                let message = e.to_string();
                let outcome = match &e {
                    ServiceError::NotFound(_) => Outcome::NotFound { message },
                    ServiceError::Unavailable(_) => Outcome::Unavailable { message },
                    _ => Outcome::InvalidArgument { message },
                };
                let status = outcome.status();
                // Client-chosen identifiers reach the log only once they are known to be
                // well-formed, so a refused request cannot write arbitrary text into it.
                let req_id = validate_request_id(&request_id)
                    .ok()
                    .map(|_| request_id.as_str());
                let key = crate::keys::key_id(&key_id).ok().map(|_| key_id.as_str());
                let _ = self
                    .audit
                    .append(request_record(&caller, method, req_id, key, None));
                let _ = self.audit.append(events::SignResult {
                    req_id: req_id.map(str::to_owned),
                    client: Some(caller.identity.id.clone()),
                    outcome,
                });
                tracing::info!(status = status.as_str(), error = %e, "request refused");
                return Err(e);
            }
        };

        if prepared.dry_run {
            return self
                .dry_run(&caller, &prepared)
                .await
                .map(SignOutcome::Evaluated);
        }

        let fingerprint = fingerprint(&prepared);
        let guard = self
            .lock_request(&caller.identity.id, &prepared.request_id)
            .await?;
        if let Some(stored) = self.stored(&caller, &prepared.request_id).await? {
            drop(expected);
            if stored.fingerprint == fingerprint && stored.outcome == StoredOutcome::Pending {
                return self
                    .pending_reply(&caller.identity.id, &prepared.request_id)
                    .await;
            }
            return replay(stored, &fingerprint, prepared.method).map(SignOutcome::Signed);
        }

        let t = std::time::Instant::now();
        // A request taken over from a replica that stopped may hold that replica's
        // reservations: they are its own, so its evaluation leaves them out.
        let taken_over = guard.taken_over.is_some();
        let decided = self
            .decide(&caller, &prepared, true, false, taken_over)
            .await?;
        crate::metrics::stage("policy", t.elapsed());
        // Until the result record is durable, a reservation belongs to a request that may end
        // unsigned: it is released on every path that ends without a signature, before the
        // request's lock is let go (so a retry cannot see, or lose, a stale reservation).
        let mut reservation = Reservation {
            armed: decided.reserved,
        };
        let result = self
            .process_decided(
                &caller,
                &prepared,
                &fingerprint,
                decided,
                &mut reservation,
                expected,
            )
            .await;
        if reservation.armed {
            self.release(&caller.identity.id, &prepared.request_id)
                .await;
        }
        result
    }

    /// The rest of [`Signer::process`] once the policy has decided: record, then wait for
    /// approval, deny, or sign.
    async fn process_decided(
        &self,
        caller: &Caller,
        prepared: &Prepared,
        fingerprint: &str,
        decided: Decided,
        reservation: &mut Reservation,
        expected: crate::audit::Expected,
    ) -> Result<SignOutcome, ServiceError> {
        let method = prepared.method;
        let req_rec = request_record(
            caller,
            method,
            Some(&prepared.request_id),
            Some(&prepared.key.id),
            Some(fingerprint),
        );
        let dec_rec = decision_record(caller, prepared, &decided);
        self.audit.append(req_rec).map_err(unavailable)?;
        self.audit.append(dec_rec).map_err(unavailable)?;
        let Decided {
            decision,
            explanation,
            policy,
            ..
        } = decided;

        // Only an explicit Allow goes on to signing now; a request that needs approval waits
        // (keeping its reservation); anything else is a denial.
        match decision {
            Decision::Allow { .. } => {}
            Decision::NeedsApproval {
                rules,
                requirements,
            } => {
                drop(expected);
                let waiting = Waiting {
                    fingerprint,
                    rules,
                    requirements: &requirements,
                    policy: &policy,
                    explanation,
                };
                let response = self.begin_approval(caller, prepared, waiting).await?;
                reservation.armed = false;
                return Ok(response);
            }
            Decision::Deny { rule, reason } => {
                drop(expected);
                return Err(self.deny(caller, prepared, fingerprint, rule, reason).await);
            }
        }
        self.sign_allowed(caller, prepared, fingerprint, reservation, expected)
            .await
            .map(SignOutcome::Signed)
    }

    /// Records and stores a denial; returns the error to answer with.
    async fn deny(
        &self,
        caller: &Caller,
        prepared: &Prepared,
        fingerprint: &str,
        rule: Option<String>,
        reason: String,
    ) -> ServiceError {
        let result = events::SignResult {
            req_id: Some(prepared.request_id.as_str().to_owned()),
            client: Some(caller.identity.id.clone()),
            outcome: Outcome::Denied {
                rule: rule.clone(),
                message: reason.clone(),
            },
        };
        let answer = self.answers.begin(self.audit.durable_records());
        match self.audit.submit_durable(result) {
            Ok(durable) => match durable.wait().await {
                Ok(receipt) => answer.at(receipt.seq),
                // Perhaps written: the watermark stops (dropped below).
                Err(e) => return unavailable(e),
            },
            Err(e) => {
                answer.not_written();
                return unavailable(e);
            }
        }
        let outcome = StoredOutcome::Denied {
            rule: rule.clone(),
            reason: reason.clone(),
        };
        if let Err(e) = self.store(caller, prepared, fingerprint, outcome).await {
            return e;
        }
        answer.stored();
        tracing::info!(rule = rule.as_deref().unwrap_or("-"), "denied");
        ServiceError::PermissionDenied { rule, reason }
    }

    /// Signs an allowed request, records the durable result, stores the answer for retries,
    /// and disarms the reservation once the spend is on record.
    async fn sign_allowed(
        &self,
        caller: &Caller,
        prepared: &Prepared,
        fingerprint: &str,
        reservation: &mut Reservation,
        expected: crate::audit::Expected,
    ) -> Result<Signed, ServiceError> {
        let t = std::time::Instant::now();
        let signed = match self.keys.failure() {
            // Known to be down: refused at once rather than after the backend's timeout. The
            // backend's own health check finds it back, and then requests reach it again.
            Some(e) => Err(Unsigned::Backend(e)),
            None => self.sign_prepared(prepared).await,
        };
        crate::metrics::stage("backend", t.elapsed());
        let (signature, pin) = match signed {
            Ok(signed) => signed,
            Err(Unsigned::Backend(e)) => {
                drop(expected);
                let msg = e.to_string();
                self.record_unsigned(caller, prepared, &msg).await;
                tracing::warn!(error = %msg, "backend failed");
                return Err(e.into());
            }
            Err(Unsigned::Pin(pins::PinError::Audit(e))) => {
                drop(expected);
                tracing::error!(error = %e, "cannot record the key's pin; nothing was signed");
                return Err(unavailable(e));
            }
            Err(Unsigned::Pin(pins::PinError::Refused(refused))) => {
                drop(expected);
                crate::metrics::key_refused(refused.reason.as_str());
                tracing::error!(error = %refused.message, "key refused");
                let rec = events::SignResult {
                    req_id: Some(prepared.request_id.as_str().to_owned()),
                    client: Some(caller.identity.id.clone()),
                    outcome: Outcome::KeyRefused {
                        pin: refused.pin,
                        message: refused.message.clone(),
                    },
                };
                self.audit.append_durable(rec).await.map_err(unavailable)?;
                return Err(ServiceError::Unavailable(refused.message));
            }
        };

        let ((signature, tx), result_rec) = match build_response(caller, prepared, &signature, pin)
        {
            Ok(built) => built,
            Err(e) => {
                drop(expected);
                // Nothing leaves the process; the record says why.
                self.record_unsigned(caller, prepared, &e.to_string()).await;
                return Err(e);
            }
        };
        let t = std::time::Instant::now();
        let answer = self.answers.begin(self.audit.durable_records());
        let durable = self.audit.submit_durable(result_rec);
        drop(expected);
        let receipt = match durable {
            Ok(durable) => durable.wait().await,
            Err(e) => {
                answer.not_written();
                return self.result_refused(caller, prepared, e);
            }
        };
        let receipt = match receipt {
            Ok(receipt) => receipt,
            // Perhaps written: the watermark stops (`answer` is dropped).
            Err(e) => return self.result_refused(caller, prepared, e),
        };
        answer.at(receipt.seq);
        crate::metrics::stage("audit_commit", t.elapsed());
        let signed = Signed {
            signature,
            signing_hash: prepared.commitment,
            tx,
            receipt,
        };
        // Signed and on record: the spend counts from now on.
        reservation.armed = false;
        let outcome = StoredOutcome::Signed {
            response: hex::encode(wire::encode_answer(prepared.method, signed.clone())),
        };
        self.store(caller, prepared, fingerprint, outcome).await?;
        answer.stored();
        tracing::debug!(audit_seq = receipt.seq, "signed");
        Ok(signed)
    }

    /// The signature stays in the process: the log could not take its result, or could not
    /// sign the checkpoint that must cover the result before it leaves (the result was then
    /// not written). Best effort, like any record nobody waits for: a checkpoint covers it
    /// once the audit key signs again.
    fn result_refused<T>(
        &self,
        caller: &Caller,
        prepared: &Prepared,
        e: crate::audit::AuditError,
    ) -> Result<T, ServiceError> {
        let _ = self.audit.append(events::SignResult {
            req_id: Some(prepared.request_id.as_str().to_owned()),
            client: Some(caller.identity.id.clone()),
            outcome: Outcome::Unavailable {
                message: format!("no signature was returned: {e}"),
            },
        });
        Err(unavailable(e))
    }

    /// Records that an allowed request ended without a signature leaving the process. Best
    /// effort: if the audit log cannot take it, recovery records `unknown_crash` at the next
    /// start, and nothing was returned either way.
    async fn record_unsigned(&self, caller: &Caller, p: &Prepared, message: &str) {
        let rec = events::SignResult {
            req_id: Some(p.request_id.as_str().to_owned()),
            client: Some(caller.identity.id.clone()),
            outcome: Outcome::BackendError {
                message: message.to_owned(),
            },
        };
        if let Err(e) = self.audit.append_durable(rec).await {
            tracing::error!(error = %e, "cannot record the failed request");
        }
    }

    /// Evaluates the policy with the usage the state store has now. With `reserve`, an allowed
    /// request's charges are reserved atomically (denying it when a limit would be exceeded).
    /// A request that needs approval reserves its charges like an allowed one.
    async fn decide(
        &self,
        caller: &Caller,
        p: &Prepared,
        reserve: bool,
        explain: bool,
        excluding_own: bool,
    ) -> Result<Decided, ServiceError> {
        let policy = self.policy();
        let now = unix_now();
        let own = (caller.identity.id.as_str(), p.request_id.as_str());
        let eval = self
            .evaluate(
                &policy,
                caller,
                p,
                now,
                explain,
                excluding_own.then_some(own),
            )
            .await?;
        let mut explanation = eval.explanation;
        let mut decision = eval.decision;
        let mut reserved = false;
        // A request waiting for approval holds its spend too, so approvals cannot be collected
        // for more than the limits leave.
        let holds =
            |d: &Decision| matches!(d, Decision::Allow { .. } | Decision::NeedsApproval { .. });
        if reserve && holds(&decision) && !eval.charges.is_empty() {
            let verdict = self
                .state
                .reserve(&caller.identity.id, &p.request_id, now, &eval.charges)
                .await
                .map_err(|e| self.state_failed(&e))?;
            match verdict {
                Ok(()) => reserved = true,
                Err(exceeded) => {
                    explanation.push(exceeded.detail.clone());
                    decision = Decision::Deny {
                        rule: Some(exceeded.limit_id),
                        reason: exceeded.detail,
                    };
                }
            }
        }
        let charges = if holds(&decision) {
            eval.charges
        } else {
            Vec::new()
        };
        Ok(Decided {
            decision,
            charges,
            explanation,
            policy,
            reserved,
        })
    }

    /// Evaluates `policy` for `p` with the usage the state store has now (without the
    /// reservations of `excluding`, a request evaluated again at quorum).
    ///
    /// The policy is pure and synchronous, and the store is not: the evaluation first runs
    /// with nothing used, which asks for every window it could need (usage only ever adds to
    /// a charge, so a limit that fails with nothing used fails with any usage, and the
    /// evaluation with real usage asks for no window the first one did not); the store then
    /// answers all of them in one call, and the evaluation runs again with the answers. A
    /// policy without windowed limits runs once.
    async fn evaluate(
        &self,
        policy: &Policy,
        caller: &Caller,
        p: &Prepared,
        now: i64,
        explain: bool,
        excluding: Option<(&str, &str)>,
    ) -> Result<signerd_policy::Evaluation, ServiceError> {
        let run = |usage: &dyn Usage| {
            let request = Request {
                action: &p.action,
                identity: &caller.identity,
                now_unix: now,
                usage,
            };
            if explain {
                policy.explain_request(&request)
            } else {
                policy.evaluate_request(&request)
            }
        };
        let asked = Prefetched::default();
        let first = run(&asked);
        let queries = asked.into_missing();
        if queries.is_empty() {
            return Ok(first);
        }
        let used = self
            .state
            .usage(&queries, now, excluding)
            .await
            .map_err(|e| {
                ServiceError::Unavailable(format!(
                    "cannot read the usage of the policy's limits: {e}; nothing was signed"
                ))
            })?;
        let known = Prefetched::answered(queries.into_iter().zip(used).collect());
        Ok(run(&known))
    }

    /// Evaluates and explains without signing, reserving or storing anything.
    async fn dry_run(&self, caller: &Caller, p: &Prepared) -> Result<Evaluation, ServiceError> {
        let Decided {
            decision,
            explanation,
            policy,
            ..
        } = self.decide(caller, p, false, true, false).await?;
        let (effect, rules, reason) = match &decision {
            Decision::Allow { rules } => {
                (events::Decision::Allow, rules.clone(), "allowed".to_owned())
            }
            Decision::Deny { rule, reason } => (
                events::Decision::Deny,
                rule.iter().cloned().collect(),
                reason.clone(),
            ),
            Decision::NeedsApproval { rules, .. } => (
                events::Decision::RequireApproval,
                rules.clone(),
                "requires approval".to_owned(),
            ),
        };
        let rec = events::SignDryRun {
            req_id: p.request_id.as_str().to_owned(),
            method: p.method,
            client: caller.identity.id.clone(),
            key: p.key.id.clone(),
            decision: effect,
            rules: rules.clone(),
            policy_serial: policy.serial(),
            policy_hash: policy.hash_hex(),
            action: serde_json::to_value(&p.action).unwrap_or_default(),
        };
        self.audit.append(rec).map_err(unavailable)?;
        tracing::debug!(decision = effect.as_str(), "dry run");
        Ok(Evaluation {
            decision: effect.as_str(),
            rules,
            reason,
            explanation,
            policy_serial: policy.serial(),
            policy_hash: policy.hash_hex(),
        })
    }

    /// Signs with exactly the key the request was prepared for: a key that changed under its
    /// id since (Vault transit rotation) is refused, so the audit record names the key that
    /// signed.
    ///
    /// The key must match its pin in the audit log ([`pins`]); the first signature of a
    /// (key, version) pins it. Returns the signature and the `seq` of the pin.
    async fn sign_prepared(&self, p: &Prepared) -> Result<(RawSignature, u64), Unsigned> {
        let key = self
            .keys
            .handle(&p.key.id)
            .ok_or_else(|| Unsigned::Backend(KeyError::NotFound(p.key.id.clone())))?;
        if *key.info() != p.key {
            return Err(Unsigned::Backend(KeyError::Unavailable(format!(
                "key `{}` changed (now version {:?}) while the request was prepared for version \
                 {:?}; retry to sign with the key as it is now",
                p.key.id,
                key.info().version,
                p.key.version
            ))));
        }
        let pin = self
            .pins
            .check(&self.audit, key.info(), key.protection())
            .await
            .map_err(Unsigned::Pin)?;
        let signed = match p.payload {
            PayloadKind::Ed25519Digest => key.sign(Payload::Message(&p.commitment)).await,
            _ => key.sign(Payload::Prehash(&p.commitment)).await,
        };
        signed.map(|sig| (sig, pin)).map_err(Unsigned::Backend)
    }

    /// Releases the reservations of a request that ended unsigned (the caller holds its lock).
    async fn release(&self, client: &str, request_id: &str) {
        if let Err(e) = self.state.release(client, request_id).await {
            tracing::error!(error = %e, "cannot release the reservation of an unsigned request");
        }
    }

    /// Holds (`client`, `request_id`) for the caller: within this process, and against every
    /// replica sharing the state store (a claim in the store, waited for while another replica
    /// holds it, at most [`crate::state::CLAIM_LEASE`] and a little more: a claim lapses that
    /// long after its replica stopped).
    pub(crate) async fn lock_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<RequestGuard<'_>, ServiceError> {
        let key = (client.to_owned(), request_id.to_owned());
        let lock = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        let mut held = RequestGuard {
            map: &self.inflight,
            claims: &self.claims,
            key,
            lock,
            _guard: guard,
            claim: None,
            taken_over: None,
        };
        if !self.state.shared() {
            return Ok(held);
        }
        let until = tokio::time::Instant::now() + crate::state::CLAIM_LEASE + CLAIM_WAIT_MARGIN;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let claim = self
                .state
                .claim(client, request_id)
                .await
                .map_err(|e| self.state_failed(&e))?;
            match claim {
                Claim::Held { token, taken_over } => {
                    if let Some(replica) = &taken_over {
                        tracing::warn!(
                            client,
                            req_id = request_id,
                            replica = %replica,
                            "taking over a request from a replica that stopped while working on it"
                        );
                    }
                    held.claim = Some((self.state.clone(), token));
                    held.taken_over = taken_over;
                    self.claims
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(held.key.clone(), token);
                    return Ok(held);
                }
                Claim::Busy { holder } => {
                    if tokio::time::Instant::now() + pause > until {
                        return Err(ServiceError::Unavailable(format!(
                            "request `{request_id}` is being worked on by the replica \
                             `{holder}`; nothing was done here, retry with the same request_id"
                        )));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Refuses to go on once the state store has failed (before anything is signed).
    fn check_state(&self) -> Result<(), ServiceError> {
        if self.state_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        Err(ServiceError::Unavailable(if self.state.shared() {
            "state database unavailable; nothing was signed; signing resumes by itself once the \
             database answers again"
                .into()
        } else {
            "state store unavailable; nothing was signed; signing is stopped until an operator restarts signerd"
                .into()
        }))
    }

    /// Records that the state store failed (final until a restart: nothing more is signed)
    /// and returns the error for the caller.
    fn state_failed(&self, e: &crate::state::StateError) -> ServiceError {
        if self
            .state_ok
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            if self.state.shared() {
                tracing::error!(error = %e, "the state database failed; signing stops until it answers again");
            } else {
                tracing::error!(error = %e, "the state store failed; signing stops until a restart");
            }
        }
        ServiceError::Unavailable(e.to_string())
    }

    /// The stored answer of the caller's `request_id`, if any; FAILED_PRECONDITION when its
    /// answer expired (the request is never signed again).
    async fn stored(
        &self,
        caller: &Caller,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, ServiceError> {
        let client = &caller.identity.id;
        let found = self
            .state
            .lookup(client, request_id)
            .await
            .map_err(|e| self.state_failed(&e))?;
        match found {
            Lookup::Answer(rec) => Ok(Some(rec)),
            Lookup::New => Ok(None),
            Lookup::Expired(answered_at) => Err(ServiceError::FailedPrecondition(
                crate::state::retention::expired_message(
                    request_id,
                    answered_at,
                    self.idempotency_retention(),
                ),
            )),
        }
    }

    /// FAILED_PRECONDITION when the answer of `client`'s `request_id` expired.
    pub(crate) async fn refuse_expired(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<(), ServiceError> {
        let expired = self
            .state
            .expired(client, request_id)
            .await
            .map_err(|e| self.state_failed(&e))?;
        match expired {
            None => Ok(()),
            Some(answered_at) => Err(ServiceError::FailedPrecondition(
                crate::state::retention::expired_message(
                    request_id,
                    answered_at,
                    self.idempotency_retention(),
                ),
            )),
        }
    }

    /// Sets `[state] idempotency_retention` (named in the messages of expired requests; the
    /// pruning task applies it). Called once at start; unset, the default applies.
    pub fn set_idempotency_retention(&self, retention: std::time::Duration) {
        let _ = self.retention.set(retention);
    }

    fn idempotency_retention(&self) -> std::time::Duration {
        self.retention
            .get()
            .copied()
            .unwrap_or(crate::config::DEFAULT_IDEMPOTENCY_RETENTION)
    }

    async fn store(
        &self,
        caller: &Caller,
        p: &Prepared,
        fingerprint: &str,
        outcome: StoredOutcome,
    ) -> Result<(), ServiceError> {
        let rec = StoredRequest {
            fingerprint: fingerprint.to_owned(),
            method: p.method.as_str().to_owned(),
            outcome,
            answered_at: Some(unix_now()),
        };
        // Not durable on return: the answer's durable copy is its `sign.result` record. In a
        // shared store the request's claim is let go in the same write.
        let key = (caller.identity.id.clone(), p.request_id.to_string());
        let token = self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let stored = match token {
            Some(token) => {
                let stored = self
                    .state
                    .put_request_releasing(&key.0, &key.1, &rec, token)
                    .await;
                if stored.is_ok() {
                    let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
                    if claims.get(&key) == Some(&token) {
                        claims.remove(&key);
                    }
                }
                stored
            }
            None => {
                self.state
                    .put_request(&caller.identity.id, &p.request_id, &rec)
                    .await
            }
        };
        stored.map_err(|e| {
            // The outcome is durable in the audit log (the next start restores it) but is not
            // returned; no further request is signed until the store can write. A shared
            // store gets it again before signing resumes.
            self.state_ok
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if self.state.shared() {
                self.unstored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((caller.identity.id.clone(), p.request_id.to_string(), rec.clone()));
            }
            tracing::error!(error = %e, "cannot store request outcome; signing stops until a restart");
            ServiceError::Unavailable(if self.state.shared() {
                format!(
                    "{e}; the outcome is in the audit log, and a retry once the database \
                     answers again returns it"
                )
            } else {
                format!(
                    "{e}; the outcome is in the audit log, and a retry after a restart returns it"
                )
            })
        })
    }
}

/// Runs `work` to completion on a task of its own, so that a caller who goes away (a cancelled
/// call, a dropped connection, the server's deadline) cannot cut it between an audit record
/// and the state that goes with it. `failed` is the answer if the task itself fails.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
    failed: &'static str,
) -> Result<T, ServiceError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a request's task failed: {failed}");
        Err(ServiceError::Unavailable(failed.into()))
    })
}

/// Holds the per-(client, request_id) lock; removes the map entry when nobody else waits.
pub(crate) struct RequestGuard<'a> {
    map: &'a InFlight,
    claims: &'a Claims,
    key: (String, String),
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// The claim in a shared store, let go when the guard is dropped.
    claim: Option<(Arc<dyn StateStore>, i64)>,
    /// The replica whose lapsed claim this one replaced.
    pub(crate) taken_over: Option<String>,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        let claimed = self.claim.take().filter(|(_, token)| {
            // Still held: the answer's write did not let go of it already.
            let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            let held = claims.get(&self.key) == Some(token);
            if held {
                claims.remove(&self.key);
            }
            held
        });
        if let Some((state, token)) = claimed {
            // Let go in the background; a later claim of this process replaces this one's
            // token, so a late let-go cannot drop it. Should it never run, the claim lapses.
            let (client, request_id) = self.key.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = state.unclaim(&client, &request_id, token).await {
                        tracing::warn!(error = %e, "cannot let go of a request's claim; it lapses");
                    }
                });
            }
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // One reference in the map, one here, one inside the owned guard: nobody else waits.
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.key);
        }
    }
}

/// Validates a request into what to sign, finding keys with `keys`. A request that waited for
/// approval is prepared again from its stored bytes the same way. Pure: no state, no policy,
/// no I/O.
pub(crate) fn prepare_request(
    keys: &dyn Fn(&str) -> Option<KeyInfo>,
    request: SignRequest,
) -> Result<Prepared, ServiceError> {
    let invalid = |e: evm::EvmError| ServiceError::InvalidArgument(e.to_string());
    let method = request.method();
    let request_id = validate_request_id(request.request_id())?;
    match &request {
        SignRequest::Transaction(req) => {
            let key = key_for(keys, &req.key_id, Algorithm::Secp256k1, "EVM transactions")?;
            let tx = evm::prepare_transaction(req).map_err(invalid)?;
            Ok(Prepared {
                method,
                dry_run: req.dry_run,
                request_id,
                key,
                action: tx.action().clone(),
                commitment: tx.signing_hash().0,
                payload: PayloadKind::Tx(Box::new(tx)),
                request,
            })
        }
        SignRequest::Message(req) => {
            let key = key_for(keys, &req.key_id, Algorithm::Secp256k1, "EIP-191 messages")?;
            let (hash, action) =
                evm::prepare_message(&req.key_id, &req.message).map_err(invalid)?;
            let ids = (request_id, req.dry_run);
            Ok(hash_prepared(method, request, ids, key, hash, action))
        }
        SignRequest::TypedData(req) => {
            let key = key_for(
                keys,
                &req.key_id,
                Algorithm::Secp256k1,
                "EIP-712 typed data",
            )?;
            let (hash, action) =
                evm::prepare_typed_data(&req.key_id, &req.typed_data_json).map_err(invalid)?;
            let ids = (request_id, req.dry_run);
            Ok(hash_prepared(method, request, ids, key, hash, action))
        }
        SignRequest::Digest(req) => {
            let digest: [u8; 32] = req.digest.as_slice().try_into().map_err(|_| {
                ServiceError::InvalidArgument(format!(
                    "digest: must be exactly 32 bytes, got {}",
                    req.digest.len()
                ))
            })?;
            let key = key_by_id(keys, &req.key_id)?;
            let payload = match key.algorithm {
                Algorithm::Secp256k1 | Algorithm::P256 => PayloadKind::EcdsaHash,
                Algorithm::Ed25519 => PayloadKind::Ed25519Digest,
            };
            Ok(Prepared {
                method,
                dry_run: req.dry_run,
                request_id,
                action: Action::new(&key.id, Kind::RawDigest),
                key,
                commitment: digest,
                payload,
                request,
            })
        }
    }
}

fn key_by_id(keys: &dyn Fn(&str) -> Option<KeyInfo>, id: &str) -> Result<KeyInfo, ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::InvalidArgument("key_id: required".into()));
    }
    // Every backend's key ids follow these rules, so an id that breaks them names no key.
    // Checked before the lookup so that neither the answer nor the audit record of the
    // refusal repeats arbitrary client text.
    let Ok(id) = crate::ids::KeyId::parse(id) else {
        return Err(ServiceError::InvalidArgument(format!(
            "key_id: 1 to {} characters from A-Z a-z 0-9 . _ -",
            crate::ids::MAX_KEY_ID_LEN
        )));
    };
    keys(&id).ok_or_else(|| ServiceError::NotFound(format!("key `{id}` not found")))
}

fn key_for(
    keys: &dyn Fn(&str) -> Option<KeyInfo>,
    id: &str,
    want: Algorithm,
    what: &str,
) -> Result<KeyInfo, ServiceError> {
    let key = key_by_id(keys, id)?;
    if key.algorithm != want {
        return Err(ServiceError::InvalidArgument(format!(
            "key `{id}` is {}; {what} need a {want} key",
            key.algorithm
        )));
    }
    Ok(key)
}

fn unavailable(e: crate::audit::AuditError) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

/// Checks the client-chosen idempotency key (see [`RequestId`]).
pub fn validate_request_id(id: &str) -> Result<RequestId, ServiceError> {
    RequestId::parse(id).map_err(|e| ServiceError::InvalidArgument(e.to_string()))
}

/// Why a `request_id` already used by an `earlier` request of another content cannot be used by
/// this `method` call: names both methods, which may differ.
fn reused_message(earlier: &str, method: Method) -> String {
    if earlier == method.as_str() {
        format!(
            "request_id was already used for a different {earlier} request; use a new request_id \
             for a new request"
        )
    } else {
        format!(
            "request_id was already used for a {earlier} request; this {method} request needs a \
             new request_id"
        )
    }
}

/// SHA-256 over the method, the key and what is signed: equal for exactly the same request.
pub(crate) fn fingerprint(p: &Prepared) -> String {
    let mut h = Sha256::new();
    h.update(b"signerd.request.v1\0");
    h.update(p.method.as_str().as_bytes());
    h.update([0]);
    h.update(p.key.id.as_bytes());
    h.update([0]);
    h.update(p.commitment);
    hex::encode(h.finalize())
}

fn replay(
    stored: StoredRequest,
    fingerprint: &str,
    method: Method,
) -> Result<Signed, ServiceError> {
    if stored.fingerprint != fingerprint {
        return Err(ServiceError::Aborted(reused_message(
            &stored.method,
            method,
        )));
    }
    tracing::debug!("replaying stored outcome");
    match stored.outcome {
        StoredOutcome::Signed { response } => hex::decode(&response)
            .ok()
            .and_then(|b| wire::decode_answer(method, &b).ok())
            .ok_or_else(|| ServiceError::Unavailable("stored response cannot be decoded".into())),
        StoredOutcome::Denied { rule, reason } => {
            Err(ServiceError::PermissionDenied { rule, reason })
        }
        // Answered from the pending record by the caller.
        StoredOutcome::Pending => Err(ServiceError::Unavailable(
            "the request's approval state cannot be read".into(),
        )),
    }
}

fn request_record(
    caller: &Caller,
    method: Method,
    request_id: Option<&str>,
    key_id: Option<&str>,
    fingerprint: Option<&str>,
) -> events::SignRequest {
    events::SignRequest {
        req_id: request_id.map(str::to_owned),
        method,
        client: caller.identity.id.clone(),
        cert_sha256: caller.cert_sha256.clone(),
        key: key_id.map(str::to_owned),
        fingerprint: fingerprint.map(str::to_owned),
    }
}

fn decision_record(caller: &Caller, p: &Prepared, d: &Decided) -> events::SignDecision {
    let (effect, rules, reason) = match &d.decision {
        Decision::Allow { rules } => (events::Decision::Allow, rules.clone(), None),
        Decision::Deny { rule, reason } => (
            events::Decision::Deny,
            rule.iter().cloned().collect(),
            Some(reason.clone()),
        ),
        Decision::NeedsApproval { rules, .. } => {
            (events::Decision::RequireApproval, rules.clone(), None)
        }
    };
    let charges = d
        .charges
        .iter()
        .map(|c| events::Charge {
            amount: c.amount.to_string(),
            bucket: c.bucket.as_str().to_owned(),
            limit: c.limit_id.clone(),
            window_secs: c.window_secs,
        })
        .collect();
    events::SignDecision {
        req_id: p.request_id.as_str().to_owned(),
        client: Some(caller.identity.id.clone()),
        roles: Some(caller.identity.roles.clone()),
        decision: effect,
        rules,
        reason,
        policy_serial: d.policy.serial(),
        policy_hash: d.policy.hash_hex(),
        action: serde_json::to_value(&p.action).unwrap_or_default(),
        charges,
        approved_by: None,
    }
}

/// The outcome of [`Signer::decide`].
struct Decided {
    decision: Decision,
    /// What an allowed request reserved (empty otherwise).
    charges: Vec<signerd_policy::Charge>,
    explanation: Vec<String>,
    policy: Arc<Policy>,
    reserved: bool,
}

/// Whether a request holds reservations that must be released if it ends unsigned: disarmed
/// once its result is on record (or it waits for approval, keeping them).
struct Reservation {
    armed: bool,
}

/// Usage for one policy evaluation, answered from what the store said; a window it was not
/// asked about is recorded (see [`Signer::evaluate`]) and counts as nothing used in the first
/// evaluation, and as everything used (fail closed) in the second.
#[derive(Default)]
struct Prefetched {
    known: HashMap<crate::state::UsageQuery, Used>,
    answered: bool,
    missing: std::cell::RefCell<Vec<crate::state::UsageQuery>>,
}

impl Prefetched {
    fn answered(known: HashMap<crate::state::UsageQuery, Used>) -> Prefetched {
        Prefetched {
            known,
            answered: true,
            missing: std::cell::RefCell::default(),
        }
    }

    /// The windows asked for, each once, in the order first asked.
    fn into_missing(self) -> Vec<crate::state::UsageQuery> {
        let mut out = self.missing.into_inner();
        let mut seen = std::collections::HashSet::new();
        out.retain(|q| seen.insert(q.clone()));
        out
    }
}

impl Usage for Prefetched {
    fn used(&self, bucket: &BucketKey, window_secs: u64, _now_unix: i64) -> Used {
        let q = crate::state::UsageQuery {
            bucket: bucket.as_str().to_owned(),
            window_secs,
        };
        if let Some(used) = self.known.get(&q) {
            return *used;
        }
        self.missing.borrow_mut().push(q);
        if self.answered {
            Used::SATURATED
        } else {
            Used::ZERO
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it, which no window matches).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why an allowed request was not signed by its key.
enum Unsigned {
    /// The key backend failed or the key changed.
    Backend(KeyError),
    /// The key differs from its pin, or is weak, or its pin could not be recorded.
    Pin(pins::PinError),
}

/// The signature as answered, the signed transaction (for transactions), and the
/// `sign.result` record.
type Built = ((SignatureParts, Option<evm::SignedTx>), events::SignResult);

/// Builds the answer (without receipt) and its `sign.result` record.
fn build_response(
    caller: &Caller,
    p: &Prepared,
    sig: &RawSignature,
    pin: u64,
) -> Result<Built, ServiceError> {
    let mut out = SignatureParts::default();
    let mut tx_fields = None;
    let (mut tx_hash, mut raw_tx) = (None, None);
    match (&p.payload, sig) {
        (PayloadKind::Tx(tx), RawSignature::Ecdsa { r, s, y_parity }) => {
            let signed = tx.encode_signed(*r, *s, *y_parity);
            out = ecdsa_proto(r, s, *y_parity, signed.v);
            out.bytes.clear();
            tx_hash = Some(format!("{:#x}", signed.hash));
            raw_tx = Some(hex0x(&signed.raw));
            tx_fields = Some(signed);
        }
        (PayloadKind::EcdsaHash, RawSignature::Ecdsa { r, s, y_parity }) => {
            out = ecdsa_proto(r, s, *y_parity, 27 + u64::from(*y_parity));
        }
        (PayloadKind::Ed25519Digest, RawSignature::Ed25519(bytes)) => {
            out.bytes = bytes.to_vec();
        }
        _ => {
            return Err(ServiceError::Unavailable(
                "key backend returned a signature of the wrong kind; nothing was returned".into(),
            ));
        }
    }
    let rec = events::SignResult {
        req_id: Some(p.request_id.as_str().to_owned()),
        client: Some(caller.identity.id.clone()),
        outcome: Outcome::Signed {
            signing_hash: hex0x(&p.commitment),
            tx_hash,
            raw_tx,
            signature: events::Signature {
                bytes: hex0x(&out.bytes),
                r: hex0x(&out.r),
                s: hex0x(&out.s),
                v: out.v,
            },
            // Versioned keys (Vault transit): which version signed, so rotation is auditable.
            key_version: p.key.version.map(u64::from),
            // The key.pin record whose public key verifies this signature.
            pin: Some(pin),
        },
    };
    Ok(((out, tx_fields), rec))
}

/// The answer to store for a request whose final `sign.result` record the audit log holds:
/// what start-up restores when the state store lost it. A signed answer is rebuilt from the
/// record exactly as [`build_response`] built it, with the receipt of that record's line.
pub fn answer_from_log(
    a: &crate::state::reconcile::LoggedAnswer<'_>,
) -> Result<StoredRequest, String> {
    let method = Method::parse(a.method).ok_or_else(|| format!("unknown method `{}`", a.method))?;
    let outcome = match &a.record.outcome {
        Outcome::Denied { rule, message } => StoredOutcome::Denied {
            rule: rule.clone(),
            reason: message.clone(),
        },
        Outcome::Signed {
            signing_hash,
            tx_hash,
            raw_tx,
            signature,
            ..
        } => {
            let signed = rebuild(
                a.seq,
                a.line,
                signing_hash,
                tx_hash.as_ref().zip(raw_tx.as_ref()),
                signature,
            )?;
            StoredOutcome::Signed {
                response: hex::encode(wire::encode_answer(method, signed)),
            }
        }
        _ => return Err("not a final answer".into()),
    };
    Ok(StoredRequest {
        fingerprint: a.fingerprint.to_owned(),
        method: method.as_str().to_owned(),
        outcome,
        answered_at: Some(a.ts),
    })
}

/// The answer of a `signed` result record at `seq`, whose line is `line` (see
/// [`answer_from_log`]): exactly what [`build_response`] answered, receipt included.
fn rebuild(
    seq: u64,
    line: &str,
    signing_hash: &str,
    tx: Option<(&String, &String)>,
    sig: &events::Signature,
) -> Result<Signed, String> {
    fn bytes(v: &str, name: &str) -> Result<Vec<u8>, String> {
        v.strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| format!("`{name}` is not 0x-prefixed hex"))
    }
    fn hash32(v: &str, name: &str) -> Result<[u8; 32], String> {
        bytes(v, name)?
            .try_into()
            .map_err(|_| format!("`{name}` is not 32 bytes"))
    }
    let (r, s, all) = (
        bytes(&sig.r, "signature.r")?,
        bytes(&sig.s, "signature.s")?,
        bytes(&sig.bytes, "signature.bytes")?,
    );
    let v = sig.v;
    // The parity is what `v` or the 65-byte form encodes: 27/28 for messages, 0/1 for typed
    // transactions, chain_id * 2 + 35/36 for EIP-155 legacy ones; Ed25519 has none.
    let y_parity = match (all.len(), v) {
        (65, _) => u32::from(all[64].wrapping_sub(27)),
        (_, 0 | 1) => v as u32,
        (_, 27 | 28) => (v - 27) as u32,
        (_, v) if v >= 35 => ((v - 35) % 2) as u32,
        _ if r.is_empty() => 0,
        _ => return Err(format!("`signature.v` {v} encodes no parity")),
    };
    let tx = match tx {
        Some((hash, raw)) => Some(evm::SignedTx {
            raw: bytes(raw, "raw_tx")?,
            hash: B256::from(hash32(hash, "tx_hash")?),
            v,
        }),
        None => None,
    };
    Ok(Signed {
        signature: SignatureParts {
            r,
            s,
            y_parity,
            v,
            bytes: all,
        },
        signing_hash: hash32(signing_hash, "signing_hash")?,
        tx,
        receipt: Receipt {
            seq,
            leaf_hash: crate::audit::merkle::leaf_hash(line.as_bytes()),
        },
    })
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn ecdsa_proto(r: &[u8; 32], s: &[u8; 32], y_parity: bool, v: u64) -> SignatureParts {
    let mut bytes = Vec::with_capacity(65);
    bytes.extend_from_slice(r);
    bytes.extend_from_slice(s);
    bytes.push(27 + u8::from(y_parity));
    SignatureParts {
        r: r.to_vec(),
        s: s.to_vec(),
        y_parity: u32::from(y_parity),
        v,
        bytes,
    }
}

/// The audit record's name for the threshold that admitted a policy.
fn threshold_of(admitted: &signerd_policy::Admitted) -> events::PolicyThreshold {
    match admitted.threshold {
        signerd_policy::Threshold::Full => events::PolicyThreshold::Full,
        signerd_policy::Threshold::Tighten => events::PolicyThreshold::Tighten,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_request_id_names_both_methods() {
        assert_eq!(
            reused_message("SignEvmTransaction", Method::SignEvmMessage),
            "request_id was already used for a SignEvmTransaction request; this SignEvmMessage \
             request needs a new request_id"
        );
        assert_eq!(
            reused_message("SignDigest", Method::SignDigest),
            "request_id was already used for a different SignDigest request; use a new \
             request_id for a new request"
        );
    }

    /// A backend that cannot serve, for whatever reason, is UNAVAILABLE and says that nothing
    /// was signed; PERMISSION_DENIED is left to the policy.
    #[test]
    fn key_backend_failures_are_unavailable_never_denied() {
        let code = |e: KeyError| crate::api::status(ServiceError::from(e));
        let refused = code(KeyError::CredentialsRefused(
            "vault sign: Vault refused the token or the operation (HTTP 403): permission denied"
                .into(),
        ));
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(
            refused
                .message()
                .starts_with("key backend refused its credentials: vault sign:"),
            "{refused:?}"
        );
        assert!(
            refused.message().contains(
                "nothing was signed; signing resumes by itself once the key backend accepts \
                 signerd's credentials again"
            ),
            "{refused:?}"
        );
        let down = code(KeyError::Unavailable(
            "vault sign: no answer within 2000 ms".into(),
        ));
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        assert!(
            down.message().contains(
                "no answer within 2000 ms; nothing was signed; signing \
                 resumes by itself once the key backend answers again"
            ),
            "{down:?}"
        );
        let bad = code(KeyError::Keystore("wrapped key file is corrupt".into()));
        assert_eq!(bad.code(), tonic::Code::Unavailable, "{bad:?}");
        let missing = code(KeyError::NotFound("k".into()));
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(missing.message(), "key `k` not found");
        let wrong = code(KeyError::WrongAlgorithm {
            id: "k".into(),
            algorithm: Algorithm::Ed25519,
            what: "cannot sign a digest".into(),
        });
        assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
        // And metrics count them as failures, not as denials.
        let e = ServiceError::from(KeyError::CredentialsRefused("x".into()));
        assert_eq!(e.metric_labels(), ("none", "UNAVAILABLE"));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(validate_request_id("order-42:retry.1_a").is_ok());
        let msg = |id: &str| {
            validate_request_id(id)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(msg("").contains("required"));
        assert!(msg(&"a".repeat(129)).contains("at most 128"));
        assert!(msg("a b").contains("' '"));
        assert!(msg("é").contains("not allowed"));
    }
}
