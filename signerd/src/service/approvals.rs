//! The approval workflow inside the signing service: a request that needs approval is recorded
//! and kept (with its reservation) until every quorum is reached, a member vetoes it, or its
//! deadline passes; at quorum the policy is evaluated again and the request is signed in the
//! background through the same tail as any allowed request.
//!
//! Every step is recorded in the audit log before the state store changes, and a vote counts
//! only after its signature verified against the approver's key in the running policy. This
//! module must never sign a request that is not `Pending` with every quorum met, whose deadline
//! has passed, or that the policy denies at signing time.

use std::sync::Arc;

use signerd_policy::{ApprovalRequirement, Decision, Identity, Policy};

use super::{
    Caller, Decided, Prepared, Reservation, ServiceError, Signer, decision_record, unavailable,
    unix_now, validate_request_id,
};
use crate::approvals::{self as quorum, PendingRecord, Requirement, Status, StoredVote, Vote};
use crate::audit::events::{self, Outcome};
use crate::request::{Method, RequestState, SignOutcome, SignRequest, VoteOutcome};
use crate::state::{StoredOutcome, StoredRequest};

/// Most requests one `ListPending` answer holds (the oldest first).
const MAX_LISTED: usize = 500;

/// Longest a `WatchSignRequest` stream lasts.
pub(super) const MAX_WATCH_SECS: u64 = 3600;

/// How often due deadlines are enforced, and how often a watcher looks again without news.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after reaching quorum a request still `signing` in a shared store is taken for
/// left by a replica that stopped: far longer than signing takes (its key backend's and the
/// audit log's own bounds), while its replica's claim held it.
const STALE_SIGNING_SECS: i64 = 60;

/// The role that may vote.
const APPROVER_ROLE: &str = "approver";

/// What a request that needs approval waits for, as decided.
pub(super) struct Waiting<'a> {
    pub(super) fingerprint: &'a str,
    pub(super) rules: Vec<String>,
    pub(super) requirements: &'a [ApprovalRequirement],
    pub(super) policy: &'a Policy,
    pub(super) explanation: Vec<String>,
}

/// A vote as the API received it.
#[derive(Debug)]
pub struct VoteRequest {
    /// The requester's client id.
    pub client: String,
    /// The request id.
    pub request_id: String,
    /// The approval fingerprint the approver signed, hex.
    pub fingerprint: String,
    /// When the vote stops counting, Unix seconds.
    pub expires_unix: i64,
    /// The Ed25519 signature.
    pub signature: Vec<u8>,
    /// Approve or reject.
    pub vote: Vote,
    /// Why (rejections).
    pub reason: Option<String>,
}

impl VoteRequest {
    /// Checks the fields that need no state: the request id, the requester's client id and
    /// the reason.
    pub(crate) fn check_fields(&self) -> Result<(), ServiceError> {
        let v = self;
        validate_request_id(&v.request_id)?;
        if crate::ids::ClientId::parse(&v.client).is_err() {
            return Err(ServiceError::InvalidArgument(format!(
                "client: required, the requester's client id (1 to {} characters)",
                crate::ids::MAX_CLIENT_ID_LEN
            )));
        }
        if let Some(r) = &v.reason {
            if r.chars().count() > quorum::MAX_REASON_CHARS {
                return Err(ServiceError::InvalidArgument(
                    quorum::ApprovalError::ReasonTooLong.to_string(),
                ));
            }
            if r.chars().any(char::is_control) {
                return Err(ServiceError::InvalidArgument(
                    "reason: control characters are not allowed".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a vote by `me`, whose registered key is `public_key`, against the pending request
/// `rec` at `now`: the fingerprint, the expiry, one live vote per person, and the signature
/// over the approval message.
pub(crate) fn check_ballot(
    rec: &PendingRecord,
    me: &str,
    public_key: &[u8; 32],
    v: &VoteRequest,
    now: i64,
) -> Result<(), ServiceError> {
    if !v.fingerprint.eq_ignore_ascii_case(&rec.fingerprint) {
        return Err(ServiceError::FailedPrecondition(
            quorum::ApprovalError::WrongFingerprint {
                given: v.fingerprint.clone(),
                actual: rec.fingerprint.clone(),
            }
            .to_string(),
        ));
    }
    if v.expires_unix <= now || v.expires_unix > rec.deadline {
        return Err(ServiceError::InvalidArgument(
            quorum::ApprovalError::BadExpiry {
                expires: v.expires_unix,
                now,
                deadline: rec.deadline,
            }
            .to_string(),
        ));
    }
    // One live vote per person; an approval that expired may be renewed.
    if rec
        .votes
        .iter()
        .any(|x| x.approver == me && x.expires > now)
    {
        return Err(ServiceError::FailedPrecondition(
            quorum::ApprovalError::AlreadyVoted(me.to_owned()).to_string(),
        ));
    }
    let message = quorum::message(
        &rec.client,
        &rec.request_id,
        &rec.fingerprint,
        v.vote,
        v.expires_unix,
    );
    quorum::verify(me, public_key, &message, &v.signature).map_err(denied)?;
    Ok(())
}

fn state_err(e: crate::state::StateError) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

/// A state-store call, its failure as the client sees it.
async fn state_call<T>(
    call: impl std::future::Future<Output = Result<T, crate::state::StateError>>,
) -> Result<T, ServiceError> {
    call.await.map_err(state_err)
}

fn required_groups(reqs: &[Requirement]) -> Vec<events::RequiredGroup> {
    reqs.iter()
        .map(|r| events::RequiredGroup {
            group: r.group.clone(),
            members: r.members.clone(),
            min: r.min,
            veto: r.veto,
        })
        .collect()
}

impl Signer {
    /// Wakes every watcher.
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a request that needs approval and keeps it: `approval.request` (durable), the
    /// pending record, and the idempotency record pointing to it. Answers PENDING_APPROVAL.
    pub(super) async fn begin_approval(
        &self,
        caller: &Caller,
        p: &Prepared,
        w: Waiting<'_>,
    ) -> Result<SignOutcome, ServiceError> {
        let now = unix_now();
        let ttl = w.requirements.iter().map(|r| r.ttl_secs).min().unwrap_or(0);
        let deadline = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
        let fingerprint = hex::encode(p.approval_fingerprint(&w.policy.hash()));
        let requirements: Vec<Requirement> = w.requirements.iter().map(Into::into).collect();
        let rec = PendingRecord {
            client: caller.identity.id.clone(),
            roles: caller.identity.roles.clone(),
            cert_sha256: caller.cert_sha256.clone(),
            request_id: p.request_id.as_str().to_owned(),
            method: p.method.as_str().to_owned(),
            key_id: p.key.id.clone(),
            request: hex::encode(p.request.encode()),
            request_fingerprint: w.fingerprint.to_owned(),
            fingerprint,
            created: now,
            deadline,
            rules: w.rules,
            requirements,
            policy_serial: w.policy.serial(),
            policy_hash: w.policy.hash_hex(),
            action: serde_json::to_value(&p.action).unwrap_or_default(),
            explanation: w.explanation,
            votes: Vec::new(),
            status: Status::Pending,
            reason: None,
            signing_since: None,
        };
        let audit = events::ApprovalRequest {
            req_id: rec.request_id.clone(),
            client: rec.client.clone(),
            method: p.method,
            key: rec.key_id.clone(),
            fingerprint: rec.fingerprint.clone(),
            rules: rec.rules.clone(),
            requirements: required_groups(&rec.requirements),
            deadline: rec.deadline,
            policy_serial: rec.policy_serial,
            policy_hash: rec.policy_hash.clone(),
        };
        self.audit
            .append_durable(audit)
            .await
            .map_err(unavailable)?;
        let stored = StoredRequest {
            fingerprint: w.fingerprint.to_owned(),
            method: p.method.as_str().to_owned(),
            outcome: StoredOutcome::Pending,
            answered_at: Some(now),
        };
        // The durable write of put_pending makes the request's answer durable too.
        state_call(
            self.state
                .put_request(&rec.client, &rec.request_id, &stored),
        )
        .await?;
        state_call(self.state.put_pending(&rec)).await?;
        self.changed();
        tracing::info!(deadline, "waiting for approval");
        Ok(SignOutcome::Pending {
            record: Box::new(rec),
            now,
        })
    }

    /// The answer to a retried request that is (or was) waiting for approval.
    pub(super) async fn pending_reply(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<SignOutcome, ServiceError> {
        let (c, r) = (client.to_owned(), request_id.to_owned());
        let rec = state_call(self.state.get_pending(&c, &r))
            .await?
            .ok_or_else(|| {
                ServiceError::Unavailable("the request's approval state is missing".into())
            })?;
        match rec.status {
            Status::Pending | Status::Signing => Ok(SignOutcome::Pending {
                record: Box::new(rec),
                now: unix_now(),
            }),
            Status::Failed => Err(ServiceError::Unavailable(format!(
                "quorum was reached but signing failed: {}; nothing was signed",
                rec.reason.unwrap_or_default()
            ))),
            // Signed and denied requests have their final outcome stored; these never sign.
            _ => Err(ServiceError::PermissionDenied {
                rule: None,
                reason: rec.reason.unwrap_or_else(|| "not signed".into()),
            }),
        }
    }

    /// Approves or rejects a pending request for the approver `caller`. Runs on a task of its
    /// own, so that a caller who goes away (a cancelled call, a dropped connection, the
    /// server's deadline) cannot cut it between the vote's audit record and the stored
    /// request: a vote the log records always counts, a veto included.
    pub async fn vote(
        self: &Arc<Self>,
        caller: Caller,
        v: VoteRequest,
    ) -> Result<VoteOutcome, ServiceError> {
        let this = self.clone();
        super::to_completion(
            async move { this.cast_vote(caller, v).await },
            "internal error; the vote may not have been recorded: check the request's state",
        )
        .await
    }

    async fn cast_vote(
        self: &Arc<Self>,
        caller: Caller,
        v: VoteRequest,
    ) -> Result<VoteOutcome, ServiceError> {
        let me = caller.identity.id.clone();
        if !caller.identity.roles.iter().any(|r| r == APPROVER_ROLE) {
            return Err(denied(quorum::ApprovalError::NotApprover(me)));
        }
        v.check_fields()?;
        let _guard = self.lock_request(&v.client, &v.request_id).await?;
        let (c, r) = (v.client.clone(), v.request_id.clone());
        let Some(mut rec) = state_call(self.state.get_pending(&c, &r)).await? else {
            return Err(ServiceError::NotFound(format!(
                "no request `{}` of `{}` waits for approval",
                v.request_id, v.client
            )));
        };
        let now = unix_now();
        if rec.status == Status::Pending && rec.deadline <= now {
            self.expire_locked(&mut rec).await?;
        }
        if rec.status != Status::Pending {
            return Err(ServiceError::FailedPrecondition(format!(
                "request `{}` of `{}` is {}; it no longer takes votes",
                rec.request_id,
                rec.client,
                status_word(rec.status)
            )));
        }
        if me == rec.client {
            return Err(denied(quorum::ApprovalError::Requester(me)));
        }
        if !rec.requirements.iter().any(|r| r.members.contains(&me)) {
            let groups = rec
                .requirements
                .iter()
                .map(|r| r.group.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(denied(quorum::ApprovalError::NotMember {
                approver: me,
                groups,
            }));
        }
        let policy = self.policy();
        let Some(public_key) = policy.approver_key(&me) else {
            return Err(denied(quorum::ApprovalError::NoKey(me)));
        };
        check_ballot(&rec, &me, &public_key, &v, now)?;

        let vote = StoredVote {
            approver: me.clone(),
            vote: v.vote,
            expires: v.expires_unix,
            signature: hex::encode(&v.signature),
            public_key: hex::encode(public_key),
            cert_sha256: caller.cert_sha256.clone(),
            reason: v.reason.clone(),
            ts: now,
        };
        // `approval.grant` or `approval.reject`, as the vote says.
        let audit = events::ApprovalVote {
            req_id: rec.request_id.clone(),
            client: rec.client.clone(),
            approver: me.clone(),
            cert_sha256: caller.cert_sha256.clone(),
            fingerprint: rec.fingerprint.clone(),
            decision: v.vote,
            expires: v.expires_unix,
            public_key: vote.public_key.clone(),
            signature: vote.signature.clone(),
            reason: v.reason.clone(),
            policy_hash: policy.hash_hex(),
        };
        let receipt = self
            .audit
            .append_durable(audit)
            .await
            .map_err(unavailable)?;
        rec.votes.push(vote);

        let t = quorum::tally(&rec.requirements, &rec.votes, &rec.client, now);
        let mut quorum_reached = false;
        if let Some((by, reason)) = t.vetoed_by {
            let why = if reason.is_empty() {
                format!("rejected by `{by}`")
            } else {
                format!("rejected by `{by}`: {reason}")
            };
            self.end_unsigned(&mut rec, Status::Rejected, why).await?;
        } else if t.met {
            rec.status = Status::Signing;
            rec.signing_since = Some(now);
            quorum_reached = true;
        }
        let stored = rec.clone();
        state_call(self.state.put_pending(&stored)).await?;
        self.changed();
        if quorum_reached {
            let this = self.clone();
            let (client, id) = (rec.client.clone(), rec.request_id.clone());
            let span = tracing::info_span!("approved", req_id = %id, client = %client);
            // Not cancelled on shutdown: signing is bounded, and shutdown waits for it so
            // that its answer is recorded before the audit log closes.
            self.background.spawn(
                "approved signing",
                tracing::Instrument::instrument(
                    async move { this.complete(client, id).await },
                    span,
                ),
            );
        }
        tracing::info!(
            approver = %me,
            req_id = %rec.request_id,
            decision = v.vote.as_str(),
            quorum_reached,
            "vote recorded"
        );
        Ok(VoteOutcome {
            record: rec,
            now,
            audit_seq: receipt.seq,
            quorum_reached,
        })
    }

    /// Ends a request unsigned: `sign.result` (durable), reservation released, status set.
    /// The caller holds the request's lock and stores the record.
    async fn end_unsigned(
        &self,
        rec: &mut PendingRecord,
        status: Status,
        reason: String,
    ) -> Result<(), ServiceError> {
        let message = reason.clone();
        let outcome = match status {
            Status::Expired => Outcome::Expired { message },
            _ => Outcome::Rejected { message },
        };
        let result = events::SignResult {
            req_id: Some(rec.request_id.clone()),
            client: Some(rec.client.clone()),
            outcome,
        };
        self.audit
            .append_durable(result)
            .await
            .map_err(unavailable)?;
        let (c, r) = (rec.client.clone(), rec.request_id.clone());
        if let Err(e) = state_call(self.state.release(&c, &r)).await {
            tracing::error!(error = %e, "cannot release the reservation of an unsigned request");
        }
        rec.status = status;
        rec.reason = Some(reason);
        Ok(())
    }

    /// Expires a pending request whose deadline has passed (the caller holds its lock).
    async fn expire_locked(&self, rec: &mut PendingRecord) -> Result<(), ServiceError> {
        let now = unix_now();
        let t = quorum::tally(&rec.requirements, &rec.votes, &rec.client, now);
        let approved: Vec<String> = t.approved_by.into_iter().flatten().collect();
        let audit = events::ApprovalExpire {
            req_id: rec.request_id.clone(),
            client: rec.client.clone(),
            fingerprint: rec.fingerprint.clone(),
            deadline: rec.deadline,
            approved_by: approved,
        };
        self.audit.append(audit).map_err(unavailable)?;
        let reason = format!(
            "approvals expired: the deadline {} passed before every quorum was reached",
            crate::approvals::rfc3339(rec.deadline)
        );
        self.end_unsigned(rec, Status::Expired, reason).await?;
        let stored = rec.clone();
        state_call(self.state.put_pending(&stored)).await?;
        self.changed();
        tracing::info!(req_id = %rec.request_id, client = %rec.client, "approval expired");
        Ok(())
    }

    /// A request left `signing` by a replica (or process) that stopped while signing it: the
    /// answer its log restored decides, and without one it failed and its reservation is
    /// released (it is never signed again without a new request). The caller holds its lock.
    async fn settle_interrupted(&self, mut rec: PendingRecord) -> Result<(), ServiceError> {
        // Its result may have reached the audit log (and been restored as the request's
        // answer) before its signer stopped.
        let (c, r) = (rec.client.clone(), rec.request_id.clone());
        let answer = state_call(self.state.get_request(&c, &r)).await?;
        let ended = match answer.map(|a| a.outcome) {
            Some(StoredOutcome::Signed { .. }) => Some((Status::Signed, None)),
            Some(StoredOutcome::Denied { rule, reason }) => Some((
                Status::Denied,
                Some(match rule {
                    Some(rule) => format!("{reason} (rule: {rule})"),
                    None => reason,
                }),
            )),
            _ => None,
        };
        if let Some((status, reason)) = ended {
            rec.status = status;
            rec.reason = reason;
            state_call(self.state.put_pending(&rec)).await?;
            self.changed();
            return Ok(());
        }
        // Whatever it held is released: it will not be signed.
        state_call(self.state.release(&c, &r)).await?;
        rec.status = Status::Failed;
        rec.reason = Some(
            "signerd stopped while signing this request; nothing was returned, make a new request"
                .into(),
        );
        tracing::warn!(req_id = %rec.request_id, client = %rec.client, "approved request was interrupted while signing");
        state_call(self.state.put_pending(&rec)).await?;
        self.changed();
        Ok(())
    }

    /// Requests left `signing` for longer than signing can take, in a store replicas share:
    /// their replica stopped (or could not take them) and nobody holds them now.
    async fn settle_stale_signing(
        &self,
        open: &[PendingRecord],
        now: i64,
    ) -> Result<(), ServiceError> {
        if !self.state.shared() {
            return Ok(());
        }
        for rec in open {
            let stale = rec.status == Status::Signing
                && rec
                    .signing_since
                    .is_some_and(|t| t.saturating_add(STALE_SIGNING_SECS) < now);
            if !stale {
                continue;
            }
            let Ok(_guard) = self.lock_request(&rec.client, &rec.request_id).await else {
                continue;
            };
            let (c, r) = (rec.client.clone(), rec.request_id.clone());
            if let Some(fresh) = state_call(self.state.get_pending(&c, &r)).await?
                && fresh.status == Status::Signing
            {
                self.settle_interrupted(fresh).await?;
            }
        }
        Ok(())
    }

    /// Expires every pending request whose deadline has passed.
    async fn expire_due(&self) -> Result<(), ServiceError> {
        let now = unix_now();
        let open = state_call(self.state.open_pending()).await?;
        let waiting = open
            .iter()
            .filter(|r| r.status == Status::Pending && r.deadline > now)
            .count();
        crate::metrics::pending_approvals(waiting);
        self.settle_stale_signing(&open, now).await?;
        for rec in open {
            if rec.status != Status::Pending || rec.deadline > now {
                continue;
            }
            let _guard = self.lock_request(&rec.client, &rec.request_id).await?;
            let (c, r) = (rec.client.clone(), rec.request_id.clone());
            if let Some(mut fresh) = state_call(self.state.get_pending(&c, &r)).await?
                && fresh.status == Status::Pending
                && fresh.deadline <= now
            {
                self.expire_locked(&mut fresh).await?;
            }
        }
        Ok(())
    }

    /// Starts the approval housekeeping: requests that were signing when signerd stopped are
    /// marked failed (never signed again without a new request), requests that reached quorum
    /// are signed, and a task expires requests whose deadline passes.
    pub async fn start_approvals(self: &Arc<Self>) -> Result<(), ServiceError> {
        let open = state_call(self.state.open_pending()).await?;
        for rec in open {
            if rec.status != Status::Signing {
                continue;
            }
            // Replicas sharing the store: another may be signing it right now. Once it is
            // held here and still signing, nobody is.
            let _guard = match self.lock_request(&rec.client, &rec.request_id).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, req_id = %rec.request_id, "an approved request is busy elsewhere; left to its replica");
                    continue;
                }
            };
            let (c, r) = (rec.client.clone(), rec.request_id.clone());
            let Some(rec) = state_call(self.state.get_pending(&c, &r)).await? else {
                continue;
            };
            if rec.status == Status::Signing {
                self.settle_interrupted(rec).await?;
            }
        }
        let this = self.clone();
        self.background.spawn("approval sweep", async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = this.background.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.expire_due().await {
                    tracing::error!(error = %e, "cannot expire requests waiting for approval");
                }
            }
        });
        Ok(())
    }

    /// Signs a request whose quorum was reached: evaluates the policy again (deny rules and
    /// limits, with live usage that leaves out the request's own reservation), then records
    /// and signs exactly as an allowed request.
    async fn complete(self: Arc<Self>, client: String, request_id: String) {
        let _guard = match self.lock_request(&client, &request_id).await {
            Ok(g) => g,
            Err(e) => {
                // Another replica holds it (and signs it), or the store failed: the request
                // stays approved and signing, and is looked at again at the next start.
                tracing::error!(error = %e, req_id = %request_id, "cannot sign the approved request now");
                return;
            }
        };
        let (c, r) = (client.clone(), request_id.clone());
        let mut rec = match state_call(self.state.get_pending(&c, &r)).await {
            Ok(Some(rec)) if rec.status == Status::Signing => rec,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the approved request");
                return;
            }
        };
        // Held since the request was made: released unless it ends signed.
        let mut reservation = Reservation { armed: true };
        let completed = self.complete_locked(&rec, &mut reservation).await;
        if reservation.armed {
            self.release(&rec.client, &rec.request_id).await;
        }
        let (status, reason) = match completed {
            Ok(()) => (Status::Signed, None),
            Err(ServiceError::PermissionDenied { rule, reason }) => (
                Status::Denied,
                Some(match rule {
                    Some(rule) => format!("{reason} (rule: {rule})"),
                    None => reason,
                }),
            ),
            Err(e) => (Status::Failed, Some(e.to_string())),
        };
        rec.status = status;
        rec.reason = reason;
        if let Err(e) = state_call(self.state.put_pending(&rec)).await {
            tracing::error!(error = %e, "cannot store the approved request's outcome");
        }
        self.changed();
    }

    async fn complete_locked(
        &self,
        rec: &PendingRecord,
        reservation: &mut Reservation,
    ) -> Result<(), ServiceError> {
        self.check_state()?;
        let request = hex::decode(&rec.request)
            .map_err(|_| ServiceError::Unavailable("stored request cannot be decoded".into()))?;
        let method = Method::parse(&rec.method).ok_or_else(|| {
            ServiceError::Unavailable(format!("stored request of unknown method `{}`", rec.method))
        })?;
        let request = SignRequest::decode(method, &request)
            .map_err(|_| ServiceError::Unavailable("stored request cannot be decoded".into()))?;
        let p = self.prepare(request)?;
        let caller = Caller {
            identity: Identity {
                id: rec.client.clone(),
                roles: rec.roles.clone(),
            },
            cert_sha256: rec.cert_sha256.clone(),
            peer: None,
        };
        let decided = self.decide_again(rec, &caller, &p).await?;
        let approvers: Vec<String> =
            quorum::tally(&rec.requirements, &rec.votes, &rec.client, unix_now())
                .approved_by
                .into_iter()
                .flatten()
                .collect();
        let dec_rec = events::SignDecision {
            approved_by: Some(approvers),
            ..decision_record(&caller, &p, &decided)
        };
        self.audit.append(dec_rec).map_err(unavailable)?;
        let fp = rec.request_fingerprint.as_str();
        match decided.decision {
            Decision::Allow { .. } => {}
            Decision::Deny { rule, reason } => {
                return Err(self.deny(&caller, &p, fp, rule, reason).await);
            }
            Decision::NeedsApproval { .. } => {
                return Err(self.deny(&caller, &p, fp, None, "not allowed".into()).await);
            }
        }
        let expected = self.audit.expect();
        self.sign_allowed(&caller, &p, fp, reservation, expected)
            .await
            .map(drop)
    }

    /// The decision at quorum. Deny rules and limits apply as for any request; when the policy
    /// changed since the request and still requires approval, the votes collected must meet
    /// its requirements too. The charges replace the request's reservation atomically.
    async fn decide_again(
        &self,
        rec: &PendingRecord,
        caller: &Caller,
        p: &Prepared,
    ) -> Result<Decided, ServiceError> {
        let policy = self.policy();
        let now = unix_now();
        let eval = self
            .evaluate(
                &policy,
                caller,
                p,
                now,
                false,
                Some((&rec.client, &rec.request_id)),
            )
            .await?;
        let mut explanation = eval.explanation;
        let mut decision = match eval.decision {
            Decision::NeedsApproval {
                rules,
                requirements,
            } => {
                let now_required: Vec<Requirement> = requirements.iter().map(Into::into).collect();
                let unchanged = policy.hash_hex() == rec.policy_hash;
                if unchanged || quorum::tally(&now_required, &rec.votes, &rec.client, now).met {
                    Decision::Allow { rules }
                } else {
                    let reason = format!(
                        "the policy changed (serial {} → {}) while the request waited, and the approvals collected do not meet its requirements",
                        rec.policy_serial,
                        policy.serial()
                    );
                    explanation.push(reason.clone());
                    Decision::Deny {
                        rule: rules.first().cloned(),
                        reason,
                    }
                }
            }
            d => d,
        };
        if decision.is_allow() {
            let verdict = self
                .state
                .rereserve(&rec.client, &rec.request_id, now, &eval.charges)
                .await
                .map_err(state_err)?;
            if let Err(exceeded) = verdict {
                explanation.push(exceeded.detail.clone());
                decision = Decision::Deny {
                    rule: Some(exceeded.limit_id),
                    reason: exceeded.detail,
                };
            }
        }
        let charges = if decision.is_allow() {
            eval.charges
        } else {
            Vec::new()
        };
        Ok(Decided {
            decision,
            charges,
            explanation,
            policy,
            reserved: true,
        })
    }

    /// The state of one of `caller`'s requests.
    pub async fn sign_request_state(
        &self,
        caller: &Caller,
        request_id: &str,
    ) -> Result<RequestState, ServiceError> {
        validate_request_id(request_id)?;
        let me = caller.identity.id.as_str();
        let pending = state_call(self.state.get_pending(me, request_id)).await?;
        let answer = state_call(self.state.get_request(me, request_id)).await?;
        if pending.is_none() && answer.is_none() {
            self.refuse_expired(me, request_id).await?;
            return Err(ServiceError::NotFound(format!(
                "no request `{request_id}` of `{me}`"
            )));
        }
        Ok(RequestState {
            request_id: request_id.to_owned(),
            pending,
            answer,
            now: unix_now(),
        })
    }

    /// A receiver of the state of one of `caller`'s requests: now, then at every change (and at
    /// least every second, as approvals expire), until a final state or `max_wait_secs`.
    pub async fn watch_sign_request(
        self: &Arc<Self>,
        caller: Caller,
        request_id: String,
        max_wait_secs: u64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<RequestState, ServiceError>>, ServiceError> {
        let first = self.sign_request_state(&caller, &request_id).await?;
        let wait = match max_wait_secs {
            0 => MAX_WATCH_SECS,
            n => n.min(MAX_WATCH_SECS),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        let mut changes = self.changes.subscribe();
        self.background.spawn("approval watch stream", async move {
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
            let mut done = first.is_final();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let _open = crate::metrics::WatchOpen::open();
            while !done && tokio::time::Instant::now() < until {
                tokio::select! {
                    // The client went away: stop polling at once, not at `until`.
                    () = tx.closed() => return,
                    () = this.background.cancelled() => return,
                    _ = tokio::time::timeout_at(
                        until.min(tokio::time::Instant::now() + SWEEP_EVERY),
                        changes.changed(),
                    ) => {}
                }
                let now = match this.sign_request_state(&caller, &request_id).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                done = now.is_final();
                if tx.send(Ok(now)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Requests waiting for approval, for approvers.
    /// The requests waiting for approval now, oldest first (at most 500), and the time they
    /// were read (Unix seconds).
    pub async fn list_pending(
        &self,
        caller: &Caller,
    ) -> Result<(Vec<PendingRecord>, i64), ServiceError> {
        if !caller.identity.roles.iter().any(|r| r == APPROVER_ROLE) {
            return Err(denied(quorum::ApprovalError::NotApprover(
                caller.identity.id.clone(),
            )));
        }
        let now = unix_now();
        let mut open = state_call(self.state.open_pending()).await?;
        open.retain(|r| r.status == Status::Pending && r.deadline > now);
        open.sort_by(|a, b| {
            (a.created, &a.client, &a.request_id).cmp(&(b.created, &b.client, &b.request_id))
        });
        open.truncate(MAX_LISTED);
        Ok((open, now))
    }
}

impl Signer {
    /// What a waiting request does, in words for approvers: the decoded action it will sign,
    /// with amounts and labels from the policy in force.
    pub fn describe_pending(&self, rec: &PendingRecord) -> Vec<String> {
        match serde_json::from_value::<signerd_policy::Action>(rec.action.clone()) {
            Ok(action) => self.policy().describe_action(&action),
            Err(_) => vec!["the decoded action cannot be shown; read `action`".to_owned()],
        }
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Signing => "being signed",
        Status::Signed => "signed",
        Status::Rejected => "rejected",
        Status::Expired => "expired",
        Status::Denied => "denied",
        Status::Failed => "failed",
    }
}

fn denied(e: quorum::ApprovalError) -> ServiceError {
    ServiceError::PermissionDenied {
        rule: None,
        reason: e.to_string(),
    }
}
