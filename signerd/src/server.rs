//! Start-up, serving and shutdown of the daemon.
//!
//! Start-up opens everything before the listener binds, in an order that fails early: policy,
//! keys, state store, TLS, audit log. Anything missing or inconsistent stops start-up with a
//! message that names the file. Shutdown (SIGTERM or SIGINT) stops accepting, lets in-flight
//! requests finish, stops the background tasks and waits for them (at most
//! [`SHUTDOWN_WAIT`](crate::tasks::SHUTDOWN_WAIT)), then writes `audit.stop` and syncs the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use signerd_proto::v1::admin_server::AdminServer;
use signerd_proto::v1::approvals_server::ApprovalsServer;
use signerd_proto::v1::signer_server::SignerServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{AdminApi, ApprovalsApi, SignerApi};
use crate::audit::{AuditLog, AuditOptions};
use crate::config::Backend;
use crate::config::Config;
use crate::keys::pkcs11::Pkcs11Backend;
use crate::keys::soft::SoftBackend;
use crate::keys::{AuditKeySpec, KeyBackend};
use crate::service::Signer;
use crate::tasks::{Background, SHUTDOWN_WAIT};
use crate::tls::{self, AcceptOptions, IdentityMap};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A component could not be opened; the message names it.
    #[error("{0}")]
    Start(String),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(String),
}

fn start<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ServerError + '_ {
    move |e| ServerError::Start(format!("{what}: {e}"))
}

/// Opens the configured key backend (`[keys] backend`); with `audit`, it holds the audit
/// checkpoint key too, apart from client keys.
pub fn open_keys(
    config: &Config,
    audit: Option<&AuditKeySpec>,
    background: &Background,
) -> Result<Arc<dyn KeyBackend>, ServerError> {
    match config.keys.backend {
        Backend::Soft => {
            let soft = config
                .keys
                .soft
                .as_ref()
                .ok_or_else(|| ServerError::Start("keys: [keys.soft] is missing".into()))?;
            let passphrase = soft.passphrase().map_err(ServerError::Start)?;
            let backend = SoftBackend::open(&soft.dir, &passphrase).map_err(start("keys.soft"))?;
            Ok(Arc::new(backend))
        }
        Backend::Pkcs11 => {
            let cfg = config
                .keys
                .pkcs11
                .as_ref()
                .ok_or_else(|| ServerError::Start("keys: [keys.pkcs11] is missing".into()))?;
            let pin = cfg
                .pin_source()
                .read("keys.pkcs11.pin")
                .map_err(ServerError::Start)?;
            let backend =
                Pkcs11Backend::open(cfg, pin, audit, background).map_err(start("keys.pkcs11"))?;
            Ok(Arc::new(backend))
        }
        Backend::Vault => Err(ServerError::Start(
            "keys.backend = \"vault\" opens asynchronously: use open_vault_keys".into(),
        )),
    }
}

/// Opens the Vault / OpenBao backend (`keys.backend = "vault"`): logs in and discovers keys
/// (and, with `audit`, the audit checkpoint key).
pub async fn open_vault_keys(
    config: &Config,
    audit: Option<&AuditKeySpec>,
    background: &Background,
) -> Result<Arc<dyn KeyBackend>, ServerError> {
    let vault = config
        .keys
        .vault
        .as_ref()
        .ok_or_else(|| ServerError::Start("keys: [keys.vault] is missing".into()))?;
    let backend = crate::keys::vault::VaultBackend::open(vault, audit, background)
        .await
        .map_err(start("keys.vault"))?;
    Ok(Arc::new(backend))
}

/// Refuses a start whose state store does not belong to the audit log found (`how` says why).
fn refuse_binding(config: &Config, how: &str) -> ServerError {
    let store = match &config.state.postgres {
        Some(pg) => format!(
            "state database {}:{}/{} (for the log origin `{}`)",
            pg.host, pg.port, pg.dbname, config.audit.origin
        ),
        None => format!("state store in {}", config.state.dir.display()),
    };
    ServerError::Start(format!(
        "{store}: {how}; restore the audit directory the store belongs to, or start \
         once with --rebind-state-to-log (recorded in the audit log)"
    ))
}

/// How often health looks at the key backend.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// The gRPC health service name that says whether every witness cosigns (with
/// `[[audit.witnesses]]` only). Signing does not depend on it unless `audit.witness_max_lag`
/// is set.
pub const WITNESS_HEALTH: &str = "signerd.audit.Witnesses";

/// A daemon that has opened everything and bound its listener, ready to serve.
pub struct Daemon {
    config: Config,
    signer: Arc<Signer>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    /// Every background task of the daemon; the signer holds a clone to spawn its own.
    background: Background,
    /// The state store, to record at shutdown how much of the log it has seen.
    state: Arc<dyn crate::state::StateStore>,
    /// The audit log the state store is bound to.
    log: crate::state::LogBinding,
    /// SIGHUP, taken over when the daemon is opened: a SIGHUP that comes once the daemon is
    /// listening reloads the policy, and never terminates the process (its default action).
    hangup: Option<tokio::signal::unix::Signal>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// How one start may differ from the configuration's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start with a policy whose serial is lower than one the audit log records as loaded
    /// (`signerd run --allow-policy-rollback`). The start-up `policy.load` then says `forced`.
    pub allow_policy_rollback: bool,
    /// Bind a state store that belongs to another audit log (or to this one when it held more
    /// records) to this log (`signerd run --rebind-state-to-log`), recorded as `state.rebind`.
    pub rebind_state_to_log: bool,
}

impl Daemon {
    /// Opens every component and binds the listener.
    pub async fn open(config: Config) -> Result<Daemon, ServerError> {
        Daemon::open_with(config, StartOptions::default()).await
    }

    /// [`Daemon::open`], with `options` for this start.
    pub async fn open_with(config: Config, options: StartOptions) -> Result<Daemon, ServerError> {
        let started = std::time::Instant::now();
        // First, so that what opening records (the audit log's first checkpoint) is counted.
        if config.metrics.is_some() {
            crate::metrics::install().map_err(start("metrics"))?;
        }
        let (mut policy, policy_source) =
            crate::policy_file::load_policy_source(&config.policy.file).map_err(start("policy"))?;
        let trust = crate::policy_file::Trust::from_config(&config).map_err(start("policy"))?;
        // An audit key held by the key backend is created only for a new log.
        let audit_spec = crate::audit::key::backend_spec(
            &config,
            crate::audit::key::log_is_new(&config.audit.dir),
        );
        // Every background task, the key backend's own included, is tracked from here.
        let background = Background::new();
        let keys = match config.keys.backend {
            // Vault is reached over async HTTP, so it opens here rather than in `open_keys`.
            Backend::Vault => open_vault_keys(&config, audit_spec.as_ref(), &background).await?,
            _ => open_keys(&config, audit_spec.as_ref(), &background)?,
        };
        // A rule or limit naming a key this daemon does not hold would do nothing.
        crate::policy_file::check_keys(&policy, keys.keys().into_iter().map(|k| k.id))
            .map_err(start("policy"))?;
        let state: Arc<dyn crate::state::StateStore> = match &config.state.postgres {
            // Replicas tell each other apart by their audit logs' origins.
            Some(pg) => Arc::new(
                crate::state::PostgresStore::open(pg, &config.audit.origin)
                    .await
                    .map_err(start("state"))?,
            ),
            None => crate::state::open_sled(&config.state.dir, config.state.cache_bytes)
                .map_err(start("state"))?,
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            "start-up: keys and state store open"
        );
        let tls = tls::server_config(&config.tls).map_err(start("tls"))?;
        let audit_key =
            crate::audit::key::open_for_daemon(&config, &keys).map_err(start("audit"))?;
        if audit_key.generated {
            tracing::warn!(
                backend = %config.audit.signing_key_backend,
                verifier_key = %audit_key.verifier,
                "a new audit log: give the verifier key of its checkpoint signing key to auditors"
            );
        }
        for deprecation in config.deprecations() {
            tracing::warn!("{deprecation}");
        }
        if config.audit.bench_unsafe_no_fsync {
            tracing::error!(
                "audit.bench_unsafe_no_fsync is set: signatures are returned before their audit \
                 records are on disk; this setting is for benchmarks only"
            );
        }
        // The state store belongs to one log: a log removed, replaced or cut back must not be
        // paired with the answers and the spend the store remembers. Which log it is, is
        // checked before the log is opened (opening a missing directory starts a new log) and
        // before anything from it reaches the store; its length after the scan.
        let first = crate::state::reconcile::first_record(&config.audit.dir)
            .map_err(start("reconciling from the audit log"))?;
        let identity = crate::state::LogBinding {
            origin: config.audit.origin.clone(),
            first_record: first.map(hex::encode).unwrap_or_default(),
            records: 0,
            answers_complete: None,
        };
        let bound = state.log_binding().await.map_err(start("state"))?;
        // A store bound to another log (a new or replaced audit directory). A new store, or
        // one from a release that did not bind, has no binding and is bound below.
        let (bound, rebind) = match bound {
            Some(b) if b.origin != identity.origin || b.first_record != identity.first_record => {
                if !options.rebind_state_to_log {
                    return Err(refuse_binding(
                        &config,
                        &format!(
                            "it belongs to the audit log `{}` whose first record has leaf hash \
                             {}, not to the log in {}",
                            b.origin,
                            b.first_record,
                            config.audit.dir.display()
                        ),
                    ));
                }
                (None, Some(b))
            }
            other => (other, None),
        };
        // The newest snapshot the log vouches for spares reading the records it covers. The
        // answers below it must be in the store: only snapshots up to the position through
        // which the store says it holds every answer are tried.
        let answers_complete = bound.as_ref().and_then(|b| b.answers_complete);
        let candidates = snapshot_candidates(&config.audit.dir, answers_complete);
        let (audit, used) = AuditLog::open_from(
            &config.audit.dir,
            AuditOptions::from_config(&config.audit, audit_key.signer),
            &candidates,
        )
        .map_err(start("audit"))?;
        let used = used.and_then(|i| candidates.into_iter().nth(i));
        // Only a shared store checks the signed spend request by request; for the embedded
        // store, keeping it would hold an entry per signed request of a full read in memory.
        let keep_signed = |l: crate::state::reconcile::Ledger| {
            if state.shared() {
                l.keeping_signed()
            } else {
                l
            }
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            "start-up: audit log open"
        );
        let (ledger, first_segment, answers_from) = match &used {
            Some(l) => {
                tracing::info!(
                    snapshot = %l.file,
                    records = l.snapshot.records,
                    "start-up continues from a snapshot the audit log vouches for"
                );
                (
                    keep_signed(l.snapshot.ledger.clone()),
                    l.snapshot.segment + 1,
                    l.snapshot.records,
                )
            }
            None => (
                keep_signed(crate::state::reconcile::Ledger::default()),
                1,
                answers_complete.unwrap_or(0),
            ),
        };
        // The audit log is the source of truth for spend: count exactly what was signed.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // It is the durable copy of every answer too: answers the state store lost in a crash
        // (they are not flushed one by one) are restored before serving.
        // The scan reads the log on a blocking thread and hands each final answer to this task,
        // which asks the store (a store call may wait on the network) and restores the missing.
        let (answers, mut to_restore) = tokio::sync::mpsc::channel(256);
        let audit_dir = config.audit.dir.clone();
        let scan = tokio::task::spawn_blocking(move || {
            crate::state::reconcile::scan_from(
                &audit_dir,
                ledger,
                first_segment,
                answers_from,
                &mut |answer| {
                    let rec = crate::service::answer_from_log(&answer)?;
                    let owned = (answer.client.to_owned(), answer.req_id.to_owned(), rec);
                    answers
                        .blocking_send(owned)
                        .map_err(|_| "the state store stopped taking answers".to_owned())
                },
            )
            .map(|ledger| ledger.finish(now))
        });
        let mut restored = 0u64;
        // Answers older than the retention come back as expiry markers, never as answers, so
        // a store rebuilt from the log neither revives them nor forgets they were answered.
        let cutoff = crate::state::retention::cutoff(now, config.state.idempotency_retention());
        while let Some((client, req_id, rec)) = to_restore.recv().await {
            let stored = state
                .get_request(&client, &req_id)
                .await
                .map_err(start("state"))?;
            if stored.is_some_and(|s| s.outcome != crate::state::StoredOutcome::Pending) {
                continue;
            }
            match rec.answered_at {
                Some(at) if at < cutoff => {
                    let marked = state
                        .expired(&client, &req_id)
                        .await
                        .map_err(start("state"))?;
                    if marked.is_some() {
                        // Already marked: nothing to restore.
                        continue;
                    }
                    state
                        .put_expired(&client, &req_id, at)
                        .await
                        .map_err(start("state"))?;
                }
                _ => state
                    .put_request(&client, &req_id, &rec)
                    .await
                    .map_err(start("state"))?,
            }
            restored += 1;
        }
        let scanned = scan
            .await
            .map_err(start("reconciling from the audit log"))?
            .map_err(start("reconciling from the audit log"))?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            "start-up: audit log read"
        );
        // A policy older than one this log has loaded is a rollback (a restart on an old file
        // brings back rules that were replaced): refused unless allowed for this start.
        let rollback = scanned
            .highest_policy_serial
            .filter(|&highest| policy.serial() < highest);
        if let Some(highest) = rollback {
            if !options.allow_policy_rollback {
                return Err(ServerError::Start(format!(
                    "policy: serial {} in {} is lower than serial {highest}, which this audit \
                     log has loaded; install a policy with a serial of at least {highest}, or \
                     start once with --allow-policy-rollback (recorded in the audit log)",
                    policy.serial(),
                    config.policy.file.display()
                )));
            }
            tracing::warn!(
                serial = policy.serial(),
                highest,
                "starting with a policy older than the audit log has loaded (--allow-policy-rollback)"
            );
        }
        // Only a policy signed by enough administrators of the governance in force loads: the
        // last policy this log loaded decides, and the configured trust anchor only for the
        // first one. A refusal is recorded, and the start stops.
        let admitted = {
            let (governance, in_force) = crate::policy_file::in_force(
                &config.audit.dir,
                scanned.last_policy_hash.as_deref(),
                &trust.anchor,
            )
            .map_err(start("policy"))?;
            match crate::policy_file::admit(
                &config.policy.file,
                &policy,
                &trust,
                &governance,
                in_force.as_ref(),
            ) {
                Ok(a) => a,
                Err(e) => {
                    let refused = crate::audit::events::PolicyRefused {
                        source: crate::audit::events::PolicySource::Startup,
                        actor: None,
                        file: config.policy.file.display().to_string(),
                        reason: e.to_string(),
                        signers: e.signers().to_vec(),
                    };
                    if let Err(a) = audit.append_durable(refused).await {
                        tracing::error!(error = %a, "cannot record policy.refused");
                    }
                    if let Err(a) = audit.shutdown().await {
                        tracing::error!(error = %a, "cannot close the audit log");
                    }
                    return Err(start("policy")(e));
                }
            }
        };
        // Address-book entries keep the first load the log recorded (a restart does not
        // restart a cooling-off period); entries the last load did not hold are new now.
        let known = crate::policy_file::first_loaded(&scanned.book_entries)
            .map_err(start("reconciling from the audit log"))?;
        policy.set_first_loaded(&known, Some(now));
        // A new log has its first record only now that it is open.
        let first = crate::state::reconcile::first_record(&config.audit.dir)
            .map_err(start("reconciling from the audit log"))?;
        // Every answer the log holds is in the store once the binding below is durable (it
        // flushes the answers restored above).
        let current = crate::state::LogBinding {
            records: scanned.records,
            first_record: first.map(hex::encode).unwrap_or_default(),
            answers_complete: Some(scanned.records),
            ..identity
        };
        // The same log, cut back below what the store has seen.
        let shorter = bound.filter(|b| b.records > current.records);
        if let Some(b) = &shorter
            && !options.rebind_state_to_log
        {
            return Err(refuse_binding(
                &config,
                &format!(
                    "it has seen {} records in this log, which now holds {}",
                    b.records, current.records
                ),
            ));
        }
        let rebind = rebind.or(shorter);
        state.bind_log(&current).await.map_err(start("state"))?;
        let spend = scanned.spend;
        let (spend_slots, spend_waiting) = (spend.settled.len(), spend.waiting.len());
        state.reconcile(spend).await.map_err(start("state"))?;
        state.flush().await.map_err(start("state"))?;
        tracing::info!(
            settled_slots = spend_slots,
            waiting = spend_waiting,
            answers_restored = restored,
            elapsed_ms = started.elapsed().as_millis(),
            "spend ledger and answers reconciled from the audit log"
        );
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(start(&format!("listen {}", config.server.listen)))?;
        let metrics = match &config.metrics {
            Some(m) => {
                crate::metrics::policy(policy.serial(), &policy.hash_hex());
                crate::metrics::backend(keys.name(), keys.healthy(), keys.sessions());
                crate::metrics::audit_healthy(true);
                Some(
                    crate::metrics::bind(m.listen)
                        .await
                        .map_err(start("metrics"))?,
                )
            }
            None => None,
        };
        tracing::info!(
            policy_serial = policy.serial(),
            policy_hash = %policy.hash_hex(),
            keys = keys.keys().len(),
            backend = keys.name(),
            "opened"
        );
        let admission = config.admission();
        tracing::info!(
            max_in_flight = admission.max_in_flight,
            queue_timeout_ms =
                u64::try_from(admission.queue_timeout.as_millis()).unwrap_or(u64::MAX),
            "signing admission"
        );
        let signer = Arc::new(
            Signer::new(
                keys,
                policy,
                config.policy.file.clone(),
                state.clone(),
                audit,
                background.clone(),
            )
            .with_admission(admission),
        );
        // Archived beside the log before the record that names its hash.
        crate::audit::archive::store(&config.audit.dir, policy_source.as_bytes())
            .map_err(start("policy"))?;
        if !config.audit.witnesses.is_empty() {
            let gate = crate::witness::sender::start(&config, signer.audit(), &background)
                .map_err(start("audit.witnesses"))?;
            signer.set_witness_gate(gate);
        }
        signer.set_policy_trust(trust);
        signer.set_auth_failure_window(config.audit.auth_failure_window());
        signer.set_idempotency_retention(config.state.idempotency_retention());
        background.spawn(
            "idempotency retention",
            crate::state::retention::run(
                state.clone(),
                config.state.idempotency_retention(),
                config.state.prune_interval(),
                background.cancelled_owned(),
            ),
        );
        signer
            .record_startup_policy(rollback.is_some(), &admitted)
            .map_err(start("audit"))?;
        // Keys pinned in the log: every key must match its pin before it signs.
        let pinned = signer
            .learn_pins(scanned.pins, &config.keys.allow_weak_keys)
            .map_err(start("reconciling from the audit log"))?;
        tracing::info!(pins = pinned, "key pins learned from the audit log");
        crate::audit::snapshot::spawn_builder(
            &background,
            crate::audit::snapshot::Builder {
                dir: config.audit.dir.clone(),
                key: signer.audit().verifier_key().clone(),
                audit: signer.audit().clone(),
                state: state.clone(),
                answers: signer.answers().clone(),
            },
            used.map(|l| l.snapshot),
        );
        if let Some(previous) = rebind {
            tracing::warn!(
                previous_origin = %previous.origin,
                previous_records = previous.records,
                "state store bound to this audit log (--rebind-state-to-log)"
            );
            signer
                .audit()
                .append(crate::audit::events::StateRebind {
                    previous_origin: previous.origin,
                    previous_first_record: previous.first_record,
                    previous_records: previous.records,
                    first_record: current.first_record.clone(),
                    records: current.records,
                })
                .map_err(start("audit"))?;
        }
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cannot listen for SIGHUP; reload the policy through the Admin API"
                );
                None
            }
        };
        Ok(Daemon {
            config,
            signer,
            listener,
            metrics,
            tls,
            background,
            state,
            log: current,
            hangup,
        })
    }

    /// The address of the metrics listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|e| ServerError::Serve(e.to_string()))
    }

    /// Serves until `shutdown` resolves, then drains and closes the audit log.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let server = &self.config.server;
        let identities = Arc::new(IdentityMap::new(&self.config.identities));
        let background = self.background.clone();
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel();
        let conns = tls::accept_loop(
            &background,
            self.listener,
            self.tls,
            identities,
            AcceptOptions {
                handshake_timeout: server.handshake_timeout(),
                preface_timeout: server.preface_timeout(),
                idle_timeout: server.idle_timeout(),
                max_connections: server.max_connections,
                max_connections_per_identity: server.max_connections_per_identity(),
                max_connections_unmapped: server.max_connections_unmapped,
            },
            fail_tx,
        );
        let signer = self.signer.clone();
        let bg = background.clone();
        background.spawn("handshake failure recorder", async move {
            loop {
                tokio::select! {
                    // Failures already reported are recorded before stopping.
                    biased;
                    f = fail_rx.recv() => match f {
                        Some(f) => signer.record_auth_failure(
                            Some(f.peer),
                            f.cert_sha256.as_deref(),
                            &f.reason,
                        ),
                        None => return,
                    },
                    () = bg.cancelled() => return,
                }
            }
        });
        // Folded auth.failure records are written when their windows end (the rest at
        // shutdown, below).
        let signer = self.signer.clone();
        let bg = background.clone();
        background.spawn("auth.failure folding", async move {
            loop {
                let window = signer.flush_auth_failures(false);
                let tick = (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
                tokio::select! {
                    () = bg.cancelled() => return,
                    () = tokio::time::sleep(tick) => {}
                }
            }
        });

        // Approvals: requests interrupted while signing are marked failed; deadlines are kept.
        self.signer
            .start_approvals()
            .await
            .map_err(|e| ServerError::Serve(format!("approvals: {e}")))?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SignerServer<SignerApi>>().await;
        let mut audit_health = self.signer.audit().health();
        let keys = self.signer.keys_arc();
        let watched = self.signer.clone();
        let bg = background.clone();
        background.spawn("health watcher", async move {
            // The audit log's and the state store's failures are final until a restart; a key
            // backend's comes and goes, and so does an audit log paused for a checkpoint, so
            // health follows them both ways.
            let mut serving = true;
            let mut witnesses_serving: Option<bool> = None;
            let mut tick = tokio::time::interval(HEALTH_POLL);
            loop {
                tokio::select! {
                    // Closing the log ends its health too; that is not a failure to report.
                    () = bg.cancelled() => break,
                    changed = audit_health.changed() => if changed.is_err() { break },
                    _ = tick.tick() => {}
                }
                // The channel only wakes this loop early; health covers failures, pauses, and
                // writes or syncs that have not returned (nothing can be made durable then).
                let audit_ok = watched.audit().is_healthy();
                let keys_ok = keys.healthy();
                let state_ok = watched.probe_state().await;
                // Gauges follow the same poll (cheap when no recorder is installed).
                crate::metrics::audit_healthy(audit_ok);
                crate::metrics::state_healthy(state_ok);
                crate::metrics::backend(keys.name(), keys_ok, keys.sessions());
                let (serial, hash) = watched.policy_version();
                crate::metrics::policy(serial, &hash);
                let witness_pause = watched.witness_paused();
                // The health detail of witnesses: signing goes on while one is down (unless
                // audit.witness_max_lag pauses it), and this service says so.
                if let Some(failing) = watched.witness_failing()
                    && witnesses_serving != Some(!failing)
                {
                    witnesses_serving = Some(!failing);
                    let status = if failing {
                        tracing::warn!(
                            "a witness does not cosign: reporting NOT_SERVING for {WITNESS_HEALTH}; signing goes on"
                        );
                        tonic_health::ServingStatus::NotServing
                    } else {
                        tonic_health::ServingStatus::Serving
                    };
                    health.set_service_status(WITNESS_HEALTH, status).await;
                }
                let now = audit_ok && keys_ok && state_ok && witness_pause.is_none();
                if now == serving {
                    continue;
                }
                serving = now;
                let status = if now {
                    tracing::info!(
                        backend = keys.name(),
                        "key backend, audit log and witnesses ready again: reporting SERVING"
                    );
                    tonic_health::ServingStatus::Serving
                } else {
                    if let Some(why) = &witness_pause {
                        tracing::error!("{why}: reporting NOT_SERVING until witnesses catch up");
                    } else if !audit_ok && watched.audit().is_paused() {
                        tracing::error!(
                            "audit checkpoints cannot be signed: reporting NOT_SERVING until one is"
                        );
                    } else if let Some(took) = watched.audit().stalled() {
                        tracing::error!(
                            seconds = took.as_secs(),
                            "an audit write or sync has not returned: reporting NOT_SERVING until it does"
                        );
                    } else if !audit_ok {
                        tracing::error!("audit log failed: reporting NOT_SERVING");
                    } else if !state_ok {
                        tracing::error!("state store unavailable: reporting NOT_SERVING");
                    } else {
                        tracing::error!(
                            backend = keys.name(),
                            "key backend unavailable: reporting NOT_SERVING"
                        );
                    }
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status("signer.v1.Signer", status).await;
                health.set_service_status("", status).await;
            }
        });
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(signerd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Serve(format!("reflection: {e}")))?;

        let signer = self.signer.clone();
        let bg = background.clone();
        let hangup = self.hangup.take();
        background.spawn("SIGHUP reloader", async move {
            let Some(mut hup) = hangup else {
                return;
            };
            loop {
                tokio::select! {
                    () = bg.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                match signer.reload_policy(crate::audit::events::PolicySource::Sighup, None, false).await {
                    Ok(r) if !r.changed => tracing::info!("SIGHUP: policy unchanged"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: policy reload refused; the running policy stays")
                    }
                }
            }
        });
        let admin = AdminServer::new(AdminApi::new(self.signer.clone()))
            .max_decoding_message_size(server.max_message_bytes);
        let approvals = ApprovalsServer::new(ApprovalsApi::new(self.signer.clone()))
            .max_decoding_message_size(server.max_message_bytes);
        let api = SignerServer::new(SignerApi::new(self.signer.clone()))
            .max_decoding_message_size(server.max_message_bytes)
            .max_encoding_message_size(server.max_message_bytes);
        // Graceful shutdown waits for clients to finish; an idle client that keeps its
        // connection open must not hold the daemon up. In-flight requests get one request
        // deadline, then the remaining connections are dropped.
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let grace = server.request_timeout();
        if let Some(listener) = self.metrics {
            let handle =
                crate::metrics::install().map_err(|e| ServerError::Serve(e.to_string()))?;
            let stop = background.cancelled_owned();
            background.spawn("metrics listener", async move {
                if let Err(e) = crate::metrics::serve(listener, handle, stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        let serve = tonic::transport::Server::builder()
            // Counts each connection's requests in flight for its idle timeout.
            .layer(tls::idle::TrackRequests)
            .timeout(server.request_timeout())
            .max_concurrent_streams(server.max_concurrent_streams)
            .http2_max_header_list_size(16 * 1024)
            .add_service(api)
            .add_service(admin)
            .add_service(approvals)
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(ReceiverStream::new(conns), async move {
                shutdown.await;
                let _ = stopping_tx.send(());
            });
        let result = tokio::select! {
            r = serve => r,
            () = async {
                if stopping_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        tracing::info!(tasks = ?background.running(), "listener closed; stopping background tasks");
        let left = background.shutdown(SHUTDOWN_WAIT).await;
        if left.is_empty() {
            tracing::info!("background tasks ended; closing the audit log");
        } else {
            tracing::error!(
                tasks = ?left,
                "closing the audit log with background tasks still running"
            );
        }
        // Repeated authentication failures still being folded are written before the log
        // closes.
        self.signer.flush_auth_failures(true);
        let closed = self.signer.audit().shutdown().await;
        if closed.is_ok() {
            // The store has seen every record: a start on a shorter copy of the log is refused.
            // Every request has ended: unless an answer was lost, the store holds them all.
            let records = self.signer.audit().durable_records();
            let answers_complete = match self.signer.answers().complete_through(records) {
                Some(true) => Some(records),
                _ => match self.state.log_binding().await {
                    Ok(Some(b)) => b.answers_complete,
                    _ => None,
                },
            };
            let seen = crate::state::LogBinding {
                records,
                answers_complete,
                ..self.log.clone()
            };
            if let Err(e) = self.state.bind_log(&seen).await {
                tracing::error!(error = %e, "cannot record the audit log's size in the state store");
            }
        }
        result.map_err(|e| ServerError::Serve(e.to_string()))?;
        closed.map_err(|e| ServerError::Serve(e.to_string()))
    }
}

/// The snapshots start-up may continue from, newest first: those at or below the position
/// through which the state store holds every answer (`answers_complete`; none without it),
/// that can be read. Each one passed over is named in a warning with the reason.
fn snapshot_candidates(
    dir: &std::path::Path,
    answers_complete: Option<u64>,
) -> Vec<crate::audit::snapshot::Loaded> {
    let found = match crate::audit::snapshot::list(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "no snapshot used: reading the whole audit log");
            return Vec::new();
        }
    };
    if found.is_empty() {
        return Vec::new();
    }
    let Some(complete) = answers_complete else {
        tracing::warn!(
            "no snapshot used: the state store does not say which answers it holds (a new or replaced store, or one of an earlier release); reading the whole audit log"
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (records, path) in found {
        if records > complete {
            tracing::warn!(
                snapshot = %path.display(),
                answers_complete = complete,
                "snapshot not used: the state store holds every answer only through an earlier position"
            );
            continue;
        }
        match crate::audit::snapshot::load(&path) {
            Ok(l) => out.push(l),
            Err(e) => tracing::warn!(
                snapshot = %path.display(),
                error = %e,
                "snapshot not used; trying an older snapshot, then the whole log"
            ),
        }
    }
    out
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, so a signal that arrives before the future is first polled is not lost (call it
/// before announcing that the daemon is listening).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(term, "SIGTERM") => tracing::info!("SIGTERM: shutting down"),
            () = wait(int, "SIGINT") => tracing::info!("SIGINT: shutting down"),
        }
    }
}
