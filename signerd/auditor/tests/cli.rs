//! The `signerd-auditor` binary on the example log that a real daemon wrote
//! (`docs/audit-example`): it verifies with the documented verifier key, a one-byte change in
//! a copy fails with the first bad record named, an inclusion proof checks, and query and tail
//! print the exact lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit-example")
}

fn auditor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signerd-auditor"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::write(to.join(e.file_name()), std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

#[test]
fn verifies_the_example_log_and_catches_a_changed_byte() {
    let dir = example().join("audit");
    let vkey = example().join("vkey");
    let (dir_s, vkey_s) = (dir.to_str().unwrap(), vkey.to_str().unwrap());
    let out = auditor(&["verify", dir_s, "--pubkey-file", vkey_s]);
    assert!(out.status.success(), "{out:?}");
    let report = text(&out.stdout);
    for want in [
        "in 3 segment(s)",
        "every checkpoint signature verified with signerd-dev/audit+",
        "1 crash recovery record(s)",
        "checkpoint file: present and consistent with the log",
        "unattested:   none",
    ] {
        assert!(report.contains(want), "want {want:?} in:\n{report}");
    }
    assert!(report.trim_end().ends_with("OK"), "{report}");

    let out = auditor(&["--json", "verify", dir_s]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["stats"]["records"], 83);
    assert_eq!(v["signatures_checked_with"], serde_json::Value::Null);

    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("audit");
    copy_tree(&dir, &copy);
    let seg = copy.join("segment-00000001.jsonl");
    let mut data = std::fs::read(&seg).unwrap();
    let at = data
        .windows(18)
        .position(|w| w == b"\"signing_hash\":\"0x")
        .unwrap()
        + 18;
    data[at] = if data[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&seg, data).unwrap();
    let out = auditor(&["verify", copy.to_str().unwrap(), "--pubkey-file", vkey_s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("audit log verification FAILED: segment-00000001.jsonl:10 (seq 9): prev is"),
        "{err}"
    );
}

#[test]
fn proves_a_record_and_checks_the_proof() {
    let dir = example().join("audit");
    let vkey = std::fs::read_to_string(example().join("vkey")).unwrap();
    let vkey = vkey.trim();
    let out = auditor(&[
        "prove",
        "--dir",
        dir.to_str().unwrap(),
        "8",
        "--pubkey",
        vkey,
    ]);
    assert!(out.status.success(), "{out:?}");
    let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(proof["seq"], 8);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("proof.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let f = file.to_str().unwrap();
    let leaf = proof["leaf_hash"].as_str().unwrap();
    let out = auditor(&["check-proof", f, "--pubkey", vkey, "--leaf-hash", leaf]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("OK: record 8 "), "{out:?}");
    let other = "00".repeat(32);
    let out = auditor(&["check-proof", f, "--pubkey", vkey, "--leaf-hash", &other]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("the proof is for leaf hash"),
        "{out:?}"
    );
    let out = auditor(&["--json", "check-proof", f]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["signature_checked"], false);
}

#[test]
fn query_and_tail_print_the_exact_lines() {
    let dir = example().join("audit");
    let d = dir.to_str().unwrap();
    let mut all = Vec::new();
    for n in 1..=3 {
        let seg = std::fs::read(dir.join(format!("segment-0000000{n}.jsonl"))).unwrap();
        all.extend(text(&seg).lines().map(str::to_owned));
    }
    let out = auditor(&["query", "--dir", d, "--type", "sign.*", "--key", "nope"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let out = auditor(&["query", "--dir", d, "--type", "audit.checkpoint"]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| all.contains(l)));
    let out = auditor(&[
        "query",
        "--dir",
        d,
        "--type",
        "sign.result",
        "--format",
        "table",
    ]);
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    assert!(table.starts_with("     seq  ts"), "{table}");
    assert_eq!(table.matches(" signed\n").count(), 19, "{table}");
    let out = auditor(&["tail", "--dir", d, "-n", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", all[all.len() - 2..].join("\n"))
    );
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    let out = auditor(&["verify"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("error: DIR is required") && err.contains("Usage:"),
        "{err}"
    );
    let out = auditor(&["--help"]);
    assert!(
        out.status.success() && text(&out.stdout).contains("check-proof"),
        "{out:?}"
    );
    let out = auditor(&["--version"]);
    assert!(text(&out.stdout).starts_with("signerd-auditor "), "{out:?}");
}
