//! The spend ledger: what each limit bucket has used inside its sliding window, and the atomic
//! check-and-reserve that keeps concurrent requests from overshooting a limit.
//!
//! Every reservation of one request is checked and recorded under one lock, so no interleaving
//! of requests can make the sum in a window exceed its maximum. A reservation belongs to its
//! request (`owner`): it is released when the request ends unsigned and otherwise stays until
//! it ages out of every window. This module holds plain data; persistence is the store's job.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

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

/// How much older than a slot's width a signed charge must be before it is counted in a slot
/// that wide: at most 1/1024 of its age, so of the window it is leaving.
pub const SETTLE_RATIO: i64 = 1024;

/// The widest slot, in seconds (about 4.5 hours; charges reach it at about 194 days old).
const MAX_SLOT_SECS: i64 = 1 << 14;

/// The second at which a signed charge made at `ts` is counted, `reference` being now (or the
/// log's latest decision): `ts` itself for a charge younger than about 34 minutes; otherwise the
/// last second of the aligned slot of the widest power-of-two width `w` whose end is at least
/// [`SETTLE_RATIO`] x `w` before `reference`. So a charge leaves a window at most 1/1024 of the
/// window late (a 24-hour window: 64 s at most; 30 days: 34 minutes), never early: a limit can
/// only be stricter than exact, and a year of charges of one bucket takes about 16,000 slots
/// however busy the signer is.
///
/// Applying it again later gives what applying it once then gives
/// (`settled_at(settled_at(t, r1), r2) == settled_at(t, r2)` for `r1 <= r2`), so ledgers that
/// added up at different times agree.
pub fn settled_at(ts: i64, reference: i64) -> i64 {
    let mut at = ts;
    let mut width = 2i64;
    while width <= MAX_SLOT_SECS {
        let end = ts.div_euclid(width) * width + (width - 1);
        if reference.saturating_sub(end) < SETTLE_RATIO * width {
            break;
        }
        at = end;
        width *= 2;
    }
    at
}

/// Signed charges of one bucket counted at one second, added up: a signed charge is never
/// released, so its request no longer matters. Old charges share wider slots
/// ([`settled_at`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The bucket.
    pub bucket: String,
    /// The second they count at, Unix seconds ([`settled_at`]).
    pub ts: i64,
    /// The amounts added up (saturating).
    pub amount: U256,
    /// How many charges.
    pub count: u64,
}

/// The spend start-up reconciles from the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spend {
    /// Every signed charge inside the longest window, by bucket and [`settled_at`] second.
    pub settled: Vec<Settled>,
    /// The signed charges of the records read at this start, by request: all of them after a
    /// full read, those after the snapshot otherwise. The charges before a snapshot are in
    /// `settled` only; a shared store, which keeps its own copy by request, checks these.
    pub signed: Vec<Entry>,
    /// Charges of requests still waiting for approval, by request: released if they end
    /// unsigned.
    pub waiting: Vec<Entry>,
}

/// Who holds a bucket's entry at one second: the signed charges of that second, added up
/// ([`Settled`]), or one request (`client || 0x00 || request_id`) whose charge can still be
/// released. `Settled` sorts first, so (`ts`, `Settled`) is the first key of a second.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Holder {
    Settled,
    Request(Arc<str>),
}

/// A bucket's reservations, ordered by time, and the sum of the last window asked about.
#[derive(Debug, Default)]
struct Bucket {
    /// What each holder reserved at each second. A request holds at most one entry, of count
    /// 1, in a bucket.
    entries: BTreeMap<(i64, Holder), Used>,
    /// What the entries after `since` add up to, for the window last asked about: a limit
    /// asks about the same window at a later `now` each time, so only the entries that left
    /// it since are subtracted. `None` until asked, and after a sum that saturated.
    window: Cell<Option<Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    secs: u64,
    since: i64,
    used: Used,
}

/// `a` + `b`, or `None` when the amount saturates (and a sum can no longer lose a part
/// exactly).
fn checked_add(a: Used, b: Used) -> Option<Used> {
    Some(Used {
        amount: a.amount.checked_add(b.amount)?,
        count: a.count.saturating_add(b.count),
    })
}

/// `a` - `b`, or `None` when `b` is not part of `a`.
fn checked_sub(a: Used, b: Used) -> Option<Used> {
    Some(Used {
        amount: a.amount.checked_sub(b.amount)?,
        count: a.count.saturating_sub(b.count),
    })
}

impl Bucket {
    fn used(&self, window_secs: u64, since: i64) -> Used {
        if let Some(w) = self.window.get()
            && w.secs == window_secs
            && w.since <= since
        {
            let left = self
                .entries
                .range(after(w.since)..after(since))
                .try_fold(w.used, |sum, (_, u)| checked_sub(sum, *u));
            if let Some(used) = left {
                self.window.set(Some(Window { since, used, ..w }));
                return used;
            }
        }
        let mut used = Used::ZERO;
        let mut exact = true;
        for u in self.entries.range(after(since)..).map(|(_, u)| *u) {
            used = checked_add(used, u).unwrap_or_else(|| {
                exact = false;
                Used {
                    amount: U256::MAX,
                    count: used.count.saturating_add(u.count),
                }
            });
        }
        self.window.set(exact.then_some(Window {
            secs: window_secs,
            since,
            used,
        }));
        used
    }

    /// Adds `add` at (`ts`, `holder`), to what is there.
    fn add(&mut self, ts: i64, holder: Holder, add: Used) {
        let slot = self.entries.entry((ts, holder)).or_insert(Used::ZERO);
        match checked_add(*slot, add) {
            Some(sum) => *slot = sum,
            None => {
                *slot = Used {
                    amount: U256::MAX,
                    count: slot.count.saturating_add(add.count),
                };
                // A saturated slot cannot be taken out of a sum exactly: sums are taken afresh.
                self.window.set(None);
            }
        }
        if let Some(w) = self.window.get()
            && ts > w.since
        {
            let sum = checked_add(w.used, add);
            self.window.set(sum.map(|used| Window { used, ..w }));
        }
    }

    fn remove(&mut self, ts: i64, holder: Holder) -> Option<Used> {
        let gone = self.entries.remove(&(ts, holder))?;
        if let Some(w) = self.window.get()
            && ts > w.since
        {
            let left = checked_sub(w.used, gone);
            self.window.set(left.map(|used| Window { used, ..w }));
        }
        Some(gone)
    }
}

/// The first key of a bucket after `ts`.
fn after(ts: i64) -> (i64, Holder) {
    (ts.saturating_add(1), Holder::Settled)
}

/// Reservations by bucket, in memory. Looking up a window, recording, restoring and releasing
/// cost about log(n) each, not a pass over every entry: a busy signer holds a year of charges.
#[derive(Debug, Default)]
pub struct Ledger {
    buckets: HashMap<Arc<str>, Bucket>,
    /// Where each request's entries are: (bucket, `ts`).
    owners: HashMap<Arc<str>, Vec<(Arc<str>, i64)>>,
    /// Every entry by (`ts`, bucket, holder), to drop the old ones.
    by_time: BTreeSet<(i64, Arc<str>, Holder)>,
    /// When old signed charges were last moved to wider slots.
    coarsened_at: i64,
}

impl Ledger {
    /// What `bucket` used in the `window_secs` before `now`.
    pub fn used(&self, bucket: &str, window_secs: u64, now: i64) -> Used {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        self.buckets
            .get(bucket)
            .map_or(Used::ZERO, |b| b.used(window_secs, since))
    }

    /// What `bucket` used in the `window_secs` before `now`, not counting `owner`'s entries.
    pub fn used_excluding(&self, bucket: &str, window_secs: u64, now: i64, owner: &str) -> Used {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        let Some(b) = self.buckets.get(bucket) else {
            return Used::ZERO;
        };
        let used = b.used(window_secs, since);
        let own = self
            .owners
            .get_key_value(owner)
            .into_iter()
            .flat_map(|(o, held)| held.iter().map(move |h| (o, h)))
            .filter(|(_, (ob, ts))| ob.as_ref() == bucket && *ts > since)
            .filter_map(|(o, (_, ts))| b.entries.get(&(*ts, Holder::Request(Arc::clone(o)))));
        let mut left = Some(used).filter(|u| u.amount != U256::MAX);
        for u in own {
            left = left.and_then(|sum| checked_sub(sum, *u));
        }
        // A saturated sum cannot lose a part exactly: take it again without the owner.
        left.unwrap_or_else(|| Ledger::sum_without(b, since, owner))
    }

    fn sum_without(b: &Bucket, since: i64, owner: &str) -> Used {
        let mut used = Used::ZERO;
        for ((_, holder), u) in b.entries.range(after(since)..) {
            if !matches!(holder, Holder::Request(o) if o.as_ref() == owner) {
                used.amount = used.amount.saturating_add(u.amount);
                used.count = used.count.saturating_add(u.count);
            }
        }
        used
    }

    /// Replaces `owner`'s entries with `charges` if they all fit without them (a request that
    /// waited for approval, checked again at signing). On refusal the old entries stay.
    pub fn rereserve(&mut self, owner: &str, now: i64, charges: &[Charge]) -> Result<(), Exceeded> {
        let old = self.release(owner);
        self.reserve(owner, now, charges).inspect_err(|_| {
            for entry in old {
                self.restore(entry);
            }
        })
    }

    /// Checks every charge and, only if all fit, records them for `owner`; otherwise returns
    /// the first limit exceeded.
    pub fn reserve(&mut self, owner: &str, now: i64, charges: &[Charge]) -> Result<(), Exceeded> {
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
        for c in charges.iter().filter(|c| c.window_secs > 0) {
            self.restore(Entry {
                owner: owner.to_owned(),
                bucket: c.bucket.as_str().to_owned(),
                ts: now,
                amount: c.amount,
            });
        }
        Ok(())
    }

    /// Adds an entry reconciled from the audit log (idempotent: a request holds at most one
    /// entry in a bucket, and the first one stays).
    pub fn restore(&mut self, entry: Entry) {
        let held = self.owners.get(entry.owner.as_str());
        if held.is_some_and(|h| h.iter().any(|(b, _)| b.as_ref() == entry.bucket)) {
            return;
        }
        let owner: Arc<str> = match self.owners.get_key_value(entry.owner.as_str()) {
            Some((o, _)) => Arc::clone(o),
            None => Arc::from(entry.owner),
        };
        let one = Used {
            amount: entry.amount,
            count: 1,
        };
        let bucket = self.add(
            entry.bucket,
            entry.ts,
            Holder::Request(Arc::clone(&owner)),
            one,
        );
        self.owners
            .entry(owner)
            .or_default()
            .push((bucket, entry.ts));
    }

    /// Adds signed charges of one bucket and second, read back from the audit log.
    pub fn settle(&mut self, settled: Settled) {
        let Settled {
            bucket,
            ts,
            amount,
            count,
        } = settled;
        self.add(bucket, ts, Holder::Settled, Used { amount, count });
    }

    fn add(&mut self, bucket: String, ts: i64, holder: Holder, add: Used) -> Arc<str> {
        let bucket: Arc<str> = match self.buckets.get_key_value(bucket.as_str()) {
            Some((b, _)) => Arc::clone(b),
            None => Arc::from(bucket),
        };
        self.buckets
            .entry(Arc::clone(&bucket))
            .or_default()
            .add(ts, holder.clone(), add);
        self.by_time.insert((ts, Arc::clone(&bucket), holder));
        bucket
    }

    /// Drops every entry of `owner`, and returns them.
    pub fn release(&mut self, owner: &str) -> Vec<Entry> {
        let Some((owner, held)) = self.owners.remove_entry(owner) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(held.len());
        for (bucket, ts) in held {
            if let Some(gone) = self.remove(&bucket, ts, Holder::Request(Arc::clone(&owner))) {
                out.push(Entry {
                    owner: owner.to_string(),
                    bucket: bucket.to_string(),
                    ts,
                    amount: gone.amount,
                });
            }
        }
        out
    }

    /// Removes the entry of `holder` at `ts` from `bucket` and from the time index (not from
    /// `owners`).
    fn remove(&mut self, bucket: &Arc<str>, ts: i64, holder: Holder) -> Option<Used> {
        self.by_time
            .remove(&(ts, Arc::clone(bucket), holder.clone()));
        let b = self.buckets.get_mut(bucket)?;
        let gone = b.remove(ts, holder);
        if b.entries.is_empty() {
            self.buckets.remove(bucket);
        }
        gone
    }

    /// Every entry held by a request, in no particular order.
    pub fn entries(&self) -> Vec<Entry> {
        self.buckets
            .iter()
            .flat_map(|(bucket, b)| {
                b.entries
                    .iter()
                    .filter_map(|((ts, holder), u)| match holder {
                        Holder::Settled => None,
                        Holder::Request(owner) => Some(Entry {
                            owner: owner.to_string(),
                            bucket: bucket.to_string(),
                            ts: *ts,
                            amount: u.amount,
                        }),
                    })
            })
            .collect()
    }

    /// Every [`Settled`] slot, in no particular order.
    pub fn settled(&self) -> Vec<Settled> {
        self.buckets
            .iter()
            .flat_map(|(bucket, b)| {
                b.entries
                    .iter()
                    .filter(|((_, holder), _)| *holder == Holder::Settled)
                    .map(|((ts, _), u)| Settled {
                        bucket: bucket.to_string(),
                        ts: *ts,
                        amount: u.amount,
                        count: u.count,
                    })
            })
            .collect()
    }

    /// A request's answer is committed with a signature: its charges stay until they age out,
    /// and are held from now on with the other signed charges of their bucket and second.
    pub fn settle_owner(&mut self, owner: &str) {
        for e in self.release(owner) {
            self.settle(Settled {
                bucket: e.bucket,
                ts: e.ts,
                amount: e.amount,
                count: 1,
            });
        }
    }

    /// Moves signed charges to the slots [`settled_at`] gives at `now`.
    fn coarsen(&mut self, now: i64) {
        let cut = now.saturating_sub(2 * SETTLE_RATIO);
        let moving: Vec<(i64, Arc<str>, i64)> = self
            .by_time
            .iter()
            .take_while(|(ts, _, _)| *ts <= cut)
            .filter(|(_, _, holder)| *holder == Holder::Settled)
            .filter_map(|(ts, bucket, _)| {
                let at = settled_at(*ts, now);
                (at != *ts).then(|| (*ts, Arc::clone(bucket), at))
            })
            .collect();
        for (ts, bucket, at) in moving {
            if let Some(slot) = self.remove(&bucket, ts, Holder::Settled) {
                self.add(bucket.to_string(), at, Holder::Settled, slot);
            }
        }
        self.coarsened_at = now;
    }

    /// Drops entries older than [`MAX_WINDOW_SECS`]. About once an hour, also moves old signed
    /// charges to wider slots ([`settled_at`]), which keeps the ledger's size bounded whatever
    /// the traffic.
    pub fn prune(&mut self, now: i64) {
        if now >= self.coarsened_at.saturating_add(3600) {
            self.coarsen(now);
        }
        let since = now.saturating_sub(MAX_WINDOW_SECS as i64);
        while let Some((ts, bucket, holder)) = self.by_time.first().cloned()
            && ts <= since
        {
            if let Holder::Request(owner) = &holder
                && let Some(held) = self.owners.get_mut(owner)
            {
                held.retain(|(b, t)| !(*t == ts && *b == bucket));
                if held.is_empty() {
                    self.owners.remove(owner);
                }
            }
            self.remove(&bucket, ts, holder);
        }
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

    /// The plain definition the indexed ledger must agree with: every entry, summed by scan.
    /// Settled charges are entries of the empty owner, with their count.
    #[derive(Default)]
    struct Naive(Vec<Entry>, Vec<(Entry, u64)>);

    impl Naive {
        fn used(&self, bucket: &str, window: u64, now: i64, without: Option<&str>) -> Used {
            let since = now - window as i64;
            let mut used = Used::ZERO;
            let settled = self.1.iter().map(|(e, n)| (e, *n));
            for (e, n) in self.0.iter().map(|e| (e, 1)).chain(settled) {
                if e.bucket == bucket && e.ts > since && Some(e.owner.as_str()) != without {
                    used.amount = used.amount.saturating_add(e.amount);
                    used.count += n;
                }
            }
            used
        }

        /// The ledger holds exactly the entries of requests and the settled sums this does.
        fn agrees_with(&self, l: &Ledger, step: usize) {
            let key = |e: &Entry| (e.ts, e.bucket.clone(), e.owner.clone());
            let mut held = l.entries();
            held.sort_by_key(key);
            let mut want = self.0.clone();
            want.sort_by_key(key);
            assert_eq!(held, want, "step {step}");
            let mut settled: BTreeMap<(String, i64), (U256, u64)> = BTreeMap::new();
            for (e, n) in &self.1 {
                let slot = settled.entry((e.bucket.clone(), e.ts)).or_default();
                *slot = (slot.0.saturating_add(e.amount), slot.1 + n);
            }
            let held: BTreeMap<(String, i64), (U256, u64)> = l
                .settled()
                .into_iter()
                .map(|s| ((s.bucket, s.ts), (s.amount, s.count)))
                .collect();
            assert_eq!(held, settled, "step {step}");
        }
    }

    /// A fixed, reproducible sequence of numbers below `n` (xorshift), for randomized tests.
    pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn indexed_sums_agree_with_a_plain_scan_under_random_operations() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
        let buckets = ["b0", "b1", "b2"];
        let windows = [10u64, 60, 3600];
        let mut l = Ledger::default();
        let mut naive = Naive::default();
        let mut now = 1_000i64;
        let mut coarsened_at = 0i64;
        for step in 0..20_000 {
            now += next(4) as i64;
            let owner = format!("o{}", next(300));
            let bucket = buckets[next(3) as usize];
            match next(7) {
                6 => {
                    let (ts, count) = (now - next(50) as i64, 1 + next(5));
                    let amount = U256::from(next(10_000));
                    l.settle(Settled {
                        bucket: bucket.into(),
                        ts,
                        amount,
                        count,
                    });
                    let e = Entry {
                        owner: String::new(),
                        bucket: bucket.into(),
                        ts,
                        amount,
                    };
                    naive.1.push((e, count));
                }
                0 | 1 => {
                    let e = Entry {
                        owner: owner.clone(),
                        bucket: bucket.into(),
                        ts: now - next(50) as i64,
                        amount: if next(50) == 0 {
                            U256::MAX - U256::from(next(3))
                        } else {
                            U256::from(next(1_000))
                        },
                    };
                    if !naive
                        .0
                        .iter()
                        .any(|x| x.owner == e.owner && x.bucket == e.bucket)
                    {
                        naive.0.push(e.clone());
                    }
                    l.restore(e);
                }
                2 => {
                    let mut gone = l.release(&owner);
                    let mut want: Vec<Entry> = naive
                        .0
                        .iter()
                        .filter(|e| e.owner == owner)
                        .cloned()
                        .collect();
                    naive.0.retain(|e| e.owner != owner);
                    gone.sort_by(|a, b| a.bucket.cmp(&b.bucket));
                    want.sort_by(|a, b| a.bucket.cmp(&b.bucket));
                    assert_eq!(gone, want, "step {step}");
                }
                3 => {
                    let at = now + MAX_WINDOW_SECS as i64 - 40 + next(40) as i64;
                    l.prune(at);
                    // Settled charges move to the slots of `at`, once an hour.
                    if at >= coarsened_at + 3600 {
                        for (e, _) in &mut naive.1 {
                            e.ts = settled_at(e.ts, at);
                        }
                        coarsened_at = at;
                    }
                    let since = at - MAX_WINDOW_SECS as i64;
                    naive.0.retain(|e| e.ts > since);
                    naive.1.retain(|(e, _)| e.ts > since);
                    naive.agrees_with(&l, step);
                }
                _ => {
                    let w = windows[next(3) as usize];
                    let at = now - next(3) as i64;
                    assert_eq!(
                        l.used(bucket, w, at),
                        naive.used(bucket, w, at, None),
                        "step {step}"
                    );
                    assert_eq!(
                        l.used_excluding(bucket, w, at, &owner),
                        naive.used(bucket, w, at, Some(&owner)),
                        "step {step}"
                    );
                }
            }
        }
        naive.agrees_with(&l, 20_000);
    }

    #[test]
    fn settled_charges_count_late_never_early_and_agree_however_often_added_up() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
        let year = MAX_WINDOW_SECS as i64;
        for _ in 0..100_000 {
            let r2 = 1_800_000_000 + next(1_000_000) as i64;
            let r1 = r2 - next(year as u64) as i64;
            let t = r1 - next(year as u64) as i64;
            let at = settled_at(t, r1);
            // Late, never early, by at most 1/1024 of its age, and never in the future.
            assert!(at >= t, "{t} {r1}");
            assert!(
                at == t || (at - t) * SETTLE_RATIO <= r1 - t,
                "{t} {r1} {at}"
            );
            assert!(at <= r1.max(t));
            // Adding up again later gives what adding up once then gives.
            assert_eq!(settled_at(at, r2), settled_at(t, r2), "{t} {r1} {r2}");
        }
        // A year of one bucket, charged every second: about 16,000 slots.
        let now = 1_800_000_000i64;
        let (mut t, mut slots) = (now - year, 0u64);
        while t <= now {
            t = settled_at(t, now) + 1;
            slots += 1;
        }
        assert!((15_000..17_500).contains(&slots), "{slots}");
    }

    #[test]
    fn signed_charges_move_to_wider_slots_and_leave_their_window_at_most_a_little_late() {
        let mut l = Ledger::default();
        let bucket = charge("d", 1, 1, 86_400).bucket.as_str().to_owned();
        let day = 86_400i64;
        let start = 1_800_000_000i64;
        // A charge every 10 s for two days, each signed (settled) when made.
        for i in 0..(2 * day / 10) {
            let ts = start + i * 10;
            l.prune(ts);
            let owner = format!("app\0r{i}");
            assert!(
                l.reserve(&owner, ts, &[charge("d", 1, u64::MAX, 86_400)])
                    .is_ok()
            );
            l.settle_owner(&owner);
        }
        let now = start + 2 * day;
        l.prune(now + 3600);
        let slots = l
            .buckets
            .get(bucket.as_str())
            .map_or(0, |b| b.entries.len());
        // About 1,024 slots per doubling of age once a slot holds several charges.
        assert!(slots < 5_000, "{slots} slots for {} charges", 2 * day / 10);
        assert!(l.owners.is_empty());
        // Exactly, the last day holds `exact` charges; added up, a few more that are up to
        // 84 s (1/1024 of a day) past the window may still count, and none inside is lost.
        let exact = (0..(2 * day / 10))
            .filter(|i| start + i * 10 > now - day)
            .count() as u64;
        let used = l.used(&bucket, 86_400, now).count;
        assert!(
            (exact..=exact + 9).contains(&used),
            "{used} against {exact}"
        );
        // An hour later and after moving again: the same.
        l.prune(now + 2 * 3600);
        let used = l.used(&bucket, 86_400, now).count;
        assert!(
            (exact..=exact + 9).contains(&used),
            "{used} against {exact}"
        );
    }
}
