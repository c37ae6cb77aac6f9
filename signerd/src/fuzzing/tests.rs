#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use super::*;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Every committed seed and every reproducer of a past crash runs through its target; a target
/// without seeds fails, so the replay cannot silently test nothing.
#[test]
fn fuzz_corpora_replay() {
    let root = fuzz_dir();
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let seeds = files(&root.join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{name}/ is missing or empty: every target needs seeds"
        );
        let regressions = files(&root.join("regressions").join(name));
        for f in seeds.iter().chain(&regressions) {
            run(&std::fs::read(f).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

/// The signature seeds reach the counting: one admits the policy with the full quorum, the other
/// has one valid signature among replays and strangers.
#[test]
fn policy_signature_seeds_verify() {
    let root = fuzz_dir().join("seeds/policy_signatures");
    let policy = signerd_policy::Policy::parse("signed.toml", SIGNED_POLICY).unwrap();
    let count = |name: &str| {
        let src = std::fs::read_to_string(root.join(name)).unwrap();
        let signatures = signerd_policy::parse_signatures(name, &src).unwrap();
        signerd_policy::admit(&signerd_policy::Candidate {
            governance: policy.governance().unwrap(),
            in_force: None,
            new: &policy,
            origin: SIGNED_POLICY_ORIGIN,
            signatures: &signatures,
        })
    };
    assert_eq!(count("quorum.toml").unwrap().signers, ["alice", "bob"]);
    let refused = count("one-and-replays.toml").unwrap_err();
    assert_eq!(refused.signers, ["alice"]);
    for needle in [
        "counted once",
        "origin `fuzz/audit`",
        "signed serial 4",
        "`carol`",
    ] {
        assert!(
            refused.reason.contains(needle),
            "{needle}: {}",
            refused.reason
        );
    }
}

/// Every fuzz target has an entry point here and a `[[bin]]` in fuzz/Cargo.toml, and every
/// entry point has a target; seeds and regressions belong to known targets.
#[test]
fn fuzz_targets_match_entry_points() {
    let root = fuzz_dir();
    let mut on_disk: Vec<String> = files(&root.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    known.sort();
    assert_eq!(
        on_disk, known,
        "fuzz/fuzz_targets/ and fuzzing::TARGETS differ"
    );
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for name in &known {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] `{name}`"
        );
    }
    for sub in ["seeds", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(sub)) {
            for e in entries {
                let name = e.unwrap().file_name().into_string().unwrap();
                assert!(known.contains(&name), "fuzz/{sub}/{name} names no target");
            }
        }
    }
}

/// The vote seed is a valid signed approval, so fuzzing starts from the signature check
/// passing rather than from the first refusal.
#[test]
fn vote_seed_verifies() {
    let vote = crate::api::wire::approve_request(approve_seed());
    vote.check_fields().unwrap();
    service::check_ballot(
        &vote_pending(),
        VOTE_APPROVER,
        &vote_public_key(),
        &vote,
        VOTE_NOW,
    )
    .unwrap();
    // A flipped bit in the signature is refused.
    let mut bad = approve_seed();
    bad.signature[0] ^= 1;
    let bad = crate::api::wire::approve_request(bad);
    assert!(
        service::check_ballot(
            &vote_pending(),
            VOTE_APPROVER,
            &vote_public_key(),
            &bad,
            VOTE_NOW
        )
        .is_err()
    );
}

fn approve_seed() -> v1::ApproveRequest {
    signed_vote(Vote::Approve, VOTE_NOW + 600)
}

fn signed_vote(vote: Vote, expires: i64) -> v1::ApproveRequest {
    let key = ed25519_dalek::SigningKey::from_bytes(&VOTE_APPROVER_SEED);
    let message = crate::approvals::message(
        VOTE_CLIENT,
        VOTE_REQUEST_ID,
        &vote_fingerprint(),
        vote,
        expires,
    );
    v1::ApproveRequest {
        client: VOTE_CLIENT.to_owned(),
        request_id: VOTE_REQUEST_ID.to_owned(),
        fingerprint: vote_fingerprint(),
        expires_unix: expires,
        signature: crate::approvals::sign(&key, &message).to_vec(),
    }
}

/// The seeds an audit target gets from the example log: the log as it is, and each segment.
fn audit_log_seeds(example: &Path) -> Vec<(String, Vec<u8>)> {
    let read = |name: &str| std::fs::read(example.join(name)).unwrap();
    let segs: Vec<Vec<u8>> = (1..=3)
        .map(|n| read(&format!("segment-{n:08}.jsonl")))
        .collect();
    let join = |cp: &[u8], segs: &[&[u8]]| {
        let mut out = cp.to_vec();
        for s in segs {
            out.extend_from_slice(FILE_SEPARATOR);
            out.extend_from_slice(s);
        }
        out
    };
    let cp = read("checkpoint");
    vec![
        (
            "example-log".into(),
            join(&cp, &[&segs[0], &segs[1], &segs[2]]),
        ),
        ("segment-1-alone".into(), segs[0].clone()),
        (
            "segments-1-2-no-checkpoint".into(),
            join(b"", &[&segs[0], &segs[1]]),
        ),
        ("segment-1-torn-tail".into(), {
            let mut s = segs[0].clone();
            s.extend_from_slice(br#"{"v":1,"seq":41,"ts":"2026-11-24T15:0"#);
            s
        }),
    ]
}

/// Writes the generated seeds into `fuzz/seeds/` (run by hand after a format changes:
/// `cargo test --release -p signerd fuzzing::tests::write_seeds -- --ignored`).
#[test]
#[ignore = "writes fuzz/seeds/; run by hand to regenerate the seeds"]
fn write_seeds() {
    let root = fuzz_dir().join("seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // Signing requests.
    let tx = v1::SignEvmTransactionRequest {
        request_id: "order-42".into(),
        key_id: "evm".into(),
        r#type: v1::EvmTransactionType::Eip1559.into(),
        chain_id: 1,
        nonce: 7,
        gas_limit: 60_000,
        max_fee_per_gas: "30000000000".into(),
        max_priority_fee_per_gas: "0x3b9aca00".into(),
        to: "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48".into(),
        value: "0".into(),
        // ERC-20 transfer(0xbBbB..., 2500 USDC).
        data: hex::decode(
            "a9059cbb000000000000000000000000bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\
             00000000000000000000000000000000000000000000000000000000950b2f00",
        )
        .unwrap(),
        access_list: vec![v1::AccessListItem {
            address: "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48".into(),
            storage_keys: vec![format!("0x{}", "00".repeat(31) + "01")],
        }],
        ..Default::default()
    };
    put(
        "evm_transaction",
        "erc20-transfer-1559",
        &tx.encode_to_vec(),
    );
    let legacy = v1::SignEvmTransactionRequest {
        request_id: "pay-1".into(),
        key_id: "evm".into(),
        r#type: v1::EvmTransactionType::Legacy.into(),
        chain_id: 1,
        nonce: 9,
        gas_limit: 21_000,
        gas_price: "20000000000".into(),
        to: "0x3535353535353535353535353535353535353535".into(),
        value: "1000000000000000000".into(),
        ..Default::default()
    };
    put("evm_transaction", "legacy-eip155", &legacy.encode_to_vec());
    let msg = v1::SignEvmMessageRequest {
        request_id: "login-1".into(),
        key_id: "evm".into(),
        message: b"Sign in to example.org\nNonce: 42".to_vec(),
        dry_run: false,
    };
    put("rpc_sign_message", "personal-sign", &msg.encode_to_vec());
    let mail = include_str!("../chain/evm/tests.rs");
    let mail = &mail[mail.find("const MAIL: &str = r#\"").unwrap() + 22..];
    let mail = &mail[..mail.find("\"#;").unwrap()];
    let typed = v1::SignTypedDataRequest {
        request_id: "mail-1".into(),
        key_id: "evm".into(),
        typed_data_json: mail.to_owned(),
        dry_run: true,
    };
    put("rpc_sign_typed_data", "eip712-mail", &typed.encode_to_vec());
    put("evm_typed_data", "eip712-mail.json", mail.as_bytes());
    put("evm_typed_data", "personal-sign.txt", &msg.message);
    for (key, name) in [("evm", "secp256k1"), ("ed", "ed25519"), ("p256", "p256")] {
        let digest = v1::SignDigestRequest {
            request_id: format!("blind-{name}"),
            key_id: key.into(),
            digest: vec![0x42; 32],
            dry_run: false,
        };
        put("rpc_sign_digest", name, &digest.encode_to_vec());
    }

    // Votes: a valid approval, and a rejection with a reason (its signature is over an
    // approval, so it is refused at the signature check).
    let mut approve = vec![0u8];
    approve.extend(approve_seed().encode_to_vec());
    put("rpc_vote", "approve-valid", &approve);
    let a = signed_vote(Vote::Reject, VOTE_NOW + 600);
    let reject = v1::RejectRequest {
        client: a.client,
        request_id: a.request_id,
        fingerprint: a.fingerprint,
        expires_unix: a.expires_unix,
        signature: a.signature,
        reason: "the destination is not on the allow list".into(),
    };
    let mut r = vec![1u8];
    r.extend(reject.encode_to_vec());
    put("rpc_vote", "reject-valid", &r);

    // Every other request.
    let others: Vec<(u8, &str, Vec<u8>)> = vec![
        (0, "list-keys", v1::ListKeysRequest {}.encode_to_vec()),
        (
            1,
            "get-key",
            v1::GetKeyRequest {
                key_id: "evm".into(),
            }
            .encode_to_vec(),
        ),
        (
            2,
            "get-sign-request",
            v1::GetSignRequestRequest {
                request_id: "order-42".into(),
            }
            .encode_to_vec(),
        ),
        (
            3,
            "watch-sign-request",
            v1::WatchSignRequestRequest {
                request_id: "order-42".into(),
                max_wait_secs: 60,
            }
            .encode_to_vec(),
        ),
        (4, "list-pending", v1::ListPendingRequest {}.encode_to_vec()),
        (
            5,
            "reload-policy",
            v1::ReloadPolicyRequest { force: true }.encode_to_vec(),
        ),
    ];
    for (kind, name, bytes) in others {
        let mut b = vec![kind];
        b.extend(bytes);
        put("rpc_other", name, &b);
    }

    // The audit log, its checkpoint and an inclusion proof.
    let example = repo.join("docs/audit-example/audit");
    for (name, bytes) in audit_log_seeds(&example) {
        put("audit_verify", &name, &bytes);
        put("audit_recover", &name, &bytes);
    }
    let checkpoint = std::fs::read(example.join("checkpoint")).unwrap();
    put("audit_note", "checkpoint", &checkpoint);
    put("audit_note", "vkey", AUDIT_VKEY.as_bytes());
    let proof = signerd_auditor::prove::prove(&example, 5).unwrap();
    put(
        "audit_proof",
        "seq-5",
        serde_json::to_string_pretty(&proof).unwrap().as_bytes(),
    );

    // Key files.
    let dir = tempfile::tempdir().unwrap();
    let secret = crate::keys::soft::SecretKey::from_bytes(Algorithm::Secp256k1, &[7; 32]).unwrap();
    let path = crate::keys::soft::store_new_key(
        dir.path(),
        KEYSTORE_ID,
        &secret,
        &SecretString::from(KEYSTORE_PASSPHRASE),
    )
    .map(|_| crate::keys::soft::file::key_path(dir.path(), KEYSTORE_ID))
    .unwrap();
    put(
        "keystore_file",
        "soft-secp256k1",
        &std::fs::read(path).unwrap(),
    );
    // The keystore v3 test vector of the Web3 Secret Storage definition (PBKDF2).
    put(
        "keystore_file",
        "v3-pbkdf2",
        br#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"6087dab2f9fdbbfaddc31a909735c1e6"},"ciphertext":"5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46","kdf":"pbkdf2","kdfparams":{"c":262144,"dklen":32,"prf":"hmac-sha256","salt":"ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},"mac":"517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#,
    );
    put(
        "keystore_file",
        "v3-scrypt",
        br#"{"address":"008aeeda4d805471df9b2a5b0f38a0c3bcba786b","crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"83dbcc02d8ccb40e466191a123791e0e"},"ciphertext":"d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c","kdf":"scrypt","kdfparams":{"dklen":32,"n":262144,"p":8,"r":1,"salt":"ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"},"mac":"2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#,
    );
    let wrapped = serde_json::json!({
        "version": 1,
        "id": WRAPPED_ID,
        "algorithm": "secp256k1",
        "public_key": hex::encode(secret.public_key()),
        "wrapping_key": WRAPPING_KEY,
        "ciphertext": "vault:v1:bm90IGEgcmVhbCBjaXBoZXJ0ZXh0IGJ1dCB3ZWxsIGZvcm1lZA==",
    });
    put(
        "wrapped_key",
        "evm.wrapped.json",
        serde_json::to_string_pretty(&wrapped).unwrap().as_bytes(),
    );

    // PEM: a CA, a client certificate for `payments` with a SPIFFE id, and a CRL revoking it.
    let ca = crate::tls::pki::DevCa::generate("fuzz CA").unwrap();
    let client = ca
        .issue_client(
            "payments",
            &crate::tls::pki::ClientOptions {
                san_uri: Some("spiffe://example.org/payments".into()),
                expired: false,
            },
        )
        .unwrap();
    let crl = ca.crl(&[&client.serial]).unwrap();
    put("tls_identity", "ca.pem", ca.cert_pem().as_bytes());
    put("tls_identity", "client.pem", client.cert_pem.as_bytes());
    put(
        "tls_identity",
        "ca-and-crl.pem",
        format!("{}{crl}", ca.cert_pem()).as_bytes(),
    );
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(client.cert_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
        .unwrap();
    put("tls_identity", "client.der", &der);

    // Vault responses, as OpenBao 2 answers them.
    let envelope = |data: serde_json::Value| {
        serde_json::json!({
            "request_id": "8a1c4c5e-2f7b-4b8e-9d3a-0c6f5e1b2a3d",
            "lease_id": "",
            "renewable": false,
            "lease_duration": 0,
            "data": data,
            "wrap_info": null,
            "warnings": null,
            "auth": null,
        })
    };
    let ed = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let vault = [
        (
            0u8,
            "read-key-ed25519",
            serde_json::json!({
                "name": "approver-ed", "type": "ed25519", "deletion_allowed": false,
                "derived": false, "exportable": false, "allow_plaintext_backup": false,
                "keys": {"1": {"name": "ed25519", "public_key": base64_std(ed.verifying_key().as_bytes()), "creation_time": "2026-11-24T15:00:00Z"}},
                "min_decryption_version": 1, "min_encryption_version": 0,
                "latest_version": 1, "supports_encryption": false, "supports_decryption": false,
                "supports_derivation": true, "supports_signing": true, "imported": false,
                "auto_rotate_period": 0,
            }),
        ),
        (
            1,
            "sign-ed25519",
            serde_json::json!({"signature": format!("vault:v1:{}", base64_std(&{
                use ed25519_dalek::Signer as _;
                ed.sign(b"message").to_bytes()
            })), "key_version": 1}),
        ),
        (
            2,
            "decrypt",
            serde_json::json!({"plaintext": base64_std(&[7; 32])}),
        ),
        (
            3,
            "encrypt",
            serde_json::json!({"ciphertext": "vault:v1:Zm9vYmFyYmF6cXV4", "key_version": 1}),
        ),
        (
            4,
            "list-keys",
            serde_json::json!({"keys": ["approver-ed", "signerd-wrap"]}),
        ),
    ];
    for (kind, name, data) in vault {
        let mut b = vec![kind];
        b.extend(serde_json::to_vec_pretty(&envelope(data)).unwrap());
        put("vault_response", name, &b);
    }

    // Policies, cases and the configuration.
    for name in ["treasury", "hot-wallet", "defi-bot", "freeze"] {
        let p = std::fs::read(repo.join(format!("policy/examples/{name}.toml"))).unwrap();
        put("policy_parse", &format!("{name}.toml"), &p);
        let c = std::fs::read(repo.join(format!("policy/examples/{name}.cases.toml"))).unwrap();
        put("policy_cases", &format!("{name}.cases.toml"), &c);
    }
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
