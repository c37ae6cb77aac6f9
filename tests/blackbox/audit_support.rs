//! Helpers shared by the audit-log black-box tests: extra `[audit]` settings, running
//! `signerctl audit ...`, copying and editing log directories, killing a daemon with SIGKILL.
//!
//! Everything is checked from outside: lines are read and hashed here, never through the
//! daemon's own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{Daemon, Exited, SIGNERCTL, TestEnv, run_to_exit};

/// How long one `signerctl audit` run may take.
const CTL_LIMIT: Duration = Duration::from_secs(60);

/// Appends settings to the `[audit]` table (the last table of every test configuration).
pub(crate) fn configure_audit(env: &TestEnv, settings: &str) {
    let path = env.config_path();
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.trim_end().ends_with("[audit]\ndir = \"audit\""),
        "[audit] is not the last table of {}:\n{text}",
        path.display()
    );
    text.push_str(settings);
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    // Policy signatures are bound to the origin, which `settings` may change.
    env.write_policy(&env.opts.policy);
}

/// Runs `signerctl` with `args` to completion.
pub(crate) fn ctl(args: &[&str]) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(args);
    run_to_exit(cmd, CTL_LIMIT)
}

/// The checkpoint verifier key of an installation (`signerctl audit pubkey`).
pub(crate) fn vkey(env: &TestEnv) -> String {
    let out = ctl(&[
        "audit",
        "pubkey",
        "--config",
        env.config_path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "audit pubkey: {out:?}");
    let vkey = out.stdout.trim().to_owned();
    // name+keyid+base64 (the base64 may itself contain `+`).
    assert_eq!(vkey.splitn(3, '+').count(), 3, "vkey {vkey:?}");
    vkey
}

/// `signerctl audit verify DIR --pubkey VKEY [extra...]`.
pub(crate) fn verify(dir: &Path, vkey: Option<&str>, extra: &[&str]) -> Exited {
    let mut args = vec!["audit", "verify", dir.to_str().unwrap()];
    if let Some(k) = vkey {
        args.extend(["--pubkey", k]);
    }
    args.extend_from_slice(extra);
    ctl(&args)
}

/// Panics unless `verify` passed with checked signatures.
pub(crate) fn assert_verifies(dir: &Path, vkey: &str) -> String {
    let out = verify(dir, Some(vkey), &[]);
    assert!(
        out.status.success(),
        "audit verify {} failed: {out:?}",
        dir.display()
    );
    assert!(
        out.stdout
            .contains("every checkpoint signature verified with"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.trim_end().ends_with("OK"), "{}", out.stdout);
    out.stdout
}

/// Panics unless `verify` failed (exit status 1) with `needle` in its error.
pub(crate) fn assert_verify_fails(dir: &Path, vkey: Option<&str>, extra: &[&str], needle: &str) {
    let out = verify(dir, vkey, extra);
    assert_eq!(
        out.status.code(),
        Some(1),
        "audit verify should fail with {needle:?}: {out:?}"
    );
    assert!(
        out.stderr.contains("audit log verification FAILED: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(needle),
        "want {needle:?} in: {}",
        out.stderr
    );
}

/// Copies a directory tree (file modes are not kept: sealed segments become writable copies).
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_name() != "lock" {
            std::fs::write(&target, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

/// The segment files of a log directory, in order.
pub(crate) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
        })
        .collect();
    s.sort();
    s
}

/// The lines of one segment (without newlines); the file must end with one.
pub(crate) fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'), "{}", path.display());
    bytes[..bytes.len() - 1]
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Writes lines back, each followed by a newline.
pub(crate) fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

/// The parsed record of a line.
pub(crate) fn record(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

/// Sends SIGKILL to the daemon and waits until it is gone.
pub(crate) fn kill_9(d: Daemon) {
    let pid = d.pid().to_string();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
    // Reaps the process; it is already dead, so no SIGTERM grace period applies.
    drop(d);
}

/// `0x` + lowercase hex.
pub(crate) fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}
