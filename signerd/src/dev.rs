//! `signerd dev`: a complete development installation in one directory, created on first run
//! and reused afterwards.
//!
//! The directory holds a development CA and certificates (server for localhost; clients `app`,
//! `alice`, `bob`, `carol`, `admin`), an encrypted software keystore with one secp256k1 and one
//! Ed25519 key, the audit log's own checkpoint key (`audit-key/`), a sample policy signed by
//! the development policy administrator (`policy-admin.key`, trusted by the configuration's
//! `[policy.trust]`), the configuration, and (once the daemon runs) the state store and the audit log. It is built in
//! a temporary sibling directory and renamed into place, so an interrupted first run never
//! leaves a half-made directory behind. Nothing here is fit for production: the CA key and the
//! keystore passphrase sit next to what they protect.
//!
//! With [`DevBackend::Pkcs11`], the two keys are generated inside a SoftHSM2 token created in
//! `hsm/` (configuration, token store and a random PIN), and the configuration uses the PKCS#11
//! backend. SoftHSM2 finds its configuration through `SOFTHSM2_CONF`, which the caller sets
//! to [`softhsm_conf`] before anything loads the module.

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
/// The development policy administrator, who signs the sample policy.
pub const DEV_ADMINISTRATOR: &str = "dev-admin";
/// The development policy administrator's key file (the Ed25519 seed, 64 hex digits, mode
/// 0600), in the development directory.
pub const DEV_ADMINISTRATOR_KEY: &str = "policy-admin.key";
/// The development audit log's origin, to which policy signatures are bound.
const DEV_ORIGIN: &str = "signerd-dev/audit";
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

/// Where the development keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevBackend {
    /// The encrypted software keystore in `keys/`.
    Soft,
    /// A SoftHSM2 token in `hsm/`.
    Pkcs11,
}

impl DevBackend {
    fn name(self) -> &'static str {
        match self {
            DevBackend::Soft => "soft",
            DevBackend::Pkcs11 => crate::keys::pkcs11::BACKEND_NAME,
        }
    }
}

/// The token label of the development SoftHSM2 token.
pub const DEV_TOKEN: &str = "signerd-dev";

/// Where Debian, Ubuntu, Fedora and Homebrew install SoftHSM2's PKCS#11 module.
pub const SOFTHSM_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 configuration file of a development directory (absolute when `dir` is).
pub fn softhsm_conf(dir: &Path) -> PathBuf {
    dir.join("hsm").join("softhsm2.conf")
}

const SOFTHSM_TEMPLATE: &str = include_str!("../../hsm-config/softhsm2.conf.template");

/// Makes sure `dir` holds a development installation; returns its configuration file.
///
/// With `listen`, the configuration is (re)written to listen there. An existing directory
/// made for another backend is refused.
pub fn prepare(
    dir: &Path,
    listen: Option<SocketAddr>,
    backend: DevBackend,
) -> Result<PathBuf, DevError> {
    let config = dir.join("signerd.toml");
    if config.exists() {
        let made = crate::config::Config::load(&config).map_err(|e| DevError(e.to_string()))?;
        if made.keys.backend.as_str() != backend.name() {
            return Err(DevError(format!(
                "{} was made for the {} backend, not {}; choose another --dir",
                dir.display(),
                made.keys.backend,
                backend.name()
            )));
        }
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
        dir,
        listen.map_or_else(|| DEV_LISTEN.to_owned(), |a| a.to_string()),
        backend,
    );
    let pending = match built {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, dir).map_err(err(dir.display()))?;
    if let Some(text) = pending {
        // Until signerd.toml is written the directory is refused as half-made; on failure it
        // is removed, as nothing in it has been used.
        if let Err(e) = finish_pkcs11(dir, &text) {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
    }
    Ok(config)
}

/// Initializes the SoftHSM2 token in its final place, generates the development keys in it,
/// and writes the configuration.
fn finish_pkcs11(dir: &Path, config_text: &str) -> Result<(), DevError> {
    // `signerd dev` sets SOFTHSM2_CONF from the absolute directory (so it holds wherever the
    // process runs); the directory given may be relative.
    let conf = softhsm_conf(&std::path::absolute(dir).map_err(err(dir.display()))?);
    if std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str()) {
        return Err(DevError(format!(
            "SOFTHSM2_CONF must be {} to create the development token",
            conf.display()
        )));
    }
    let hsm = dir.join("hsm");
    let read = |name: &str| {
        crate::config::SecretSource {
            file: Some(hsm.join(name)),
            ..Default::default()
        }
        .read(name)
        .map_err(DevError)
    };
    let (pin, so_pin) = (read("pin")?, read("so-pin")?);
    use secrecy::ExposeSecret;
    // softhsm2-util takes PINs only as arguments; they are random, local, and development-only.
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", DEV_TOKEN, "--pin"])
        .arg(pin.expose_secret())
        .arg("--so-pin")
        .arg(so_pin.expose_secret())
        .output()
        .map_err(|e| {
            DevError(format!(
                "running softhsm2-util: {e} (install SoftHSM2: apt-get install softhsm2)"
            ))
        })?;
    if !out.status.success() {
        return Err(DevError(format!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let config = crate::config::Config::parse("signerd.toml", config_text, dir)
        .map_err(|e| DevError(e.to_string()))?;
    let cfg = config
        .keys
        .pkcs11
        .ok_or_else(|| DevError("the development configuration has no [keys.pkcs11]".into()))?;
    for (id, alg) in [
        (DEV_SECP256K1, Algorithm::Secp256k1),
        (DEV_ED25519, Algorithm::Ed25519),
    ] {
        crate::keys::pkcs11::Pkcs11Backend::generate(&cfg, &pin, id, alg)
            .map_err(|e| DevError(format!("generating `{id}` in SoftHSM2: {e}")))?;
    }
    write_new(&dir.join("signerd.toml"), config_text.as_bytes(), 0o600)
}

fn mkdir(path: &Path) -> Result<(), DevError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err(path.display()))
}

/// Builds the installation in `dir` (renamed to `target` afterwards). For the PKCS#11 backend the
/// token cannot be made before it is in its final place (SoftHSM2's configuration names its
/// store by path), so the configuration text is returned for [`finish_pkcs11`] to write last.
fn build(
    dir: &Path,
    target: &Path,
    listen: String,
    backend: DevBackend,
) -> Result<Option<String>, DevError> {
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
    let dev_keys = [
        (DEV_SECP256K1, Algorithm::Secp256k1),
        (DEV_ED25519, Algorithm::Ed25519),
    ];
    let keys_toml = match backend {
        DevBackend::Soft => {
            let keys = dir.join("keys");
            mkdir(&keys)?;
            for (id, alg) in dev_keys {
                soft::generate(&keys, id, alg, &passphrase).map_err(|e| DevError(e.to_string()))?;
            }
            SOFT_KEYS.to_owned()
        }
        DevBackend::Pkcs11 => {
            let module = softhsm_files(dir, target)?;
            format!(
                "[keys]\nbackend = \"pkcs11\"\n\n[keys.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{DEV_TOKEN}\"\npin_file = \"hsm/pin\"\n",
                module.display()
            )
        }
    };
    // The audit log's checkpoint key lives in its own keystore, never with client keys.
    crate::audit::key::generate(&dir.join("audit-key"), &passphrase)
        .map_err(|e| DevError(e.to_string()))?;

    // The policy administrator: its key signs the policy, its public key is the trust anchor.
    let admin = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let seed = zeroize::Zeroizing::new(format!("{}\n", hex::encode(admin.to_bytes())));
    write_new(&dir.join(DEV_ADMINISTRATOR_KEY), seed.as_bytes(), 0o600)?;
    let admin_public = format!("ed25519:{}", hex::encode(admin.verifying_key().to_bytes()));
    let governance = format!(
        "threshold = 1\ntighten_threshold = 1\nadministrators = {{ {DEV_ADMINISTRATOR} = \"{admin_public}\" }}\n"
    );
    let policy_text = format!("{POLICY}\n[governance]\n{governance}");
    let policy = signerd_policy::Policy::parse("policy.toml", &policy_text)
        .map_err(|e| DevError(format!("the sample policy: {e}")))?;
    write_new(&dir.join("policy.toml"), policy_text.as_bytes(), 0o644)?;
    let sig = crate::policy_file::sign(&admin, DEV_ADMINISTRATOR, DEV_ORIGIN, &policy);
    write_new(
        &dir.join("policy.toml.sig"),
        sig.to_toml().as_bytes(),
        0o644,
    )?;
    let config = config_text(&listen, &keys_toml, backend, &governance);
    if backend == DevBackend::Soft {
        write_new(&dir.join("signerd.toml"), config.as_bytes(), 0o600)?;
        return Ok(None);
    }
    Ok(Some(config))
}

const SOFT_KEYS: &str = "[keys]\nbackend = \"soft\"\n\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n";

/// Writes the SoftHSM2 files in `dir/hsm` (built in `dir`, used from `target`): the
/// configuration from the template, naming the token store at its final place, and a random
/// PIN and SO PIN. Returns the module's path.
fn softhsm_files(dir: &Path, target: &Path) -> Result<PathBuf, DevError> {
    let module = SOFTHSM_MODULE_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            DevError(format!(
                "SoftHSM2 is not installed (no libsofthsm2.so in {SOFTHSM_MODULE_PATHS:?}); \
                 install it (Debian/Ubuntu: apt-get install softhsm2)"
            ))
        })?;
    let hsm = dir.join("hsm");
    mkdir(&hsm.join("tokens"))?;
    // Absolute, so the token is found from whatever directory signerd or signerctl runs in.
    let target = std::path::absolute(target).map_err(err(target.display()))?;
    let conf = SOFTHSM_TEMPLATE.replace(
        "@TOKENDIR@",
        &target.join("hsm").join("tokens").display().to_string(),
    );
    write_new(&hsm.join("softhsm2.conf"), conf.as_bytes(), 0o600)?;
    for name in ["pin", "so-pin"] {
        let mut raw = zeroize::Zeroizing::new([0u8; 12]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, raw.as_mut());
        let pin = zeroize::Zeroizing::new(hex::encode(raw.as_ref()));
        write_new(
            &hsm.join(name),
            format!("{}\n", pin.as_str()).as_bytes(),
            0o600,
        )?;
    }
    Ok(PathBuf::from(module))
}

fn config_text(listen: &str, keys: &str, backend: DevBackend, governance: &str) -> String {
    let audit_pass = match backend {
        DevBackend::Soft => "",
        DevBackend::Pkcs11 => "signing_key_passphrase_file = \"keystore.pass\"\n",
    };
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
# `signerctl bench` opens one connection per client, all as `app`: room for 768 of them.
max_connections_per_identity = 768

[tls]
cert = "pki/server.pem"
key = "pki/server-key.pem"
client_ca = "pki/ca.pem"

{identities}[policy]
file = "policy.toml"

# Who signs the first policy (later ones: the administrators of the policy in force).
[policy.trust]
{governance}
{keys}
[state]
dir = "state"

[audit]
dir = "audit"
signing_key_dir = "audit-key"
origin = "{DEV_ORIGIN}"
{audit_pass}"#
    )
}

const POLICY: &str = r#"# Written by `signerd dev`: a sample policy. Default deny: only what a rule allows is signed.
version = 1
serial = 1

[[rule]]
id = "app-evm-tx"
description = "app may sign transactions with the secp256k1 key; the fee is capped at 1,000,000 gas x 500 gwei (0.5 ETH)"
effect = "allow"
clients = ["app"]
keys = ["dev-secp256k1"]
kinds = ["native_transfer", "erc20_transfer", "erc20_transfer_from", "erc20_approve", "contract_call", "contract_creation"]
gas_limit_max = 1000000
max_fee_per_gas_max = "500 gwei"

[[rule]]
id = "app-evm-messages"
description = "app may sign EIP-191 text messages of up to 1 KiB (32-byte and binary messages are blind signing: not allowed)"
effect = "allow"
clients = ["app"]
keys = ["dev-secp256k1"]
kinds = ["eip191_message"]
message_max_bytes = 1024

[[rule]]
id = "app-evm-mail"
description = "opaque EIP-712 data is allowed only by name: app may sign the EIP-712 specification's Mail example"
effect = "allow"
clients = ["app"]
keys = ["dev-secp256k1"]
kinds = ["eip712_typed_data"]
primary_types = ["Mail"]

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
