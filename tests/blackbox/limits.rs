//! Limits under concurrency and crashes: no interleaving of concurrent requests exceeds a
//! limit, denied requests reserve nothing, and spend that was signed is still counted after
//! `kill -9` and a restart.

use std::process::Command;

use tonic::Code;

use crate::util::*;

fn limited_env(name: &str) -> TestEnv {
    TestEnv::with(
        name,
        Opts {
            policy: limited_policy(10_000),
            ..Opts::default()
        },
    )
}

#[tokio::test]
async fn concurrent_requests_never_exceed_a_limit() {
    let env = limited_env("limit-race");
    let d = env.start();
    // 40 concurrent transfers of 1,000 wei against a 10,000 wei window: exactly 10 fit.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = env.client(&d, "app").await;
        tasks.push(tokio::spawn(async move {
            c.sign_evm_transaction(eip1559(&format!("race-{i}"))).await
        }));
    }
    let (signed, denied) = signed_and_denied(tasks, "daily-eth").await;
    assert_eq!((signed, denied), (10, 30));
    let audit = env.wait_audit(|a| a.of_type("sign.result").len() == 40);
    let signed_results = audit
        .of_type("sign.result")
        .into_iter()
        .filter(|r| r["status"] == "signed")
        .count();
    assert_eq!(signed_results, 10);
    // Every allowed decision names the charge it reserved.
    for dec in audit.of_type("sign.decision") {
        if dec["decision"] == "allow" {
            assert_eq!(dec["charges"][0]["limit"], "daily-eth", "{dec}");
            assert_eq!(dec["charges"][0]["amount"], "1000", "{dec}");
        } else {
            assert_eq!(dec["rules"][0], "daily-eth", "{dec}");
        }
    }
    // Recorded in whatever order the 40 reached the log, every decision is the policy's.
    assert!(d.stop().success());
    let out = crate::audit_support::ctl(&["audit", "recheck", env.audit_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("40 decisions rechecked"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn signed_spend_survives_kill_9() {
    let env = limited_env("limit-kill");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    for i in 0..9 {
        c.sign_evm_transaction(eip1559(&format!("k-{i}")))
            .await
            .unwrap();
    }
    let pid = d.pid();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(d);

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // 9,000 wei were signed before the crash: one more 1,000 wei fits, the next does not.
    c.sign_evm_transaction(eip1559("after-1")).await.unwrap();
    let st = refused(
        "over the limit after restart",
        c.sign_evm_transaction(eip1559("after-2")).await,
    );
    assert_status(
        "over the limit after restart",
        &st,
        Code::PermissionDenied,
        "daily-eth",
    );
    // The window is full: a dry run names the limit that would deny the next request.
    let mut dry = eip1559("after-3");
    dry.dry_run = true;
    let e = c
        .sign_evm_transaction(dry)
        .await
        .unwrap()
        .into_inner()
        .evaluation
        .unwrap();
    assert_eq!(e.decision, "deny");
    assert_eq!(e.rules, vec!["daily-eth".to_owned()]);
}

#[tokio::test]
async fn lost_state_is_reconciled_from_the_audit_log() {
    let env = limited_env("limit-lost-state");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    for i in 0..9 {
        c.sign_evm_transaction(eip1559(&format!("s-{i}")))
            .await
            .unwrap();
    }
    assert!(d.stop().success());
    // The state store is gone (a lost disk, a botched restore): the audit log still knows.
    std::fs::remove_dir_all(env.dir.join("state")).unwrap();

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("t-1")).await.unwrap();
    let st = refused(
        "over the limit with a new state store",
        c.sign_evm_transaction(eip1559("t-2")).await,
    );
    assert_status("reconciled", &st, Code::PermissionDenied, "daily-eth");
    assert!(
        d.stderr()
            .contains("spend ledger and answers reconciled from the audit log"),
        "{}",
        d.stderr()
    );
}
