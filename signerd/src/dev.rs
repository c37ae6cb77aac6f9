//! `signerd dev`: a complete development installation in one directory, created on first run
//! and reused afterwards.
//!
//! The directory holds a development CA and certificates (server for localhost; clients `app`,
//! `alice`, `bob`, `carol`, `admin`), an encrypted software keystore with one secp256k1 and one
//! Ed25519 key, the audit log's own checkpoint key (`audit-key/`), a sample policy, the
//! configuration, and (once the daemon runs) the state store and the audit log. It is built in
//! a temporary sibling directory and renamed into place, so an interrupted first run never
//! leaves a half-made directory behind. Nothing here is fit for production: the CA key and the
//! keystore passphrase sit next to what they protect.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::keys::{Algorithm, soft};
use crate::tls::pki::{ClientOptions, DevCa};

/// The client certificates `signerd dev` issues, with their roles.
pub const DEV_CLIENTS: [(&str, &str); 5] = [
    ("app", "requester"),
    ("alice", "approver"),
    ("bob", "approver"),
    ("carol", "approver"),
    ("admin", "admin"),
];

/// The development secp256k1 key id.
pub const DEV_SECP256K1: &str = "dev-secp256k1";
/// The development Ed25519 key id.
pub const DEV_ED25519: &str = "dev-ed25519";
/// The default listen address of `signerd dev`.
pub const DEV_LISTEN: &str = "127.0.0.1:50051";

/// Why the development directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("signerd dev: {0}")]
pub struct DevError(String);

fn err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DevError {
    move |e| DevError(format!("{what}: {e}"))
}

/// Writes `contents` to a new file with `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err(path.display()))?;
    f.write_all(contents).map_err(err(path.display()))?;
    f.sync_all().map_err(err(path.display()))
}

/// Makes sure `dir` holds a development installation; returns its configuration file.
///
/// With `listen`, the configuration is (re)written to listen there.
pub fn prepare(dir: &Path, listen: Option<SocketAddr>) -> Result<PathBuf, DevError> {
    let config = dir.join("signerd.toml");
    if config.exists() {
        if let Some(addr) = listen {
            set_listen(&config, addr)?;
        }
        return Ok(config);
    }
    if dir.exists() {
        return Err(DevError(format!(
            "{} exists but has no signerd.toml; remove it or choose another --dir",
            dir.display()
        )));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "signerd-dev".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(err(parent.display()))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = build(
        &tmp,
        listen.map_or_else(|| DEV_LISTEN.to_owned(), |a| a.to_string()),
    );
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dir).map_err(err(dir.display()))?;
    Ok(config)
}

fn mkdir(path: &Path) -> Result<(), DevError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err(path.display()))
}

fn build(dir: &Path, listen: String) -> Result<(), DevError> {
    mkdir(dir)?;
    let pki = dir.join("pki");
    mkdir(&pki)?;
    let pki_err = |e: rcgen::Error| DevError(format!("generating the development PKI: {e}"));
    let ca = DevCa::generate("signerd dev CA").map_err(pki_err)?;
    write_new(&pki.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_new(&pki.join("ca-key.pem"), ca.key_pem().as_bytes(), 0o600)?;
    let server = ca
        .issue_server(&["localhost", "127.0.0.1", "::1"])
        .map_err(pki_err)?;
    write_new(&pki.join("server.pem"), server.cert_pem.as_bytes(), 0o644)?;
    write_new(
        &pki.join("server-key.pem"),
        server.key_pem.as_bytes(),
        0o600,
    )?;
    for (client, _) in DEV_CLIENTS {
        let c = ca
            .issue_client(client, &ClientOptions::default())
            .map_err(pki_err)?;
        write_new(
            &pki.join(format!("{client}.pem")),
            c.cert_pem.as_bytes(),
            0o644,
        )?;
        write_new(
            &pki.join(format!("{client}-key.pem")),
            c.key_pem.as_bytes(),
            0o600,
        )?;
    }

    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, secret.as_mut());
    let passphrase = zeroize::Zeroizing::new(hex::encode(secret.as_ref()));
    write_new(
        &dir.join("keystore.pass"),
        format!("{}\n", passphrase.as_str()).as_bytes(),
        0o600,
    )?;
    let passphrase = SecretString::from(passphrase.as_str().to_owned());
    let keys = dir.join("keys");
    mkdir(&keys)?;
    for (id, alg) in [
        (DEV_SECP256K1, Algorithm::Secp256k1),
        (DEV_ED25519, Algorithm::Ed25519),
    ] {
        soft::generate(&keys, id, alg, &passphrase).map_err(|e| DevError(e.to_string()))?;
    }
    // The audit log's checkpoint key lives in its own keystore, never with client keys.
    crate::audit::key::generate(&dir.join("audit-key"), &passphrase)
        .map_err(|e| DevError(e.to_string()))?;

    write_new(
        &dir.join("signerd.toml"),
        config_text(&listen).as_bytes(),
        0o600,
    )?;
    write_new(&dir.join("policy.toml"), POLICY.as_bytes(), 0o644)?;
    Ok(())
}

fn config_text(listen: &str) -> String {
    let mut identities = String::new();
    for (client, role) in DEV_CLIENTS {
        identities.push_str(&format!(
            "[[identity]]\nid = \"{client}\"\nroles = [\"{role}\"]\nsubject_cn = \"{client}\"\n\n"
        ));
    }
    format!(
        r#"# Written by `signerd dev`: a development configuration. Not for production.
# Relative paths are relative to this file.

[server]
listen = "{listen}"

[tls]
cert = "pki/server.pem"
key = "pki/server-key.pem"
client_ca = "pki/ca.pem"

{identities}[policy]
file = "policy.toml"

[keys]
backend = "soft"

[keys.soft]
dir = "keys"
passphrase_file = "keystore.pass"

[state]
dir = "state"

[audit]
dir = "audit"
signing_key_dir = "audit-key"
origin = "signerd-dev/audit"
"#
    )
}

const POLICY: &str = r#"# Written by `signerd dev`: a sample policy. Default deny: only what a rule allows is signed.
version = 1
serial = 1

[[rule]]
id = "app-evm"
description = "app may sign transactions, EIP-191 messages and EIP-712 data with the secp256k1 key"
effect = "allow"
clients = ["app"]
keys = ["dev-secp256k1"]

[[rule]]
id = "app-ed25519-digest"
description = "blind signing must be named: app may sign raw digests with the Ed25519 key only"
effect = "allow"
clients = ["app"]
keys = ["dev-ed25519"]
kinds = ["raw_digest"]
"#;

/// Rewrites the `listen` line of a development configuration.
fn set_listen(config: &Path, addr: SocketAddr) -> Result<(), DevError> {
    let text = std::fs::read_to_string(config).map_err(err(config.display()))?;
    let mut replaced = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !replaced && l.trim_start().starts_with("listen =") {
                replaced = true;
                format!("listen = \"{addr}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !replaced {
        return Err(DevError(format!(
            "{}: no `listen` line to update",
            config.display()
        )));
    }
    let tmp = config.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, (out.join("\n") + "\n").as_bytes(), 0o600)?;
    std::fs::rename(&tmp, config).map_err(err(config.display()))
}

/// The listen address in a development directory's configuration.
pub fn listen_of(dir: &Path) -> Result<SocketAddr, DevError> {
    let config = crate::config::Config::load(&dir.join("signerd.toml"))
        .map_err(|e| DevError(e.to_string()))?;
    Ok(config.server.listen)
}
