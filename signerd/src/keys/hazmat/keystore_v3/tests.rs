#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use super::{Keystore, V3Error};

/// The private key of every vector below.
pub(crate) const VECTOR_PRIVATE_KEY: &str =
    "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
/// Its EVM address.
pub(crate) const VECTOR_ADDRESS: &str = "008aeeda4d805471df9b2a5b0f38a0c3bcba786b";
/// The password of every vector below.
pub(crate) const VECTOR_PASSWORD: &str = "testpassword";

// The test vectors of the Web3 Secret Storage Definition, as the specification prints them.
pub(crate) const PBKDF2_VECTOR: &str = r#"{
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
/// The specification's scrypt vector: `n = 2^18, r = 1, p = 8`, the parameters web3.py and
/// older eth-account write.
pub(crate) const SCRYPT_VECTOR: &str = r#"{
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
/// The vectors' key and password with scrypt `n = 4096, r = 1, p = 2`, made with Python's
/// `hashlib.scrypt` (OpenSSL) and PyCryptodome's AES-CTR and Keccak, and checked to decrypt
/// with eth-keyfile 0.10.
pub(crate) const SCRYPT_R1_SMALL: &str = r#"{
  "crypto": {
    "cipher": "aes-128-ctr",
    "cipherparams": { "iv": "101112131415161718191a1b1c1d1e1f" },
    "ciphertext": "b94e4c838ba847c958c35a6c91a585b8d554761902fd657c8ee5160430036749",
    "kdf": "scrypt",
    "kdfparams": {
      "dklen": 32,
      "n": 4096,
      "r": 1,
      "p": 2,
      "salt": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    },
    "mac": "431609ff5f72bbd0ea8346822655e59c4804ee7dfd678fed68bf09f6fb9db7df"
  },
  "id": "00000000-0000-4000-8000-000000000001",
  "version": 3
}"#;
/// The vectors' key and password as eth-keyfile 0.10 writes them (`create_keyfile_json` with
/// scrypt `n = 8192`; its `r = 8, p = 1`, a 16-byte salt and a mixed-case `address`).
pub(crate) const ETH_KEYFILE_SCRYPT_R8: &str = r#"{
  "address": "008AeEda4D805471dF9b2A5B0f38A0C3bCBA786b",
  "crypto": {
    "cipher": "aes-128-ctr",
    "cipherparams": { "iv": "98c217c918c43d01d43dbe40108cc09d" },
    "ciphertext": "d4c86ab0a8cf7356b31be582b64f45b33e138156297bdcbbafa360b333249e96",
    "kdf": "scrypt",
    "kdfparams": {
      "dklen": 32,
      "n": 8192,
      "r": 8,
      "p": 1,
      "salt": "79e47fd9642bbc144e227fb2d0cb58a2"
    },
    "mac": "90ea07290d899df4dca057c22762c7b0634ec41477ca1c719a0cd94484067616"
  },
  "id": "0835a67d-0fd8-4fdb-9be8-21581ea62e5d",
  "version": 3
}"#;

fn decrypt(vector: &str, password: &str) -> Result<String, V3Error> {
    let v3 = Keystore::parse(vector.as_bytes())?;
    v3.decrypt(password.as_bytes()).map(|k| hex::encode(*k))
}

fn parse_err(vector: &str) -> String {
    let started = Instant::now();
    let e = Keystore::parse(vector.as_bytes()).unwrap_err().to_string();
    // Refusals come before any KDF runs.
    assert!(started.elapsed() < Duration::from_secs(1), "{e}");
    e
}

#[test]
fn spec_pbkdf2_vector() {
    assert_eq!(
        decrypt(PBKDF2_VECTOR, VECTOR_PASSWORD).unwrap(),
        VECTOR_PRIVATE_KEY
    );
}

#[test]
fn spec_scrypt_vector_with_r_1() {
    assert_eq!(
        decrypt(SCRYPT_VECTOR, VECTOR_PASSWORD).unwrap(),
        VECTOR_PRIVATE_KEY
    );
}

#[test]
fn scrypt_r_1_file_from_another_implementation() {
    assert_eq!(
        decrypt(SCRYPT_R1_SMALL, VECTOR_PASSWORD).unwrap(),
        VECTOR_PRIVATE_KEY
    );
}

#[test]
fn eth_keyfile_file_with_address() {
    let v3 = Keystore::parse(ETH_KEYFILE_SCRYPT_R8.as_bytes()).unwrap();
    assert_eq!(
        hex::encode(v3.address().unwrap()),
        VECTOR_ADDRESS,
        "the address is read case-insensitively"
    );
    assert_eq!(
        hex::encode(*v3.decrypt(VECTOR_PASSWORD.as_bytes()).unwrap()),
        VECTOR_PRIVATE_KEY
    );
}

#[test]
fn capitalized_crypto_and_prefixed_address() {
    let vector = SCRYPT_R1_SMALL.replace("\"crypto\"", "\"Crypto\"").replace(
        "\"version\": 3",
        &format!("\"version\": 3, \"address\": \"0x{VECTOR_ADDRESS}\", \"name\": \"x\""),
    );
    let v3 = Keystore::parse(vector.as_bytes()).unwrap();
    assert_eq!(hex::encode(v3.address().unwrap()), VECTOR_ADDRESS);
    assert_eq!(
        hex::encode(*v3.decrypt(VECTOR_PASSWORD.as_bytes()).unwrap()),
        VECTOR_PRIVATE_KEY
    );
}

#[test]
fn wrong_password_is_a_mac_mismatch() {
    for vector in [PBKDF2_VECTOR, SCRYPT_R1_SMALL] {
        let e = decrypt(vector, "testpassworD").unwrap_err();
        assert!(matches!(e, V3Error::MacMismatch), "{e}");
        assert_eq!(
            e.to_string(),
            "cannot decrypt: wrong password or corrupted file"
        );
    }
}

#[test]
fn tampered_mac_or_ciphertext_is_a_mac_mismatch() {
    let tampered_mac = SCRYPT_R1_SMALL.replace(
        "431609ff5f72bbd0ea8346822655e59c4804ee7dfd678fed68bf09f6fb9db7df",
        "431609ff5f72bbd0ea8346822655e59c4804ee7dfd678fed68bf09f6fb9db7de",
    );
    let tampered_ciphertext = SCRYPT_R1_SMALL.replace(
        "b94e4c838ba847c958c35a6c91a585b8d554761902fd657c8ee5160430036749",
        "b94e4c838ba847c958c35a6c91a585b8d554761902fd657c8ee5160430036748",
    );
    // The IV is not covered by the MAC; changing it yields another key, which the caller's
    // address and public-key checks catch.
    for vector in [tampered_mac, tampered_ciphertext] {
        let e = decrypt(&vector, VECTOR_PASSWORD).unwrap_err();
        assert!(matches!(e, V3Error::MacMismatch), "{e}");
    }
}

#[test]
fn out_of_bound_parameters_are_refused_before_the_kdf() {
    let cases = [
        (
            SCRYPT_VECTOR.replace("\"dklen\" : 32", "\"dklen\" : 16"),
            "kdfparams.dklen is 16; it must be 32",
        ),
        (
            PBKDF2_VECTOR.replace("\"dklen\" : 32", "\"dklen\" : 64"),
            "kdfparams.dklen is 64; it must be 32",
        ),
        (
            SCRYPT_VECTOR.replace("\"n\" : 262144", "\"n\" : 262143"),
            "kdfparams.n is 262143; it must be a power of two >= 2",
        ),
        (
            SCRYPT_VECTOR.replace("\"n\" : 262144", "\"n\" : 1"),
            "kdfparams.n is 1; it must be a power of two >= 2",
        ),
        (
            SCRYPT_VECTOR.replace("\"r\" : 1", "\"r\" : 0"),
            "kdfparams.r is 0; it must be within 1..=4294967295",
        ),
        (
            SCRYPT_VECTOR.replace("\"p\" : 8", "\"p\" : 0"),
            "kdfparams.p is 0; it must be within 1..=4294967295",
        ),
        (
            SCRYPT_VECTOR.replace("\"p\" : 8", "\"p\" : 4294967296"),
            "kdfparams.p is 4294967296; it must be within 1..=4294967295",
        ),
        // geth's standard parameters with twice its n: 512 MiB.
        (
            SCRYPT_VECTOR
                .replace("\"n\" : 262144", "\"n\" : 524288")
                .replace("\"r\" : 1", "\"r\" : 8")
                .replace("\"p\" : 8", "\"p\" : 1"),
            "scrypt would use 536871936 bytes of memory (128*r*(n+p)); at most 269484032",
        ),
        // A small n does not hide a large p: p's buffer counts too.
        (
            SCRYPT_VECTOR
                .replace("\"n\" : 262144", "\"n\" : 2")
                .replace("\"p\" : 8", "\"p\" : 4194304"),
            "bytes of memory",
        ),
        (
            SCRYPT_VECTOR.replace("\"n\" : 262144", "\"n\" : 9223372036854775808"),
            "bytes of memory",
        ),
        (
            SCRYPT_VECTOR.replace("\"p\" : 8", "\"p\" : 128"),
            "scrypt cost n*r*p is 33554432; at most 16777216 is allowed",
        ),
        (
            PBKDF2_VECTOR.replace("\"c\" : 262144", "\"c\" : 10000001"),
            "kdfparams.c is 10000001; it must be within 1..=10000000",
        ),
        (
            PBKDF2_VECTOR.replace("\"c\" : 262144", "\"c\" : 0"),
            "kdfparams.c is 0; it must be within 1..=10000000",
        ),
        (
            PBKDF2_VECTOR.replace("hmac-sha256", "hmac-sha512"),
            "kdfparams.prf is \"hmac-sha512\"; expected \"hmac-sha256\"",
        ),
        (
            PBKDF2_VECTOR.replace(
                "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd",
                "",
            ),
            "kdfparams.salt is empty",
        ),
        (
            PBKDF2_VECTOR.replace("ae3cd4e7", "xe3cd4e7"),
            "kdfparams.salt is not hex",
        ),
        (
            PBKDF2_VECTOR.replace("6087dab2f9fdbbfaddc31a909735c1e6", "6087dab2"),
            "crypto.cipherparams.iv is 4 bytes; expected 16",
        ),
        (
            PBKDF2_VECTOR.replace(
                "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
                "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa4600",
            ),
            "crypto.ciphertext is 33 bytes; expected 32",
        ),
        (
            PBKDF2_VECTOR.replace(
                "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
                "517ead924a9d0dc3",
            ),
            "crypto.mac is 8 bytes; expected 32",
        ),
        (
            PBKDF2_VECTOR.replace("aes-128-ctr", "aes-128-cbc"),
            "cipher is \"aes-128-cbc\"; expected \"aes-128-ctr\"",
        ),
        (
            PBKDF2_VECTOR.replace("\"kdf\" : \"pbkdf2\"", "\"kdf\" : \"argon2id\""),
            "kdf is \"argon2id\"; expected \"scrypt\" or \"pbkdf2\"",
        ),
        (
            PBKDF2_VECTOR.replace("\"version\" : 3", "\"version\" : 1"),
            "version is 1; expected 3",
        ),
        (
            PBKDF2_VECTOR.replace("\"kdf\" : \"pbkdf2\"", "\"kdf\" : \"scrypt\""),
            "kdfparams of scrypt: unknown field `c`",
        ),
        (
            PBKDF2_VECTOR.replace(
                "\"c\" : 262144,",
                "\"c\" : 262144, \"n\": 2, \"r\": 1, \"p\": 1,",
            ),
            "kdfparams of pbkdf2: unknown field `n`",
        ),
        (
            SCRYPT_VECTOR.replace("\"r\" : 1,", ""),
            "kdfparams of scrypt: missing field `r`",
        ),
        (
            PBKDF2_VECTOR.replace("\"mac\"", "\"extra\": 1, \"mac\""),
            "unknown field `extra`",
        ),
        (
            PBKDF2_VECTOR.replace("\"version\" : 3", "\"version\" : 3, \"address\": \"0x01\""),
            "address is 1 bytes; expected 20",
        ),
        (
            PBKDF2_VECTOR.replace("\"version\" : 3", "\"name\" : \"no version\""),
            "missing field `version`",
        ),
        ("[]".to_owned(), "invalid JSON"),
    ];
    for (i, (vector, expected)) in cases.iter().enumerate() {
        let msg = parse_err(vector);
        assert!(msg.contains(expected), "case {i}: {msg}");
    }
}

#[test]
fn bounds_admit_the_common_parameters() {
    let scrypt = |n: u64, r: u64, p: u64| {
        SCRYPT_VECTOR
            .replace("\"n\" : 262144", &format!("\"n\" : {n}"))
            .replace("\"r\" : 1", &format!("\"r\" : {r}"))
            .replace("\"p\" : 8", &format!("\"p\" : {p}"))
    };
    // geth and ethers standard, geth light, web3.py, and RFC 7914's erratum bound crossed.
    for (n, r, p) in [
        (1 << 18, 8, 1),
        (1 << 12, 6, 1),
        (1 << 18, 1, 8),
        (1 << 17, 1, 1),
    ] {
        Keystore::parse(scrypt(n, r, p).as_bytes()).unwrap();
    }
    let max_pbkdf2 = PBKDF2_VECTOR.replace("\"c\" : 262144", "\"c\" : 10000000");
    Keystore::parse(max_pbkdf2.as_bytes()).unwrap();
}
