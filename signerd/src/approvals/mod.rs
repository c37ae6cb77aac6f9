//! Quorum approvals: the request fingerprint approvers sign, the exact message they sign, the
//! verification of their Ed25519 signatures, and the tally that decides whether every quorum
//! is reached or a veto ended the request.
//!
//! This module is pure (no I/O, no clock): the service passes the time in. It must never count
//! the requester, count one person twice, count a vote whose signature does not verify against
//! the key the policy registers for that person, or count a vote that has expired. The formats
//! here are normative: `docs/approvals.md` and `docs/audit-log.md` specify them byte for byte so
//! that an auditor can verify every grant without trusting signerd. The approval message and its
//! signature check live in [`signerd_auditor::approval`], the crate auditors build alone; they
//! are re-exported here.

use std::collections::BTreeSet;

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use signerd_auditor::approval::SignatureError;

pub use signerd_auditor::approval::{Vote, message};

/// Longest accepted rejection reason, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// Domain tag of the approval fingerprint.
const FINGERPRINT_TAG: &[u8] = b"signerd.approval.fingerprint.v1\0";

/// Why a vote is refused. Messages name the approver and the request, never key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The caller lacks the `approver` role.
    #[error("`{0}` does not have the `approver` role")]
    NotApprover(String),
    /// The requester tried to vote on their own request.
    #[error("`{0}` made this request and cannot approve or reject it")]
    Requester(String),
    /// The caller is in none of the groups the request waits for.
    #[error("`{approver}` is a member of none of the groups this request needs ({groups})")]
    NotMember {
        /// The caller.
        approver: String,
        /// The required groups.
        groups: String,
    },
    /// The policy registers no key for the caller.
    #[error("`{0}` has no key in the policy's [approvers]")]
    NoKey(String),
    /// The signature does not verify.
    #[error(
        "the signature does not verify with the key registered for `{0}` over this request's approval message"
    )]
    BadSignature(String),
    /// The fingerprint given is not the request's.
    #[error(
        "fingerprint {given} is not this request's ({actual}); the request differs from the one that was reviewed"
    )]
    WrongFingerprint {
        /// What the approver signed.
        given: String,
        /// The request's fingerprint.
        actual: String,
    },
    /// The vote's expiry is not in (now, deadline].
    #[error(
        "expires_unix {expires} ({}) must be after now ({}) and at most the request's deadline ({})",
        rfc3339(*expires),
        rfc3339(*now),
        rfc3339(*deadline)
    )]
    BadExpiry {
        /// The vote's expiry.
        expires: i64,
        /// Now.
        now: i64,
        /// The request's deadline.
        deadline: i64,
    },
    /// The approver has a vote on this request that has not expired.
    #[error("`{0}` has already voted on this request; each person counts once")]
    AlreadyVoted(String),
    /// The reason is too long.
    #[error("reason: at most {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    /// The signature is not 64 bytes.
    #[error("signature: must be 64 bytes, got {0}")]
    SignatureLength(usize),
}

/// The approval fingerprint: SHA-256 over the domain tag, the method, the key id, the chain id
/// (decimal, empty when the request has none), each followed by a NUL byte, then the 32 bytes
/// signerd signs (the transaction's signing hash, the EIP-191 or EIP-712 hash, or the raw
/// digest; they commit to every transaction field and the chain id) and the 32-byte SHA-256 of
/// the policy file the request was evaluated under.
pub fn fingerprint(
    method: &str,
    key_id: &str,
    chain_id: Option<u64>,
    commitment: &[u8; 32],
    policy_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(FINGERPRINT_TAG);
    h.update(method.as_bytes());
    h.update([0]);
    h.update(key_id.as_bytes());
    h.update([0]);
    if let Some(c) = chain_id {
        h.update(c.to_string().as_bytes());
    }
    h.update([0]);
    h.update(commitment);
    h.update(policy_hash);
    h.finalize().into()
}

/// Signs an approval message with an approver's key (used by `signerctl` and tests).
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    key.sign(message).to_bytes()
}

/// Verifies `signature` over `message` with `public_key` (strict RFC 8032 verification, which
/// refuses small-order keys and non-canonical signatures).
pub fn verify(
    approver: &str,
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), ApprovalError> {
    signerd_auditor::approval::verify(public_key, message, signature).map_err(|e| match e {
        SignatureError::Length(n) => ApprovalError::SignatureLength(n),
        _ => ApprovalError::BadSignature(approver.to_owned()),
    })
}

/// One group's part of the quorum a pending request waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The group.
    pub group: String,
    /// Distinct members who must approve.
    pub min: u32,
    /// The group's members when the request was made.
    pub members: Vec<String>,
    /// Whether one member's rejection ends the request.
    pub veto: bool,
}

impl From<&signerd_policy::ApprovalRequirement> for Requirement {
    fn from(r: &signerd_policy::ApprovalRequirement) -> Requirement {
        Requirement {
            group: r.group.clone(),
            min: r.min,
            members: r.members.clone(),
            veto: r.veto,
        }
    }
}

/// A verified vote, as stored and as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVote {
    /// The approver's client id.
    pub approver: String,
    /// Approve or reject.
    pub vote: Vote,
    /// Unix seconds after which it no longer counts.
    pub expires: i64,
    /// The Ed25519 signature, hex.
    pub signature: String,
    /// The public key it verified with, hex.
    pub public_key: String,
    /// SHA-256 of the approver's client certificate, hex.
    pub cert_sha256: String,
    /// Why (rejections).
    pub reason: Option<String>,
    /// When it was recorded, Unix seconds.
    pub ts: i64,
}

/// Where a request that needed approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for approvals.
    Pending,
    /// Quorum reached; signing in progress.
    Signing,
    /// Signed.
    Signed,
    /// Vetoed.
    Rejected,
    /// The deadline passed.
    Expired,
    /// Denied when evaluated again at quorum.
    Denied,
    /// Signing failed, or signerd stopped while signing.
    Failed,
}

impl Status {
    /// Whether the request can still change.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Signing)
    }
}

/// Everything signerd keeps about a request that needed approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// The requester's client id.
    pub client: String,
    /// The requester's roles at request time (the policy is evaluated again with them).
    pub roles: Vec<String>,
    /// SHA-256 of the requester's certificate, hex.
    pub cert_sha256: String,
    /// The request id.
    pub request_id: String,
    /// The gRPC method.
    pub method: String,
    /// The key.
    pub key_id: String,
    /// The encoded gRPC request, hex (decoded again to sign).
    pub request: String,
    /// The idempotency fingerprint, hex.
    pub request_fingerprint: String,
    /// The approval fingerprint, hex.
    pub fingerprint: String,
    /// When it was made, Unix seconds.
    pub created: i64,
    /// When it expires, Unix seconds.
    pub deadline: i64,
    /// The `require_approval` rules that matched.
    pub rules: Vec<String>,
    /// The stacked requirements.
    pub requirements: Vec<Requirement>,
    /// Serial of the policy at request time.
    pub policy_serial: u64,
    /// Hash of that policy, hex.
    pub policy_hash: String,
    /// The decoded action.
    pub action: serde_json::Value,
    /// The policy's explanation.
    pub explanation: Vec<String>,
    /// Verified votes, in order.
    pub votes: Vec<StoredVote>,
    /// Where it stands.
    pub status: Status,
    /// Why it ended, when it ended unsigned.
    pub reason: Option<String>,
    /// When it reached quorum and began to be signed (Unix seconds); records of earlier
    /// releases have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_since: Option<i64>,
}

/// The result of counting the votes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Per requirement (same order): members with a counting approval.
    pub approved_by: Vec<Vec<String>>,
    /// Whether one assignment of distinct people meets every requirement.
    pub met: bool,
    /// A rejection that vetoes the request: (approver, reason).
    pub vetoed_by: Option<(String, String)>,
}

/// Counts `votes` against `requirements` at `now`: only approvals by someone other than
/// `requester`, not expired, by a member of the group count; a person fills at most one place
/// across all groups (a bipartite matching of people to places); a rejection by a member of a
/// group with veto vetoes.
pub fn tally(
    requirements: &[Requirement],
    votes: &[StoredVote],
    requester: &str,
    now: i64,
) -> Tally {
    let approvers: BTreeSet<&str> = votes
        .iter()
        .filter(|v| v.vote == Vote::Approve && v.expires > now && v.approver != requester)
        .map(|v| v.approver.as_str())
        .collect();
    let approved_by: Vec<Vec<String>> = requirements
        .iter()
        .map(|r| {
            r.members
                .iter()
                .filter(|m| approvers.contains(m.as_str()))
                .cloned()
                .collect()
        })
        .collect();
    let vetoed_by = votes
        .iter()
        .filter(|v| v.vote == Vote::Reject && v.approver != requester)
        .find(|v| {
            requirements
                .iter()
                .any(|r| r.veto && r.members.contains(&v.approver))
        })
        .map(|v| (v.approver.clone(), v.reason.clone().unwrap_or_default()));
    Tally {
        met: quorum_met(requirements, &approved_by),
        approved_by,
        vetoed_by,
    }
}

/// Whether distinct people can fill every place: `min` places per group, each filled by one of
/// the group's approvers, nobody in two places (Kuhn's augmenting paths; sizes are small).
fn quorum_met(requirements: &[Requirement], approved_by: &[Vec<String>]) -> bool {
    // One slot per required approval, naming its group.
    let slots: Vec<usize> = requirements
        .iter()
        .enumerate()
        .flat_map(|(g, r)| std::iter::repeat_n(g, r.min as usize))
        .collect();
    let mut holder: Vec<Option<&str>> = vec![None; slots.len()];
    let people: BTreeSet<&str> = approved_by.iter().flatten().map(String::as_str).collect();
    let mut filled = 0;
    for person in people {
        let mut seen = vec![false; slots.len()];
        if place(person, &slots, approved_by, &mut holder, &mut seen) {
            filled += 1;
        }
    }
    filled == slots.len()
}

fn place<'a>(
    person: &'a str,
    slots: &[usize],
    approved_by: &'a [Vec<String>],
    holder: &mut Vec<Option<&'a str>>,
    seen: &mut Vec<bool>,
) -> bool {
    for (i, g) in slots.iter().enumerate() {
        let eligible = approved_by
            .get(*g)
            .is_some_and(|a| a.iter().any(|m| m == person));
        if !eligible || seen[i] {
            continue;
        }
        seen[i] = true;
        let moved = match holder[i] {
            None => true,
            Some(other) => place(other, slots, approved_by, holder, seen),
        };
        if moved {
            holder[i] = Some(person);
            return true;
        }
    }
    false
}

/// A point in time for people: RFC 3339 in UTC to the second (`2026-12-04T20:16:22Z`), or the
/// raw number when it is outside what a clock can show.
pub fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        .filter(|t| *t < std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_800))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| format!("{unix} (seconds since 1970)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn times_in_messages_are_rfc3339() {
        assert_eq!(super::rfc3339(1_796_408_445), "2026-12-04T18:20:45Z");
        assert_eq!(super::rfc3339(-1), "-1 (seconds since 1970)");
        let e = super::ApprovalError::BadExpiry {
            expires: 1_796_408_445,
            now: 1_796_408_446,
            deadline: 1_796_408_500,
        };
        assert_eq!(
            e.to_string(),
            "expires_unix 1796408445 (2026-12-04T18:20:45Z) must be after now \
             (2026-12-04T18:20:46Z) and at most the request's deadline (2026-12-04T18:21:40Z)"
        );
    }

    fn req(group: &str, min: u32, members: &[&str], veto: bool) -> Requirement {
        Requirement {
            group: group.into(),
            min,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            veto,
        }
    }

    fn vote(who: &str, v: Vote, expires: i64) -> StoredVote {
        StoredVote {
            approver: who.into(),
            vote: v,
            expires,
            signature: String::new(),
            public_key: String::new(),
            cert_sha256: String::new(),
            reason: Some("no".into()),
            ts: 0,
        }
    }

    #[test]
    fn quorum_counts_distinct_people_once_across_groups() {
        let reqs = [
            req("treasury", 2, &["a", "b", "c"], true),
            req("security", 1, &["b", "s"], true),
        ];
        let approve = |who: &[&str]| -> Vec<StoredVote> {
            who.iter().map(|w| vote(w, Vote::Approve, 100)).collect()
        };
        // b cannot fill a treasury place and the security place at once.
        assert!(!tally(&reqs, &approve(&["a", "b"]), "x", 0).met);
        assert!(tally(&reqs, &approve(&["a", "b", "c"]), "x", 0).met);
        assert!(tally(&reqs, &approve(&["a", "c", "s"]), "x", 0).met);
        // Assignment matters: a greedy choice of b for treasury must be undone.
        assert!(tally(&reqs, &approve(&["b", "a", "c"]), "x", 0).met);
        // The requester never counts, expired approvals never count.
        assert!(!tally(&reqs, &approve(&["a", "c", "s"]), "s", 0).met);
        assert!(!tally(&reqs, &approve(&["a", "c", "s"]), "x", 100).met);
        // Duplicates count once.
        assert!(!tally(&reqs, &approve(&["a", "a", "s"]), "x", 0).met);
    }

    #[test]
    fn veto_only_from_members_of_groups_with_veto() {
        let reqs = [req("t", 1, &["a", "b"], false), req("s", 1, &["s"], true)];
        assert_eq!(
            tally(&reqs, &[vote("a", Vote::Reject, 9)], "x", 0).vetoed_by,
            None
        );
        assert_eq!(
            tally(&reqs, &[vote("s", Vote::Reject, 9)], "x", 0).vetoed_by,
            Some(("s".into(), "no".into()))
        );
    }

    #[test]
    fn fingerprint_binds_every_part() {
        let base = fingerprint("SignEvmTransaction", "hot", Some(1), &[1; 32], &[2; 32]);
        assert_ne!(
            base,
            fingerprint("SignEvmMessage", "hot", Some(1), &[1; 32], &[2; 32])
        );
        assert_ne!(
            base,
            fingerprint("SignEvmTransaction", "ho", Some(1), &[1; 32], &[2; 32])
        );
        assert_ne!(
            base,
            fingerprint("SignEvmTransaction", "hot", Some(11), &[1; 32], &[2; 32])
        );
        assert_ne!(
            base,
            fingerprint("SignEvmTransaction", "hot", None, &[1; 32], &[2; 32])
        );
        assert_ne!(
            base,
            fingerprint("SignEvmTransaction", "hot", Some(1), &[3; 32], &[2; 32])
        );
        assert_ne!(
            base,
            fingerprint("SignEvmTransaction", "hot", Some(1), &[1; 32], &[3; 32])
        );
    }

    #[test]
    fn signatures_bind_the_message() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let fp = hex::encode([9u8; 32]);
        let msg = message("app", "r1", &fp, Vote::Approve, 100);
        assert_eq!(
            String::from_utf8(msg.clone()).unwrap(),
            format!(
                "signerd approval v1\nclient: app\nrequest_id: r1\nfingerprint: {fp}\ndecision: approve\nexpires: 100\n"
            )
        );
        let sig = sign(&key, &msg);
        assert!(verify("bob", &public, &msg, &sig).is_ok());
        for other in [
            message("app", "r2", &fp, Vote::Approve, 100),
            message("app", "r1", &fp, Vote::Reject, 100),
            message("app", "r1", &fp, Vote::Approve, 101),
            message("ap", "r1", &fp, Vote::Approve, 100),
        ] {
            assert_eq!(
                verify("bob", &public, &other, &sig),
                Err(ApprovalError::BadSignature("bob".into()))
            );
        }
        assert_eq!(
            verify("bob", &public, &msg, &sig[..63]),
            Err(ApprovalError::SignatureLength(63))
        );
    }
}
