//! Elliptic-curve encodings a PKCS#11 token speaks, turned into the forms signerd uses.
//!
//! - `CKA_EC_PARAMS` names the curve: a DER OBJECT IDENTIFIER (secp256k1 1.3.132.0.10,
//!   P-256 1.2.840.10045.3.1.7, Ed25519 1.3.101.112) or, for Edwards keys made by some tools,
//!   the DER PrintableString `edwards25519` (PKCS#11 v3.0, section 2.3.5).
//! - `CKA_EC_POINT` holds the public point either DER-wrapped in an OCTET STRING (what the
//!   standard says) or raw (what several tokens return); both are accepted.
//! - `CKM_ECDSA` returns `r || s` with no normalization. Ethereum needs low s and a recovery
//!   id, which the token does not give: [`normalize_ecdsa`] flips s into the lower half and finds
//!   the id by recovering the public key for each candidate, so a signature that does not
//!   verify against the key's known public point is never returned.
//!
//! Nothing here touches private keys; all inputs are public values read from the token.

use crate::keys::Algorithm;

/// DER of OID 1.3.132.0.10 (secp256k1).
pub(super) const OID_SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// DER of OID 1.2.840.10045.3.1.7 (prime256v1 / P-256).
pub(super) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of OID 1.3.101.112 (id-Ed25519, RFC 8410).
pub(super) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519", the PKCS#11 v3.0 curve name form.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

/// The `CKA_EC_PARAMS` value signerd writes for `algorithm`.
pub(super) fn params_for(algorithm: Algorithm) -> &'static [u8] {
    match algorithm {
        Algorithm::Secp256k1 => OID_SECP256K1,
        Algorithm::P256 => OID_P256,
        Algorithm::Ed25519 => OID_ED25519,
    }
}

/// The algorithm that a `CKA_EC_PARAMS` value names, if signerd supports it.
pub(super) fn algorithm_of(params: &[u8]) -> Option<Algorithm> {
    match params {
        OID_SECP256K1 => Some(Algorithm::Secp256k1),
        OID_P256 => Some(Algorithm::P256),
        OID_ED25519 | NAME_ED25519 => Some(Algorithm::Ed25519),
        _ => None,
    }
}

/// Decodes `CKA_EC_POINT` into signerd's public key form: 33-byte compressed SEC1 for ECDSA
/// curves, 32 bytes for Ed25519. Accepts the DER OCTET STRING wrapping and the raw value.
///
/// A raw uncompressed point starts with `0x04`, the OCTET STRING tag, and may happen to read
/// as a DER OCTET STRING too (when its x coordinate starts with `0x3f`). So both readings are
/// tried, DER first: the lengths of the two never both give a valid key.
pub(super) fn public_key_from_point(algorithm: Algorithm, point: &[u8]) -> Result<Vec<u8>, String> {
    use der::Decode;
    der::asn1::OctetStringRef::from_der(point)
        .ok()
        .and_then(|wrapped| public_key_from_raw(algorithm, wrapped.as_bytes()).ok())
        .map_or_else(|| public_key_from_raw(algorithm, point), Ok)
}

/// Decodes a raw SEC1 point (ECDSA curves) or 32-byte public key (Ed25519).
fn public_key_from_raw(algorithm: Algorithm, raw: &[u8]) -> Result<Vec<u8>, String> {
    match algorithm {
        Algorithm::Secp256k1 => k256::PublicKey::from_sec1_bytes(raw)
            .map(|k| {
                use k256::elliptic_curve::sec1::ToEncodedPoint;
                k.to_encoded_point(true).as_bytes().to_vec()
            })
            .map_err(|_| "CKA_EC_POINT is not a valid secp256k1 point".to_owned()),
        Algorithm::P256 => p256::PublicKey::from_sec1_bytes(raw)
            .map(|k| {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                k.to_encoded_point(true).as_bytes().to_vec()
            })
            .map_err(|_| "CKA_EC_POINT is not a valid P-256 point".to_owned()),
        Algorithm::Ed25519 => {
            let bytes: [u8; 32] = raw.try_into().map_err(|_| {
                format!(
                    "CKA_EC_POINT for an Ed25519 key must be 32 bytes, got {}",
                    raw.len()
                )
            })?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map(|k| k.to_bytes().to_vec())
                .map_err(|_| "CKA_EC_POINT is not a valid Ed25519 public key".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn curve_params_round_trip() {
        for a in [Algorithm::Secp256k1, Algorithm::P256, Algorithm::Ed25519] {
            assert_eq!(algorithm_of(params_for(a)), Some(a));
        }
        assert_eq!(algorithm_of(NAME_ED25519), Some(Algorithm::Ed25519));
        // secp384r1 is a valid curve but not one signerd signs with.
        assert_eq!(
            algorithm_of(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
            None
        );
    }

    #[test]
    fn points_are_read_wrapped_and_raw() {
        let sk = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let uncompressed = sk
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let compressed = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&uncompressed);
        for form in [&uncompressed, &wrapped] {
            assert_eq!(
                public_key_from_point(Algorithm::Secp256k1, form).unwrap(),
                compressed
            );
        }
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
            .verifying_key()
            .to_bytes();
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&ed);
        assert_eq!(
            public_key_from_point(Algorithm::Ed25519, &wrapped).unwrap(),
            ed
        );
        assert_eq!(public_key_from_point(Algorithm::Ed25519, &ed).unwrap(), ed);
        assert!(public_key_from_point(Algorithm::P256, &wrapped).is_err());
        assert!(public_key_from_point(Algorithm::Ed25519, &[0x04, 3, 1, 2, 3]).is_err());
    }

    #[test]
    fn wrapped_p256_and_compressed_points() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let compressed = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        let mut wrapped = vec![0x04, 33];
        wrapped.extend_from_slice(&compressed);
        for form in [&compressed, &wrapped] {
            assert_eq!(
                public_key_from_point(Algorithm::P256, form).unwrap(),
                compressed
            );
        }
    }

    /// A raw uncompressed point whose x coordinate starts with 0x3f also reads as a DER OCTET
    /// STRING of 63 bytes; it is still taken as the raw point.
    #[test]
    fn raw_point_that_looks_like_der_is_read_raw() {
        // About one key in 256 has such an x.
        let key = (1u32..100_000)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[28..].copy_from_slice(&i.to_be_bytes());
                k256::ecdsa::SigningKey::from_slice(&secret).unwrap()
            })
            .find(|sk| sk.verifying_key().to_encoded_point(false).as_bytes()[1] == 0x3f)
            .expect("a key whose x starts with 0x3f");
        let uncompressed = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let compressed = key
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        use der::Decode;
        assert_eq!(
            der::asn1::OctetStringRef::from_der(&uncompressed)
                .unwrap()
                .as_bytes()
                .len(),
            63
        );
        assert_eq!(
            public_key_from_point(Algorithm::Secp256k1, &uncompressed).unwrap(),
            compressed
        );
    }

    #[test]
    fn non_der_wrappings_are_refused() {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
            .verifying_key()
            .to_bytes();
        // BER's long-form length for a short value is not DER.
        let mut long_form = vec![0x04, 0x81, 32];
        long_form.extend_from_slice(&ed);
        // A length that does not cover the rest, and trailing bytes after the string.
        let mut short = vec![0x04, 31];
        short.extend_from_slice(&ed);
        let mut trailing = vec![0x04, 32];
        trailing.extend_from_slice(&ed);
        trailing.push(0);
        for bad in [long_form, short, trailing] {
            assert!(
                public_key_from_point(Algorithm::Ed25519, &bad).is_err(),
                "{bad:02x?}"
            );
        }
    }
}
