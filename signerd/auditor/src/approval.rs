//! The approval message an approver signs, and the check of that signature: what makes an
//! `approval.grant` or `approval.reject` record verifiable without trusting signerd.
//!
//! The format is normative: `docs/approvals.md` ("The fingerprint and the approval message")
//! and `docs/audit-log.md` ("Approval records") specify it byte for byte. The daemon signs
//! nothing here; it builds the same message (through this module) to check a vote before
//! counting it. This module must never accept a signature that RFC 8032's strict verification
//! refuses (small-order keys, non-canonical signatures).

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// First line of every approval message.
const MESSAGE_HEADER: &str = "signerd approval v1";

/// An approver's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// Counts toward the quorum.
    Approve,
    /// Records disagreement; ends the request when its group allows veto.
    Reject,
}

impl Vote {
    /// `approve` or `reject`, as in the signed message and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => "approve",
            Vote::Reject => "reject",
        }
    }
}

/// The exact bytes an approver signs: six lines, each ending in `\n`.
///
/// ```text
/// signerd approval v1
/// client: <requester client id>
/// request_id: <request id>
/// fingerprint: <64 lowercase hex digits>
/// decision: approve|reject
/// expires: <Unix seconds, decimal>
/// ```
pub fn message(
    client: &str,
    request_id: &str,
    fingerprint_hex: &str,
    vote: Vote,
    expires_unix: i64,
) -> Vec<u8> {
    format!(
        "{MESSAGE_HEADER}\nclient: {client}\nrequest_id: {request_id}\nfingerprint: {fingerprint_hex}\ndecision: {}\nexpires: {expires_unix}\n",
        vote.as_str()
    )
    .into_bytes()
}

/// Why an approval signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature is not 64 bytes.
    #[error("signature: must be 64 bytes, got {0}")]
    Length(usize),
    /// The public key is not a valid Ed25519 key, or the signature does not verify with it.
    #[error("the signature does not verify")]
    Invalid,
}

/// Verifies `signature` over `message` with the Ed25519 `public_key` (strict RFC 8032
/// verification, which refuses small-order keys and non-canonical signatures).
pub fn verify(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| SignatureError::Length(signature.len()))?;
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| SignatureError::Invalid)?;
    key.verify_strict(message, &Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Invalid)
}
