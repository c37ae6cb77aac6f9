//! Tampering with a log the real daemon wrote: every kind of change is caught by the real
//! `signerctl audit verify`, which names the first bad record. Also the receipt-holder's view:
//! `prove` and `check-proof` on the same log, and `query`/`tail`.

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

use crate::audit_support::*;
use crate::util::{TestEnv, eip1559, leaf_hash};

/// A signed note for `text` (checkpoint body) by a key that is not the log's.
fn forge_note(body: &str, name: &str) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let pk = key.verifying_key().to_bytes();
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', 1]);
    h.update(pk);
    let id = &h.finalize()[..4];
    let mut raw = id.to_vec();
    raw.extend_from_slice(&key.sign(body.as_bytes()).to_bytes());
    format!(
        "{body}\n\u{2014} {name} {}\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_each_kind_of_tampering() {
    let env = TestEnv::new("audit-tamper");
    configure_audit(&env, "checkpoint_every_records = 4");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let mut receipts = Vec::new();
    for i in 0..12 {
        let id = format!("t-{i}");
        let resp = c
            .sign_evm_transaction(eip1559(&id))
            .await
            .unwrap()
            .into_inner();
        receipts.push((id, resp.receipt.unwrap()));
    }
    assert!(d.stop().success());
    // The daemon generated its own audit key on first start, apart from the client keys.
    assert!(env.dir.join("audit-key/audit-checkpoint.key.json").exists());
    assert!(!env.dir.join("keys/audit-checkpoint.key.json").exists());
    let vkey = vkey(&env);
    let good = env.audit_dir();
    let report = assert_verifies(&good, &vkey);
    assert!(report.contains("results: signed 12"), "{report}");
    // Without the key, the report says signatures were not checked.
    let out = verify(&good, None, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("signatures:   NOT checked"),
        "{}",
        out.stdout
    );

    let seg_name = "segment-00000001.jsonl";
    let lines = read_lines(&good.join(seg_name));
    let n = lines.len();
    let pos_of = |ty: &str| {
        lines
            .iter()
            .position(|l| record(l)["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty}"))
    };
    let first_result = pos_of("sign.result");
    let case = |name: &str, edit: &dyn Fn(&mut Vec<Vec<u8>>)| -> std::path::PathBuf {
        let dir = env.dir.join(format!("case-{name}"));
        copy_tree(&good, &dir);
        let mut l = lines.clone();
        edit(&mut l);
        write_lines(&dir.join(seg_name), &l);
        dir
    };

    // One changed byte (a signature digit): the next record's prev no longer matches.
    let dir = case("byte", &|l| {
        let p = l[first_result]
            .windows(5)
            .position(|w| w == b"\"r\":\"")
            .unwrap()
            + 7;
        l[first_result][p] = if l[first_result][p] == b'1' {
            b'2'
        } else {
            b'1'
        };
    });
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        &format!(
            "{seg_name}:{} (seq {}): prev is",
            first_result + 2,
            first_result + 1
        ),
    );
    // A deleted record.
    let dir = case("delete", &|l| {
        l.remove(first_result);
    });
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        &format!("seq is {}, expected {first_result}", first_result + 1),
    );
    // Two records swapped.
    let dir = case("reorder", &|l| l.swap(first_result, first_result + 1));
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        "the sequence has a gap or is out of order",
    );
    // A record inserted (a copy of another one).
    let dir = case("insert", &|l| {
        let copy = l[first_result].clone();
        l.insert(first_result + 1, copy);
    });
    assert_verify_fails(&dir, Some(&vkey), &[], "expected");
    // Truncated right after an earlier checkpoint: the chain of what is left is intact and
    // covered, but the checkpoint file covers more.
    let covered_end = lines[..n - 3]
        .iter()
        .rposition(|l| record(l)["type"] == "audit.checkpoint")
        .unwrap()
        + 1;
    let dir = case("truncate", &|l| l.truncate(covered_end));
    assert_verify_fails(&dir, Some(&vkey), &[], "but the checkpoint file covers");
    // ... and with the checkpoint file removed too, only a checkpoint kept elsewhere helps.
    std::fs::remove_file(dir.join("checkpoint")).unwrap();
    let out = verify(&dir, Some(&vkey), &[]);
    assert!(out.status.success(), "{out:?}");
    let shipped = env.dir.join("shipped-checkpoint");
    std::fs::copy(good.join("checkpoint"), &shipped).unwrap();
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &["--checkpoint", shipped.to_str().unwrap()],
        "records at the end were removed",
    );
    let out = verify(
        &good,
        Some(&vkey),
        &["--checkpoint", shipped.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("external checkpoints matched: 1"),
        "{}",
        out.stdout
    );
    // A record changed and the whole chain after it recomputed: the signed tree heads differ.
    let dir = case("rechain", &|l| {
        let text = String::from_utf8(l[first_result].clone()).unwrap();
        l[first_result] = text
            .replacen("\"status\":\"signed\"", "\"status\":\"denied\"", 1)
            .into_bytes();
        let mut prev = leaf_hash(std::str::from_utf8(&l[first_result]).unwrap());
        for line in l.iter_mut().skip(first_result + 1) {
            let s = String::from_utf8(line.clone()).unwrap();
            let cut = s.rfind(",\"prev\":\"").unwrap();
            *line = format!("{},\"prev\":\"{}\"}}", &s[..cut], hex::encode(prev)).into_bytes();
            prev = leaf_hash(std::str::from_utf8(line).unwrap());
        }
    });
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        "records before this checkpoint were changed",
    );
    // A checkpoint replaced by one signed with another key (same name, same tree).
    let cp = pos_of("audit.checkpoint");
    let dir = case("forged-checkpoint", &|l| {
        let v = record(&l[cp]);
        let note = v["note"].as_str().unwrap();
        let body = &note[..note.find("\n\n").unwrap() + 1];
        let name = note.lines().next().unwrap();
        let forged = forge_note(body, name);
        let text = String::from_utf8(l[cp].clone()).unwrap();
        l[cp] = text
            .replace(
                &serde_json::to_string(note).unwrap(),
                &serde_json::to_string(&forged).unwrap(),
            )
            .into_bytes();
    });
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        &format!("{seg_name}:{} (seq {cp}): checkpoint signature", cp + 1),
    );
    // The checkpoint file replaced by a forged one.
    let dir = env.dir.join("case-forged-file");
    copy_tree(&good, &dir);
    let note = std::fs::read_to_string(good.join("checkpoint")).unwrap();
    let body = &note[..note.find("\n\n").unwrap() + 1];
    std::fs::write(
        dir.join("checkpoint"),
        forge_note(body, note.lines().next().unwrap()),
    )
    .unwrap();
    assert_verify_fails(
        &dir,
        Some(&vkey),
        &[],
        "checkpoint: the note has no signature by",
    );
    // The wrong verifier key.
    let (name, _) = vkey.split_once('+').unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let pk = key.verifying_key().to_bytes();
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', 1]);
    h.update(pk);
    let other = format!(
        "{name}+{}+{}",
        hex::encode(&h.finalize()[..4]),
        base64::engine::general_purpose::STANDARD.encode([&[1u8][..], &pk].concat())
    );
    assert_verify_fails(&good, Some(&other), &[], "the note has no signature by");

    // Receipts: an inclusion proof for each, checked against the signed checkpoint.
    let good_s = good.to_str().unwrap();
    for (id, receipt) in receipts.iter().step_by(5) {
        let seq = receipt.seq.to_string();
        let out = ctl(&["audit", "prove", "--dir", good_s, &seq, "--pubkey", &vkey]);
        assert!(out.status.success(), "{id}: {out:?}");
        let proof: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(proof["seq"], receipt.seq);
        assert_eq!(proof["leaf_hash"], hex::encode(&receipt.leaf_hash));
        let file = env.dir.join(format!("proof-{id}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        let f = file.to_str().unwrap();
        let leaf = hex::encode(&receipt.leaf_hash);
        let out = ctl(&[
            "audit",
            "check-proof",
            f,
            "--pubkey",
            &vkey,
            "--leaf-hash",
            &leaf,
        ]);
        assert!(out.status.success(), "{id}: {out:?}");
        assert!(out.stdout.starts_with("OK: record "), "{}", out.stdout);
        let out = ctl(&[
            "audit",
            "check-proof",
            f,
            "--pubkey",
            &vkey,
            "--leaf-hash",
            &"00".repeat(32),
        ]);
        assert!(
            !out.status.success(),
            "{id}: a proof for another leaf was accepted"
        );
        let out = ctl(&["audit", "check-proof", f, "--pubkey", &other]);
        assert!(
            !out.status.success(),
            "{id}: a proof under the wrong key was accepted"
        );
        let mut bad = proof.clone();
        bad["root"] = serde_json::Value::String("11".repeat(32));
        std::fs::write(&file, bad.to_string()).unwrap();
        let out = ctl(&["audit", "check-proof", f, "--pubkey", &vkey]);
        assert!(
            !out.status.success(),
            "{id}: a proof with a wrong root was accepted"
        );
    }

    // Query and tail read the same lines.
    let out = ctl(&["audit", "query", "--dir", good_s, "--req-id", "t-3"]);
    assert!(out.status.success(), "{out:?}");
    let got: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sign.request", "sign.decision", "sign.result"]);
    for line in out.stdout.lines() {
        assert!(
            lines.iter().any(|l| l == line.as_bytes()),
            "not an exact line: {line}"
        );
    }
    let out = ctl(&[
        "audit", "query", "--dir", good_s, "--client", "app", "--key", "hot", "--type", "sign.r*",
        "--format", "table",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1 + 24, "{}", out.stdout);
    assert_eq!(out.stdout.matches(" signed").count(), 12, "{}", out.stdout);
    let out = ctl(&[
        "audit",
        "query",
        "--dir",
        good_s,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let out = ctl(&["audit", "tail", "--dir", good_s, "-n", "2"]);
    assert!(out.status.success(), "{out:?}");
    let tail: Vec<&[u8]> = out.stdout.lines().map(str::as_bytes).collect();
    assert_eq!(tail, [&lines[n - 2][..], &lines[n - 1][..]]);
}
