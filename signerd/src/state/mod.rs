//! Durable daemon state: idempotency records, the spend ledger of policy limits, and requests
//! waiting for approval with their votes.
//!
//! The [`StateStore`] trait is the seam (its contract is on the trait); [`SledStore`] is the
//! embedded default and [`MemoryStore`] keeps everything in memory, for tests of the pipeline
//! in process. The audit log, not this store, is the source of truth after a crash.

pub mod crosscheck;
mod memory;
mod postgres;
pub mod reconcile;
pub mod retention;
mod sled;
pub mod spend;

use std::path::Path;

pub use self::memory::MemoryStore;
pub use self::postgres::{CLAIM_LEASE, PostgresStore, SCHEMA_VERSION};
pub use self::sled::SledStore;
pub use self::spend::{Charge, Exceeded, Used};
pub use crate::approvals::PendingRecord;

/// The embedded store's page cache when `[state] cache_bytes` is not set: 16 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// What the daemon remembers about one `request_id` of one client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRequest {
    /// Hex SHA-256 fingerprint of the request.
    pub fingerprint: String,
    /// The gRPC method.
    pub method: String,
    /// How it ended.
    pub outcome: StoredOutcome,
    /// When it was answered (Unix seconds): the `ts` of its `sign.result` record, or for a
    /// request waiting for approval when it began to wait. The idempotency retention counts
    /// from it. Records of earlier releases have none until the store first indexes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<i64>,
}

/// What a pruning pass ([`StateStore::prune_answers`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries of the answer-time index looked at.
    pub examined: usize,
    /// Answers replaced by an expiry marker.
    pub expired: usize,
    /// Whether answers older than the cutoff may remain (the pass stopped at its bound).
    pub more: bool,
}

/// What a pruning pass does with one entry of the answer-time index: the rule every store
/// applies, so that the stores cannot differ on what may be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The entry is stale (the answer is gone, or was answered again at another time, with
    /// an entry of its own): remove the entry only.
    Drop,
    /// Keep the answer, indexed (and stamped) at this time instead: a request still waiting
    /// for approval, or one whose wait ended too recently.
    Keep(i64),
    /// Replace the answer by a marker that it was answered at this time.
    Expire(i64),
}

/// The [`Verdict`] on the index entry of (`rec`, its approval record `pending`) at
/// `indexed_at`, for a pass that expires what was answered before `cutoff`, at `now`.
///
/// A request that waited for approval keeps its answer while it waits, whatever the retention:
/// its retention counts from when the wait ended, which is at the latest its deadline.
pub(crate) fn verdict(
    indexed_at: i64,
    rec: Option<&StoredRequest>,
    pending: Option<&PendingRecord>,
    cutoff: i64,
    now: i64,
) -> Verdict {
    let Some(rec) = rec else {
        return Verdict::Drop;
    };
    if rec.answered_at != Some(indexed_at) {
        return Verdict::Drop;
    }
    if rec.outcome != StoredOutcome::Pending {
        return if indexed_at < cutoff {
            Verdict::Expire(indexed_at)
        } else {
            Verdict::Keep(indexed_at)
        };
    }
    match pending {
        Some(p) if p.status.is_final() => {
            let ended = p.deadline.min(now);
            if ended < cutoff {
                Verdict::Expire(ended)
            } else {
                Verdict::Keep(ended)
            }
        }
        Some(p) => Verdict::Keep(p.deadline.max(now)),
        // Stored before its approval record (a crash between the two writes): it cannot be
        // approved, but is kept like an open one, to be looked at again one retention later.
        None => Verdict::Keep(now),
    }
}

/// The final outcome of a request, replayed to retries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StoredOutcome {
    /// Signed: the protobuf-encoded response, hex.
    Signed {
        /// Hex of the encoded response message.
        response: String,
    },
    /// Waiting for approvals (or ended after waiting): the pending record says where it
    /// stands.
    Pending,
    /// Denied by policy.
    Denied {
        /// The deciding rule, if any.
        rule: Option<String>,
        /// The reason given to the client.
        reason: String,
    },
}

/// The audit log a state store belongs to: what start-up checks before serving, so that a
/// log that was removed, replaced or cut cannot be paired with the answers and spend the store
/// remembers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogBinding {
    /// The log's checkpoint origin (`[audit] origin`).
    pub origin: String,
    /// The leaf hash of the log's first record, hex.
    pub first_record: String,
    /// How many records the log held when the store last saw it.
    pub records: u64,
    /// The store holds the answer of every request whose final `sign.result` has a `seq`
    /// below this, durably: start-up restores answers from the log only from here (or from
    /// an earlier snapshot's position). `None` (a new store, or one of an earlier release):
    /// start-up reads the whole log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers_complete: Option<u64>,
}

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The store cannot read or commit.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A stored value cannot be decoded.
    #[error("state store corrupt: {0}")]
    Corrupt(String),
    /// The store's schema is not one this release can use (a newer release migrated it).
    #[error("state store incompatible: {0}")]
    Incompatible(String),
    /// A key part is not storable (a NUL byte, or too long). The caller validates first, so
    /// this is a bug upstream.
    #[error("state store: invalid key: {0}")]
    InvalidKey(String),
}

/// What the store knows of a (client, request_id): [`StateStore::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its answer.
    Answer(StoredRequest),
    /// Its answer expired; it was answered at this time (Unix seconds).
    Expired(i64),
    /// Nothing: a new request.
    New,
}

/// What [`StateStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process holds the request until it lets go ([`StateStore::unclaim`] with `token`)
    /// or stops renewing it. `taken_over` names the replica whose claim had lapsed (it stopped
    /// while working on the request).
    Held {
        /// Identifies this hold.
        token: i64,
        /// The replica that held it before, when its claim lapsed.
        taken_over: Option<String>,
    },
    /// Another replica works on the request now.
    Busy {
        /// That replica (its audit log's origin).
        holder: String,
    },
}

/// One windowed usage a policy evaluation needs: what `bucket` used in the `window_secs`
/// before now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageQuery {
    /// The limit bucket.
    pub bucket: String,
    /// The window, seconds.
    pub window_secs: u64,
}

/// Durable storage for idempotency records, limit reservations and requests waiting for
/// approval.
///
/// The contract, for every implementation (the embedded sled store, the in-memory store of
/// tests, and networked stores):
/// - Calls are `async` and never block the runtime's workers: a call that waits on a disk
///   flush or a network round trip awaits it (sled's flushing calls run on a blocking
///   thread; its other calls touch only memory and sled's page cache).
/// - A write is durable when it returns, except [`StateStore::put_request`], [`reserve`],
///   [`rereserve`] and [`release`], whose durable copy is the audit log (start-up restores
///   them from it); they become durable with the next durable write or within a bounded time.
/// - [`reserve`] and [`rereserve`] are atomic against every other reservation, across every
///   process sharing the store: no two callers can both fit into the last of a limit.
/// - No secret ever appears in a key, a value or an error.
/// - Idempotency retention: every stored answer with an `answered_at` is in an index by that
///   time. [`prune_answers`] walks the index from its oldest entry and replaces each answer
///   answered before the cutoff by a compact expiry marker (the time it was answered), with
///   the [`Verdict`] rule: a request waiting for approval is never pruned while it waits. A
///   pass does bounded work (at most `max` index entries), and the request path never waits
///   for it beyond one record's lock. A pruned (client, request_id) is never answered
///   again: [`get_request`] returns `None` for it and [`expired`] returns its marker, which
///   is kept for as long as the store (forgetting it would let a replay sign again). The
///   marker is written before the answer is removed, so a crash leaves one or the other.
///
/// [`prune_answers`]: StateStore::prune_answers
/// [`get_request`]: StateStore::get_request
/// [`expired`]: StateStore::expired
///
/// [`reserve`]: StateStore::reserve
/// [`rereserve`]: StateStore::rereserve
/// [`release`]: StateStore::release
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The stored request, if any (`None` too for a request whose answer expired: see
    /// [`StateStore::expired`]).
    async fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError>;

    /// Stores the request's answer. Not durable on return (see the trait's contract): callers
    /// store only answers whose `sign.result` audit record is already durable.
    async fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError>;

    /// When the request, whose answer expired, was answered (Unix seconds); `None` when the
    /// store holds no expiry marker for it.
    async fn expired(&self, client: &str, request_id: &str) -> Result<Option<i64>, StateError>;

    /// Records that the request was answered at `answered_at` and its answer expired (start-up
    /// restores answers older than the retention this way). Removes a stored answer of the
    /// request. Not durable on return, like [`StateStore::put_request`].
    async fn put_expired(
        &self,
        client: &str,
        request_id: &str,
        answered_at: i64,
    ) -> Result<(), StateError>;

    /// One pruning pass: replaces answers answered before `cutoff` by expiry markers, looking
    /// at no more than `max` entries of the answer-time index (see the trait's contract).
    async fn prune_answers(&self, cutoff: i64, now: i64, max: usize) -> Result<Pruned, StateError>;

    /// Makes every earlier write durable.
    async fn flush(&self) -> Result<(), StateError>;

    /// Writes a small record and makes it durable: whether the store can write now.
    async fn probe(&self) -> Result<(), StateError>;

    /// Atomically checks every charge against its limit and, when all fit, reserves them for
    /// `owner` (`client`, `request_id`). Nothing is reserved when any charge does not fit.
    async fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError>;

    /// Releases every reservation of a request that ended unsigned.
    async fn release(&self, client: &str, request_id: &str) -> Result<(), StateError>;

    /// Makes the reservations what the audit log says at start-up: the signed spend and the
    /// spend of requests waiting for approval; durable when this returns. A store of one
    /// instance replaces its ledger with it; a shared store adds what it lacks.
    async fn reconcile(&self, spend: spend::Spend) -> Result<(), StateError>;

    /// What each query's bucket used in its window before `now`, in the order asked; with
    /// `excluding` (`client`, `request_id`), not counting that request's own reservations
    /// (the usage a request that waited for approval is evaluated against again). One call
    /// for every bucket a policy evaluation needs, so a networked store answers in one trip.
    async fn usage(
        &self,
        queries: &[UsageQuery],
        now: i64,
        excluding: Option<(&str, &str)>,
    ) -> Result<Vec<Used>, StateError>;

    /// Atomically replaces the reservations of (`client`, `request_id`) with `charges` when
    /// they fit without them; on refusal the old reservations stay.
    async fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError>;

    /// The record of a request that needed approval.
    async fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError>;

    /// Stores the record of a request that needed approval; durable when this returns, with
    /// every earlier write.
    async fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError>;

    /// Every record whose status is not final (pending, or signing).
    async fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError>;

    /// The audit log this store belongs to, if it was bound to one.
    async fn log_binding(&self) -> Result<Option<LogBinding>, StateError>;

    /// Binds the store to `binding`; durable when this returns.
    async fn bind_log(&self, binding: &LogBinding) -> Result<(), StateError>;

    /// Its answer, or the marker that its answer expired, or neither: [`StateStore::get_request`]
    /// then [`StateStore::expired`], which a networked store answers in one trip.
    async fn lookup(&self, client: &str, request_id: &str) -> Result<Lookup, StateError> {
        if let Some(rec) = self.get_request(client, request_id).await? {
            return Ok(Lookup::Answer(rec));
        }
        Ok(match self.expired(client, request_id).await? {
            Some(at) => Lookup::Expired(at),
            None => Lookup::New,
        })
    }

    /// [`StateStore::put_request`], and lets go of the claim taken with `token` in the same
    /// write, so that no other replica can take the request between the two. A store without
    /// claims just stores.
    async fn put_request_releasing(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
        _token: i64,
    ) -> Result<(), StateError> {
        self.put_request(client, request_id, rec).await
    }

    /// Claims (`client`, `request_id`) for this process, against every other process sharing
    /// the store: while one holds it, no other works on that request (answers, votes, expiry,
    /// signing at quorum). A store of one process only (sled, memory) has nothing to claim
    /// against: the daemon's own per-request lock is enough, and this always holds.
    async fn claim(&self, _client: &str, _request_id: &str) -> Result<Claim, StateError> {
        Ok(Claim::Held {
            token: 0,
            taken_over: None,
        })
    }

    /// Lets go of a claim taken with `token` (a later claim of the same request is left).
    async fn unclaim(
        &self,
        _client: &str,
        _request_id: &str,
        _token: i64,
    ) -> Result<(), StateError> {
        Ok(())
    }

    /// Whether other processes share this store: its failures are then the network's or the
    /// server's, and pass (the daemon probes it and serves again), and it holds claims.
    fn shared(&self) -> bool {
        false
    }
}

/// Opens the default store in `dir` (created with mode 0700 if missing), with a page cache of
/// at most `cache_bytes`.
pub fn open_sled(
    dir: &Path,
    cache_bytes: u64,
) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    Ok(std::sync::Arc::new(SledStore::open_with_cache(
        dir,
        cache_bytes,
    )?))
}

#[cfg(test)]
pub(crate) mod retention_tests {
    //! The retention contract, run against every store.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::approvals::Status;

    fn answer(at: i64, outcome: StoredOutcome) -> StoredRequest {
        StoredRequest {
            fingerprint: "ab".repeat(32),
            method: "SignEvmMessage".to_owned(),
            outcome,
            answered_at: Some(at),
        }
    }

    fn signed(at: i64) -> StoredRequest {
        answer(
            at,
            StoredOutcome::Signed {
                response: "0a0b".to_owned(),
            },
        )
    }

    fn pending(client: &str, request_id: &str, deadline: i64, status: Status) -> PendingRecord {
        PendingRecord {
            client: client.to_owned(),
            roles: vec!["requester".to_owned()],
            cert_sha256: "00".repeat(32),
            request_id: request_id.to_owned(),
            method: "SignEvmMessage".to_owned(),
            key_id: "evm".to_owned(),
            request: String::new(),
            request_fingerprint: "ab".repeat(32),
            fingerprint: "11".repeat(32),
            created: 100,
            deadline,
            rules: vec!["big".to_owned()],
            requirements: Vec::new(),
            policy_serial: 1,
            policy_hash: "22".repeat(32),
            action: serde_json::Value::Null,
            explanation: Vec::new(),
            votes: Vec::new(),
            status,
            reason: None,
            signing_since: None,
        }
    }

    /// Answers older than the cutoff become markers; newer ones stay; a marker names when the
    /// request was answered, and an answer is never both.
    pub(crate) async fn prunes_old_answers_to_markers(store: &dyn StateStore) {
        store.put_request("app", "old", &signed(100)).await.unwrap();
        let denied = answer(
            200,
            StoredOutcome::Denied {
                rule: None,
                reason: "no".to_owned(),
            },
        );
        store
            .put_request("app", "old-denied", &denied)
            .await
            .unwrap();
        store.put_request("app", "new", &signed(900)).await.unwrap();
        store
            .put_request("other", "old", &signed(950))
            .await
            .unwrap();
        let done = store.prune_answers(500, 1000, 100).await.unwrap();
        assert_eq!(
            done,
            Pruned {
                examined: 2,
                expired: 2,
                more: false
            }
        );
        assert_eq!(store.get_request("app", "old").await.unwrap(), None);
        assert_eq!(store.expired("app", "old").await.unwrap(), Some(100));
        assert_eq!(store.expired("app", "old-denied").await.unwrap(), Some(200));
        assert_eq!(
            store.get_request("app", "new").await.unwrap(),
            Some(signed(900))
        );
        assert_eq!(store.expired("app", "new").await.unwrap(), None);
        // Another client's request of the same id is its own.
        assert_eq!(
            store.get_request("other", "old").await.unwrap(),
            Some(signed(950))
        );
        assert_eq!(store.expired("other", "old").await.unwrap(), None);
        // Nothing more is due: a second pass looks at nothing.
        assert_eq!(
            store.prune_answers(500, 1000, 100).await.unwrap(),
            Pruned::default()
        );
        // The markers stay however late the next pass is.
        store.prune_answers(i64::MAX, i64::MAX, 100).await.unwrap();
        assert_eq!(store.expired("app", "old").await.unwrap(), Some(100));
        assert_eq!(store.expired("app", "new").await.unwrap(), Some(900));
    }

    /// A pass looks at no more than its bound; passes that follow finish the work.
    pub(crate) async fn a_pass_is_bounded(store: &dyn StateStore) {
        for i in 0..10 {
            store
                .put_request("app", &format!("r{i}"), &signed(100 + i))
                .await
                .unwrap();
        }
        let mut passes = Vec::new();
        loop {
            let done = store.prune_answers(500, 1000, 3).await.unwrap();
            assert!(done.examined <= 3, "{done:?}");
            passes.push(done.expired);
            if !done.more {
                break;
            }
        }
        assert_eq!(passes, vec![3, 3, 3, 1]);
        for i in 0..10 {
            let id = format!("r{i}");
            assert_eq!(store.get_request("app", &id).await.unwrap(), None);
            assert_eq!(store.expired("app", &id).await.unwrap(), Some(100 + i));
        }
    }

    /// A request waiting for approval keeps its record whatever the retention; once its
    /// wait ended, its retention counts from the end (at the latest its deadline).
    pub(crate) async fn waiting_requests_are_not_pruned(store: &dyn StateStore) {
        let waiting = answer(100, StoredOutcome::Pending);
        store.put_request("app", "w", &waiting).await.unwrap();
        store
            .put_pending(&pending("app", "w", 5000, Status::Pending))
            .await
            .unwrap();
        let done = store.prune_answers(1000, 2000, 100).await.unwrap();
        assert_eq!(done.expired, 0, "{done:?}");
        assert_eq!(
            store
                .get_request("app", "w")
                .await
                .unwrap()
                .map(|r| r.outcome),
            Some(StoredOutcome::Pending)
        );
        assert!(store.get_pending("app", "w").await.unwrap().is_some());
        assert_eq!(store.expired("app", "w").await.unwrap(), None);
        // Still waiting long after a retention would have passed: kept.
        assert_eq!(
            store.prune_answers(4000, 4500, 100).await.unwrap().expired,
            0
        );
        assert!(store.get_request("app", "w").await.unwrap().is_some());
        // The deadline passed and the wait ended: expired one retention after the deadline.
        store
            .put_pending(&pending("app", "w", 5000, Status::Expired))
            .await
            .unwrap();
        assert_eq!(
            store.prune_answers(4999, 6000, 100).await.unwrap().expired,
            0
        );
        assert!(store.get_request("app", "w").await.unwrap().is_some());
        assert_eq!(
            store.prune_answers(5001, 7000, 100).await.unwrap().expired,
            1
        );
        assert_eq!(store.get_request("app", "w").await.unwrap(), None);
        assert_eq!(store.get_pending("app", "w").await.unwrap(), None);
        assert_eq!(store.expired("app", "w").await.unwrap(), Some(5000));
        assert!(store.open_pending().await.unwrap().is_empty());
    }

    /// An answer stored again at a later time expires by its later time; `put_expired`
    /// replaces an answer by a marker.
    pub(crate) async fn later_answers_and_restored_markers(store: &dyn StateStore) {
        store
            .put_request("app", "again", &signed(100))
            .await
            .unwrap();
        store
            .put_request("app", "again", &signed(800))
            .await
            .unwrap();
        let done = store.prune_answers(500, 1000, 100).await.unwrap();
        assert_eq!(done.expired, 0, "{done:?}");
        assert_eq!(
            store.get_request("app", "again").await.unwrap(),
            Some(signed(800))
        );
        store
            .put_request("app", "restored", &signed(100))
            .await
            .unwrap();
        store.put_expired("app", "restored", 100).await.unwrap();
        assert_eq!(store.get_request("app", "restored").await.unwrap(), None);
        assert_eq!(store.expired("app", "restored").await.unwrap(), Some(100));
        store.put_expired("app", "never-stored", 42).await.unwrap();
        assert_eq!(
            store.expired("app", "never-stored").await.unwrap(),
            Some(42)
        );
        assert_eq!(
            store.prune_answers(900, 1000, 100).await.unwrap().expired,
            1
        );
        assert_eq!(store.expired("app", "again").await.unwrap(), Some(800));
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_retention_contract() {
        prunes_old_answers_to_markers(&MemoryStore::new()).await;
        a_pass_is_bounded(&MemoryStore::new()).await;
        waiting_requests_are_not_pruned(&MemoryStore::new()).await;
        later_answers_and_restored_markers(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn the_sled_store_keeps_the_retention_contract() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| SledStore::open(&dir.path().join(name)).unwrap();
        prunes_old_answers_to_markers(&open("a")).await;
        a_pass_is_bounded(&open("b")).await;
        waiting_requests_are_not_pruned(&open("c")).await;
        later_answers_and_restored_markers(&open("d")).await;
    }

    #[test]
    fn the_verdict_never_expires_a_wait_that_has_not_ended() {
        let waiting = answer(100, StoredOutcome::Pending);
        for status in [Status::Pending, Status::Signing] {
            let p = pending("app", "w", 200, status);
            for now in [150, 300, i64::MAX / 2] {
                let v = verdict(100, Some(&waiting), Some(&p), now, now);
                assert!(
                    matches!(v, Verdict::Keep(t) if t >= now),
                    "{status:?} {now}: {v:?}"
                );
            }
        }
        assert_eq!(
            verdict(100, Some(&waiting), None, 1000, 1000),
            Verdict::Keep(1000)
        );
        assert_eq!(verdict(100, None, None, 1000, 1000), Verdict::Drop);
        assert_eq!(
            verdict(99, Some(&signed(100)), None, 1000, 1000),
            Verdict::Drop
        );
    }
}
