//! The operator's and auditor's tools over several replicas (signerd instances each with its
//! own audit log and origin): `signerctl bench` spreads its clients over several endpoints
//! and says what each served; `signerctl audit verify` (and `signerd-auditor verify`) takes
//! the logs of several replicas, verifies each with the key named by its origin, and refuses
//! two logs of one origin and a request id signed as two different requests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::approvals::ctl_as;
use crate::audit_support::{assert_verifies, configure_audit, copy_tree, ctl, vkey};
use crate::util::*;

/// Makes `replica` trust and present the certificates of `first`, as replicas behind one
/// name do: one CA, one server certificate, the same client certificates.
fn share_pki(first: &TestEnv, replica: &TestEnv) {
    let (from, to) = (first.dir.join("pki"), replica.dir.join("pki"));
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        let mode = mode_of(&e.path());
        write_file(
            &to.join(e.file_name()),
            &std::fs::read(e.path()).unwrap(),
            mode,
        );
    }
}

/// An endpoint where nothing listens: a port taken from the system and released.
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("https://{addr}")
}

/// How many requests `audit` records as signed whose request id starts with `prefix`.
fn signed_with_prefix(audit: &Audit, prefix: &str) -> usize {
    audit
        .of_type("sign.result")
        .iter()
        .filter(|r| {
            r["status"] == "signed"
                && r["req_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(prefix))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spreads_its_clients_over_several_endpoints() {
    let a = TestEnv::new("bench-replica-a");
    let b = TestEnv::new("bench-replica-b");
    share_pki(&a, &b);
    let (da, db) = (a.start(), b.start());
    // `signerctl [--json] bench` with a second `--endpoint` (`ctl_as` names the first daemon's)
    // and `concurrency` clients for `seconds`.
    let bench = |json: bool, second: &str, concurrency: &str, seconds: &str| {
        let mut args = vec!["--endpoint", second, "bench", "--key", HOT];
        args.extend(["--concurrency", concurrency, "--duration", seconds]);
        if json {
            args.insert(0, "--json");
        }
        ctl_as(&a, &da, "app", &args)
    };
    let out = bench(true, &db.endpoint(), "4", "2");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let per = report["endpoints"].as_array().unwrap();
    assert_eq!(per.len(), 2, "{report}");
    let mut total = 0;
    for (e, d) in per.iter().zip([&da, &db]) {
        assert_eq!(e["endpoint"], d.endpoint(), "{report}");
        // Clients 0 and 2 on the first endpoint, 1 and 3 on the second.
        assert_eq!(e["clients"], 2, "{report}");
        assert_eq!(e["errors"], 0, "{report}");
        let ok = e["ok"].as_u64().unwrap();
        assert!(ok > 0, "{report}");
        total += ok;
    }
    assert_eq!(report["ok"], total, "{report}");
    // Each daemon signed what bench counted for its endpoint, as its own log says.
    let signed_a = signed_with_prefix(&a.wait_audit(|_| true), "bench-");
    let signed_b = signed_with_prefix(&b.wait_audit(|_| true), "bench-");
    assert_eq!(signed_a as u64, per[0]["ok"].as_u64().unwrap(), "{report}");
    assert_eq!(signed_b as u64, per[1]["ok"].as_u64().unwrap(), "{report}");

    // The text report says the same per endpoint.
    let out = bench(false, &db.endpoint(), "4", "1");
    assert!(out.status.success(), "{out:?}");
    for d in [&da, &db] {
        let line = format!("  endpoint {}: ", d.endpoint());
        let l = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("no {line:?} in {}", out.stdout));
        assert!(l.ends_with(" signed, 0 errors (2 clients)"), "{l}");
    }

    // An endpoint where nothing listens is named before the run.
    let closed = closed_endpoint();
    let out = bench(false, &closed, "4", "1");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!("endpoint {closed}: ")),
        "{}",
        out.stderr
    );
    // Every endpoint needs a client.
    let out = bench(false, &db.endpoint(), "1", "1");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("--concurrency 1 is below the 2 endpoints: every endpoint needs a client"),
        "{}",
        out.stderr
    );
    // Other commands talk to one daemon.
    let out = ctl_as(
        &a,
        &da,
        "app",
        &["--endpoint", &db.endpoint(), "keys", "list"],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("--endpoint is given 2 times"),
        "{}",
        out.stderr
    );
}

/// A replica: an installation whose log has the origin `origin`.
fn replica(name: &str, origin: &str) -> TestEnv {
    let env = TestEnv::new(name);
    configure_audit(&env, &format!("origin = \"{origin}\""));
    assert_eq!(env.origin(), origin);
    env
}

/// `signerctl audit verify DIR... [--pubkey VKEY]...`, and the same with `signerd-auditor`,
/// which must agree (exit status and output).
fn verify_logs(dirs: &[&Path], vkeys: &[&str]) -> Exited {
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    for k in vkeys {
        args.extend(["--pubkey".to_owned(), (*k).to_owned()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl(&refs);
    let auditor = Path::new(SIGNERCTL).with_file_name("signerd-auditor");
    assert!(
        auditor.exists(),
        "build signerd-auditor first (cargo build --release -p signerd-auditor)"
    );
    let mut cmd = Command::new(&auditor);
    cmd.args(&refs[1..]);
    let alone = run_to_exit(cmd, Duration::from_secs(60));
    assert_eq!(alone.status.success(), out.status.success(), "{alone:?}");
    assert_eq!(alone.stdout, out.stdout);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_takes_the_logs_of_several_replicas() {
    let a = replica("verify-replica-a", "replica-a.example/audit");
    let b = replica("verify-replica-b", "replica-b.example/audit");
    for (env, own) in [(&a, "on-a"), (&b, "on-b")] {
        let d = env.start();
        let mut c = env.client(&d, "app").await;
        for i in 0..3 {
            c.sign_evm_transaction(eip1559(&format!("{own}-{i}")))
                .await
                .unwrap();
        }
        // One request retried on the other replica: signed in both logs, as one request.
        c.sign_evm_transaction(eip1559("retried-1")).await.unwrap();
        assert!(d.stop().success());
    }
    let (va, vb) = (vkey(&a), vkey(&b));
    assert_ne!(va, vb);
    let (la, lb) = (a.audit_dir(), b.audit_dir());

    // Keys in any order: each log takes the one named by its origin.
    let out = verify_logs(&[&la, &lb], &[&vb, &va]);
    assert!(out.status.success(), "{out:?}");
    for (dir, key) in [(&la, &va), (&lb, &vb)] {
        assert!(
            out.stdout
                .contains(&format!("log:          {}\n", dir.display())),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains(&format!("every checkpoint signature verified with {key}\n")),
            "{}",
            out.stdout
        );
    }
    let summary = out.stdout.lines().last().unwrap();
    assert_eq!(
        summary,
        "all logs:     2 logs with distinct origins (replica-a.example/audit, replica-b.example/audit); 7 request id(s) signed, 1 of them in more than one log, each as one request: OK",
        "{}",
        out.stdout
    );
    // The one-log form is unchanged.
    let one = assert_verifies(&la, &va);
    assert!(!one.contains("log:") && !one.contains("all logs:"), "{one}");

    // Two copies of one log: one origin.
    let copy = unique_dir("verify-replica-copy").join("audit");
    copy_tree(&la, &copy);
    let out = verify_logs(&[&la, &copy], &[&va]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}: its origin \"replica-a.example/audit\" is also the origin of {}",
            copy.display(),
            la.display()
        )),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(copy.parent().unwrap());
    // A log whose key is not given.
    let out = verify_logs(&[&la, &lb], &[&va]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}: its origin is \"replica-b.example/audit\", and no --pubkey is named so",
            lb.display()
        )),
        "{}",
        out.stderr
    );

    // One request id signed as two different requests, one on each replica (as independent
    // daemons that do not share their idempotency state would): each log alone verifies,
    // together they are refused, naming the record.
    for (env, value) in [(&a, "1000"), (&b, "2000")] {
        let d = env.start();
        let mut c = env.client(&d, "app").await;
        let mut req = eip1559("conflict-1");
        req.value = value.to_owned();
        c.sign_evm_transaction(req).await.unwrap();
        assert!(d.stop().success());
    }
    assert_verifies(&la, &va);
    assert_verifies(&lb, &vb);
    let seq = b
        .audit()
        .of_type("sign.result")
        .iter()
        .find(|r| r["req_id"] == "conflict-1")
        .map(|r| r["seq"].as_u64().unwrap())
        .unwrap();
    let out = verify_logs(&[&la, &lb], &[&va, &vb]);
    assert!(!out.status.success(), "{out:?}");
    let want = format!(
        "(seq {seq}): request `conflict-1` of client `app` is signed here with another request fingerprint than in {}",
        la.display()
    );
    assert!(
        out.stderr.contains(&want) && out.stderr.contains(&lb.display().to_string()),
        "{}",
        out.stderr
    );
    // The first log's report was printed; the failure ends the output.
    assert!(
        out.stdout
            .contains(&format!("log:          {}\n", la.display())),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("all logs:"), "{}", out.stdout);
}
