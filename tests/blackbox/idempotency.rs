//! Idempotency keys: a retried request is signed once and answered identically, even across a
//! restart; a reused key with a different request is refused; each client has its own keys.

use prost::Message;
use signerd_proto::v1;
use tonic::Code;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_signed_once() {
    let env = TestEnv::new("idem-concurrent");
    let d = env.start();
    let c = env.client(&d, "app").await;
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.sign_evm_transaction(eip1559("same-id")).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for call in calls {
        let resp = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("duplicate call failed: {e:?}"));
        bodies.push(resp.into_inner().encode_to_vec());
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "duplicate calls got different responses"
    );

    let resp = v1::SignEvmTransactionResponse::decode(bodies[0].as_slice()).unwrap();
    let audit = env.audit();
    assert_eq!(
        audit.count("sign.decision", "same-id"),
        1,
        "decisions for same-id"
    );
    assert_eq!(
        audit.count("sign.result", "same-id"),
        1,
        "results for same-id"
    );
    assert_eq!(audit.results("same-id"), ["signed"]);
    check_receipt(&audit, resp.receipt.as_ref(), "same-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_id_with_another_request_is_aborted() {
    let env = TestEnv::new("idem-aborted");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let first = c
        .sign_evm_transaction(eip1559("reused"))
        .await
        .unwrap()
        .into_inner();

    let other = v1::SignEvmTransactionRequest {
        dry_run: false,
        nonce: 1,
        ..eip1559("reused")
    };
    let st = refused("different body", c.sign_evm_transaction(other).await);
    assert_status(
        "different body",
        &st,
        Code::Aborted,
        "request_id was already used for a different SignEvmTransaction request; use a new \
         request_id for a new request",
    );
    // Another method with the same id is a different request too.
    let st = refused(
        "different method",
        c.sign_evm_message(v1::SignEvmMessageRequest {
            dry_run: false,
            request_id: "reused".into(),
            key_id: HOT.into(),
            message: b"x".to_vec(),
        })
        .await,
    );
    assert_status(
        "different method",
        &st,
        Code::Aborted,
        "request_id was already used for a SignEvmTransaction request; this SignEvmMessage \
         request needs a new request_id",
    );

    // The original request still replays.
    let again = c
        .sign_evm_transaction(eip1559("reused"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.encode_to_vec(), first.encode_to_vec());
    let audit = env.audit();
    assert_eq!(
        audit.results("reused"),
        ["signed"],
        "only the first request was signed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_restart_returns_the_stored_response() {
    let env = TestEnv::new("idem-restart");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let first = c
        .sign_evm_transaction(eip1559("durable"))
        .await
        .unwrap()
        .into_inner();
    drop(c);
    let status = d.stop();
    assert!(status.success(), "signerd exited with {status} on SIGTERM");

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let again = c
        .sign_evm_transaction(eip1559("durable"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.encode_to_vec(),
        first.encode_to_vec(),
        "retry after restart got a different answer"
    );
    let other = v1::SignEvmTransactionRequest {
        dry_run: false,
        nonce: 9,
        ..eip1559("durable")
    };
    let st = refused(
        "different body after restart",
        c.sign_evm_transaction(other).await,
    );
    assert_eq!(st.code(), Code::Aborted, "{st:?}");

    let audit = env.audit();
    assert_eq!(
        audit.results("durable"),
        ["signed"],
        "the retry was signed again"
    );
    check_receipt(&audit, again.receipt.as_ref(), "durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_have_separate_request_ids() {
    let env = TestEnv::new("idem-clients");
    let d = env.start();
    let mut app = env.client(&d, "app").await;
    let mut payments = env.client(&d, "payments").await;
    let a = app
        .sign_evm_transaction(eip1559("shared-id"))
        .await
        .unwrap()
        .into_inner();
    let other = v1::SignEvmTransactionRequest {
        dry_run: false,
        nonce: 7,
        ..eip1559("shared-id")
    };
    let p = payments
        .sign_evm_transaction(other)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.raw_transaction, p.raw_transaction);
    assert_ne!(
        a.receipt.as_ref().unwrap().seq,
        p.receipt.as_ref().unwrap().seq
    );

    let audit = env.audit();
    assert_eq!(audit.results("shared-id"), ["signed", "signed"]);
    let mut clients: Vec<String> = audit
        .for_req("shared-id")
        .into_iter()
        .filter(|v| v["type"] == "sign.request")
        .map(|v| v["client"].as_str().unwrap_or("?").to_owned())
        .collect();
    clients.sort();
    assert_eq!(clients, ["app", "payments"]);
}

/// Signs one request of each kind (EIP-1559, legacy, EIP-191, EIP-712, Ed25519 digest) with
/// fixed request ids; the encoded answers.
async fn sign_every_kind(
    c: &mut signerd_proto::v1::signer_client::SignerClient<tonic::transport::Channel>,
) -> [Vec<u8>; 5] {
    let message = v1::SignEvmMessageRequest {
        dry_run: false,
        request_id: "r-message".into(),
        key_id: HOT.into(),
        message: b"restore me".to_vec(),
    };
    let typed = v1::SignTypedDataRequest {
        dry_run: false,
        request_id: "r-typed".into(),
        key_id: HOT.into(),
        typed_data_json: crate::signing::MAIL_TYPED_DATA.into(),
    };
    let digest = v1::SignDigestRequest {
        dry_run: false,
        request_id: "r-digest".into(),
        key_id: ED.into(),
        digest: vec![7; 32],
    };
    let bytes = |r: Result<Vec<u8>, tonic::Status>| r.unwrap_or_else(|e| panic!("{e:?}"));
    [
        bytes(
            c.sign_evm_transaction(eip1559("r-1559"))
                .await
                .map(|r| r.into_inner().encode_to_vec()),
        ),
        bytes(
            c.sign_evm_transaction(legacy("r-legacy"))
                .await
                .map(|r| r.into_inner().encode_to_vec()),
        ),
        bytes(
            c.sign_evm_message(message)
                .await
                .map(|r| r.into_inner().encode_to_vec()),
        ),
        bytes(
            c.sign_typed_data(typed)
                .await
                .map(|r| r.into_inner().encode_to_vec()),
        ),
        bytes(
            c.sign_digest(digest)
                .await
                .map(|r| r.into_inner().encode_to_vec()),
        ),
    ]
}

/// Every answer is rebuilt from the audit log when the state store has lost it: the audit log
/// is the durable copy of each answer, and the state store is not flushed per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_restored_from_the_audit_log_when_the_state_store_is_lost() {
    let env = TestEnv::new("idem-restore");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let deploy = v1::SignEvmTransactionRequest {
        to: String::new(),
        value: String::new(),
        data: INIT_CODE.to_vec(),
        gas_limit: 100_000,
        ..eip1559("r-denied")
    };
    let answers = sign_every_kind(&mut c).await;
    let denied = refused("deploy", c.sign_evm_transaction(deploy.clone()).await);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    drop(c);
    // Killed, and its whole state directory gone: only the audit log remains.
    crate::audit_support::kill_9(d);
    std::fs::remove_dir_all(env.dir.join("state")).unwrap();

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let again = sign_every_kind(&mut c).await;
    for (i, (a, b)) in answers.iter().zip(&again).enumerate() {
        assert_eq!(
            a, b,
            "answer {i} differs after restoring it from the audit log"
        );
    }
    let again_denied = refused("deploy again", c.sign_evm_transaction(deploy).await);
    assert_eq!(again_denied.code(), Code::PermissionDenied);
    assert_eq!(again_denied.message(), denied.message());
    // A different request under a restored id is still refused.
    let other = v1::SignEvmTransactionRequest {
        nonce: 9,
        ..eip1559("r-1559")
    };
    let st = refused("different body", c.sign_evm_transaction(other).await);
    assert_eq!(st.code(), Code::Aborted, "{st:?}");

    let audit = env.audit();
    for id in ["r-1559", "r-legacy", "r-message", "r-typed", "r-digest"] {
        assert_eq!(audit.results(id), ["signed"], "{id} was signed again");
    }
    assert_eq!(audit.results("r-denied"), ["denied"]);
    assert!(
        d.stderr().contains("answers_restored=6"),
        "start-up did not report the restored answers: {}",
        d.stderr()
    );
}
