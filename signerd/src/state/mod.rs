//! Durable daemon state: idempotency records, the spend ledger of policy limits, and requests
//! waiting for approval with their votes.
//!
//! The [`StateStore`] trait is the seam; [`SledStore`] is the embedded default. A store call
//! is blocking and must run on a blocking thread. Every write is durable when it returns; a
//! store must never report success for a write it has not made durable, and never put secrets
//! in values, keys or errors. The audit log, not this store, is the source of truth after a
//! crash.

pub mod reconcile;
mod sled;
pub mod spend;

use std::path::Path;

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

/// Durable storage for idempotency records and limit reservations.
pub trait StateStore: Send + Sync + 'static {
    /// The stored request, if any.
    fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError>;
    /// Stores the request's answer. Not durable on return: the store makes it durable within
    /// a bounded time (or with the next durable write), and callers store only answers whose
    /// `sign.result` audit record is already durable, from which start-up restores what a
    /// crash lost.
    fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError>;

    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StateError>;

    /// Writes a small record and makes it durable: whether the store can write now.
    fn probe(&self) -> Result<(), StateError>;

    /// Atomically checks every charge against its limit and, when all fit, reserves them for
    /// `owner` (`client`, `request_id`). Nothing is reserved when any charge does not fit.
    fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError>;

    /// Releases every reservation of a request that ended unsigned.
    fn release(&self, client: &str, request_id: &str) -> Result<(), StateError>;

    /// Replaces every reservation with `entries` (the signed spend reconciled from the audit
    /// log at start-up); durable when this returns.
    fn reconcile(&self, entries: Vec<spend::Entry>) -> Result<(), StateError>;

    /// What `bucket` used in the `window_secs` before `now`.
    fn used(&self, bucket: &str, window_secs: u64, now: i64) -> Result<Used, StateError>;

    /// What `bucket` used, not counting the reservations of (`client`, `request_id`): the
    /// usage a request that waited for approval is evaluated against again.
    fn used_by_others(
        &self,
        bucket: &str,
        window_secs: u64,
        now: i64,
        client: &str,
        request_id: &str,
    ) -> Result<Used, StateError>;

    /// Atomically replaces the reservations of (`client`, `request_id`) with `charges` when
    /// they fit without them; on refusal the old reservations stay.
    fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError>;

    /// The record of a request that needed approval.
    fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError>;

    /// Stores the record of a request that needed approval; durable when this returns, with
    /// every earlier write.
    fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError>;

    /// Every record whose status is not final (pending, or signing).
    fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError>;
}

/// Opens the default store in `dir` (created with mode 0700 if missing).
pub fn open_sled(dir: &Path) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    Ok(std::sync::Arc::new(SledStore::open(dir)?))
}
