//! Durable daemon state: idempotency records, the spend ledger of policy limits, and requests
//! waiting for approval with their votes.
//!
//! The [`StateStore`] trait is the seam (its contract is on the trait); [`SledStore`] is the
//! embedded default and [`MemoryStore`] keeps everything in memory, for tests of the pipeline
//! in process. The audit log, not this store, is the source of truth after a crash.

mod memory;
pub mod reconcile;
mod sled;
pub mod spend;

use std::path::Path;

pub use self::memory::MemoryStore;
pub use self::sled::SledStore;
pub use self::spend::{Charge, Exceeded, Used};
pub use crate::approvals::PendingRecord;

/// What the daemon remembers about one `request_id` of one client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRequest {
    /// Hex SHA-256 fingerprint of the request.
    pub fingerprint: String,
    /// The gRPC method.
    pub method: String,
    /// How it ended.
    pub outcome: StoredOutcome,
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
    /// A key part is not storable (a NUL byte, or too long). The caller validates first, so
    /// this is a bug upstream.
    #[error("state store: invalid key: {0}")]
    InvalidKey(String),
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
///
/// [`reserve`]: StateStore::reserve
/// [`rereserve`]: StateStore::rereserve
/// [`release`]: StateStore::release
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The stored request, if any.
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

    /// Replaces every reservation with `entries` (the signed spend reconciled from the audit
    /// log at start-up); durable when this returns.
    async fn reconcile(&self, entries: Vec<spend::Entry>) -> Result<(), StateError>;

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
}

/// Opens the default store in `dir` (created with mode 0700 if missing).
pub fn open_sled(dir: &Path) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    Ok(std::sync::Arc::new(SledStore::open(dir)?))
}
