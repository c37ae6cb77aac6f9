//! The edges of the audit log against someone who can write the daemon's disk: a forged tail
//! (after a clean stop and after a crash), a cut tail, and a rollback of the log together with
//! its `checkpoint` file. Each is caught by the real `signerctl audit` commands and by the
//! real daemon at start-up.

use std::path::Path;
use std::time::Duration;

use crate::audit_support::*;
use crate::util::{TestEnv, eip1559, leaf_hash, run_to_exit};

/// The last segment of a log directory.
fn last_segment(dir: &Path) -> std::path::PathBuf {
    segments(dir).pop().expect("a segment")
}

/// Appends to `dir`'s last segment a `sign.request` record made from the log's own last
/// `sign.request` (request id `req_id`), with the right `seq` and `prev`: everything the hash
/// chain checks is right, but no checkpoint covers it. Returns the forged line.
fn forge_tail(dir: &Path, req_id: &str) -> String {
    let seg = last_segment(dir);
    let mut lines = read_lines(&seg);
    let last = String::from_utf8(lines.last().unwrap().clone()).unwrap();
    let last_seq = record(last.as_bytes())["seq"].as_u64().unwrap();
    let template = segments(dir)
        .iter()
        .flat_map(|s| read_lines(s))
        .map(|l| String::from_utf8(l).unwrap())
        .rfind(|l| record(l.as_bytes())["type"] == "sign.request")
        .expect("a sign.request to copy");
    let old = record(template.as_bytes());
    let body_start = template.find(",\"type\":").unwrap();
    let prev_at = template.rfind(",\"prev\":\"").unwrap();
    let body = &template[body_start..prev_at].replace(
        &format!("\"req_id\":\"{}\"", old["req_id"].as_str().unwrap()),
        &format!("\"req_id\":\"{req_id}\""),
    );
    let ts = record(last.as_bytes())["ts"].as_str().unwrap().to_owned();
    let forged = format!(
        "{{\"v\":1,\"seq\":{},\"ts\":\"{ts}\"{body},\"prev\":\"{}\"}}",
        last_seq + 1,
        hex::encode(leaf_hash(&last))
    );
    lines.push(forged.clone().into_bytes());
    write_lines(&seg, &lines);
    forged
}

/// Every line of every segment of `dir`, as text.
fn all_text(dir: &Path) -> String {
    segments(dir)
        .iter()
        .map(|s| std::fs::read_to_string(s).unwrap())
        .collect()
}

/// After a start on a log with a forged tail: the tail was moved aside with an
/// `audit.recover` that names it, no checkpoint covers it, and the log verifies.
fn assert_moved_aside(env: &TestEnv, forged: &str, forged_id: &str, vkey: &str) {
    let audit = env.audit();
    let recover = audit.of_type("audit.recover");
    assert_eq!(recover.len(), 1, "{recover:?}");
    let r = recover[0];
    assert_eq!(r["unattested_records"], 1, "{r}");
    let saved = env.audit_dir().join(r["saved_as"].as_str().unwrap());
    assert!(
        r["saved_as"]
            .as_str()
            .unwrap()
            .starts_with("recovered/unattested-"),
        "{r}"
    );
    let kept = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(kept, format!("{forged}\n"));
    // The record after the moved-aside one took its seq: the forged line is in no segment,
    // so no checkpoint ever covered it.
    assert!(!all_text(&env.audit_dir()).contains(forged_id));
    assert_verifies(&env.audit_dir(), vkey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tail_after_a_clean_stop_is_refused_by_verify_and_moved_aside_at_start() {
    let env = TestEnv::new("forged-tail-clean");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("honest-1")).await.unwrap();
    assert!(d.stop().success());
    let vkey = vkey(&env);

    let forged = forge_tail(&env.audit_dir(), "forged-1");
    // The chain is intact, but nothing signed covers the record.
    assert_verify_fails(
        &env.audit_dir(),
        Some(&vkey),
        &[],
        "covered by no checkpoint",
    );
    // Reading a log that is being written, the auditor sees it reported, not verified.
    let live = verify(&env.audit_dir(), Some(&vkey), &["--live"]);
    assert!(live.status.success(), "{live:?}");
    assert!(
        live.stdout.contains("unattested:   1 record(s)"),
        "{}",
        live.stdout
    );

    let d = env.start();
    assert!(d.stop().success());
    assert_moved_aside(&env, &forged, "forged-1", &vkey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tail_after_a_crash_is_moved_aside_and_every_answer_stays_covered() {
    let env = TestEnv::new("forged-tail-crash");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let mut receipts = Vec::new();
    for i in 0..5 {
        let id = format!("crash-{i}");
        let resp = c.sign_evm_transaction(eip1559(&id)).await.unwrap();
        receipts.push((id, resp.into_inner().receipt.unwrap()));
    }
    kill_9(d);
    let vkey = vkey(&env);
    // Every answer the client got is already covered by a checkpoint in the log.
    let audit = env.audit();
    let last_checkpoint = audit
        .of_type("audit.checkpoint")
        .last()
        .map(|c| c["size"].as_u64().unwrap())
        .unwrap();
    for (id, receipt) in &receipts {
        assert!(receipt.seq < last_checkpoint, "{id}: {receipt:?}");
    }
    let forged = forge_tail(&env.audit_dir(), "forged-2");
    assert_verify_fails(
        &env.audit_dir(),
        Some(&vkey),
        &[],
        "covered by no checkpoint",
    );

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // The answers before the crash are still there: retries get the same answers.
    let again = c.sign_evm_transaction(eip1559("crash-0")).await.unwrap();
    assert_eq!(again.into_inner().receipt.unwrap(), receipts[0].1);
    assert!(d.stop().success());
    assert_moved_aside(&env, &forged, "forged-2", &vkey);
    for (_, receipt) in &receipts {
        let out = ctl(&[
            "audit",
            "prove",
            "--dir",
            env.audit_dir().to_str().unwrap(),
            &receipt.seq.to_string(),
            "--pubkey",
            &vkey,
        ]);
        assert!(out.status.success(), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_below_its_checkpoint_record_fails_verify_and_start() {
    let env = TestEnv::new("cut-tail");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("cut-1")).await.unwrap();
    assert!(d.stop().success());
    let vkey = vkey(&env);
    // The closing checkpoint removed; the `checkpoint` file still covers what is left.
    let seg = last_segment(&env.audit_dir());
    let mut lines = read_lines(&seg);
    assert_eq!(record(lines.last().unwrap())["type"], "audit.checkpoint");
    lines.pop();
    write_lines(&seg, &lines);
    assert_verify_fails(
        &env.audit_dir(),
        Some(&vkey),
        &[],
        "right before the audit.checkpoint record that the checkpoint file was published from",
    );
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(!out.status.success(), "started on a cut log: {out:?}");
    assert!(
        out.stderr
            .contains("right before the audit.checkpoint record that the checkpoint in"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_the_log_and_its_checkpoint_file_is_caught_against_a_kept_checkpoint() {
    let env = TestEnv::new("rollback");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("before-1")).await.unwrap();
    assert!(d.stop().success());
    let vkey = vkey(&env);
    let old_copy = env.dir.join("audit-after-first-run");
    copy_tree(&env.audit_dir(), &old_copy);
    let old_checkpoint = env.dir.join("old.checkpoint");
    std::fs::copy(env.audit_dir().join("checkpoint"), &old_checkpoint).unwrap();

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("after-1")).await.unwrap();
    assert!(d.stop().success());
    // The auditor verifies and keeps the newest checkpoint.
    assert_verifies(&env.audit_dir(), &vkey);
    let kept = env.dir.join("kept.checkpoint");
    std::fs::copy(env.audit_dir().join("checkpoint"), &kept).unwrap();
    let kept_s = kept.to_str().unwrap();
    let dir_s = env.audit_dir();
    let dir_s = dir_s.to_str().unwrap();

    // Honest history: the old checkpoint is consistent with the kept one, and the proof checks
    // without the log.
    let out = ctl(&[
        "audit",
        "consistency",
        "--dir",
        dir_s,
        old_checkpoint.to_str().unwrap(),
        kept_s,
        "--pubkey",
        &vkey,
    ]);
    assert!(out.status.success(), "{out:?}");
    let proof_file = env.dir.join("consistency.json");
    std::fs::write(&proof_file, &out.stdout).unwrap();
    let out = ctl(&[
        "audit",
        "check-consistency",
        proof_file.to_str().unwrap(),
        "--pubkey",
        &vkey,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with("OK: the tree of"), "{}", out.stdout);
    // A proof edited to claim another history fails.
    let mut proof: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
    if let Some(first) = proof["proof"].get_mut(0) {
        *first = serde_json::Value::String("00".repeat(32));
        std::fs::write(&proof_file, proof.to_string()).unwrap();
        let out = ctl(&[
            "audit",
            "check-consistency",
            proof_file.to_str().unwrap(),
            "--pubkey",
            &vkey,
        ]);
        assert!(!out.status.success(), "{out:?}");
    }
    // An incremental check since the kept checkpoint passes on the honest log.
    let out = verify(&env.audit_dir(), Some(&vkey), &["--since", kept_s]);
    assert!(out.status.success(), "{out:?}");

    // The attacker rolls the log and its checkpoint file back together.
    std::fs::remove_dir_all(env.audit_dir()).unwrap();
    copy_tree(&old_copy, &env.audit_dir());
    // On its own, the rolled-back log is a valid older log ...
    assert_verifies(&env.audit_dir(), &vkey);
    // ... but not against the checkpoint the auditor kept.
    assert_verify_fails(
        &env.audit_dir(),
        Some(&vkey),
        &["--since", kept_s],
        "records at the end were removed",
    );
    assert_verify_fails(
        &env.audit_dir(),
        Some(&vkey),
        &["--checkpoint", kept_s],
        "records at the end were removed",
    );
    let out = ctl(&[
        "audit",
        "consistency",
        "--dir",
        dir_s,
        kept_s,
        "--pubkey",
        &vkey,
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("records at the end were removed"),
        "{}",
        out.stderr
    );
    // The daemon's state store remembers the longer log.
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "started on a rolled-back log: {out:?}"
    );
    assert!(
        out.stderr.contains("records in this log, which now holds"),
        "{}",
        out.stderr
    );
}
