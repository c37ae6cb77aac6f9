//! The PKCS#11 backend against a real SoftHSM2 token, made by `hsm-config/create-softhsm-token.sh`
//! and driven through the real `signerd` and `signerctl` binaries, OpenSC's `pkcs11-tool`, and
//! cryptoki directly for attribute checks.
//!
//! SoftHSM2 and OpenSC are required (`.ci/run` installs them): when they are missing these tests
//! fail with a message saying what to install; they are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alloy_primitives::keccak256;
use signerd_proto::v1;
use tonic::Code;

use crate::audit_support::hex0x;
use crate::util::*;

/// Where SoftHSM2's module may be (the list `signerd dev --backend pkcs11` searches).
const MODULE_PATHS: &[&str] = signerd::dev::SOFTHSM_MODULE_PATHS;

const TOKEN: &str = "signerd-test";

/// The policy of these tests: `app` may sign anything, raw digests included.
const POLICY: &str = r#"version = 1
serial = 1

[[rule]]
id = "app-all"
effect = "allow"
clients = ["app"]

[[rule]]
id = "app-digests"
effect = "allow"
clients = ["app"]
kinds = ["raw_digest"]
"#;

/// A SoftHSM2 token of one test installation.
pub(crate) struct SoftHsm {
    /// The token directory (`softhsm2.conf`, `tokens/`, `pin`).
    pub(crate) dir: PathBuf,
}

/// SoftHSM2's module, or a failure naming what to install.
pub(crate) fn softhsm_module() -> &'static str {
    MODULE_PATHS
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (looked for libsofthsm2.so in {MODULE_PATHS:?}); \
                 install it: apt-get install softhsm2 opensc"
            )
        })
}

impl SoftHsm {
    /// Creates a token labelled [`TOKEN`] under `env`'s directory with the project's script.
    pub(crate) fn create(env: &TestEnv) -> SoftHsm {
        let dir = env.dir.join("hsm");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hsm-config/create-softhsm-token.sh"
        );
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg(&dir).arg(TOKEN);
        let out = run_to_exit(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "create-softhsm-token.sh failed (is SoftHSM2 installed? apt-get install softhsm2):\n{}",
            out.stderr
        );
        assert_eq!(
            out.stdout.trim(),
            format!("SOFTHSM2_CONF={}/softhsm2.conf", dir.display())
        );
        assert_eq!(mode_of(&dir.join("pin")), 0o600);
        SoftHsm { dir }
    }

    /// `SOFTHSM2_CONF` for processes that use this token.
    pub(crate) fn conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The `[keys]` tables of a configuration using this token.
    pub(crate) fn keys_toml(&self, extra: &str) -> String {
        format!(
            "[keys]\nbackend = \"pkcs11\"\n\n[keys.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{TOKEN}\"\npin_file = \"{}\"\nsessions = 4\n{extra}\n",
            softhsm_module(),
            self.dir.join("pin").display()
        )
    }

    /// Runs OpenSC's `pkcs11-tool` on this token, logged in.
    pub(crate) fn tool(&self, args: &[&str]) -> Exited {
        let pin = std::fs::read_to_string(self.dir.join("pin")).unwrap();
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("SOFTHSM2_CONF", self.conf())
            .args(["--module", softhsm_module(), "--token-label", TOKEN])
            .args(["--login", "--pin", pin.trim()])
            .args(args);
        if which("pkcs11-tool").is_none() {
            panic!("OpenSC's pkcs11-tool is not installed: apt-get install opensc");
        }
        run_to_exit(cmd, Duration::from_secs(60))
    }

    /// `signerctl keys generate --backend pkcs11` into this token.
    pub(crate) fn generate(&self, env: &TestEnv, id: &str, algorithm: &str) -> serde_json::Value {
        let mut cmd = Command::new(SIGNERCTL);
        cmd.env("SOFTHSM2_CONF", self.conf())
            .arg("--json")
            .args(["keys", "generate", "--backend", "pkcs11", "--config"])
            .arg(env.config_path())
            .args(["--id", id, "--algorithm", algorithm]);
        let out = run_to_exit(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "keys generate {id}: {}\n{}",
            out.stdout,
            out.stderr
        );
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Starts signerd on this token.
    pub(crate) fn start(&self, env: &TestEnv) -> Daemon {
        let mut cmd = env.run_command();
        cmd.env("SOFTHSM2_CONF", self.conf());
        Daemon::spawn(cmd).unwrap_or_else(|e| panic!("signerd did not start: {e}"))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
    })
}

/// An installation whose keys live in a fresh SoftHSM2 token.
fn installation(name: &str, extra_keys: &str) -> (TestEnv, SoftHsm) {
    let env = TestEnv::with(
        name,
        Opts {
            policy: POLICY.to_owned(),
            ..Opts::default()
        },
    );
    let hsm = SoftHsm::create(&env);
    let mut env = env;
    env.opts.keys = Some(hsm.keys_toml(extra_keys));
    env.write_config();
    (env, hsm)
}

fn digest_request(id: &str, key: &str, digest: &[u8]) -> v1::SignDigestRequest {
    v1::SignDigestRequest {
        dry_run: false,
        request_id: id.to_owned(),
        key_id: key.to_owned(),
        digest: digest.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_keys_of_each_algorithm_are_generated_listed_and_sign() {
    let (env, hsm) = installation("p11-algs", "");
    let k1 = hsm.generate(&env, "hsm-k1", "secp256k1");
    let p256 = hsm.generate(&env, "hsm-p256", "p256");
    let ed = hsm.generate(&env, "hsm-ed", "ed25519");
    for (k, alg) in [(&k1, "secp256k1"), (&p256, "p256"), (&ed, "ed25519")] {
        assert_eq!(k["backend"], "pkcs11");
        assert_eq!(k["algorithm"], alg);
    }
    // A second key with a taken id is refused before the token is touched.
    let mut cmd = Command::new(SIGNERCTL);
    cmd.env("SOFTHSM2_CONF", hsm.conf())
        .args(["keys", "generate", "--backend", "pkcs11", "--config"])
        .arg(env.config_path())
        .args(["--id", "hsm-k1", "--algorithm", "secp256k1"]);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("already has an object labelled `hsm-k1`"),
        "{}",
        out.stderr
    );

    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    let keys = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["hsm-ed", "hsm-k1", "hsm-p256"]);
    for k in &keys {
        assert_eq!(k.backend, "pkcs11");
    }
    let key = |id: &str| keys.iter().find(|k| k.id == id).unwrap().clone();
    assert_eq!(hex0x(&key("hsm-k1").public_key), k1["public_key"]);
    assert_eq!(key("hsm-k1").evm_address, k1["evm_address"]);

    // secp256k1: an EIP-1559 transaction, checked with alloy and libsecp256k1.
    let address = key("hsm-k1").evm_address;
    let req = v1::SignEvmTransactionRequest {
        key_id: "hsm-k1".into(),
        ..eip1559("p11-tx")
    };
    let resp = c.sign_evm_transaction(req).await.unwrap().into_inner();
    use alloy_eips::eip2718::Decodable2718;
    let tx =
        alloy_consensus::TxEnvelope::decode_2718(&mut resp.raw_transaction.as_slice()).unwrap();
    let sig = tx.signature();
    let from = recover_address(
        tx.signature_hash().as_slice(),
        &sig.r().to_be_bytes::<32>(),
        &sig.s().to_be_bytes::<32>(),
        u32::from(sig.v()),
    );
    assert_eq!(
        from.to_checksum(None),
        address,
        "the encoded transaction recovers to the key"
    );
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, false);

    // P-256: the digest is SHA-256 of a message, so ring verifies the message itself.
    let message = b"signerd pkcs11 p256";
    let digest = <sha2::Sha256 as sha2::Digest>::digest(message);
    let resp = c
        .sign_digest(digest_request("p11-p256", "hsm-p256", &digest))
        .await
        .unwrap()
        .into_inner();
    let sig = resp.signature.unwrap();
    let mut fixed = sig.r.clone();
    fixed.extend_from_slice(&sig.s);
    let point = p256_uncompressed(&key("hsm-p256").public_key);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(message, &fixed)
        .expect("P-256 signature verifies with ring");

    // Ed25519 over the digest bytes, verified with ring.
    let digest = keccak256(b"signerd pkcs11 ed25519");
    let resp = c
        .sign_digest(digest_request("p11-ed", "hsm-ed", digest.as_slice()))
        .await
        .unwrap()
        .into_inner();
    let sig = resp.signature.unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key("hsm-ed").public_key)
        .verify(digest.as_slice(), &sig.bytes)
        .expect("Ed25519 signature verifies with ring");

    // The audit log names the backend's key for each signature.
    let audit = env.wait_audit(|a| !a.results("p11-ed").is_empty());
    assert_eq!(audit.results("p11-tx"), ["signed"]);
    assert_eq!(audit.results("p11-p256"), ["signed"]);
    assert_eq!(audit.results("p11-ed"), ["signed"]);
}

/// The 65-byte uncompressed form of a compressed P-256 point (decompressed with ring's peer:
/// the daemon reports compressed SEC1; ring wants uncompressed).
fn p256_uncompressed(compressed: &[u8]) -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    p256::PublicKey::from_sec1_bytes(compressed)
        .unwrap()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_evm_signatures_recover_thousands_of_times_across_the_session_pool() {
    let (env, hsm) = installation("p11-many", "");
    let k = hsm.generate(&env, "hsm-k1", "secp256k1");
    let address = k["evm_address"].as_str().unwrap().to_owned();
    let d = hsm.start(&env);
    let settings = env.settings(&d, "app");
    const CLIENTS: usize = 16;
    const EACH: usize = 150;
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let settings = settings.clone();
        let address = address.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = signerd::client::connect(&settings).await.unwrap();
            let mut parities = [0usize; 2];
            for i in 0..EACH {
                let req = v1::SignEvmTransactionRequest {
                    key_id: "hsm-k1".into(),
                    nonce: (t * EACH + i) as u64,
                    ..eip1559(&format!("many-{t}-{i}"))
                };
                let resp = c.sign_evm_transaction(req).await.unwrap().into_inner();
                let sig = resp.signature.as_ref().unwrap();
                // Recovers (libsecp256k1) and is low-s.
                check_ecdsa(Some(sig), &resp.signing_hash, &address, false);
                parities[sig.y_parity as usize] += 1;
            }
            parities
        }));
    }
    let mut parities = [0usize; 2];
    for t in tasks {
        let p = t.await.unwrap();
        parities[0] += p[0];
        parities[1] += p[1];
    }
    assert_eq!(parities[0] + parities[1], CLIENTS * EACH);
    // Both recovery ids occur, so trial recovery picked each; the token's own s is high about
    // half the time, so normalization was exercised too.
    assert!(parities[0] > 100 && parities[1] > 100, "{parities:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_generated_private_keys_cannot_be_extracted() {
    let (env, hsm) = installation("p11-attrs", "");
    hsm.generate(&env, "hsm-k1", "secp256k1");
    hsm.generate(&env, "hsm-ed", "ed25519");

    // C_GetAttributeValue on CKA_VALUE yields nothing (CKR_ATTRIBUTE_SENSITIVE) and the flags
    // are the ones promised. The module reads SOFTHSM2_CONF at C_Initialize, so the check runs
    // in a child process of this test binary that has it in its environment.
    let pin = std::fs::read_to_string(hsm.dir.join("pin")).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("SOFTHSM2_CONF", hsm.conf())
        .env("SIGNERD_P11_PROBE_PIN", pin.trim())
        .args([
            "--exact",
            "pkcs11::attribute_probe",
            "--nocapture",
            "--include-ignored",
        ]);
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout.contains("attribute probe: ok 2 keys"),
        "attribute probe failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// Run only as the child process of [`pkcs11_generated_private_keys_cannot_be_extracted`],
/// which sets `SOFTHSM2_CONF` for it.
#[test]
#[ignore = "a child process of pkcs11_generated_private_keys_cannot_be_extracted"]
fn attribute_probe() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    let pin = std::env::var("SIGNERD_P11_PROBE_PIN").expect("run by the parent test");
    let ctx = Pkcs11::new(softhsm_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .expect("the test token");
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&secrecy::SecretString::from(pin)))
        .unwrap();
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        // C_GetAttributeValue answers CKR_ATTRIBUTE_SENSITIVE for CKA_VALUE.
        let info = session
            .get_attribute_info(*key, &[AttributeType::Value])
            .unwrap();
        assert!(
            matches!(info[..], [cryptoki::object::AttributeInfo::Sensitive]),
            "CKA_VALUE: {info:?}"
        );
        let attrs = session
            .get_attributes(
                *key,
                &[
                    AttributeType::Value,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "CKA_VALUE was returned"
        );
        for want in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::NeverExtractable(true),
        ] {
            assert!(attrs.contains(&want), "missing {want:?} in {attrs:?}");
        }
    }
    println!("attribute probe: ok {} keys", keys.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_keys_are_shared_with_pkcs11_tool() {
    let (env, hsm) = installation(
        "p11-interop",
        "\n[[keys.pkcs11.adopt]]\nid = \"adopted\"\nckid = \"c0ffee\"\n",
    );
    // pkcs11-tool makes two keys: one whose label is a valid key id, and one adopted by CKA_ID.
    for (label, id) in [("tool-k1", "0a0b"), ("made by pkcs11-tool", "c0ffee")] {
        let out = hsm.tool(&[
            "--keypairgen",
            "--key-type",
            "EC:secp256k1",
            "--label",
            label,
            "--id",
            id,
        ]);
        assert!(
            out.status.success(),
            "pkcs11-tool --keypairgen: {}",
            out.stderr
        );
    }
    // signerd makes one; pkcs11-tool sees it, as a sensitive, never-extractable private key.
    hsm.generate(&env, "signerd-k1", "secp256k1");
    let out = hsm.tool(&["--list-objects", "--type", "privkey"]);
    assert!(out.status.success(), "{}", out.stderr);
    let listing = out.stdout.clone();
    let block = listing
        .split("Private Key Object")
        .find(|b| b.contains("signerd-k1"))
        .unwrap_or_else(|| panic!("pkcs11-tool does not list signerd's key:\n{listing}"));
    assert!(
        block.contains("sensitive") && block.contains("never extractable"),
        "{block}"
    );

    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    let keys = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["adopted", "signerd-k1", "tool-k1"]);

    // The public key signerd reports is the one pkcs11-tool reads, and its signatures recover
    // to it.
    let out = hsm.tool(&["--read-object", "--type", "pubkey", "--label", "tool-k1"]);
    assert!(out.status.success(), "{}", out.stderr);
    for id in ["tool-k1", "adopted", "signerd-k1"] {
        let k = keys.iter().find(|k| k.id == id).unwrap();
        let req = v1::SignEvmTransactionRequest {
            key_id: id.into(),
            ..eip1559(&format!("interop-{id}"))
        };
        let resp = c.sign_evm_transaction(req).await.unwrap().into_inner();
        check_ecdsa(
            resp.signature.as_ref(),
            &resp.signing_hash,
            &k.evm_address,
            false,
        );
    }
    let tool_pub = read_pubkey_point(&hsm, "tool-k1");
    let k = keys.iter().find(|k| k.id == "tool-k1").unwrap();
    let point = secp256k1::PublicKey::from_slice(&k.public_key).unwrap();
    assert_eq!(point.serialize_uncompressed().to_vec(), tool_pub);
}

/// The uncompressed point of a public key object, as pkcs11-tool writes it (DER
/// SubjectPublicKeyInfo, whose last 65 bytes are the point).
fn read_pubkey_point(hsm: &SoftHsm, label: &str) -> Vec<u8> {
    let file = hsm.dir.join(format!("{label}.pub.der"));
    let out = hsm.tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        label,
        "--output-file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let der = std::fs::read(&file).unwrap();
    assert!(der.len() > 65, "{} bytes", der.len());
    let point = der[der.len() - 65..].to_vec();
    assert_eq!(point[0], 0x04);
    point
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_token_lost_then_back() {
    let (env, hsm) = installation("p11-lost", "call_timeout = \"2s\"\n");
    let k = hsm.generate(&env, "hsm-k1", "secp256k1");
    let address = k["evm_address"].as_str().unwrap().to_owned();
    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    let sign = |c: &mut v1::signer_client::SignerClient<tonic::transport::Channel>, id: String| {
        let req = v1::SignEvmTransactionRequest {
            key_id: "hsm-k1".into(),
            ..eip1559(&id)
        };
        let mut c = c.clone();
        async move { c.sign_evm_transaction(req).await }
    };
    let resp = sign(&mut c, "before".into()).await.unwrap().into_inner();
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, false);
    assert_eq!(
        health(channel.clone(), SIGNER_SERVICE).await.unwrap(),
        SERVING
    );

    // The token's files go away.
    let tokens = hsm.dir.join("tokens");
    let aside = hsm.dir.join("tokens-aside");
    std::fs::rename(&tokens, &aside).unwrap();
    std::fs::create_dir(&tokens).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let status = loop {
        n += 1;
        match sign(&mut c, format!("lost-{n}")).await {
            Err(st) => break st,
            Ok(r) => {
                // Until the token notices, what it signs is still correct.
                let r = r.into_inner();
                check_ecdsa(r.signature.as_ref(), &r.signing_hash, &address, false);
            }
        }
        assert!(
            Instant::now() < deadline,
            "signing never failed with the token gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_status("token gone", &status, Code::Unavailable, "PKCS#11");
    let until = Instant::now() + Duration::from_secs(15);
    while health(channel.clone(), SIGNER_SERVICE).await.unwrap() != NOT_SERVING {
        assert!(Instant::now() < until, "health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still refused while it is gone, and nothing was signed for the refused request.
    let st = sign(&mut c, "while-gone".into()).await.unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");

    // The token comes back: the backend logs in again by itself.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&aside, &tokens).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while health(channel.clone(), SIGNER_SERVICE).await.unwrap() != SERVING {
        assert!(
            Instant::now() < until,
            "health never turned SERVING again:\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = sign(&mut c, "after".into()).await.unwrap().into_inner();
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, false);

    let audit = env.wait_audit(|a| !a.results("after").is_empty());
    assert_eq!(audit.results("while-gone"), ["backend_error"]);
    assert!(
        d.stderr().contains("PKCS#11 token is back"),
        "{}",
        d.stderr()
    );
    // The PIN never reaches the logs.
    let pin = std::fs::read_to_string(hsm.dir.join("pin")).unwrap();
    assert!(!d.stderr().contains(pin.trim()));

    // The token's monitor is one of the daemon's tracked tasks, and ends on SIGTERM.
    let (status, stderr) = d.stop_logged();
    assert!(status.success(), "{stderr}");
    let stopping = stderr
        .lines()
        .find(|l| l.contains("stopping background tasks"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(stopping.contains("pkcs11 monitor"), "{stopping}");
    assert!(stderr.contains("background tasks ended"), "{stderr}");
    assert!(!stderr.contains("did not end"), "{stderr}");
}

/// Makes the installation keep its audit checkpoint key in the token of `[keys]`.
fn audit_key_in_token(env: &TestEnv, extra: &str) {
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let soft_pass = "[audit]\ndir = \"audit\"\nsigning_key_passphrase_file = \"keystore.pass\"\n";
    assert!(text.ends_with(soft_pass), "the test config changed shape");
    let text = text.replace(
        soft_pass,
        &format!("[audit]\ndir = \"audit\"\nsigning_key_backend = \"pkcs11\"\n{extra}"),
    );
    write_file(&path, text.as_bytes(), 0o600);
}

/// `signerctl ...` with this token.
fn audit_ctl(hsm: &SoftHsm, args: &[&str]) -> Exited {
    let mut cmd = Command::new(SIGNERCTL);
    cmd.env("SOFTHSM2_CONF", hsm.conf()).args(args);
    run_to_exit(cmd, Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_audit_key_lives_in_the_token_signs_checkpoints_and_is_never_a_client_key() {
    let (env, hsm) = installation("p11-audit-key", "");
    audit_key_in_token(&env, "checkpoint_every_records = 5\n");
    hsm.generate(&env, "hsm-ed", "ed25519");
    let config = env.config_path();
    let config = config.to_str().unwrap();
    // A client key cannot take the audit key's label.
    let out = audit_ctl(
        &hsm,
        &[
            "keys",
            "generate",
            "--backend",
            "pkcs11",
            "--config",
            config,
            "--id",
            "audit-checkpoint",
            "--algorithm",
            "ed25519",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("is the audit checkpoint key's label"),
        "{}",
        out.stderr
    );

    // Before the first start the key is not there yet, and `check` says what will happen.
    let mut check = Command::new(SIGNERD);
    check
        .env("SOFTHSM2_CONF", hsm.conf())
        .args(["check-config", "--config", config]);
    let out = run_to_exit(check, Duration::from_secs(60));
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("audit checkpoint key `audit-checkpoint`: not in the pkcs11 backend yet"),
        "{}",
        out.stdout
    );

    // The first start of a new log generates it inside the token.
    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    // The policy lets `app` sign anything with any key: the audit key is still out of reach.
    assert_audit_key_hidden(&mut c, "audit-checkpoint", &["hsm-ed"], "p11-audit-steal").await;
    for i in 0..12 {
        c.sign_digest(digest_request(&format!("p11-ed-{i}"), "hsm-ed", &[i; 32]))
            .await
            .unwrap();
    }
    assert!(d.stop().success());

    // It is a token object: sensitive, never extractable, labelled as configured.
    let listed = hsm.tool(&["--list-objects", "--type", "privkey"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        listed.stdout.contains("label:      audit-checkpoint"),
        "{}",
        listed.stdout
    );
    // No soft audit keystore was made.
    assert!(!env.dir.join("audit-key").exists());

    // `audit pubkey` reads it from the token; the log names it and verifies under it.
    let out = audit_ctl(&hsm, &["audit", "pubkey", "--config", config]);
    assert!(out.status.success(), "{out:?}");
    let vkey = out.stdout.trim().to_owned();
    assert!(vkey.starts_with("signerd/audit+"), "{vkey}");
    let audit = env.audit();
    let start = audit.of_type("audit.start")[0];
    assert_eq!(start["checkpoint_key"], vkey.as_str());
    assert!(audit.of_type("audit.checkpoint").len() >= 3);
    audit.assert_not_signed("p11-audit-steal");
    crate::audit_support::assert_verifies(&env.audit_dir(), &vkey);

    // A restart uses the same key (never a new one); keygen refuses to make a second.
    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    c.sign_digest(digest_request("p11-after-restart", "hsm-ed", &[9; 32]))
        .await
        .unwrap();
    assert!(d.stop().success());
    crate::audit_support::assert_verifies(&env.audit_dir(), &vkey);
    let out = audit_ctl(&hsm, &["audit", "keygen", "--config", config]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("already has an object labelled `audit-checkpoint`"),
        "{}",
        out.stderr
    );

    // The key is gone from the token while the log exists: refuse to start.
    let del = hsm.tool(&[
        "--delete-object",
        "--type",
        "privkey",
        "--label",
        "audit-checkpoint",
    ]);
    assert!(del.status.success(), "{del:?}");
    let mut run = env.run_command();
    run.env("SOFTHSM2_CONF", hsm.conf());
    let out = run_to_exit(run, Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "started without its audit key: {out:?}"
    );
    assert!(
        out.stderr.contains("holds no audit checkpoint key")
            && out.stderr.contains("already exists"),
        "{}",
        out.stderr
    );
}

/// The token's serial number, as `softhsm2-util --show-slots` lists it.
fn token_serial(hsm: &SoftHsm) -> String {
    let mut cmd = Command::new("softhsm2-util");
    cmd.env("SOFTHSM2_CONF", hsm.conf()).arg("--show-slots");
    let out = run_to_exit(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.stderr);
    // The serial comes before the label in each token's block.
    let mut serial = None;
    for line in out.stdout.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix("Serial number:") {
            serial = Some(s.trim().to_owned());
        }
        if line.strip_prefix("Label:").map(str::trim) == Some(TOKEN) {
            return serial.unwrap_or_else(|| panic!("no serial before {line}"));
        }
    }
    panic!("no token {TOKEN} in:\n{}", out.stdout);
}

/// A key created extractable in the token (`pkcs11-tool --extractable`) is refused (and not
/// pinned) until the operator allows it by name; then it signs, pinned with what it lacks, and
/// the allowance is recorded. A key generated by signerd is pinned with the attributes that
/// were checked, and a key replaced under its label in the token is refused against its pin
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_extractable_key_is_refused_unless_allowed_and_a_replaced_key_against_its_pin() {
    let (mut env, hsm) = installation("p11-pins", "");
    let out = hsm.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:secp256k1",
        "--label",
        "weak-k",
        "--id",
        "0b0b",
        "--extractable",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let strong = hsm.generate(&env, "strong-k", "secp256k1");
    let serial = token_serial(&hsm);

    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    let req = |id: &str, key: &str| v1::SignEvmTransactionRequest {
        key_id: key.into(),
        ..eip1559(id)
    };
    let resp = c
        .sign_evm_transaction(req("strong-1", "strong-k"))
        .await
        .unwrap()
        .into_inner();
    check_ecdsa(
        resp.signature.as_ref(),
        &resp.signing_hash,
        strong["evm_address"].as_str().unwrap(),
        false,
    );
    let st = refused(
        "extractable",
        c.sign_evm_transaction(req("weak-1", "weak-k")).await,
    );
    assert_status(
        "extractable",
        &st,
        Code::Unavailable,
        "lacks protections (extractable, was_extractable)",
    );
    let audit = env.wait_audit(|a| a.results("weak-1").len() == 1);
    audit.assert_not_signed("weak-1");
    assert_eq!(audit.results("weak-1"), ["key_refused"]);
    assert!(crate::key_pins::pins_of(&audit, "weak-k").is_empty());
    let pins = crate::key_pins::pins_of(&audit, "strong-k");
    assert_eq!(pins.len(), 1, "{pins:?}");
    let pin = &pins[0];
    assert_eq!(pin["backend"], "pkcs11");
    assert_eq!(pin["version"], serde_json::Value::Null);
    assert_eq!(pin["public_key"], strong["public_key"]);
    let checked = &pin["checked"];
    assert_eq!(checked["token_serial"], serial.as_str(), "{checked}");
    assert_eq!(checked["sensitive"], true, "{checked}");
    assert_eq!(checked["extractable"], false, "{checked}");
    assert_eq!(checked["never_extractable"], true, "{checked}");
    assert_eq!(
        checked["ckid"].as_str().map(str::len),
        Some(32),
        "{checked}"
    );
    assert_eq!(pin["weak"], serde_json::json!([]));
    let strong_pin = pin["seq"].as_u64().unwrap();
    assert_eq!(
        crate::key_pins::result_of(&audit, "strong-1")["pin"].as_u64(),
        Some(strong_pin)
    );
    assert!(d.stop().success());

    // strong-k replaced in the token under the same label; weak-k allowed by name.
    for ty in ["privkey", "pubkey"] {
        let out = hsm.tool(&["--delete-object", "--type", ty, "--label", "strong-k"]);
        assert!(out.status.success(), "{}", out.stderr);
    }
    let out = hsm.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:secp256k1",
        "--label",
        "strong-k",
        "--id",
        "0c0c",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    env.opts.keys = Some(hsm.keys_toml("").replace(
        "backend = \"pkcs11\"\n",
        "backend = \"pkcs11\"\nallow_weak_keys = [\"weak-k\"]\n",
    ));
    env.write_config();
    let d = hsm.start(&env);
    let mut c = env.client(&d, "app").await;
    let st = refused(
        "replaced",
        c.sign_evm_transaction(req("strong-2", "strong-k")).await,
    );
    assert_status(
        "replaced",
        &st,
        Code::Unavailable,
        &format!(
            "pins {} for it at seq {strong_pin}",
            strong["public_key"].as_str().unwrap()
        ),
    );
    let weak = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .find(|k| k.id == "weak-k")
        .unwrap();
    let resp = c
        .sign_evm_transaction(req("weak-2", "weak-k"))
        .await
        .unwrap()
        .into_inner();
    check_ecdsa(
        resp.signature.as_ref(),
        &resp.signing_hash,
        &weak.evm_address,
        false,
    );
    let audit = env.wait_audit(|a| a.results("weak-2").len() == 1);
    let r = crate::key_pins::result_of(&audit, "strong-2");
    assert_eq!(r["status"], "key_refused", "{r}");
    assert_eq!(r["pin"].as_u64(), Some(strong_pin));
    assert_eq!(crate::key_pins::pins_of(&audit, "strong-k").len(), 1);
    let weak_pins = crate::key_pins::pins_of(&audit, "weak-k");
    assert_eq!(weak_pins.len(), 1, "{weak_pins:?}");
    assert_eq!(
        weak_pins[0]["weak"],
        serde_json::json!(["extractable", "was_extractable"])
    );
    assert_eq!(weak_pins[0]["checked"]["extractable"], true);
    assert_eq!(weak_pins[0]["checked"]["ckid"], "0b0b");
    let allowances = audit.of_type("key.allowance");
    assert_eq!(allowances.len(), 1, "{allowances:?}");
    assert_eq!(allowances[0]["key"], "weak-k");
    assert_eq!(allowances[0]["pin"], weak_pins[0]["seq"]);
    let r = crate::key_pins::result_of(&audit, "weak-2");
    assert_eq!(r["status"], "signed");
    assert_eq!(r["pin"], weak_pins[0]["seq"]);
    assert!(allowances[0]["seq"].as_u64() < r["seq"].as_u64());
    assert!(d.stop().success());
    crate::audit_support::assert_verifies(&env.audit_dir(), &crate::audit_support::vkey(&env));
}
