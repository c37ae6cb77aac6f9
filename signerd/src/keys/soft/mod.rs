//! Software keystore: private keys encrypted at rest in a directory, decrypted once at start-up
//! and held in zeroizing memory. For development and tests; never the production default.
//!
//! This backend must never write a key file in place or over another key, print or log key
//! material or the passphrase (errors and `Debug` name key ids only), run the password KDF on
//! the signing path, or use a decrypted key whose public key differs from the stored one.
//!
//! # Keystore layout
//!
//! A keystore is a directory with one file per key, named `<id>.key.json`. Key ids are 1 to 64
//! characters from `A-Z a-z 0-9 . _ -` and do not start with `.`. Files whose names do not end
//! in `.key.json` are ignored. A key file is at most 65,536 bytes, is created with mode `0600`
//! and is written atomically: a temporary file `.<id>.key.json.tmp-<random>` in the same
//! directory is written and fsynced, hard-linked to its final name (which fails if that name
//! exists, so a key is never overwritten), unlinked, and the directory is fsynced.
//! [`generate`] creates a missing keystore directory with mode `0700`.
//!
//! # Key file format, version 1
//!
//! ```json
//! {
//!   "version": 1,
//!   "id": "treasury-hot",
//!   "algorithm": "secp256k1",
//!   "public_key": "02…",
//!   "kdf": {
//!     "name": "argon2id",
//!     "m_cost_kib": 19456,
//!     "t_cost": 2,
//!     "p_cost": 1,
//!     "salt": "…"
//!   },
//!   "cipher": {
//!     "name": "xchacha20poly1305",
//!     "nonce": "…",
//!     "ciphertext": "…"
//!   }
//! }
//! ```
//!
//! - Every field is required; unknown fields are errors. All byte strings are lowercase hex.
//! - `version`: the integer `1`.
//! - `id`: the key id; it must equal the file name without `.key.json`.
//! - `algorithm`: `"secp256k1"` or `"ed25519"`.
//! - `public_key`: 33 bytes, compressed SEC1, for secp256k1; 32 bytes (RFC 8032 encoding) for
//!   ed25519.
//! - `kdf`: Argon2id (RFC 9106), version 0x13, output 32 bytes, over the UTF-8 bytes of the
//!   passphrase with the 16-byte `salt`. Writers use `m_cost_kib` 19456, `t_cost` 2,
//!   `p_cost` 1; readers accept `m_cost_kib` 8192..=1048576 (1 GiB), `t_cost` 1..=16 and
//!   `p_cost` 1..=16 and refuse anything else before running the KDF.
//! - `cipher`: XChaCha20-Poly1305 with the Argon2id output as key and the 24-byte `nonce`.
//!   `ciphertext` is the encryption of the 32-byte private key (the big-endian secp256k1
//!   scalar, or the RFC 8032 ed25519 seed) followed by the 16-byte tag: 48 bytes.
//! - The associated data binds the file to its key: the UTF-8 bytes of
//!   `"signerd-soft-key\n" + version + "\n" + id + "\n" + algorithm + "\n" + public_key`,
//!   where `version` is in decimal and `public_key` is the lowercase hex above. A file renamed
//!   to another id, or with its algorithm or public key changed, fails to decrypt.
//! - After decryption the private key must yield exactly `public_key`, or the key is refused.
//!
//! Salts, nonces and keys come from the operating system's random number generator.

pub(crate) mod file;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ed25519_dalek::Signer as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::{Algorithm, KeyBackend, KeyError, KeyHandle, KeyInfo, Payload, RawSignature};

/// The backend name reported in [`KeyInfo::backend`] and audit records.
pub const BACKEND_NAME: &str = "soft";

/// Keys decrypted from an encrypted keystore directory, held in zeroizing memory.
pub struct SoftBackend {
    keys: BTreeMap<String, Arc<Entry>>,
}

/// One decrypted key and its public facts.
struct Entry {
    info: KeyInfo,
    secret: SecretKey,
}

/// A private key in memory. Both signing key types zeroize themselves on drop.
pub(crate) enum SecretKey {
    /// ECDSA over secp256k1.
    Secp256k1(k256::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
}

impl SecretKey {
    /// Builds a key from its 32 raw secret bytes (big-endian scalar or Ed25519 seed).
    ///
    /// The error never contains the bytes.
    pub(crate) fn from_bytes(algorithm: Algorithm, secret: &[u8; 32]) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Secp256k1 => k256::ecdsa::SigningKey::from_slice(secret)
                .map(SecretKey::Secp256k1)
                .map_err(|_| {
                    KeyError::Keystore(
                        "not a valid secp256k1 private key (zero or not below the group order)"
                            .to_owned(),
                    )
                }),
            Algorithm::Ed25519 => Ok(SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                secret,
            ))),
            Algorithm::P256 => Err(unsupported(algorithm)),
        }
    }

    /// A fresh random key from the operating system's generator.
    fn random(algorithm: Algorithm) -> Result<Self, KeyError> {
        match algorithm {
            Algorithm::Secp256k1 => Ok(SecretKey::Secp256k1(k256::ecdsa::SigningKey::random(
                &mut rand_core::OsRng,
            ))),
            Algorithm::Ed25519 => Ok(SecretKey::Ed25519(ed25519_dalek::SigningKey::generate(
                &mut rand_core::OsRng,
            ))),
            Algorithm::P256 => Err(unsupported(algorithm)),
        }
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            SecretKey::Secp256k1(_) => Algorithm::Secp256k1,
            SecretKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// 33-byte compressed SEC1 for secp256k1, 32 bytes for Ed25519.
    pub(crate) fn public_key(&self) -> Vec<u8> {
        match self {
            SecretKey::Secp256k1(k) => k.verifying_key().to_encoded_point(true).as_bytes().to_vec(),
            SecretKey::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    /// The 32 raw secret bytes, for encryption only.
    fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        match self {
            SecretKey::Secp256k1(k) => {
                let mut bytes = k.to_bytes();
                out.copy_from_slice(&bytes);
                zeroize::Zeroize::zeroize(bytes.as_mut_slice());
            }
            SecretKey::Ed25519(k) => {
                let bytes = Zeroizing::new(k.to_bytes());
                out.copy_from_slice(&bytes[..]);
            }
        }
        out
    }
}

/// The error for algorithms this backend cannot hold.
fn unsupported(algorithm: Algorithm) -> KeyError {
    KeyError::Keystore(format!(
        "algorithm {algorithm} is not supported by the soft backend (use secp256k1 or ed25519)"
    ))
}

/// Refuses an empty passphrase: it would leave every key protected by the KDF alone.
fn check_passphrase(passphrase: &SecretString) -> Result<(), KeyError> {
    if passphrase.expose_secret().is_empty() {
        return Err(KeyError::Keystore(
            "the keystore passphrase is empty; refusing to use it".to_owned(),
        ));
    }
    Ok(())
}

impl std::fmt::Debug for SoftBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: key material and public keys stay out of logs.
        f.debug_struct("SoftBackend")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SoftBackend {
    /// Opens and decrypts every key file in `dir`.
    ///
    /// Runs Argon2id once per key (tens of milliseconds each), so call it at start-up or on a
    /// blocking thread. Fails if the directory is missing, if any `*.key.json` file cannot be
    /// read, parsed or decrypted, or if a decrypted key does not match its public key. An empty
    /// directory gives a backend with no keys.
    pub fn open(dir: &Path, passphrase: &SecretString) -> Result<SoftBackend, KeyError> {
        check_passphrase(passphrase)?;
        let mut keys = BTreeMap::new();
        for (id, path) in file::list_key_files(dir)? {
            let bytes = file::read_bounded(&path)?;
            let opened = file::decode(&id, &bytes, passphrase)?;
            let secret = SecretKey::from_bytes(opened.algorithm, &opened.secret).map_err(|e| {
                KeyError::Keystore(format!("key `{id}` in {}: {e}", path.display()))
            })?;
            if secret.public_key() != opened.public_key {
                return Err(KeyError::Keystore(format!(
                    "key `{id}` in {}: the decrypted private key does not match the stored \
                     public key; refusing to use it",
                    path.display()
                )));
            }
            let info = KeyInfo {
                id: id.clone(),
                algorithm: opened.algorithm,
                backend: BACKEND_NAME,
                public_key: opened.public_key,
                version: None,
            };
            keys.insert(id, Arc::new(Entry { info, secret }));
        }
        Ok(SoftBackend { keys })
    }

    /// The ids of the keys held, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// The decrypted key with this id (tests check it against independent implementations).
    #[cfg(test)]
    pub(crate) fn secret(&self, id: &str) -> Option<&SecretKey> {
        self.keys.get(id).map(|e| &e.secret)
    }
}

/// The ids of the keys in the keystore `dir`, sorted, read from the file names without the
/// passphrase and without decrypting anything (`signerctl policy check --config`).
pub fn list_ids(dir: &Path) -> Result<Vec<String>, KeyError> {
    Ok(file::list_key_files(dir)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Generates a new key `id` in `dir`, encrypted under `passphrase`.
///
/// Creates `dir` (mode `0700`) if it is missing. Refuses an invalid id, an id that already
/// exists, an empty passphrase and algorithms other than secp256k1 and ed25519.
pub fn generate(
    dir: &Path,
    id: &str,
    algorithm: Algorithm,
    passphrase: &SecretString,
) -> Result<KeyInfo, KeyError> {
    // Check everything cheap before generating, so errors come before any work.
    crate::keys::key_id(id)?;
    if algorithm == Algorithm::P256 {
        return Err(unsupported(algorithm));
    }
    let secret = SecretKey::random(algorithm)?;
    store_new_key(dir, id, &secret, passphrase)
}

/// Encrypts `secret` under `passphrase` and writes it as the new key `id` in `dir`.
///
/// Shared by [`generate`] and the import functions in [`crate::keys::hazmat`].
pub(crate) fn store_new_key(
    dir: &Path,
    id: &str,
    secret: &SecretKey,
    passphrase: &SecretString,
) -> Result<KeyInfo, KeyError> {
    crate::keys::key_id(id)?;
    check_passphrase(passphrase)?;
    file::ensure_dir(dir)?;
    // Fail before the KDF runs; the hard link at the end is what really prevents overwrites.
    file::refuse_existing(dir, id)?;
    let algorithm = secret.algorithm();
    let public_key = secret.public_key();
    let secret_bytes = secret.secret_bytes();
    let contents = file::encode(
        id,
        algorithm,
        &public_key,
        &secret_bytes,
        passphrase,
        file::KdfParams::DEFAULT,
    )?;
    // A key that exists only in an unreadable file is money lost: prove the bytes we are
    // about to write decrypt back to this very key before writing them.
    let check = file::decode(id, &contents, passphrase)?;
    if check.secret[..] != secret_bytes[..]
        || check.public_key != public_key
        || check.algorithm != algorithm
    {
        return Err(KeyError::Keystore(format!(
            "key `{id}`: the encrypted key file does not decrypt back to the key; nothing written"
        )));
    }
    file::write_new(dir, id, &contents)?;
    Ok(KeyInfo {
        id: id.to_owned(),
        algorithm,
        backend: BACKEND_NAME,
        public_key,
        version: None,
    })
}

impl SoftBackend {
    /// Signs with key `id` on this thread: soft keys sign in microseconds and never wait, so
    /// a caller outside the runtime (the audit writer) needs no executor.
    pub fn sign_now(&self, id: &str, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        self.keys
            .get(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?
            .sign(payload)
    }
}

impl Entry {
    fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        let id = self.info.id.as_str();
        let wrong = |what: &str| KeyError::WrongAlgorithm {
            id: id.to_owned(),
            algorithm: self.info.algorithm,
            what: what.to_owned(),
        };
        match (&self.secret, payload) {
            (SecretKey::Secp256k1(key), Payload::Prehash(digest)) => {
                crate::keys::local::sign_prehash(id, key, digest)
            }
            (SecretKey::Ed25519(key), Payload::Message(message)) => {
                Ok(RawSignature::Ed25519(key.sign(message).to_bytes()))
            }
            (SecretKey::Secp256k1(_), Payload::Message(_)) => Err(wrong(
                "cannot sign a raw message with ECDSA; it signs a 32-byte digest (Payload::Prehash)",
            )),
            (SecretKey::Ed25519(_), Payload::Prehash(_)) => Err(wrong(
                "cannot sign a 32-byte digest with Ed25519; it signs the message itself \
                 (Payload::Message)",
            )),
        }
    }
}

/// A soft key's handle: the decrypted key itself, shared.
struct SoftHandle(Arc<Entry>);

#[async_trait]
impl KeyHandle for SoftHandle {
    fn info(&self) -> &KeyInfo {
        &self.0.info
    }

    fn protection(&self) -> &super::Protection {
        &super::SOFT
    }

    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        // Signing takes microseconds and never touches the KDF, so it runs inline.
        self.0.sign(payload)
    }
}

#[async_trait]
impl KeyBackend for SoftBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn keys(&self) -> Vec<KeyInfo> {
        // BTreeMap iterates in id order, which is the order the trait promises.
        self.keys.values().map(|e| e.info.clone()).collect()
    }

    fn key(&self, id: &str) -> Option<KeyInfo> {
        self.keys.get(id).map(|e| e.info.clone())
    }

    fn handle(&self, id: &str) -> Option<Arc<dyn KeyHandle>> {
        let entry = self.keys.get(id)?;
        Some(Arc::new(SoftHandle(entry.clone())))
    }
}
