//! Idempotency retention: the background task that replaces answers older than
//! `[state] idempotency_retention` by expiry markers ([`StateStore::prune_answers`]), and the
//! message a retry of such a request gets.
//!
//! A pass does bounded work (at most [`PASS_MAX`] index entries) and runs off the request
//! path; a backlog is worked through in consecutive passes, each yielding to the runtime. A
//! failed pass is logged and retried at the next interval: pruning late keeps answers longer,
//! it never lets a request sign twice. This module must never remove a marker.

use std::sync::Arc;
use std::time::Duration;

use super::StateStore;

/// Most index entries one pass looks at.
pub const PASS_MAX: usize = 4096;

/// The retention setting as written in the configuration file and in messages (`30days`).
pub fn display(retention: Duration) -> String {
    humantime::format_duration(retention).to_string()
}

/// The message of a retry of `request_id`, answered at `answered_at` (Unix seconds), after
/// its answer expired under `retention`.
pub fn expired_message(request_id: &str, answered_at: i64, retention: Duration) -> String {
    let when = u64::try_from(answered_at)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
        .map_or_else(
            || format!("at Unix time {answered_at}"),
            |t| format!("at {}", humantime::format_rfc3339_seconds(t)),
        );
    format!(
        "request_id `{request_id}` was answered {when}, longer ago than the idempotency \
         retention ({}); its answer is no longer kept and it is not signed again; use a new \
         request_id",
        display(retention)
    )
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The oldest answer time that is still kept at `now`.
pub fn cutoff(now: i64, retention: Duration) -> i64 {
    now.saturating_sub(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX))
}

/// Prunes every `interval` until `stop` resolves: passes follow each other while one says more
/// is due.
pub async fn run(
    state: Arc<dyn StateStore>,
    retention: Duration,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = tokio::task::yield_now() => {}
            }
            let now = unix_now();
            match state
                .prune_answers(cutoff(now, retention), now, PASS_MAX)
                .await
            {
                Ok(done) => {
                    if done.expired > 0 {
                        tracing::debug!(
                            expired = done.expired,
                            examined = done.examined,
                            "expired answers older than the idempotency retention"
                        );
                    }
                    if !done.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot prune expired answers; retrying later");
                    break;
                }
            }
        }
    }
}
