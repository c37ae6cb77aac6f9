//! Quorum approvals against the real daemon: a request over the approval threshold waits,
//! approvers vote over mTLS with signatures made by their own Ed25519 keys, and signerd signs
//! in the background once every quorum is reached and the policy still allows it.
//!
//! Approval messages and fingerprints are built here from `docs/approvals.md`, not with the
//! daemon's code, and every `approval.grant` in the audit log is verified with its key.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use prost::Message as _;
use sha2::{Digest, Sha256};
use signerd_proto::v1::{self, SignStatus, approvals_client::ApprovalsClient};
use tonic::Code;
use tonic::transport::Channel;

use crate::audit_support::{assert_verifies, vkey};
use crate::util::*;

/// Each approver's key seed (test keys only).
pub(crate) fn key(who: &str) -> SigningKey {
    let seed = match who {
        "bob" => 0x0b,
        "carol" => 0x0c,
        "dave" => 0x0d,
        "erin" => 0x0e,
        other => panic!("no key for {other}"),
    };
    SigningKey::from_bytes(&[seed; 32])
}

pub(crate) fn public(who: &str) -> String {
    format!(
        "ed25519:{}",
        hex::encode(key(who).verifying_key().to_bytes())
    )
}

/// Requesters sign with `hot`; 1,000 wei or more needs 2 of treasury; at most `max` wei a day.
pub(crate) fn policy(serial: u32, ttl: &str, max: u64) -> String {
    policy_with(serial, ttl, max, &public("bob"))
}

/// [`policy`] where `value_min` wei or more needs approval.
pub(crate) fn policy_from(serial: u32, ttl: &str, max: u64, value_min: u64) -> String {
    policy_with(serial, ttl, max, &public("bob")).replace(
        "value_min = \"1000 wei\"",
        &format!("value_min = \"{value_min} wei\""),
    )
}

/// [`policy`] with `bob_key` registered for `bob`.
fn policy_with(serial: u32, ttl: &str, max: u64, bob_key: &str) -> String {
    format!(
        r#"version = 1
serial = {serial}

[groups]
treasury = ["bob", "carol", "dave"]

[approvers]
bob = "{}"
carol = "{}"
dave = "{}"
erin = "{}"

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
ttl = "{ttl}"

[[limit]]
id = "daily-eth"
asset = "native"
chain_ids = [1]
window = "24h"
max_amount = "{max} wei"
"#,
        bob_key,
        public("carol"),
        public("dave"),
        public("erin"),
    )
}

pub(crate) fn approvals_env(name: &str, ttl: &str) -> TestEnv {
    TestEnv::with(
        name,
        Opts {
            policy: policy(1, ttl, 10_000),
            ..Opts::default()
        },
    )
}

pub(crate) fn tx(request_id: &str, value: u64) -> v1::SignEvmTransactionRequest {
    let mut t = eip1559(request_id);
    t.value = value.to_string();
    t
}

pub(crate) async fn approver(env: &TestEnv, d: &Daemon, who: &str) -> ApprovalsClient<Channel> {
    let settings = env.settings(d, who);
    ApprovalsClient::new(signerd::client::channel(&settings).await.unwrap())
}

/// The approval message of docs/approvals.md, signed by `signer`.
pub(crate) fn signed(
    signer: &str,
    client: &str,
    request_id: &str,
    fp: &str,
    decision: &str,
    exp: i64,
) -> Vec<u8> {
    let msg = format!(
        "signerd approval v1\nclient: {client}\nrequest_id: {request_id}\nfingerprint: {fp}\ndecision: {decision}\nexpires: {exp}\n"
    );
    key(signer).sign(msg.as_bytes()).to_bytes().to_vec()
}

pub(crate) fn approve_req(
    p: &v1::PendingApproval,
    client: &str,
    signature: Vec<u8>,
) -> v1::ApproveRequest {
    v1::ApproveRequest {
        client: client.to_owned(),
        request_id: p.request_id.clone(),
        fingerprint: p.fingerprint.clone(),
        expires_unix: p.deadline_unix,
        signature,
    }
}

/// A valid approval of `p` (made by `client`) by `who`.
pub(crate) fn approval(who: &str, client: &str, p: &v1::PendingApproval) -> v1::ApproveRequest {
    let sig = signed(
        who,
        client,
        &p.request_id,
        &p.fingerprint,
        "approve",
        p.deadline_unix,
    );
    approve_req(p, client, sig)
}

pub(crate) async fn pending(
    c: &mut signerd_proto::v1::signer_client::SignerClient<Channel>,
    rid: &str,
    value: u64,
) -> v1::PendingApproval {
    let r = c
        .sign_evm_transaction(tx(rid, value))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), SignStatus::PendingApproval, "{r:?}");
    assert!(
        r.signature.is_none() && r.raw_transaction.is_empty(),
        "{r:?}"
    );
    r.pending.unwrap()
}

/// Watches `rid` until a final state (or panics after a minute).
pub(crate) async fn final_state(
    c: &mut signerd_proto::v1::signer_client::SignerClient<Channel>,
    rid: &str,
) -> v1::SignRequestState {
    let mut stream = c
        .watch_sign_request(v1::WatchSignRequestRequest {
            request_id: rid.to_owned(),
            max_wait_secs: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(s) = tokio::time::timeout(Duration::from_secs(70), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        last = Some(s);
    }
    let last = last.unwrap();
    assert_ne!(last.status(), SignStatus::PendingApproval, "{last:?}");
    last
}

async fn state(
    c: &mut signerd_proto::v1::signer_client::SignerClient<Channel>,
    rid: &str,
) -> v1::SignRequestState {
    c.get_sign_request(v1::GetSignRequestRequest {
        request_id: rid.to_owned(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Every `approval.grant` verifies with the key it names, over the documented message, and
/// that key is the one registered for the approver.
fn check_grants(audit: &Audit, want: usize, bob_key: &str) {
    let grants = audit.of_type("approval.grant");
    assert_eq!(grants.len(), want, "{grants:?}");
    for g in grants {
        let who = g["approver"].as_str().unwrap();
        let registered = if who == "bob" {
            bob_key.to_owned()
        } else {
            public(who)
        };
        assert_eq!(
            format!("ed25519:{}", g["public_key"].as_str().unwrap()),
            registered
        );
        let msg = format!(
            "signerd approval v1\nclient: {}\nrequest_id: {}\nfingerprint: {}\ndecision: approve\nexpires: {}\n",
            g["client"].as_str().unwrap(),
            g["req_id"].as_str().unwrap(),
            g["fingerprint"].as_str().unwrap(),
            g["expires"].as_i64().unwrap(),
        );
        let sig: [u8; 64] = hex::decode(g["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let vk: [u8; 32] = hex::decode(g["public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        VerifyingKey::from_bytes(&vk)
            .unwrap()
            .verify(msg.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap_or_else(|e| panic!("grant by {who} does not verify: {e}"));
    }
}

#[tokio::test]
async fn quorum_signs_and_bad_votes_never_count() {
    let env = approvals_env("approvals-quorum", "1h");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let hot = address_of(&mut app, HOT).await;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let p = pending(&mut app, "big-1", 6000).await;
    assert_eq!(p.rules, vec!["large".to_owned()]);
    assert_eq!(p.requirements.len(), 1);
    assert_eq!(p.requirements[0].group, "treasury");
    assert_eq!(p.requirements[0].min, 2);
    assert!(p.requirements[0].veto);
    assert!(
        (before + 3600..=before + 3610).contains(&p.deadline_unix),
        "{p:?}"
    );
    // A retry is idempotent: the same pending answer.
    assert_eq!(
        pending(&mut app, "big-1", 6000).await.fingerprint,
        p.fingerprint
    );

    // Approvers see what they decide on; requesters cannot list.
    let mut bob = approver(&env, &d, "bob").await;
    let list = bob
        .list_pending(v1::ListPendingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.requests.len(), 1);
    let shown = &list.requests[0];
    assert_eq!(
        (shown.client.as_str(), shown.request_id.as_str()),
        ("app", "big-1")
    );
    assert!(shown.action_json.contains("native_transfer"), "{shown:?}");
    assert!(
        shown.action_json.contains("\"value\":\"0x1770\""),
        "{shown:?}"
    );
    assert!(!shown.explanation.is_empty());
    let mut app_as_approver = approver(&env, &d, "app").await;
    let st = refused(
        "list as requester",
        app_as_approver
            .list_pending(v1::ListPendingRequest {})
            .await,
    );
    assert_status(
        "list as requester",
        &st,
        Code::PermissionDenied,
        "`approver` role",
    );

    // One approval: one short of quorum, never signed.
    let r = bob
        .approve(approval("bob", "app", &p))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.quorum_reached);
    assert_eq!(r.status(), SignStatus::PendingApproval);
    assert_eq!(
        r.pending.unwrap().requirements[0].approved_by,
        vec!["bob".to_owned()]
    );
    // The same person again counts once.
    let st = refused("bob twice", bob.approve(approval("bob", "app", &p)).await);
    assert_status("bob twice", &st, Code::FailedPrecondition, "already voted");
    // An approver outside every required group.
    let mut erin = approver(&env, &d, "erin").await;
    let st = refused("erin", erin.approve(approval("erin", "app", &p)).await);
    assert_status("erin", &st, Code::PermissionDenied, "member of none");
    // A member whose signature is forged (made with another key, or copied from bob).
    let mut carol = approver(&env, &d, "carol").await;
    let forged = approve_req(
        &p,
        "app",
        signed(
            "erin",
            "app",
            "big-1",
            &p.fingerprint,
            "approve",
            p.deadline_unix,
        ),
    );
    let st = refused("forged", carol.approve(forged).await);
    assert_status("forged", &st, Code::PermissionDenied, "does not verify");
    let copied = approval("bob", "app", &p);
    let st = refused("copied", carol.approve(copied).await);
    assert_status("copied", &st, Code::PermissionDenied, "does not verify");
    // A signature over an "approve" message does not reject, and vice versa.
    let mut as_reject = approval("carol", "app", &p);
    as_reject.signature = signed(
        "carol",
        "app",
        "big-1",
        &p.fingerprint,
        "reject",
        p.deadline_unix,
    );
    let st = refused("reject signature", carol.approve(as_reject).await);
    assert_status(
        "reject signature",
        &st,
        Code::PermissionDenied,
        "does not verify",
    );

    // An approval replayed against a modified request.
    let p2 = pending(&mut app, "big-2", 1500).await;
    assert_ne!(p2.fingerprint, p.fingerprint);
    let mut replay = approval("carol", "app", &p);
    replay.request_id = "big-2".into();
    let st = refused(
        "replay, old fingerprint",
        carol.approve(replay.clone()).await,
    );
    assert_status(
        "replay, old fingerprint",
        &st,
        Code::FailedPrecondition,
        "differs",
    );
    replay.fingerprint = p2.fingerprint.clone();
    let st = refused("replay, new fingerprint", carol.approve(replay).await);
    assert_status(
        "replay, new fingerprint",
        &st,
        Code::PermissionDenied,
        "does not verify",
    );

    // The requester never approves their own request.
    let mut dave_req = env.client(&d, "dave").await;
    let pd = pending(&mut dave_req, "dave-1", 2000).await;
    let mut dave = approver(&env, &d, "dave").await;
    let st = refused(
        "self approval",
        dave.approve(approval("dave", "dave", &pd)).await,
    );
    assert_status(
        "self approval",
        &st,
        Code::PermissionDenied,
        "made this request",
    );

    // Still nothing signed for big-1.
    assert_eq!(
        state(&mut app, "big-1").await.status(),
        SignStatus::PendingApproval
    );
    assert!(env.audit().results("big-1").is_empty());

    // The second distinct member reaches quorum; signerd signs without the requester.
    let r = carol
        .approve(approval("carol", "app", &p))
        .await
        .unwrap()
        .into_inner();
    assert!(r.quorum_reached, "{r:?}");
    let done = final_state(&mut app, "big-1").await;
    assert_eq!(done.status(), SignStatus::Signed, "{done:?}");
    let Some(v1::sign_request_state::Response::Transaction(signed_tx)) = done.response.clone()
    else {
        panic!("{done:?}");
    };
    check_ecdsa(
        signed_tx.signature.as_ref(),
        &signed_tx.signing_hash,
        &hot,
        false,
    );
    assert_eq!(signed_tx.status(), SignStatus::Signed);
    // Fetched idempotently: the same bytes every time, also through the original call.
    let again = state(&mut app, "big-1").await;
    assert_eq!(again.encode_to_vec(), done.encode_to_vec());
    let retried = app
        .sign_evm_transaction(tx("big-1", 6000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.encode_to_vec(), signed_tx.encode_to_vec());
    // The fingerprint is the documented hash over the request and the policy.
    let mut h = Sha256::new();
    h.update(b"signerd.approval.fingerprint.v1\0SignEvmTransaction\0hot\0");
    h.update(b"1\0");
    h.update(&signed_tx.signing_hash);
    h.update(Sha256::digest(env.governed(&env.opts.policy).as_bytes()));
    assert_eq!(hex::encode(h.finalize()), p.fingerprint);
    // GetSignRequest also answers for requests that never waited, and only for one's own.
    let direct = app
        .sign_evm_transaction(tx("small-1", 500))
        .await
        .unwrap()
        .into_inner();
    let got = state(&mut app, "small-1").await;
    assert_eq!(got.status(), SignStatus::Signed);
    assert_eq!(
        got.response,
        Some(v1::sign_request_state::Response::Transaction(direct))
    );
    let st = refused(
        "unknown id",
        app.get_sign_request(v1::GetSignRequestRequest {
            request_id: "never-made".into(),
        })
        .await,
    );
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let mut bob_requester = env.client(&d, "bob").await;
    let st = refused(
        "someone else's request",
        bob_requester
            .get_sign_request(v1::GetSignRequestRequest {
                request_id: "big-1".into(),
            })
            .await,
    );
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    // A `client` longer than any identity id is refused before anything is looked up.
    let mut carol = approver(&env, &d, "carol").await;
    let mut long = approval("carol", "app", &p);
    long.client = "a".repeat(129);
    let st = refused("long client", carol.approve(long).await);
    assert_status(
        "long client",
        &st,
        Code::InvalidArgument,
        "1 to 128 characters",
    );
    // Votes on a finished request are refused.
    let mut late = approver(&env, &d, "dave").await;
    let st = refused("late", late.approve(approval("dave", "app", &p)).await);
    assert_status(
        "late",
        &st,
        Code::FailedPrecondition,
        "no longer takes votes",
    );

    let audit = env.wait_audit(|a| a.results("big-1") == vec!["signed".to_owned()]);
    assert_eq!(audit.count("approval.request", "big-1"), 1);
    check_grants(&audit, 2, &public("bob"));
    assert!(audit.results("big-2").is_empty());
    let vk = vkey(&env);
    // SIGTERM ends every background task (the approval sweep among them) before the audit
    // log is closed, none left behind.
    let (status, stderr) = d.stop_logged();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("background tasks ended; closing the audit log"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not end"), "{stderr}");
    assert_verifies(&env.audit_dir(), &vk);
}

#[tokio::test]
async fn veto_and_expiry_never_sign_and_release_spend() {
    // The deadline is longer than the server's request timeout (10 s): a watch outlives it.
    let env = approvals_env("approvals-veto", "12s");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let mut bob = approver(&env, &d, "bob").await;
    let mut carol = approver(&env, &d, "carol").await;

    let p = pending(&mut app, "veto-1", 5000).await;
    let r = carol
        .reject(carol_rejects(&p, "not a known payee"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status(), SignStatus::Rejected);
    let s = state(&mut app, "veto-1").await;
    assert_eq!(s.status(), SignStatus::Rejected);
    assert!(
        s.reason.contains("carol") && s.reason.contains("not a known payee"),
        "{s:?}"
    );
    let st = refused("after veto", bob.approve(approval("bob", "app", &p)).await);
    assert_status("after veto", &st, Code::FailedPrecondition, "rejected");
    let st = refused(
        "retry after veto",
        app.sign_evm_transaction(tx("veto-1", 5000)).await,
    );
    assert_status(
        "retry after veto",
        &st,
        Code::PermissionDenied,
        "rejected by `carol`",
    );

    // The vetoed request released its 5,000 wei: 9,000 more still fit the 10,000 limit.
    let p = pending(&mut app, "exp-1", 9000).await;
    bob.approve(approval("bob", "app", &p)).await.unwrap();
    let s = final_state(&mut app, "exp-1").await;
    assert_eq!(s.status(), SignStatus::Expired, "{s:?}");
    let st = refused(
        "after expiry",
        carol.approve(approval("carol", "app", &p)).await,
    );
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    // Expired released its reservation too.
    pending(&mut app, "exp-2", 9500).await;

    let audit = env.wait_audit(|a| !a.results("exp-1").is_empty());
    assert_eq!(audit.results("veto-1"), vec!["rejected".to_owned()]);
    assert_eq!(audit.results("exp-1"), vec!["expired".to_owned()]);
    assert_eq!(audit.count("approval.reject", "veto-1"), 1);
    assert_eq!(audit.count("approval.expire", "exp-1"), 1);
    audit.assert_not_signed("veto-1");
    audit.assert_not_signed("exp-1");
}

#[tokio::test]
async fn pending_requests_and_their_reservations_survive_kill_9() {
    let env = approvals_env("approvals-kill", "1h");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let p = pending(&mut app, "hold-1", 9500).await;
    let mut bob = approver(&env, &d, "bob").await;
    bob.approve(approval("bob", "app", &p)).await.unwrap();
    // The pending 9,500 wei are reserved: 999 more (allowed without approval) do not fit.
    let st = refused(
        "over while pending",
        app.sign_evm_transaction(tx("small-1", 999)).await,
    );
    assert_status(
        "over while pending",
        &st,
        Code::PermissionDenied,
        "daily-eth",
    );

    let status = Command::new("kill")
        .args(["-9", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(d);

    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let mut carol = approver(&env, &d, "carol").await;
    let list = carol
        .list_pending(v1::ListPendingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.requests.len(), 1, "{list:?}");
    let votes = &list.requests[0].votes;
    assert_eq!(votes.len(), 1);
    assert_eq!(
        (votes[0].approver.as_str(), votes[0].decision.as_str()),
        ("bob", "approve")
    );
    let st = refused(
        "over after restart",
        app.sign_evm_transaction(tx("small-2", 999)).await,
    );
    assert_status(
        "over after restart",
        &st,
        Code::PermissionDenied,
        "daily-eth",
    );

    let r = carol
        .approve(approval("carol", "app", &p))
        .await
        .unwrap()
        .into_inner();
    assert!(r.quorum_reached);
    let s = final_state(&mut app, "hold-1").await;
    assert_eq!(s.status(), SignStatus::Signed, "{s:?}");
    let audit = env.wait_audit(|a| a.results("hold-1") == vec!["signed".to_owned()]);
    check_grants(&audit, 2, &public("bob"));
    let vk = vkey(&env);
    assert!(d.stop().success());
    assert_verifies(&env.audit_dir(), &vk);
}

#[tokio::test]
async fn limits_are_checked_again_at_signing() {
    let env = approvals_env("approvals-recheck", "1h");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let p = pending(&mut app, "big", 6000).await;
    let mut bob = approver(&env, &d, "bob").await;
    // An approval that expired no longer counts, and may be renewed.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    let mut short = approval("bob", "app", &p);
    short.expires_unix = soon;
    short.signature = signed("bob", "app", "big", &p.fingerprint, "approve", soon);
    bob.approve(short).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = state(&mut app, "big").await;
    assert!(s.pending.unwrap().requirements[0].approved_by.is_empty());
    bob.approve(approval("bob", "app", &p)).await.unwrap();

    // Meanwhile the daily limit is lowered below what the request needs.
    env.write_policy(&policy(2, "1h", 5000));
    let settings = env.settings(&d, "admin");
    let mut admin =
        v1::admin_client::AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    admin
        .reload_policy(v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap();

    let mut carol = approver(&env, &d, "carol").await;
    let r = carol
        .approve(approval("carol", "app", &p))
        .await
        .unwrap()
        .into_inner();
    assert!(r.quorum_reached);
    let s = final_state(&mut app, "big").await;
    assert_eq!(s.status(), SignStatus::Denied, "{s:?}");
    assert!(s.reason.contains("daily-eth"), "{s:?}");
    assert!(s.response.is_none());
    let st = refused("retry", app.sign_evm_transaction(tx("big", 6000)).await);
    assert_status("retry", &st, Code::PermissionDenied, "daily-eth");
    let audit = env.wait_audit(|a| !a.results("big").is_empty());
    assert_eq!(audit.results("big"), vec!["denied".to_owned()]);
    audit.assert_not_signed("big");
}

/// `signerctl` with mTLS settings for `who`.
pub(crate) fn ctl_as(env: &TestEnv, d: &Daemon, who: &str, args: &[&str]) -> Exited {
    let pki = env.dir.join("pki");
    let mut cmd = Command::new(SIGNERCTL);
    cmd.arg("--endpoint")
        .arg(d.endpoint())
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--client-cert")
        .arg(pki.join(format!("{who}.pem")))
        .arg("--client-key")
        .arg(pki.join(format!("{who}-key.pem")))
        .args(args);
    run_to_exit(cmd, Duration::from_secs(60))
}

#[tokio::test]
async fn signerctl_keygen_review_approve_and_wait() {
    let keys = unique_dir("approvals-cli-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_file = keys.join("bob.key");
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(["approver", "keygen", "--out", key_file.to_str().unwrap()]);
    let out = run_to_exit(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    let bob_key = out.stdout.trim().to_owned();
    assert!(
        bob_key.starts_with("ed25519:") && bob_key.len() == 8 + 64,
        "{bob_key}"
    );
    assert_eq!(mode_of(&key_file) & 0o777, 0o600);
    let secret = std::fs::read_to_string(&key_file).unwrap();
    assert!(!out.stdout.contains(secret.trim()) && !out.stderr.contains(secret.trim()));
    // It refuses to overwrite a key.
    let mut again = Command::new(SIGNERCTL);
    again.args(["approver", "keygen", "--out", key_file.to_str().unwrap()]);
    assert!(!run_to_exit(again, Duration::from_secs(30)).status.success());

    let env = TestEnv::with(
        "approvals-cli",
        Opts {
            policy: policy_with(1, "1h", 10_000, &bob_key),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let p = pending(&mut app, "cli-1", 5000).await;

    let list = ctl_as(&env, &d, "bob", &["approvals", "list"]);
    assert!(list.status.success(), "{list:?}");
    assert!(
        list.stdout.contains("app/cli-1") && list.stdout.contains("0/2 of treasury"),
        "{}",
        list.stdout
    );
    let show = ctl_as(
        &env,
        &d,
        "bob",
        &["--json", "approvals", "show", "app/cli-1"],
    );
    assert!(show.status.success(), "{show:?}");
    let shown: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["pending"]["fingerprint"], p.fingerprint.as_str());
    assert_eq!(shown["action"]["kind"], "native_transfer");

    let kf = key_file.to_str().unwrap();
    let wrong = ctl_as(
        &env,
        &d,
        "bob",
        &[
            "approvals",
            "approve",
            "app/cli-1",
            "--fingerprint",
            &"00".repeat(32),
            "--key-file",
            kf,
        ],
    );
    assert!(!wrong.status.success());
    assert!(wrong.stderr.contains("you reviewed"), "{wrong:?}");
    let ok = ctl_as(
        &env,
        &d,
        "bob",
        &[
            "approvals",
            "approve",
            "app/cli-1",
            "--fingerprint",
            &p.fingerprint,
            "--key-file",
            kf,
        ],
    );
    assert!(ok.status.success(), "{ok:?}");
    assert!(ok.stdout.contains("1/2 of treasury [bob]"), "{}", ok.stdout);

    let mut carol = approver(&env, &d, "carol").await;
    carol.approve(approval("carol", "app", &p)).await.unwrap();
    let waited = ctl_as(&env, &d, "app", &["request", "status", "cli-1", "--wait"]);
    assert!(waited.status.success(), "{waited:?}");
    assert!(
        waited.stdout.contains("SIGN_STATUS_SIGNED"),
        "{}",
        waited.stdout
    );
    let audit = env.wait_audit(|a| a.results("cli-1") == vec!["signed".to_owned()]);
    check_grants(&audit, 2, &bob_key);
    let _ = std::fs::remove_dir_all(&keys);
}

/// A reject of `p` (made by `app`) by carol, for `reason`.
fn carol_rejects(p: &v1::PendingApproval, reason: &str) -> v1::RejectRequest {
    v1::RejectRequest {
        client: "app".into(),
        request_id: p.request_id.clone(),
        fingerprint: p.fingerprint.clone(),
        expires_unix: p.deadline_unix,
        signature: signed(
            "carol",
            "app",
            &p.request_id,
            &p.fingerprint,
            "reject",
            p.deadline_unix,
        ),
        reason: reason.to_owned(),
    }
}

/// A vote whose call ends early (its deadline passes while signerd records it) still counts
/// once the audit log has it: a veto in the log always ends the request, so later approvals
/// can never sign it.
#[tokio::test]
async fn a_vote_cut_short_by_its_deadline_still_counts() {
    let env = approvals_env("approvals-cut", "60s");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let mut carol = approver(&env, &d, "carol").await;
    let (mut cut, mut cut_after_logging) = (0, 0);
    for i in 0..24u64 {
        let rid = format!("cut-{i}");
        let p = pending(&mut app, &rid, 5000).await;
        let mut req = tonic::Request::new(carol_rejects(&p, "cut short"));
        // From 0.1 ms to 2.4 ms: some calls end before the vote is read, some while its
        // audit record is being made durable, some after.
        req.set_timeout(Duration::from_micros(100 * (i + 1)));
        let answer = carol.reject(req).await;
        let logged = |a: &Audit| {
            a.lines
                .iter()
                .any(|l| l.v["type"] == "approval.reject" && l.v["req_id"] == rid.as_str())
        };
        if answer.is_err() {
            cut += 1;
            // A vote that was let go on could still be finishing; give it time to reach the log.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !logged(&env.audit()) {
            assert!(answer.is_err(), "{rid}: an accepted veto is not in the log");
            continue;
        }
        if answer.is_err() {
            cut_after_logging += 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let s = state(&mut app, &rid).await;
            if s.status() == SignStatus::Rejected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{rid}: the log has carol's veto but the request is {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Without calls cut after their vote was logged, this test would prove nothing.
    assert!(
        cut_after_logging > 0,
        "no vote was cut short after reaching the log ({cut} cut in all); shorten the deadlines"
    );
    let audit = env.audit();
    for i in 0..24 {
        audit.assert_not_signed(&format!("cut-{i}"));
    }
}

/// A `WatchSignRequest` stream whose client goes away ends at once, not at its
/// `max_wait_secs`: abandoned watches cannot pile up.
#[tokio::test]
async fn abandoned_watches_end_at_once() {
    let env = approvals_env("approvals-watch", "60s");
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = env.start();
    let addr = crate::metrics::metrics_addr(&d);
    let mut app = env.client(&d, "app").await;
    pending(&mut app, "watched-1", 5000).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = app
            .watch_sign_request(v1::WatchSignRequestRequest {
                request_id: "watched-1".into(),
                // The longest wait there is (an hour).
                max_wait_secs: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let first = s.message().await.unwrap().unwrap();
        assert_eq!(first.status(), SignStatus::PendingApproval, "{first:?}");
        streams.push(s);
    }
    wait_for_watches(&addr, 8.0, Duration::from_secs(10)).await;
    // The client cancels its streams and stays connected.
    drop(streams);
    // Each watch would otherwise run for its hour.
    wait_for_watches(&addr, 0.0, Duration::from_secs(5)).await;
}

/// Waits until `signerd_sign_request_watches` is `want`; panics after `within`.
async fn wait_for_watches(addr: &str, want: f64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let addr = addr.to_owned();
        let body = tokio::task::spawn_blocking(move || crate::metrics::scrape(&addr))
            .await
            .unwrap();
        let now = body
            .lines()
            .find_map(|l| l.strip_prefix("signerd_sign_request_watches "))
            .map(|v| v.trim().parse::<f64>().unwrap());
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "signerd_sign_request_watches is {now:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
