//! Vault / OpenBao transit backend.
//!
//! Ed25519 and ECDSA P-256 keys are transit keys named `<key_prefix><key id>`: they sign inside
//! Vault and never leave it. secp256k1 keys, which transit does not have, are transit-wrapped
//! (see [`wrapped`]). Every call has a deadline; a sealed, unreachable or refusing Vault makes
//! signing fail with [`KeyError::Unavailable`] or [`KeyError::CredentialsRefused`] and health go
//! down; while it is down, signing is refused at once ([`KeyBackend::failure`]), and a background
//! task renews the token, probes Vault once a second and follows key rotation,
//! so signing resumes by itself when Vault is back.
//!
//! This backend must never log, format or return the Vault token, the AppRole secret id or a
//! decrypted key, and never return a signature that does not verify under the key's public key.

pub(crate) mod client;
pub mod config;
pub(crate) mod http;
pub(crate) mod transit;
pub(crate) mod wrapped;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use self::client::Connection;
use self::config::VaultKeysConfig;
use self::wrapped::WrappedKey;
use super::{
    Algorithm, AuditKeySpec, KeyBackend, KeyError, KeyHandle, KeyInfo, Payload, Protection,
    RawSignature,
};

/// The backend name reported in [`KeyInfo::backend`] and audit records.
pub const BACKEND_NAME: &str = "vault";

/// How often the background task renews/probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Native keys are re-read (to follow rotation) every this many probes.
const REFRESH_EVERY_PROBES: u32 = 5;

/// Where one key's private half is.
#[derive(Debug, Clone)]
enum Holder {
    /// A transit signing key with this name.
    Transit(String),
    /// A transit-wrapped secp256k1 key.
    Wrapped(Box<WrappedKey>),
}

#[derive(Debug, Clone)]
struct Entry {
    info: KeyInfo,
    holder: Holder,
    /// What transit says about the key (or which key wraps it).
    protection: Protection,
}

type Keys = Arc<RwLock<BTreeMap<String, Entry>>>;

/// Keys held by a Vault or OpenBao server.
pub struct VaultBackend {
    conn: Arc<Connection>,
    mount: String,
    keys: Keys,
    /// The audit checkpoint key (see [`crate::keys::AuditKeySpec`]): a transit key outside the
    /// client key prefix, pinned to `[audit] signing_key_version` so that every checkpoint of
    /// a log is signed by the key `signerctl audit pubkey` prints, whatever rotation adds.
    audit: Option<(KeyInfo, Protection)>,
    /// Stops the maintenance task (it also stops on shutdown).
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultBackend")
            .field("conn", &self.conn)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads the native keys under the prefix: id -> entry.
async fn discover_native(
    conn: &Connection,
    cfg: &VaultKeysConfig,
) -> Result<BTreeMap<String, Entry>, KeyError> {
    let mut out = BTreeMap::new();
    for name in transit::list(conn, &cfg.mount).await? {
        let Some(id) = name.strip_prefix(&cfg.key_prefix) else {
            continue;
        };
        if let Err(e) = crate::keys::key_id(id) {
            tracing::warn!(transit_key = %client::vault_text(&name), error = %e, "ignoring transit key: not a valid key id");
            continue;
        }
        if cfg.wrapping_key.as_deref() == Some(name.as_str()) {
            continue;
        }
        match transit::read(conn, &cfg.mount, &name).await {
            Ok(Some(k)) => {
                let protection = Protection::Transit {
                    name: name.clone(),
                    key_type: k.key_type(),
                    exportable: k.exportable,
                };
                out.insert(
                    id.to_owned(),
                    Entry {
                        info: KeyInfo {
                            id: id.to_owned(),
                            algorithm: k.algorithm,
                            backend: BACKEND_NAME,
                            public_key: k.public_key,
                            version: Some(k.version),
                        },
                        holder: Holder::Transit(name.clone()),
                        protection,
                    },
                );
            }
            Ok(None) => {
                tracing::warn!(transit_key = %client::vault_text(&name), "ignoring transit key: not an ed25519 or ecdsa-p256 key");
            }
            Err(KeyError::Keystore(e)) => {
                tracing::warn!(transit_key = %client::vault_text(&name), error = %e, "ignoring transit key");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl VaultBackend {
    /// Connects and authenticates, discovers the keys (transit keys under the prefix, wrapped
    /// key files) and starts the renewal/probe task. Must run inside a tokio runtime.
    ///
    /// With `audit`, transit key `audit.name` (outside `key_prefix`, so never a client key) is
    /// the audit checkpoint key; it is created (Ed25519, not exportable) when missing and
    /// `audit.create` is set. Without it, when it may not be created, the backend opens
    /// without an audit key.
    pub async fn open(
        cfg: &VaultKeysConfig,
        audit: Option<&AuditKeySpec>,
        background: &crate::tasks::Background,
    ) -> Result<VaultBackend, KeyError> {
        let conn = Connection::open(cfg).await?;
        let mut keys = discover_native(&conn, cfg).await?;
        let audit = match audit {
            Some(spec) => open_audit_key(&conn, cfg, spec).await?,
            None => None,
        };
        if let (Some(wk), Some(dir)) = (&cfg.wrapping_key, &cfg.wrapped_dir) {
            for w in wrapped::load_all(dir, wk)? {
                if keys.contains_key(&w.id) {
                    return Err(KeyError::Keystore(format!(
                        "key `{}` is both a transit key and a wrapped key file",
                        w.id
                    )));
                }
                keys.insert(
                    w.id.clone(),
                    Entry {
                        info: KeyInfo {
                            id: w.id.clone(),
                            algorithm: Algorithm::Secp256k1,
                            backend: BACKEND_NAME,
                            public_key: w.public_key_bytes()?,
                            version: None,
                        },
                        holder: Holder::Wrapped(Box::new(w)),
                        protection: Protection::Wrapped {
                            wrapping_key: wk.clone(),
                        },
                    },
                );
            }
        }
        tracing::info!(keys = keys.len(), address = %cfg.address, "vault key backend opened");
        let keys: Keys = Arc::new(RwLock::new(keys));
        let stop = background.child();
        let work = maintain(conn.clone(), cfg.clone(), keys.clone());
        let stopped = stop.clone();
        background.spawn("vault maintenance", async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                () = work => {}
            }
        });
        Ok(VaultBackend {
            conn,
            mount: cfg.mount.clone(),
            keys,
            audit,
            stop,
        })
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Benchmark baseline: one transit sign call for key `id` over `signed`, with nothing
    /// signerd adds (no parsing, verification or normalization).
    pub async fn transit_sign_only(&self, id: &str, signed: &[u8]) -> Result<(), KeyError> {
        let e = self
            .entry(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        let (Holder::Transit(name), Some(version)) = (&e.holder, e.info.version) else {
            return Err(KeyError::Keystore(format!(
                "key `{id}` is not a native transit key"
            )));
        };
        transit::sign(
            &self.conn,
            &self.mount,
            name,
            e.info.algorithm,
            version,
            signed,
        )
        .await
        .map(|_| ())
    }
}

/// Reads (or creates) the audit checkpoint key: an Ed25519 transit key outside the prefix.
async fn open_audit_key(
    conn: &Connection,
    cfg: &VaultKeysConfig,
    spec: &AuditKeySpec,
) -> Result<Option<(KeyInfo, Protection)>, KeyError> {
    let name = spec.name.as_str();
    // An empty prefix makes every transit key a client key.
    if name.starts_with(&cfg.key_prefix) || cfg.wrapping_key.as_deref() == Some(name) {
        return Err(KeyError::Keystore(format!(
            "the audit checkpoint key `{name}` must be a transit key outside keys.vault.key_prefix \
             `{}` and other than the wrapping key, so that it is never a client key",
            cfg.key_prefix
        )));
    }
    let mut exists = transit::list(conn, &cfg.mount)
        .await?
        .iter()
        .any(|n| n == name);
    if !exists && spec.create {
        transit::create_signing_key(conn, &cfg.mount, name, Algorithm::Ed25519).await?;
        tracing::info!(transit_key = %name, "created the audit checkpoint key in Vault transit");
        exists = true;
    }
    if !exists {
        return Ok(None);
    }
    let k = transit::read_version(conn, &cfg.mount, name, Some(spec.version)).await?;
    match k {
        Some(k) if k.algorithm == Algorithm::Ed25519 => {
            let protection = Protection::Transit {
                name: name.to_owned(),
                key_type: k.key_type(),
                exportable: k.exportable,
            };
            let info = KeyInfo {
                id: name.to_owned(),
                algorithm: Algorithm::Ed25519,
                backend: BACKEND_NAME,
                public_key: k.public_key,
                version: Some(k.version),
            };
            Ok(Some((info, protection)))
        }
        _ => Err(KeyError::Keystore(format!(
            "transit key `{name}` is the audit checkpoint key but is not an ed25519 key"
        ))),
    }
}

/// The background task: token renewal, health probe, and rotation follow-up.
async fn maintain(conn: Arc<Connection>, cfg: VaultKeysConfig, keys: Keys) {
    let mut round = 0u32;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        conn.maintain().await;
        round = round.wrapping_add(1);
        if round.is_multiple_of(REFRESH_EVERY_PROBES) && conn.healthy() {
            refresh(&conn, &cfg, &keys).await;
        }
    }
}

/// Re-reads native keys so that a rotation shows in `GetKey` and signs with the new version.
/// Any change is followed (a new version, a different public key under the same version, a
/// key made exportable): whether the key may still sign is the pins' decision, made before
/// every signature (`service/pins.rs`), not this task's.
async fn refresh(conn: &Connection, cfg: &VaultKeysConfig, keys: &Keys) {
    let names: Vec<(String, String, KeyInfo, Protection)> = {
        let map = keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values()
            .filter_map(|e| match &e.holder {
                Holder::Transit(n) => Some((
                    e.info.id.clone(),
                    n.clone(),
                    e.info.clone(),
                    e.protection.clone(),
                )),
                Holder::Wrapped(_) => None,
            })
            .collect()
    };
    for (id, name, old, old_protection) in names {
        match transit::read(conn, &cfg.mount, &name).await {
            Ok(Some(k)) if k.algorithm == old.algorithm => {
                let protection = Protection::Transit {
                    name: name.clone(),
                    key_type: k.key_type(),
                    exportable: k.exportable,
                };
                if Some(k.version) == old.version
                    && k.public_key == old.public_key
                    && protection == old_protection
                {
                    continue;
                }
                if Some(k.version) == old.version && k.public_key != old.public_key {
                    tracing::warn!(key = %id, version = k.version, "transit key has a different public key under the same version");
                } else {
                    tracing::info!(key = %id, from = ?old.version, to = k.version, "transit key changed");
                }
                let mut map = keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(e) = map.get_mut(&id) {
                    e.info.version = Some(k.version);
                    e.info.public_key = k.public_key;
                    e.protection = protection;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %id, error = %e, "cannot re-read transit key"),
        }
    }
}

#[async_trait]
impl KeyBackend for VaultBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn keys(&self) -> Vec<KeyInfo> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    fn key(&self, id: &str) -> Option<KeyInfo> {
        self.entry(id).map(|e| e.info)
    }

    fn handle(&self, id: &str) -> Option<Arc<dyn KeyHandle>> {
        Some(Arc::new(VaultHandle {
            conn: self.conn.clone(),
            mount: self.mount.clone(),
            keys: self.keys.clone(),
            entry: self.entry(id)?,
        }))
    }

    fn healthy(&self) -> bool {
        self.conn.healthy()
    }

    fn failure(&self) -> Option<KeyError> {
        self.conn.failure()
    }

    fn audit_handle(&self) -> Option<Arc<dyn KeyHandle>> {
        let (info, protection) = self.audit.clone()?;
        Some(Arc::new(AuditHandle {
            conn: self.conn.clone(),
            mount: self.mount.clone(),
            info,
            protection,
        }))
    }
}

/// A client key in Vault: signs with the key as it was when the handle was made, and refuses
/// once rotation changed it (so that the audit record names the version that signed).
struct VaultHandle {
    conn: Arc<Connection>,
    mount: String,
    keys: Keys,
    entry: Entry,
}

#[async_trait]
impl KeyHandle for VaultHandle {
    fn info(&self) -> &KeyInfo {
        &self.entry.info
    }

    fn protection(&self) -> &Protection {
        &self.entry.protection
    }

    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        let info = &self.entry.info;
        let now = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&info.id)
            .map(|e| e.info.clone());
        match now {
            None => return Err(KeyError::NotFound(info.id.clone())),
            Some(now) if now != *info => {
                return Err(KeyError::Unavailable(format!(
                    "key `{}` was rotated (now version {:?}) while the request was prepared for \
                     version {:?}; retry to sign with the new version",
                    info.id, now.version, info.version
                )));
            }
            Some(_) => {}
        }
        sign_entry(&self.conn, &self.mount, &self.entry, payload).await
    }
}

/// The audit checkpoint key: an Ed25519 transit key pinned to one version.
struct AuditHandle {
    conn: Arc<Connection>,
    mount: String,
    info: KeyInfo,
    protection: Protection,
}

#[async_trait]
impl KeyHandle for AuditHandle {
    fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn protection(&self) -> &Protection {
        &self.protection
    }

    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        let info = &self.info;
        let Payload::Message(message) = payload else {
            return Err(KeyError::WrongAlgorithm {
                id: info.id.clone(),
                algorithm: info.algorithm,
                what: "the audit checkpoint key signs checkpoint notes only".to_owned(),
            });
        };
        let version = info.version.unwrap_or(1);
        let answer = transit::sign(
            &self.conn,
            &self.mount,
            &info.id,
            Algorithm::Ed25519,
            version,
            message,
        )
        .await?;
        transit::parse_signature(
            Algorithm::Ed25519,
            &info.public_key,
            version,
            message,
            &answer,
        )
        .map_err(|e| KeyError::Keystore(format!("audit checkpoint key `{}`: {e}", info.id)))
    }
}

/// Signs with one key as the backend held it.
async fn sign_entry(
    conn: &Connection,
    mount: &str,
    entry: &Entry,
    payload: Payload<'_>,
) -> Result<RawSignature, KeyError> {
    let id = entry.info.id.as_str();
    let info = &entry.info;
    let wrong = |what: &str| KeyError::WrongAlgorithm {
        id: id.to_owned(),
        algorithm: info.algorithm,
        what: what.to_owned(),
    };
    let signed: &[u8] = match (info.algorithm, payload) {
        (Algorithm::Ed25519, Payload::Message(m)) => m,
        (Algorithm::P256 | Algorithm::Secp256k1, Payload::Prehash(d)) => d,
        (Algorithm::Ed25519, Payload::Prehash(_)) => {
            return Err(wrong(
                "cannot sign a 32-byte digest with Ed25519; it signs the message itself",
            ));
        }
        (_, Payload::Message(_)) => {
            return Err(wrong(
                "cannot sign a raw message with ECDSA; it signs a digest",
            ));
        }
    };
    match &entry.holder {
        Holder::Wrapped(w) => {
            let Payload::Prehash(digest) = payload else {
                return Err(wrong("wrapped keys sign digests"));
            };
            wrapped::sign(conn, mount, w, digest).await
        }
        Holder::Transit(name) => {
            let version = info
                .version
                .ok_or_else(|| KeyError::Keystore(format!("key `{id}` has no version")))?;
            let answer = transit::sign(conn, mount, name, info.algorithm, version, signed).await?;
            transit::parse_signature(info.algorithm, &info.public_key, version, signed, &answer)
                .map_err(|e| {
                    // Never sign wrongly: a bad answer is refused, and health is unaffected
                    // because Vault itself answered.
                    KeyError::Keystore(format!("key `{id}`: {e}"))
                })
        }
    }
}

/// Creates the audit checkpoint key: Ed25519 transit key `name`, outside the client key
/// prefix. Refuses an existing key.
pub async fn generate_audit_key(cfg: &VaultKeysConfig, name: &str) -> Result<KeyInfo, KeyError> {
    crate::keys::key_id(name)?;
    let conn = Connection::open(cfg).await?;
    if transit::list(&conn, &cfg.mount)
        .await?
        .iter()
        .any(|n| n == name)
    {
        return Err(KeyError::Keystore(format!(
            "transit key `{name}` already exists; refusing to reuse it"
        )));
    }
    let spec = AuditKeySpec {
        name: name.to_owned(),
        create: true,
        version: 1,
    };
    open_audit_key(&conn, cfg, &spec)
        .await?
        .map(|(info, _)| info)
        .ok_or_else(|| KeyError::Keystore(format!("transit key `{name}` was not created")))
}

/// Creates key `id` for `algorithm`: a transit key for Ed25519 and P-256, a transit-wrapped
/// key file for secp256k1. Returns its public facts.
pub async fn generate(
    cfg: &VaultKeysConfig,
    id: &str,
    algorithm: Algorithm,
) -> Result<KeyInfo, KeyError> {
    crate::keys::key_id(id)?;
    let conn = Connection::open(cfg).await?;
    match algorithm {
        Algorithm::Secp256k1 => {
            let (Some(wk), Some(dir)) = (&cfg.wrapping_key, &cfg.wrapped_dir) else {
                return Err(KeyError::Keystore(
                    "secp256k1 keys on the vault backend are transit-wrapped: set \
                     keys.vault.wrapping_key and keys.vault.wrapped_dir"
                        .into(),
                ));
            };
            let name = format!("{}{id}", cfg.key_prefix);
            if transit::list(&conn, &cfg.mount).await?.contains(&name) {
                return Err(KeyError::Keystore(format!(
                    "key `{id}` already exists as transit key `{name}`"
                )));
            }
            let w = wrapped::generate(&conn, &cfg.mount, wk, dir, id).await?;
            Ok(KeyInfo {
                id: id.to_owned(),
                algorithm,
                backend: BACKEND_NAME,
                public_key: w.public_key_bytes()?,
                version: None,
            })
        }
        Algorithm::Ed25519 | Algorithm::P256 => {
            if let Some(dir) = &cfg.wrapped_dir
                && dir.join(format!("{id}{}", wrapped::SUFFIX)).exists()
            {
                return Err(KeyError::Keystore(format!(
                    "key `{id}` already exists as a wrapped key in {}",
                    dir.display()
                )));
            }
            let name = format!("{}{id}", cfg.key_prefix);
            if transit::list(&conn, &cfg.mount).await?.contains(&name) {
                return Err(KeyError::Keystore(format!(
                    "transit key `{name}` already exists; refusing to reuse it"
                )));
            }
            transit::create_signing_key(&conn, &cfg.mount, &name, algorithm).await?;
            let k = transit::read(&conn, &cfg.mount, &name)
                .await?
                .ok_or_else(|| {
                    KeyError::Keystore(format!("transit key `{name}` is not a signing key"))
                })?;
            Ok(KeyInfo {
                id: id.to_owned(),
                algorithm: k.algorithm,
                backend: BACKEND_NAME,
                public_key: k.public_key,
                version: Some(k.version),
            })
        }
    }
}
