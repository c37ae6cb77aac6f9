//! `signerd dev` as a new user meets it: one command lays out a working installation, prints
//! how to use it, serves the real `signerctl`, reuses its directory on restart (the audit log
//! continues) and stops cleanly on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

fn dev_command(dir: &Path) -> Command {
    let mut cmd = Command::new(SIGNERD);
    cmd.arg("dev")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"]);
    cmd
}

fn signerctl(dir: &Path, d: &Daemon, args: &[&str]) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.arg("--dev")
        .arg(dir)
        .args(["--as", "app", "--endpoint"])
        .arg(d.endpoint())
        .args(args);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "signerctl {args:?} failed: {out:?}\nsignerd stderr:\n{}",
        d.stderr()
    );
    out
}

const SIGN_TX: &[&str] = &[
    "sign",
    "evm-tx",
    "--key",
    "dev-secp256k1",
    "--chain-id",
    "1",
    "--nonce",
    "0",
    "--max-fee-per-gas",
    "30000000000",
    "--max-priority-fee-per-gas",
    "1000000000",
    "--to",
    "0x3535353535353535353535353535353535353535",
    "--value",
    "1000",
    "--json",
];

fn hex_field<'a>(v: &'a Value, name: &str) -> &'a str {
    let s = v[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` missing in {v}"));
    assert!(s.starts_with("0x") && s.len() > 2, "`{name}` = {s:?}");
    s
}

/// The arguments of the `signerctl` example that `signerd dev` prints (after the `--` of
/// `cargo run`), with its shell line continuations joined.
fn printed_example(stdout: &[String]) -> Vec<String> {
    printed_command(stdout, "sign evm-tx")
}

/// The arguments of the printed `signerctl` command whose first line contains `marker`.
fn printed_command(stdout: &[String], marker: &str) -> Vec<String> {
    let start = stdout
        .iter()
        .position(|l| l.contains("signerctl") && l.contains(marker))
        .unwrap_or_else(|| panic!("no signerctl example in {stdout:?}"));
    let mut words = Vec::new();
    for line in &stdout[start..] {
        let body = line.trim_end();
        words.extend(
            body.trim_end_matches('\\')
                .split_whitespace()
                .map(str::to_owned),
        );
        if !body.ends_with('\\') {
            break;
        }
    }
    let args_from = match words.iter().position(|w| w == "--") {
        Some(i) => i + 1,
        None => words
            .iter()
            .position(|w| w.ends_with("signerctl"))
            .map_or(0, |i| i + 1),
    };
    words.split_off(args_from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_signerctl_and_stops_cleanly() {
    let base = unique_dir("dev");
    let dir = base.join("dev");
    let d = Daemon::spawn(dev_command(&dir))
        .unwrap_or_else(|e| panic!("signerd dev did not start: {e}"));

    // The documented layout, secrets readable by the owner only.
    for f in [
        "pki/ca.pem",
        "pki/server.pem",
        "pki/server-key.pem",
        "pki/app.pem",
        "pki/app-key.pem",
        "signerd.toml",
        "policy.toml",
        "policy.toml.sig",
        "policy-admin.key",
        "keystore.pass",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for d in ["keys", "audit", "state"] {
        assert!(dir.join(d).is_dir(), "{d}/ missing");
    }
    assert_eq!(
        mode_of(&dir.join("keystore.pass")),
        0o600,
        "keystore.pass mode"
    );
    assert_eq!(
        mode_of(&dir.join("policy-admin.key")),
        0o600,
        "policy administrator key mode"
    );
    assert_eq!(
        mode_of(&dir.join("pki/server-key.pem")),
        0o600,
        "server key mode"
    );
    assert_eq!(
        mode_of(&dir.join("pki/app-key.pem")),
        0o600,
        "client key mode"
    );
    let key_files: Vec<_> = std::fs::read_dir(dir.join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(key_files.len() >= 2, "keys/: {key_files:?}");
    for k in &key_files {
        if k.is_file() {
            assert_eq!(mode_of(k), 0o600, "{} mode", k.display());
        }
    }

    // It says how to use it.
    assert!(
        d.wait_stdout(|l| l.contains("Stop with Ctrl-C"), Duration::from_secs(10)),
        "{:?}",
        d.stdout()
    );
    let shown = d.stdout().join("\n");
    assert!(
        shown.contains("signerctl") && shown.contains("sign evm-tx"),
        "no signerctl example:\n{shown}"
    );
    // The example works as printed: it must reach this daemon, here on an ephemeral port.
    let example = printed_example(&d.stdout());
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(&example).arg("--json");
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "the printed example fails: signerctl {example:?}: {out:?}\nprinted:\n{shown}"
    );

    // The real CLI signs.
    let out = signerctl(&dir, &d, SIGN_TX);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    let raw = hex_field(&v, "raw_transaction");
    let hash = hex_field(&v, "transaction_hash");
    assert_eq!(
        hash,
        format!(
            "0x{}",
            hex::encode(alloy_primitives::keccak256(hex::decode(&raw[2..]).unwrap()))
        ),
        "transaction_hash is not keccak256(raw_transaction)"
    );
    let receipt = &v["audit_receipt"];
    let seq = receipt["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no audit_receipt.seq in {v}"));
    let leaf = hex_field(receipt, "leaf_hash");
    let audit = Audit::read(&dir.join("audit"));
    let line = audit
        .by_seq(seq)
        .unwrap_or_else(|| panic!("seq {seq} not in the dev audit log"));
    assert_eq!(line.v["type"], "sign.result");
    assert_eq!(leaf, format!("0x{}", hex::encode(leaf_hash(&line.raw))));

    let out = signerctl(&dir, &d, &["keys", "list"]);
    assert!(
        out.stdout.contains("dev-secp256k1") && out.stdout.contains("dev-ed25519"),
        "keys list:\n{}",
        out.stdout
    );

    // The printed way to change the policy works: edit, sign as printed, SIGHUP.
    let policy = dir.join("policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("serial = 1\n", "serial = 2\n")).unwrap();
    let sign = printed_command(&d.stdout(), "policy sign");
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(&sign).arg("--yes");
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "the printed policy sign fails: signerctl {sign:?}: {out:?}\nprinted:\n{shown}"
    );
    assert!(shown.contains(&format!("kill -HUP {}", d.pid())), "{shown}");
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let audit = wait_audit_in(&dir.join("audit"), |a| a.of_type("policy.load").len() == 2);
    let load = audit.of_type("policy.load")[1];
    assert_eq!(load["new_serial"], 2, "{load}");
    assert_eq!(load["signers"], serde_json::json!(["dev-admin"]), "{load}");

    // SIGTERM: clean exit; the log ends with audit.stop and the checkpoint that attests it.
    let status = d.stop();
    assert!(
        status.success(),
        "signerd dev exited with {status} on SIGTERM"
    );
    let audit = Audit::read(&dir.join("audit"));
    let n = audit.lines.len();
    assert!(n >= 2, "audit log too short");
    let (stop, last) = (&audit.lines[n - 2].v, &audit.lines[n - 1].v);
    assert_eq!(stop["type"], "audit.stop", "second to last record: {stop}");
    assert_eq!(last["type"], "audit.checkpoint", "last record: {last}");
    assert_eq!(last["size"], stop["seq"].as_u64().unwrap() + 1, "{last}");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_reuses_its_directory() {
    let base = unique_dir("dev-restart");
    let dir = base.join("dev");
    let d = Daemon::spawn(dev_command(&dir))
        .unwrap_or_else(|e| panic!("signerd dev did not start: {e}"));
    let ca = std::fs::read(dir.join("pki/ca.pem")).unwrap();
    let pass = std::fs::read(dir.join("keystore.pass")).unwrap();
    signerctl(&dir, &d, SIGN_TX);
    assert!(d.stop().success());
    let first = Audit::read(&dir.join("audit"));
    let first_max = first.max_seq().expect("records after the first run");

    let d = Daemon::spawn(dev_command(&dir))
        .unwrap_or_else(|e| panic!("signerd dev did not restart: {e}"));
    assert_eq!(
        std::fs::read(dir.join("pki/ca.pem")).unwrap(),
        ca,
        "the CA was regenerated"
    );
    assert_eq!(
        std::fs::read(dir.join("keystore.pass")).unwrap(),
        pass,
        "the passphrase was regenerated"
    );
    let out = signerctl(&dir, &d, SIGN_TX);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let seq = v["audit_receipt"]["seq"].as_u64().unwrap();
    assert!(
        seq > first_max,
        "audit seq restarted: {seq} after {first_max}"
    );
    assert!(d.stop().success());

    let audit = Audit::read(&dir.join("audit"));
    audit.assert_seq_contiguous();
    // The old records are still there, byte for byte, followed by the new run.
    for (old, now) in first.lines.iter().zip(&audit.lines) {
        assert_eq!(old.raw, now.raw, "an old audit record changed");
    }
    assert_eq!(audit.of_type("audit.start").len(), 2);
    assert_eq!(audit.of_type("audit.stop").len(), 2);
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_with_softhsm_signs_with_token_keys() {
    let base = unique_dir("dev-p11");
    // The README's command: the default directory, relative to where it runs.
    let dir = base.join(".signerd-dev-pkcs11");
    let mut cmd = Command::new(SIGNERD);
    cmd.current_dir(&base)
        .args(["dev", "--backend", "pkcs11", "--listen", "127.0.0.1:0"]);
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| panic!("signerd dev --backend pkcs11: {e}"));
    assert!(dir.join("hsm/softhsm2.conf").is_file());
    assert_eq!(mode_of(&dir.join("hsm/pin")), 0o600);
    assert!(
        !dir.join("keys").exists(),
        "a software keystore was made for the pkcs11 backend"
    );
    let out = signerctl(&dir, &d, &["--json", "keys", "list"]);
    let keys: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    let backends: Vec<&str> = keys
        .as_array()
        .unwrap_or_else(|| panic!("{keys}"))
        .iter()
        .map(|k| k["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["pkcs11", "pkcs11"], "{keys}");
    let out = signerctl(&dir, &d, SIGN_TX);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    hex_field(&v, "raw_transaction");
    assert!(d.stop().success());

    // The directory is kept for the same backend and refused for another.
    let mut again = Command::new(SIGNERD);
    again
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"]);
    let out = run_to_exit(again, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("was made for the pkcs11 backend, not soft"),
        "{}",
        out.stderr
    );
    let mut cmd = dev_command(&dir);
    cmd.args(["--backend", "pkcs11"]);
    let d = Daemon::spawn(cmd).unwrap_or_else(|e| panic!("restart: {e}"));
    signerctl(&dir, &d, SIGN_TX);
    let _ = std::fs::remove_dir_all(&base);
}
