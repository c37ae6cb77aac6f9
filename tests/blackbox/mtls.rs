//! Mutual TLS: who may talk to signerd. A mapped certificate signs; a missing, foreign, expired
//! or revoked certificate, or one that maps to no identity, never gets a signature; a client
//! the policy does not name is denied; a silent TCP client cannot hold the door.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use signerd::client::connect;
use tonic::Code;

use crate::util::*;

/// Tries to sign the standard request as `client` (or without a certificate for `None`).
/// Returns the connection or call error; panics if a signature came back.
async fn attempt(env: &TestEnv, d: &Daemon, client: Option<&str>, req_id: &str) -> String {
    let mut settings = env.settings(d, client.unwrap_or("app"));
    if client.is_none() {
        settings.identity = None;
    }
    // With TLS 1.3 the client finishes its handshake before the server has checked the client
    // certificate, so a refusal shows at connect or at the first call; either is a refusal.
    let mut c = match connect(&settings).await {
        Ok(c) => c,
        Err(e) => return format!("connect: {e}"),
    };
    match c.sign_evm_transaction(eip1559(req_id)).await {
        Ok(resp) => panic!(
            "{client:?}: signed although it must be refused: {:?}",
            resp.into_inner()
        ),
        Err(st) => {
            assert_ne!(st.code(), Code::Ok);
            format!("call: {st:?}")
        }
    }
}

/// A refused certificate: no signature, nothing about the request in the log, and an
/// `auth.failure` record.
async fn assert_refused_at_tls(env: &TestEnv, d: &Daemon, client: Option<&str>, req_id: &str) {
    let before = env.audit().of_type("auth.failure").len();
    let why = attempt(env, d, client, req_id).await;
    let audit = env.wait_audit(|a| a.of_type("auth.failure").len() > before);
    assert!(
        audit.of_type("auth.failure").len() > before,
        "{client:?} was refused ({why}) but no auth.failure was recorded"
    );
    assert!(
        audit.for_req(req_id).is_empty(),
        "{client:?}: the request reached the pipeline ({why})"
    );
    // The daemon still serves good clients.
    let mut c = env.client(d, "app").await;
    c.sign_evm_transaction(eip1559(&format!("{req_id}-after")))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_client_signs() {
    let env = TestEnv::new("mtls-ok");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let resp = c
        .sign_evm_transaction(eip1559("ok-1"))
        .await
        .unwrap()
        .into_inner();
    let audit = env.audit();
    check_receipt(&audit, resp.receipt.as_ref(), "ok-1");
    let request = audit
        .for_req("ok-1")
        .into_iter()
        .find(|v| v["type"] == "sign.request")
        .cloned()
        .unwrap();
    assert_eq!(request["client"], "app", "{request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let env = TestEnv::new("mtls-nocert");
    let d = env.start();
    assert_refused_at_tls(&env, &d, None, "nocert-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let env = TestEnv::new("mtls-rogue");
    let d = env.start();
    // Same subject CN as the mapped `app`, issued by a CA with the same name: only the
    // signature chain differs.
    assert_refused_at_tls(&env, &d, Some("app-rogue"), "rogue-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let env = TestEnv::new("mtls-expired");
    let d = env.start();
    assert_refused_at_tls(&env, &d, Some("app-expired"), "expired-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_refused() {
    let env = TestEnv::with(
        "mtls-revoked",
        Opts {
            crl: true,
            ..Opts::default()
        },
    );
    let d = env.start();
    // The CRL is in force and does not disturb certificates it does not list.
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("revoked-control"))
        .await
        .unwrap();
    assert_refused_at_tls(&env, &d, Some("app-revoked"), "revoked-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_identity_is_unauthenticated() {
    let env = TestEnv::new("mtls-unmapped");
    let d = env.start();
    // A valid certificate of the trusted CA whose CN no [[identity]] names.
    let mut c = env.client(&d, "stranger").await;
    let st = refused(
        "stranger",
        c.sign_evm_transaction(eip1559("stranger-1")).await,
    );
    assert_status("stranger", &st, Code::Unauthenticated, "not mapped");
    let st = refused(
        "stranger ListKeys",
        c.list_keys(signerd_proto::v1::ListKeysRequest {}).await,
    );
    assert_eq!(st.code(), Code::Unauthenticated);

    let audit = env.wait_audit(|a| !a.of_type("auth.failure").is_empty());
    let failures = audit.of_type("auth.failure");
    assert!(!failures.is_empty(), "no auth.failure record");
    assert!(
        failures
            .iter()
            .any(|v| v["reason"].as_str().is_some_and(|r| r.contains("stranger"))),
        "auth.failure does not say which certificate: {failures:?}"
    );
    assert!(
        audit.for_req("stranger-1").is_empty(),
        "the request reached the pipeline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_the_policy_does_not_name_is_denied() {
    let env = TestEnv::new("mtls-bob");
    let d = env.start();
    // `bob` is a mapped approver; no rule lets approvers sign.
    let mut c = env.client(&d, "bob").await;
    let st = refused("bob", c.sign_evm_transaction(eip1559("bob-1")).await);
    assert_status("bob", &st, Code::PermissionDenied, "no rule allows");
    let audit = env.wait_audit(|a| !a.results("bob-1").is_empty());
    assert_eq!(audit.results("bob-1"), ["denied"]);
    let request = audit
        .for_req("bob-1")
        .into_iter()
        .find(|v| v["type"] == "sign.request")
        .cloned()
        .unwrap();
    assert_eq!(request["client"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn san_uri_identity_is_mapped() {
    let env = TestEnv::new("mtls-spiffe");
    let d = env.start();
    // The certificate's CN (`payments-pod`) is not configured; its SPIFFE URI is.
    let mut c = env.client(&d, "payments").await;
    let resp = c
        .sign_evm_transaction(eip1559("spiffe-1"))
        .await
        .unwrap()
        .into_inner();
    let address = address_of(&mut c, HOT).await;
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, false);
    let audit = env.audit();
    check_receipt(&audit, resp.receipt.as_ref(), "spiffe-1");
    let request = audit
        .for_req("spiffe-1")
        .into_iter()
        .find(|v| v["type"] == "sign.request")
        .cloned()
        .unwrap();
    assert_eq!(request["client"], "payments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_client_does_not_block_and_is_closed() {
    let env = TestEnv::with(
        "mtls-silent",
        Opts {
            handshake_timeout: Some(Duration::from_millis(500)),
            ..Opts::default()
        },
    );
    let d = env.start();
    // Clients that connect and never send a ClientHello.
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    let opened = Instant::now();

    // Meanwhile a real client is served.
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("while-silent"))
        .await
        .unwrap();

    // The daemon hangs up on each silent client after the handshake deadline.
    for (i, mut s) in silent.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                panic!("silent client {i}: server sent {n} bytes to a client that said nothing")
            }
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "silent client {i} still open {:?} after connecting (handshake timeout is 500 ms)",
                opened.elapsed()
            ),
        }
    }
    // And still serves afterwards.
    c.sign_evm_transaction(eip1559("after-silent"))
        .await
        .unwrap();
}

/// A configuration written for an earlier release, with the integer `handshake_timeout_ms`,
/// still starts, is warned about, and its value applies (the default is 5 s).
#[test]
fn deprecated_handshake_timeout_ms_still_applies() {
    let env = TestEnv::with(
        "mtls-deprecated-key",
        Opts {
            handshake_timeout: Some(Duration::from_millis(300)),
            ..Opts::default()
        },
    );
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    let legacy = config.replace(
        "handshake_timeout = \"300ms\"",
        "handshake_timeout_ms = 300",
    );
    assert_ne!(legacy, config, "the test configuration changed shape");
    std::fs::write(env.config_path(), legacy).unwrap();
    let d = env.start();
    let warning = "server.handshake_timeout_ms is deprecated: write handshake_timeout = \"300ms\"";
    // stderr is read by another thread: give it a moment to catch up with stdout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.stderr().contains(warning) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.stderr().contains(warning), "{}", d.stderr());
    let mut silent = TcpStream::connect(d.addr).unwrap();
    let opened = Instant::now();
    silent
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("server sent {n} bytes to a client that said nothing"),
        Err(e) => panic!(
            "silent client still open {:?} after connecting ({e}): the deprecated key did not apply",
            opened.elapsed()
        ),
    }
}
