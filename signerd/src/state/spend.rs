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
pub use signerd_policy::{Charge, Used};

/// Longest window any limit may have; older entries are dropped.
pub const MAX_WINDOW_SECS: u64 = 366 * 24 * 3600;

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

/// Reservations by bucket, in memory.
#[derive(Debug, Default)]
pub struct Ledger {
    buckets: HashMap<String, Vec<Entry>>,
}

impl Ledger {
    /// What `bucket` used in the `window_secs` before `now`.
    pub fn used(&self, bucket: &str, window_secs: u64, now: i64) -> Used {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        let mut used = Used::ZERO;
        for e in self.buckets.get(bucket).into_iter().flatten() {
            if e.ts > since {
                used.amount = used.amount.saturating_add(e.amount);
                used.count += 1;
            }
        }
        used
    }

    /// What `bucket` used in the `window_secs` before `now`, not counting `owner`'s entries.
    pub fn used_excluding(&self, bucket: &str, window_secs: u64, now: i64, owner: &str) -> Used {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        let mut used = Used::ZERO;
        for e in self.buckets.get(bucket).into_iter().flatten() {
            if e.ts > since && e.owner != owner {
                used.amount = used.amount.saturating_add(e.amount);
                used.count += 1;
            }
        }
        used
    }

    /// Replaces `owner`'s entries with `charges` if they all fit without them (a request that
    /// waited for approval, checked again at signing). On refusal the old entries stay.
    /// Returns (removed, recorded) entries to persist, or the first limit exceeded.
    pub fn rereserve(
        &mut self,
        owner: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<(Vec<Entry>, Vec<Entry>), Exceeded> {
        let old = self.release(owner);
        match self.reserve(owner, now, charges) {
            Ok(new) => Ok((old, new)),
            Err(e) => {
                for entry in old {
                    self.restore(entry);
                }
                Err(e)
            }
        }
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
        // `Charge::exceeded` is the policy's own definition of "within the limit".
        for c in charges {
            if let Some(detail) = c.exceeded(self.used(c.bucket.as_str(), c.window_secs, now)) {
                return Err(Exceeded {
                    limit_id: c.limit_id.clone(),
                    detail,
                });
            }
        }
        let mut recorded = Vec::new();
        for c in charges.iter().filter(|c| c.window_secs > 0) {
            let entry = Entry {
                owner: owner.to_owned(),
                bucket: c.bucket.as_str().to_owned(),
                ts: now,
                amount: c.amount,
            };
            self.buckets
                .entry(entry.bucket.clone())
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

    /// Every entry, in no particular order.
    pub fn entries(&self) -> Vec<Entry> {
        self.buckets.values().flatten().cloned().collect()
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
pub(crate) mod tests {
    use super::*;
    use signerd_policy::{Action, Identity, Kind, NoUsage, Policy, Request};

    /// The charges a real policy asks for: a `max` wei limit over `window` seconds on the key
    /// `hot`, for a native transfer of `amount` wei.
    pub(crate) fn charge(limit: &str, amount: u64, max: u64, window: u64) -> Charge {
        let src = format!(
            "version = 1\nserial = 1\n[[rule]]\nid = \"r\"\neffect = \"allow\"\n\
             [[limit]]\nid = \"{limit}\"\nasset = \"native\"\nchain_ids = [1]\nwindow = \"{window}s\"\n\
             max_amount = \"{}\"\n",
            u64::MAX
        );
        let policy = Policy::parse("t.toml", &src).unwrap_or_else(|e| panic!("{e}"));
        let mut action = Action::new("hot", Kind::NativeTransfer);
        action.chain_id = Some(1);
        action.to = Some(alloy_primitives::Address::repeat_byte(0x35));
        // Ask for a charge that fits, then set the figures under test.
        action.value = U256::from(1);
        // Native limits count the worst-case fee too; a free transaction keeps it out.
        action.gas_limit = Some(21_000);
        action.max_fee_per_gas = Some(U256::ZERO);
        let who = Identity {
            id: "app".into(),
            roles: vec![],
        };
        let eval = policy.evaluate_request(&Request {
            action: &action,
            identity: &who,
            now_unix: 0,
            usage: &NoUsage,
        });
        let shown = format!("{eval:?}");
        let mut c = eval
            .charges
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no charge: {shown}"));
        c.amount = U256::from(amount);
        c.max_amount = Some(U256::from(max));
        c
    }

    #[test]
    fn window_sums_and_refuses_overshoot() {
        let mut l = Ledger::default();
        let bucket = charge("b", 1, 100, 3600).bucket.as_str().to_owned();
        assert!(l.reserve("r1", 100, &[charge("b", 60, 100, 3600)]).is_ok());
        let e = l.reserve("r2", 200, &[charge("b", 41, 100, 3600)]);
        assert_eq!(e.err().map(|e| e.limit_id), Some("b".into()));
        assert!(l.reserve("r3", 200, &[charge("b", 40, 100, 3600)]).is_ok());
        // r1 leaves the window at 100 + 3600.
        assert_eq!(l.used(&bucket, 3600, 3700).amount, U256::from(40));
        assert!(l.reserve("r4", 3700, &[charge("b", 60, 100, 3600)]).is_ok());
    }

    #[test]
    fn all_or_nothing_and_release() {
        let mut l = Ledger::default();
        let a_bucket = charge("a", 1, 100, 60).bucket.as_str().to_owned();
        let charges = [charge("a", 10, 100, 60), charge("b", 10, 5, 60)];
        assert!(l.reserve("r1", 0, &charges).is_err());
        assert_eq!(
            l.used(&a_bucket, 60, 0),
            Used::ZERO,
            "nothing recorded on refusal"
        );
        assert!(l.reserve("r2", 0, &[charge("a", 90, 100, 60)]).is_ok());
        assert!(l.reserve("r3", 0, &[charge("a", 20, 100, 60)]).is_err());
        assert_eq!(l.release("r2").len(), 1);
        assert!(l.reserve("r3", 0, &[charge("a", 20, 100, 60)]).is_ok());
    }

    #[test]
    fn rereserve_checks_without_the_owner_and_keeps_it_on_refusal() {
        let mut l = Ledger::default();
        let bucket = charge("a", 1, 100, 60).bucket.as_str().to_owned();
        assert!(l.reserve("pending", 0, &[charge("a", 60, 100, 60)]).is_ok());
        assert!(l.reserve("other", 0, &[charge("a", 30, 100, 60)]).is_ok());
        assert_eq!(
            l.used_excluding(&bucket, 60, 1, "pending").amount,
            U256::from(30)
        );
        // Checked again under a lower maximum: 30 + 60 > 80, and the old entry stays.
        assert!(
            l.rereserve("pending", 1, &[charge("a", 60, 80, 60)])
                .is_err()
        );
        assert_eq!(l.used(&bucket, 60, 1).amount, U256::from(90));
        // Under the old maximum it fits, and replaces rather than adds.
        assert!(
            l.rereserve("pending", 1, &[charge("a", 60, 100, 60)])
                .is_ok()
        );
        assert_eq!(l.used(&bucket, 60, 1).amount, U256::from(90));
    }
}
