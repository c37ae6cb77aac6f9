//! Folding of repeated authentication failures, so that no caller can make the audit log grow
//! at its will (`auth.failure`, docs/audit-log.md).
//!
//! Failures are keyed by the client certificate's SHA-256 (by the peer's IP address when the
//! handshake verified no certificate) and the reason. The first failure of a key is recorded
//! at once. Repeats within `audit.auth_failure_window` are counted and written as one record
//! with `count` when the window ends, which opens the key's next window; a key whose window
//! ends without repeats is forgotten. At most [`MAX_KEYS`] keys are tracked; failures of any
//! further key are folded the same way into one overflow entry. Each tracked key (and the
//! overflow entry) writes at most one record per window, and memory is bounded by the keys
//! and [`MAX_REASON_BYTES`].
//!
//! This module holds no clock: callers pass the time, so the folding is tested exactly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use signerd_auditor::events::AuthFailure;
use tokio::time::Instant;

/// Most (certificate or address, reason) keys tracked in one window.
pub const MAX_KEYS: usize = 4096;
/// Longest reason kept, in bytes; a longer one is cut (at a character boundary) and marked.
pub const MAX_REASON_BYTES: usize = 1024;

/// Whose failure it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// The client certificate's SHA-256.
    Cert(String),
    /// The peer's IP address, without a certificate.
    Address(IpAddr),
    /// Neither is known.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: Source,
    reason: String,
}

/// One key's current window.
#[derive(Debug)]
struct Entry {
    /// The record's members of the last failure seen.
    peer: Option<String>,
    cert_sha256: Option<String>,
    reason: String,
    /// Failures since the last record.
    folded: u64,
    /// When the window ends.
    ends: Instant,
}

impl Entry {
    fn record(&self, count: Option<u64>) -> AuthFailure {
        AuthFailure {
            peer: self.peer.clone(),
            cert_sha256: self.cert_sha256.clone(),
            reason: self.reason.clone(),
            count,
        }
    }
}

/// The failures of the current windows.
#[derive(Debug)]
pub struct Folder {
    window: Duration,
    entries: HashMap<Key, Entry>,
    overflow: Option<Entry>,
}

/// The reason of the overflow entry.
fn overflow_reason() -> String {
    format!(
        "authentication failures of more than {MAX_KEYS} certificates (or addresses) and \
         reasons in one audit.auth_failure_window; folded together"
    )
}

fn cut(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} (cut)", &reason[..end])
}

impl Folder {
    /// Folds repeats within `window`.
    pub fn new(window: Duration) -> Folder {
        Folder {
            window,
            entries: HashMap::new(),
            overflow: None,
        }
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts one failure at `now`; returns the record to write at once (the first failure
    /// of its key in a window), or `None` when it was folded.
    pub fn failure(
        &mut self,
        now: Instant,
        peer: Option<SocketAddr>,
        cert_sha256: Option<&str>,
        reason: &str,
    ) -> Option<AuthFailure> {
        let reason = cut(reason);
        let source = match (cert_sha256, peer) {
            (Some(c), _) => Source::Cert(c.to_owned()),
            (None, Some(p)) => Source::Address(p.ip()),
            (None, None) => Source::Unknown,
        };
        let peer = peer.map(|p| p.to_string());
        let key = Key { source, reason };
        if let Some(e) = self.entries.get_mut(&key) {
            e.folded += 1;
            e.peer = peer;
            return None;
        }
        let entry = if self.entries.len() < MAX_KEYS {
            Entry {
                peer,
                cert_sha256: cert_sha256.map(str::to_owned),
                reason: key.reason.clone(),
                folded: 0,
                ends: now + self.window,
            }
        } else {
            if let Some(o) = &mut self.overflow {
                o.folded += 1;
                return None;
            }
            let o = Entry {
                peer: None,
                cert_sha256: None,
                reason: overflow_reason(),
                folded: 0,
                ends: now + self.window,
            };
            let first = o.record(None);
            self.overflow = Some(o);
            return Some(first);
        };
        let first = entry.record(None);
        self.entries.insert(key, entry);
        Some(first)
    }

    /// The folded records of every window that ended by `now`. A key with repeats starts its
    /// next window; a key without is forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<AuthFailure> {
        let window = self.window;
        let mut out = Vec::new();
        let mut close = |e: &mut Entry| -> bool {
            if e.ends > now {
                return true;
            }
            if e.folded == 0 {
                return false;
            }
            out.push(e.record(Some(e.folded)));
            e.folded = 0;
            e.ends = now + window;
            true
        };
        self.entries.retain(|_, e| close(e));
        if let Some(o) = &mut self.overflow
            && !close(o)
        {
            self.overflow = None;
        }
        out
    }

    /// Every folded record not yet written (at shutdown); forgets every window.
    pub fn drain(&mut self) -> Vec<AuthFailure> {
        let out = self
            .entries
            .drain()
            .map(|(_, e)| e)
            .chain(self.overflow.take())
            .filter(|e| e.folded > 0)
            .map(|e| e.record(Some(e.folded)))
            .collect();
        self.entries.shrink_to(MAX_KEYS.min(64));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn peer(i: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, 1], 4000 + i)))
    }

    fn total(records: &[AuthFailure]) -> u64 {
        records.iter().map(|r| r.count.unwrap_or(1)).sum()
    }

    #[test]
    fn repeats_are_folded_into_one_record_per_window() {
        let t0 = Instant::now();
        let mut f = Folder::new(W);
        let mut written = Vec::new();
        for i in 0..2000u16 {
            let now = t0 + Duration::from_millis(u64::from(i));
            written.extend(f.failure(now, peer(i), Some("cc"), "not mapped"));
        }
        // Only the first was written; the window has not ended.
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].count, None);
        assert_eq!(written[0].peer.as_deref(), Some("10.0.0.1:4000"));
        assert!(f.due(t0 + W - Duration::from_millis(1)).is_empty());
        let folded = f.due(t0 + W);
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].count, Some(1999));
        // The peer of the last repeat.
        assert_eq!(folded[0].peer.as_deref(), Some("10.0.0.1:5999"));
        written.extend(folded);
        assert_eq!(total(&written), 2000);
        // A repeat after the flush belongs to the next window: folded, not written at once.
        assert!(
            f.failure(t0 + W, peer(1), Some("cc"), "not mapped")
                .is_none()
        );
        assert!(f.due(t0 + W + W / 2).is_empty());
        assert_eq!(f.due(t0 + W + W)[0].count, Some(1));
        // A window without repeats forgets the key; the next failure is written at once.
        assert!(f.due(t0 + 3 * W).is_empty());
        assert!(f.entries.is_empty());
        assert!(
            f.failure(t0 + 3 * W, peer(1), Some("cc"), "not mapped")
                .is_some()
        );
    }

    #[test]
    fn keys_are_certificate_or_address_and_reason() {
        let t0 = Instant::now();
        let mut f = Folder::new(W);
        assert!(f.failure(t0, peer(1), Some("aa"), "r1").is_some());
        assert!(f.failure(t0, peer(1), Some("aa"), "r2").is_some());
        assert!(f.failure(t0, peer(1), Some("bb"), "r1").is_some());
        // Without a certificate, the address counts, whatever the port.
        assert!(f.failure(t0, peer(1), None, "r1").is_some());
        assert!(f.failure(t0, peer(2), None, "r1").is_none());
        let other = Some(SocketAddr::from(([10, 0, 0, 2], 4001)));
        assert!(f.failure(t0, other, None, "r1").is_some());
        assert_eq!(f.drain().len(), 1);
        assert!(f.due(t0 + W).is_empty());
    }

    #[test]
    fn keys_beyond_the_bound_share_one_overflow_entry() {
        let t0 = Instant::now();
        let mut f = Folder::new(W);
        let mut written = Vec::new();
        let n = MAX_KEYS + 10_000;
        for i in 0..n {
            written.extend(f.failure(t0, peer(0), Some(&format!("{i:064x}")), "r"));
        }
        // One record per tracked key, and one for all the others.
        assert_eq!(written.len(), MAX_KEYS + 1);
        assert_eq!(f.entries.len(), MAX_KEYS);
        let overflow = written.last().unwrap();
        assert_eq!(overflow.cert_sha256, None);
        assert!(
            overflow.reason.contains("more than 4096"),
            "{}",
            overflow.reason
        );
        let folded = f.due(t0 + W);
        assert_eq!(folded.len(), 1);
        written.extend(folded);
        assert_eq!(total(&written), n as u64);
        // Every key had its window end without repeats except the overflow's; they are gone.
        assert!(f.entries.is_empty());
        assert!(f.overflow.is_some());
    }

    #[test]
    fn the_log_grows_by_at_most_one_record_per_key_and_window() {
        // A caller that fails every 10 ms with 8 certificates for 10 windows.
        let t0 = Instant::now();
        let mut f = Folder::new(W);
        let mut records = 0usize;
        let mut failures = 0u64;
        let step = Duration::from_millis(10);
        let mut now = t0;
        let mut flushed = Vec::new();
        while now < t0 + 10 * W {
            for c in 0..8 {
                failures += 1;
                records +=
                    usize::from(f.failure(now, peer(c), Some(&c.to_string()), "r").is_some());
            }
            let due = f.due(now);
            records += due.len();
            flushed.extend(due);
            now += step;
        }
        let rest = f.drain();
        records += rest.len();
        flushed.extend(rest);
        // 8 keys x (10 windows + the first record + the shutdown record).
        assert!(records <= 8 * 12, "{records} records");
        assert_eq!(
            8 * (u64::try_from(10 * W.as_millis() / step.as_millis()).unwrap()),
            failures
        );
        let first = 8;
        assert_eq!(total(&flushed) + first, failures);
    }

    #[test]
    fn long_reasons_are_cut() {
        let mut f = Folder::new(W);
        let long = "é".repeat(MAX_REASON_BYTES);
        let r = f
            .failure(Instant::now(), peer(1), Some("aa"), &long)
            .unwrap();
        assert!(r.reason.len() <= MAX_REASON_BYTES + 6);
        assert!(r.reason.ends_with(" (cut)"));
    }
}
