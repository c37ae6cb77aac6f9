//! Address-book cooling-off on a running daemon: an entry added by a reload is refused until
//! its cooling-off period has passed (the denial says when it becomes usable), then signed;
//! its first load comes from the audit log, so a restart in between does not restart it.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::util::*;

const OLD: &str = "0x3535353535353535353535353535353535353535";
const NEW: &str = "0x00000000000000000000000000000000000a11ce";
/// Long enough to see a denial before and after a restart, short enough to wait out.
const COOLING_SECS: i64 = 6;

fn policy(serial: u64, addresses: &str) -> String {
    format!(
        r#"version = 1
serial = {serial}

[address_books.payees]
cooling_off = "{COOLING_SECS}s"
addresses = [{addresses}]

[[rule]]
id = "payouts"
effect = "allow"
roles = ["requester"]
keys = ["hot"]
kinds = ["native_transfer"]
to = ["book:payees"]
"#
    )
}

fn pay(id: &str, to: &str) -> signerd_proto::v1::SignEvmTransactionRequest {
    let mut r = eip1559(id);
    r.to = to.to_owned();
    r
}

/// `first_loaded` of `address` in the `book_entries` of a `policy.load` record.
fn first_loaded(load: &serde_json::Value, address: &str) -> String {
    load["book_entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no book_entries: {load}"))
        .iter()
        .find(|e| e["address"].as_str().unwrap().eq_ignore_ascii_case(address))
        .unwrap_or_else(|| panic!("{address} not in {load}"))["first_loaded"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_new_address_waits_out_its_cooling_off_across_a_restart() {
    let env = TestEnv::with(
        "cooling-off",
        Opts {
            policy: policy(1, &format!("\"{OLD}\"")),
            ..Opts::default()
        },
    );
    let d = env.start();
    // The reload adds NEW, labelled.
    env.write_policy(&policy(
        2,
        &format!("\"{OLD}\", {{ address = \"{NEW}\", label = \"Kraken deposit\" }}"),
    ));
    let channel = signerd::client::channel(&env.settings(&d, "admin"))
        .await
        .unwrap();
    let mut admin = signerd_proto::v1::admin_client::AdminClient::new(channel);
    admin
        .reload_policy(signerd_proto::v1::ReloadPolicyRequest { force: false })
        .await
        .unwrap();
    let audit = env.wait_audit(|a| a.of_type("policy.load").len() == 2);
    let reload = audit.of_type("policy.load")[1].clone();
    let first = first_loaded(&reload, NEW);
    let first_unix = signerd_auditor::rfc3339::parse_unix(&first).unwrap();
    let usable = signerd::approvals::rfc3339(first_unix + COOLING_SECS);
    // OLD was loaded at start-up and keeps that first load.
    let started = audit.of_type("policy.load")[0].clone();
    assert_eq!(first_loaded(&reload, OLD), first_loaded(&started, OLD));

    let mut app = env.client(&d, "app").await;
    let st = refused(
        "new entry",
        app.sign_evm_transaction(pay("new-1", NEW)).await,
    );
    assert_status(
        "new entry",
        &st,
        Code::PermissionDenied,
        &format!("becomes usable at {usable}"),
    );
    assert_status(
        "new entry",
        &st,
        Code::PermissionDenied,
        "address book `payees`",
    );

    // A restart keeps the entry's first load: the log, not the restart, says when it was.
    assert!(d.stop().success());
    let d = env.start();
    let audit = env.wait_audit(|a| a.of_type("policy.load").len() == 3);
    let restarted = audit.of_type("policy.load")[2].clone();
    assert_eq!(restarted["source"], "startup");
    assert_eq!(first_loaded(&restarted, NEW), first, "{restarted}");
    let mut app = env.client(&d, "app").await;
    if unix_now() < first_unix + COOLING_SECS - 1 {
        let st = refused(
            "after restart",
            app.sign_evm_transaction(pay("new-2", NEW)).await,
        );
        assert_status(
            "after restart",
            &st,
            Code::PermissionDenied,
            &format!("becomes usable at {usable}"),
        );
    }

    // Once the period has passed, the same transfer is signed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while unix_now() < first_unix + COOLING_SECS {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = app
        .sign_evm_transaction(pay("new-3", NEW))
        .await
        .unwrap_or_else(|st| panic!("after the cooling-off: {st:?}"))
        .into_inner();
    assert!(!r.raw_transaction.is_empty());
    assert!(d.stop().success());

    // The log plus the archive re-evaluates every decision as the daemon made it: the refusals
    // during the period and the signature after it (the first loads come from the log).
    let mut cmd = std::process::Command::new(SIGNERCTL);
    cmd.args(["audit", "recheck"]).arg(env.audit_dir());
    let recheck = run_to_exit(cmd, Duration::from_secs(60));
    assert!(recheck.status.success(), "{recheck:?}");
    assert!(
        recheck.stdout.trim_end().ends_with("OK"),
        "{}",
        recheck.stdout
    );

    // `policy explain` offline: the first loads from the log, or as if loaded at a time.
    let cases = env.dir.join("cases.toml");
    let before = signerd::approvals::rfc3339(first_unix + 1);
    write_file(
        &cases,
        format!(
            "[[case]]\nname = \"pay new\"\nclient = \"app\"\nroles = [\"requester\"]\nnow = \"{before}\"\naction = {{ key = \"hot\", kind = \"native_transfer\", chain_id = 1, to = \"{NEW}\", value = \"1 wei\" }}\nexpect = \"deny\"\n"
        )
        .as_bytes(),
        0o644,
    );
    let explain = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(SIGNERCTL);
        cmd.args(["policy", "explain"])
            .arg(env.dir.join("policy.toml"))
            .arg(&cases)
            .args(extra);
        let out = run_to_exit(cmd, Duration::from_secs(60));
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let audit_dir = env.audit_dir();
    let from_log = explain(&["--audit", audit_dir.to_str().unwrap()]);
    assert!(
        from_log.starts_with(&format!(
            "address-book first loads: from the last policy.load of {} (2 listed); 0 not listed there",
            audit_dir.display()
        )),
        "{from_log}"
    );
    assert!(
        from_log.contains(&format!("becomes usable at {usable}")),
        "{from_log}"
    );
    let assumed = explain(&["--loaded-at", "2026-01-01T10:00:00Z"]);
    assert!(
        assumed.starts_with(
            "address-book first loads: every entry as if first loaded at 2026-01-01T10:00:00Z"
        ),
        "{assumed}"
    );
    let unknown = explain(&[]);
    assert!(
        unknown.contains("first load is not known, so it is not usable"),
        "{unknown}"
    );
}
