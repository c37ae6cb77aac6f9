//! Transit-wrapped secp256k1 keys: transit has no secp256k1, so signerd generates the key,
//! has Vault encrypt it under a derived transit key (envelope encryption) and stores only the
//! ciphertext. Each signature decrypts the key through Vault into zeroizing memory, signs, and
//! drops it, so sealing Vault or revoking the token stops these keys at once.
//!
//! This module must never write or log the plaintext key, keep it after a signature, or sign
//! with a decrypted key whose public key differs from the stored one.
//!
//! # Wrapped key file, version 1
//!
//! One file per key in `wrapped_dir`, named `<id>.wrapped.json`, mode `0600`, written
//! atomically and never over an existing file, at most 65,536 bytes:
//!
//! ```json
//! {"version":1,"id":"evm-hot","algorithm":"secp256k1","public_key":"02…",
//!  "wrapping_key":"signerd-wrap","ciphertext":"vault:v1:…"}
//! ```
//!
//! Every field is required and unknown fields are errors. `ciphertext` is transit's encryption
//! of the base64 of the 32-byte big-endian private scalar under the derived `wrapping_key`,
//! with the derivation context being the UTF-8 bytes of
//! `"signerd-vault-wrapped\n1\n" + id + "\nsecp256k1\n" + public_key` (public key in
//! lowercase hex): a file renamed to another id or given another public key fails to decrypt.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::Connection;
use super::transit;
use crate::keys::files::{ensure_dir, read_bounded, write_temp};
use crate::keys::{Algorithm, KeyError, RawSignature};

/// File name suffix of wrapped key files.
pub(crate) const SUFFIX: &str = ".wrapped.json";

/// A wrapped key file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WrappedKey {
    pub(crate) version: u32,
    pub(crate) id: String,
    pub(crate) algorithm: Algorithm,
    /// Lowercase hex, 33-byte compressed SEC1.
    pub(crate) public_key: String,
    pub(crate) wrapping_key: String,
    pub(crate) ciphertext: String,
}

impl WrappedKey {
    /// The derivation context that binds the ciphertext to this key.
    pub(crate) fn context(&self) -> Vec<u8> {
        context(&self.id, &self.public_key)
    }

    /// The public key's bytes.
    pub(crate) fn public_key_bytes(&self) -> Result<Vec<u8>, KeyError> {
        hex::decode(&self.public_key)
            .map_err(|_| KeyError::Keystore(format!("wrapped key `{}`: bad public_key", self.id)))
    }
}

fn context(id: &str, public_key_hex: &str) -> Vec<u8> {
    format!("signerd-vault-wrapped\n1\n{id}\nsecp256k1\n{public_key_hex}").into_bytes()
}

fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{SUFFIX}"))
}

/// Reads and checks every wrapped key file in `dir` (a missing directory holds none).
pub(crate) fn load_all(dir: &Path, wrapping_key: &str) -> Result<Vec<WrappedKey>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KeyError::Keystore(format!(
                "keys.vault.wrapped_dir {}: {e}",
                dir.display()
            )));
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            KeyError::Keystore(format!("keys.vault.wrapped_dir {}: {e}", dir.display()))
        })?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if id.starts_with('.') {
            continue;
        }
        crate::keys::key_id(id)?;
        let path = entry.path();
        let bytes = read_bounded(&path)?;
        let key = parse(id, &path, &bytes, wrapping_key)?;
        out.push(key);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Parses and checks the bytes of the wrapped key file `path`, named for key `id`, against the
/// configured wrapping key.
pub(crate) fn parse(
    id: &str,
    path: &Path,
    bytes: &[u8],
    wrapping_key: &str,
) -> Result<WrappedKey, KeyError> {
    let key: WrappedKey = serde_json::from_slice(bytes)
        .map_err(|e| KeyError::Keystore(format!("{}: {e}", path.display())))?;
    let bad = |what: &str| KeyError::Keystore(format!("{}: {what}", path.display()));
    if key.version != 1 {
        return Err(bad(&format!("unsupported version {}", key.version)));
    }
    if key.id != id {
        return Err(bad(&format!(
            "id `{}` does not match the file name",
            key.id
        )));
    }
    if key.algorithm != Algorithm::Secp256k1 {
        return Err(bad("only secp256k1 keys are wrapped"));
    }
    if key.wrapping_key != wrapping_key {
        return Err(bad(&format!(
            "wrapped under `{}`, but keys.vault.wrapping_key is `{wrapping_key}`",
            key.wrapping_key
        )));
    }
    let pk = key.public_key_bytes()?;
    if k256::PublicKey::from_sec1_bytes(&pk).is_err() || pk.len() != 33 {
        return Err(bad("public_key is not a compressed secp256k1 point"));
    }
    transit::split_versioned(&key.ciphertext).map_err(|e| bad(&format!("ciphertext {e}")))?;
    Ok(key)
}

/// Generates a secp256k1 key, wraps it under `wrapping_key` and writes its file. Returns the
/// stored key; the plaintext is gone when this returns.
pub(crate) async fn generate(
    conn: &Connection,
    mount: &str,
    wrapping_key: &str,
    dir: &Path,
    id: &str,
) -> Result<WrappedKey, KeyError> {
    crate::keys::key_id(id)?;
    ensure_dir(dir)?;
    let final_path = path_of(dir, id);
    if std::fs::symlink_metadata(&final_path).is_ok() {
        return Err(KeyError::Keystore(format!(
            "wrapped key `{id}` already exists at {}; refusing to overwrite it",
            final_path.display()
        )));
    }
    transit::ensure_wrapping_key(conn, mount, wrapping_key).await?;
    let key = k256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let public_key = hex::encode(key.verifying_key().to_encoded_point(true).as_bytes());
    let secret = zeroize::Zeroizing::new(<[u8; 32]>::from(key.to_bytes()));
    drop(key);
    let ciphertext = transit::wrap(
        conn,
        mount,
        wrapping_key,
        &context(id, &public_key),
        &secret,
    )
    .await?;
    drop(secret);
    let stored = WrappedKey {
        version: 1,
        id: id.to_owned(),
        algorithm: Algorithm::Secp256k1,
        public_key,
        wrapping_key: wrapping_key.to_owned(),
        ciphertext,
    };
    // Prove the round trip before the key is ever used.
    let check = unwrap_key(conn, mount, &stored).await?;
    drop(check);
    let json = serde_json::to_vec_pretty(&stored)
        .map_err(|e| KeyError::Keystore(format!("wrapped key `{id}`: {e}")))?;
    let temp = write_temp(dir, &format!("{id}{SUFFIX}"), &json)?;
    std::fs::hard_link(temp.path(), &final_path)
        .map_err(|e| KeyError::Keystore(format!("cannot create {}: {e}", final_path.display())))?;
    drop(temp);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KeyError::Keystore(format!("cannot fsync {}: {e}", dir.display())))?;
    Ok(stored)
}

/// Decrypts a wrapped key through Vault and checks it against its stored public key.
async fn unwrap_key(
    conn: &Connection,
    mount: &str,
    key: &WrappedKey,
) -> Result<k256::ecdsa::SigningKey, KeyError> {
    let secret = transit::unwrap(
        conn,
        mount,
        &key.wrapping_key,
        &key.context(),
        &key.ciphertext,
    )
    .await?;
    let signing = k256::ecdsa::SigningKey::from_slice(&secret[..]).map_err(|_| {
        KeyError::Keystore(format!(
            "wrapped key `{}` decrypted to an invalid secp256k1 key",
            key.id
        ))
    })?;
    if signing.verifying_key().to_encoded_point(true).as_bytes()
        != key.public_key_bytes()?.as_slice()
    {
        return Err(KeyError::Keystore(format!(
            "wrapped key `{}` decrypted to a key that does not match its public key; refusing \
             to use it",
            key.id
        )));
    }
    Ok(signing)
}

/// Signs a digest with a wrapped key: decrypt, sign (low-s, recovery id), drop the key.
pub(crate) async fn sign(
    conn: &Connection,
    mount: &str,
    key: &WrappedKey,
    digest: &[u8; 32],
) -> Result<RawSignature, KeyError> {
    let signing = unwrap_key(conn, mount, key).await?;
    // SigningKey zeroizes its scalar on drop.
    crate::keys::local::sign_prehash(&key.id, &signing, digest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn sample(id: &str) -> WrappedKey {
        let key = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        WrappedKey {
            version: 1,
            id: id.to_owned(),
            algorithm: Algorithm::Secp256k1,
            public_key: hex::encode(key.verifying_key().to_encoded_point(true).as_bytes()),
            wrapping_key: "signerd-wrap".to_owned(),
            ciphertext: "vault:v1:AAAA".to_owned(),
        }
    }

    fn write(dir: &Path, name: &str, body: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .unwrap();
        f.write_all(body.as_bytes()).unwrap();
    }

    #[test]
    fn valid_files_load_and_others_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "evm.wrapped.json",
            &serde_json::to_string(&sample("evm")).unwrap(),
        );
        write(dir.path(), "notes.txt", "ignored");
        write(dir.path(), ".evm.wrapped.json.tmp-1", "ignored");
        let keys = load_all(dir.path(), "signerd-wrap").unwrap();
        assert_eq!(keys, vec![sample("evm")]);
        assert_eq!(
            keys[0].context(),
            format!(
                "signerd-vault-wrapped\n1\nevm\nsecp256k1\n{}",
                keys[0].public_key
            )
            .into_bytes()
        );
        assert!(
            load_all(&dir.path().join("missing"), "w")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn inconsistent_files_are_refused() {
        let good = serde_json::to_value(sample("evm")).unwrap();
        for (edit, want) in [
            (
                ("id", serde_json::json!("other")),
                "does not match the file name",
            ),
            (("version", serde_json::json!(2)), "unsupported version 2"),
            (
                ("algorithm", serde_json::json!("ed25519")),
                "only secp256k1",
            ),
            (
                ("wrapping_key", serde_json::json!("w2")),
                "wrapped under `w2`",
            ),
            (
                ("public_key", serde_json::json!("02ff")),
                "not a compressed secp256k1 point",
            ),
            (
                ("ciphertext", serde_json::json!("plain")),
                "ciphertext does not start",
            ),
            (("extra", serde_json::json!(1)), "unknown field"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut v = good.clone();
            v[edit.0] = edit.1;
            write(dir.path(), "evm.wrapped.json", &v.to_string());
            let e = load_all(dir.path(), "signerd-wrap")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{}: {e}", edit.0);
        }
    }
}
