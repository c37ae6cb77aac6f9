//! Signing requests and their outcomes as the service sees them: typed, with no wire encoding.
//! [`crate::api`] turns them into protobuf responses; the service never builds one.

use prost::Message;
use signerd_proto::v1;

use crate::approvals::PendingRecord;
use crate::audit::Receipt;
use crate::chain::evm::SignedTx;

/// A method that signs: the gRPC method's name, as the audit log and the state store record
/// it. The audit log's own closed set, so that the two can never disagree.
pub use signerd_auditor::events::Method;

/// One signing request, as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum SignRequest {
    /// An EVM transaction.
    Transaction(v1::SignEvmTransactionRequest),
    /// An EIP-191 message.
    Message(v1::SignEvmMessageRequest),
    /// EIP-712 typed data.
    TypedData(v1::SignTypedDataRequest),
    /// A raw digest.
    Digest(v1::SignDigestRequest),
}

impl SignRequest {
    /// Its method.
    pub fn method(&self) -> Method {
        match self {
            SignRequest::Transaction(_) => Method::SignEvmTransaction,
            SignRequest::Message(_) => Method::SignEvmMessage,
            SignRequest::TypedData(_) => Method::SignTypedData,
            SignRequest::Digest(_) => Method::SignDigest,
        }
    }

    /// The client-chosen idempotency key, unchecked.
    pub fn request_id(&self) -> &str {
        match self {
            SignRequest::Transaction(r) => &r.request_id,
            SignRequest::Message(r) => &r.request_id,
            SignRequest::TypedData(r) => &r.request_id,
            SignRequest::Digest(r) => &r.request_id,
        }
    }

    /// The key asked for, unchecked.
    pub fn key_id(&self) -> &str {
        match self {
            SignRequest::Transaction(r) => &r.key_id,
            SignRequest::Message(r) => &r.key_id,
            SignRequest::TypedData(r) => &r.key_id,
            SignRequest::Digest(r) => &r.key_id,
        }
    }

    /// Its size on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            SignRequest::Transaction(r) => r.encoded_len(),
            SignRequest::Message(r) => r.encoded_len(),
            SignRequest::TypedData(r) => r.encoded_len(),
            SignRequest::Digest(r) => r.encoded_len(),
        }
    }

    /// The protobuf encoding, which a request that waits for approval is stored as.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SignRequest::Transaction(r) => r.encode_to_vec(),
            SignRequest::Message(r) => r.encode_to_vec(),
            SignRequest::TypedData(r) => r.encode_to_vec(),
            SignRequest::Digest(r) => r.encode_to_vec(),
        }
    }

    /// A request of `method` from its protobuf encoding.
    pub fn decode(method: Method, bytes: &[u8]) -> Result<SignRequest, prost::DecodeError> {
        Ok(match method {
            Method::SignEvmTransaction => {
                SignRequest::Transaction(v1::SignEvmTransactionRequest::decode(bytes)?)
            }
            Method::SignEvmMessage => {
                SignRequest::Message(v1::SignEvmMessageRequest::decode(bytes)?)
            }
            Method::SignTypedData => {
                SignRequest::TypedData(v1::SignTypedDataRequest::decode(bytes)?)
            }
            Method::SignDigest => SignRequest::Digest(v1::SignDigestRequest::decode(bytes)?),
        })
    }
}

/// A signature as every response carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureParts {
    /// ECDSA r, big-endian (empty for Ed25519).
    pub r: Vec<u8>,
    /// ECDSA s, big-endian, low-s (empty for Ed25519).
    pub s: Vec<u8>,
    /// ECDSA recovery id.
    pub y_parity: u32,
    /// `v` as the signed object encodes it (0 for Ed25519).
    pub v: u64,
    /// The whole signature: r || s || 27 + parity for messages and digests, R || S for
    /// Ed25519; empty for transactions.
    pub bytes: Vec<u8>,
}

/// A signature that is on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signature.
    pub signature: SignatureParts,
    /// What was signed: the signing hash, or the raw digest.
    pub signing_hash: [u8; 32],
    /// The signed transaction, for transactions.
    pub tx: Option<SignedTx>,
    /// The `sign.result` record's receipt.
    pub receipt: Receipt,
}

/// What a dry run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// `allow`, `deny` or `require_approval`.
    pub decision: &'static str,
    /// The deciding rules.
    pub rules: Vec<String>,
    /// Why, in a sentence.
    pub reason: String,
    /// Every step of the evaluation.
    pub explanation: Vec<String>,
    /// The policy's serial.
    pub policy_serial: u64,
    /// The policy's SHA-256, hex.
    pub policy_hash: String,
}

/// How a signing call ended, when it did not fail.
#[derive(Debug, Clone)]
pub enum SignOutcome {
    /// Signed and on record.
    Signed(Signed),
    /// Waiting for approvals: the pending request as of `now` (Unix seconds).
    Pending {
        /// The request waiting.
        record: Box<PendingRecord>,
        /// When it was read.
        now: i64,
    },
    /// Evaluated only (a dry run).
    Evaluated(Evaluation),
}

/// Where one of a client's requests stands, as the state store has it (`GetSignRequest`,
/// `WatchSignRequest`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestState {
    /// The request id.
    pub request_id: String,
    /// The record of a request that needed approval.
    pub pending: Option<PendingRecord>,
    /// The stored answer, if it has one.
    pub answer: Option<crate::state::StoredRequest>,
    /// When it was read, Unix seconds (approvals that expired by then no longer count).
    pub now: i64,
}

impl RequestState {
    /// Whether it can change no more: signed, denied, or ended while waiting for approval.
    pub fn is_final(&self) -> bool {
        use crate::state::StoredOutcome;
        let answered = self.answer.as_ref().map(|a| &a.outcome);
        if matches!(answered, Some(StoredOutcome::Signed { .. })) {
            return true;
        }
        match &self.pending {
            Some(rec) => rec.status.is_final(),
            None => matches!(answered, Some(StoredOutcome::Denied { .. })),
        }
    }
}

/// A vote that counted.
#[derive(Debug, Clone)]
pub struct VoteOutcome {
    /// The request voted on, with the vote.
    pub record: PendingRecord,
    /// When the vote was cast, Unix seconds.
    pub now: i64,
    /// The `seq` of the vote's audit record.
    pub audit_seq: u64,
    /// Whether this vote completed every quorum (the request is then being signed).
    pub quorum_reached: bool,
}

/// A policy (re)load: the policy in force and the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyReloaded {
    /// Serial in force.
    pub serial: u64,
    /// SHA-256 in force, hex.
    pub hash: String,
    /// Serial before.
    pub previous_serial: u64,
    /// SHA-256 before, hex.
    pub previous_hash: String,
    /// Whether the file differed from the running policy.
    pub changed: bool,
}
