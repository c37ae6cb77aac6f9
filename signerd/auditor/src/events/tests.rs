//! The typed events against the spec (`docs/audit-log.md`), against the bytes the
//! field-by-field builder writes (the daemon's call sites, copied as they were written before
//! events existed), and against the example log a real daemon wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn body(e: &impl Event) -> Vec<u8> {
    Record::from_event(e).encode().unwrap()
}

/// The event and the builder write the same type and the same bytes.
#[track_caller]
fn same(event: impl Event, built: Record) {
    let typed = Record::from_event(&event);
    assert_eq!(typed.kind(), built.kind());
    let (typed, built) = (typed.encode().unwrap(), built.encode().unwrap());
    assert_eq!(
        String::from_utf8(typed).unwrap(),
        String::from_utf8(built).unwrap()
    );
}

const HASH: &str = "cabecf7fc467ee1d303aa59722f5ffd116e29f76c3e4bdbcf266a5498a9b498b";
const CERT: &str = "96b829699da6d2e81516c4eaf73922cd4ea19f727bd042ac284f4828d75afd4c";

fn action() -> serde_json::Value {
    json!({"chain_id": 1, "key": "hot", "kind": "native_transfer",
           "to": "0x3535353535353535353535353535353535353535", "value": "0x3e8"})
}

fn signature() -> Signature {
    Signature {
        bytes: "0x".to_owned(),
        r: "0x1d3c".to_owned(),
        s: "0x2a4b".to_owned(),
        v: 37,
    }
}

/// One event of every type with every optional member present, and one `sign.result` of
/// every status.
fn examples() -> Vec<Record> {
    let mut out = vec![
        Record::from_event(&AuditStart {
            pid: 7,
            version: "0.1.0".to_owned(),
            checkpoint_key: "k".to_owned(),
        }),
        Record::from_event(&AuditStop {}),
        Record::from_event(&AuditCheckpoint {
            size: 3,
            root: HASH.to_owned(),
            note: "n".to_owned(),
        }),
        Record::from_event(&AuditSegmentSeal {
            segment: "segment-00000001.jsonl".to_owned(),
            first_seq: 0,
            records: 9,
        }),
        Record::from_event(&AuditSegmentOpen {
            segment: "segment-00000002.jsonl".to_owned(),
            previous: "segment-00000001.jsonl".to_owned(),
            previous_sha256: HASH.to_owned(),
            previous_bytes: 1000,
        }),
        Record::from_event(&AuditSnapshot {
            records: 120,
            sha256: HASH.to_owned(),
            file: "snapshots/snapshot-00000000000000000120.json".to_owned(),
        }),
        Record::from_event(&AuditRecover {
            segment: "segment-00000001.jsonl".to_owned(),
            offset: 10,
            bytes: 5,
            sha256: HASH.to_owned(),
            saved_as: "recovered/unattested-3-x.bin".to_owned(),
            unattested_records: 2,
        }),
        Record::from_event(&AuthFailure {
            peer: Some("127.0.0.1:5000".to_owned()),
            cert_sha256: Some(CERT.to_owned()),
            reason: "r".to_owned(),
            count: Some(3),
        }),
        Record::from_event(&PolicyLoad {
            source: PolicySource::Rpc,
            actor: Some(Some("admin".to_owned())),
            file: "policy.toml".to_owned(),
            old_serial: Some(1),
            old_hash: Some(HASH.to_owned()),
            new_serial: 2,
            new_hash: HASH.to_owned(),
            forced: false,
            signers: vec!["alice".to_owned(), "bob".to_owned()],
            threshold: Some(PolicyThreshold::Full),
            book_entries: vec![BookEntryLoad {
                address: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".to_owned(),
                book: "payees".to_owned(),
                first_loaded: "2026-01-01T10:00:00Z".to_owned(),
            }],
        }),
        Record::from_event(&PolicyRefused {
            source: PolicySource::Sighup,
            actor: None,
            file: "policy.toml".to_owned(),
            reason: "policy.toml:4:6: bad".to_owned(),
            signers: vec!["alice".to_owned()],
        }),
        Record::from_event(&StateRebind {
            previous_origin: "o".to_owned(),
            previous_first_record: HASH.to_owned(),
            previous_records: 9,
            first_record: HASH.to_owned(),
            records: 3,
        }),
        Record::from_event(&KeyPin {
            key: "hot".to_owned(),
            version: Some(2),
            algorithm: "ed25519".to_owned(),
            backend: "vault".to_owned(),
            public_key: format!("0x{HASH}"),
            checked: KeyChecked {
                exportable: Some(true),
                key_type: Some("ed25519".to_owned()),
                transit_key: Some("signerd-hot".to_owned()),
                ..KeyChecked::default()
            },
            weak: vec!["exportable".to_owned()],
        }),
        Record::from_event(&KeyAllowance {
            key: "hot".to_owned(),
            version: Some(2),
            pin: 1,
            weak: vec!["exportable".to_owned()],
            setting: "keys.allow_weak_keys".to_owned(),
        }),
        Record::from_event(&SignRequest {
            req_id: Some("r1".to_owned()),
            method: Method::SignEvmTransaction,
            client: "app".to_owned(),
            cert_sha256: CERT.to_owned(),
            key: Some("hot".to_owned()),
            fingerprint: Some(HASH.to_owned()),
        }),
        Record::from_event(&SignDecision {
            req_id: "r1".to_owned(),
            client: Some("app".to_owned()),
            roles: Some(vec!["requester".to_owned()]),
            decision: Decision::Allow,
            rules: vec!["a".to_owned()],
            reason: None,
            policy_serial: 1,
            policy_hash: HASH.to_owned(),
            action: action(),
            charges: vec![Charge {
                amount: "1000".to_owned(),
                bucket: "limit=l".to_owned(),
                limit: "l".to_owned(),
                window_secs: 86_400,
            }],
            approved_by: Some(vec!["bob".to_owned()]),
        }),
        Record::from_event(&SignDryRun {
            req_id: "r1".to_owned(),
            method: Method::SignDigest,
            client: "app".to_owned(),
            key: "hot".to_owned(),
            decision: Decision::Deny,
            rules: Vec::new(),
            policy_serial: 1,
            policy_hash: HASH.to_owned(),
            action: action(),
        }),
        Record::from_event(&ApprovalRequest {
            req_id: "r1".to_owned(),
            client: "app".to_owned(),
            method: Method::SignEvmTransaction,
            key: "hot".to_owned(),
            fingerprint: HASH.to_owned(),
            rules: vec!["big".to_owned()],
            requirements: vec![RequiredGroup {
                group: "treasury".to_owned(),
                members: vec!["bob".to_owned(), "carol".to_owned()],
                min: 2,
                veto: true,
            }],
            deadline: 1_800_000_000,
            policy_serial: 1,
            policy_hash: HASH.to_owned(),
        }),
        Record::from_event(&ApprovalExpire {
            req_id: "r1".to_owned(),
            client: "app".to_owned(),
            fingerprint: HASH.to_owned(),
            deadline: 1_800_000_000,
            approved_by: vec!["bob".to_owned()],
        }),
    ];
    for decision in [Vote::Approve, Vote::Reject] {
        out.push(Record::from_event(&ApprovalVote {
            req_id: "r1".to_owned(),
            client: "app".to_owned(),
            approver: "bob".to_owned(),
            cert_sha256: CERT.to_owned(),
            fingerprint: HASH.to_owned(),
            decision,
            expires: 1_800_000_000,
            public_key: HASH.to_owned(),
            signature: "ab".repeat(64),
            reason: Some("no".to_owned()),
            policy_hash: HASH.to_owned(),
        }));
    }
    out.extend(results().iter().map(Record::from_event));
    out
}

/// A `sign.result` of every status, with every optional member present.
fn results() -> Vec<SignResult> {
    let m = || "m".to_owned();
    [
        Outcome::Signed {
            signing_hash: format!("0x{HASH}"),
            tx_hash: Some(format!("0x{HASH}")),
            raw_tx: Some("0x02f8".to_owned()),
            signature: signature(),
            key_version: Some(2),
            pin: Some(1),
        },
        Outcome::Denied {
            rule: Some("deny-all".to_owned()),
            message: m(),
        },
        Outcome::Rejected { message: m() },
        Outcome::Expired { message: m() },
        Outcome::InvalidArgument { message: m() },
        Outcome::NotFound { message: m() },
        Outcome::Unavailable { message: m() },
        Outcome::BackendError { message: m() },
        Outcome::UnknownCrash {
            decision_seq: 4,
            message: m(),
        },
        Outcome::KeyRefused {
            pin: Some(1),
            message: m(),
        },
    ]
    .into_iter()
    .map(|outcome| SignResult {
        req_id: Some("r1".to_owned()),
        client: Some("app".to_owned()),
        outcome,
    })
    .collect()
}

#[test]
fn names_of_closed_sets_read_back() {
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(*k));
        assert_eq!(k.to_string(), k.as_str());
    }
    for m in Method::ALL {
        assert_eq!(Method::parse(m.as_str()), Some(*m));
        assert_eq!(serde_json::to_string(m).unwrap(), format!("\"{m}\""));
    }
    for d in Decision::ALL {
        assert_eq!(Decision::parse(d.as_str()), Some(*d));
        assert_eq!(serde_json::to_string(d).unwrap(), format!("\"{d}\""));
    }
    for s in PolicySource::ALL {
        assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
    }
    assert_eq!(Kind::parse("sign.result "), None);
    assert_eq!(Status::parse("singed"), None);
    // Every status has its outcome, in the same order, and the outcome writes its status.
    let results = results();
    assert_eq!(results.len(), Status::ALL.len());
    for (r, status) in results.iter().zip(Status::ALL) {
        assert_eq!(r.outcome.status(), *status);
        let v: serde_json::Value = serde_json::from_slice(&body_object(r)).unwrap();
        assert_eq!(v["status"], status.as_str());
    }
    let kinds: Vec<&str> = examples().iter().map(Record::kind).collect();
    for k in Kind::ALL {
        assert!(kinds.contains(&k.as_str()), "no example of {k}");
    }
}

/// The event as a JSON object.
fn body_object(e: &impl Event) -> Vec<u8> {
    let mut out = b"{".to_vec();
    out.extend_from_slice(body(e).get(1..).unwrap_or_default());
    out.push(b'}');
    out
}

#[test]
fn events_read_back_as_written() {
    for r in results() {
        let line = body_object(&r);
        assert_eq!(read::<SignResult>(&line).unwrap(), r);
    }
    // Absent members of earlier releases, and members of later ones.
    let old = br#"{"v":1,"seq":5,"ts":"x","type":"sign.result","req_id":"r","status":"denied","rule":null,"message":"m","later":[1],"prev":"0"}"#;
    let r: SignResult = read(old).unwrap();
    assert_eq!(r.client, None);
    assert_eq!(
        r.outcome,
        Outcome::Denied {
            rule: None,
            message: "m".to_owned()
        }
    );
    // A value outside a closed set is refused.
    let bad = br#"{"req_id":"r","client":"a","status":"singed","message":"m"}"#;
    assert!(read::<SignResult>(bad).is_err());
    // policy.load's actor: absent, null, or a client.
    for (text, actor) in [
        (r#""source":"startup""#, None),
        (r#""source":"sighup","actor":null"#, Some(None)),
        (
            r#""source":"rpc","actor":"admin""#,
            Some(Some("admin".to_owned())),
        ),
    ] {
        let line = format!(
            r#"{{{text},"file":"p","old_serial":null,"old_hash":null,"new_serial":1,"new_hash":"h","forced":false}}"#
        );
        // Written before signed policies: no signers, no threshold.
        let p: PolicyLoad = read(line.as_bytes()).unwrap();
        assert_eq!(p.actor, actor);
        assert_eq!((p.signers.len(), p.threshold), (0, None));
        let now = line.replace(
            r#""forced":false}"#,
            r#""forced":false,"signers":["a"],"threshold":"tighten"}"#,
        );
        let p: PolicyLoad = read(now.as_bytes()).unwrap();
        assert_eq!(p.threshold, Some(PolicyThreshold::Tighten));
        assert_eq!(body_object(&p), now.as_bytes());
    }
}

#[test]
fn the_type_of_a_vote_follows_its_decision() {
    let mut vote = ApprovalVote {
        req_id: "r".to_owned(),
        client: "c".to_owned(),
        approver: "a".to_owned(),
        cert_sha256: CERT.to_owned(),
        fingerprint: HASH.to_owned(),
        decision: Vote::Approve,
        expires: 1,
        public_key: HASH.to_owned(),
        signature: "00".to_owned(),
        reason: None,
        policy_hash: HASH.to_owned(),
    };
    assert_eq!(Record::from_event(&vote).kind(), "approval.grant");
    vote.decision = Vote::Reject;
    assert_eq!(Record::from_event(&vote).kind(), "approval.reject");
}

#[test]
fn a_record_from_an_event_is_checked_like_a_built_one() {
    // An event's members go through the same checks as built fields.
    #[derive(Serialize)]
    struct Shadow {
        seq: u64,
    }
    impl Event for Shadow {
        fn kind(&self) -> Kind {
            Kind::AuditStop
        }
    }
    let e = Record::from_event(&Shadow { seq: 1 }).encode().unwrap_err();
    assert!(e.to_string().contains("reserved for the envelope"), "{e}");
    #[derive(Serialize)]
    struct NotAnObject;
    impl Event for NotAnObject {
        fn kind(&self) -> Kind {
            Kind::AuditStop
        }
    }
    let e = Record::from_event(&NotAnObject).encode().unwrap_err();
    assert!(e.to_string().contains("JSON object"), "{e}");
    let big = AuthFailure {
        peer: None,
        cert_sha256: None,
        reason: "a".repeat(crate::MAX_LINE_BYTES),
        count: None,
    };
    let e = Record::from_event(&big).encode().unwrap_err();
    assert!(e.to_string().contains("longer than 1048576 bytes"), "{e}");
    // Fields added after an event follow it.
    let r = Record::from_event(&AuditStop {}).field("x", 1);
    assert_eq!(r.encode().unwrap(), br#","x":1"#);
    assert_eq!(Record::from_event(&AuditStop {}).encode().unwrap(), b"");
}

/// Golden tests: each record the daemon writes, built as its call site built it before typed
/// events existed (`signerd/src/service.rs`, `signerd/src/service/approvals.rs`, and the
/// writer and recovery in `signerd/src/audit`), and as the event that replaces it.
mod golden {
    use super::*;

    #[test]
    fn policy_load() {
        // service.rs, record_startup_policy.
        same(
            PolicyLoad {
                source: PolicySource::Startup,
                actor: None,
                file: "/etc/signerd/policy.toml".to_owned(),
                old_serial: None,
                old_hash: None,
                new_serial: 3,
                new_hash: HASH.to_owned(),
                forced: false,
                signers: vec!["alice".to_owned()],
                threshold: Some(PolicyThreshold::Tighten),
                book_entries: Vec::new(),
            },
            Record::new("policy.load")
                .field("source", "startup")
                .field("file", "/etc/signerd/policy.toml")
                .field("old_serial", serde_json::Value::Null)
                .field("old_hash", serde_json::Value::Null)
                .field("new_serial", 3u64)
                .field("new_hash", HASH)
                .field("forced", false)
                .field("signers", vec!["alice"])
                .field("threshold", "tighten"),
        );
        // service.rs, reload_policy: by SIGHUP (no actor) and by RPC.
        for (source, actor) in [
            (PolicySource::Sighup, None),
            (PolicySource::Rpc, Some("admin")),
        ] {
            same(
                PolicyLoad {
                    source,
                    actor: Some(actor.map(str::to_owned)),
                    file: "policy.toml".to_owned(),
                    old_serial: Some(3),
                    old_hash: Some(HASH.to_owned()),
                    new_serial: 3,
                    new_hash: CERT.to_owned(),
                    forced: true,
                    signers: vec!["alice".to_owned(), "bob".to_owned()],
                    threshold: Some(PolicyThreshold::Full),
                    book_entries: Vec::new(),
                },
                Record::new("policy.load")
                    .field("source", source.as_str())
                    .field("actor", actor)
                    .field("file", "policy.toml")
                    .field("old_serial", 3u64)
                    .field("old_hash", HASH)
                    .field("new_serial", 3u64)
                    .field("new_hash", CERT)
                    .field("forced", true)
                    .field("signers", vec!["alice", "bob"])
                    .field("threshold", "full"),
            );
        }
    }

    #[test]
    fn auth_failure() {
        // service/auth_failures.rs: a failure recorded at once has no count.
        for (peer, cert) in [(Some("10.0.0.1:4242"), Some(CERT)), (None, None)] {
            same(
                AuthFailure {
                    peer: peer.map(str::to_owned),
                    cert_sha256: cert.map(str::to_owned),
                    reason: "tls handshake: \"unknown ca\"\n".to_owned(),
                    count: None,
                },
                Record::new("auth.failure")
                    .field("peer", peer.map(str::to_owned))
                    .field("cert_sha256", cert)
                    .field("reason", "tls handshake: \"unknown ca\"\n"),
            );
        }
        // Repeats folded into one record.
        same(
            AuthFailure {
                peer: Some("10.0.0.1:4243".to_owned()),
                cert_sha256: Some(CERT.to_owned()),
                reason: "not mapped".to_owned(),
                count: Some(1999),
            },
            Record::new("auth.failure")
                .field("peer", "10.0.0.1:4243")
                .field("cert_sha256", CERT)
                .field("reason", "not mapped")
                .field("count", 1999u64),
        );
    }

    #[test]
    fn sign_request() {
        // service.rs, request_record: a decoded request, and a refused one.
        for (req_id, key, fingerprint) in [
            (Some("order-1"), Some("hot"), Some(HASH)),
            (None, None, None),
        ] {
            same(
                SignRequest {
                    req_id: req_id.map(str::to_owned),
                    method: Method::SignEvmTransaction,
                    client: "payments".to_owned(),
                    cert_sha256: CERT.to_owned(),
                    key: key.map(str::to_owned),
                    fingerprint: fingerprint.map(str::to_owned),
                },
                Record::new("sign.request")
                    .field("req_id", req_id)
                    .field("method", "SignEvmTransaction")
                    .field("client", "payments")
                    .field("cert_sha256", CERT)
                    .field("key", key)
                    .field("fingerprint", fingerprint),
            );
        }
    }

    #[test]
    fn sign_decision() {
        // service.rs, decision_record (approvals.rs adds `approved_by` at quorum).
        let charges = vec![json!({
            "limit": "daily-eth",
            "bucket": "limit=daily-eth",
            "window_secs": 86_400u64,
            "amount": "1000000000000000",
        })];
        let typed_charges = vec![Charge {
            amount: "1000000000000000".to_owned(),
            bucket: "limit=daily-eth".to_owned(),
            limit: "daily-eth".to_owned(),
            window_secs: 86_400,
        }];
        for (decision, rules, reason, charged, approved_by) in [
            (Decision::Allow, vec!["small"], None, true, None),
            (
                Decision::Deny,
                vec!["daily-eth"],
                Some("limit `daily-eth`: 1.5 ether used"),
                false,
                None,
            ),
            (Decision::RequireApproval, vec!["big"], None, true, None),
            (Decision::Allow, vec!["big"], None, true, Some(vec!["bob"])),
        ] {
            let rules: Vec<String> = rules.into_iter().map(str::to_owned).collect();
            let mut built = Record::new("sign.decision")
                .field("req_id", "order-1")
                .field("client", "payments")
                .field("roles", vec!["requester"])
                .field("decision", decision.as_str())
                .field("rules", rules.clone())
                .field("reason", reason)
                .field("policy_serial", 7u64)
                .field("policy_hash", HASH)
                .field("action", action())
                .field(
                    "charges",
                    if charged { charges.clone() } else { Vec::new() },
                );
            if let Some(by) = &approved_by {
                built = built.field("approved_by", by.clone());
            }
            same(
                SignDecision {
                    req_id: "order-1".to_owned(),
                    client: Some("payments".to_owned()),
                    roles: Some(vec!["requester".to_owned()]),
                    decision,
                    rules,
                    reason: reason.map(str::to_owned),
                    policy_serial: 7,
                    policy_hash: HASH.to_owned(),
                    action: action(),
                    charges: if charged {
                        typed_charges.clone()
                    } else {
                        Vec::new()
                    },
                    approved_by: approved_by.map(|by| by.into_iter().map(str::to_owned).collect()),
                },
                built,
            );
        }
    }

    #[test]
    fn sign_dry_run() {
        // service.rs, dry_run.
        same(
            SignDryRun {
                req_id: "dry-1".to_owned(),
                method: Method::SignTypedData,
                client: "payments".to_owned(),
                key: "hot".to_owned(),
                decision: Decision::RequireApproval,
                rules: vec!["big".to_owned()],
                policy_serial: 7,
                policy_hash: HASH.to_owned(),
                action: action(),
            },
            Record::new("sign.dry_run")
                .field("req_id", "dry-1")
                .field("method", "SignTypedData")
                .field("client", "payments")
                .field("key", "hot")
                .field("decision", "require_approval")
                .field("rules", vec!["big".to_owned()])
                .field("policy_serial", 7u64)
                .field("policy_hash", HASH)
                .field("action", action()),
        );
    }

    #[test]
    fn sign_result_signed() {
        // service.rs, build_response: a transaction on a versioned key, and a digest.
        let sig = json!({"r": "0x1d3c", "s": "0x2a4b", "v": 37u64, "bytes": "0x"});
        same(
            SignResult {
                req_id: Some("order-1".to_owned()),
                client: Some("payments".to_owned()),
                outcome: Outcome::Signed {
                    signing_hash: format!("0x{HASH}"),
                    tx_hash: Some(format!("0x{CERT}")),
                    raw_tx: Some("0x02f86c".to_owned()),
                    signature: signature(),
                    key_version: Some(3),
                    pin: Some(12),
                },
            },
            Record::new("sign.result")
                .field("req_id", "order-1")
                .field("client", "payments")
                .field("status", "signed")
                .field("signing_hash", format!("0x{HASH}"))
                .field("tx_hash", format!("0x{CERT}"))
                .field("raw_tx", "0x02f86c")
                .field("signature", sig)
                .field("key_version", 3u64)
                .field("pin", 12u64),
        );
        let ed = "0x".to_owned() + &"ab".repeat(64);
        same(
            SignResult {
                req_id: Some("digest-1".to_owned()),
                client: Some("payments".to_owned()),
                outcome: Outcome::Signed {
                    signing_hash: format!("0x{HASH}"),
                    tx_hash: None,
                    raw_tx: None,
                    signature: Signature {
                        bytes: ed.clone(),
                        r: "0x".to_owned(),
                        s: "0x".to_owned(),
                        v: 0,
                    },
                    key_version: None,
                    pin: None,
                },
            },
            Record::new("sign.result")
                .field("req_id", "digest-1")
                .field("client", "payments")
                .field("status", "signed")
                .field("signing_hash", format!("0x{HASH}"))
                .field(
                    "signature",
                    json!({"r": "0x", "s": "0x", "v": 0u64, "bytes": ed}),
                ),
        );
    }

    #[test]
    fn sign_result_unsigned() {
        // service.rs: a refused request (req_id null when malformed), deny, record_unsigned;
        // approvals.rs, end_unsigned: rejected and expired.
        let message = "key `nope` not found: \"quoted\"";
        for (outcome, status, req_id) in [
            (
                Outcome::NotFound {
                    message: message.to_owned(),
                },
                "not_found",
                None,
            ),
            (
                Outcome::InvalidArgument {
                    message: message.to_owned(),
                },
                "invalid_argument",
                Some("r"),
            ),
            (
                Outcome::Unavailable {
                    message: message.to_owned(),
                },
                "unavailable",
                Some("r"),
            ),
            (
                Outcome::BackendError {
                    message: message.to_owned(),
                },
                "backend_error",
                Some("r"),
            ),
            (
                Outcome::Rejected {
                    message: message.to_owned(),
                },
                "rejected",
                Some("r"),
            ),
            (
                Outcome::Expired {
                    message: message.to_owned(),
                },
                "expired",
                Some("r"),
            ),
        ] {
            same(
                SignResult {
                    req_id: req_id.map(str::to_owned),
                    client: Some("payments".to_owned()),
                    outcome,
                },
                Record::new("sign.result")
                    .field("req_id", req_id)
                    .field("client", "payments")
                    .field("status", status)
                    .field("message", message),
            );
        }
        for rule in [Some("deny-blind"), None] {
            same(
                SignResult {
                    req_id: Some("r".to_owned()),
                    client: Some("payments".to_owned()),
                    outcome: Outcome::Denied {
                        rule: rule.map(str::to_owned),
                        message: message.to_owned(),
                    },
                },
                Record::new("sign.result")
                    .field("req_id", "r")
                    .field("client", "payments")
                    .field("status", "denied")
                    .field("rule", rule)
                    .field("message", message),
            );
        }
    }

    #[test]
    fn approvals() {
        // approvals.rs: approval.request (requirements through serde_json::to_value).
        #[derive(Serialize)]
        struct Requirement {
            group: String,
            min: u32,
            members: Vec<String>,
            veto: bool,
        }
        let reqs = vec![Requirement {
            group: "treasury".to_owned(),
            min: 2,
            members: vec!["bob".to_owned(), "carol".to_owned()],
            veto: false,
        }];
        same(
            ApprovalRequest {
                req_id: "big-1".to_owned(),
                client: "payments".to_owned(),
                method: Method::SignEvmTransaction,
                key: "hot".to_owned(),
                fingerprint: HASH.to_owned(),
                rules: vec!["big".to_owned()],
                requirements: vec![RequiredGroup {
                    group: "treasury".to_owned(),
                    members: vec!["bob".to_owned(), "carol".to_owned()],
                    min: 2,
                    veto: false,
                }],
                deadline: 1_800_000_000,
                policy_serial: 7,
                policy_hash: HASH.to_owned(),
            },
            Record::new("approval.request")
                .field("req_id", "big-1")
                .field("client", "payments")
                .field("method", "SignEvmTransaction")
                .field("key", "hot")
                .field("fingerprint", HASH)
                .field("rules", vec!["big".to_owned()])
                .field("requirements", serde_json::to_value(&reqs).unwrap())
                .field("deadline", 1_800_000_000i64)
                .field("policy_serial", 7u64)
                .field("policy_hash", HASH),
        );
        // approvals.rs: approval.grant and approval.reject.
        for (vote, kind, reason) in [
            (Vote::Approve, "approval.grant", None),
            (Vote::Reject, "approval.reject", Some("too big")),
        ] {
            same(
                ApprovalVote {
                    req_id: "big-1".to_owned(),
                    client: "payments".to_owned(),
                    approver: "bob".to_owned(),
                    cert_sha256: CERT.to_owned(),
                    fingerprint: HASH.to_owned(),
                    decision: vote,
                    expires: 1_799_999_000,
                    public_key: HASH.to_owned(),
                    signature: "cd".repeat(64),
                    reason: reason.map(str::to_owned),
                    policy_hash: HASH.to_owned(),
                },
                Record::new(kind)
                    .field("req_id", "big-1")
                    .field("client", "payments")
                    .field("approver", "bob")
                    .field("cert_sha256", CERT)
                    .field("fingerprint", HASH)
                    .field("decision", vote.as_str())
                    .field("expires", 1_799_999_000i64)
                    .field("public_key", HASH)
                    .field("signature", "cd".repeat(64))
                    .field("reason", reason)
                    .field("policy_hash", HASH),
            );
        }
        // approvals.rs: approval.expire.
        same(
            ApprovalExpire {
                req_id: "big-1".to_owned(),
                client: "payments".to_owned(),
                fingerprint: HASH.to_owned(),
                deadline: 1_800_000_000,
                approved_by: vec!["bob".to_owned()],
            },
            Record::new("approval.expire")
                .field("req_id", "big-1")
                .field("client", "payments")
                .field("fingerprint", HASH)
                .field("deadline", 1_800_000_000i64)
                .field("approved_by", vec!["bob".to_owned()]),
        );
    }

    #[test]
    fn bookkeeping() {
        // audit/mod.rs: audit.start and audit.stop.
        same(
            AuditStart {
                pid: 4242,
                version: "0.1.0".to_owned(),
                checkpoint_key:
                    "signerd-dev/audit+5e2edcb2+AedoMOdS2yuzg9I/UccBG2R0aBftYMwqUwYT7vKLhAoh"
                        .to_owned(),
            },
            Record::new("audit.start")
                .field("pid", 4242u32)
                .field("version", "0.1.0")
                .field(
                    "checkpoint_key",
                    "signerd-dev/audit+5e2edcb2+AedoMOdS2yuzg9I/UccBG2R0aBftYMwqUwYT7vKLhAoh",
                ),
        );
        same(AuditStop {}, Record::new("audit.stop"));
        // writer.rs: audit.checkpoint, audit.segment_seal, audit.segment_open.
        let note = "signerd-dev/audit\n3\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n\n\u{2014} signerd-dev/audit AAAA\n";
        same(
            AuditCheckpoint {
                size: 3,
                root: HASH.to_owned(),
                note: note.to_owned(),
            },
            Record::new("audit.checkpoint")
                .field("size", 3u64)
                .field("root", HASH)
                .field("note", note),
        );
        same(
            AuditSegmentSeal {
                segment: "segment-00000001.jsonl".to_owned(),
                first_seq: 0,
                records: 40,
            },
            Record::new("audit.segment_seal")
                .field("segment", "segment-00000001.jsonl")
                .field("first_seq", 0u64)
                .field("records", 40u64),
        );
        same(
            AuditSegmentOpen {
                segment: "segment-00000002.jsonl".to_owned(),
                previous: "segment-00000001.jsonl".to_owned(),
                previous_sha256: HASH.to_owned(),
                previous_bytes: 16_500,
            },
            Record::new("audit.segment_open")
                .field("segment", "segment-00000002.jsonl")
                .field("previous", "segment-00000001.jsonl")
                .field("previous_sha256", HASH)
                .field("previous_bytes", 16_500u64),
        );
        // recover.rs: audit.recover and sign.result unknown_crash.
        same(
            AuditRecover {
                segment: "segment-00000002.jsonl".to_owned(),
                offset: 9000,
                bytes: 77,
                sha256: HASH.to_owned(),
                saved_as: "recovered/torn-69-20261124T141721.860082Z.bin".to_owned(),
                unattested_records: 0,
            },
            Record::new("audit.recover")
                .field("segment", "segment-00000002.jsonl")
                .field("offset", 9000u64)
                .field("bytes", 77u64)
                .field("sha256", HASH)
                .field("saved_as", "recovered/torn-69-20261124T141721.860082Z.bin"),
        );
        let message = "signerd stopped after this request was allowed and before its result was durable; \
             no signature was returned to the client, but one may have been made";
        for client in [Some("payments"), None] {
            same(
                SignResult {
                    req_id: Some("order-8".to_owned()),
                    client: client.map(str::to_owned),
                    outcome: Outcome::UnknownCrash {
                        decision_seq: 61,
                        message: message.to_owned(),
                    },
                },
                Record::new("sign.result")
                    .field("req_id", Some("order-8"))
                    .field("client", client)
                    .field("status", "unknown_crash")
                    .field("decision_seq", Some(61u64))
                    .field("message", message),
            );
        }
    }
}

/// The records of the example log (`docs/audit-example`, written by a real daemon) read as
/// their events, and the events write them back byte for byte, except the `client` member
/// and the policy records' `signers` and `threshold` that the release which wrote that log did
/// not write yet.
#[test]
fn the_example_log_reads_as_events_and_writes_back_the_same_bytes() {
    let dir = repo().join("docs/audit-example/audit");
    let mut checked = BTreeMap::<&str, usize>::new();
    for seg in crate::segments::list(&dir).unwrap() {
        let data = std::fs::read(&seg.path).unwrap();
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let env = crate::envelope::parse(line).unwrap();
            let kind = env
                .kind
                .unwrap_or_else(|| panic!("unknown type {}", env.type_name));
            let typed = match kind {
                Kind::AuditStart => Record::from_event(&read::<AuditStart>(line).unwrap()),
                Kind::AuditStop => Record::from_event(&read::<AuditStop>(line).unwrap()),
                Kind::AuditCheckpoint => {
                    Record::from_event(&read::<AuditCheckpoint>(line).unwrap())
                }
                Kind::AuditSegmentSeal => {
                    Record::from_event(&read::<AuditSegmentSeal>(line).unwrap())
                }
                Kind::AuditSegmentOpen => {
                    Record::from_event(&read::<AuditSegmentOpen>(line).unwrap())
                }
                Kind::AuditRecover => Record::from_event(&read::<AuditRecover>(line).unwrap()),
                Kind::AuditSnapshot => Record::from_event(&read::<AuditSnapshot>(line).unwrap()),
                Kind::AuthFailure => Record::from_event(&read::<AuthFailure>(line).unwrap()),
                Kind::PolicyLoad => Record::from_event(&read::<PolicyLoad>(line).unwrap()),
                Kind::PolicyRefused => Record::from_event(&read::<PolicyRefused>(line).unwrap()),
                Kind::StateRebind => Record::from_event(&read::<StateRebind>(line).unwrap()),
                Kind::KeyPin => Record::from_event(&read::<KeyPin>(line).unwrap()),
                Kind::KeyAllowance => Record::from_event(&read::<KeyAllowance>(line).unwrap()),
                Kind::SignRequest => Record::from_event(&read::<SignRequest>(line).unwrap()),
                Kind::SignDecision => Record::from_event(&read::<SignDecision>(line).unwrap()),
                Kind::SignDryRun => Record::from_event(&read::<SignDryRun>(line).unwrap()),
                Kind::SignResult => Record::from_event(&read::<SignResult>(line).unwrap()),
                Kind::ApprovalRequest => {
                    Record::from_event(&read::<ApprovalRequest>(line).unwrap())
                }
                Kind::ApprovalGrant | Kind::ApprovalReject => {
                    Record::from_event(&read::<ApprovalVote>(line).unwrap())
                }
                Kind::ApprovalExpire => Record::from_event(&read::<ApprovalExpire>(line).unwrap()),
            };
            assert_eq!(typed.kind(), env.type_name);
            let text = std::str::from_utf8(line).unwrap();
            let start = text
                .find(&format!("\"type\":\"{}\"", env.type_name))
                .unwrap()
                + env.type_name.len()
                + 9;
            let on_disk = &text[start..text.rfind(",\"prev\":\"").unwrap()];
            let written = String::from_utf8(typed.encode().unwrap()).unwrap();
            let without_client = written.replacen(",\"client\":null", "", 1);
            // Policy records before signed policies had no signers nor threshold.
            let unsigned = written
                .replacen(",\"signers\":[],\"threshold\":null", "", 1)
                .replacen(",\"signers\":[]", "", 1);
            if written != on_disk {
                assert!(
                    (matches!(kind, Kind::SignDecision | Kind::SignResult)
                        && without_client == on_disk)
                        || (matches!(kind, Kind::PolicyLoad | Kind::PolicyRefused)
                            && unsigned == on_disk),
                    "{}:\n{on_disk}\n{written}",
                    env.type_name
                );
            }
            *checked.entry(kind.as_str()).or_default() += 1;
        }
    }
    assert_eq!(checked.values().sum::<usize>(), 83, "{checked:?}");
    assert!(checked.len() >= 10, "{checked:?}");
}

/// `docs/audit-log.md`, read for what it says each record type holds.
#[derive(Debug, Default)]
struct Spec {
    /// Each type's member table rows: (members, meaning).
    types: BTreeMap<String, Vec<(Vec<String>, String)>>,
    /// `sign.result`'s statuses and the further members of each, in the spec's order.
    statuses: Vec<(String, Vec<String>, String)>,
}

impl Spec {
    fn members(&self, kind: &str) -> Vec<String> {
        self.types[kind]
            .iter()
            .flat_map(|(m, _)| m.iter().cloned())
            .collect()
    }

    /// The meaning cell of `member` of `kind`.
    fn meaning(&self, kind: &str, member: &str) -> &str {
        &self.types[kind]
            .iter()
            .find(|(m, _)| m.iter().any(|x| x == member))
            .unwrap_or_else(|| panic!("{kind} has no `{member}` in the spec"))
            .1
    }
}

/// The text between backticks, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn is_type_name(s: &str) -> bool {
    s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}

fn is_member_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `text` without what is between parentheses.
fn without_parentheses(text: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Values written as `"value"` in a cell.
fn quoted_values(text: &str) -> Vec<String> {
    backticked(text)
        .into_iter()
        .filter_map(|t| t.strip_prefix('"')?.strip_suffix('"'))
        .map(str::to_owned)
        .collect()
}

/// Names of a `{a, b}` or `{"a", "b"}` token in a cell.
fn braced_names(text: &str) -> Vec<String> {
    let token = backticked(text)
        .into_iter()
        .find(|t| t.starts_with('{'))
        .unwrap_or_else(|| panic!("no {{...}} in {text:?}"));
    let mut names: Vec<String> = token
        .trim_matches(['{', '}'])
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_owned())
        .collect();
    names.sort();
    names
}

fn parse_spec(doc: &str) -> Spec {
    enum Table {
        None,
        Members,
        Statuses,
    }
    let mut spec = Spec::default();
    let mut current: Vec<String> = Vec::new();
    let mut table = Table::None;
    for line in doc.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.starts_with('|') {
            table = Table::None;
        }
        if line.starts_with('#') {
            current = backticked(line)
                .into_iter()
                .filter(|t| is_type_name(t))
                .map(str::to_owned)
                .collect();
        } else if line.starts_with("**") {
            current = line
                .split("**")
                .skip(1)
                .step_by(2)
                .filter_map(|bold| bold.strip_prefix('`')?.strip_suffix('`'))
                .filter(|t| is_type_name(t))
                .map(str::to_owned)
                .collect();
        } else if line.starts_with('|') {
            if cells == ["member", "type", "meaning"] {
                table = Table::Members;
            } else if cells == ["`status`", "meaning", "further members"] {
                table = Table::Statuses;
            } else if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
            } else {
                match table {
                    Table::None => {}
                    Table::Members if current.is_empty() => {}
                    Table::Members => {
                        let members: Vec<String> = backticked(cells[0])
                            .into_iter()
                            .map(str::to_owned)
                            .collect();
                        assert!(
                            members.iter().all(|m| is_member_name(m)) && !members.is_empty(),
                            "{line}"
                        );
                        for t in &current {
                            spec.types
                                .get_mut(t)
                                .unwrap()
                                .push((members.clone(), cells[2].to_owned()));
                        }
                    }
                    Table::Statuses => {
                        assert_eq!(current, ["sign.result"], "{line}");
                        let status = backticked(cells[0])[0].to_owned();
                        let further = backticked(&without_parentheses(cells[2]))
                            .into_iter()
                            .filter(|m| is_member_name(m))
                            .map(str::to_owned)
                            .collect();
                        spec.statuses.push((status, further, cells[2].to_owned()));
                    }
                }
            }
            continue;
        }
        for t in &current {
            spec.types.entry(t.clone()).or_default();
        }
    }
    spec
}

/// The spec and this module agree on every record type and member: names, order, and the
/// values of closed sets. Members in a table row are listed in the row's order, rows in the
/// table's order; `sign.result` has its common members in a table and the further members of
/// each status in the status table.
#[test]
fn the_spec_and_the_events_agree() {
    let doc = std::fs::read_to_string(repo().join("docs/audit-log.md")).unwrap();
    let spec = parse_spec(&doc);

    let documented: Vec<&str> = spec.types.keys().map(String::as_str).collect();
    let mut known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    known.sort_unstable();
    assert_eq!(documented, known, "record types of the spec and of Kind");

    let common = spec.members("sign.result");
    for record in examples() {
        let names: Vec<&str> = record.names().collect();
        if record.kind() == "sign.result" {
            continue;
        }
        assert_eq!(
            names,
            spec.members(record.kind()),
            "members of {} (spec: docs/audit-log.md, module: events.rs)",
            record.kind()
        );
    }
    let statuses: Vec<&str> = spec.statuses.iter().map(|s| s.0.as_str()).collect();
    let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(statuses, known, "statuses of sign.result");
    for (result, (status, further, _)) in results().iter().zip(&spec.statuses) {
        let record = Record::from_event(result);
        let names: Vec<&str> = record.names().collect();
        let want: Vec<&str> = common.iter().chain(further).map(String::as_str).collect();
        assert_eq!(names, want, "members of sign.result with status {status}");
    }

    // Closed sets.
    let values = |set: &[&str]| set.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        quoted_values(spec.meaning("sign.decision", "decision")),
        values(&Decision::ALL.iter().map(|d| d.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(
        quoted_values(spec.meaning("policy.load", "source")),
        values(
            &PolicySource::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        quoted_values(spec.meaning("approval.grant", "decision")),
        values(&[Vote::Approve.as_str(), Vote::Reject.as_str()])
    );
    assert_eq!(
        backticked(spec.meaning("sign.request", "method")),
        Method::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>()
    );

    // Nested objects: the members the spec names, in alphabetical order on disk.
    let nested = |record: &Record, member: &str| -> Vec<String> {
        let body = record.encode().unwrap();
        let object: serde_json::Value =
            serde_json::from_slice(&[b"{", &body[1..], b"}"].concat()).unwrap();
        let inner = &object[member];
        let inner = inner.as_array().map_or(inner, |a| &a[0]);
        let text = serde_json::to_string(inner).unwrap();
        let names = member_names(text.as_bytes()).unwrap();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{member} is not in alphabetical order");
        names
    };
    let example = |kind: &str| examples().into_iter().find(|r| r.kind() == kind).unwrap();
    assert_eq!(
        nested(&example("sign.decision"), "charges"),
        braced_names(spec.meaning("sign.decision", "charges"))
    );
    let mut groups: Vec<String> = backticked(spec.meaning("approval.request", "requirements"))
        .into_iter()
        .map(str::to_owned)
        .collect();
    groups.sort();
    assert_eq!(nested(&example("approval.request"), "requirements"), groups);
    assert_eq!(
        nested(&example("policy.load"), "book_entries"),
        braced_names(spec.meaning("policy.load", "book_entries"))
    );
    assert_eq!(
        nested(&Record::from_event(&results()[0]), "signature"),
        braced_names(&spec.statuses[0].2)
    );
    // `checked` of key.pin: every member the spec names, in alphabetical order.
    let every = KeyChecked {
        ckid: Some("01".to_owned()),
        exportable: Some(false),
        extractable: Some(false),
        key_type: Some("ed25519".to_owned()),
        never_extractable: Some(true),
        sensitive: Some(true),
        token_serial: Some("1".to_owned()),
        transit_key: Some("t".to_owned()),
        wrapping_key: Some("w".to_owned()),
    };
    let names = member_names(serde_json::to_string(&every).unwrap().as_bytes()).unwrap();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "checked is not in alphabetical order");
    assert_eq!(names, braced_names(spec.meaning("key.pin", "checked")));
}

/// The parser finds what it must in a spec shaped like the real one, and a wrong member is
/// reported.
#[test]
fn the_spec_parser_reads_tables_and_sections() {
    let doc = "\
## Record types

### Log bookkeeping (`audit.*`)

**`audit.stop`**: stop. No body members.

**`audit.seal`**: sealed.

| member | type | meaning |
| --- | --- | --- |
| `segment` | string | name |
| `first_seq`, `records` | number | counts |

### `sign.result`

| member | type | meaning |
| --- | --- | --- |
| `req_id` | string | id |

| `status` | meaning | further members |
| --- | --- | --- |
| `signed` | ok | `signing_hash` (the `hash`); `signature` `{bytes, r}` |

**`approval.grant`** and **`approval.reject`**: votes.

| member | type | meaning |
| --- | --- | --- |
| `decision` | string | `\"approve\"` (grant) or `\"reject\"` |

## Hashing

| member | type | meaning |
| --- | --- | --- |
| `x` | string | not a record |
";
    let spec = parse_spec(doc);
    assert_eq!(
        spec.types.keys().collect::<Vec<_>>(),
        [
            "approval.grant",
            "approval.reject",
            "audit.seal",
            "audit.stop",
            "sign.result"
        ]
    );
    assert_eq!(spec.members("audit.stop"), Vec::<String>::new());
    assert_eq!(
        spec.members("audit.seal"),
        ["segment", "first_seq", "records"]
    );
    assert_eq!(spec.members("approval.reject"), ["decision"]);
    assert_eq!(
        quoted_values(spec.meaning("approval.grant", "decision")),
        ["approve", "reject"]
    );
    assert_eq!(
        spec.statuses[0].1,
        ["signing_hash".to_owned(), "signature".to_owned()]
    );
    assert_eq!(braced_names(&spec.statuses[0].2), ["bytes", "r"]);
}
