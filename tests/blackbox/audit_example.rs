//! The example log in `docs/audit-example` (written by the real daemon) verifies with the real
//! `signerctl audit verify` and its documented verifier key, an inclusion proof checks against
//! it, and a one-byte change in a copy is caught.

use std::path::PathBuf;

use crate::audit_support::*;
use crate::util::unique_dir;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-example")
}

#[test]
fn example_log_verifies() {
    let dir = example().join("audit");
    let vkey = std::fs::read_to_string(example().join("vkey")).unwrap();
    let vkey = vkey.trim();
    let report = assert_verifies(&dir, vkey);
    for want in [
        "in 3 segment(s)",
        "1 crash recovery record(s)",
        "checkpoint file: present and consistent with the log",
        "unattested:   none",
    ] {
        assert!(report.contains(want), "want {want:?} in:\n{report}");
    }
    let key_file = example().join("vkey");
    let out = ctl(&[
        "audit",
        "verify",
        dir.to_str().unwrap(),
        "--pubkey-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");

    let out = ctl(&["audit", "prove", "--dir", dir.to_str().unwrap(), "8"]);
    assert!(out.status.success(), "{out:?}");
    let scratch = unique_dir("audit-example");
    let proof = scratch.join("proof.json");
    std::fs::write(&proof, &out.stdout).unwrap();
    let out = ctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--pubkey",
        vkey,
    ]);
    assert!(out.status.success(), "{out:?}");

    // One byte changed in a sealed segment of a copy.
    let copy = scratch.join("audit");
    copy_tree(&dir, &copy);
    let seg = copy.join("segment-00000001.jsonl");
    let mut lines = read_lines(&seg);
    // A digit of the signing hash of the sign.result at seq 8: still a valid record, so the
    // next record's prev catches it.
    let p = lines[8]
        .windows(18)
        .position(|w| w == b"\"signing_hash\":\"0x")
        .unwrap()
        + 18;
    lines[8][p] = if lines[8][p] == b'1' { b'2' } else { b'1' };
    write_lines(&seg, &lines);
    assert_verify_fails(
        &copy,
        Some(vkey),
        &[],
        "segment-00000001.jsonl:10 (seq 9): prev is",
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
