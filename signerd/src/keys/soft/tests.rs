//! Tests of the software keystore with real cryptography, checked against independent
//! implementations (`secp256k1` for ECDSA, `ring` for Ed25519). Also shared test helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use sha2::Digest as _;

use super::file::{self, KdfParams};
use super::{SecretKey, SoftBackend, generate};
use crate::keys::key_id as validate_key_id;
use crate::keys::{Algorithm, KeyBackend, KeyError, Payload, RawSignature};

/// A fresh, empty directory inside a temp dir removed on drop.
pub(crate) struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let root = tempfile::Builder::new()
            .prefix("signerd-keys-test-")
            .tempdir()
            .unwrap();
        let path = root.path().join(name);
        fs::create_dir_all(&path).unwrap();
        TempDir(path, root)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// n/2 for secp256k1, big-endian: the largest low-s value.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// Checks an ECDSA result with libsecp256k1: s is low, and recovering the public key from
/// (r, s, recovery id) over `digest` gives `public_key`.
pub(crate) fn verify_secp256k1(public_key: &[u8], digest: &[u8; 32], sig: &RawSignature) {
    let RawSignature::Ecdsa { r, s, y_parity } = sig else {
        panic!("expected an ECDSA signature, got {sig:?}");
    };
    assert!(s <= &HALF_ORDER, "s is not low: {}", hex::encode(s));
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r);
    compact[32..].copy_from_slice(s);
    let recid = secp256k1::ecdsa::RecoveryId::try_from(i32::from(*y_parity)).unwrap();
    let recoverable =
        secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid).unwrap();
    let message = secp256k1::Message::from_digest(*digest);
    let recovered = secp256k1::SECP256K1
        .recover_ecdsa(&message, &recoverable)
        .unwrap();
    assert_eq!(recovered.serialize().as_slice(), public_key);
    let plain = secp256k1::ecdsa::Signature::from_compact(&compact).unwrap();
    let mut normalized = plain;
    normalized.normalize_s();
    assert_eq!(normalized, plain, "libsecp256k1 says s is high");
    // libsecp256k1 verification also refuses high s.
    secp256k1::SECP256K1
        .verify_ecdsa(&message, &plain, &recovered)
        .unwrap();
}

fn verify_ed25519(public_key: &[u8], message: &[u8], sig: &RawSignature) {
    let RawSignature::Ed25519(sig) = sig else {
        panic!("expected an Ed25519 signature, got {sig:?}");
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, sig)
        .unwrap();
}

fn pass(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn keystore_message(e: KeyError) -> String {
    match e {
        KeyError::Keystore(m) => m,
        other => panic!("expected a keystore error, got {other:?}"),
    }
}

fn open_err(dir: &Path, passphrase: &str) -> String {
    keystore_message(SoftBackend::open(dir, &pass(passphrase)).unwrap_err())
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &serde_json::Value) {
    fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn secp256k1_generate_open_sign_verify() {
    let tmp = TempDir::new("secp");
    let keys = tmp.path().join("keystore");
    let info = generate(&keys, "hot-1", Algorithm::Secp256k1, &pass("correct horse")).unwrap();
    assert_eq!(info.id, "hot-1");
    assert_eq!(info.algorithm, Algorithm::Secp256k1);
    assert_eq!(info.backend, "soft");
    assert_eq!(info.public_key.len(), 33);
    assert!(matches!(info.public_key[0], 2 | 3));

    // The directory was created private; the file is 0600; no temporary file is left.
    assert_eq!(
        fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let path = keys.join("hot-1.key.json");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(file_names(&keys), vec!["hot-1.key.json".to_owned()]);

    let backend = SoftBackend::open(&keys, &pass("correct horse")).unwrap();
    assert_eq!(backend.name(), "soft");
    assert_eq!(backend.keys(), vec![info.clone()]);
    assert_eq!(backend.key("hot-1"), Some(info.clone()));
    for i in 0u32..64 {
        let digest: [u8; 32] = sha2::Sha256::digest(i.to_be_bytes()).into();
        let sig = backend
            .sign("hot-1", Payload::Prehash(&digest))
            .await
            .unwrap();
        verify_secp256k1(&info.public_key, &digest, &sig);
    }
}

#[tokio::test]
async fn ed25519_generate_open_sign_verify() {
    let tmp = TempDir::new("ed");
    let info = generate(tmp.path(), "approver.ed", Algorithm::Ed25519, &pass("pw")).unwrap();
    assert_eq!(info.algorithm, Algorithm::Ed25519);
    assert_eq!(info.public_key.len(), 32);

    let backend = SoftBackend::open(tmp.path(), &pass("pw")).unwrap();
    assert_eq!(backend.keys(), vec![info.clone()]);
    for message in [&b""[..], b"hello", &[0xab; 5000][..]] {
        let sig = backend
            .sign("approver.ed", Payload::Message(message))
            .await
            .unwrap();
        verify_ed25519(&info.public_key, message, &sig);
    }
    let sig = backend
        .sign("approver.ed", Payload::Message(b"hello"))
        .await
        .unwrap();
    let RawSignature::Ed25519(bytes) = sig else {
        panic!("expected Ed25519")
    };
    assert!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &info.public_key)
            .verify(b"hellO", &bytes)
            .is_err()
    );
}

#[tokio::test]
async fn keys_are_sorted_and_unknown_ids_not_found() {
    let tmp = TempDir::new("sorted");
    for (id, alg) in [
        ("b", Algorithm::Secp256k1),
        ("a", Algorithm::Ed25519),
        ("c-2", Algorithm::Secp256k1),
    ] {
        generate(tmp.path(), id, alg, &pass("pw")).unwrap();
    }
    let backend = SoftBackend::open(tmp.path(), &pass("pw")).unwrap();
    let ids: Vec<_> = backend.keys().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["a", "b", "c-2"]);
    assert_eq!(backend.ids(), ["a", "b", "c-2"]);
    assert_eq!(backend.key("zz"), None);
    match backend.sign("zz", Payload::Prehash(&[0; 32])).await {
        Err(KeyError::NotFound(id)) => assert_eq!(id, "zz"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_payload_kind_refused() {
    let tmp = TempDir::new("payload");
    generate(tmp.path(), "k1", Algorithm::Secp256k1, &pass("pw")).unwrap();
    generate(tmp.path(), "ed", Algorithm::Ed25519, &pass("pw")).unwrap();
    let backend = SoftBackend::open(tmp.path(), &pass("pw")).unwrap();

    let err = backend
        .sign("k1", Payload::Message(b"hello"))
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        KeyError::WrongAlgorithm { id, algorithm: Algorithm::Secp256k1, .. } if id == "k1"
    ));
    assert_eq!(
        err.to_string(),
        "key `k1` is secp256k1; cannot sign a raw message with ECDSA; it signs a 32-byte \
         digest (Payload::Prehash)"
    );

    let err = backend
        .sign("ed", Payload::Prehash(&[1; 32]))
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        KeyError::WrongAlgorithm { id, algorithm: Algorithm::Ed25519, .. } if id == "ed"
    ));
    assert!(
        err.to_string()
            .contains("cannot sign a 32-byte digest with Ed25519")
    );
}

#[test]
fn wrong_passphrase_refused() {
    let tmp = TempDir::new("wrongpass");
    generate(tmp.path(), "k", Algorithm::Secp256k1, &pass("right one")).unwrap();
    let msg = open_err(tmp.path(), "wrong one");
    assert_eq!(
        msg,
        "cannot decrypt key `k`: wrong passphrase or corrupted file"
    );
    assert!(!msg.contains("wrong one") && !msg.contains("right one"));
}

#[test]
fn empty_passphrase_refused() {
    let tmp = TempDir::new("emptypass");
    let msg =
        keystore_message(generate(tmp.path(), "k", Algorithm::Ed25519, &pass("")).unwrap_err());
    assert!(msg.contains("passphrase is empty"), "{msg}");
    assert!(open_err(tmp.path(), "").contains("passphrase is empty"));
    assert!(file_names(tmp.path()).is_empty());
}

#[test]
fn tampered_ciphertext_refused() {
    let tmp = TempDir::new("tamper");
    generate(tmp.path(), "k", Algorithm::Ed25519, &pass("pw")).unwrap();
    let path = tmp.path().join("k.key.json");
    let mut doc = read_json(&path);
    let ct = doc["cipher"]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ct.starts_with('0') { "1" } else { "0" };
    doc["cipher"]["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
    write_json(&path, &doc);
    assert_eq!(
        open_err(tmp.path(), "pw"),
        "cannot decrypt key `k`: wrong passphrase or corrupted file"
    );
}

#[test]
fn renamed_or_swapped_file_refused() {
    let tmp = TempDir::new("rename");
    generate(tmp.path(), "alpha", Algorithm::Secp256k1, &pass("pw")).unwrap();
    generate(tmp.path(), "beta", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let alpha = tmp.path().join("alpha.key.json");
    let beta = tmp.path().join("beta.key.json");
    let beta_doc = read_json(&beta);

    // Renamed without editing: the name and the content disagree.
    fs::remove_file(&beta).unwrap();
    fs::rename(&alpha, &beta).unwrap();
    let msg = open_err(tmp.path(), "pw");
    assert!(msg.contains("says it holds key \"alpha\""), "{msg}");

    // Renamed and edited to match: the associated data no longer matches.
    let mut doc = read_json(&beta);
    doc["id"] = "beta".into();
    write_json(&beta, &doc);
    assert_eq!(
        open_err(tmp.path(), "pw"),
        "cannot decrypt key `beta`: wrong passphrase or corrupted file"
    );

    // beta's real public key with alpha's ciphertext: still refused.
    doc["public_key"] = beta_doc["public_key"].clone();
    write_json(&beta, &doc);
    assert_eq!(
        open_err(tmp.path(), "pw"),
        "cannot decrypt key `beta`: wrong passphrase or corrupted file"
    );

    // The algorithm is bound too.
    let tmp2 = TempDir::new("rename-alg");
    generate(tmp2.path(), "e", Algorithm::Ed25519, &pass("pw")).unwrap();
    let path = tmp2.path().join("e.key.json");
    let mut doc = read_json(&path);
    doc["algorithm"] = "secp256k1".into();
    let pk = doc["public_key"].as_str().unwrap().to_owned();
    doc["public_key"] = format!("02{pk}").into();
    write_json(&path, &doc);
    assert_eq!(
        open_err(tmp2.path(), "pw"),
        "cannot decrypt key `e`: wrong passphrase or corrupted file"
    );
}

#[test]
fn public_key_mismatch_refused() {
    let tmp = TempDir::new("pkmismatch");
    let real = SecretKey::random(Algorithm::Secp256k1).unwrap();
    let other = SecretKey::random(Algorithm::Secp256k1).unwrap();
    // A correctly encrypted file whose stored public key belongs to another key.
    let contents = file::encode(
        "k",
        Algorithm::Secp256k1,
        &other.public_key(),
        &real.secret_bytes(),
        &pass("pw"),
        KdfParams::DEFAULT,
    )
    .unwrap();
    fs::write(tmp.path().join("k.key.json"), contents).unwrap();
    let msg = open_err(tmp.path(), "pw");
    assert!(
        msg.contains("the decrypted private key does not match the stored public key"),
        "{msg}"
    );
}

#[test]
fn duplicate_id_refused() {
    let tmp = TempDir::new("dup");
    generate(tmp.path(), "k", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let path = tmp.path().join("k.key.json");
    let before = fs::read(&path).unwrap();
    for alg in [Algorithm::Secp256k1, Algorithm::Ed25519] {
        let msg = keystore_message(generate(tmp.path(), "k", alg, &pass("pw")).unwrap_err());
        assert!(msg.contains("key `k` already exists"), "{msg}");
    }
    // Even past the early check, the final link refuses to replace the file.
    let msg = keystore_message(file::write_new(tmp.path(), "k", b"other").unwrap_err());
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(file_names(tmp.path()), vec!["k.key.json".to_owned()]);
}

#[test]
fn key_ids_validated() {
    let ok = ["a", "A-b_c.9", "0", &"x".repeat(64), "a..b", "-"];
    for id in ok {
        validate_key_id(id).unwrap();
    }
    let bad: [(&str, &str); 9] = [
        ("", "it is empty"),
        (&"x".repeat(65), "65 characters long; the maximum is 64"),
        (".hidden", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("a/b", "character '/' at position 2 is not allowed"),
        ("../x", "character '/' at position 3"),
        ("a b", "character ' ' at position 2"),
        ("ключ", "character 'к' at position 1"),
        ("a\nb", "character '\\n' at position 2"),
    ];
    let tmp = TempDir::new("ids");
    for (id, expected) in bad {
        let msg = keystore_message(validate_key_id(id).unwrap_err());
        assert!(msg.starts_with("invalid key id"), "{msg}");
        assert!(msg.contains(expected), "{id:?}: {msg}");
        let msg = keystore_message(
            generate(tmp.path(), id, Algorithm::Ed25519, &pass("pw")).unwrap_err(),
        );
        assert!(msg.contains(expected), "{id:?}: {msg}");
    }
    assert!(file_names(tmp.path()).is_empty());
}

#[test]
fn p256_not_supported() {
    let tmp = TempDir::new("p256");
    let msg =
        keystore_message(generate(tmp.path(), "p", Algorithm::P256, &pass("pw")).unwrap_err());
    assert!(
        msg.contains("p256 is not supported by the soft backend"),
        "{msg}"
    );

    // A file claiming p256 is refused as well.
    generate(tmp.path(), "k", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let path = tmp.path().join("k.key.json");
    let mut doc = read_json(&path);
    doc["algorithm"] = "p256".into();
    write_json(&path, &doc);
    let msg = open_err(tmp.path(), "pw");
    assert!(
        msg.contains("p256 is not supported by the soft backend"),
        "{msg}"
    );
}

#[test]
fn oversized_file_refused() {
    let tmp = TempDir::new("big");
    fs::write(tmp.path().join("big.key.json"), vec![b' '; 64 * 1024 + 1]).unwrap();
    let msg = open_err(tmp.path(), "pw");
    assert!(
        msg.contains("is 65537 bytes; a key file is at most 65536 bytes"),
        "{msg}"
    );
}

#[test]
fn kdf_parameters_bounded_before_running() {
    let tmp = TempDir::new("kdf");
    generate(tmp.path(), "k", Algorithm::Ed25519, &pass("pw")).unwrap();
    let path = tmp.path().join("k.key.json");
    let original = read_json(&path);
    let cases = [
        (
            "m_cost_kib",
            2_000_000u64,
            "kdf.m_cost_kib is 2000000; it must be within 8192..=1048576",
        ),
        ("m_cost_kib", 64, "kdf.m_cost_kib is 64"),
        ("t_cost", 0, "kdf.t_cost is 0; it must be within 1..=16"),
        ("t_cost", 1000, "kdf.t_cost is 1000"),
        ("p_cost", 64, "kdf.p_cost is 64; it must be within 1..=16"),
    ];
    for (field, value, expected) in cases {
        let mut doc = original.clone();
        doc["kdf"][field] = value.into();
        write_json(&path, &doc);
        let started = std::time::Instant::now();
        let msg = open_err(tmp.path(), "pw");
        assert!(msg.contains(expected), "{field}={value}: {msg}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[test]
fn malformed_files_refused_precisely() {
    let tmp = TempDir::new("malformed");
    generate(tmp.path(), "k", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let path = tmp.path().join("k.key.json");
    let original = read_json(&path);
    type Edit = fn(&mut serde_json::Value);
    let cases: [(Edit, &str); 11] = [
        (|d| d["version"] = 2.into(), "unsupported version 2"),
        (
            |d| {
                d.as_object_mut().unwrap().remove("version");
            },
            "missing field `version`",
        ),
        (|d| d["extra"] = 1.into(), "unknown field `extra`"),
        (
            |d| d["kdf"]["name"] = "scrypt".into(),
            "kdf.name is \"scrypt\"",
        ),
        (
            |d| d["cipher"]["name"] = "aes".into(),
            "cipher.name is \"aes\"",
        ),
        (|d| d["algorithm"] = "rsa".into(), "unknown variant `rsa`"),
        (
            |d| {
                let upper = d["public_key"].as_str().unwrap().to_uppercase();
                d["public_key"] = upper.into();
            },
            "public_key must be lowercase hex",
        ),
        (
            |d| d["public_key"] = "02".into(),
            "public_key is 1 bytes; expected 33",
        ),
        (
            |d| d["kdf"]["salt"] = "00".into(),
            "kdf.salt is 1 bytes; expected 16",
        ),
        (
            |d| d["cipher"]["nonce"] = "00".into(),
            "cipher.nonce is 1 bytes; expected 24",
        ),
        (
            |d| d["cipher"]["ciphertext"] = "0".into(),
            "cipher.ciphertext is not hex",
        ),
    ];
    for (edit, expected) in cases {
        let mut doc = original.clone();
        edit(&mut doc);
        write_json(&path, &doc);
        let msg = open_err(tmp.path(), "pw");
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
    fs::write(&path, b"{not json").unwrap();
    assert!(open_err(tmp.path(), "pw").contains("invalid JSON"));
}

#[test]
fn directory_handling() {
    let tmp = TempDir::new("dirs");
    // Missing directory.
    let missing = tmp.path().join("nope");
    let msg = open_err(&missing, "pw");
    assert!(msg.contains("does not exist"), "{msg}");
    // A file instead of a directory.
    let plain = tmp.path().join("plain");
    fs::write(&plain, b"x").unwrap();
    assert!(open_err(&plain, "pw").contains("is not a directory"));

    // Empty directory: no keys.
    let dir = tmp.path().join("ks");
    fs::create_dir(&dir).unwrap();
    let backend = SoftBackend::open(&dir, &pass("pw")).unwrap();
    assert!(backend.keys().is_empty());

    // Other files and directories are ignored.
    generate(&dir, "k", Algorithm::Ed25519, &pass("pw")).unwrap();
    fs::write(dir.join("README"), b"hello").unwrap();
    fs::write(dir.join("k.json"), b"{}").unwrap();
    fs::write(dir.join(".k.key.json.tmp-00"), b"{}").unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    let backend = SoftBackend::open(&dir, &pass("pw")).unwrap();
    assert_eq!(backend.ids(), ["k"]);

    // But a *.key.json that cannot be a key is an error, not silently skipped.
    fs::write(dir.join(".hidden.key.json"), b"{}").unwrap();
    let msg = open_err(&dir, "pw");
    assert!(msg.contains("must not start with '.'"), "{msg}");
    fs::remove_file(dir.join(".hidden.key.json")).unwrap();
    fs::create_dir(dir.join("d.key.json")).unwrap();
    let msg = open_err(&dir, "pw");
    assert!(msg.contains("is not a regular file"), "{msg}");
}

#[test]
fn file_format_matches_documentation() {
    let tmp = TempDir::new("format");
    let info = generate(tmp.path(), "doc-key", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let doc = read_json(&tmp.path().join("doc-key.key.json"));
    let mut top: Vec<_> = doc.as_object().unwrap().keys().cloned().collect();
    top.sort();
    assert_eq!(
        top,
        ["algorithm", "cipher", "id", "kdf", "public_key", "version"]
    );
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["id"], "doc-key");
    assert_eq!(doc["algorithm"], "secp256k1");
    assert_eq!(doc["public_key"], hex::encode(&info.public_key));
    assert_eq!(doc["kdf"]["name"], "argon2id");
    assert_eq!(doc["kdf"]["m_cost_kib"], 19456);
    assert_eq!(doc["kdf"]["t_cost"], 2);
    assert_eq!(doc["kdf"]["p_cost"], 1);
    assert_eq!(doc["kdf"].as_object().unwrap().len(), 5);
    assert_eq!(doc["cipher"]["name"], "xchacha20poly1305");
    assert_eq!(doc["cipher"].as_object().unwrap().len(), 3);

    // Decrypt exactly as the documentation says, without the module's code.
    let bytes = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let salt = bytes(&doc["kdf"]["salt"]);
    let nonce = bytes(&doc["cipher"]["nonce"]);
    let ciphertext = bytes(&doc["cipher"]["ciphertext"]);
    assert_eq!((salt.len(), nonce.len(), ciphertext.len()), (16, 24, 48));
    let mut key = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19456, 2, 1, Some(32)).unwrap(),
    )
    .hash_password_into(b"pw", &salt, &mut key)
    .unwrap();
    let aad = format!(
        "signerd-soft-key\n1\ndoc-key\nsecp256k1\n{}",
        hex::encode(&info.public_key)
    );
    use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
    let plain = chacha20poly1305::XChaCha20Poly1305::new((&key).into())
        .decrypt(
            chacha20poly1305::XNonce::from_slice(&nonce),
            AeadPayload {
                msg: &ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .unwrap();
    let signing = k256::ecdsa::SigningKey::from_slice(&plain).unwrap();
    assert_eq!(
        signing.verifying_key().to_encoded_point(true).as_bytes(),
        &info.public_key[..]
    );
}

#[test]
fn debug_shows_ids_only() {
    let tmp = TempDir::new("debug");
    let k1 = generate(
        tmp.path(),
        "k1",
        Algorithm::Secp256k1,
        &pass("hunter2-pass"),
    )
    .unwrap();
    let ed = generate(tmp.path(), "ed", Algorithm::Ed25519, &pass("hunter2-pass")).unwrap();
    let backend = SoftBackend::open(tmp.path(), &pass("hunter2-pass")).unwrap();
    let debug = format!("{backend:?}");
    let pretty = format!("{backend:#?}");
    assert_eq!(debug, r#"SoftBackend { keys: ["ed", "k1"] }"#);
    for id in ["k1", "ed"] {
        let secret = backend.secret(id).unwrap().secret_bytes();
        for text in [&debug, &pretty] {
            assert!(!text.contains(&hex::encode(&secret[..])));
            assert!(!text.contains(&hex::encode_upper(&secret[..])));
            assert!(!text.contains(&format!("{:?}", &secret[..])));
        }
    }
    for text in [&debug, &pretty] {
        assert!(!text.contains("hunter2"));
        assert!(!text.contains(&hex::encode(&k1.public_key)));
        assert!(!text.contains(&hex::encode(&ed.public_key)));
    }
}

#[tokio::test]
async fn signing_does_not_run_the_kdf() {
    let tmp = TempDir::new("fast");
    let info = generate(tmp.path(), "k", Algorithm::Secp256k1, &pass("pw")).unwrap();
    let backend = SoftBackend::open(tmp.path(), &pass("pw")).unwrap();
    // One Argon2id run takes tens of milliseconds; 500 signatures with a KDF each would take
    // many seconds, without one a few milliseconds.
    let started = std::time::Instant::now();
    let digest = [9u8; 32];
    let mut last = None;
    for _ in 0..500 {
        last = Some(backend.sign("k", Payload::Prehash(&digest)).await.unwrap());
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    verify_secp256k1(&info.public_key, &digest, &last.unwrap());
}

#[test]
fn low_s_normalization_flips_parity() {
    // k256 already returns low s, so feed the normalization a high-s signature built by hand:
    // (r, n - s) with the opposite parity recovers the same key, and must come back as (r, s).
    let key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let public = key
        .verifying_key()
        .to_encoded_point(true)
        .as_bytes()
        .to_vec();
    let digest = [0x17u8; 32];
    let RawSignature::Ecdsa { r, s, y_parity } =
        crate::keys::local::sign_prehash("k", &key, &digest).unwrap()
    else {
        panic!("expected ECDSA")
    };
    verify_secp256k1(&public, &digest, &RawSignature::Ecdsa { r, s, y_parity });

    let low = k256::ecdsa::Signature::from_scalars(r, s).unwrap();
    let high_s: k256::Scalar = -*low.s().as_ref();
    let high_s_bytes: [u8; 32] = high_s.to_bytes().into();
    let high = k256::ecdsa::Signature::from_scalars(r, high_s_bytes).unwrap();
    assert!(high_s_bytes > HALF_ORDER);

    // libsecp256k1 recovery accepts high s: the high form goes with the flipped parity.
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&r);
    compact[32..].copy_from_slice(&high_s_bytes);
    let recid = secp256k1::ecdsa::RecoveryId::try_from(i32::from(!y_parity)).unwrap();
    let recoverable =
        secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid).unwrap();
    let recovered = secp256k1::SECP256K1
        .recover_ecdsa(&secp256k1::Message::from_digest(digest), &recoverable)
        .unwrap();
    assert_eq!(recovered.serialize().as_slice(), &public[..]);

    assert_eq!(crate::keys::local::low_s(high, !y_parity), (low, y_parity));
    assert_eq!(crate::keys::local::low_s(low, y_parity), (low, y_parity));
}
