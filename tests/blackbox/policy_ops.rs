//! Operating the policy on a running daemon: dry runs, and hot reload through SIGHUP and the
//! Admin API (validate first, refuse a serial that does not increase, keep the running policy
//! on any error, record `policy.load`, and record every refusal as `policy.refused`).

use std::process::Command;

use signerd_proto::v1::{self, admin_client::AdminClient};
use tonic::Code;

use crate::util::*;

fn digest_req(id: &str, key: &str, dry_run: bool) -> v1::SignDigestRequest {
    v1::SignDigestRequest {
        dry_run,
        request_id: id.into(),
        key_id: key.into(),
        digest: vec![0x5a; 32],
    }
}

#[tokio::test]
async fn dry_run_explains_without_signing() {
    let env = TestEnv::new("dryrun");
    let d = env.start();
    let mut c = env.client(&d, "app").await;

    let mut allowed = eip1559("dry-allow");
    allowed.dry_run = true;
    let r = c.sign_evm_transaction(allowed).await.unwrap().into_inner();
    let e = r.evaluation.expect("a dry run returns its evaluation");
    assert_eq!(e.decision, "allow");
    assert_eq!(e.rules, vec!["requesters-hot".to_owned()]);
    assert_eq!(e.policy_serial, 1);
    assert!(r.raw_transaction.is_empty() && r.signature.is_none() && r.receipt.is_none());

    let r = c
        .sign_digest(digest_req("dry-deny", HOT, true))
        .await
        .unwrap()
        .into_inner();
    let e = r.evaluation.unwrap();
    assert_eq!(e.decision, "deny");
    assert_eq!(e.reason, "no rule allows");
    assert!(r.signature.is_none());

    let audit = env.wait_audit(|a| a.count("sign.dry_run", "dry-deny") == 1);
    for id in ["dry-allow", "dry-deny"] {
        assert_eq!(audit.count("sign.dry_run", id), 1, "{id}");
        assert_eq!(
            audit.count("sign.decision", id),
            0,
            "{id}: a dry run is not a decision"
        );
        audit.assert_not_signed(id);
    }
    // A dry run stores nothing: the same id can then really be used, and is signed.
    let r = c
        .sign_evm_transaction(eip1559("dry-allow"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.raw_transaction.is_empty() && r.evaluation.is_none());
}

fn hup(d: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Replaces `policy.toml` with the default policy, a new serial, and `ed` allowed to sign raw
/// digests for `bob` too.
fn write_policy(env: &TestEnv, serial: u64) -> String {
    let text = DEFAULT_POLICY.replace("serial = 1", &format!("serial = {serial}"))
        + "\n[[rule]]\nid = \"bob-ed-digest\"\neffect = \"allow\"\nclients = [\"bob\"]\nkeys = [\"ed\"]\nkinds = [\"raw_digest\"]\n";
    env.write_policy(&text);
    env.governed(&text)
}

#[tokio::test]
async fn sighup_reloads_a_newer_policy_and_keeps_the_old_on_error() {
    let env = TestEnv::new("sighup");
    let d = env.start();
    let mut bob = env.client(&d, "bob").await;
    let st = refused(
        "before reload",
        bob.sign_digest(digest_req("b1", ED, false)).await,
    );
    assert_status(
        "before reload",
        &st,
        Code::PermissionDenied,
        "no rule allows",
    );

    // A broken file is refused; the running policy stays.
    write_file(
        &env.dir.join("policy.toml"),
        b"version = 1\nserial = 9\n[[rule]]\nid = 3\n",
        0o644,
    );
    hup(&d);
    let deadline = std::time::Instant::now() + AUDIT_WAIT;
    while !d.stderr().contains("policy reload refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged: {}",
            d.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(d.stderr().contains("policy.toml:4:6"), "{}", d.stderr());
    let st = refused(
        "broken file",
        bob.sign_digest(digest_req("b2", ED, false)).await,
    );
    assert_status("broken file", &st, Code::PermissionDenied, "no rule allows");

    // The refusal is on record, with the reason the log said.
    let audit = env.wait_audit(|a| a.of_type("policy.refused").len() == 1);
    let refusal = audit.of_type("policy.refused")[0];
    assert_eq!(refusal["source"], "sighup");
    assert_eq!(refusal.get("actor"), Some(&serde_json::Value::Null));
    assert!(
        refusal["file"].as_str().unwrap().ends_with("policy.toml"),
        "{refusal}"
    );
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("policy.toml:4:6"),
        "{refusal}"
    );

    write_policy(&env, 2);
    hup(&d);
    let audit = env.wait_audit(|a| a.of_type("policy.load").len() == 2);
    let loads = audit.of_type("policy.load");
    assert_eq!(loads[0]["source"], "startup");
    assert!(
        loads[0].get("actor").is_none(),
        "no actor at start-up: {}",
        loads[0]
    );
    assert_eq!(loads[1]["source"], "sighup");
    // A reload by signal has no client actor: the member is there, and null.
    assert_eq!(loads[1].get("actor"), Some(&serde_json::Value::Null));
    assert_eq!(loads[1]["old_serial"], 1);
    assert_eq!(loads[1]["new_serial"], 2);
    assert_eq!(loads[1]["old_hash"], loads[0]["new_hash"]);
    let r = bob
        .sign_digest(digest_req("b3", ED, false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.signature.is_some());
    let decision = audit_decision(&env, "b3");
    assert_eq!(decision["policy_serial"], 2);
    assert_eq!(decision["policy_hash"], loads[1]["new_hash"]);
}

fn audit_decision(env: &TestEnv, req_id: &str) -> serde_json::Value {
    let audit = env.wait_audit(|a| a.count("sign.decision", req_id) == 1);
    audit
        .for_req(req_id)
        .into_iter()
        .find(|v| v["type"] == "sign.decision")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn admin_rpc_reloads_with_serial_rules() {
    let env = TestEnv::new("adminrpc");
    let d = env.start();
    let channel = |who: &'static str| {
        let settings = env.settings(&d, who);
        async move { signerd::client::channel(&settings).await.unwrap() }
    };
    let mut admin = AdminClient::new(channel("admin").await);
    let mut app = AdminClient::new(channel("app").await);

    let st = refused(
        "app reloads",
        app.reload_policy(v1::ReloadPolicyRequest { force: false })
            .await,
    );
    assert_status("app reloads", &st, Code::PermissionDenied, "`admin` role");

    // Unchanged file: nothing to do.
    let r = admin
        .reload_policy(v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.changed);
    assert_eq!(r.serial, 1);

    // Same serial, other content: refused unless forced.
    write_policy(&env, 1);
    let st = refused(
        "same serial",
        admin
            .reload_policy(v1::ReloadPolicyRequest { force: false })
            .await,
    );
    assert_status(
        "same serial",
        &st,
        Code::FailedPrecondition,
        "not higher than the running serial 1",
    );
    let r = admin
        .reload_policy(v1::ReloadPolicyRequest { force: true })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!((r.previous_serial, r.serial), (1, 1));

    // A higher serial loads; a lower one is refused and the running policy stays.
    write_policy(&env, 5);
    let r = admin
        .reload_policy(v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.previous_serial, r.serial), (1, 5));
    write_policy(&env, 4);
    let st = refused(
        "lower serial",
        admin
            .reload_policy(v1::ReloadPolicyRequest { force: false })
            .await,
    );
    assert_status("lower serial", &st, Code::FailedPrecondition, "serial 4");

    let audit = env.wait_audit(|a| {
        a.of_type("policy.load").len() == 3 && a.of_type("policy.refused").len() == 3
    });
    // Every refused reload is on record with its caller and reason: the caller without the
    // role, the same serial unforced, the lower serial.
    let refusals: Vec<(String, String)> = audit
        .of_type("policy.refused")
        .iter()
        .map(|r| {
            assert_eq!(r["source"], "rpc", "{r}");
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(refusals[0].0, "app");
    assert!(refusals[0].1.contains("`admin` role"), "{refusals:?}");
    assert_eq!(refusals[1].0, "admin");
    assert!(
        refusals[1]
            .1
            .contains("not higher than the running serial 1"),
        "{refusals:?}"
    );
    assert_eq!(refusals[2].0, "admin");
    assert!(refusals[2].1.contains("serial 4"), "{refusals:?}");
    let loads = audit.of_type("policy.load");
    assert_eq!(loads[1]["source"], "rpc");
    assert_eq!(loads[1]["actor"], "admin");
    assert_eq!(loads[1]["forced"], true);
    assert_eq!(loads[2]["forced"], false);
    assert_eq!(loads[2]["new_serial"], 5);
}

/// A restart on a policy file older than one the audit log has loaded (the old file put
/// back) is refused; allowed once with `--allow-policy-rollback`, and the start says so in the
/// log.
#[tokio::test]
async fn a_restart_on_an_older_policy_is_refused_unless_allowed_on_record() {
    let env = TestEnv::new("rollback");
    let d = env.start();
    write_policy(&env, 3);
    hup(&d);
    env.wait_audit(|a| a.of_type("policy.load").len() == 2);
    assert!(d.stop().success());

    // The file of serial 1 comes back.
    env.write_policy(DEFAULT_POLICY);
    let Err(err) = Daemon::spawn(env.run_command()) else {
        panic!("signerd started on a policy older than its log has loaded");
    };
    assert!(
        err.contains("serial 1") && err.contains("lower than serial 3"),
        "{err}"
    );
    assert!(err.contains("--allow-policy-rollback"), "{err}");

    let mut cmd = env.run_command();
    cmd.arg("--allow-policy-rollback");
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| panic!("{e}"));
    let audit = env.wait_audit(|a| a.of_type("policy.load").len() == 3);
    let loads = audit.of_type("policy.load");
    assert_eq!(loads[2]["source"], "startup");
    assert_eq!(loads[2]["new_serial"], 1);
    assert_eq!(loads[2]["forced"], true, "{}", loads[2]);
    assert_eq!(loads[0]["forced"], false);
    assert!(d.stop().success());
}

/// A SIGHUP the moment the daemon says it is listening reloads the policy; it never ends the
/// process (SIGHUP's default action), however early it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_right_after_listening_never_kills_the_daemon() {
    let env = TestEnv::new("sighup-early");
    for round in 0..5 {
        let mut d = env.start();
        hup(&d);
        let mut c = env.client(&d, "app").await;
        c.sign_evm_transaction(crate::util::eip1559(&format!("early-hup-{round}")))
            .await
            .unwrap_or_else(|st| panic!("round {round}: {st:?}"));
        assert!(d.is_running(), "round {round}: the daemon died");
        assert!(d.stop().success(), "round {round}");
    }
}

/// A rule or limit naming a key the daemon does not hold would do nothing (a freeze that
/// freezes nothing): the daemon refuses to start on it, and a reload of it is refused, on
/// record, with the running policy kept.
#[tokio::test]
async fn a_policy_naming_a_key_the_daemon_does_not_hold_is_refused() {
    let freeze = "\n[[rule]]\nid = \"freeze-legacy\"\neffect = \"deny\"\nkeys = [\"legacy_hot\"]\n";
    let policy = format!("{DEFAULT_POLICY}{freeze}");
    let line = policy.lines().count();
    let env = TestEnv::with(
        "unknown-key",
        Opts {
            policy: policy.clone(),
            ..Opts::default()
        },
    );
    let Err(err) = Daemon::spawn(env.run_command()) else {
        panic!("signerd started on a policy naming a key it does not hold");
    };
    let located = format!(
        "policy.toml:{line}:9: rule `freeze-legacy`: `keys` names `legacy_hot`, a key this signerd does not hold"
    );
    assert!(err.contains(&located), "{err}");

    env.write_policy(DEFAULT_POLICY);
    let d = env.start();
    let mut bob = env.client(&d, "bob").await;
    // Serial 2 would let bob sign digests with `ed`, but it also names the unknown key.
    let text = write_policy(&env, 2) + freeze;
    env.write_policy(&text);
    let line = text.lines().count();
    hup(&d);
    let audit = env.wait_audit(|a| a.of_type("policy.refused").len() == 1);
    let refusal = audit.of_type("policy.refused")[0];
    assert_eq!(refusal["source"], "sighup");
    let reason = refusal["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "policy.toml:{line}:9: rule `freeze-legacy`: `keys` names `legacy_hot`"
        )),
        "{refusal}"
    );
    assert_eq!(audit.of_type("policy.load").len(), 1);
    // The Admin API refuses it the same way, forced or not, and says where.
    let settings = env.settings(&d, "admin");
    let mut admin = AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    for force in [false, true] {
        let st = refused(
            "unknown key admin reload",
            admin.reload_policy(v1::ReloadPolicyRequest { force }).await,
        );
        assert_status(
            "unknown key admin reload",
            &st,
            Code::FailedPrecondition,
            &format!("policy.toml:{line}:9: rule `freeze-legacy`: `keys` names `legacy_hot`"),
        );
    }
    let audit = env.wait_audit(|a| a.of_type("policy.refused").len() == 3);
    assert_eq!(audit.of_type("policy.refused")[2]["source"], "rpc");
    assert_eq!(audit.of_type("policy.load").len(), 1);
    let st = refused(
        "unknown key reload",
        bob.sign_digest(digest_req("k1", ED, false)).await,
    );
    assert_status(
        "unknown key reload",
        &st,
        Code::PermissionDenied,
        "no rule allows",
    );

    // The same file without the unknown key loads.
    write_policy(&env, 2);
    hup(&d);
    env.wait_audit(|a| a.of_type("policy.load").len() == 2);
    let r = bob
        .sign_digest(digest_req("k2", ED, false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.signature.is_some());
    assert!(d.stop().success());
}
