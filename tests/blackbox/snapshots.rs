//! Snapshots of derived state against the real daemon: with segments small enough to seal
//! often, a restart that continues from a snapshot sees the same limit usage, idempotent
//! replays, key pins and pending approvals as a restart that reads the whole log; a changed or
//! forged snapshot is not used (the daemon's log says so) and the result is still right;
//! `signerctl audit snapshot verify` catches a changed snapshot; a kill -9 under load leaves
//! a log that starts right.

use std::path::{Path, PathBuf};
use std::process::Command;

use signerd_proto::v1;

use crate::approvals::{approver, pending, tx};
use crate::audit_support::{ctl, vkey};
use crate::util::*;

/// Requesters sign with `hot`; 5,000 wei or more needs 2 of treasury; at most 10,000 wei a
/// day.
fn policy() -> String {
    crate::approvals::policy_from(1, "1h", 10_000, 5_000)
}

/// An installation whose segments seal every 16 KiB (the smallest allowed).
fn env(name: &str) -> TestEnv {
    let env = TestEnv::with(
        name,
        Opts {
            policy: policy(),
            ..Opts::default()
        },
    );
    let mut config = std::fs::read_to_string(env.config_path()).unwrap();
    config.push_str("max_segment_bytes = 16384\n");
    write_file(&env.config_path(), config.as_bytes(), 0o600);
    env
}

fn snapshots(env: &TestEnv) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(env.audit_dir().join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Signs `n` transfers of 100 wei (`s-<i>`), returning each raw transaction, and leaves one
/// transfer of 6,000 wei waiting for approval (`big-1`): 100·n + 6,000 wei used.
async fn traffic(env: &TestEnv, d: &Daemon, n: usize) -> Vec<Vec<u8>> {
    let mut c = env.client(d, "app").await;
    let mut raws = Vec::new();
    for i in 0..n {
        let r = c
            .sign_evm_transaction(tx(&format!("s-{i}"), 100))
            .await
            .unwrap()
            .into_inner();
        raws.push(r.raw_transaction);
    }
    pending(&mut c, "big-1", 6000).await;
    raws
}

/// Waits until the log holds an `audit.snapshot` record covering at least `records`.
fn wait_snapshot(env: &TestEnv, records: u64) -> Audit {
    env.wait_audit(|a| {
        a.of_type("audit.snapshot")
            .iter()
            .any(|r| r["records"].as_u64().is_some_and(|n| n >= records))
    })
}

/// What a client and an approver see: the decision of dry runs of `fits` and `fits + 1`
/// wei, the replay of `s-0`, the requests waiting for approval, and the key pins learned.
async fn observe(env: &TestEnv, d: &Daemon, fits: u64) -> (String, String, Vec<u8>, Vec<String>) {
    let mut c = env.client(d, "app").await;
    let dry = |rid: &str, v: u64| {
        let mut t = tx(rid, v);
        t.dry_run = true;
        t
    };
    let a = c
        .sign_evm_transaction(dry("dry-a", fits))
        .await
        .unwrap()
        .into_inner()
        .evaluation
        .unwrap()
        .decision;
    let b = c
        .sign_evm_transaction(dry("dry-b", fits + 1))
        .await
        .unwrap()
        .into_inner()
        .evaluation
        .unwrap()
        .decision;
    let replay = c
        .sign_evm_transaction(tx("s-0", 100))
        .await
        .unwrap()
        .into_inner()
        .raw_transaction;
    let mut bob = approver(env, d, "bob").await;
    let mut waiting: Vec<String> = bob
        .list_pending(v1::ListPendingRequest {})
        .await
        .unwrap()
        .into_inner()
        .requests
        .into_iter()
        .map(|p| format!("{} {}", p.request_id, p.client))
        .collect();
    waiting.sort();
    (a, b, replay, waiting)
}

fn pins_learned(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.contains("key pins learned"))
        .and_then(|l| l.split("pins=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_restart_from_a_snapshot_sees_what_a_full_read_sees() {
    let env = env("snap-restart");
    let d = env.start();
    let raws = traffic(&env, &d, 30).await;
    let records = env.audit().max_seq().unwrap();
    wait_snapshot(&env, records / 2);
    assert!(d.stop().success());
    assert!(!snapshots(&env).is_empty());

    // From the snapshot: 3,000 + 6,000 wei used, so 1,000 fits and 1,001 does not.
    let d = env.start();
    let from_snapshot = observe(&env, &d, 1000).await;
    let (status, stderr) = d.stop_logged();
    assert!(status.success());
    assert!(
        stderr.contains("start-up continues from a snapshot the audit log vouches for"),
        "{stderr}"
    );
    assert_eq!(from_snapshot.0, "allow");
    assert_eq!(from_snapshot.1, "deny");
    assert_eq!(
        from_snapshot.2, raws[0],
        "the replay of s-0 is its first answer"
    );
    assert_eq!(from_snapshot.3, vec!["big-1 app".to_owned()]);
    let pins_snapshot = pins_learned(&stderr);
    assert_eq!(pins_snapshot, "1", "{stderr}");

    // The whole log, without snapshots: the same.
    std::fs::remove_dir_all(env.audit_dir().join("snapshots")).unwrap();
    let d = env.start();
    let full = observe(&env, &d, 1000).await;
    let (status, stderr) = d.stop_logged();
    assert!(status.success());
    assert!(
        !stderr.contains("start-up continues from a snapshot"),
        "{stderr}"
    );
    assert_eq!(full, from_snapshot);
    assert_eq!(pins_learned(&stderr), pins_snapshot);

    // And the auditor's check of the whole log passes with audit.snapshot records in it.
    let out = ctl(&[
        "audit",
        "verify",
        env.audit_dir().to_str().unwrap(),
        "--pubkey",
        &vkey(&env),
    ]);
    assert!(out.status.success(), "{out:?}");
}

/// The newest snapshot, with one byte changed in a count nothing else checks.
fn change_one_byte(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find("\"requests\":").unwrap() + "\"requests\":".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
    std::fs::write(path, bytes).unwrap();
}

/// The newest snapshot with every signed charge removed, as a consistent file of its own.
fn forge(path: &Path) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["ledger"]["settled"] = serde_json::json!({});
    let mut bytes = serde_json::to_vec(&v).unwrap();
    bytes.push(b'\n');
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_changed_or_forged_snapshot_is_not_used_and_verify_catches_it() {
    let env = env("snap-tamper");
    let d = env.start();
    traffic(&env, &d, 30).await;
    let records = env.audit().max_seq().unwrap();
    wait_snapshot(&env, records / 2);
    assert!(d.stop().success());
    let files = snapshots(&env);
    let newest = files.last().unwrap().clone();
    let dir = env.audit_dir();
    let key = vkey(&env);
    let verify = |file: &Path| {
        ctl(&[
            "audit",
            "snapshot",
            "verify",
            "--dir",
            dir.to_str().unwrap(),
            file.to_str().unwrap(),
            "--pubkey",
            &key,
        ])
    };
    let out = verify(&newest);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(": ok: "), "{out:?}");
    let good = std::fs::read(&newest).unwrap();

    for (what, tamper) in [
        ("one byte changed", change_one_byte as fn(&Path)),
        ("forged and re-hashed", forge),
    ] {
        std::fs::write(&newest, &good).unwrap();
        tamper(&newest);
        let out = verify(&newest);
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(out.stderr.contains("FAILED"), "{what}: {out:?}");

        let d = env.start();
        let seen = observe(&env, &d, 1000).await;
        let (status, stderr) = d.stop_logged();
        assert!(status.success());
        assert!(
            stderr
                .contains("snapshot not used: no audit.snapshot record after it names its SHA-256"),
            "{what}: {stderr}"
        );
        // Every charge still counts: 1,000 wei fits, 1,001 does not.
        assert_eq!(
            (seen.0.as_str(), seen.1.as_str()),
            ("allow", "deny"),
            "{what}"
        );
        assert_eq!(seen.3, vec!["big-1 app".to_owned()], "{what}");
    }
}

#[tokio::test]
async fn kill_9_while_snapshots_are_written_leaves_a_log_that_starts_right() {
    let env = env("snap-kill");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // Signed one at a time, each durable before the next: 30 × 100 wei.
    for i in 0..30 {
        c.sign_evm_transaction(tx(&format!("s-{i}"), 100))
            .await
            .unwrap();
    }
    // 6,000 wei waiting for approval hold their charge across the crash.
    pending(&mut c, "big-1", 6000).await;
    // Killed right after a seal, while the builder may be between the file and its record.
    let seals = env.audit().of_type("audit.segment_seal").len();
    let mut c2 = env.client(&d, "app").await;
    let mut i = 30;
    while env.audit().of_type("audit.segment_seal").len() == seals {
        c2.sign_evm_transaction(tx(&format!("s-{i}"), 1))
            .await
            .unwrap();
        i += 1;
    }
    let status = Command::new("kill")
        .args(["-9", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(d);
    let used = 9000 + (i - 30) as u64;

    let d = env.start();
    let seen = observe(&env, &d, 10_000 - used).await;
    let (status, stderr) = d.stop_logged();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        (seen.0.as_str(), seen.1.as_str()),
        ("allow", "deny"),
        "{stderr}"
    );
    assert_eq!(seen.3, vec!["big-1 app".to_owned()]);
    let out = ctl(&[
        "audit",
        "verify",
        env.audit_dir().to_str().unwrap(),
        "--pubkey",
        &vkey(&env),
    ]);
    assert!(out.status.success(), "{out:?}");
}
