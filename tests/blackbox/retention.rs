//! Idempotency retention: an answer older than `[state] idempotency_retention` is pruned, and a
//! retry of its request_id is refused with FAILED_PRECONDITION, never signed again; also after
//! the state store is rebuilt from the audit log.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::util::*;

/// A retention of two seconds, pruned every 100 ms.
fn short_retention() -> TestEnv {
    TestEnv::with(
        "retention",
        Opts {
            state: "idempotency_retention = \"2s\"\nprune_interval = \"100ms\"\n".to_owned(),
            ..Opts::default()
        },
    )
}

/// Checks the refusal of a retry of `id` after its answer expired.
fn assert_expired(what: &str, st: &tonic::Status, id: &str) {
    assert_status(what, st, Code::FailedPrecondition, "use a new request_id");
    for needle in [
        format!("request_id `{id}` was answered at 20"),
        "longer ago than the idempotency retention (2s)".to_owned(),
        "not signed again".to_owned(),
    ] {
        assert!(
            st.message().contains(&needle),
            "{what}: {:?} lacks {needle:?}",
            st.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_retention_is_refused_and_never_signed_again() {
    let env = short_retention();
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let first = c
        .sign_evm_transaction(eip1559("kept-then-expired"))
        .await
        .unwrap()
        .into_inner();
    // Within the retention a retry replays the answer.
    let again = c
        .sign_evm_transaction(eip1559("kept-then-expired"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);

    // The answer expires two seconds after it was answered (whole seconds), at the next pass.
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        match c.sign_evm_transaction(eip1559("kept-then-expired")).await {
            Ok(resp) => {
                assert_eq!(resp.into_inner(), first, "a retry got another answer");
                assert!(
                    Instant::now() < deadline,
                    "the answer was still replayed 15 s after a retention of 2 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(st) => break st,
        }
    };
    assert_expired("retry after retention", &st, "kept-then-expired");
    // Another request under the expired id is refused the same way.
    let other = signerd_proto::v1::SignEvmTransactionRequest {
        nonce: 9,
        ..eip1559("kept-then-expired")
    };
    let st = refused("another request", c.sign_evm_transaction(other).await);
    assert_expired("another request", &st, "kept-then-expired");
    // The state of the request says so too.
    let st = refused(
        "request state",
        c.get_sign_request(signerd_proto::v1::GetSignRequestRequest {
            request_id: "kept-then-expired".into(),
        })
        .await,
    );
    assert_expired("request state", &st, "kept-then-expired");
    // A new request_id signs.
    c.sign_evm_transaction(eip1559("fresh")).await.unwrap();
    drop(c);

    // Killed, and its whole state directory gone: the store is rebuilt from the audit log,
    // which restores the expired answer as a marker, not as an answer.
    crate::audit_support::kill_9(d);
    std::fs::remove_dir_all(env.dir.join("state")).unwrap();
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let st = refused(
        "retry after the store was rebuilt",
        c.sign_evm_transaction(eip1559("kept-then-expired")).await,
    );
    assert_expired(
        "retry after the store was rebuilt",
        &st,
        "kept-then-expired",
    );
    drop(c);
    let status = d.stop();
    assert!(status.success(), "signerd exited with {status} on SIGTERM");

    let audit = env.audit();
    assert_eq!(
        audit.results("kept-then-expired"),
        ["signed"],
        "the expired request was signed again"
    );
    assert_eq!(audit.results("fresh"), ["signed"]);
}

/// A request waiting for approval keeps its record past the retention: it is still pending,
/// is signed at quorum, and replays; its retention counts from when it was signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_approval_outlives_the_retention() {
    use crate::approvals::{approval, approver, final_state, pending};
    use signerd_proto::v1::SignStatus;

    let env = TestEnv::with(
        "retention-waiting",
        Opts {
            policy: crate::approvals::policy(1, "1h", 10_000),
            state: "idempotency_retention = \"2s\"\nprune_interval = \"100ms\"\n".to_owned(),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let p = pending(&mut app, "waits", 6000).await;
    // Well past the retention, and many passes later: still waiting, the same request.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        pending(&mut app, "waits", 6000).await.fingerprint,
        p.fingerprint
    );
    let mut bob = approver(&env, &d, "bob").await;
    bob.approve(approval("bob", "app", &p)).await.unwrap();
    let mut carol = approver(&env, &d, "carol").await;
    assert!(
        carol
            .approve(approval("carol", "app", &p))
            .await
            .unwrap()
            .into_inner()
            .quorum_reached
    );
    let s = final_state(&mut app, "waits").await;
    assert_eq!(s.status(), SignStatus::Signed, "{s:?}");
    assert!(s.response.is_some(), "{s:?}");
    // Its answer is kept for the retention after it was signed, then expires.
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        match app
            .sign_evm_transaction(crate::approvals::tx("waits", 6000))
            .await
        {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still replayed 15 s after a retention of 2 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(st) => break st,
        }
    };
    assert_expired("retry of the approved request", &st, "waits");
    assert!(d.stop().success());
    assert_eq!(env.audit().results("waits"), ["signed"]);
}
