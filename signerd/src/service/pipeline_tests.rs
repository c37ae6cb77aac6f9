//! The signing pipeline in process: a real soft key backend behind a fault-injecting one, the
//! in-memory state store, a real audit log in a temporary directory, and a real policy. The
//! black-box suite runs the same paths over mTLS against the daemon; these reach the races
//! and failures that are hard to provoke from outside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::Signer as _;
use secrecy::SecretString;
use signerd_policy::{Identity, Policy};
use signerd_proto::v1;

use super::{Caller, ServiceError, Signer, VoteRequest};
use crate::approvals::Vote;
use crate::audit::{AuditLog, AuditOptions, CheckpointSigner};
use crate::keys::faulty::{Fault, FaultyBackend};
use crate::keys::{Algorithm, KeyBackend, KeyError};
use crate::request::{SignOutcome, SignRequest, Signed};
use crate::state::{MemoryStore, StateStore};

const TO: &str = "0x3535353535353535353535353535353535353535";

/// An Ed25519 key from a one-byte seed.
fn person(who: &str) -> ed25519_dalek::SigningKey {
    let seed = who
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn public(who: &str) -> String {
    format!(
        "ed25519:{}",
        hex::encode(person(who).verifying_key().to_bytes())
    )
}

/// Requesters sign with `hot`; 1,000 wei or more needs 2 of treasury; at most 10,000 wei a
/// day.
fn policy() -> Policy {
    let src = format!(
        r#"version = 1
serial = 1

[groups]
treasury = ["bob", "carol", "dave"]

[approvers]
bob = "{}"
carol = "{}"
dave = "{}"

[[rule]]
id = "requesters-hot"
effect = "allow"
roles = ["requester"]
keys = ["hot"]

[[rule]]
id = "large"
effect = "require_approval"
keys = ["hot"]
value_min = "1000 wei"
approvals = [{{ group = "treasury", min = 2 }}]
ttl = "1h"

[[limit]]
id = "daily-eth"
asset = "native"
chain_ids = [1]
window = "24h"
max_amount = "10000 wei"
"#,
        public("bob"),
        public("carol"),
        public("dave"),
    );
    Policy::parse("pipeline.toml", &src).unwrap()
}

struct TestSigner(ed25519_dalek::SigningKey);

impl CheckpointSigner for TestSigner {
    fn name(&self) -> &str {
        "pipeline-test"
    }
    fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        Ok(self.0.sign(message).to_bytes())
    }
}

struct Pipeline {
    signer: Arc<Signer>,
    keys: Arc<FaultyBackend>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

async fn pipeline() -> Pipeline {
    pipeline_admitting(super::Admission::DEFAULT).await
}

async fn pipeline_admitting(admission: super::Admission) -> Pipeline {
    let dir = tempfile::tempdir().unwrap();
    let pass = SecretString::from("pipeline test passphrase".to_owned());
    let keys_dir = dir.path().join("keys");
    crate::keys::soft::generate(&keys_dir, "hot", Algorithm::Secp256k1, &pass).unwrap();
    crate::keys::soft::generate(&keys_dir, "ed", Algorithm::Ed25519, &pass).unwrap();
    let soft = crate::keys::soft::SoftBackend::open(&keys_dir, &pass).unwrap();
    let keys = Arc::new(FaultyBackend::new(Arc::new(soft)));
    let store = Arc::new(MemoryStore::new());
    let opts = AuditOptions {
        min_free_bytes: Some(0),
        ..AuditOptions::new(Arc::new(TestSigner(person("audit"))))
    };
    let audit = AuditLog::open(&dir.path().join("audit"), opts).unwrap();
    let signer = Arc::new(
        Signer::new(
            keys.clone() as Arc<dyn KeyBackend>,
            policy(),
            dir.path().join("policy.toml"),
            store.clone() as Arc<dyn StateStore>,
            audit,
            crate::tasks::Background::new(),
        )
        .with_admission(admission),
    );
    signer.start_approvals().await.unwrap();
    Pipeline {
        signer,
        keys,
        store,
        _dir: dir,
    }
}

fn caller(id: &str, role: &str) -> Caller {
    Caller {
        identity: Identity {
            id: id.to_owned(),
            roles: vec![role.to_owned()],
        },
        cert_sha256: "ab".repeat(32),
        peer: None,
    }
}

fn app() -> Caller {
    caller("app", "requester")
}

fn tx(request_id: &str, value: u64) -> v1::SignEvmTransactionRequest {
    v1::SignEvmTransactionRequest {
        dry_run: false,
        request_id: request_id.to_owned(),
        key_id: "hot".to_owned(),
        r#type: v1::EvmTransactionType::Eip1559.into(),
        chain_id: 1,
        nonce: 0,
        gas_limit: 21_000,
        gas_price: String::new(),
        max_fee_per_gas: "0".to_owned(),
        max_priority_fee_per_gas: "0".to_owned(),
        to: TO.to_owned(),
        value: value.to_string(),
        data: Vec::new(),
        access_list: Vec::new(),
    }
}

fn message(request_id: &str) -> v1::SignEvmMessageRequest {
    v1::SignEvmMessageRequest {
        dry_run: false,
        request_id: request_id.to_owned(),
        key_id: "hot".to_owned(),
        message: b"hello".to_vec(),
    }
}

fn signed(o: SignOutcome) -> Signed {
    match o {
        SignOutcome::Signed(s) => s,
        other => panic!("not signed: {other:?}"),
    }
}

/// What a request waiting for approval waits for, as the client sees it.
fn pending_of(o: SignOutcome) -> v1::PendingApproval {
    match o {
        SignOutcome::Pending { record, now } => crate::api::wire::pending_proto(&record, now),
        other => panic!("not pending: {other:?}"),
    }
}

fn status_name(e: &ServiceError) -> &'static str {
    e.metric_labels().1
}

impl Pipeline {
    /// Wei reserved now, across every request, signed or not.
    fn reserved(&self) -> u64 {
        let held: u64 = self
            .store
            .reservations()
            .iter()
            .map(|e| u64::try_from(e.amount).unwrap())
            .sum();
        let signed: u64 = self
            .store
            .settled()
            .iter()
            .map(|s| u64::try_from(s.amount).unwrap())
            .sum();
        held + signed
    }

    async fn vote(
        &self,
        who: &str,
        p: &v1::PendingApproval,
        vote: Vote,
    ) -> Result<crate::request::VoteOutcome, ServiceError> {
        let expires = p.deadline_unix;
        let msg = crate::approvals::message("app", &p.request_id, &p.fingerprint, vote, expires);
        let v = VoteRequest {
            client: "app".to_owned(),
            request_id: p.request_id.clone(),
            fingerprint: p.fingerprint.clone(),
            expires_unix: expires,
            signature: person(who).sign(&msg).to_bytes().to_vec(),
            vote,
            reason: None,
        };
        self.signer.vote(caller(who, "approver"), v).await
    }

    /// The request's state once it is final (or after 10 s).
    async fn settled(&self, request_id: &str) -> v1::SignRequestState {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = self
                .signer
                .sign_request_state(&app(), request_id)
                .await
                .unwrap();
            let s = crate::api::wire::request_state_proto(state).unwrap();
            if s.status() != v1::SignStatus::PendingApproval || tokio::time::Instant::now() > until
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Many copies of one request at once: one signature, and every caller gets that one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_raced_by_many_signs_once_and_answers_all_alike() {
    let p = pipeline().await;
    p.keys.set(Fault::Delay(Duration::from_millis(20)));
    let tries: Vec<_> = (0..32)
        .map(|_| {
            let s = p.signer.clone();
            tokio::spawn(async move { s.sign(app(), SignRequest::Message(message("same"))).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tries {
        answers.push(signed(t.await.unwrap().unwrap()));
    }
    assert_eq!(p.keys.signed(), 1, "one request id, one signature");
    assert!(answers.iter().all(|a| *a == answers[0]));
}

/// A limit raced by many requests at once signs exactly what it allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_raced_in_process_signs_exactly_what_it_allows() {
    let p = pipeline().await;
    let tries: Vec<_> = (0..60)
        .map(|i| {
            let s = p.signer.clone();
            tokio::spawn(async move {
                s.sign(app(), SignRequest::Transaction(tx(&format!("r{i}"), 900)))
                    .await
            })
        })
        .collect();
    let (mut ok, mut denied) = (0, 0);
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ServiceError::PermissionDenied { rule, .. }) => {
                assert_eq!(rule.as_deref(), Some("daily-eth"));
                denied += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, denied), (11, 49), "11 × 900 wei fit under 10,000");
    assert_eq!(p.keys.signed(), 11);
    assert_eq!(p.reserved(), 9_900);
}

/// Every way an allowed request can end unsigned gives its reservation back, so the next
/// request can spend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsigned_path_releases_the_reservation() {
    let p = pipeline().await;
    let faults = [
        Fault::Fail(KeyError::Unavailable("device gone".into())),
        Fault::Fail(KeyError::CredentialsRefused("token revoked".into())),
        Fault::Fail(KeyError::Keystore("file unreadable".into())),
        Fault::WrongKind,
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        p.keys.set(fault.clone());
        let e = p
            .signer
            .sign(
                app(),
                SignRequest::Transaction(tx(&format!("fail-{i}"), 900)),
            )
            .await
            .unwrap_err();
        assert_eq!(status_name(&e), "UNAVAILABLE", "{fault:?}: {e}");
        assert_eq!(p.reserved(), 0, "{fault:?} left a reservation");
    }
    p.keys.set(Fault::None);

    // A request that waits for approval holds its spend; a veto gives it back.
    let pending = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("big", 5_000)))
        .await
        .unwrap();
    let pending = pending_of(pending);
    assert_eq!(p.reserved(), 5_000);
    p.vote("bob", &pending, Vote::Reject).await.unwrap();
    assert_eq!(p.settled("big").await.status(), v1::SignStatus::Rejected);
    assert_eq!(p.reserved(), 0, "a vetoed request left its reservation");

    // Approved, but the backend fails at signing time: released too.
    let pending = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("big-2", 5_000)))
        .await
        .unwrap();
    let pending = pending_of(pending);
    p.keys
        .set(Fault::Fail(KeyError::Unavailable("device gone".into())));
    p.vote("bob", &pending, Vote::Approve).await.unwrap();
    p.vote("carol", &pending, Vote::Approve).await.unwrap();
    assert_eq!(p.settled("big-2").await.status(), v1::SignStatus::Failed);
    assert_eq!(
        p.reserved(),
        0,
        "a failed approved request left its reservation"
    );

    // Everything was given back: the whole budget signs.
    p.keys.set(Fault::None);
    for i in 0..11 {
        p.signer
            .sign(
                app(),
                SignRequest::Transaction(tx(&format!("after-{i}"), 900)),
            )
            .await
            .unwrap();
    }
    assert_eq!(p.reserved(), 9_900);
    assert_eq!(p.keys.signed(), 11);
}

/// Approvers voting at once: the quorum is reached once and the request is signed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_votes_sign_an_approved_request_once() {
    let p = pipeline().await;
    p.keys.set(Fault::Delay(Duration::from_millis(20)));
    let pending = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("vote-race", 2_000)))
        .await
        .unwrap();
    let pending = pending_of(pending);
    let p = Arc::new(p);
    let votes: Vec<_> = ["bob", "carol", "dave"]
        .into_iter()
        .map(|who| {
            let (p, pending) = (p.clone(), pending.clone());
            tokio::spawn(async move { p.vote(who, &pending, Vote::Approve).await })
        })
        .collect();
    let mut reached = 0;
    for v in votes {
        // The third vote may arrive after the quorum and be refused: no longer pending.
        match v.await.unwrap() {
            Ok(r) => reached += usize::from(r.quorum_reached),
            Err(e) => assert_eq!(status_name(&e), "FAILED_PRECONDITION", "{e}"),
        }
    }
    assert_eq!(reached, 1, "exactly one vote reaches the quorum");
    let state = p.settled("vote-race").await;
    assert_eq!(state.status(), v1::SignStatus::Signed);
    assert_eq!(p.keys.signed(), 1);
    assert_eq!(p.reserved(), 2_000);
}

/// A key backend's failures are never a policy denial: unavailability and refused
/// credentials are UNAVAILABLE, an unknown key NOT_FOUND, and none of them counts as a deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_map_to_the_right_status() {
    let p = pipeline().await;
    let cases = [
        (KeyError::Unavailable("hang".into()), "UNAVAILABLE"),
        (
            KeyError::CredentialsRefused("revoked".into()),
            "UNAVAILABLE",
        ),
        (KeyError::Keystore("broken".into()), "UNAVAILABLE"),
        (KeyError::NotFound("hot".into()), "NOT_FOUND"),
    ];
    for (i, (err, want)) in cases.into_iter().enumerate() {
        p.keys.set(Fault::Fail(err.clone()));
        let e = p
            .signer
            .sign(app(), SignRequest::Message(message(&format!("m{i}"))))
            .await
            .unwrap_err();
        assert_eq!(e.metric_labels(), ("none", want), "{err}: {e}");
        if want == "UNAVAILABLE" {
            assert!(e.to_string().contains("nothing was signed"), "{e}");
        }
    }
    // An unknown key is refused before the backend is asked.
    p.keys.set(Fault::None);
    let mut req = message("unknown-key");
    req.key_id = "cold".to_owned();
    let e = p
        .signer
        .sign(app(), SignRequest::Message(req))
        .await
        .unwrap_err();
    assert_eq!(status_name(&e), "NOT_FOUND", "{e}");
    assert_eq!(p.keys.signed(), 0);
}

/// A state store that fails a write stops signing until a restart, before anything is
/// signed, even once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_state_store_stops_signing_before_anything_is_signed() {
    let p = pipeline().await;
    p.signer
        .sign(app(), SignRequest::Transaction(tx("ok", 100)))
        .await
        .unwrap();
    p.store.fail_writes(true);
    let e = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("store-down", 100)))
        .await
        .unwrap_err();
    assert_eq!(status_name(&e), "UNAVAILABLE", "{e}");
    p.store.fail_writes(false);
    let e = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("store-back", 100)))
        .await
        .unwrap_err();
    assert_eq!(status_name(&e), "UNAVAILABLE", "{e}");
    assert!(e.to_string().contains("restart"), "{e}");
    assert!(!p.signer.probe_state().await);
    assert_eq!(p.keys.signed(), 1);
}

/// A retry after a denial gets the same denial; a retry after a signature the same signature,
/// without signing again; the same id for other content is ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_the_stored_answer() {
    let p = pipeline().await;
    let first = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("t", 100)))
        .await
        .unwrap();
    let again = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("t", 100)))
        .await
        .unwrap();
    assert_eq!(signed(first), signed(again));
    assert_eq!(p.keys.signed(), 1);
    let e = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("t", 101)))
        .await
        .unwrap_err();
    assert_eq!(status_name(&e), "ABORTED", "{e}");
    let e = p
        .signer
        .sign(app(), SignRequest::Message(message("t")))
        .await
        .unwrap_err();
    assert_eq!(status_name(&e), "ABORTED", "{e}");

    let denied = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("too-much", 20_000)))
        .await
        .unwrap_err();
    let again = p
        .signer
        .sign(app(), SignRequest::Transaction(tx("too-much", 20_000)))
        .await
        .unwrap_err();
    assert_eq!(denied.to_string(), again.to_string());
    assert_eq!(status_name(&again), "PERMISSION_DENIED");
}

/// Requests beyond `max_in_flight` that wait longer than `queue_timeout` are shed with
/// RESOURCE_EXHAUSTED: nothing signed, reserved or stored for them, and their retry, once
/// the load is gone, is a fresh try that signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_wait_too_long_are_shed_without_a_trace_and_retry_fresh() {
    let admission = super::Admission {
        max_in_flight: 2,
        queue_timeout: Duration::from_millis(50),
    };
    let p = pipeline_admitting(admission).await;
    assert_eq!(p.signer.admission(), admission);
    // Far longer than the wait for a turn: the two requests that get one hold them.
    p.keys.set(Fault::Delay(Duration::from_millis(1500)));
    let tries: Vec<_> = (0..10)
        .map(|i| {
            let s = p.signer.clone();
            let id = format!("o{i}");
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = s.sign(app(), SignRequest::Transaction(tx(&id, 900))).await;
                (id, r, t.elapsed())
            })
        })
        .collect();
    let (mut ok, mut shed) = (Vec::new(), Vec::new());
    for t in tries {
        let (id, r, took) = t.await.unwrap();
        match r {
            Ok(_) => ok.push(id),
            Err(e) => {
                assert_eq!(status_name(&e), "RESOURCE_EXHAUSTED", "{id}: {e}");
                assert!(e.to_string().contains("overloaded"), "{e}");
                assert!(
                    took < Duration::from_millis(1000),
                    "{id} shed after {took:?}"
                );
                shed.push(id);
            }
        }
    }
    assert_eq!(
        (ok.len(), shed.len()),
        (2, 8),
        "signed {ok:?}, shed {shed:?}"
    );
    assert_eq!(p.keys.signed(), 2);
    // Only the two signed requests count against the daily limit.
    assert_eq!(p.reserved(), 1_800);
    for id in &shed {
        let stored = p.store.get_request("app", id).await.unwrap();
        assert!(stored.is_none(), "{id} was shed but its outcome is stored");
    }
    p.keys.set(Fault::None);
    let again = p
        .signer
        .sign(app(), SignRequest::Transaction(tx(&shed[0], 900)))
        .await;
    assert!(again.is_ok(), "retry of {}: {again:?}", shed[0]);
    assert_eq!(p.keys.signed(), 3);
    assert_eq!(p.reserved(), 2_700);
}
