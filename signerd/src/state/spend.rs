//! The spend ledger: what each limit bucket has used inside its sliding window, and the atomic
//! check-and-reserve that keeps concurrent requests from overshooting a limit.
//!
//! Every reservation of one request is checked and recorded under one lock, so no interleaving
//! of requests can make the sum in a window exceed its maximum. A reservation belongs to its
//! request (`owner`): it is released when the request ends unsigned and otherwise stays until
//! it ages out of every window. This module holds plain data; persistence is the store's job.

use std::collections::HashMap;

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};

/// Longest window any limit may have; older entries are dropped.
pub const MAX_WINDOW_SECS: u64 = 90 * 24 * 3600;

/// One charge a request must reserve: an amount and one count against one limit bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The policy limit this charge is checked against.
    pub limit_id: String,
    /// The bucket the limit is keyed by (limit, key, asset, destination, client).
    pub bucket: String,
    /// Sliding window length; 0 means a per-request check only (nothing is recorded).
    pub window_secs: u64,
    /// Amount in base units.
    pub amount: U256,
    /// Most amount in the window.
    pub max_amount: Option<U256>,
    /// Most requests in the window.
    pub max_count: Option<u64>,
}

/// What a bucket has used inside a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Used {
    /// Sum of amounts.
    pub amount: U256,
    /// Number of entries.
    pub count: u64,
}

/// A limit that a reservation would exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The limit.
    pub limit_id: String,
    /// Human-readable detail: used, requested, maximum, window.
    pub detail: String,
}

/// A recorded reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The request holding it (`client || 0x00 || request_id`).
    pub owner: String,
    /// The bucket.
    pub bucket: String,
    /// When it was made, Unix seconds.
    pub ts: i64,
    /// Its amount.
    pub amount: U256,
}

/// Whether `charge` fits on top of `used`. The one definition of "within the limit".
pub fn fits(charge: &Charge, used: Used) -> Result<(), Exceeded> {
    if let Some(max) = charge.max_amount {
        let total = used.amount.checked_add(charge.amount);
        if total.is_none_or(|t| t > max) {
            return Err(Exceeded {
                limit_id: charge.limit_id.clone(),
                detail: format!(
                    "limit `{}`: {} used + {} requested > {} in {}s",
                    charge.limit_id, used.amount, charge.amount, max, charge.window_secs
                ),
            });
        }
    }
    if let Some(max) = charge.max_count
        && used.count.saturating_add(1) > max
    {
        return Err(Exceeded {
            limit_id: charge.limit_id.clone(),
            detail: format!(
                "limit `{}`: {} requests already in {}s, at most {max}",
                charge.limit_id, used.count, charge.window_secs
            ),
        });
    }
    Ok(())
}

/// Reservations by bucket, in memory.
#[derive(Debug, Default)]
pub struct Ledger {
    buckets: HashMap<String, Vec<Entry>>,
}

impl Ledger {
    /// What `bucket` used in the `window_secs` before `now`.
    pub fn used(&self, bucket: &str, window_secs: u64, now: i64) -> Used {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        let mut used = Used::default();
        for e in self.buckets.get(bucket).into_iter().flatten() {
            if e.ts > since {
                used.amount = used.amount.saturating_add(e.amount);
                used.count += 1;
            }
        }
        used
    }

    /// Checks every charge and, only if all fit, records them for `owner`. Returns the new
    /// entries (to persist) or the first limit exceeded.
    pub fn reserve(
        &mut self,
        owner: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Vec<Entry>, Exceeded> {
        // Bucket keys include the limit id, so the charges of one request are independent.
        for c in charges {
            fits(c, self.used(&c.bucket, c.window_secs, now))?;
        }
        let mut recorded = Vec::new();
        for c in charges.iter().filter(|c| c.window_secs > 0) {
            let entry = Entry {
                owner: owner.to_owned(),
                bucket: c.bucket.clone(),
                ts: now,
                amount: c.amount,
            };
            self.buckets
                .entry(c.bucket.clone())
                .or_default()
                .push(entry.clone());
            recorded.push(entry);
        }
        Ok(recorded)
    }

    /// Adds an entry read back from storage or reconciled from the audit log (idempotent).
    pub fn restore(&mut self, entry: Entry) {
        let list = self.buckets.entry(entry.bucket.clone()).or_default();
        if !list.iter().any(|e| e.owner == entry.owner) {
            list.push(entry);
        }
    }

    /// Drops every entry of `owner`; returns them (to delete from storage).
    pub fn release(&mut self, owner: &str) -> Vec<Entry> {
        let mut out = Vec::new();
        for list in self.buckets.values_mut() {
            let (gone, kept): (Vec<Entry>, Vec<Entry>) =
                list.drain(..).partition(|e| e.owner == owner);
            *list = kept;
            out.extend(gone);
        }
        self.buckets.retain(|_, l| !l.is_empty());
        out
    }

    /// Drops entries older than [`MAX_WINDOW_SECS`]; returns them.
    pub fn prune(&mut self, now: i64) -> Vec<Entry> {
        let since = now.saturating_sub(MAX_WINDOW_SECS as i64);
        let mut out = Vec::new();
        for list in self.buckets.values_mut() {
            let (gone, kept): (Vec<Entry>, Vec<Entry>) =
                list.drain(..).partition(|e| e.ts <= since);
            *list = kept;
            out.extend(gone);
        }
        self.buckets.retain(|_, l| !l.is_empty());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(bucket: &str, amount: u64, max: u64, window: u64) -> Charge {
        Charge {
            limit_id: format!("limit-{bucket}"),
            bucket: bucket.into(),
            window_secs: window,
            amount: U256::from(amount),
            max_amount: Some(U256::from(max)),
            max_count: None,
        }
    }

    #[test]
    fn window_sums_and_refuses_overshoot() {
        let mut l = Ledger::default();
        assert!(l.reserve("r1", 100, &[charge("b", 60, 100, 3600)]).is_ok());
        let e = l.reserve("r2", 200, &[charge("b", 41, 100, 3600)]);
        assert_eq!(e.err().map(|e| e.limit_id), Some("limit-b".into()));
        assert!(l.reserve("r3", 200, &[charge("b", 40, 100, 3600)]).is_ok());
        // r1 leaves the window at 100 + 3600.
        assert_eq!(l.used("b", 3600, 3700).amount, U256::from(40));
        assert!(l.reserve("r4", 3700, &[charge("b", 60, 100, 3600)]).is_ok());
    }

    #[test]
    fn all_or_nothing_and_release() {
        let mut l = Ledger::default();
        let charges = [charge("a", 10, 100, 60), charge("b", 10, 5, 60)];
        assert!(l.reserve("r1", 0, &charges).is_err());
        assert_eq!(
            l.used("a", 60, 0),
            Used::default(),
            "nothing recorded on refusal"
        );
        assert!(l.reserve("r2", 0, &[charge("a", 90, 100, 60)]).is_ok());
        assert!(l.reserve("r3", 0, &[charge("a", 20, 100, 60)]).is_err());
        assert_eq!(l.release("r2").len(), 1);
        assert!(l.reserve("r3", 0, &[charge("a", 20, 100, 60)]).is_ok());
    }

    #[test]
    fn counts() {
        let mut l = Ledger::default();
        let count = Charge {
            max_amount: None,
            max_count: Some(2),
            ..charge("c", 0, 0, 60)
        };
        assert!(l.reserve("r1", 0, std::slice::from_ref(&count)).is_ok());
        assert!(l.reserve("r2", 0, std::slice::from_ref(&count)).is_ok());
        assert!(l.reserve("r3", 0, std::slice::from_ref(&count)).is_err());
        assert_eq!(l.used("c", 60, 30).count, 2);
    }

    #[test]
    fn overflow_never_fits() {
        let c = Charge {
            amount: U256::MAX,
            ..charge("o", 0, 10, 60)
        };
        let used = Used {
            amount: U256::from(1),
            count: 0,
        };
        assert!(fits(&c, used).is_err());
    }
}
