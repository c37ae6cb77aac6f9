//! [`StateStore`] in memory: the same contract as the embedded store, without a disk. For
//! tests of the signing pipeline in process, and for measuring the pipeline without a store's
//! cost. Everything is lost when it is dropped, so the daemon never uses it to serve.
//!
//! Writes can be made to fail on demand ([`MemoryStore::fail_writes`]), to test that every
//! path of the pipeline fails closed when the store does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::spend::{Charge, Entry, Exceeded, Ledger, Settled, Spend, Used};
use super::{
    LogBinding, PendingRecord, Pruned, StateError, StateStore, StoredRequest, UsageQuery, Verdict,
    verdict,
};

/// Everything the store holds, behind one lock: check-and-reserve is atomic.
#[derive(Default)]
struct Inner {
    requests: HashMap<(String, String), StoredRequest>,
    /// The answer-time index: (answered_at, client, request_id).
    answered: BTreeSet<(i64, String, String)>,
    /// Expiry markers: when each pruned request was answered.
    expired: HashMap<(String, String), i64>,
    pending: BTreeMap<(String, String), PendingRecord>,
    ledger: Ledger,
    log: Option<LogBinding>,
}

/// [`StateStore`] in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    failing: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// From now on, every write (and the probe) fails with `Unavailable` while `fail` is set;
    /// reads still answer.
    pub fn fail_writes(&self, fail: bool) {
        self.failing.store(fail, Ordering::SeqCst);
    }

    /// Every reservation a request holds now, for tests.
    pub fn reservations(&self) -> Vec<Entry> {
        self.lock().ledger.entries()
    }

    /// The signed charges held now, added up by bucket and second, for tests.
    pub fn settled(&self) -> Vec<Settled> {
        self.lock().ledger.settled()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data; a panic elsewhere cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writable(&self) -> Result<(), StateError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StateError::Unavailable(
                "write refused: the store was told to fail".into(),
            ));
        }
        Ok(())
    }
}

/// The ledger's owner of a request's reservations: the same separation as the embedded
/// store's keys (a NUL cannot appear in either part).
fn owner(client: &str, request_id: &str) -> Result<String, StateError> {
    if client.contains('\0') || request_id.contains('\0') {
        return Err(StateError::InvalidKey(
            "a client id or request id contains a NUL byte".into(),
        ));
    }
    Ok(format!("{client}\0{request_id}"))
}

fn key(client: &str, request_id: &str) -> (String, String) {
    (client.to_owned(), request_id.to_owned())
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError> {
        Ok(self.lock().requests.get(&key(client, request_id)).cloned())
    }

    async fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError> {
        self.writable()?;
        let mut inner = self.lock();
        if let Some(at) = rec.answered_at {
            inner
                .answered
                .insert((at, client.to_owned(), request_id.to_owned()));
        }
        inner.requests.insert(key(client, request_id), rec.clone());
        if matches!(rec.outcome, super::StoredOutcome::Signed { .. }) {
            inner.ledger.settle_owner(&owner(client, request_id)?);
        }
        Ok(())
    }

    async fn expired(&self, client: &str, request_id: &str) -> Result<Option<i64>, StateError> {
        Ok(self.lock().expired.get(&key(client, request_id)).copied())
    }

    async fn put_expired(
        &self,
        client: &str,
        request_id: &str,
        answered_at: i64,
    ) -> Result<(), StateError> {
        self.writable()?;
        let mut inner = self.lock();
        inner.expired.insert(key(client, request_id), answered_at);
        inner.requests.remove(&key(client, request_id));
        Ok(())
    }

    async fn prune_answers(&self, cutoff: i64, now: i64, max: usize) -> Result<Pruned, StateError> {
        self.writable()?;
        let mut inner = self.lock();
        let mut done = Pruned::default();
        while let Some(first) = inner.answered.first().cloned() {
            let (at, client, request_id) = &first;
            if *at >= cutoff {
                break;
            }
            if done.examined == max {
                done.more = true;
                break;
            }
            done.examined += 1;
            inner.answered.remove(&first);
            let k = key(client, request_id);
            match verdict(
                *at,
                inner.requests.get(&k),
                inner.pending.get(&k),
                cutoff,
                now,
            ) {
                Verdict::Drop => {}
                Verdict::Keep(later) => {
                    if let Some(rec) = inner.requests.get_mut(&k) {
                        rec.answered_at = Some(later);
                    }
                    inner
                        .answered
                        .insert((later, client.clone(), request_id.clone()));
                }
                Verdict::Expire(answered_at) => {
                    inner.expired.insert(k.clone(), answered_at);
                    inner.requests.remove(&k);
                    if inner.pending.get(&k).is_some_and(|p| p.status.is_final()) {
                        inner.pending.remove(&k);
                    }
                    done.expired += 1;
                }
            }
        }
        Ok(done)
    }

    async fn flush(&self) -> Result<(), StateError> {
        self.writable()
    }

    async fn probe(&self) -> Result<(), StateError> {
        self.writable()
    }

    async fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        self.writable()?;
        let owner = owner(client, request_id)?;
        let mut inner = self.lock();
        inner.ledger.prune(now);
        Ok(inner.ledger.reserve(&owner, now, charges))
    }

    async fn release(&self, client: &str, request_id: &str) -> Result<(), StateError> {
        self.writable()?;
        let owner = owner(client, request_id)?;
        self.lock().ledger.release(&owner);
        Ok(())
    }

    async fn reconcile(&self, spend: Spend) -> Result<(), StateError> {
        self.writable()?;
        let mut fresh = Ledger::default();
        for s in spend.settled {
            fresh.settle(s);
        }
        for e in spend.waiting {
            fresh.restore(e);
        }
        self.lock().ledger = fresh;
        Ok(())
    }

    async fn usage(
        &self,
        queries: &[UsageQuery],
        now: i64,
        excluding: Option<(&str, &str)>,
    ) -> Result<Vec<Used>, StateError> {
        let excluded = match excluding {
            Some((client, request_id)) => Some(owner(client, request_id)?),
            None => None,
        };
        let inner = self.lock();
        Ok(queries
            .iter()
            .map(|q| match &excluded {
                None => inner.ledger.used(&q.bucket, q.window_secs, now),
                Some(o) => inner
                    .ledger
                    .used_excluding(&q.bucket, q.window_secs, now, o),
            })
            .collect())
    }

    async fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        self.writable()?;
        let owner = owner(client, request_id)?;
        Ok(self.lock().ledger.rereserve(&owner, now, charges))
    }

    async fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError> {
        Ok(self.lock().pending.get(&key(client, request_id)).cloned())
    }

    async fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError> {
        self.writable()?;
        self.lock()
            .pending
            .insert(key(&rec.client, &rec.request_id), rec.clone());
        Ok(())
    }

    async fn log_binding(&self) -> Result<Option<LogBinding>, StateError> {
        Ok(self.lock().log.clone())
    }

    async fn bind_log(&self, binding: &LogBinding) -> Result<(), StateError> {
        self.writable()?;
        self.lock().log = Some(binding.clone());
        Ok(())
    }

    async fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError> {
        Ok(self
            .lock()
            .pending
            .values()
            .filter(|r| !r.status.is_final())
            .cloned()
            .collect())
    }
}
