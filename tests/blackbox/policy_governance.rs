//! Signed policies: a policy loads (at start, on SIGHUP, on `Admin.ReloadPolicy`) only with
//! enough signatures of the policy administrators in force over its exact bytes, bound to the
//! deployment and serial; a freeze needs only the tighten threshold; rotating the
//! administrators needs the old and the new quorum; the governance in force survives a
//! restart; `signerctl policy sign` makes signatures the daemon accepts.

use std::process::Command;

use signerd_proto::v1;
use signerd_proto::v1::admin_client::AdminClient;
use tonic::Code;

use crate::util::*;

fn hup(d: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The default policy with `serial`, and `extra` rules.
fn policy(serial: u64, extra: &str) -> String {
    DEFAULT_POLICY.replace("serial = 1", &format!("serial = {serial}")) + extra
}

/// Lets `bob` sign raw digests with `ed`: a loosening change.
const LOOSEN: &str = "\n[[rule]]\nid = \"bob-ed-digest\"\neffect = \"allow\"\nclients = [\"bob\"]\nkeys = [\"ed\"]\nkinds = [\"raw_digest\"]\n";
/// Denies every request for `hot`: a freeze, which only tightens.
const FREEZE: &str = "\n[[rule]]\nid = \"freeze-hot\"\neffect = \"deny\"\nkeys = [\"hot\"]\n";

/// Waits until the log holds `n` records of type `ty` and returns the last.
fn nth(env: &TestEnv, ty: &str, n: usize) -> serde_json::Value {
    let audit = env.wait_audit(|a| a.of_type(ty).len() >= n);
    let all = audit.of_type(ty);
    assert_eq!(all.len(), n, "{all:?}");
    all[n - 1].clone()
}

fn reason(record: &serde_json::Value) -> &str {
    record["reason"].as_str().unwrap()
}

fn names(record: &serde_json::Value) -> Vec<&str> {
    record["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// `text` (governed by `env`) with the given signatures, and nothing else, beside it.
fn write_with(env: &TestEnv, text: &str, sigs: &[signerd_policy::PolicySignature]) {
    env.write_policy_signed(text, &[]);
    let body: String = sigs.iter().map(|s| s.to_toml() + "\n").collect();
    write_file(&env.signatures_path(), body.as_bytes(), 0o644);
}

fn parsed(env: &TestEnv, text: &str) -> signerd_policy::Policy {
    signerd_policy::Policy::parse("policy.toml", &env.governed(text)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_policies_are_refused_at_start_and_at_reload() {
    let env = TestEnv::new("gov-unsigned");
    // No signature file at all: no start, and the refusal is on record.
    std::fs::remove_file(env.signatures_path()).unwrap();
    let Err(err) = Daemon::spawn(env.run_command()) else {
        panic!("signerd started on an unsigned policy");
    };
    assert!(err.contains("policy.toml: not loaded"), "{err}");
    assert!(
        err.contains("policy.toml.sig, which does not exist"),
        "{err}"
    );
    assert!(err.contains("found 0 of the 1 needed"), "{err}");
    let refused = nth(&env, "policy.refused", 1);
    assert_eq!(refused["source"], "startup");
    assert!(reason(&refused).contains("found 0 of the 1"), "{refused}");
    assert!(names(&refused).is_empty());
    assert!(
        Audit::read(&env.audit_dir())
            .of_type("policy.load")
            .is_empty()
    );

    // `signerd check-config` counts the signatures as the start does.
    let check = || {
        let mut cmd = Command::new(SIGNERD);
        cmd.args(["check-config", "--config"])
            .arg(env.config_path());
        run_to_exit(cmd, AUDIT_WAIT)
    };
    let out = check();
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("found 0 of the 1 needed"), "{out:?}");

    // Signed, it starts; the load names its signer and the threshold.
    env.write_policy(DEFAULT_POLICY);
    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("policy signatures: loads (full threshold), signed by ops"),
        "{out:?}"
    );
    let d = env.start();
    let load = nth(&env, "policy.load", 1);
    assert_eq!(names(&load), [ADMIN]);
    assert_eq!(load["threshold"], "full");

    // An unsigned change is refused on SIGHUP; the running policy stays.
    env.write_policy_signed(&policy(2, LOOSEN), &[]);
    hup(&d);
    let refused = nth(&env, "policy.refused", 2);
    assert_eq!(refused["source"], "sighup");
    assert!(
        reason(&refused).contains("holds no signatures"),
        "{refused}"
    );
    let mut bob = env.client(&d, "bob").await;
    let st = refused_status(
        bob.sign_digest(v1::SignDigestRequest {
            dry_run: false,
            request_id: "b1".into(),
            key_id: ED.into(),
            digest: vec![0x5a; 32],
        })
        .await,
    );
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    // And on Admin.ReloadPolicy, whose caller is told why.
    let settings = env.settings(&d, "admin");
    let mut admin = AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    let st = refused_status(
        admin
            .reload_policy(v1::ReloadPolicyRequest { force: false })
            .await,
    );
    assert_status(
        "reload",
        &st,
        Code::FailedPrecondition,
        "not signed by enough",
    );
    let refused = nth(&env, "policy.refused", 3);
    assert_eq!(refused["source"], "rpc");
    assert_eq!(
        Audit::read(&env.audit_dir()).of_type("policy.load").len(),
        1
    );
    drop(admin);
    drop(bob);
    assert!(d.stop().success());
}

fn refused_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_loads_and_replays_strangers_and_duplicates_do_not_count() {
    let env = TestEnv::with(
        "gov-quorum",
        Opts {
            governance: governance_body(2, 1, &["alice", "bob", "carol"]),
            signers: vec!["alice".into(), "bob".into()],
            ..Opts::default()
        },
    );
    let d = env.start();
    let first = parsed(&env, DEFAULT_POLICY);
    let text = policy(2, LOOSEN);
    let new = parsed(&env, &text);
    let alice = env.signature("alice", ORIGIN, &new);
    // (second signature, what the refusal must say about it)
    let mut cases = vec![
        (None, "found 1 of the 2 needed".to_owned()),
        (Some(alice.clone()), "signed twice; counted once".to_owned()),
        (
            Some(env.signature("mallory", ORIGIN, &new)),
            "`mallory` (ed25519:".to_owned(),
        ),
        (
            Some(env.signature("bob", "signerd/other-deployment", &new)),
            "does not verify for origin `signerd/audit`".to_owned(),
        ),
        (
            Some(env.signature("bob", ORIGIN, &first)),
            format!("signed sha256 {}", first.hash_hex()),
        ),
    ];
    // A signature that claims this file but another serial.
    let mut other_serial = env.signature("bob", ORIGIN, &new);
    other_serial.serial = 7;
    cases.push((
        Some(other_serial),
        "signed serial 7, not the file's serial 2".to_owned(),
    ));
    for (i, (second, needle)) in cases.into_iter().enumerate() {
        let mut sigs = vec![alice.clone()];
        sigs.extend(second);
        write_with(&env, &text, &sigs);
        hup(&d);
        let refused = nth(&env, "policy.refused", i + 1);
        assert!(reason(&refused).contains(&needle), "{needle}: {refused}");
        assert!(
            reason(&refused).contains("the change loosens the policy"),
            "{refused}"
        );
        assert_eq!(names(&refused), ["alice"], "{refused}");
    }
    assert_eq!(
        Audit::read(&env.audit_dir()).of_type("policy.load").len(),
        1
    );

    // Two administrators: it loads, through Admin.ReloadPolicy this time.
    write_with(
        &env,
        &text,
        &[alice.clone(), env.signature("carol", ORIGIN, &new)],
    );
    let settings = env.settings(&d, "admin");
    let mut admin = AdminClient::new(signerd::client::channel(&settings).await.unwrap());
    let r = admin
        .reload_policy(v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.serial, 2);
    let load = nth(&env, "policy.load", 2);
    assert_eq!(names(&load), ["alice", "carol"]);
    assert_eq!(load["threshold"], "full");

    // A freeze needs one signature.
    let freeze = policy(3, &format!("{LOOSEN}{FREEZE}"));
    env.write_policy_signed(&freeze, &["bob"]);
    hup(&d);
    let load = nth(&env, "policy.load", 3);
    assert_eq!(load["new_serial"], 3);
    assert_eq!(names(&load), ["bob"]);
    assert_eq!(load["threshold"], "tighten");
    let mut app = env.client(&d, "app").await;
    let st = refused_status(app.sign_evm_transaction(eip1559("frozen")).await);
    assert_status("frozen", &st, Code::PermissionDenied, "freeze-hot");

    // The same single signer on a change that loosens: refused.
    env.write_policy_signed(&policy(4, LOOSEN), &["bob"]);
    hup(&d);
    let refused = nth(&env, "policy.refused", 7);
    assert!(
        reason(&refused).contains("rule `freeze-hot`: removed"),
        "{refused}"
    );
    assert_eq!(names(&refused), ["bob"]);
    assert_eq!(
        Audit::read(&env.audit_dir()).of_type("policy.load").len(),
        3
    );
    drop((admin, app));
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_administrators_needs_both_quorums_and_survives_a_restart() {
    let mut env = TestEnv::new("gov-rotate");
    let d = env.start();
    let rotated = format!(
        "{}\n[governance]\n{}",
        policy(2, ""),
        governance_body(2, 1, &["alice", "bob"])
    );
    // The quorum in force alone, then the new one alone: both refused.
    env.write_policy_signed(&rotated, &[ADMIN]);
    hup(&d);
    let refused = nth(&env, "policy.refused", 1);
    assert!(
        reason(&refused).contains("also needs 2 signatures of its own administrators"),
        "{refused}"
    );
    env.write_policy_signed(&rotated, &["alice", "bob"]);
    hup(&d);
    let refused = nth(&env, "policy.refused", 2);
    assert!(
        reason(&refused).contains("needs 1 signatures of the administrators in force"),
        "{refused}"
    );
    assert_eq!(names(&refused), ["alice", "bob"]);
    // Both: loaded.
    env.write_policy_signed(&rotated, &[ADMIN, "alice", "bob"]);
    hup(&d);
    let load = nth(&env, "policy.load", 2);
    assert_eq!(names(&load), ["alice", "bob", ADMIN]);
    assert!(d.stop().success());

    // After a restart the rotated administrators are in force, not the configuration's trust
    // anchor: an anchor edited to trust `mallory` lets nothing in.
    env.opts.governance = governance_body(1, 1, &["mallory"]);
    let next = format!(
        "{}\n[governance]\n{}",
        policy(3, LOOSEN),
        governance_body(1, 1, &["mallory"])
    );
    let keep = std::fs::read(env.config_path()).unwrap();
    env.write_config();
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(config.contains("mallory"));
    assert_ne!(config.as_bytes(), keep.as_slice());
    env.write_policy_signed(&next, &["mallory"]);
    let Err(err) = Daemon::spawn(env.run_command()) else {
        panic!("signerd started on a policy signed by a key only the configuration trusts");
    };
    assert!(
        err.contains("it changes the governance, which needs 2 signatures"),
        "{err}"
    );
    let refused = nth(&env, "policy.refused", 3);
    assert_eq!(refused["source"], "startup");
    // The administrators in force sign it (and mallory, as its own quorum): it starts.
    env.write_policy_signed(&next, &["alice", "bob", "mallory"]);
    let d = env.start();
    let load = nth(&env, "policy.load", 3);
    assert_eq!(load["new_serial"], 3);
    assert_eq!(names(&load), ["alice", "bob", "mallory"]);
    assert!(d.stop().success());
    // A restart on the file in force still checks its signatures.
    env.write_policy_signed(&next, &[]);
    assert!(Daemon::spawn(env.run_command()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signerctl_policy_sign_makes_signatures_the_daemon_accepts() {
    let env = TestEnv::with(
        "gov-signerctl",
        Opts {
            governance: governance_body(2, 1, &["alice", "bob"]),
            signers: vec!["alice".into(), "bob".into()],
            ..Opts::default()
        },
    );
    let d = env.start();
    for name in ["alice", "bob"] {
        write_file(
            &env.dir.join(format!("{name}.key")),
            format!("{}\n", hex::encode(admin_key(name).to_bytes())).as_bytes(),
            0o600,
        );
    }
    env.write_policy_signed(&policy(2, LOOSEN), &[]);
    let sign = |name: &str| {
        let mut cmd = Command::new(SIGNERCTL);
        cmd.args(["policy", "sign", "--yes", "--config"])
            .arg(env.config_path())
            .arg("--key")
            .arg(env.dir.join(format!("{name}.key")))
            .args(["--name", name])
            .arg(env.policy_path());
        run_to_exit(cmd, AUDIT_WAIT)
    };
    let verify = || {
        let mut cmd = Command::new(SIGNERCTL);
        cmd.args(["policy", "verify-signatures", "--config"])
            .arg(env.config_path());
        run_to_exit(cmd, AUDIT_WAIT)
    };
    // A name that is not the key's: refused before anything is written.
    let out = sign_as(&env, "bob", "alice");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("the signature would not count"),
        "{}",
        out.stderr
    );

    let out = sign("alice");
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // The diff against the policy in force (read from the audit log) comes first.
    assert!(
        out.stdout.contains("LOOSENS rule `bob-ed-digest`"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("found 1 of the 2 needed"),
        "{}",
        out.stdout
    );
    assert!(!verify().status.success());
    let out = sign("bob");
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("loads (full threshold), signed by alice, bob"),
        "{}",
        out.stdout
    );
    let out = verify();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // Signing again replaces the signer's entry; the file keeps one per administrator.
    assert!(sign("bob").stdout.contains("now holds 2 signature(s)"));
    hup(&d);
    let load = nth(&env, "policy.load", 2);
    assert_eq!(load["new_serial"], 2);
    assert_eq!(names(&load), ["alice", "bob"]);
    assert!(d.stop().success());
}

/// `signerctl policy sign` with `name`'s key file but claiming to be `claimed`.
fn sign_as(env: &TestEnv, key_of: &str, claimed: &str) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(["policy", "sign", "--yes", "--config"])
        .arg(env.config_path())
        .arg("--key")
        .arg(env.dir.join(format!("{key_of}.key")))
        .args(["--name", claimed])
        .arg(env.policy_path());
    run_to_exit(cmd, AUDIT_WAIT)
}
