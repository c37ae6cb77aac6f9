//! Malformed and unsupported requests: each is refused with the right status code and a
//! message that says what is wrong, nothing is signed, the refusal is audited, and the daemon
//! keeps serving.

use serde_json::Value;
use signerd_proto::v1;
use signerd_proto::v1::signer_client::SignerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::signing::MAIL_TYPED_DATA;
use crate::util::*;

/// A request of any signing method.
enum Call {
    Tx(v1::SignEvmTransactionRequest),
    Message(v1::SignEvmMessageRequest),
    Typed(v1::SignTypedDataRequest),
    Digest(v1::SignDigestRequest),
}

impl Call {
    fn request_id(&self) -> &str {
        match self {
            Call::Tx(r) => &r.request_id,
            Call::Message(r) => &r.request_id,
            Call::Typed(r) => &r.request_id,
            Call::Digest(r) => &r.request_id,
        }
    }

    /// Sends the request; it must fail.
    async fn refused(self, what: &str, c: &mut SignerClient<Channel>) -> tonic::Status {
        match self {
            Call::Tx(r) => refused(what, c.sign_evm_transaction(r).await),
            Call::Message(r) => refused(what, c.sign_evm_message(r).await),
            Call::Typed(r) => refused(what, c.sign_typed_data(r).await),
            Call::Digest(r) => refused(what, c.sign_digest(r).await),
        }
    }
}

/// The API's rule for request ids: 1 to 128 characters of `[A-Za-z0-9._:-]`.
fn well_formed_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn tx(id: &str, f: impl FnOnce(&mut v1::SignEvmTransactionRequest)) -> Call {
    let mut r = eip1559(id);
    f(&mut r);
    Call::Tx(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_precisely() {
    let env = TestEnv::new("badinput");
    let d = env.start();
    let mut c = env.client(&d, "app").await;

    // The Mail example with a wallet that is not an address.
    let bad_typed = MAIL_TYPED_DATA.replace("0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826", "0x1234");
    assert_ne!(bad_typed, MAIL_TYPED_DATA);
    let over_256 = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
    // Vitalik's address with one letter's case flipped.
    let bad_checksum = "0xd8da6BF26964aF9D7eEd9e03E53415D37aA96045";

    let cases: Vec<(&str, Call, Code, &str, &str)> = vec![
        (
            "missing request_id",
            tx("", |_| {}),
            Code::InvalidArgument,
            "request_id",
            "invalid_argument",
        ),
        (
            "request_id with a space",
            tx("a b", |_| {}),
            Code::InvalidArgument,
            "request_id",
            "invalid_argument",
        ),
        (
            "unknown key",
            tx("bad-key", |r| r.key_id = "no-such-key".into()),
            Code::NotFound,
            "no-such-key",
            "not_found",
        ),
        (
            "ed25519 key for an EVM tx",
            tx("bad-alg", |r| r.key_id = ED.into()),
            Code::InvalidArgument,
            "secp256k1",
            "invalid_argument",
        ),
        (
            "invalid to",
            tx("bad-to", |r| r.to = "0x1234".into()),
            Code::InvalidArgument,
            "to:",
            "invalid_argument",
        ),
        (
            "bad EIP-55 checksum",
            tx("bad-checksum", |r| r.to = bad_checksum.into()),
            Code::InvalidArgument,
            "EIP-55",
            "invalid_argument",
        ),
        (
            "value over 256 bits",
            tx("bad-value", |r| r.value = over_256.into()),
            Code::InvalidArgument,
            "256 bits",
            "invalid_argument",
        ),
        (
            "EIP-4844",
            tx("bad-4844", |r| {
                r.r#type = v1::EvmTransactionType::Eip4844.into()
            }),
            Code::InvalidArgument,
            "not supported",
            "invalid_argument",
        ),
        (
            "EIP-7702",
            tx("bad-7702", |r| {
                r.r#type = v1::EvmTransactionType::Eip7702.into()
            }),
            Code::InvalidArgument,
            "not supported",
            "invalid_argument",
        ),
        (
            "legacy with chain_id 0",
            Call::Tx(v1::SignEvmTransactionRequest {
                dry_run: false,
                chain_id: 0,
                ..legacy("bad-chain")
            }),
            Code::InvalidArgument,
            "chain_id",
            "invalid_argument",
        ),
        (
            "typed data not matching its types",
            Call::Typed(v1::SignTypedDataRequest {
                dry_run: false,
                request_id: "bad-typed".into(),
                key_id: HOT.into(),
                typed_data_json: bad_typed,
            }),
            Code::InvalidArgument,
            "typed_data_json: message.from.wallet (address): has 4 hex digits",
            "invalid_argument",
        ),
        (
            "typed data that is not JSON",
            Call::Typed(v1::SignTypedDataRequest {
                dry_run: false,
                request_id: "bad-json".into(),
                key_id: HOT.into(),
                typed_data_json: "{\"types\": ".into(),
            }),
            Code::InvalidArgument,
            "typed_data_json: invalid JSON",
            "invalid_argument",
        ),
        (
            "digest of 31 bytes",
            Call::Digest(v1::SignDigestRequest {
                dry_run: false,
                request_id: "bad-digest".into(),
                key_id: ED.into(),
                digest: vec![7; 31],
            }),
            Code::InvalidArgument,
            "32 bytes",
            "invalid_argument",
        ),
        (
            "key_id that forges a log line",
            Call::Message(v1::SignEvmMessageRequest {
                dry_run: false,
                request_id: "bad-key-text".into(),
                key_id: format!("{HOT}\nFORGED-KEY-TEXT level=INFO signed"),
                message: b"hi".to_vec(),
            }),
            Code::InvalidArgument,
            "key_id: 1 to 64 characters",
            "invalid_argument",
        ),
        (
            "key_id of 100,000 characters",
            Call::Digest(v1::SignDigestRequest {
                dry_run: false,
                request_id: "bad-key-long".into(),
                key_id: "FORGED-KEY-TEXT".repeat(100_000 / 15),
                digest: vec![7; 32],
            }),
            Code::InvalidArgument,
            "key_id: 1 to 64 characters",
            "invalid_argument",
        ),
        (
            "request_id that forges a log line",
            tx("bad\nFORGED-REQUEST-TEXT level=INFO signed", |_| {}),
            Code::InvalidArgument,
            "request_id",
            "invalid_argument",
        ),
        (
            "message with an unknown key",
            Call::Message(v1::SignEvmMessageRequest {
                dry_run: false,
                request_id: "bad-msg-key".into(),
                key_id: "missing".into(),
                message: b"hi".to_vec(),
            }),
            Code::NotFound,
            "missing",
            "not_found",
        ),
    ];

    for (what, call, code, needle, audit_status) in cases {
        let id = call.request_id().to_owned();
        let st = call.refused(what, &mut c).await;
        assert_status(what, &st, code, needle);
        // The refusal is audited. A malformed request_id is not written to the log (it is
        // client-controlled text): that record has a null req_id and the same message.
        let logged_id = if well_formed_request_id(&id) {
            Value::from(id.as_str())
        } else {
            Value::Null
        };
        let is_ours = |v: &Value| {
            v["type"] == "sign.result" && v["req_id"] == logged_id && v["message"] == st.message()
        };
        let audit = env.wait_audit(|a| a.lines.iter().any(|l| is_ours(&l.v)));
        let ours: Vec<&Value> = audit
            .lines
            .iter()
            .map(|l| &l.v)
            .filter(|v| is_ours(v))
            .collect();
        assert!(
            ours.iter().any(|v| v["status"] == audit_status),
            "{what}: no `{audit_status}` sign.result with req_id {logged_id} and message {:?}; found {ours:?}",
            st.message()
        );
        if logged_id.is_null() && !id.is_empty() {
            assert!(
                audit
                    .lines
                    .iter()
                    .all(|l| !l.raw.contains(&format!("\"{id}\""))),
                "{what}: the malformed request_id reached the log"
            );
        }
        audit.assert_not_signed(&id);
    }

    // Still serving.
    let resp = c
        .sign_evm_transaction(eip1559("good-after-bad"))
        .await
        .unwrap()
        .into_inner();
    check_receipt(&env.audit(), resp.receipt.as_ref(), "good-after-bad");

    // Malformed client-chosen identifiers reach neither the audit log nor the daemon's log,
    // where they could forge lines or fill the disk.
    let audit = env.audit();
    for marker in ["FORGED-KEY-TEXT", "FORGED-REQUEST-TEXT"] {
        assert!(
            audit.lines.iter().all(|l| !l.raw.contains(marker)),
            "{marker} reached the audit log"
        );
        assert!(
            !d.stderr().contains(marker),
            "{marker} reached the daemon's log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused() {
    let env = TestEnv::with(
        "oversized",
        Opts {
            max_message_bytes: Some(64 * 1024),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let st = refused(
        "100 KiB message",
        c.sign_evm_message(v1::SignEvmMessageRequest {
            dry_run: false,
            request_id: "too-big".into(),
            key_id: HOT.into(),
            message: vec![b'a'; 100 * 1024],
        })
        .await,
    );
    assert!(
        matches!(st.code(), Code::ResourceExhausted | Code::OutOfRange),
        "oversized request: {st:?}"
    );
    // The daemon still serves, on the same connection and on a new one.
    c.sign_evm_transaction(eip1559("after-big")).await.unwrap();
    let mut c2 = env.client(&d, "app").await;
    c2.sign_evm_transaction(eip1559("after-big-2"))
        .await
        .unwrap();
    let audit = env.audit();
    audit.assert_not_signed("too-big");
    assert!(
        audit.for_req("too-big").is_empty(),
        "an undecodable request reached the pipeline"
    );
}
