//! Dangerous key operations: importing existing private keys into the software keystore.
//!
//! Importing means raw secret bytes pass through this process, so everything here is reachable
//! only from operator tooling, never from the signing API. These functions must never print,
//! log or return the secret, a password, or anything derived from them in an error; every
//! intermediate copy of secret bytes lives in a [`Zeroizing`] buffer.
//!
//! Ethereum keystore v3 files ([Web3 Secret Storage Definition]) are decrypted with the
//! `eth-keystore` crate after this module has checked them itself: the crate reads files
//! without a size bound, panics on short derived keys or IVs, and runs scrypt or PBKDF2 with
//! whatever cost the file names. So the file is read once with a bound, its parameters are
//! checked, and the crate decrypts a private, canonical copy written next to the keystore
//! (mode `0600`, deleted afterwards), never the operator's file a second time.
//!
//! [Web3 Secret Storage Definition]: https://ethereum.org/en/developers/docs/data-structures-and-encoding/web3-secret-storage/

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::soft::{self, SecretKey};
use super::{Algorithm, KeyError, KeyInfo};

/// Largest scrypt memory (`128 * r * n` bytes) a v3 file may ask for: 1 GiB.
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
/// Largest scrypt work (`n * r * p`) a v3 file may ask for: 8 times geth's standard cost.
const MAX_SCRYPT_WORK: u64 = 1 << 24;
/// Largest PBKDF2 iteration count a v3 file may ask for.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

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
/// power of two with memory at most 1 GiB and `n*r*p` at most 2^24, PBKDF2 with `hmac-sha256`
/// and at most 10,000,000 iterations. If the file has an `address`, the imported key must
/// have that address.
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

    let bytes = soft::file::read_bounded(v3_json_path)?;
    let (canonical, expected_address) = check_keystore_v3(&bytes).map_err(err)?;

    // Fail on the cheap checks before the expensive KDF.
    soft::file::ensure_dir(dir)?;
    soft::file::refuse_existing(dir, id)?;
    let copy = soft::file::write_temp(dir, &format!("import-{id}.v3.json"), &canonical)?;
    let decrypted = eth_keystore::decrypt_key(&copy.0, v3_password.expose_secret().as_bytes());
    drop(copy);
    let secret = match decrypted {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(eth_keystore::KeystoreError::MacMismatch) => {
            return Err(err(
                "cannot decrypt: wrong password or corrupted file".to_owned()
            ));
        }
        // The crate's other errors describe the file (I/O, JSON, parameter sizes), not secrets.
        Err(e) => return Err(err(format!("cannot decrypt: {e}"))),
    };
    if secret.len() != 32 {
        return Err(err(format!(
            "decrypted private key is {} bytes; expected 32",
            secret.len()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(&secret);
    drop(secret);
    let key =
        SecretKey::from_bytes(Algorithm::Secp256k1, &bytes).map_err(|e| err(e.to_string()))?;
    if let (Some(expected), SecretKey::Secp256k1(k)) = (expected_address, &key) {
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

/// The parts of a keystore v3 file this module checks, and the canonical copy it hands to
/// `eth-keystore`.
/// Parses and checks the bytes of a keystore v3 file before any KDF runs: the canonical JSON to
/// decrypt, and the address the key must have, if the file names one.
pub(crate) fn check_keystore_v3(bytes: &[u8]) -> Result<(Vec<u8>, Option<[u8; 20]>), String> {
    let v3: v3::Keystore =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let canonical = v3.check()?;
    let expected_address = v3.address_bytes()?;
    Ok((canonical, expected_address))
}

mod v3 {
    use serde::{Deserialize, Serialize};

    use super::{MAX_PBKDF2_ITERATIONS, MAX_SCRYPT_MEMORY, MAX_SCRYPT_WORK};

    #[derive(Deserialize)]
    pub(super) struct Keystore {
        version: u64,
        // MyEtherWallet and others write `Crypto`.
        #[serde(alias = "Crypto")]
        crypto: Crypto,
        #[serde(default)]
        address: Option<String>,
    }

    #[derive(Deserialize, Serialize)]
    struct Crypto {
        cipher: String,
        cipherparams: CipherParams,
        ciphertext: String,
        kdf: String,
        kdfparams: serde_json::Map<String, serde_json::Value>,
        mac: String,
    }

    #[derive(Deserialize, Serialize)]
    struct CipherParams {
        iv: String,
    }

    /// What `eth-keystore` parses; its `id` is a UUID that plays no part in decryption.
    #[derive(Serialize)]
    struct Canonical<'a> {
        crypto: &'a Crypto,
        id: &'static str,
        version: u64,
    }

    fn hex_len(field: &str, value: &str, len: usize) -> Result<(), String> {
        match hex::decode(value) {
            Ok(bytes) if bytes.len() == len => Ok(()),
            Ok(bytes) => Err(format!("{field} is {} bytes; expected {len}", bytes.len())),
            Err(e) => Err(format!("{field} is not hex: {e}")),
        }
    }

    fn uint(
        params: &serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> Result<u64, String> {
        params
            .get(name)
            .ok_or_else(|| format!("kdfparams.{name} is missing"))?
            .as_u64()
            .ok_or_else(|| format!("kdfparams.{name} must be a non-negative integer"))
    }

    fn string<'a>(
        params: &'a serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> Result<&'a str, String> {
        params
            .get(name)
            .ok_or_else(|| format!("kdfparams.{name} is missing"))?
            .as_str()
            .ok_or_else(|| format!("kdfparams.{name} must be a string"))
    }

    impl Keystore {
        /// Checks everything `eth-keystore` would trust or panic on, and returns the JSON of
        /// the canonical copy to decrypt.
        pub(super) fn check(&self) -> Result<Vec<u8>, String> {
            if self.version != 3 {
                return Err(format!("version is {}; expected 3", self.version));
            }
            let c = &self.crypto;
            if c.cipher != "aes-128-ctr" {
                return Err(format!(
                    "cipher is {:?}; expected \"aes-128-ctr\"",
                    c.cipher
                ));
            }
            hex_len("cipherparams.iv", &c.cipherparams.iv, 16)?;
            hex_len("ciphertext", &c.ciphertext, 32)?;
            hex_len("mac", &c.mac, 32)?;
            let p = &c.kdfparams;
            let allowed: &[&str] = match c.kdf.as_str() {
                "scrypt" => &["dklen", "n", "r", "p", "salt"],
                "pbkdf2" => &["dklen", "c", "prf", "salt"],
                other => {
                    return Err(format!(
                        "kdf is {other:?}; expected \"scrypt\" or \"pbkdf2\""
                    ));
                }
            };
            // The crate tells the two KDFs apart by their fields, not by `kdf`: extra fields
            // could make it run the other one.
            if let Some(extra) = p.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(format!("kdfparams.{extra} is not a {} parameter", c.kdf));
            }
            if uint(p, "dklen")? != 32 {
                return Err("kdfparams.dklen must be 32".to_owned());
            }
            let salt = string(p, "salt")?;
            if hex::decode(salt).is_err() || salt.is_empty() {
                return Err("kdfparams.salt must be non-empty hex".to_owned());
            }
            if c.kdf == "scrypt" {
                let n = uint(p, "n")?;
                let r = uint(p, "r")?;
                let pp = uint(p, "p")?;
                if n < 2 || !n.is_power_of_two() || n > u64::from(u32::MAX) {
                    return Err(format!(
                        "kdfparams.n is {n}; it must be a power of two >= 2"
                    ));
                }
                if r == 0 || pp == 0 || r > u64::from(u32::MAX) || pp > u64::from(u32::MAX) {
                    return Err("kdfparams.r and kdfparams.p must be positive".to_owned());
                }
                // scrypt 0.10 (what eth-keystore uses) enforces RFC 7914's n < 2^(16*r), a
                // bound later found to be an erratum (RFC errata 5971). web3.py/eth-account
                // and the Web3 Secret Storage scrypt test vector use n=2^18 with r=1, which it
                // refuses; say so precisely instead of failing inside the crate.
                if u64::from(n.trailing_zeros()) >= 16 * r {
                    return Err(format!(
                        "scrypt with n={n} and r={r} is not supported: the scrypt implementation \
                         used for import requires n < 2^(16*r) (RFC 7914); re-encrypt the \
                         keystore with r=8 (the geth, ethers and MyEtherWallet default) or \
                         with PBKDF2, or import the raw key"
                    ));
                }
                let memory = 128u64.saturating_mul(r).saturating_mul(n);
                if memory > MAX_SCRYPT_MEMORY {
                    return Err(format!(
                        "scrypt would use {memory} bytes of memory; at most {MAX_SCRYPT_MEMORY} \
                         are allowed"
                    ));
                }
                let work = n.saturating_mul(r).saturating_mul(pp);
                if work > MAX_SCRYPT_WORK {
                    return Err(format!(
                        "scrypt cost n*r*p is {work}; at most {MAX_SCRYPT_WORK} is allowed"
                    ));
                }
            } else {
                let iterations = uint(p, "c")?;
                if iterations == 0 || iterations > u64::from(MAX_PBKDF2_ITERATIONS) {
                    return Err(format!(
                        "kdfparams.c is {iterations}; it must be within 1..={MAX_PBKDF2_ITERATIONS}"
                    ));
                }
                let prf = string(p, "prf")?;
                if prf != "hmac-sha256" {
                    return Err(format!(
                        "kdfparams.prf is {prf:?}; expected \"hmac-sha256\""
                    ));
                }
            }
            serde_json::to_vec(&Canonical {
                crypto: c,
                id: "00000000-0000-0000-0000-000000000000",
                version: 3,
            })
            .map_err(|e| format!("cannot re-encode: {e}"))
        }

        /// The 20-byte `address` field, if the file has one.
        pub(super) fn address_bytes(&self) -> Result<Option<[u8; 20]>, String> {
            let Some(address) = &self.address else {
                return Ok(None);
            };
            let digits = address.strip_prefix("0x").unwrap_or(address);
            let bytes = hex::decode(digits).map_err(|e| format!("address is not hex: {e}"))?;
            let bytes: [u8; 20] = bytes
                .try_into()
                .map_err(|b: Vec<u8>| format!("address is {} bytes; expected 20", b.len()))?;
            Ok(Some(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use secrecy::SecretString;
    use zeroize::Zeroizing;

    use super::{import_keystore_v3, import_secret};
    use crate::keys::soft::SoftBackend;
    use crate::keys::soft::tests::{TempDir, verify_secp256k1};
    use crate::keys::{Algorithm, KeyBackend, KeyError, Payload, RawSignature};

    const VECTOR_PRIVATE_KEY: &str =
        "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
    const VECTOR_ADDRESS: &str = "008aeeda4d805471df9b2a5b0f38a0c3bcba786b";

    // Test vectors from the Web3 Secret Storage Definition (password "testpassword").
    const PBKDF2_VECTOR: &str = r#"{
        "crypto" : {
            "cipher" : "aes-128-ctr",
            "cipherparams" : { "iv" : "6087dab2f9fdbbfaddc31a909735c1e6" },
            "ciphertext" : "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
            "kdf" : "pbkdf2",
            "kdfparams" : {
                "c" : 262144,
                "dklen" : 32,
                "prf" : "hmac-sha256",
                "salt" : "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"
            },
            "mac" : "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"
        },
        "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
        "version" : 3
    }"#;
    const SCRYPT_VECTOR: &str = r#"{
        "crypto" : {
            "cipher" : "aes-128-ctr",
            "cipherparams" : { "iv" : "83dbcc02d8ccb40e466191a123791e0e" },
            "ciphertext" : "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
            "kdf" : "scrypt",
            "kdfparams" : {
                "dklen" : 32,
                "n" : 262144,
                "r" : 1,
                "p" : 8,
                "salt" : "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"
            },
            "mac" : "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"
        },
        "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
        "version" : 3
    }"#;

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
    fn import_v3_scrypt_vector_refused_precisely() {
        // The spec's scrypt vector uses n=2^18 with r=1, outside RFC 7914's n < 2^(16*r),
        // which the scrypt crate under eth-keystore enforces. It must fail fast and clearly.
        let tmp = TempDir::new("v3-scrypt-r1");
        let v3 = write(tmp.path(), "v3.json", SCRYPT_VECTOR);
        let keys = tmp.path().join("keys");
        let started = std::time::Instant::now();
        let msg = keystore_message(
            import_keystore_v3(&keys, "a", &v3, &pass("testpassword"), &pass("pp")).unwrap_err(),
        );
        assert!(
            msg.contains("scrypt with n=262144 and r=1 is not supported"),
            "{msg}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(!keys.exists());
    }

    #[test]
    fn import_v3_scrypt_round_trip() {
        // The vectors' key and password, encrypted by eth-keystore with its own scrypt
        // parameters (n=2^13, r=8, p=1), then imported.
        let tmp = TempDir::new("v3-scrypt");
        let secret = Zeroizing::new(hex::decode(VECTOR_PRIVATE_KEY).unwrap());
        eth_keystore::encrypt_key(
            tmp.path(),
            &mut rand_core::OsRng,
            &secret[..],
            "testpassword",
            Some("v3.json"),
        )
        .unwrap();
        let v3 = std::fs::read_to_string(tmp.path().join("v3.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&v3).unwrap();
        assert_eq!(doc["crypto"]["kdf"], "scrypt");
        assert_eq!(doc["crypto"]["kdfparams"]["r"], 8);
        import_vector(&v3, "v3-scrypt-import");
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
        let tmp = TempDir::new("v3-hostile");
        // r=8 so that only the parameter under test is out of bounds.
        let scrypt = SCRYPT_VECTOR.replace("\"r\" : 1", "\"r\" : 8");
        let cases = [
            // eth-keystore would panic slicing a 16-byte derived key.
            (
                scrypt.replace("\"dklen\" : 32", "\"dklen\" : 16"),
                "dklen must be 32",
            ),
            (
                scrypt.replace("\"n\" : 262144", "\"n\" : 262143"),
                "power of two",
            ),
            (
                scrypt.replace("\"n\" : 262144", "\"n\" : 1073741824"),
                "bytes of memory",
            ),
            (scrypt.replace("\"p\" : 8", "\"p\" : 4096"), "n*r*p"),
            (
                PBKDF2_VECTOR.replace("\"c\" : 262144", "\"c\" : 4000000000"),
                "kdfparams.c",
            ),
            (
                PBKDF2_VECTOR.replace("hmac-sha256", "hmac-sha512"),
                "kdfparams.prf",
            ),
            (
                PBKDF2_VECTOR.replace("6087dab2f9fdbbfaddc31a909735c1e6", "6087dab2"),
                "cipherparams.iv",
            ),
            (
                PBKDF2_VECTOR.replace("aes-128-ctr", "aes-128-cbc"),
                "cipher",
            ),
            (
                PBKDF2_VECTOR.replace("\"version\" : 3", "\"version\" : 1"),
                "version",
            ),
            (
                PBKDF2_VECTOR.replace("\"kdf\" : \"pbkdf2\"", "\"kdf\" : \"scrypt\""),
                "not a scrypt parameter",
            ),
            (
                PBKDF2_VECTOR.replace(
                    "\"c\" : 262144,",
                    "\"c\" : 262144, \"n\": 2, \"r\": 1, \"p\": 1,",
                ),
                "not a pbkdf2 parameter",
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
                started.elapsed() < std::time::Duration::from_secs(1),
                "case {i}"
            );
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
