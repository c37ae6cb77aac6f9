//! One soft-keystore key file on disk: list, read with a size bound, parse, encrypt, decrypt,
//! and write atomically. The format is specified in the parent module's documentation.
//!
//! This module must never run the KDF with parameters outside the documented bounds, read an
//! unbounded file, overwrite an existing key file, or hold plaintext key bytes or derived keys
//! outside zeroizing buffers.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::keys::key_id as validate_key_id;
use crate::keys::{Algorithm, KeyError};

/// The key file format version this code reads and writes.
pub(super) const FORMAT_VERSION: u32 = 1;
/// Every key file name ends with this.
pub(super) const FILE_SUFFIX: &str = ".key.json";
pub(crate) use crate::keys::files::{ensure_dir, read_bounded, write_temp};

const KDF_NAME: &str = "argon2id";
const CIPHER_NAME: &str = "xchacha20poly1305";
const AAD_LABEL: &str = "signerd-soft-key";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KdfParams {
    /// Memory in KiB.
    pub(super) m_cost_kib: u32,
    /// Passes.
    pub(super) t_cost: u32,
    /// Lanes.
    pub(super) p_cost: u32,
}

impl KdfParams {
    /// What writers use (the OWASP Argon2id recommendation).
    pub(super) const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 19_456,
        t_cost: 2,
        p_cost: 1,
    };
    const M_COST_KIB: std::ops::RangeInclusive<u32> = 8_192..=1_048_576;
    const T_COST: std::ops::RangeInclusive<u32> = 1..=16;
    const P_COST: std::ops::RangeInclusive<u32> = 1..=16;

    /// Refuses parameters that would make the KDF weak or let a file exhaust memory or time.
    fn check(self) -> Result<(), String> {
        let check = |name: &str, value: u32, range: std::ops::RangeInclusive<u32>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "kdf.{name} is {value}; it must be within {}..={}",
                    range.start(),
                    range.end()
                ))
            }
        };
        check("m_cost_kib", self.m_cost_kib, Self::M_COST_KIB)?;
        check("t_cost", self.t_cost, Self::T_COST)?;
        check("p_cost", self.p_cost, Self::P_COST)
    }
}

/// The JSON document, exactly as documented; unknown fields are errors.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    version: u32,
    id: String,
    algorithm: Algorithm,
    public_key: String,
    kdf: KdfJson,
    cipher: CipherJson,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    name: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherJson {
    name: String,
    nonce: String,
    ciphertext: String,
}

/// Read first, so a file from a newer signerd gets a version error, not a schema error.
#[derive(serde::Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

/// What a key file holds once decrypted. The caller still has to check that `secret` yields
/// `public_key`.
pub(crate) struct Opened {
    pub(super) algorithm: Algorithm,
    pub(super) public_key: Vec<u8>,
    pub(super) secret: Zeroizing<[u8; SECRET_LEN]>,
}

fn keystore_err(message: String) -> KeyError {
    KeyError::Keystore(message)
}

/// The AEAD associated data: binds the ciphertext to the file's version, id, algorithm and
/// public key.
fn associated_data(id: &str, algorithm: Algorithm, public_key: &[u8]) -> Vec<u8> {
    format!(
        "{AAD_LABEL}\n{FORMAT_VERSION}\n{id}\n{}\n{}",
        algorithm.as_str(),
        hex::encode(public_key)
    )
    .into_bytes()
}

/// Runs Argon2id. The working memory is zeroized afterwards: it is derived from the passphrase.
fn derive_key(
    passphrase: &SecretString,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, String> {
    params.check()?;
    let argon_params =
        argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| format!("invalid Argon2id parameters: {e}"))?;
    let blocks = argon_params.block_count();
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut memory = Zeroizing::new(vec![argon2::Block::default(); blocks]);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into_with_memory(
            passphrase.expose_secret().as_bytes(),
            salt,
            &mut key[..],
            &mut memory[..],
        )
        .map_err(|e| format!("Argon2id failed: {e}"))?;
    Ok(key)
}

/// Encrypts a key into the bytes of a key file.
pub(super) fn encode(
    id: &str,
    algorithm: Algorithm,
    public_key: &[u8],
    secret: &[u8; SECRET_LEN],
    passphrase: &SecretString,
    params: KdfParams,
) -> Result<Vec<u8>, KeyError> {
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let key = derive_key(passphrase, &salt, params)
        .map_err(|e| keystore_err(format!("key `{id}`: {e}")))?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&key[..]));
    // Capacity for the tag up front: a reallocation would leave a plaintext copy behind.
    let mut buffer = Zeroizing::new(Vec::with_capacity(SECRET_LEN + TAG_LEN));
    buffer.extend_from_slice(secret);
    cipher
        .encrypt_in_place(
            XNonce::from_slice(&nonce),
            &associated_data(id, algorithm, public_key),
            &mut *buffer,
        )
        .map_err(|_| keystore_err(format!("key `{id}`: encryption failed")))?;
    let doc = KeyFileJson {
        version: FORMAT_VERSION,
        id: id.to_owned(),
        algorithm,
        public_key: hex::encode(public_key),
        kdf: KdfJson {
            name: KDF_NAME.to_owned(),
            m_cost_kib: params.m_cost_kib,
            t_cost: params.t_cost,
            p_cost: params.p_cost,
            salt: hex::encode(salt),
        },
        cipher: CipherJson {
            name: CIPHER_NAME.to_owned(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(&buffer[..]),
        },
    };
    let mut out = serde_json::to_vec_pretty(&doc)
        .map_err(|e| keystore_err(format!("key `{id}`: cannot serialize key file: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Decodes a lowercase hex field of an exact length.
fn decode_hex(id: &str, field: &str, value: &str, len: usize) -> Result<Vec<u8>, KeyError> {
    if !value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(keystore_err(format!(
            "key file for `{id}`: {field} must be lowercase hex"
        )));
    }
    let bytes = hex::decode(value)
        .map_err(|e| keystore_err(format!("key file for `{id}`: {field} is not hex: {e}")))?;
    if bytes.len() != len {
        return Err(keystore_err(format!(
            "key file for `{id}`: {field} is {} bytes; expected {len}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Parses and decrypts the bytes of the key file named for `expected_id`.
pub(crate) fn decode(
    expected_id: &str,
    bytes: &[u8],
    passphrase: &SecretString,
) -> Result<Opened, KeyError> {
    let id = expected_id;
    let probe: VersionProbe = serde_json::from_slice(bytes)
        .map_err(|e| keystore_err(format!("key file for `{id}`: invalid JSON: {e}")))?;
    match probe.version {
        Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => {}
        Some(v) => {
            return Err(keystore_err(format!(
                "key file for `{id}`: unsupported version {v}; this signerd reads version \
                 {FORMAT_VERSION}"
            )));
        }
        None => {
            return Err(keystore_err(format!(
                "key file for `{id}`: missing field `version`"
            )));
        }
    }
    let doc: KeyFileJson = serde_json::from_slice(bytes)
        .map_err(|e| keystore_err(format!("key file for `{id}`: {e}")))?;
    if doc.id != expected_id {
        return Err(keystore_err(format!(
            "key file for `{id}` says it holds key {:?}; a key file must be named after its \
             key id",
            doc.id
        )));
    }
    let public_key_len = match doc.algorithm {
        Algorithm::Secp256k1 => 33,
        Algorithm::Ed25519 => 32,
        other @ Algorithm::P256 => {
            return Err(keystore_err(format!(
                "key file for `{id}`: algorithm {other} is not supported by the soft backend"
            )));
        }
    };
    let public_key = decode_hex(id, "public_key", &doc.public_key, public_key_len)?;
    if doc.kdf.name != KDF_NAME {
        return Err(keystore_err(format!(
            "key file for `{id}`: kdf.name is {:?}; expected \"{KDF_NAME}\"",
            doc.kdf.name
        )));
    }
    let params = KdfParams {
        m_cost_kib: doc.kdf.m_cost_kib,
        t_cost: doc.kdf.t_cost,
        p_cost: doc.kdf.p_cost,
    };
    params
        .check()
        .map_err(|e| keystore_err(format!("key file for `{id}`: {e}")))?;
    let salt = decode_hex(id, "kdf.salt", &doc.kdf.salt, SALT_LEN)?;
    if doc.cipher.name != CIPHER_NAME {
        return Err(keystore_err(format!(
            "key file for `{id}`: cipher.name is {:?}; expected \"{CIPHER_NAME}\"",
            doc.cipher.name
        )));
    }
    let nonce = decode_hex(id, "cipher.nonce", &doc.cipher.nonce, NONCE_LEN)?;
    let ciphertext = decode_hex(
        id,
        "cipher.ciphertext",
        &doc.cipher.ciphertext,
        SECRET_LEN + TAG_LEN,
    )?;

    let key = derive_key(passphrase, &salt, params)
        .map_err(|e| keystore_err(format!("key file for `{id}`: {e}")))?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&key[..]));
    let mut buffer = Zeroizing::new(ciphertext);
    cipher
        .decrypt_in_place(
            XNonce::from_slice(&nonce),
            &associated_data(id, doc.algorithm, &public_key),
            &mut *buffer,
        )
        .map_err(|_| {
            keystore_err(format!(
                "cannot decrypt key `{id}`: wrong passphrase or corrupted file"
            ))
        })?;
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    if buffer.len() != SECRET_LEN {
        return Err(keystore_err(format!(
            "key file for `{id}`: decrypted key has the wrong length"
        )));
    }
    secret.copy_from_slice(&buffer);
    Ok(Opened {
        algorithm: doc.algorithm,
        public_key,
        secret,
    })
}

/// The path of key `id` in `dir`.
pub(crate) fn key_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{FILE_SUFFIX}"))
}

/// Every `*.key.json` in `dir` as (id, path), sorted by id. Other names are ignored; a
/// `*.key.json` whose stem is not a valid id is an error, since it was meant to be a key.
pub(super) fn list_key_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, KeyError> {
    let shown = dir.display();
    let meta = fs::metadata(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            keystore_err(format!("keystore directory {shown} does not exist"))
        } else {
            keystore_err(format!("cannot access keystore directory {shown}: {e}"))
        }
    })?;
    if !meta.is_dir() {
        return Err(keystore_err(format!(
            "keystore path {shown} is not a directory"
        )));
    }
    let entries = fs::read_dir(dir)
        .map_err(|e| keystore_err(format!("cannot list keystore directory {shown}: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| keystore_err(format!("cannot list keystore directory {shown}: {e}")))?;
        let name = entry.file_name();
        if !name.as_bytes().ends_with(FILE_SUFFIX.as_bytes()) {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(keystore_err(format!(
                "keystore directory {shown}: key file name {name:?} is not valid UTF-8"
            )));
        };
        let id = &name[..name.len() - FILE_SUFFIX.len()];
        validate_key_id(id).map_err(|e| {
            keystore_err(format!(
                "keystore directory {shown}: key file {name:?}: {e}"
            ))
        })?;
        out.push((id.to_owned(), entry.path()));
    }
    out.sort();
    Ok(out)
}

fn already_exists(dir: &Path, id: &str) -> KeyError {
    keystore_err(format!(
        "key `{id}` already exists in {}; refusing to overwrite it",
        dir.display()
    ))
}

/// Fails if key `id` already has a file (or anything else) under its name.
pub(crate) fn refuse_existing(dir: &Path, id: &str) -> Result<(), KeyError> {
    match fs::symlink_metadata(key_path(dir, id)) {
        Ok(_) => Err(already_exists(dir, id)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(keystore_err(format!(
            "cannot check for key `{id}` in {}: {e}",
            dir.display()
        ))),
    }
}

/// Writes key `id` atomically and never over an existing file: temporary file, fsync,
/// hard link to the final name (fails if it exists), unlink the temporary, fsync the directory.
pub(super) fn write_new(dir: &Path, id: &str, contents: &[u8]) -> Result<PathBuf, KeyError> {
    let final_path = key_path(dir, id);
    let temp = write_temp(dir, &format!("{id}{FILE_SUFFIX}"), contents)?;
    // rename() would replace an existing key; link() refuses to, atomically.
    fs::hard_link(temp.path(), &final_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            already_exists(dir, id)
        } else {
            keystore_err(format!("cannot create {}: {e}", final_path.display()))
        }
    })?;
    drop(temp);
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| {
            keystore_err(format!(
                "cannot fsync keystore directory {}: {e}",
                dir.display()
            ))
        })?;
    Ok(final_path)
}
