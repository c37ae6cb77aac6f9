//! The audit log's own checkpoint signing key: an Ed25519 key in a soft keystore of its own
//! (`[audit] signing_key_dir`), holding nothing else; or, with `[audit] signing_key_backend =
//! "pkcs11"` or `"vault"`, an Ed25519 key in the token or Vault server of `[keys]`, which the
//! backend keeps apart from client keys ([`crate::keys::AuditKeySpec`], [`HeldCheckpointKey`]).
//!
//! The key file uses the soft keystore format (see [`crate::keys::soft`]) under the fixed id
//! [`AUDIT_KEY_ID`]; its passphrase comes from `[audit] signing_key_passphrase_file` or
//! `signing_key_passphrase_env`, or else from the `[keys.soft]` passphrase source. The key is
//! opened in its own backend instance that the signing service never sees, so no client
//! request can reach it. This module must never load the audit key from, or write it to, the
//! client keystore, accept a key directory that holds other keys, or print key material.

use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;
use signerd_auditor::note::{CheckpointSigner, VerifierKey};

use crate::config::{Backend, Config};
use crate::keys::soft::{self, SoftBackend};
use crate::keys::{Algorithm, AuditKeySpec, KeyBackend, KeyInfo, Payload, RawSignature};

/// The key id of the audit signing key inside its keystore directory.
pub const AUDIT_KEY_ID: &str = "audit-checkpoint";

/// Why the audit signing key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The key is missing and may not be created here.
    #[error("{0}")]
    Missing(String),
    /// The keystore cannot be read, decrypted or written, or holds the wrong keys.
    #[error("{0}")]
    Keystore(String),
}

/// The verifier key of an audit key (`what` names it in errors) under the checkpoint origin
/// `name`: the key must be Ed25519, and a bad origin fails at start rather than at the first
/// checkpoint.
fn checkpoint_verifier(
    info: &KeyInfo,
    name: &str,
    what: &str,
) -> Result<VerifierKey, AuditKeyError> {
    if info.algorithm != Algorithm::Ed25519 {
        return Err(AuditKeyError::Keystore(format!(
            "{what} is {}, but checkpoints are signed with ed25519",
            info.algorithm
        )));
    }
    let public_key: [u8; 32] = info
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| AuditKeyError::Keystore(format!("{what} has a malformed public key")))?;
    VerifierKey::new(name, &public_key)
        .map_err(|e| AuditKeyError::Keystore(format!("audit.origin: {e}")))
}

/// The verifier key of a backend-held audit key (as [`KeyBackend::audit_key`] or key
/// generation describes it) under the checkpoint origin `origin`.
pub fn held_verifier_key(info: &KeyInfo, origin: &str) -> Result<VerifierKey, AuditKeyError> {
    checkpoint_verifier(
        info,
        origin,
        &format!("the audit checkpoint key `{}`", info.id),
    )
}

/// The key that verifies the checkpoints of `signer`.
pub fn verifier_of(signer: &dyn CheckpointSigner) -> Result<VerifierKey, AuditKeyError> {
    VerifierKey::new(signer.name(), &signer.public_key())
        .map_err(|e| AuditKeyError::Keystore(e.to_string()))
}

/// The audit signing key, opened from its keystore directory.
pub struct SoftCheckpointKey {
    name: String,
    backend: SoftBackend,
    public_key: [u8; 32],
}

impl std::fmt::Debug for SoftCheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftCheckpointKey")
            .field("name", &self.name)
            .field("public_key", &hex::encode(self.public_key))
            .finish()
    }
}

/// True if `dir` holds the audit key file.
pub fn exists(dir: &Path) -> bool {
    dir.join(format!("{AUDIT_KEY_ID}.key.json")).exists()
}

/// Generates the audit signing key in `dir` (created with mode 0700 if missing). Refuses to
/// overwrite an existing key.
pub fn generate(dir: &Path, passphrase: &SecretString) -> Result<KeyInfo, AuditKeyError> {
    soft::generate(dir, AUDIT_KEY_ID, Algorithm::Ed25519, passphrase).map_err(|e| {
        AuditKeyError::Keystore(format!("audit signing key in {}: {e}", dir.display()))
    })
}

impl SoftCheckpointKey {
    /// Opens the key in `dir`; `name` is the checkpoint origin. Runs the password KDF, so call
    /// it at start-up.
    pub fn open(
        dir: &Path,
        name: &str,
        passphrase: &SecretString,
    ) -> Result<SoftCheckpointKey, AuditKeyError> {
        let shown = dir.display();
        if !exists(dir) {
            return Err(AuditKeyError::Missing(format!(
                "no audit signing key in {shown} (create one with `signerctl audit keygen --config FILE`)"
            )));
        }
        let backend = SoftBackend::open(dir, passphrase)
            .map_err(|e| AuditKeyError::Keystore(format!("audit signing key in {shown}: {e}")))?;
        let ids = backend.ids();
        if ids != [AUDIT_KEY_ID] {
            return Err(AuditKeyError::Keystore(format!(
                "{shown} must hold only the audit signing key `{AUDIT_KEY_ID}`, but holds {ids:?}; keep the audit key apart from every other key"
            )));
        }
        let info = backend.key(AUDIT_KEY_ID).ok_or_else(|| {
            AuditKeyError::Keystore(format!("{shown}: `{AUDIT_KEY_ID}` disappeared"))
        })?;
        let public_key =
            checkpoint_verifier(&info, name, &format!("{shown}: `{AUDIT_KEY_ID}`"))?.public_key();
        Ok(SoftCheckpointKey {
            name: name.to_owned(),
            backend,
            public_key,
        })
    }

    /// The key that verifies its checkpoints.
    pub fn verifier_key(&self) -> Result<VerifierKey, AuditKeyError> {
        verifier_of(self)
    }
}

impl CheckpointSigner for SoftCheckpointKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        match self
            .backend
            .sign_now(AUDIT_KEY_ID, Payload::Message(message))
        {
            Ok(RawSignature::Ed25519(sig)) => Ok(sig),
            Ok(_) => Err("the audit key returned a signature of the wrong kind".to_owned()),
            Err(e) => Err(format!("the audit key cannot sign: {e}")),
        }
    }
}

/// The passphrase of the audit signing key: its own `[audit] signing_key_passphrase_*` source,
/// else the `[keys.soft]` passphrase.
pub fn passphrase(config: &Config) -> Result<SecretString, String> {
    let source = config.audit.signing_key_passphrase_source();
    if source != crate::config::SecretSource::default() {
        source.read("audit.signing_key_passphrase")
    } else if let Some(soft) = &config.keys.soft {
        soft.passphrase()
    } else {
        Err("audit: no passphrase source for the audit signing key".to_owned())
    }
}

/// True if `dir` holds no audit segment yet (a missing directory is a new log).
pub fn log_is_new(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |entries| {
        !entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(signerd_auditor::segments::parse_segment_name)
                .is_some()
        })
    })
}

/// What to ask of the key backend when the audit key lives there (`signing_key_backend` is
/// `pkcs11` or `vault`): its name, and whether it may be created. `None` for a soft audit key.
pub fn backend_spec(config: &Config, create: bool) -> Option<AuditKeySpec> {
    match config.audit.signing_key_backend {
        Backend::Pkcs11 | Backend::Vault => Some(AuditKeySpec {
            name: config.audit.signing_key_name.clone(),
            create,
            version: config.audit.signing_key_version.unwrap_or(1),
        }),
        Backend::Soft => None,
    }
}

/// The daemon's audit signing key: whether it was just created, and the key that verifies
/// its checkpoints.
pub struct DaemonKey {
    /// Signs checkpoints.
    pub signer: Arc<dyn CheckpointSigner>,
    /// Verifies them.
    pub verifier: VerifierKey,
    /// The key was generated now, for a new log: its verifier key goes to auditors.
    pub generated: bool,
}

impl std::fmt::Debug for DaemonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonKey")
            .field("verifier", &self.verifier.to_string())
            .field("generated", &self.generated)
            .finish()
    }
}

/// Opens the configured audit signing key for the daemon. A missing key is generated only
/// when the audit log is new (no segment exists yet), so a lost key is never silently
/// replaced under an existing log. `keys` is the serving key backend: a `pkcs11` or `vault`
/// audit key is the one it was opened with ([`backend_spec`], `create` = [`log_is_new`]).
pub fn open_for_daemon(
    config: &Config,
    keys: &Arc<dyn KeyBackend>,
) -> Result<DaemonKey, AuditKeyError> {
    let a = &config.audit;
    if backend_spec(config, false).is_some() {
        let key = HeldCheckpointKey::new(keys.clone(), &a.origin).map_err(|e| match e {
            AuditKeyError::Missing(m) if !log_is_new(&a.dir) => AuditKeyError::Missing(format!(
                "{m}, but the audit log in {} already exists; restore the key, or create a new one with `signerctl audit keygen --config {}` and start a new audit directory (checkpoints of one log are signed by one key)",
                a.dir.display(),
                config.source.display()
            )),
            other => other,
        })?;
        let verifier = key.verifier_key()?;
        return Ok(DaemonKey {
            signer: Arc::new(key),
            verifier,
            generated: log_is_new(&a.dir),
        });
    }
    let pass = passphrase(config).map_err(AuditKeyError::Keystore)?;
    let mut generated = false;
    if !exists(&a.signing_key_dir) {
        if !log_is_new(&a.dir) {
            return Err(AuditKeyError::Missing(format!(
                "no audit signing key in {}, but the audit log in {} already exists; restore the key, or create a new one with `signerctl audit keygen --config {}` and start a new audit directory (checkpoints of one log are signed by one key)",
                a.signing_key_dir.display(),
                a.dir.display(),
                config.source.display()
            )));
        }
        generate(&a.signing_key_dir, &pass)?;
        generated = true;
    }
    let key = SoftCheckpointKey::open(&a.signing_key_dir, &a.origin, &pass)?;
    let verifier = key.verifier_key()?;
    Ok(DaemonKey {
        signer: Arc::new(key),
        verifier,
        generated,
    })
}

/// Longest wait for one checkpoint signature from a token or Vault (each backend call has its
/// own, shorter deadline too). The writer thread waits this long at most, then retries later.
const HELD_SIGN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One checkpoint to sign, and where its signature goes.
type SignJob = (
    Vec<u8>,
    std::sync::mpsc::SyncSender<Result<[u8; 64], String>>,
);

/// The audit signing key held by the serving key backend (PKCS#11 token or Vault transit):
/// its [`KeyHandle`], driven by one task on the daemon's runtime. The audit writer thread
/// hands each checkpoint to the task and waits for its signature; no executor runs on the
/// writer thread, and no thread is started per checkpoint.
///
/// The task is owned by this key, not by the daemon's [`crate::tasks::Background`]: the audit
/// log signs its last checkpoint after every background task has stopped, so the task ends
/// when the key is dropped with the audit log.
pub struct HeldCheckpointKey {
    name: String,
    public_key: [u8; 32],
    backend: &'static str,
    jobs: tokio::sync::mpsc::UnboundedSender<SignJob>,
}

impl std::fmt::Debug for HeldCheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCheckpointKey")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("public_key", &hex::encode(self.public_key))
            .finish()
    }
}

impl HeldCheckpointKey {
    /// The audit key `backend` was opened with; `name` is the checkpoint origin. Must be
    /// called inside a tokio runtime, which then runs every signing call.
    pub fn new(backend: Arc<dyn KeyBackend>, name: &str) -> Result<Self, AuditKeyError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AuditKeyError::Keystore("the audit key needs the daemon's async runtime".to_owned())
        })?;
        let key = backend.audit_handle().ok_or_else(|| {
            AuditKeyError::Missing(format!(
                "the {} backend holds no audit checkpoint key (create one with `signerctl audit keygen --config FILE`)",
                backend.name()
            ))
        })?;
        let public_key = held_verifier_key(key.info(), name)?.public_key();
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<SignJob>();
        runtime.spawn(async move {
            // Ends when the key, the only sender, is dropped.
            while let Some((message, reply)) = queue.recv().await {
                let signed =
                    tokio::time::timeout(HELD_SIGN_TIMEOUT, key.sign(Payload::Message(&message)))
                        .await;
                let answer = match signed {
                    Err(_) => Err(format!(
                        "the audit key did not sign within {} s",
                        HELD_SIGN_TIMEOUT.as_secs()
                    )),
                    Ok(Err(e)) => Err(format!("the audit key cannot sign: {e}")),
                    Ok(Ok(RawSignature::Ed25519(sig))) => Ok(sig),
                    Ok(Ok(RawSignature::Ecdsa { .. })) => {
                        Err("the audit key returned a signature of the wrong kind".to_owned())
                    }
                };
                // The writer may have stopped waiting; its signature is then simply dropped.
                let _ = reply.send(answer);
            }
        });
        Ok(HeldCheckpointKey {
            name: name.to_owned(),
            public_key,
            backend: backend.name(),
            jobs,
        })
    }

    /// The key that verifies its checkpoints.
    pub fn verifier_key(&self) -> Result<VerifierKey, AuditKeyError> {
        verifier_of(self)
    }
}

impl CheckpointSigner for HeldCheckpointKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The token's or Vault's signature is verified against the key's public key, read at
    /// start-up, by the key backend (`keys::verify::check_ed25519`) before it reaches here.
    fn verifies_its_signatures(&self) -> bool {
        true
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send((message.to_vec(), reply))
            .map_err(|_| "the audit key's signing task has stopped".to_owned())?;
        // A little longer than the task's own deadline, so that its answer says why.
        let wait = HELD_SIGN_TIMEOUT + std::time::Duration::from_secs(1);
        let receive = || {
            answer.recv_timeout(wait).unwrap_or_else(|_| {
                Err(format!(
                    "the audit key did not sign within {} s",
                    wait.as_secs()
                ))
            })
        };
        // Usually the writer thread. Start-up may sign on a runtime worker: the worker is
        // handed back to the runtime while it waits, so the signing task can run.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(receive)
            }
            _ => receive(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::audit::note::{Checkpoint, verify_note};

    #[test]
    fn generate_open_sign_and_refuse_mixed_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit-key");
        let pass = SecretString::from("audit-key-test-pass".to_owned());
        assert!(!exists(&dir));
        let err = SoftCheckpointKey::open(&dir, "o", &pass).unwrap_err();
        assert!(matches!(err, AuditKeyError::Missing(_)), "{err}");
        let info = generate(&dir, &pass).unwrap();
        assert_eq!(info.algorithm, Algorithm::Ed25519);
        assert!(
            generate(&dir, &pass).is_err(),
            "a second key must be refused"
        );
        let key = SoftCheckpointKey::open(&dir, "audit.test/log", &pass).unwrap();
        assert_eq!(key.public_key().to_vec(), info.public_key);
        let debug = format!("{key:?}");
        assert!(debug.contains("audit.test/log"), "{debug}");

        let cp = Checkpoint {
            origin: "audit.test/log".to_owned(),
            size: 3,
            root: [1; 32],
        };
        let note = cp.sign(&key).unwrap();
        assert_eq!(
            verify_note(&note, &key.verifier_key().unwrap()).unwrap(),
            cp
        );

        let wrong = SecretString::from("wrong".to_owned());
        assert!(SoftCheckpointKey::open(&dir, "audit.test/log", &wrong).is_err());
        assert!(SoftCheckpointKey::open(&dir, "bad name", &pass).is_err());
        soft::generate(&dir, "client-key", Algorithm::Secp256k1, &pass).unwrap();
        let err = SoftCheckpointKey::open(&dir, "audit.test/log", &pass).unwrap_err();
        assert!(err.to_string().contains("must hold only"), "{err}");
    }
}
