//! Transit secrets engine calls (key read, create, sign, encrypt, decrypt) and the parsing of
//! what transit returns: `vault:v<N>:<base64>` signatures and ciphertexts, and public keys.
//!
//! Transit's ECDSA output is DER (RFC 3279 `Ecdsa-Sig-Value`); it is normalized here to low-s
//! with its recovery id, and every signature is checked against the key's public key before
//! it leaves this module, so a wrong or corrupted answer is never returned as a signature.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use vaultrs::api::transit::requests::{
    CreateKeyRequestBuilder, DecryptDataRequestBuilder, EncryptDataRequestBuilder, ListKeysRequest,
    ReadKeyRequest, SignDataRequestBuilder,
};
use vaultrs::api::transit::responses::{ReadKeyData, ReadKeyResponse};
use vaultrs::api::transit::{HashAlgorithm, KeyType, MarshalingAlgorithm};
use zeroize::{Zeroize, Zeroizing};

use super::client::Connection;
use super::http::build_err;
use crate::keys::{Algorithm, KeyError, RawSignature};

/// Largest transit key version accepted (versions are small integers in practice).
const MAX_VERSION: u32 = 1_000_000;

/// A transit signing key's latest version and its public key in signerd's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransitKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) version: u32,
    pub(crate) public_key: Vec<u8>,
    /// Whether transit lets the key be exported (a setting that can only ever be turned on).
    pub(crate) exportable: bool,
}

impl TransitKey {
    /// Transit's `type` of the key.
    pub(crate) fn key_type(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::P256 => "ecdsa-p256",
            Algorithm::Secp256k1 => "secp256k1",
        }
    }
}

/// Splits `vault:v<N>:<payload>` into the version and the payload.
pub(crate) fn split_versioned(s: &str) -> Result<(u32, &str), String> {
    let rest = s
        .strip_prefix("vault:v")
        .ok_or_else(|| "does not start with `vault:v`".to_owned())?;
    let (num, payload) = rest
        .split_once(':')
        .ok_or_else(|| "has no `:` after the version".to_owned())?;
    if num.is_empty() || num.len() > 7 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("has an invalid version `{num}`"));
    }
    let version: u32 = num
        .parse()
        .map_err(|_| format!("has an invalid version `{num}`"))?;
    if version == 0 || version > MAX_VERSION {
        return Err(format!(
            "has version {version}, out of range 1..={MAX_VERSION}"
        ));
    }
    if payload.is_empty() {
        return Err("has an empty payload".to_owned());
    }
    Ok((version, payload))
}

/// Parses a transit signature made by key version `want_version` of a key with public key
/// `public_key`, over `digest` (ECDSA P-256) or `message` (Ed25519), into a normalized,
/// verified [`RawSignature`]. An error is a sentence about Vault's answer, to follow
/// ``key `ID`: ``.
pub(crate) fn parse_signature(
    algorithm: Algorithm,
    public_key: &[u8],
    want_version: u32,
    signed: &[u8],
    answer: &str,
) -> Result<RawSignature, String> {
    parse_checked(algorithm, public_key, want_version, signed, answer)
        .map_err(|e| format!("Vault's transit signature was refused: {e}"))
}

fn parse_checked(
    algorithm: Algorithm,
    public_key: &[u8],
    want_version: u32,
    signed: &[u8],
    answer: &str,
) -> Result<RawSignature, String> {
    let (version, payload) = split_versioned(answer).map_err(|e| format!("it {e}"))?;
    if version != want_version {
        return Err(format!(
            "it was made with key version {version}, but version {want_version} was requested"
        ));
    }
    let bytes = B64
        .decode(payload)
        .map_err(|e| format!("its payload is not base64: {e}"))?;
    match algorithm {
        Algorithm::Ed25519 => crate::keys::verify::check_ed25519(public_key, signed, &bytes),
        Algorithm::P256 => {
            let digest: &[u8; 32] = signed
                .try_into()
                .map_err(|_| "P-256 signs a 32-byte digest".to_owned())?;
            let sig = p256::ecdsa::Signature::from_der(&bytes)
                .map_err(|_| "its P-256 signature is not valid DER".to_owned())?;
            crate::keys::verify::normalize_ecdsa(
                Algorithm::P256,
                public_key,
                digest,
                &sig.to_bytes(),
            )
        }
        Algorithm::Secp256k1 => Err("transit has no secp256k1 keys".to_owned()),
    }
}

/// Converts transit's public key for `algorithm` (base64 raw for Ed25519, PEM SPKI for ECDSA)
/// to signerd's encoding (32 bytes; 33-byte compressed SEC1).
pub(crate) fn parse_public_key(algorithm: Algorithm, s: &str) -> Result<Vec<u8>, String> {
    match algorithm {
        Algorithm::Ed25519 => {
            let raw = B64
                .decode(s.trim())
                .map_err(|e| format!("Ed25519 public key is not base64: {e}"))?;
            if raw.len() != 32 {
                return Err(format!("Ed25519 public key is {} bytes, not 32", raw.len()));
            }
            Ok(raw)
        }
        Algorithm::P256 => {
            use p256::pkcs8::DecodePublicKey as _;
            let pk = p256::PublicKey::from_public_key_pem(s.trim())
                .map_err(|e| format!("P-256 public key is not a PEM SPKI: {e}"))?;
            Ok(
                p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&pk, true)
                    .as_bytes()
                    .to_vec(),
            )
        }
        Algorithm::Secp256k1 => Err("transit has no secp256k1 keys".to_owned()),
    }
}

/// The transit key type for a native algorithm.
fn key_type(algorithm: Algorithm) -> Option<KeyType> {
    match algorithm {
        Algorithm::Ed25519 => Some(KeyType::Ed25519),
        Algorithm::P256 => Some(KeyType::EcdsaP256),
        Algorithm::Secp256k1 => None,
    }
}

/// Lists the transit keys on `mount` (an empty mount lists nothing).
pub(crate) async fn list(conn: &Connection, mount: &str) -> Result<Vec<String>, KeyError> {
    let listed = conn
        .call("list transit keys", |c| async move {
            let endpoint = ListKeysRequest::builder()
                .mount(mount)
                .build()
                .map_err(build_err)?;
            c.exec(endpoint).await
        })
        .await;
    match listed {
        Ok(r) => Ok(r.keys),
        Err(KeyError::Keystore(m)) if m.contains("HTTP 404") && m.contains("no handler") => {
            Err(KeyError::Keystore(format!(
                "transit mount `{mount}` not found (enable the transit secrets engine there, \
                 or set keys.vault.mount)"
            )))
        }
        // Vault answers 404 for a LIST with no entries.
        Err(KeyError::Keystore(m)) if m.contains("HTTP 404") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads transit key `name` at its latest version: `Ok(None)` if it is not an Ed25519 or
/// P-256 signing key.
pub(crate) async fn read(
    conn: &Connection,
    mount: &str,
    name: &str,
) -> Result<Option<TransitKey>, KeyError> {
    read_version(conn, mount, name, None).await
}

/// Reads transit key `name` at `version` (`None`: the latest).
pub(crate) async fn read_version(
    conn: &Connection,
    mount: &str,
    name: &str,
    version: Option<u32>,
) -> Result<Option<TransitKey>, KeyError> {
    let r = conn
        .call(&format!("read transit key `{name}`"), |c| async move {
            let endpoint = ReadKeyRequest::builder()
                .mount(mount)
                .name(name)
                .build()
                .map_err(build_err)?;
            c.exec(endpoint).await
        })
        .await?;
    key_from_response(name, r, version)
}

/// Reads the public key of `version` (`None`: the latest) from transit's answer about key
/// `name`: `Ok(None)` if it is not an Ed25519 or P-256 signing key.
pub(crate) fn key_from_response(
    name: &str,
    r: ReadKeyResponse,
    version: Option<u32>,
) -> Result<Option<TransitKey>, KeyError> {
    let algorithm = match r.key_type {
        KeyType::Ed25519 => Algorithm::Ed25519,
        KeyType::EcdsaP256 => Algorithm::P256,
        _ => return Ok(None),
    };
    let ReadKeyData::Asymmetric(versions) = r.keys else {
        return Err(KeyError::Keystore(format!(
            "transit key `{name}` has no public keys"
        )));
    };
    let numbered = versions
        .iter()
        .filter_map(|(v, e)| v.parse::<u32>().ok().map(|v| (v, e)));
    let (version, entry) = match version {
        None => numbered.max_by_key(|(v, _)| *v),
        Some(want) => numbered.into_iter().find(|(v, _)| *v == want),
    }
    .ok_or_else(|| match version {
        None => KeyError::Keystore(format!("transit key `{name}` has no versions")),
        Some(v) => KeyError::Keystore(format!("transit key `{name}` has no version {v}")),
    })?;
    let public_key = parse_public_key(algorithm, &entry.public_key)
        .map_err(|e| KeyError::Keystore(format!("transit key `{name}` v{version}: {e}")))?;
    Ok(Some(TransitKey {
        algorithm,
        version,
        public_key,
        exportable: r.exportable,
    }))
}

/// Creates transit key `name` for a native algorithm (never exportable).
pub(crate) async fn create_signing_key(
    conn: &Connection,
    mount: &str,
    name: &str,
    algorithm: Algorithm,
) -> Result<(), KeyError> {
    let kt = key_type(algorithm).ok_or_else(|| {
        KeyError::Keystore(format!("transit cannot hold {algorithm} keys natively"))
    })?;
    conn.call(&format!("create transit key `{name}`"), |c| async move {
        let mut opts = CreateKeyRequestBuilder::default();
        opts.key_type(kt).exportable(false);
        opts.mount(mount).name(name);
        c.exec_empty(opts.build().map_err(build_err)?).await
    })
    .await
}

/// Creates the derived AES key that wraps secp256k1 keys, if it does not exist yet, and
/// checks that it is derived (the context binds each ciphertext to its key).
pub(crate) async fn ensure_wrapping_key(
    conn: &Connection,
    mount: &str,
    name: &str,
) -> Result<(), KeyError> {
    let existing = conn
        .call(&format!("read transit key `{name}`"), |c| async move {
            let endpoint = ReadKeyRequest::builder()
                .mount(mount)
                .name(name)
                .build()
                .map_err(build_err)?;
            c.exec(endpoint).await
        })
        .await;
    match existing {
        Ok(k) if k.derived && k.supports_encryption => Ok(()),
        Ok(_) => Err(KeyError::Keystore(format!(
            "wrapping key `{name}` exists but is not a derived encryption key; create it with \
             `derived=true` (type aes256-gcm96)"
        ))),
        Err(KeyError::Keystore(m)) if m.contains("HTTP 404") || m.contains("not found") => {
            conn.call(&format!("create wrapping key `{name}`"), |c| async move {
                let mut opts = CreateKeyRequestBuilder::default();
                opts.key_type(KeyType::Aes256Gcm96)
                    .derived(true)
                    .exportable(false);
                opts.mount(mount).name(name);
                c.exec_empty(opts.build().map_err(build_err)?).await
            })
            .await
        }
        Err(e) => Err(e),
    }
}

/// Signs with transit: `signed` is the 32-byte digest (P-256) or the message (Ed25519).
/// Returns transit's `vault:vN:` answer unparsed.
pub(crate) async fn sign(
    conn: &Connection,
    mount: &str,
    name: &str,
    algorithm: Algorithm,
    version: u32,
    signed: &[u8],
) -> Result<String, KeyError> {
    let input = B64.encode(signed);
    let r = conn
        .call(&format!("sign with transit key `{name}`"), |c| async move {
            let mut opts = SignDataRequestBuilder::default();
            opts.key_version(u64::from(version));
            if algorithm == Algorithm::P256 {
                opts.prehashed(true)
                    .hash_algorithm(HashAlgorithm::Sha2_256)
                    .marshaling_algorithm(MarshalingAlgorithm::Asn1);
            }
            opts.mount(mount).name(name).input(input.as_str());
            c.exec(opts.build().map_err(build_err)?).await
        })
        .await?;
    Ok(r.signature)
}

/// Encrypts 32 secret bytes under the derived wrapping key with `context`.
pub(crate) async fn wrap(
    conn: &Connection,
    mount: &str,
    name: &str,
    context: &[u8],
    secret: &[u8; 32],
) -> Result<String, KeyError> {
    let plaintext = Zeroizing::new(B64.encode(secret));
    let context = B64.encode(context);
    let r = conn
        .call(
            &format!("encrypt with wrapping key `{name}`"),
            |c| async move {
                let mut opts = EncryptDataRequestBuilder::default();
                opts.context(context);
                opts.mount(mount).name(name).plaintext(plaintext.as_str());
                c.exec(opts.build().map_err(build_err)?).await
            },
        )
        .await?;
    Ok(r.ciphertext)
}

/// Decrypts a wrapped key into zeroizing memory; the plaintext copies in the response are
/// zeroized too (the HTTP body buffer is not: see SECURITY.md).
pub(crate) async fn unwrap(
    conn: &Connection,
    mount: &str,
    name: &str,
    context: &[u8],
    ciphertext: &str,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let context = B64.encode(context);
    let mut r = conn
        .call(
            &format!("decrypt with wrapping key `{name}`"),
            |c| async move {
                let mut opts = DecryptDataRequestBuilder::default();
                opts.context(context);
                opts.mount(mount).name(name).ciphertext(ciphertext);
                c.exec(opts.build().map_err(build_err)?).await
            },
        )
        .await?;
    unwrapped_key(name, &mut r.plaintext)
}

/// Decodes transit's base64 `plaintext` of a key unwrapped by `name` into zeroizing memory,
/// and zeroizes `plaintext`.
pub(crate) fn unwrapped_key(
    name: &str,
    plaintext: &mut String,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let decoded = Zeroizing::new(B64.decode(plaintext.as_bytes()).unwrap_or_default());
    plaintext.zeroize();
    let mut out = Zeroizing::new([0u8; 32]);
    if decoded.len() != 32 {
        return Err(KeyError::Keystore(format!(
            "wrapping key `{name}` decrypted to {} bytes, not a 32-byte key",
            decoded.len()
        )));
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ed25519_dalek::Signer as _;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;

    #[test]
    fn versioned_strings_are_split_strictly() {
        assert_eq!(split_versioned("vault:v12:abc").unwrap(), (12, "abc"));
        for (bad, want) in [
            ("vault:12:abc", "vault:v"),
            ("vault:v:abc", "invalid version"),
            ("vault:v0:abc", "out of range"),
            ("vault:v1x:abc", "invalid version"),
            ("vault:v99999999:abc", "invalid version"),
            ("vault:v3", "no `:`"),
            ("vault:v3:", "empty payload"),
            ("x", "vault:v"),
        ] {
            let e = split_versioned(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn ed25519_signatures_are_checked_against_the_key_and_version() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let sig = key.sign(b"hello").to_bytes();
        let answer = format!("vault:v2:{}", B64.encode(sig));
        let got = parse_signature(Algorithm::Ed25519, &pk, 2, b"hello", &answer).unwrap();
        assert_eq!(got, RawSignature::Ed25519(sig));
        let e = parse_signature(Algorithm::Ed25519, &pk, 3, b"hello", &answer).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = parse_signature(Algorithm::Ed25519, &pk, 2, b"other", &answer).unwrap_err();
        assert_eq!(
            e,
            "Vault's transit signature was refused: the signer's Ed25519 signature does not \
             verify against the key"
        );
        let e = parse_signature(Algorithm::Ed25519, &pk, 2, b"hello", "vault:v2:AAAA").unwrap_err();
        assert!(e.contains("expected 64"), "{e}");
    }

    #[test]
    fn p256_der_is_normalized_to_low_s_with_a_recovery_id() {
        use k256::ecdsa::RecoveryId;
        use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
        let key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let vk = VerifyingKey::from(&key);
        let pk = vk.to_encoded_point(true).as_bytes().to_vec();
        let digest = [3u8; 32];
        let sig: Signature = key.sign_prehash(&digest).unwrap();
        // Present the high-s form as transit might.
        let low = sig.normalize_s().unwrap_or(sig);
        let high = Signature::from_scalars(low.r(), -*low.s()).unwrap();
        for presented in [low, high] {
            let answer = format!("vault:v1:{}", B64.encode(presented.to_der().as_bytes()));
            let RawSignature::Ecdsa { r, s, y_parity } =
                parse_signature(Algorithm::P256, &pk, 1, &digest, &answer).unwrap()
            else {
                panic!("expected ECDSA");
            };
            let mut rs = [0u8; 64];
            rs[..32].copy_from_slice(&r);
            rs[32..].copy_from_slice(&s);
            let parsed = Signature::from_slice(&rs).unwrap();
            assert!(parsed.normalize_s().is_none(), "s must be low");
            let recovered = VerifyingKey::recover_from_prehash(
                &digest,
                &parsed,
                RecoveryId::new(y_parity, false),
            )
            .unwrap();
            assert_eq!(recovered, vk);
        }
        let answer = format!("vault:v1:{}", B64.encode(low.to_der().as_bytes()));
        let e = parse_signature(Algorithm::P256, &pk, 1, &[4u8; 32], &answer).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let e = parse_signature(Algorithm::P256, &pk, 1, &digest, "vault:v1:AAAA").unwrap_err();
        assert!(e.contains("DER"), "{e}");
    }

    #[test]
    fn public_keys_are_converted() {
        use p256::pkcs8::EncodePublicKey as _;
        let key = p256::SecretKey::from_slice(&[5u8; 32]).unwrap();
        let pem = key
            .public_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let got = parse_public_key(Algorithm::P256, &pem).unwrap();
        assert_eq!(got.len(), 33);
        let ed = [1u8; 32];
        assert_eq!(
            parse_public_key(Algorithm::Ed25519, &B64.encode(ed)).unwrap(),
            ed.to_vec()
        );
        assert!(parse_public_key(Algorithm::Ed25519, "AAAA").is_err());
        assert!(parse_public_key(Algorithm::P256, "nope").is_err());
    }
}
