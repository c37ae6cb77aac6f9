//! The embedded [`StateStore`] on [sled](https://docs.rs/sled/0.34) 0.34.
//!
//! Idempotency records live in the tree `requests` under the key `client || 0x00 ||
//! request_id`, as JSON. They are written after the request's `sign.result` record is durable
//! in the audit log and are not flushed one by one: sled flushes every 500 ms, and at start-up
//! every answer the audit log holds but this tree lacks is restored
//! before serving, so a retried request after a crash never
//! gets signed twice for lack of a record. Pending-approval records are flushed before their
//! writes return. This module must never build a key that two different (client, request_id)
//! pairs could share.
//!
//! Idempotency retention: the tree `answered` indexes every answer by the time it was answered
//! (key `answered_at` as a big-endian biased u64 `||` the request's key, empty value), so a
//! pruning pass reads only what is due, oldest first. An expired answer leaves a marker in the
//! tree `expired` (the request's key; value `answered_at`, 8 bytes big-endian), kept for
//! ever. The page cache is bounded (`cache_capacity`); what it does not hold is read from
//! the files.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use super::spend::{Charge, Exceeded, Ledger, Spend, Used};
use super::{
    LogBinding, PendingRecord, Pruned, StateError, StateStore, StoredRequest, UsageQuery, Verdict,
    verdict,
};

/// Longest client id or request id, in bytes. Both are validated upstream far below this.
const MAX_KEY_PART_BYTES: usize = 1024;

/// Name of the tree holding idempotency records.
const REQUESTS_TREE: &str = "requests";

/// Name of the tree in which earlier releases kept limit reservations.
const SPEND_TREE: &str = "spend";

/// Key of the record [`StateStore::probe`] rewrites, in the default tree.
const PROBE_KEY: &[u8] = b"signerd.probe";

/// Key of the [`LogBinding`], in the default tree.
const LOG_KEY: &[u8] = b"signerd.log";

/// Name of the tree holding requests that needed approval, keyed like `requests`.
const PENDING_TREE: &str = "pending";

/// Name of the tree indexing answers by the time they were answered.
const ANSWERED_TREE: &str = "answered";

/// Name of the tree holding the expiry markers of pruned answers, keyed like `requests`.
const EXPIRED_TREE: &str = "expired";

/// Key, in the default tree, present once every record of `requests` is in `answered`
/// (records of releases before the index are stamped with the time of the first start that
/// indexes them).
const INDEXED_KEY: &[u8] = b"signerd.answers-indexed";

/// [`StateStore`] on a sled database. Its methods of the same names are the blocking core: the
/// store's [`StateStore`] implementation calls those that only touch memory (sled's page cache
/// and the ledger) inline, and moves those that flush to a blocking thread. Cloning is cheap
/// and shares the database.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    requests: sled::Tree,
    pending: sled::Tree,
    answered: sled::Tree,
    expired: sled::Tree,
    /// The spend ledger. It lives in memory only: start-up rebuilds it from the audit log,
    /// the source of truth for spend, whatever a store would hold. Its lock makes
    /// check-and-reserve atomic.
    ledger: Arc<Mutex<Ledger>>,
    dir: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// The JSON record of (client, request_id) in `tree`, if any.
    fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &str,
        client: &str,
        request_id: &str,
    ) -> Result<Option<T>, StateError> {
        let key = request_key(client, request_id)?;
        let value = tree.get(&key).map_err(|e| {
            StateError::Unavailable(format!(
                "read {name}[client={client:?}, request_id={request_id:?}]: {e}"
            ))
        })?;
        match value {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StateError::Corrupt(format!(
                    "{name}[client={client:?}, request_id={request_id:?}]: cannot decode the stored value: {e}"
                ))
            }),
        }
    }

    /// Writes the JSON record of (client, request_id) in `tree`; with `durable`, flushed
    /// before returning (concurrent callers' flushes share sled's log writes).
    fn write_record<T: serde::Serialize>(
        &self,
        tree: &sled::Tree,
        name: &str,
        client: &str,
        request_id: &str,
        rec: &T,
        durable: bool,
    ) -> Result<(), StateError> {
        let key = request_key(client, request_id)?;
        let value = serde_json::to_vec(rec).map_err(|e| {
            StateError::Unavailable(format!(
                "encode {name}[client={client:?}, request_id={request_id:?}]: {e}"
            ))
        })?;
        tree.insert(key, value).map_err(|e| {
            StateError::Unavailable(format!(
                "write {name}[client={client:?}, request_id={request_id:?}]: {e}"
            ))
        })?;
        if durable {
            self.db.flush().map_err(|e| {
                StateError::Unavailable(format!(
                    "flush after writing {name}[client={client:?}, request_id={request_id:?}]: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Opens (or creates, mode 0700) the database in `dir`, with the default page cache
    /// ([`super::DEFAULT_CACHE_BYTES`]).
    pub fn open(dir: &Path) -> Result<SledStore, StateError> {
        SledStore::open_with_cache(dir, super::DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates, mode 0700) the database in `dir`, with a page cache of at most
    /// `cache_bytes` (sled's own default is 1 GiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StateError> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StateError::Unavailable(format!(
                    "{} exists but is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| {
                        StateError::Unavailable(format!(
                            "cannot create directory {}: {e}",
                            dir.display()
                        ))
                    })?;
            }
            Err(e) => {
                return Err(StateError::Unavailable(format!(
                    "cannot inspect {}: {e}",
                    dir.display()
                )));
            }
        }
        let db = sled::Config::new()
            .path(dir)
            // Writes are flushed explicitly; the background flush only bounds the loss of
            // anything else sled keeps.
            .flush_every_ms(Some(500))
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| {
                StateError::Unavailable(format!("cannot open sled database {}: {e}", dir.display()))
            })?;
        let requests = db.open_tree(REQUESTS_TREE).map_err(|e| {
            StateError::Unavailable(format!(
                "cannot open tree `{REQUESTS_TREE}` in {}: {e}",
                dir.display()
            ))
        })?;
        // Earlier releases kept the ledger here too; it was never read after start-up's
        // reconciliation, and is dropped.
        db.drop_tree(SPEND_TREE).map_err(|e| {
            StateError::Unavailable(format!(
                "cannot drop the old tree `{SPEND_TREE}` in {}: {e}",
                dir.display()
            ))
        })?;
        let pending = db.open_tree(PENDING_TREE).map_err(|e| {
            StateError::Unavailable(format!(
                "cannot open tree `{PENDING_TREE}` in {}: {e}",
                dir.display()
            ))
        })?;
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|e| {
                StateError::Unavailable(format!(
                    "cannot open tree `{name}` in {}: {e}",
                    dir.display()
                ))
            })
        };
        let answered = open_tree(ANSWERED_TREE)?;
        let expired = open_tree(EXPIRED_TREE)?;
        let store = SledStore {
            db,
            requests,
            pending,
            answered,
            expired,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            dir: dir.to_owned(),
        };
        store.index_earlier_records()?;
        Ok(store)
    }

    /// Once per store: stamps the records of releases before the answer-time index with now
    /// and indexes them, so that they expire one retention after the upgrade.
    fn index_earlier_records(&self) -> Result<(), StateError> {
        let unavailable = |e: sled::Error| {
            StateError::Unavailable(format!("index the answers of an earlier release: {e}"))
        };
        if self.db.get(INDEXED_KEY).map_err(unavailable)?.is_some() {
            return Ok(());
        }
        let now = unix_now();
        for item in self.requests.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let mut rec = decode_request(&key, &value)?;
            if rec.answered_at.is_some() {
                continue;
            }
            rec.answered_at = Some(now);
            self.answered
                .insert(index_key(now, &key), &[])
                .map_err(unavailable)?;
            self.requests
                .insert(key, encode(REQUESTS_TREE, &rec)?)
                .map_err(unavailable)?;
        }
        self.db.insert(INDEXED_KEY, &[]).map_err(unavailable)?;
        self.flush()
    }
}

/// Now, Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn encode<T: serde::Serialize>(name: &str, rec: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(rec).map_err(|e| StateError::Unavailable(format!("encode {name}: {e}")))
}

fn decode_request(key: &[u8], value: &[u8]) -> Result<StoredRequest, StateError> {
    serde_json::from_slice(value).map_err(|e| {
        StateError::Corrupt(format!(
            "{REQUESTS_TREE}[{}]: cannot decode the stored value: {e}",
            String::from_utf8_lossy(key).replace('\0', "/")
        ))
    })
}

/// The key of `answered`: the time, ordered as signed numbers are, then the request's key.
fn index_key(answered_at: i64, request_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + request_key.len());
    key.extend_from_slice(&((answered_at as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(request_key);
    key
}

/// (answered_at, request key) of an `answered` key.
fn split_index_key(key: &[u8]) -> Result<(i64, &[u8]), StateError> {
    match key.split_first_chunk::<8>() {
        Some((ts, rest)) => Ok(((u64::from_be_bytes(*ts) ^ (1 << 63)) as i64, rest)),
        None => Err(StateError::Corrupt(format!(
            "{ANSWERED_TREE}: a key of {} bytes, shorter than its time",
            key.len()
        ))),
    }
}

fn decode_marker(key: &[u8], value: &[u8]) -> Result<i64, StateError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        StateError::Corrupt(format!(
            "{EXPIRED_TREE}[{}]: a marker of {} bytes, not 8",
            String::from_utf8_lossy(key).replace('\0', "/"),
            value.len()
        ))
    })?;
    Ok(i64::from_be_bytes(bytes))
}

/// `client || 0x00 || request_id`. A client id without NUL makes the split unambiguous; the
/// request id is refused with NUL too so keys stay printable.
fn request_key(client: &str, request_id: &str) -> Result<Vec<u8>, StateError> {
    for (what, part) in [("client id", client), ("request id", request_id)] {
        if part.as_bytes().contains(&0) {
            return Err(StateError::InvalidKey(format!(
                "{what} {part:?} contains a NUL byte"
            )));
        }
        if part.len() > MAX_KEY_PART_BYTES {
            return Err(StateError::InvalidKey(format!(
                "{what} is {} bytes long, at most {MAX_KEY_PART_BYTES} allowed",
                part.len()
            )));
        }
    }
    let mut key = Vec::with_capacity(client.len() + 1 + request_id.len());
    key.extend_from_slice(client.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    Ok(key)
}

/// The ledger's name of a request: its [`request_key`], as text.
fn owner(client: &str, request_id: &str) -> Result<String, StateError> {
    Ok(String::from_utf8_lossy(&request_key(client, request_id)?).into_owned())
}

impl SledStore {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // The ledger is plain data; a panic elsewhere cannot leave it half-updated.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SledStore {
    /// The stored request, if any.
    pub fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError> {
        self.read_record(&self.requests, REQUESTS_TREE, client, request_id)
    }

    /// See [`StateStore::put_request`].
    pub fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError> {
        // The index entry first: one without its record is dropped by the next pass; a record
        // without its entry would never expire.
        if let Some(at) = rec.answered_at {
            self.answered
                .insert(index_key(at, &request_key(client, request_id)?), &[])
                .map_err(|e| {
                    StateError::Unavailable(format!(
                        "write {ANSWERED_TREE}[client={client:?}, request_id={request_id:?}]: {e}"
                    ))
                })?;
        }
        self.write_record(
            &self.requests,
            REQUESTS_TREE,
            client,
            request_id,
            rec,
            false,
        )?;
        if matches!(rec.outcome, super::StoredOutcome::Signed { .. }) {
            let owner = owner(client, request_id)?;
            self.ledger().settle_owner(&owner);
        }
        Ok(())
    }

    /// See [`StateStore::expired`].
    pub fn expired(&self, client: &str, request_id: &str) -> Result<Option<i64>, StateError> {
        let key = request_key(client, request_id)?;
        let value = self.expired.get(&key).map_err(|e| {
            StateError::Unavailable(format!(
                "read {EXPIRED_TREE}[client={client:?}, request_id={request_id:?}]: {e}"
            ))
        })?;
        value.map(|v| decode_marker(&key, &v)).transpose()
    }

    /// See [`StateStore::put_expired`].
    pub fn put_expired(
        &self,
        client: &str,
        request_id: &str,
        answered_at: i64,
    ) -> Result<(), StateError> {
        let key = request_key(client, request_id)?;
        let unavailable = |e: sled::Error| {
            StateError::Unavailable(format!(
                "write {EXPIRED_TREE}[client={client:?}, request_id={request_id:?}]: {e}"
            ))
        };
        self.expired
            .insert(&key, &answered_at.to_be_bytes())
            .map_err(unavailable)?;
        self.requests.remove(&key).map_err(unavailable)?;
        Ok(())
    }

    /// See [`StateStore::prune_answers`].
    pub fn prune_answers(&self, cutoff: i64, now: i64, max: usize) -> Result<Pruned, StateError> {
        let unavailable =
            |e: sled::Error| StateError::Unavailable(format!("prune {REQUESTS_TREE}: {e}"));
        let mut done = Pruned::default();
        for item in self.answered.iter() {
            let (ikey, _) = item.map_err(unavailable)?;
            let (at, rkey) = split_index_key(&ikey)?;
            if at >= cutoff {
                break;
            }
            if done.examined == max {
                done.more = true;
                break;
            }
            done.examined += 1;
            let old = self.requests.get(rkey).map_err(unavailable)?;
            let rec = old.as_ref().map(|v| decode_request(rkey, v)).transpose()?;
            let pending = self.pending_at(rkey)?;
            match verdict(at, rec.as_ref(), pending.as_ref(), cutoff, now) {
                Verdict::Drop => {}
                Verdict::Keep(later) => {
                    let Some(mut rec) = rec else { continue };
                    rec.answered_at = Some(later);
                    let new_index = index_key(later, rkey);
                    self.answered
                        .insert(new_index.as_slice(), &[])
                        .map_err(unavailable)?;
                    let swapped = self
                        .requests
                        .compare_and_swap(rkey, old, Some(encode(REQUESTS_TREE, &rec)?))
                        .map_err(unavailable)?;
                    if swapped.is_err() {
                        // Answered again meanwhile, with an index entry of its own.
                        self.answered.remove(new_index).map_err(unavailable)?;
                    }
                }
                Verdict::Expire(answered_at) => {
                    // The marker first: a crash between the two writes leaves the answer, or
                    // the marker, never neither.
                    let marker = answered_at.to_be_bytes();
                    self.expired.insert(rkey, &marker).map_err(unavailable)?;
                    let swapped = self
                        .requests
                        .compare_and_swap(rkey, old, None as Option<&[u8]>)
                        .map_err(unavailable)?;
                    if swapped.is_err() {
                        let _ = self
                            .expired
                            .compare_and_swap(rkey, Some(&marker), None as Option<&[u8]>)
                            .map_err(unavailable)?;
                    } else {
                        if pending.is_some_and(|p| p.status.is_final()) {
                            self.pending.remove(rkey).map_err(unavailable)?;
                        }
                        done.expired += 1;
                    }
                }
            }
            self.answered.remove(&ikey).map_err(unavailable)?;
        }
        Ok(done)
    }

    /// The approval record under a request's key, if any.
    fn pending_at(&self, key: &[u8]) -> Result<Option<PendingRecord>, StateError> {
        let value = self
            .pending
            .get(key)
            .map_err(|e| StateError::Unavailable(format!("read {PENDING_TREE}: {e}")))?;
        value
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    StateError::Corrupt(format!(
                        "{PENDING_TREE}[{}]: cannot decode the stored value: {e}",
                        String::from_utf8_lossy(key).replace('\0', "/")
                    ))
                })
            })
            .transpose()
    }

    /// See [`StateStore::probe`].
    pub fn probe(&self) -> Result<(), StateError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.db
            .insert(PROBE_KEY, &now.to_be_bytes())
            .map_err(|e| StateError::Unavailable(format!("write probe: {e}")))?;
        self.flush()
    }

    /// See [`StateStore::flush`].
    pub fn flush(&self) -> Result<(), StateError> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| StateError::Unavailable(format!("flush: {e}")))
    }

    /// See [`StateStore::reserve`]. In memory only: a crash loses nothing, since start-up
    /// takes the spend from the audit log.
    pub fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        let owner = owner(client, request_id)?;
        let mut ledger = self.ledger();
        ledger.prune(now);
        Ok(ledger.reserve(&owner, now, charges))
    }

    /// See [`StateStore::release`].
    pub fn release(&self, client: &str, request_id: &str) -> Result<(), StateError> {
        let owner = owner(client, request_id)?;
        self.ledger().release(&owner);
        Ok(())
    }

    /// See [`StateStore::reconcile`]: the ledger becomes the signed charges by bucket and
    /// second, and the charges of requests waiting for approval by request.
    pub fn reconcile(&self, spend: Spend) -> Result<(), StateError> {
        let mut fresh = Ledger::default();
        for s in spend.settled {
            fresh.settle(s);
        }
        for e in spend.waiting {
            fresh.restore(e);
        }
        *self.ledger() = fresh;
        Ok(())
    }

    /// See [`StateStore::usage`].
    pub fn used(&self, bucket: &str, window_secs: u64, now: i64) -> Result<Used, StateError> {
        Ok(self.ledger().used(bucket, window_secs, now))
    }

    /// See [`StateStore::usage`].
    pub fn used_by_others(
        &self,
        bucket: &str,
        window_secs: u64,
        now: i64,
        client: &str,
        request_id: &str,
    ) -> Result<Used, StateError> {
        let owner = owner(client, request_id)?;
        Ok(self
            .ledger()
            .used_excluding(bucket, window_secs, now, &owner))
    }

    /// See [`StateStore::rereserve`].
    pub fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        let owner = owner(client, request_id)?;
        Ok(self.ledger().rereserve(&owner, now, charges))
    }

    /// See [`StateStore::get_pending`].
    pub fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError> {
        self.read_record(&self.pending, PENDING_TREE, client, request_id)
    }

    /// See [`StateStore::put_pending`].
    pub fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError> {
        self.write_record(
            &self.pending,
            PENDING_TREE,
            &rec.client,
            &rec.request_id,
            rec,
            true,
        )
    }

    /// See [`StateStore::open_pending`].
    pub fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.pending.iter() {
            let (key, value) =
                item.map_err(|e| StateError::Unavailable(format!("read {PENDING_TREE}: {e}")))?;
            let rec: PendingRecord = serde_json::from_slice(&value).map_err(|e| {
                StateError::Corrupt(format!(
                    "{PENDING_TREE}[{}]: cannot decode the stored value: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            if !rec.status.is_final() {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// A blocking call, on a blocking thread.
async fn off_runtime<T: Send + 'static>(
    store: &SledStore,
    f: impl FnOnce(&SledStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StateError::Unavailable(format!("the store's blocking call failed: {e}")))?
}

#[async_trait::async_trait]
impl StateStore for SledStore {
    async fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError> {
        SledStore::get_request(self, client, request_id)
    }

    async fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError> {
        SledStore::put_request(self, client, request_id, rec)
    }

    async fn expired(&self, client: &str, request_id: &str) -> Result<Option<i64>, StateError> {
        SledStore::expired(self, client, request_id)
    }

    async fn put_expired(
        &self,
        client: &str,
        request_id: &str,
        answered_at: i64,
    ) -> Result<(), StateError> {
        SledStore::put_expired(self, client, request_id, answered_at)
    }

    async fn prune_answers(&self, cutoff: i64, now: i64, max: usize) -> Result<Pruned, StateError> {
        // A pass reads records that may have left the page cache: off the runtime.
        off_runtime(self, move |s| s.prune_answers(cutoff, now, max)).await
    }

    async fn flush(&self) -> Result<(), StateError> {
        off_runtime(self, SledStore::flush).await
    }

    async fn probe(&self) -> Result<(), StateError> {
        off_runtime(self, SledStore::probe).await
    }

    async fn log_binding(&self) -> Result<Option<LogBinding>, StateError> {
        let value = self
            .db
            .get(LOG_KEY)
            .map_err(|e| StateError::Unavailable(format!("read the log binding: {e}")))?;
        value
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    StateError::Corrupt(format!("the log binding cannot be decoded: {e}"))
                })
            })
            .transpose()
    }

    async fn bind_log(&self, binding: &LogBinding) -> Result<(), StateError> {
        let value = serde_json::to_vec(binding)
            .map_err(|e| StateError::Unavailable(format!("encode the log binding: {e}")))?;
        off_runtime(self, move |s| {
            s.db.insert(LOG_KEY, value)
                .map_err(|e| StateError::Unavailable(format!("write the log binding: {e}")))?;
            s.flush()
        })
        .await
    }

    async fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        SledStore::reserve(self, client, request_id, now, charges)
    }

    async fn release(&self, client: &str, request_id: &str) -> Result<(), StateError> {
        SledStore::release(self, client, request_id)
    }

    async fn reconcile(&self, spend: Spend) -> Result<(), StateError> {
        SledStore::reconcile(self, spend)
    }

    async fn usage(
        &self,
        queries: &[UsageQuery],
        now: i64,
        excluding: Option<(&str, &str)>,
    ) -> Result<Vec<Used>, StateError> {
        queries
            .iter()
            .map(|q| match excluding {
                None => self.used(&q.bucket, q.window_secs, now),
                Some((client, request_id)) => {
                    self.used_by_others(&q.bucket, q.window_secs, now, client, request_id)
                }
            })
            .collect()
    }

    async fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        SledStore::rereserve(self, client, request_id, now, charges)
    }

    async fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError> {
        SledStore::get_pending(self, client, request_id)
    }

    async fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError> {
        let rec = rec.clone();
        off_runtime(self, move |s| s.put_pending(&rec)).await
    }

    async fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError> {
        off_runtime(self, SledStore::open_pending).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::state::StoredOutcome;
    use crate::state::spend::{Entry, Settled};
    use std::sync::atomic::AtomicU64;

    /// A path for a state store, not created yet, inside a fresh temp dir removed on drop.
    struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let root = tempfile::Builder::new()
                .prefix("signerd-state-")
                .tempdir()
                .unwrap();
            TempDir(root.path().join(name), root)
        }
    }

    fn signed(resp: &str) -> StoredRequest {
        StoredRequest {
            fingerprint: "ab".repeat(32),
            method: "SignEvmTransaction".to_owned(),
            outcome: StoredOutcome::Signed {
                response: resp.to_owned(),
            },
            answered_at: Some(1000),
        }
    }

    #[test]
    fn round_trip_and_durable_across_reopen() {
        let dir = TempDir::new("roundtrip");
        let denied = StoredRequest {
            fingerprint: "cd".repeat(32),
            method: "SignEvmMessage".to_owned(),
            outcome: StoredOutcome::Denied {
                rule: Some("no-blind".to_owned()),
                reason: "raw digests are not allowed".to_owned(),
            },
            answered_at: Some(1001),
        };
        {
            let store = SledStore::open(&dir.0).unwrap();
            assert_eq!(store.get_request("svc-a", "r1").unwrap(), None);
            store.put_request("svc-a", "r1", &signed("0a0b")).unwrap();
            store.put_request("svc-a", "r2", &denied).unwrap();
            assert_eq!(
                store.get_request("svc-a", "r1").unwrap(),
                Some(signed("0a0b"))
            );
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir.0).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let store = open_sled_for_test(&dir.0);
        assert_eq!(
            store.get_request("svc-a", "r1").unwrap(),
            Some(signed("0a0b"))
        );
        assert_eq!(store.get_request("svc-a", "r2").unwrap(), Some(denied));
        assert_eq!(store.get_request("svc-a", "r3").unwrap(), None);
    }

    /// Opens the store; a store just dropped in this process may still hold the lock for a
    /// moment (sled's flusher thread lets go of the database after the handle is dropped), so
    /// a lock held is retried for a bounded time.
    fn open_sled_for_test(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn markers_survive_reopen_and_earlier_records_are_indexed() {
        let dir = TempDir::new("markers");
        {
            let store = open_sled_for_test(&dir.0);
            store.put_expired("app", "gone", 5).unwrap();
            // A record as an earlier release wrote it: no time, no index entry.
            store
                .requests
                .insert(
                    request_key("app", "legacy").unwrap(),
                    br#"{"fingerprint":"ab","method":"SignEvmMessage","outcome":{"status":"denied","rule":null,"reason":"no"}}"#.to_vec(),
                )
                .unwrap();
            store.db.remove(INDEXED_KEY).unwrap();
            store.flush().unwrap();
        }
        let before = unix_now();
        let store = open_sled_for_test(&dir.0);
        assert_eq!(store.expired("app", "gone").unwrap(), Some(5));
        assert_eq!(store.get_request("app", "gone").unwrap(), None);
        let legacy = store.get_request("app", "legacy").unwrap().unwrap();
        let stamped = legacy.answered_at.unwrap();
        assert!(stamped >= before && stamped <= unix_now(), "{stamped}");
        assert_eq!(
            store.prune_answers(stamped, stamped, 10).unwrap().expired,
            0
        );
        let done = store.prune_answers(stamped + 1, stamped + 1, 10).unwrap();
        assert_eq!(done.expired, 1, "{done:?}");
        assert_eq!(store.expired("app", "legacy").unwrap(), Some(stamped));
    }

    #[test]
    fn clients_do_not_collide() {
        let dir = TempDir::new("clients");
        let store = SledStore::open(&dir.0).unwrap();
        store.put_request("svc-a", "same", &signed("aa")).unwrap();
        store.put_request("svc-b", "same", &signed("bb")).unwrap();
        // Concatenation without the separator would make these two one key.
        store.put_request("svc-a", "bsame", &signed("cc")).unwrap();
        store.put_request("svc-ab", "same", &signed("dd")).unwrap();
        assert_eq!(
            store.get_request("svc-a", "same").unwrap(),
            Some(signed("aa"))
        );
        assert_eq!(
            store.get_request("svc-b", "same").unwrap(),
            Some(signed("bb"))
        );
        assert_eq!(
            store.get_request("svc-a", "bsame").unwrap(),
            Some(signed("cc"))
        );
        assert_eq!(
            store.get_request("svc-ab", "same").unwrap(),
            Some(signed("dd"))
        );
        assert_eq!(store.get_request("svc-c", "same").unwrap(), None);
    }

    #[test]
    fn refuses_nul_in_keys_and_reports_corruption() {
        let dir = TempDir::new("corrupt");
        let store = SledStore::open(&dir.0).unwrap();
        let err = store.put_request("svc\0a", "r", &signed("aa")).unwrap_err();
        assert!(matches!(err, StateError::InvalidKey(_)));
        assert!(
            err.to_string()
                .contains("client id \"svc\\0a\" contains a NUL byte"),
            "{err}"
        );
        assert!(store.get_request("svc", "r\0").is_err());

        store
            .requests
            .insert(b"svc\0bad", b"{not json".to_vec())
            .unwrap();
        let err = store.get_request("svc", "bad").unwrap_err();
        assert!(matches!(err, StateError::Corrupt(_)));
        assert!(
            err.to_string().starts_with(
                "state store corrupt: requests[client=\"svc\", request_id=\"bad\"]: cannot decode"
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_file_as_directory() {
        let dir = TempDir::new("notdir");
        std::fs::write(&dir.0, b"").unwrap();
        let err = SledStore::open(&dir.0).unwrap_err();
        assert!(
            err.to_string().ends_with("exists but is not a directory"),
            "{err}"
        );
        std::fs::remove_file(&dir.0).unwrap();
    }

    fn limit(amount: u64, max: u64) -> Charge {
        crate::state::spend::tests::charge("daily", amount, max, 86_400)
    }

    fn bucket() -> String {
        limit(1, 1).bucket.as_str().to_owned()
    }

    /// The ledger lives in memory: a reopened store holds no reservation until start-up
    /// reconciles it from the audit log, and a spend tree an earlier release left is dropped.
    #[test]
    fn the_ledger_is_rebuilt_by_reconciliation_not_read_back() {
        let dir = TempDir::new("spend");
        {
            let store = open_sled_for_test(&dir.0);
            assert_eq!(
                store.reserve("app", "r1", 1000, &[limit(70, 100)]).unwrap(),
                Ok(())
            );
            // What an earlier release kept.
            let old = store.db.open_tree(SPEND_TREE).unwrap();
            old.insert(b"app\0r1\0limit=daily", b"{}".as_slice())
                .unwrap();
            store.flush().unwrap();
        }
        let store = open_sled_for_test(&dir.0);
        assert!(
            !store
                .db
                .tree_names()
                .iter()
                .any(|t| t.as_ref() == SPEND_TREE.as_bytes())
        );
        assert_eq!(store.used(&bucket(), 86_400, 2000).unwrap(), Used::ZERO);
        let waiting = Entry {
            owner: "app\0waiting".to_owned(),
            bucket: bucket(),
            ts: 1500,
            amount: alloy_primitives::U256::from(20),
        };
        store
            .reconcile(Spend {
                settled: vec![Settled {
                    bucket: bucket(),
                    ts: 1000,
                    amount: alloy_primitives::U256::from(70),
                    count: 3,
                }],
                // A shared store's copy by request: not added again.
                signed: vec![Entry {
                    owner: "app\0r1".to_owned(),
                    bucket: bucket(),
                    ts: 1000,
                    amount: alloy_primitives::U256::from(70),
                }],
                waiting: vec![waiting],
            })
            .unwrap();
        let used = store.used(&bucket(), 86_400, 2000).unwrap();
        assert_eq!(used.amount, alloy_primitives::U256::from(90));
        assert_eq!(used.count, 4);
        assert!(
            store
                .reserve("app", "r4", 2000, &[limit(11, 100)])
                .unwrap()
                .is_err()
        );
        // The waiting request ends unsigned: its charge goes, the signed ones stay.
        store.release("app", "waiting").unwrap();
        let used = store.used(&bucket(), 86_400, 2000).unwrap();
        assert_eq!(used.amount, alloy_primitives::U256::from(70));
        assert_eq!(used.count, 3);
        // They leave the window together, a day after their second.
        let used = store.used(&bucket(), 86_400, 1000 + 86_400).unwrap();
        assert_eq!(used, Used::ZERO);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let dir = TempDir::new("race");
        let store = open_sled_for_test(&dir.0);
        let granted = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (store, granted) = (store.clone(), granted.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let id = format!("t{t}-{i}");
                        if store
                            .reserve("app", &id, 5, &[limit(7, 1000)])
                            .unwrap()
                            .is_ok()
                        {
                            granted.fetch_add(7, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = granted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            total, 994,
            "142 reservations of 7 fit under 1000, and no more"
        );
        let used = store.used(&bucket(), 86_400, 5).unwrap();
        assert_eq!(used.amount, alloy_primitives::U256::from(total));
    }
}
