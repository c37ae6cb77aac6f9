//! Prometheus metrics: what signerd is doing, for operators' dashboards and alerts.
//!
//! Values are recorded through the [`metrics`] facade from wherever they happen and rendered in
//! the Prometheus text format by `metrics-exporter-prometheus`, served at `GET /metrics` on a
//! listener of its own (`[metrics] listen`, loopback by default), apart from the mTLS API.
//! Labels carry only bounded, non-secret values: method names, decisions, status names, stage
//! names, backend names. Never a key id, client id, request id or amount: those belong in the
//! audit log, and unbounded labels would let clients grow the registry.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `signerd_requests_total` | counter | `method`, `decision` (`allow`, `deny`, `none`), `status` (gRPC code name) |
//! | `signerd_request_duration_seconds` | histogram | `method` |
//! | `signerd_stage_duration_seconds` | histogram | `stage` (`policy`, `backend`, `audit_commit`) |
//! | `signerd_backend_healthy` | gauge (0/1) | `backend` |
//! | `signerd_backend_sessions_in_use` | gauge | `backend` |
//! | `signerd_backend_sessions` | gauge | `backend` |
//! | `signerd_audit_healthy` | gauge (0/1) | |
//! | `signerd_audit_records_total` | counter | |
//! | `signerd_audit_bytes_total` | counter | |
//! | `signerd_audit_fsync_duration_seconds` | histogram | |
//! | `signerd_audit_last_checkpoint_timestamp_seconds` | gauge | |
//! | `signerd_audit_checkpoint_failures_total` | counter | |
//! | `signerd_audit_witness_lag_records` | gauge | `witness` (the configured name) |
//! | `signerd_audit_witness_up` | gauge (0/1) | `witness` |
//! | `signerd_pending_approvals` | gauge | |
//! | `signerd_sign_request_watches` | gauge | |
//! | `signerd_policy_serial` | gauge | |
//! | `signerd_policy_info` | gauge (1) | `hash` |
//! | `signerd_key_pin_mismatch_total` | counter | `reason` (`public_key`, `version`) |
//! | `signerd_key_weak_refused_total` | counter | |

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for latencies, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(String);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| MetricsError(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            describe();
            let _ = HANDLE.set(handle.clone());
            Ok(handle)
        }
        // Another recorder won a race: use the installed one if it is ours.
        Err(_) => HANDLE
            .get()
            .cloned()
            .ok_or_else(|| MetricsError("another metrics recorder is installed".into())),
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "signerd_requests_total",
        "Signing requests by method, policy decision and gRPC status"
    );
    describe_histogram!(
        "signerd_request_duration_seconds",
        Unit::Seconds,
        "End-to-end time of signing requests inside signerd"
    );
    describe_counter!(
        "signerd_state_db_round_trips_total",
        "Statements sent to the state database ([state] backend = \"postgres\"), BEGIN and COMMIT included: each waits for one answer of the server"
    );
    describe_counter!(
        "signerd_requests_shed_total",
        "Signing requests refused with RESOURCE_EXHAUSTED because they waited longer than server.queue_timeout for one of server.max_in_flight turns (nothing evaluated, signed, recorded or stored)"
    );
    describe_histogram!(
        "signerd_stage_duration_seconds",
        Unit::Seconds,
        "Time per stage of a signing request: policy, backend, audit_commit"
    );
    describe_gauge!(
        "signerd_backend_healthy",
        "1 while the key backend can sign, 0 while it cannot"
    );
    describe_gauge!(
        "signerd_backend_sessions_in_use",
        "Key backend sessions (PKCS#11) in use"
    );
    describe_gauge!(
        "signerd_backend_sessions",
        "Key backend sessions configured"
    );
    describe_gauge!(
        "signerd_audit_witness_lag_records",
        "Audit records in the latest checkpoint that a witness has not cosigned yet"
    );
    describe_gauge!(
        "signerd_audit_witness_up",
        "1 while a witness's last add-checkpoint request succeeded, 0 while it fails"
    );
    describe_gauge!(
        "signerd_audit_healthy",
        "1 while the audit log accepts records; 0 once it has failed, while it waits for a checkpoint it cannot sign, or while a write or sync has hung for over 5 s"
    );
    describe_counter!("signerd_audit_records_total", "Audit records written");
    describe_counter!(
        "signerd_audit_bytes_total",
        Unit::Bytes,
        "Audit bytes written"
    );
    describe_histogram!(
        "signerd_audit_fsync_duration_seconds",
        Unit::Seconds,
        "Time of each audit fdatasync"
    );
    describe_gauge!(
        "signerd_audit_last_checkpoint_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last signed checkpoint (alert on time() minus this)"
    );
    describe_counter!(
        "signerd_audit_checkpoint_failures_total",
        "Checkpoints the audit signing key could not sign (retried every second)"
    );
    describe_counter!(
        "signerd_key_pin_mismatch_total",
        "Signatures refused because the key differs from its pin in the audit log: another public key (public_key), or a version below the highest pinned (version)"
    );
    describe_counter!(
        "signerd_key_weak_refused_total",
        "Signatures refused because the key lacks a protection (extractable, not sensitive, exportable) and keys.allow_weak_keys does not name it"
    );
    // Shown from the start, so that an alert on any increase has a series to watch.
    for reason in ["public_key", "version"] {
        metrics::counter!("signerd_key_pin_mismatch_total", "reason" => reason).absolute(0);
    }
    metrics::counter!("signerd_key_weak_refused_total").absolute(0);
    for method in crate::request::Method::ALL {
        metrics::counter!("signerd_requests_shed_total", "method" => method.as_str()).absolute(0);
    }
    describe_gauge!(
        "signerd_pending_approvals",
        "Signing requests waiting for approval"
    );
    describe_gauge!(
        "signerd_sign_request_watches",
        "WatchSignRequest streams open"
    );
    describe_gauge!("signerd_policy_serial", "Serial of the policy in force");
    describe_gauge!(
        "signerd_policy_info",
        "Always 1; the label `hash` is the SHA-256 of the policy in force"
    );
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves, then lets open scrapes
/// finish. Histogram samples are also drained every 5 seconds in this future, not in a
/// task of their own, so that nothing outlives it.
///
/// This is a small axum server rather than the HTTP listener of `metrics-exporter-prometheus`
/// (its `http-listener` feature, `PrometheusBuilder::with_http_listener` and `build()`),
/// because that listener cannot do what this one does and the daemon relies on:
/// - it binds inside `build()` and never tells the address it bound, so port `0` (documented,
///   and used by the tests) could not be reported (`signerd metrics on http://ADDR/metrics`);
/// - it answers every path with the metrics (and `/health` with `OK`), where this serves
///   `/metrics` only and answers 404 elsewhere, and it sends `text/plain` without the format
///   version;
/// - `build()` spawns its upkeep loop and each connection with a bare `tokio::spawn`: tasks
///   that [`crate::tasks::Background`] cannot own or end, with no graceful shutdown;
/// - `build()` makes a new recorder each time and must run when the listener is bound, while
///   the recorder here is installed once per process ([`install`]), first thing at start, so
///   that what opening records is counted, and the listener is bound later.
///
/// Dropping axum would not shrink the build either: tonic depends on it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    use axum::routing::get;
    // Histogram samples wait in the recorder until drained into their buckets; a scrape
    // drains them, and so does this, so that memory stays bounded when nobody scrapes.
    let upkeep = {
        let handle = handle.clone();
        async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        }
    };
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let h = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    h.render(),
                )
            }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    // The upkeep loop never ends; it stops when the server does.
    let served = tokio::select! {
        served = served => served,
        never = upkeep => match never {},
    };
    served.map_err(|e| MetricsError(e.to_string()))
}

/// How often histogram samples are drained into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| MetricsError(format!("binding {addr}: {e}")))
}

/// One finished signing request.
pub fn request(method: &'static str, decision: &'static str, status: &'static str, took: Duration) {
    metrics::counter!("signerd_requests_total", "method" => method, "decision" => decision, "status" => status)
        .increment(1);
    metrics::histogram!("signerd_request_duration_seconds", "method" => method)
        .record(took.as_secs_f64());
}

/// One signing request shed before its work started (overload).
pub fn shed(method: &'static str) {
    metrics::counter!("signerd_requests_shed_total", "method" => method).increment(1);
}

/// Statements sent to the state database, each one round trip.
pub fn db_round_trips(n: u64) {
    metrics::counter!("signerd_state_db_round_trips_total").increment(n);
}

/// One stage of a signing request.
pub fn stage(stage: &'static str, took: Duration) {
    metrics::histogram!("signerd_stage_duration_seconds", "stage" => stage)
        .record(took.as_secs_f64());
}

/// A batch the audit writer wrote, and its fsync time if it synced.
pub fn audit_batch(records: u64, bytes: u64, fsync: Option<Duration>) {
    metrics::counter!("signerd_audit_records_total").increment(records);
    metrics::counter!("signerd_audit_bytes_total").increment(bytes);
    if let Some(t) = fsync {
        metrics::histogram!("signerd_audit_fsync_duration_seconds").record(t.as_secs_f64());
    }
}

/// A checkpoint was signed and written now.
pub fn checkpoint_written() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("signerd_audit_last_checkpoint_timestamp_seconds").set(now);
}

/// A key was refused before it signed: `reason` is `public_key` or `version` (it differs from
/// its pin) or `weak`.
pub fn key_refused(reason: &'static str) {
    if reason == "weak" {
        metrics::counter!("signerd_key_weak_refused_total").increment(1);
    } else {
        metrics::counter!("signerd_key_pin_mismatch_total", "reason" => reason).increment(1);
    }
}

/// The audit signing key could not sign a checkpoint.
pub fn checkpoint_failed() {
    metrics::counter!("signerd_audit_checkpoint_failures_total").increment(1);
}

/// One witness: records published but not cosigned by it, and whether its last request
/// succeeded. `name` is the operator's name for it in `[[audit.witnesses]]` (bounded).
pub fn witness(name: &str, lag: u64, up: bool) {
    metrics::gauge!("signerd_audit_witness_lag_records", "witness" => name.to_owned())
        .set(lag as f64);
    metrics::gauge!("signerd_audit_witness_up", "witness" => name.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// The audit log's health.
pub fn audit_healthy(ok: bool) {
    metrics::gauge!("signerd_audit_healthy").set(if ok { 1.0 } else { 0.0 });
}

/// Whether the state store could write at its last probe.
pub fn state_healthy(ok: bool) {
    metrics::gauge!("signerd_state_healthy").set(if ok { 1.0 } else { 0.0 });
}

/// The key backend's health and session use.
pub fn backend(name: &'static str, healthy: bool, sessions: Option<(usize, usize)>) {
    metrics::gauge!("signerd_backend_healthy", "backend" => name).set(if healthy {
        1.0
    } else {
        0.0
    });
    if let Some((in_use, total)) = sessions {
        metrics::gauge!("signerd_backend_sessions_in_use", "backend" => name).set(in_use as f64);
        metrics::gauge!("signerd_backend_sessions", "backend" => name).set(total as f64);
    }
}

/// Requests waiting for approval now.
pub fn pending_approvals(n: usize) {
    metrics::gauge!("signerd_pending_approvals").set(n as f64);
}

/// The policy in force.
pub fn policy(serial: u64, hash_hex: &str) {
    metrics::gauge!("signerd_policy_serial").set(serial as f64);
    // One series per hash ever loaded would grow with reloads; keep only the current one.
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(old) = last.take()
        && old != hash_hex
    {
        metrics::gauge!("signerd_policy_info", "hash" => old).set(0.0);
    }
    metrics::gauge!("signerd_policy_info", "hash" => hash_hex.to_owned()).set(1.0);
    *last = Some(hash_hex.to_owned());
}

/// Counts one open `WatchSignRequest` stream in `signerd_sign_request_watches` while it lives.
pub struct WatchOpen(());

impl WatchOpen {
    /// Counts a stream that has just opened.
    pub fn open() -> WatchOpen {
        metrics::gauge!("signerd_sign_request_watches").increment(1.0);
        WatchOpen(())
    }
}

impl Drop for WatchOpen {
    fn drop(&mut self) {
        metrics::gauge!("signerd_sign_request_watches").decrement(1.0);
    }
}
