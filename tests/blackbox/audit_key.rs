//! The audit log's own checkpoint key: `signerctl audit keygen` and `pubkey` with its own
//! keystore directory and passphrase file, the daemon signing with it, and a daemon that
//! refuses to start when the key of an existing log is missing.

use std::time::Duration;

use crate::audit_support::*;
use crate::util::{TestEnv, eip1559, run_to_exit, write_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_pubkey_and_a_missing_key() {
    let env = TestEnv::new("audit-key");
    write_file(
        &env.dir.join("audit.pass"),
        b"a-separate-audit-key-passphrase\n",
        0o600,
    );
    configure_audit(
        &env,
        "signing_key_dir = \"secure/audit-key\"\nsigning_key_passphrase_file = \"audit.pass\"\norigin = \"audit.blackbox.test/signerd\"",
    );
    let config = env.config_path();
    let config = config.to_str().unwrap();
    let out = ctl(&["audit", "keygen", "--config", config]);
    assert!(out.status.success(), "{out:?}");
    let generated = out.stdout.trim().to_owned();
    assert!(
        generated.starts_with("audit.blackbox.test/signerd+"),
        "{generated}"
    );
    let key_file = env.dir.join("secure/audit-key/audit-checkpoint.key.json");
    assert!(key_file.exists());
    let out = ctl(&["audit", "keygen", "--config", config]);
    assert!(
        !out.status.success(),
        "a second keygen overwrote the key: {out:?}"
    );
    assert_eq!(vkey(&env), generated);
    let out = ctl(&["--json", "audit", "pubkey", "--config", config]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["vkey"], generated.as_str());

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("k-1")).await.unwrap();
    assert!(d.stop().success());
    let lines = read_lines(&env.audit_dir().join("segment-00000001.jsonl"));
    assert_eq!(record(&lines[0])["checkpoint_key"], generated.as_str());
    let note = std::fs::read_to_string(env.audit_dir().join("checkpoint")).unwrap();
    assert!(note.starts_with("audit.blackbox.test/signerd\n"), "{note}");
    assert_verifies(&env.audit_dir(), &generated);
    // No default key directory was created next to the configuration.
    assert!(!env.dir.join("audit-key").exists());

    // The key of an existing log is gone: refuse to start rather than sign with a new one.
    std::fs::rename(env.dir.join("secure"), env.dir.join("secure-moved")).unwrap();
    let out = run_to_exit(env.run_command(), Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "started without its audit key: {out:?}"
    );
    assert!(
        out.stderr.contains("no audit signing key in") && out.stderr.contains("already exists"),
        "{}",
        out.stderr
    );
    assert!(
        !key_file.exists(),
        "a new key was generated for an existing log"
    );
}
