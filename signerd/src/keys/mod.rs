//! Key backends: where private keys live and how they sign.
//!
//! Callers see only [`KeyBackend`]: they hand over the exact bytes to sign (a 32-byte digest
//! for ECDSA, the message for Ed25519) and get a normalized signature back. A backend never
//! exposes private key material, and its errors never contain any.

#[cfg(test)]
pub(crate) mod faulty;
pub(crate) mod files;
pub mod hazmat;
pub(crate) mod local;
pub mod pkcs11;
pub mod soft;
pub mod vault;
pub(crate) mod verify;

use async_trait::async_trait;

pub use crate::ids::KeyId;

use std::sync::Arc;

/// A signature algorithm a key supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// ECDSA over secp256k1, as used by EVM chains.
    Secp256k1,
    /// EdDSA over edwards25519 (RFC 8032).
    Ed25519,
    /// ECDSA over NIST P-256.
    P256,
}

impl Algorithm {
    /// The name used in configuration, CLI flags and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Secp256k1 => "secp256k1",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::P256 => "p256",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secp256k1" => Ok(Algorithm::Secp256k1),
            "ed25519" => Ok(Algorithm::Ed25519),
            "p256" => Ok(Algorithm::P256),
            other => Err(format!(
                "unknown algorithm `{other}` (expected secp256k1, ed25519 or p256)"
            )),
        }
    }
}

/// Checks a key id where it enters a backend (a request, a file name, a token label, a
/// transit key name): see [`KeyId`] for the rules every backend's ids follow.
pub fn key_id(id: &str) -> Result<KeyId, KeyError> {
    KeyId::parse(id).map_err(|e| KeyError::Keystore(e.to_string()))
}

/// Public facts about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's id, as named in policy rules and requests.
    pub id: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The backend holding it: `soft`, `pkcs11` or `vault`.
    pub backend: &'static str,
    /// Public key: 33-byte compressed SEC1 for ECDSA, 32 bytes for Ed25519.
    pub public_key: Vec<u8>,
    /// The key version that signs, for backends with versioned keys (Vault transit: the
    /// latest version, which rotation increments); `None` elsewhere.
    pub version: Option<u32>,
}

/// How a backend protects one key, as read from the backend: what its `key.pin` record
/// lists as `checked`, and what decides whether the key is weak ([`Protection::weaknesses`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protection {
    /// A key of the soft keystore: nothing to read beyond the public key.
    Soft,
    /// A private key object in a PKCS#11 token. An attribute the token does not report is
    /// `None` and counts as its unsafe value.
    Token {
        /// The token's serial number.
        serial: String,
        /// The private key's `CKA_ID`.
        ckid: Vec<u8>,
        /// `CKA_SENSITIVE`.
        sensitive: Option<bool>,
        /// `CKA_EXTRACTABLE`.
        extractable: Option<bool>,
        /// `CKA_NEVER_EXTRACTABLE`.
        never_extractable: Option<bool>,
    },
    /// A Vault transit signing key.
    Transit {
        /// The transit key's name.
        name: String,
        /// Transit's `type` (`ed25519`, `ecdsa-p256`).
        key_type: &'static str,
        /// Transit's `exportable`.
        exportable: bool,
    },
    /// A transit-wrapped secp256k1 key (see [`vault`]).
    Wrapped {
        /// The transit key that wraps it.
        wrapping_key: String,
    },
}

/// The soft backend's protection, for handles that return a reference.
pub(crate) static SOFT: Protection = Protection::Soft;

impl Protection {
    /// The protections the key lacks, in the words of `key.pin`'s `weak`: `not_sensitive`,
    /// `extractable`, `was_extractable` (PKCS#11) and `exportable` (Vault transit). Empty for
    /// a key that has them all.
    pub fn weaknesses(&self) -> Vec<&'static str> {
        let mut weak = Vec::new();
        match self {
            Protection::Token {
                sensitive,
                extractable,
                never_extractable,
                ..
            } => {
                if *sensitive != Some(true) {
                    weak.push("not_sensitive");
                }
                if *extractable != Some(false) {
                    weak.push("extractable");
                }
                if *never_extractable != Some(true) {
                    weak.push("was_extractable");
                }
            }
            Protection::Transit { exportable, .. } => {
                if *exportable {
                    weak.push("exportable");
                }
            }
            Protection::Soft | Protection::Wrapped { .. } => {}
        }
        weak
    }

    /// What a `key.pin` record says was checked.
    pub fn checked(&self) -> crate::audit::events::KeyChecked {
        use crate::audit::events::KeyChecked;
        match self {
            Protection::Soft => KeyChecked::default(),
            Protection::Token {
                serial,
                ckid,
                sensitive,
                extractable,
                never_extractable,
            } => KeyChecked {
                ckid: Some(hex::encode(ckid)),
                // What the token does not report is written as its unsafe value.
                extractable: Some(extractable.unwrap_or(true)),
                never_extractable: Some(never_extractable.unwrap_or(false)),
                sensitive: Some(sensitive.unwrap_or(false)),
                token_serial: Some(serial.clone()),
                ..KeyChecked::default()
            },
            Protection::Transit {
                name,
                key_type,
                exportable,
            } => KeyChecked {
                exportable: Some(*exportable),
                key_type: Some((*key_type).to_owned()),
                transit_key: Some(name.clone()),
                ..KeyChecked::default()
            },
            Protection::Wrapped { wrapping_key } => KeyChecked {
                wrapping_key: Some(wrapping_key.clone()),
                ..KeyChecked::default()
            },
        }
    }
}

/// What to sign.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// ECDSA over a digest the daemon computed (keccak256 for EVM).
    Prehash(&'a [u8; 32]),
    /// EdDSA over the message itself.
    Message(&'a [u8]),
}

/// A signature as a backend returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSignature {
    /// ECDSA: `s` is always in the lower half of the order; `y_parity` is the recovery id.
    Ecdsa {
        /// r, big-endian.
        r: [u8; 32],
        /// s, big-endian, low-s normalized.
        s: [u8; 32],
        /// Recovery id (parity of R's y coordinate).
        y_parity: bool,
    },
    /// Ed25519: R || S.
    Ed25519([u8; 64]),
}

/// Why a backend could not sign or answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No key with this id.
    #[error("key `{0}` not found")]
    NotFound(String),
    /// The key exists but cannot sign this payload.
    #[error("key `{id}` is {algorithm}; {what}")]
    WrongAlgorithm {
        /// The key.
        id: String,
        /// Its algorithm.
        algorithm: Algorithm,
        /// What was asked of it.
        what: String,
    },
    /// The backend cannot serve right now (HSM, Vault, keystore).
    #[error("key backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused signerd's own credentials (for example a revoked or expired Vault
    /// token, or one whose policy does not allow the operation). This is the backend being
    /// unavailable, never a policy decision: signing resumes once the credentials work again
    /// (a new token in the token file, an AppRole login).
    #[error("key backend refused its credentials: {0}")]
    CredentialsRefused(String),
    /// A key store or key file is invalid or cannot be used.
    #[error("keystore: {0}")]
    Keystore(String),
}

/// The audit log's checkpoint signing key, held by a backend that also holds client keys
/// (`[audit] signing_key_backend = "pkcs11"` or `"vault"`). The backend keeps it apart: it is
/// never listed by [`KeyBackend::keys`], never found by [`KeyBackend::key`] and never handed
/// out by [`KeyBackend::handle`]; only [`KeyBackend::audit_handle`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeySpec {
    /// Its name in the backend: the PKCS#11 `CKA_LABEL`, or the Vault transit key name.
    pub name: String,
    /// Generate it (Ed25519) when the backend does not hold it yet.
    pub create: bool,
    /// For keys with versions (Vault transit): the version that signs, whatever rotation
    /// adds, so that every checkpoint of a log is signed by one key.
    pub version: u32,
}

/// One key that signs, as a backend hands it out (in the spirit of RustCrypto's `signature`
/// traits, async because a token or a server does the signing): its public facts, and the one
/// operation. A handle signs with exactly the key its [`KeyHandle::info`] describes; callers
/// that need the key to be unchanged since a request was prepared compare the info of a fresh
/// handle (Vault transit rotation changes a key under the same id).
#[async_trait]
pub trait KeyHandle: Send + Sync + 'static {
    /// The key's public facts.
    fn info(&self) -> &KeyInfo;
    /// How the backend protects the key, as read when the backend last looked at it.
    fn protection(&self) -> &Protection;
    /// Signs `payload`. ECDSA results are low-s normalized with their recovery id; a result
    /// that does not verify under the key is an error, never returned.
    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError>;
}

/// A place where private keys live: it lists its keys and hands out a [`KeyHandle`] for each.
#[async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// `soft`, `pkcs11` or `vault`.
    fn name(&self) -> &'static str;
    /// Every key, sorted by id.
    fn keys(&self) -> Vec<KeyInfo>;
    /// One key by id.
    fn key(&self, id: &str) -> Option<KeyInfo>;
    /// The handle that signs with key `id`, as the key is now.
    fn handle(&self, id: &str) -> Option<Arc<dyn KeyHandle>>;
    /// Signs `payload` with key `id` (tools and tests; the pipeline signs through a handle).
    async fn sign(&self, id: &str, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        let handle = self
            .handle(id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        handle.sign(payload).await
    }
    /// Whether the backend can sign right now. Backends that depend on a device or a server
    /// report its failure here (health turns NOT_SERVING) and recover by themselves; the
    /// value must be cheap to read, as it is polled.
    fn healthy(&self) -> bool {
        true
    }
    /// Why the backend cannot sign right now, while it is not [`healthy`](KeyBackend::healthy):
    /// the failure that took it down when the backend knows it. Signing is refused with this
    /// error at once, without waiting for a backend that is known to be down, until the
    /// backend's own health check finds it back.
    fn failure(&self) -> Option<KeyError> {
        (!self.healthy()).then(|| {
            KeyError::Unavailable(format!(
                "the {} key backend reports itself unhealthy",
                self.name()
            ))
        })
    }
    /// The audit checkpoint key this backend was opened with (see [`AuditKeySpec`]), if it
    /// holds one: an Ed25519 handle that signs checkpoint notes and nothing else. It is never
    /// listed by [`KeyBackend::keys`] nor handed out by [`KeyBackend::handle`].
    fn audit_handle(&self) -> Option<Arc<dyn KeyHandle>> {
        None
    }
    /// (sessions in use, sessions configured) for backends with a session pool.
    fn sessions(&self) -> Option<(usize, usize)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose health the test sets.
    struct Flaky(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl KeyBackend for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn keys(&self) -> Vec<KeyInfo> {
            Vec::new()
        }
        fn key(&self, _: &str) -> Option<KeyInfo> {
            None
        }
        fn handle(&self, _: &str) -> Option<Arc<dyn KeyHandle>> {
            None
        }
        fn healthy(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A backend that only reports health still gets a failure to refuse with while it is down,
    /// and none once it is back.
    #[test]
    fn an_unhealthy_backend_reports_a_failure_until_it_is_back() {
        let b = Flaky(std::sync::atomic::AtomicBool::new(false));
        let Some(e) = b.failure() else {
            panic!("a backend that is down reports no failure");
        };
        assert!(matches!(&e, KeyError::Unavailable(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "key backend unavailable: the flaky key backend reports itself unhealthy"
        );
        b.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(b.failure().is_none());
    }
}
