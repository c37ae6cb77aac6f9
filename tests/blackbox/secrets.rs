//! No secret leaves the daemon: after a run that signs, is denied, fails, reloads, refuses
//! strangers and loses its HSM token, with the most verbose logging, the secrets of the
//! installation (keystore passphrase, a private key of known value, the TLS server key, the HSM
//! PIN and SO PIN) appear nowhere in the logs, the metrics, the audit log, the state store or any
//! error message a client received, in any of the encodings a leak would take. The Vault tests
//! scan for the Vault token and the AppRole secret id the same way ([`assert_no_secret_left`]).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use signerd_proto::v1;

use crate::pkcs11::SoftHsm;
use crate::util::*;

/// A private key whose value the test knows (secp256k1; any valid scalar).
const KNOWN_SECRET: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

/// Every encoding of `secret` a leak could take: as is, hex both cases, base64 (standard and
/// URL-safe, with and without padding) and the raw bytes.
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        out.push(engine.encode(secret).into_bytes());
    }
    out
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Panics naming the place and the secret if any encoding of any secret is in `hay`.
pub(crate) fn scan(place: &str, hay: &[u8], secrets: &[(&str, Vec<u8>)]) {
    for (name, secret) in secrets {
        for enc in encodings(secret) {
            assert!(
                !contains(hay, &enc),
                "{name} appears in {place} (as {:?})",
                String::from_utf8_lossy(&enc)
            );
        }
    }
}

/// Panics if any encoding of any secret is in the daemon's output or in any file of the
/// installation's audit log or state store.
pub(crate) fn assert_no_secret_left(env: &TestEnv, d: &Daemon, secrets: &[(&str, Vec<u8>)]) {
    scan("signerd's standard error", d.stderr().as_bytes(), secrets);
    scan(
        "signerd's standard output",
        d.stdout().join("\n").as_bytes(),
        secrets,
    );
    for dir in [env.dir.join("audit"), env.dir.join("state")] {
        let found = files(&dir);
        assert!(!found.is_empty(), "nothing to scan in {}", dir.display());
        for f in found {
            let bytes = std::fs::read(&f).unwrap_or_default();
            scan(&f.display().to_string(), &bytes, secrets);
        }
    }
}

fn debug_daemon(mut cmd: Command) -> Daemon {
    cmd.args(["--log-level", "debug"]);
    Daemon::spawn(cmd).unwrap_or_else(|e| panic!("signerd did not start: {e}"))
}

#[test]
fn the_scan_finds_each_encoding() {
    use base64::Engine;
    let secret = hex::decode(KNOWN_SECRET).unwrap();
    let leaks = [
        format!("key={KNOWN_SECRET}"),
        format!("K={}", KNOWN_SECRET.to_uppercase()),
        format!(
            "b64 {}",
            base64::engine::general_purpose::STANDARD.encode(&secret)
        ),
    ];
    for leak in leaks {
        let caught = std::panic::catch_unwind(|| {
            scan(
                "a test string",
                leak.as_bytes(),
                &[("the secret", secret.clone())],
            )
        });
        assert!(caught.is_err(), "not caught: {leak}");
    }
    let mut raw = b"binary ".to_vec();
    raw.extend_from_slice(&secret);
    assert!(std::panic::catch_unwind(|| scan("bytes", &raw, &[("s", secret.clone())])).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_audit_state_or_errors() {
    let env = TestEnv::with(
        "secrets",
        Opts {
            policy: "version = 1\nserial = 1\n\n[[rule]]\nid = \"app\"\neffect = \"allow\"\nclients = [\"app\"]\n\n[[rule]]\nid = \"no-big\"\neffect = \"deny\"\nclients = [\"app\"]\nchain_ids = [5]\n".into(),
            crl: true,
            ..Opts::default()
        },
    );
    // A key of known value goes in through the import path.
    let secret_file = env.dir.join("imported.hex");
    write_file(
        &secret_file,
        format!("0x{KNOWN_SECRET}\n").as_bytes(),
        0o600,
    );
    let mut cmd = Command::new(SIGNERCTL);
    cmd.args(["keys", "import", "--config"])
        .arg(env.config_path())
        .args([
            "--id",
            "imported",
            "--algorithm",
            "secp256k1",
            "--secret-file",
        ])
        .arg(&secret_file);
    let out = run_to_exit(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "import: {}", out.stderr);
    std::fs::remove_file(&secret_file).unwrap();
    let mut outputs = vec![(
        "signerctl keys import output".to_owned(),
        out.stdout + &out.stderr,
    )];

    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = debug_daemon(env.run_command());
    let metrics = crate::metrics::metrics_addr(&d);
    let mut errors = Vec::new();
    let mut c = env.client(&d, "app").await;
    for (i, key) in ["imported", HOT].iter().enumerate() {
        let ok = c
            .sign_evm_transaction(v1::SignEvmTransactionRequest {
                key_id: (*key).into(),
                ..eip1559(&format!("ok-{i}"))
            })
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }
    // Denied, malformed, unknown key, reused request id, a stranger, a revoked certificate.
    let bad = [
        v1::SignEvmTransactionRequest {
            key_id: "imported".into(),
            chain_id: 5,
            ..eip1559("denied")
        },
        v1::SignEvmTransactionRequest {
            key_id: "imported".into(),
            to: "0xnot-an-address".into(),
            ..eip1559("malformed")
        },
        v1::SignEvmTransactionRequest {
            key_id: "missing".into(),
            ..eip1559("unknown-key")
        },
        v1::SignEvmTransactionRequest {
            key_id: "imported".into(),
            value: "2000".into(),
            ..eip1559("ok-0")
        },
    ];
    for req in bad {
        let st = c.sign_evm_transaction(req).await.unwrap_err();
        errors.push(format!("{st:?}"));
    }
    for client in ["stranger", "app-revoked"] {
        match signerd::client::connect(&env.settings(&d, client)).await {
            Err(e) => errors.push(format!("{e:?}")),
            Ok(mut s) => {
                let st = s.list_keys(v1::ListKeysRequest {}).await.unwrap_err();
                errors.push(format!("{st:?}"));
            }
        }
    }
    // SIGHUP reload, then a clean stop.
    let _ = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    let stderr_before_stop = d.stderr();
    let stdout = d.stdout().join("\n");
    let scraped = crate::metrics::scrape(&metrics);
    assert!(d.stop().success());
    outputs.push(("signerd stderr".into(), stderr_before_stop));
    outputs.push(("signerd stdout".into(), stdout));
    outputs.push(("errors returned to clients".into(), errors.join("\n")));
    outputs.push(("the metrics endpoint".into(), scraped));
    assert!(
        outputs[1].1.contains("DEBUG"),
        "debug logging was not on: {}",
        outputs[1].1
    );

    let passphrase = std::fs::read_to_string(env.dir.join("keystore.pass")).unwrap();
    let server_key = std::fs::read_to_string(env.dir.join("pki/server-key.pem")).unwrap();
    let server_key_body: String = server_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let secrets = [
        (
            "the keystore passphrase",
            passphrase.trim().as_bytes().to_vec(),
        ),
        (
            "the imported private key",
            hex::decode(KNOWN_SECRET).unwrap(),
        ),
        ("the TLS server key", server_key_body.into_bytes()),
    ];
    for (place, text) in &outputs {
        scan(place, text.as_bytes(), &secrets);
    }
    for dir in ["audit", "state"] {
        let found = files(&env.dir.join(dir));
        assert!(!found.is_empty(), "{dir}/ is empty");
        for f in found {
            scan(
                &f.display().to_string(),
                &std::fs::read(&f).unwrap(),
                &secrets,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pin_in_logs_audit_or_errors_when_the_hsm_fails() {
    let env = TestEnv::with(
        "secrets-p11",
        Opts {
            policy: "version = 1\nserial = 1\n\n[[rule]]\nid = \"app\"\neffect = \"allow\"\nclients = [\"app\"]\n".into(),
            ..Opts::default()
        },
    );
    let hsm = SoftHsm::create(&env);
    let mut env = env;
    env.opts.keys = Some(hsm.keys_toml("call_timeout = \"1s\"\n"));
    env.write_config();
    let generated = hsm.generate(&env, "hsm-k1", "secp256k1");
    let mut cmd = env.run_command();
    cmd.env("SOFTHSM2_CONF", hsm.conf());
    let d = debug_daemon(cmd);
    let mut c = env.client(&d, "app").await;
    let mut errors = Vec::new();
    let sign = |id: &str| v1::SignEvmTransactionRequest {
        key_id: "hsm-k1".into(),
        ..eip1559(id)
    };
    c.sign_evm_transaction(sign("p11-ok")).await.unwrap();
    // The token goes away: failures are reported, with return codes, never the PIN.
    let tokens = hsm.dir.join("tokens");
    std::fs::rename(&tokens, hsm.dir.join("aside")).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    for i in 0..20 {
        if let Err(st) = c.sign_evm_transaction(sign(&format!("p11-gone-{i}"))).await {
            errors.push(format!("{st:?}"));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        !errors.is_empty(),
        "signing never failed with the token gone"
    );
    let (status, stderr) = d.stop_logged();
    assert!(status.success(), "{status}; stderr:\n{stderr}");

    // A wrong PIN at start: the error names the source, not the value.
    let real_pin = std::fs::read_to_string(hsm.dir.join("pin")).unwrap();
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(hsm.dir.join("aside"), &tokens).unwrap();
    let wrong = hsm.dir.join("pin");
    let wrong_pin = "000000-wrong-pin-value";
    write_file(&wrong, format!("{wrong_pin}\n").as_bytes(), 0o600);
    let mut cmd = env.run_command();
    cmd.env("SOFTHSM2_CONF", hsm.conf());
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(out.stderr.contains("PIN is incorrect"), "{}", out.stderr);
    scan(
        "the wrong-PIN start-up error",
        out.stderr.as_bytes(),
        &[("the wrong PIN", wrong_pin.as_bytes().to_vec())],
    );

    let so_pin = std::fs::read_to_string(hsm.dir.join("so-pin")).unwrap();
    let secrets = [
        ("the HSM PIN", real_pin.trim().as_bytes().to_vec()),
        ("the HSM SO PIN", so_pin.trim().as_bytes().to_vec()),
    ];
    scan("signerd stderr", stderr.as_bytes(), &secrets);
    scan(
        "errors returned to clients",
        errors.join("\n").as_bytes(),
        &secrets,
    );
    scan(
        "signerctl keys generate output",
        generated.to_string().as_bytes(),
        &secrets,
    );
    for f in files(&env.dir.join("audit"))
        .into_iter()
        .chain(files(&env.dir.join("state")))
    {
        scan(
            &f.display().to_string(),
            &std::fs::read(&f).unwrap(),
            &secrets,
        );
    }
}
