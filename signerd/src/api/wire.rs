//! Outcomes to protobuf: the one place that knows which response message carries what.
//!
//! Also the stored form of a signed answer, which is the method's encoded response message
//! (as the state store has always kept it): [`encode_answer`] and [`decode_answer`] are its
//! only writer and reader. This module depends on the domain types only, never on the service.

use prost::Message;
use signerd_proto::v1;

use crate::approvals::{self as quorum, PendingRecord, Status, Vote};
use crate::audit::Receipt;
use crate::chain::evm::SignedTx;
use crate::request::{
    Evaluation, Method, PolicyReloaded, RequestState, SignOutcome, SignatureParts, Signed,
    VoteOutcome,
};
use crate::service::VoteRequest;
use crate::state::{StoredOutcome, StoredRequest};

/// A signing response message.
pub trait SignResponse: Message + Default + Sized {
    /// Sets the signature, what was signed and (for transactions) the signed transaction.
    fn set_signed(&mut self, sig: v1::Signature, signing_hash: [u8; 32], tx: Option<SignedTx>);
    /// The signature, what was signed and the signed transaction, back.
    fn signed(&self) -> (Option<&v1::Signature>, Option<[u8; 32]>, Option<SignedTx>);
    /// Sets the receipt.
    fn set_receipt(&mut self, receipt: v1::AuditReceipt);
    /// The receipt.
    fn receipt(&self) -> Option<&v1::AuditReceipt>;
    /// Sets the evaluation of a dry run.
    fn set_evaluation(&mut self, evaluation: v1::PolicyEvaluation);
    /// Sets the status, and what a pending request waits for.
    fn set_status(&mut self, status: v1::SignStatus, pending: Option<v1::PendingApproval>);

    /// The response for `outcome`.
    fn from_outcome(outcome: SignOutcome) -> Self {
        let mut r = Self::default();
        match outcome {
            SignOutcome::Signed(s) => fill_signed(&mut r, s),
            SignOutcome::Pending { record, now } => r.set_status(
                v1::SignStatus::PendingApproval,
                Some(pending_proto(&record, now)),
            ),
            SignOutcome::Evaluated(e) => r.set_evaluation(evaluation_proto(e)),
        }
        r
    }
}

/// The fields every response has alike: `receipt`, `evaluation`, `status` and `pending`.
macro_rules! common_fields {
    () => {
        fn set_receipt(&mut self, receipt: v1::AuditReceipt) {
            self.receipt = Some(receipt);
        }
        fn receipt(&self) -> Option<&v1::AuditReceipt> {
            self.receipt.as_ref()
        }
        fn set_evaluation(&mut self, evaluation: v1::PolicyEvaluation) {
            self.evaluation = Some(evaluation);
        }
        fn set_status(&mut self, status: v1::SignStatus, pending: Option<v1::PendingApproval>) {
            self.status = status.into();
            self.pending = pending;
        }
    };
}

impl SignResponse for v1::SignEvmTransactionResponse {
    fn set_signed(&mut self, sig: v1::Signature, signing_hash: [u8; 32], tx: Option<SignedTx>) {
        if let Some(tx) = tx {
            self.raw_transaction = tx.raw;
            self.transaction_hash = tx.hash.to_vec();
        }
        self.signature = Some(sig);
        self.signing_hash = signing_hash.to_vec();
    }
    fn signed(&self) -> (Option<&v1::Signature>, Option<[u8; 32]>, Option<SignedTx>) {
        let sig = self.signature.as_ref();
        let tx = <[u8; 32]>::try_from(self.transaction_hash.as_slice())
            .ok()
            .map(|hash| SignedTx {
                raw: self.raw_transaction.clone(),
                hash: hash.into(),
                v: sig.map_or(0, |s| s.v),
            });
        (sig, self.signing_hash.as_slice().try_into().ok(), tx)
    }
    common_fields!();
}

impl SignResponse for v1::SignEvmMessageResponse {
    fn set_signed(&mut self, sig: v1::Signature, signing_hash: [u8; 32], _: Option<SignedTx>) {
        self.signature = Some(sig);
        self.signing_hash = signing_hash.to_vec();
    }
    fn signed(&self) -> (Option<&v1::Signature>, Option<[u8; 32]>, Option<SignedTx>) {
        let hash = self.signing_hash.as_slice().try_into().ok();
        (self.signature.as_ref(), hash, None)
    }
    common_fields!();
}

impl SignResponse for v1::SignTypedDataResponse {
    fn set_signed(&mut self, sig: v1::Signature, signing_hash: [u8; 32], _: Option<SignedTx>) {
        self.signature = Some(sig);
        self.signing_hash = signing_hash.to_vec();
    }
    fn signed(&self) -> (Option<&v1::Signature>, Option<[u8; 32]>, Option<SignedTx>) {
        let hash = self.signing_hash.as_slice().try_into().ok();
        (self.signature.as_ref(), hash, None)
    }
    common_fields!();
}

impl SignResponse for v1::SignDigestResponse {
    /// A digest's response does not repeat the digest.
    fn set_signed(&mut self, sig: v1::Signature, _: [u8; 32], _: Option<SignedTx>) {
        self.signature = Some(sig);
    }
    fn signed(&self) -> (Option<&v1::Signature>, Option<[u8; 32]>, Option<SignedTx>) {
        (self.signature.as_ref(), Some([0; 32]), None)
    }
    common_fields!();
}

fn fill_signed<R: SignResponse>(r: &mut R, s: Signed) {
    let sig = s.signature;
    r.set_signed(
        v1::Signature {
            r: sig.r,
            s: sig.s,
            y_parity: sig.y_parity,
            v: sig.v,
            bytes: sig.bytes,
        },
        s.signing_hash,
        s.tx,
    );
    r.set_receipt(v1::AuditReceipt {
        seq: s.receipt.seq,
        leaf_hash: s.receipt.leaf_hash.to_vec(),
    });
    r.set_status(v1::SignStatus::Signed, None);
}

fn evaluation_proto(e: Evaluation) -> v1::PolicyEvaluation {
    v1::PolicyEvaluation {
        decision: e.decision.to_owned(),
        rules: e.rules,
        reason: e.reason,
        explanation: e.explanation,
        policy_serial: e.policy_serial,
        policy_hash: e.policy_hash,
    }
}

/// The stored form of a signed answer to a `method` request: its encoded response.
pub fn encode_answer(method: Method, signed: Signed) -> Vec<u8> {
    let outcome = SignOutcome::Signed(signed);
    match method {
        Method::SignEvmTransaction => {
            v1::SignEvmTransactionResponse::from_outcome(outcome).encode_to_vec()
        }
        Method::SignEvmMessage => v1::SignEvmMessageResponse::from_outcome(outcome).encode_to_vec(),
        Method::SignTypedData => v1::SignTypedDataResponse::from_outcome(outcome).encode_to_vec(),
        Method::SignDigest => v1::SignDigestResponse::from_outcome(outcome).encode_to_vec(),
    }
}

/// A stored answer that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored response cannot be decoded")]
pub struct BadAnswer;

/// A signed answer from its stored form (see [`encode_answer`]). A digest's answer carries
/// no signing hash; it reads back as zeros, which its response never shows.
pub fn decode_answer(method: Method, bytes: &[u8]) -> Result<Signed, BadAnswer> {
    fn read<R: SignResponse>(bytes: &[u8]) -> Result<Signed, BadAnswer> {
        let r = R::decode(bytes).map_err(|_| BadAnswer)?;
        let (sig, signing_hash, tx) = r.signed();
        let (sig, signing_hash, receipt) = (
            sig.ok_or(BadAnswer)?,
            signing_hash.ok_or(BadAnswer)?,
            r.receipt().ok_or(BadAnswer)?,
        );
        Ok(Signed {
            signature: SignatureParts {
                r: sig.r.clone(),
                s: sig.s.clone(),
                y_parity: sig.y_parity,
                v: sig.v,
                bytes: sig.bytes.clone(),
            },
            signing_hash,
            tx,
            receipt: Receipt {
                seq: receipt.seq,
                leaf_hash: receipt
                    .leaf_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| BadAnswer)?,
            },
        })
    }
    match method {
        Method::SignEvmTransaction => read::<v1::SignEvmTransactionResponse>(bytes),
        Method::SignEvmMessage => read::<v1::SignEvmMessageResponse>(bytes),
        Method::SignTypedData => read::<v1::SignTypedDataResponse>(bytes),
        Method::SignDigest => read::<v1::SignDigestResponse>(bytes),
    }
}

/// A stored answer as `GetSignRequest` returns it.
pub fn stored_response(
    method: Method,
    bytes: &[u8],
) -> Result<v1::sign_request_state::Response, BadAnswer> {
    use v1::sign_request_state::Response;
    let bad = |_| BadAnswer;
    Ok(match method {
        Method::SignEvmTransaction => {
            Response::Transaction(v1::SignEvmTransactionResponse::decode(bytes).map_err(bad)?)
        }
        Method::SignEvmMessage => {
            Response::Message(v1::SignEvmMessageResponse::decode(bytes).map_err(bad)?)
        }
        Method::SignTypedData => {
            Response::TypedData(v1::SignTypedDataResponse::decode(bytes).map_err(bad)?)
        }
        Method::SignDigest => Response::Digest(v1::SignDigestResponse::decode(bytes).map_err(bad)?),
    })
}

/// A pending request's status on the wire.
pub fn status_proto(s: Status) -> v1::SignStatus {
    match s {
        Status::Pending | Status::Signing => v1::SignStatus::PendingApproval,
        Status::Signed => v1::SignStatus::Signed,
        Status::Rejected => v1::SignStatus::Rejected,
        Status::Expired => v1::SignStatus::Expired,
        Status::Denied => v1::SignStatus::Denied,
        Status::Failed => v1::SignStatus::Failed,
    }
}

/// What a pending request waits for, with who has approved so far (as of `now`).
pub fn pending_proto(rec: &PendingRecord, now: i64) -> v1::PendingApproval {
    let t = quorum::tally(&rec.requirements, &rec.votes, &rec.client, now);
    v1::PendingApproval {
        request_id: rec.request_id.clone(),
        fingerprint: rec.fingerprint.clone(),
        requirements: rec
            .requirements
            .iter()
            .zip(t.approved_by)
            .map(|(r, approved_by)| v1::ApprovalRequirement {
                group: r.group.clone(),
                min: r.min,
                members: r.members.clone(),
                approved_by,
                veto: r.veto,
            })
            .collect(),
        deadline_unix: rec.deadline,
        rules: rec.rules.clone(),
        policy_serial: rec.policy_serial,
        policy_hash: rec.policy_hash.clone(),
    }
}

/// An approval as the `Approve` RPC received it.
pub fn approve_request(r: v1::ApproveRequest) -> VoteRequest {
    VoteRequest {
        client: r.client,
        request_id: r.request_id,
        fingerprint: r.fingerprint,
        expires_unix: r.expires_unix,
        signature: r.signature,
        vote: Vote::Approve,
        reason: None,
    }
}

/// A rejection as the `Reject` RPC received it (an empty reason is none).
pub fn reject_request(r: v1::RejectRequest) -> VoteRequest {
    VoteRequest {
        client: r.client,
        request_id: r.request_id,
        fingerprint: r.fingerprint,
        expires_unix: r.expires_unix,
        signature: r.signature,
        vote: Vote::Reject,
        reason: (!r.reason.is_empty()).then_some(r.reason),
    }
}

/// A request's state as `GetSignRequest` and `WatchSignRequest` answer it. A signed answer
/// wins over the approval record (which may still say "signing" for a moment); a denial without
/// an approval record is the policy's.
pub fn request_state_proto(st: RequestState) -> Result<v1::SignRequestState, BadAnswer> {
    let mut out = v1::SignRequestState {
        request_id: st.request_id,
        ..Default::default()
    };
    if let Some(rec) = &st.pending {
        out.status = status_proto(rec.status).into();
        out.pending = Some(pending_proto(rec, st.now));
        out.reason = rec.reason.clone().unwrap_or_default();
    }
    match st.answer {
        Some(StoredRequest {
            outcome: StoredOutcome::Signed { response },
            method,
            ..
        }) => {
            let method = Method::parse(&method).ok_or(BadAnswer)?;
            let bytes = hex::decode(response).map_err(|_| BadAnswer)?;
            out.status = v1::SignStatus::Signed.into();
            out.reason.clear();
            out.response = Some(stored_response(method, &bytes)?);
        }
        Some(StoredRequest {
            outcome: StoredOutcome::Denied { rule, reason },
            ..
        }) if st.pending.is_none() => {
            out.status = v1::SignStatus::Denied.into();
            out.reason = match rule {
                Some(rule) => format!("{reason} (rule: {rule})"),
                None => reason,
            };
        }
        _ => {}
    }
    Ok(out)
}

/// A vote's answer.
pub fn vote_proto(v: VoteOutcome) -> v1::ApprovalResponse {
    v1::ApprovalResponse {
        status: status_proto(v.record.status).into(),
        pending: Some(pending_proto(&v.record, v.now)),
        audit_seq: v.audit_seq,
        quorum_reached: v.quorum_reached,
    }
}

/// The requests waiting for approval, as approvers see them (as of `now`).
pub fn pending_list_proto(open: &[PendingRecord], now: i64) -> v1::ListPendingResponse {
    let requests = open
        .iter()
        .map(|rec| v1::PendingRequest {
            client: rec.client.clone(),
            request_id: rec.request_id.clone(),
            method: rec.method.clone(),
            key_id: rec.key_id.clone(),
            action_json: rec.action.to_string(),
            explanation: rec.explanation.clone(),
            pending: Some(pending_proto(rec, now)),
            votes: rec
                .votes
                .iter()
                .map(|v| v1::ApprovalVote {
                    approver: v.approver.clone(),
                    decision: v.vote.as_str().to_owned(),
                    expires_unix: v.expires,
                    reason: v.reason.clone().unwrap_or_default(),
                })
                .collect(),
            created_unix: rec.created,
            // Filled by the caller, which knows the policy in force.
            summary: Vec::new(),
        })
        .collect();
    v1::ListPendingResponse { requests }
}

/// A policy reload's answer.
pub fn reload_proto(r: PolicyReloaded) -> v1::ReloadPolicyResponse {
    v1::ReloadPolicyResponse {
        serial: r.serial,
        hash: r.hash,
        previous_serial: r.previous_serial,
        previous_hash: r.previous_hash,
        changed: r.changed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn signed(tx: bool, ed25519: bool) -> Signed {
        let signature = if ed25519 {
            SignatureParts {
                bytes: vec![9; 64],
                ..SignatureParts::default()
            }
        } else {
            SignatureParts {
                r: vec![1; 32],
                s: vec![2; 32],
                y_parity: 1,
                v: if tx { 1 } else { 28 },
                bytes: if tx {
                    Vec::new()
                } else {
                    [[1; 32], [2; 32]].concat()
                },
            }
        };
        Signed {
            signature,
            signing_hash: [3; 32],
            tx: tx.then(|| SignedTx {
                raw: vec![0x02, 0xf8],
                hash: [4; 32].into(),
                v: 1,
            }),
            receipt: Receipt {
                seq: 42,
                leaf_hash: [5; 32],
            },
        }
    }

    /// A stored answer reads back as what was stored, and stores again as the same bytes, for
    /// every method: replays and restored answers are byte for byte the first answer.
    #[test]
    fn stored_answers_read_back_exactly() {
        for &method in Method::ALL {
            let s = signed(
                method == Method::SignEvmTransaction,
                method == Method::SignDigest,
            );
            let bytes = encode_answer(method, s.clone());
            let back = decode_answer(method, &bytes).unwrap();
            assert_eq!(encode_answer(method, back.clone()), bytes, "{method}");
            if method != Method::SignDigest {
                assert_eq!(back, s, "{method}");
            }
            assert!(stored_response(method, &bytes).is_ok());
        }
        assert!(decode_answer(Method::SignEvmMessage, b"\xff\xff").is_err());
    }
}
