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

#[test]
fn test_prints_its_summary_once_and_check_and_explain_show_selectors() {
    let policy = examples().join("defi-bot.toml");
    let cases = examples().join("defi-bot.cases.toml");
    let (p, c) = (policy.to_str().unwrap(), cases.to_str().unwrap());
    let test = signerctl(&["policy", "test", p, c]);
    assert!(test.status.success(), "{}{}", test.stdout, test.stderr);
    assert_eq!(
        test.stdout.matches(" passed, ").count(),
        1,
        "{}",
        test.stdout
    );
    assert!(
        test.stdout.trim_end().ends_with(" passed, 0 failed"),
        "{}",
        test.stdout
    );
    // Every signature's selector, where it is written (Uniswap v3's exactInputSingle).
    let line = "defi-bot.toml:32:3: rule `swaps`: `exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))` is selector 0x414bf389";
    for cmd in ["check", "explain"] {
        let mut args = vec!["policy", cmd, p];
        if cmd == "explain" {
            args.push(c);
        }
        let out = signerctl(&args);
        assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(line), "{cmd}: {}", out.stdout);
    }
}

#[test]
fn diff_refuses_a_serial_that_does_not_increase_and_names_addresses() {
    let dir = unique_dir("policy-diff");
    let old = examples().join("hot-wallet.toml");
    let src = std::fs::read_to_string(&old).unwrap();
    let added = "0x00000000000000000000000000000000000000AA";
    let changed = src.replacen(
        "addresses = [\"0x000000000000000000000000000000000000dead\"]",
        &format!("addresses = [\"0x000000000000000000000000000000000000dead\", \"{added}\"]"),
        1,
    );
    assert_ne!(changed, src);
    let same_serial = dir.join("same-serial.toml");
    write_file(&same_serial, changed.as_bytes(), 0o644);
    let out = signerctl(&[
        "policy",
        "diff",
        old.to_str().unwrap(),
        same_serial.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("serial 1 is not higher than the serial 1 of ")
            && out.stderr.contains("the daemon refuses to load it"),
        "{}",
        out.stderr
    );
    // The same change with a higher serial passes (more blocked addresses loosen nothing),
    // and the address added is named with its book.
    let next = dir.join("next.toml");
    write_file(
        &next,
        changed.replacen("serial = 1", "serial = 2", 1).as_bytes(),
        0o644,
    );
    let out = signerctl(&[
        "policy",
        "diff",
        old.to_str().unwrap(),
        next.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "address book `blocked`: added {added}; removed none"
        )),
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_with_a_config_refuses_keys_the_keystore_does_not_hold() {
    let env = TestEnv::new("policy-check-config");
    let config = env.config_path();
    let ok = signerctl(&["policy", "check", "--config", config.to_str().unwrap()]);
    assert!(ok.status.success(), "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("policy.toml: OK"), "{}", ok.stdout);

    let policy = format!(
        "{DEFAULT_POLICY}\n[[rule]]\nid = \"freeze-legacy\"\neffect = \"deny\"\nkeys = [\"legacy_hot\", \"hot\"]\n"
    );
    let line = policy.lines().count();
    env.write_policy(&policy);
    // Without the configuration the file is fine; with it, the unknown key is located.
    let plain = signerctl(&[
        "policy",
        "check",
        env.dir.join("policy.toml").to_str().unwrap(),
    ]);
    assert!(plain.status.success(), "{}{}", plain.stdout, plain.stderr);
    let out = signerctl(&["policy", "check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "policy.toml:{line}:9: rule `freeze-legacy`: `keys` names `legacy_hot`, a key this signerd does not hold"
        )),
        "{}",
        out.stderr
    );
    // `signerd check-config` refuses it too, as the daemon would at start.
    let mut cmd = Command::new(SIGNERD);
    cmd.args(["check-config", "--config", config.to_str().unwrap()]);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "policy.toml:{line}:9: rule `freeze-legacy`: `keys` names `legacy_hot`"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn check_with_a_config_says_when_the_keys_cannot_be_listed_offline() {
    let env = TestEnv::new("policy-check-vault");
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let soft =
        "backend = \"soft\"\n\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n";
    assert!(text.contains(soft), "the test config changed shape");
    let vault = "backend = \"vault\"\n\n[keys.vault]\naddress = \"http://127.0.0.1:9\"\ntoken_file = \"vault.token\"\n";
    let text = text.replace(soft, vault).replace(
        "[audit]\ndir = \"audit\"\n",
        "[audit]\ndir = \"audit\"\nsigning_key_passphrase_file = \"keystore.pass\"\n",
    );
    write_file(&path, text.as_bytes(), 0o600);
    let out = signerctl(&["policy", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("note: keys not checked: the vault backend's keys are in Vault transit, which cannot be listed offline"),
        "{}",
        out.stdout
    );
    let json = signerctl(&[
        "--json",
        "policy",
        "check",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(json.status.success(), "{}{}", json.stdout, json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        v["keys_not_checked"]
            .as_str()
            .is_some_and(|n| n.contains("vault")),
        "{v}"
    );
}
