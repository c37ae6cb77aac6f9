//! Witnesses: independent parties that cosign the audit log's checkpoints after checking that
//! each one extends the last they saw (C2SP `tlog-witness` and `tlog-cosignature`,
//! `docs/audit-log.md`, "Witnesses").
//!
//! Two sides live here. [`serve`] is the witness that `signerctl witness run` starts on
//! another host: it keeps, per log origin, the latest size and root it cosigned, refuses
//! rollbacks and forks, and signs with a key of its own ([`key`]). [`sender`] is the daemon's
//! background task that sends each new checkpoint to the configured witnesses with a
//! consistency proof ([`tree`]) and keeps their cosignatures beside the log; [`Gate`] tells
//! admission whether witnesses lag so far behind that signing must pause
//! (`audit.witness_max_lag`).
//!
//! Nothing here may stop a record from being written: a witness that is down, slow or
//! refusing only delays cosignatures (and, with `audit.witness_max_lag`, pauses admission).

pub mod key;
pub mod sender;
pub mod serve;
pub mod tree;

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether witnesses lag too far behind for new requests to be admitted. Shared by the
/// sender (which sets it) and the service (which reads it before admitting a request).
#[derive(Debug, Default)]
pub struct Gate {
    paused: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Set while some witness's last `add-checkpoint` failed (down, refusing, or answering
    /// without a valid cosignature): the health detail `signerd.audit.Witnesses`.
    failing: AtomicBool,
}

impl Gate {
    /// A gate that is open.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Why admission is paused, or `None` while it is open.
    pub fn paused(&self) -> Option<String> {
        if !self.paused.load(Ordering::Acquire) {
            return None;
        }
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether some witness's last `add-checkpoint` failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Records whether some witness's last `add-checkpoint` failed.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }

    /// Pauses admission with `reason`, or opens it with `None`.
    pub fn set(&self, reason: Option<String>) {
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        self.paused.store(reason.is_some(), Ordering::Release);
        *r = reason;
    }
}
