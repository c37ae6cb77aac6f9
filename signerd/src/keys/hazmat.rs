//! Dangerous key operations: importing existing private keys into the software keystore.
//!
//! Importing means raw secret bytes pass through this process, so everything here is reachable
//! only from operator tooling, never from the signing API. These functions must never print,
//! log or return the secret, a password, or anything derived from them in an error; every
//! intermediate copy of secret bytes lives in a [`Zeroizing`] buffer.
//!
//! Ethereum keystore v3 files are parsed, bounded and decrypted in memory by `keystore_v3`:
//! the operator's file is read once, with a size bound, and never copied to disk.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::soft::{self, SecretKey};
use super::{Algorithm, KeyError, KeyInfo};

pub(crate) mod keystore_v3;

/// Imports a raw 32-byte private key (big-endian secp256k1 scalar or Ed25519 seed) as the new
/// key `id` in the keystore `dir`, encrypted under `passphrase`.
///
/// Refuses secrets of any other length, secp256k1 scalars that are zero or not below the
/// group order, p256, an existing or invalid id, and an empty passphrase.
pub fn import_secret(
    dir: &Path,
    id: &str,
    algorithm: Algorithm,
    secret: Zeroizing<Vec<u8>>,
    passphrase: &SecretString,
) -> Result<KeyInfo, KeyError> {
    crate::keys::key_id(id)?;
    if secret.len() != 32 {
        return Err(KeyError::Keystore(format!(
            "cannot import key `{id}`: a raw private key is 32 bytes, this one is {}",
            secret.len()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(&secret);
    drop(secret);
    let key = SecretKey::from_bytes(algorithm, &bytes)
        .map_err(|e| KeyError::Keystore(format!("cannot import key `{id}`: {e}")))?;
    soft::store_new_key(dir, id, &key, passphrase)
}

/// Imports the secp256k1 key in an Ethereum keystore v3 file (scrypt or PBKDF2-HMAC-SHA256,
/// AES-128-CTR) as the new key `id` in the keystore `dir`, encrypted under `passphrase`.
///
/// The v3 file is checked before any KDF runs: at most 64 KiB, `version` 3, cipher
/// `aes-128-ctr` with a 16-byte IV, a 32-byte ciphertext and MAC, `dklen` 32, scrypt `n` a
/// power of two with memory `128·r·(n+p)` at most 257 MiB and `n·r·p` at most 2^24, PBKDF2
/// with `hmac-sha256` and at most 10,000,000 iterations. If the file has an `address`, the
/// imported key must have that address.
pub fn import_keystore_v3(
    dir: &Path,
    id: &str,
    v3_json_path: &Path,
    v3_password: &SecretString,
    passphrase: &SecretString,
) -> Result<KeyInfo, KeyError> {
    crate::keys::key_id(id)?;
    let shown = v3_json_path.display().to_string();
    let err = |message: String| KeyError::Keystore(format!("keystore v3 file {shown}: {message}"));

    let bytes = crate::keys::files::read_bounded(v3_json_path)?;
    let v3 = keystore_v3::Keystore::parse(&bytes).map_err(|e| err(e.to_string()))?;

    // Fail on the cheap checks before the expensive KDF.
    crate::keys::files::ensure_dir(dir)?;
    soft::file::refuse_existing(dir, id)?;
    let secret = v3
        .decrypt(v3_password.expose_secret().as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let key =
        SecretKey::from_bytes(Algorithm::Secp256k1, &secret).map_err(|e| err(e.to_string()))?;
    drop(secret);
    if let (Some(expected), SecretKey::Secp256k1(k)) = (v3.address(), &key) {
        let actual = evm_address(k.verifying_key()).0.0;
        if actual != expected {
            return Err(err(format!(
                "its address 0x{} does not match the decrypted key's address 0x{}",
                hex::encode(expected),
                hex::encode(actual)
            )));
        }
    }
    soft::store_new_key(dir, id, &key, passphrase)
}

/// The EVM address of a secp256k1 public key (a valid point by construction). The
/// uncompressed SEC1 encoding is always 65 bytes, `0x04 || x || y`, so the slice handed to
/// `from_raw_public_key` is the 64 bytes it requires.
pub(crate) fn evm_address(key: &k256::ecdsa::VerifyingKey) -> alloy_primitives::Address {
    alloy_primitives::Address::from_raw_public_key(&key.to_encoded_point(false).as_bytes()[1..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use secrecy::SecretString;
    use zeroize::Zeroizing;

    use super::keystore_v3::tests::{
        ETH_KEYFILE_SCRYPT_R8, PBKDF2_VECTOR, SCRYPT_R1_SMALL, SCRYPT_VECTOR, VECTOR_ADDRESS,
        VECTOR_PRIVATE_KEY,
    };
    use super::{import_keystore_v3, import_secret};
    use crate::keys::soft::SoftBackend;
    use crate::keys::soft::tests::{TempDir, verify_secp256k1};
    use crate::keys::{Algorithm, KeyBackend, KeyError, Payload, RawSignature};

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    /// The compressed public key of the vectors' private key, computed independently of the
    /// import path.
    fn expected_public_key() -> Vec<u8> {
        let secret = hex::decode(VECTOR_PRIVATE_KEY).unwrap();
        let key = k256::ecdsa::SigningKey::from_slice(&secret).unwrap();
        key.verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec()
    }

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn keystore_message(e: KeyError) -> String {
        match e {
            KeyError::Keystore(m) => m,
            other => panic!("expected a keystore error, got {other:?}"),
        }
    }

    async fn check_imported(dir: &Path, id: &str) {
        let backend = SoftBackend::open(dir, &pass("new passphrase")).unwrap();
        let info = backend.key(id).unwrap();
        assert_eq!(info.algorithm, Algorithm::Secp256k1);
        assert_eq!(info.public_key, expected_public_key());
        let digest = [7u8; 32];
        let sig = backend.sign(id, Payload::Prehash(&digest)).await.unwrap();
        verify_secp256k1(&info.public_key, &digest, &sig);
    }

    fn import_vector(vector: &str, name: &str) {
        let tmp = TempDir::new(name);
        let v3 = write(tmp.path(), "v3.json", vector);
        let keys = tmp.path().join("keys");
        let info = import_keystore_v3(
            &keys,
            "imported",
            &v3,
            &pass("testpassword"),
            &pass("new passphrase"),
        )
        .unwrap();
        assert_eq!(info.public_key, expected_public_key());
        assert_eq!(
            hex::encode(super::evm_address(
                &k256::ecdsa::VerifyingKey::from_sec1_bytes(&info.public_key).unwrap()
            )),
            VECTOR_ADDRESS
        );
        // No temporary copy of the v3 file is left in the keystore.
        let names: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["imported.key.json".to_owned()]);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(check_imported(&keys, "imported"));
    }

    #[test]
    fn import_v3_pbkdf2_vector() {
        import_vector(PBKDF2_VECTOR, "v3-pbkdf2");
    }

    #[test]
    fn import_v3_scrypt_vector_with_r_1() {
        // n=2^18, r=1, p=8: what web3.py and older eth-account write.
        import_vector(SCRYPT_VECTOR, "v3-scrypt-r1");
        import_vector(SCRYPT_R1_SMALL, "v3-scrypt-r1-small");
    }

    #[test]
    fn import_v3_eth_keyfile_scrypt() {
        // r=8 and a mixed-case address without 0x, as eth-keyfile writes them.
        import_vector(ETH_KEYFILE_SCRYPT_R8, "v3-scrypt-eth-keyfile");
    }

    #[test]
    fn import_v3_with_matching_address_and_capitalized_crypto() {
        let tmp = TempDir::new("v3-address");
        let vector = PBKDF2_VECTOR.replace("\"crypto\"", "\"Crypto\"").replace(
            "\"version\" : 3",
            &format!("\"version\" : 3, \"address\": \"{VECTOR_ADDRESS}\""),
        );
        let v3 = write(tmp.path(), "v3.json", &vector);
        let info = import_keystore_v3(
            tmp.path(),
            "a",
            &v3,
            &pass("testpassword"),
            &pass("new passphrase"),
        )
        .unwrap();
        assert_eq!(info.public_key, expected_public_key());
    }

    #[test]
    fn import_v3_wrong_address_refused() {
        let tmp = TempDir::new("v3-bad-address");
        let vector = PBKDF2_VECTOR.replace(
            "\"version\" : 3",
            "\"version\" : 3, \"address\": \"0x0000000000000000000000000000000000000001\"",
        );
        let v3 = write(tmp.path(), "v3.json", &vector);
        let msg = keystore_message(
            import_keystore_v3(tmp.path(), "a", &v3, &pass("testpassword"), &pass("pp"))
                .unwrap_err(),
        );
        assert!(msg.contains("does not match"), "{msg}");
        assert!(!tmp.path().join("a.key.json").exists());
    }

    #[test]
    fn import_v3_wrong_password_refused() {
        let tmp = TempDir::new("v3-wrong-password");
        let v3 = write(tmp.path(), "v3.json", PBKDF2_VECTOR);
        let keys = tmp.path().join("keys");
        let msg = keystore_message(
            import_keystore_v3(
                &keys,
                "imported",
                &v3,
                &pass("not the password"),
                &pass("new passphrase"),
            )
            .unwrap_err(),
        );
        assert!(msg.contains("wrong password"), "{msg}");
        assert!(!msg.contains("not the password"), "{msg}");
        assert!(!msg.contains(VECTOR_PRIVATE_KEY), "{msg}");
        assert!(!keys.join("imported.key.json").exists());
        // Nothing but the (empty) keystore directory remains.
        assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    }

    #[test]
    fn import_v3_hostile_parameters_refused_before_kdf() {
        // Every refusal is tested in `keystore_v3`; these check that import reports them with
        // the file's name, before the KDF runs and without writing a key.
        let tmp = TempDir::new("v3-hostile");
        let cases = [
            (
                SCRYPT_VECTOR.replace("\"dklen\" : 32", "\"dklen\" : 16"),
                "kdfparams.dklen is 16; it must be 32",
            ),
            (
                SCRYPT_VECTOR.replace("\"n\" : 262144", "\"n\" : 1073741824"),
                "bytes of memory",
            ),
            (SCRYPT_VECTOR.replace("\"p\" : 8", "\"p\" : 128"), "n*r*p"),
            (
                PBKDF2_VECTOR.replace("\"c\" : 262144", "\"c\" : 4000000000"),
                "kdfparams.c",
            ),
            (
                PBKDF2_VECTOR.replace("aes-128-ctr", "aes-128-cbc"),
                "cipher is",
            ),
        ];
        for (i, (vector, expected)) in cases.iter().enumerate() {
            let v3 = write(tmp.path(), &format!("v3-{i}.json"), vector);
            let started = std::time::Instant::now();
            let msg = keystore_message(
                import_keystore_v3(tmp.path(), "a", &v3, &pass("testpassword"), &pass("pp"))
                    .unwrap_err(),
            );
            assert!(msg.contains(expected), "case {i}: {msg}");
            assert!(
                msg.starts_with(&format!("keystore v3 file {}: ", v3.display())),
                "case {i}: {msg}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "case {i}"
            );
            assert!(!tmp.path().join("a.key.json").exists());
        }
        // Oversized file.
        let big = write(tmp.path(), "big.json", &" ".repeat(70 * 1024));
        let msg = keystore_message(
            import_keystore_v3(tmp.path(), "a", &big, &pass("testpassword"), &pass("pp"))
                .unwrap_err(),
        );
        assert!(msg.contains("at most 65536 bytes"), "{msg}");
    }

    #[test]
    fn import_v3_refuses_existing_id() {
        let tmp = TempDir::new("v3-existing");
        crate::keys::soft::generate(tmp.path(), "taken", Algorithm::Ed25519, &pass("pp")).unwrap();
        let v3 = write(tmp.path(), "v3.json", PBKDF2_VECTOR);
        let msg = keystore_message(
            import_keystore_v3(tmp.path(), "taken", &v3, &pass("testpassword"), &pass("pp"))
                .unwrap_err(),
        );
        assert!(msg.contains("already exists"), "{msg}");
    }

    #[tokio::test]
    async fn import_secret_secp256k1_round_trip() {
        let tmp = TempDir::new("import-secp");
        let secret = Zeroizing::new(hex::decode(VECTOR_PRIVATE_KEY).unwrap());
        let info = import_secret(
            tmp.path(),
            "k1",
            Algorithm::Secp256k1,
            secret,
            &pass("new passphrase"),
        )
        .unwrap();
        assert_eq!(info.public_key, expected_public_key());
        check_imported(tmp.path(), "k1").await;
    }

    #[tokio::test]
    async fn import_secret_ed25519_round_trip() {
        // RFC 8032 section 7.1, TEST 1.
        let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        let public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let tmp = TempDir::new("import-ed");
        let info = import_secret(
            tmp.path(),
            "ed",
            Algorithm::Ed25519,
            Zeroizing::new(hex::decode(seed).unwrap()),
            &pass("pp"),
        )
        .unwrap();
        assert_eq!(hex::encode(&info.public_key), public);
        let backend = SoftBackend::open(tmp.path(), &pass("pp")).unwrap();
        let sig = backend.sign("ed", Payload::Message(b"")).await.unwrap();
        let RawSignature::Ed25519(sig) = sig else {
            panic!("expected an Ed25519 signature")
        };
        // RFC 8032 TEST 1 signature over the empty message.
        assert_eq!(
            hex::encode(sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn import_secret_refuses_bad_input() {
        let tmp = TempDir::new("import-bad");
        let short = Zeroizing::new(vec![1u8; 31]);
        let msg = keystore_message(
            import_secret(tmp.path(), "a", Algorithm::Secp256k1, short, &pass("pp")).unwrap_err(),
        );
        assert!(msg.contains("32 bytes, this one is 31"), "{msg}");

        let zero = Zeroizing::new(vec![0u8; 32]);
        let msg = keystore_message(
            import_secret(tmp.path(), "a", Algorithm::Secp256k1, zero, &pass("pp")).unwrap_err(),
        );
        assert!(msg.contains("not a valid secp256k1 private key"), "{msg}");

        // The group order n itself is not a valid scalar.
        let order = Zeroizing::new(
            hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
                .unwrap(),
        );
        let msg = keystore_message(
            import_secret(tmp.path(), "a", Algorithm::Secp256k1, order, &pass("pp")).unwrap_err(),
        );
        assert!(msg.contains("not a valid secp256k1 private key"), "{msg}");

        let p256 = Zeroizing::new(vec![1u8; 32]);
        let msg = keystore_message(
            import_secret(tmp.path(), "a", Algorithm::P256, p256, &pass("pp")).unwrap_err(),
        );
        assert!(msg.contains("not supported by the soft backend"), "{msg}");

        let ok = Zeroizing::new(vec![1u8; 32]);
        let msg = keystore_message(
            import_secret(tmp.path(), "../a", Algorithm::Ed25519, ok, &pass("pp")).unwrap_err(),
        );
        assert!(msg.contains("invalid key id"), "{msg}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
