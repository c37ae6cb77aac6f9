//! `signerctl policy check|test|explain|diff` as security teams run them: the real binary on
//! the shipped example policies and on broken ones.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/examples")
}

fn signerctl(args: &[&str]) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(args);
    run_to_exit(cmd, Duration::from_secs(60))
}

#[test]
fn example_policies_pass_their_own_suites() {
    for name in ["hot-wallet", "treasury", "defi-bot", "freeze"] {
        let policy = examples().join(format!("{name}.toml"));
        let cases = examples().join(format!("{name}.cases.toml"));
        let (p, c) = (policy.to_str().unwrap(), cases.to_str().unwrap());
        let check = signerctl(&["policy", "check", p]);
        assert!(
            check.status.success(),
            "{name}: {}{}",
            check.stdout,
            check.stderr
        );
        let test = signerctl(&["policy", "test", p, c]);
        assert!(
            test.status.success(),
            "{name}: {}{}",
            test.stdout,
            test.stderr
        );
        assert!(test.stdout.contains(" 0 failed"), "{name}: {}", test.stdout);
        assert!(!test.stdout.contains("FAIL "), "{name}: {}", test.stdout);
    }
}

#[test]
fn a_failing_case_fails_the_command() {
    let dir = unique_dir("policy-tools");
    let policy = examples().join("hot-wallet.toml");
    let src = std::fs::read_to_string(examples().join("hot-wallet.cases.toml")).unwrap();
    // Flip the first expectation.
    let flipped = src.replacen("expect = \"allow\"", "expect = \"deny\"", 1);
    assert_ne!(flipped, src);
    let cases = dir.join("flipped.cases.toml");
    write_file(&cases, flipped.as_bytes(), 0o644);
    let out = signerctl(&[
        "policy",
        "test",
        policy.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stdout.contains("FAIL "), "{}", out.stdout);
    assert!(out.stderr.contains("1 of "), "{}", out.stderr);

    let explain = signerctl(&[
        "policy",
        "explain",
        policy.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert!(explain.status.success(), "{}", explain.stderr);
    assert!(
        explain.stdout.contains("decision: allow"),
        "{}",
        explain.stdout
    );
    assert!(
        explain.stdout.contains("does not match"),
        "{}",
        explain.stdout
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_locates_errors_and_diff_flags_loosening() {
    let dir = unique_dir("policy-errors");
    let bad = dir.join("bad.toml");
    write_file(
        &bad,
        b"version = 1\nserial = 1\n[[rule]]\nid = \"a\"\neffect = \"allow\"\nvalue_max = \"1.5 bananas\"\n",
        0o644,
    );
    let out = signerctl(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("bad.toml:6:"), "{}", out.stderr);

    let hot = examples().join("hot-wallet.toml");
    let freeze = examples().join("freeze.toml");
    let (hot, freeze) = (hot.to_str().unwrap(), freeze.to_str().unwrap());
    let loosening = signerctl(&["policy", "diff", freeze, hot]);
    assert!(!loosening.status.success(), "{}", loosening.stdout);
    assert!(loosening.stderr.contains("loosens"), "{}", loosening.stderr);
    let same = signerctl(&["policy", "diff", hot, hot]);
    assert!(same.status.success(), "{}{}", same.stdout, same.stderr);
    assert!(
        same.stdout.contains("nothing is loosened"),
        "{}",
        same.stdout
    );
    let _ = std::fs::remove_dir_all(dir);
}
