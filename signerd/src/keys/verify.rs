//! Checks of signatures made outside signerd's process (an HSM through PKCS#11, Vault
//! transit) before they are returned: ECDSA results are normalized to low s and given the
//! recovery id that Ethereum needs, found by recovering the key's known public point with the
//! `ecdsa` crate; Ed25519 results are verified strictly. A signature that does not verify under the key
//! is an error: it is never returned, whatever the signer said.

use k256::elliptic_curve;

use super::{Algorithm, RawSignature};

/// Turns a signer's `r || s` for `digest` into a low-s signature with its recovery id, checked
/// against `public_key` (33-byte compressed SEC1).
pub(crate) fn normalize_ecdsa(
    algorithm: Algorithm,
    public_key: &[u8],
    digest: &[u8; 32],
    rs: &[u8],
) -> Result<RawSignature, String> {
    if rs.len() != 64 {
        return Err(format!(
            "the signer returned a {}-byte ECDSA signature; expected 64 (r || s)",
            rs.len()
        ));
    }
    match algorithm {
        Algorithm::Secp256k1 => recover_secp256k1(public_key, digest, rs),
        Algorithm::P256 => recover::<p256::NistP256>(public_key, digest, rs),
        Algorithm::Ed25519 => Err("an Ed25519 key cannot make ECDSA signatures".to_owned()),
    }
}

/// [`normalize_ecdsa`] for secp256k1, where every HSM and Vault signature of an EVM request
/// passes: libsecp256k1 (the `secp256k1` crate) recovers the public key for each parity of R
/// and compares it with the key's. A recovered key verifies the signature by construction
/// (recovery solves the verification equation for the key), so a match is a verification,
/// and a signature that matches for neither parity does not verify and is refused.
///
/// Not `ecdsa`'s recovery API: its `recover_from_prehash` verifies each recovered key again,
/// and trial recovery tries up to four ids, which together cost three to five scalar
/// multiplications per signature, most of signerd's own CPU on the PKCS#11 path. This costs
/// one or two recoveries, each a fraction of one of those.
fn recover_secp256k1(
    public_key: &[u8],
    digest: &[u8; 32],
    rs: &[u8],
) -> Result<RawSignature, String> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
    let want = secp256k1::PublicKey::from_slice(public_key).map_err(|_| "bad public key")?;
    let mut sig = Signature::from_compact(rs)
        .map_err(|_| "the signer's signature has r or s out of range")?;
    sig.normalize_s();
    let compact = sig.serialize_compact();
    let message = secp256k1::Message::from_digest(*digest);
    for (id, y_parity) in [(RecoveryId::Zero, false), (RecoveryId::One, true)] {
        let recoverable = RecoverableSignature::from_compact(&compact, id)
            .map_err(|_| "the signer's signature has r or s out of range")?;
        if recoverable
            .recover(&message)
            .is_ok_and(|recovered| recovered == want)
        {
            return Ok(split(&compact, y_parity));
        }
    }
    // Ids 2 and 3 (an R whose x was reduced mod n, probability about 2^-128) cannot be
    // encoded for Ethereum; such a signature is refused with every invalid one.
    Err("the signer's signature does not verify against the key's public point".to_owned())
}

/// [`normalize_ecdsa`] on curve `C` (P-256): the recovery id that gives back the key is found
/// with `ecdsa`'s recovery, which verifies the signature under the recovered key. An R whose x
/// had to be reduced mod n (probability about 2^-128) has a recovery id that cannot be encoded
/// and is refused.
fn recover<C>(public_key: &[u8], digest: &[u8; 32], rs: &[u8]) -> Result<RawSignature, String>
where
    C: elliptic_curve::PrimeCurve + elliptic_curve::CurveArithmetic,
    elliptic_curve::AffinePoint<C>: elliptic_curve::point::DecompressPoint<C>
        + elliptic_curve::sec1::FromEncodedPoint<C>
        + elliptic_curve::sec1::ToEncodedPoint<C>
        + ecdsa::hazmat::VerifyPrimitive<C>,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
    ecdsa::SignatureSize<C>: elliptic_curve::generic_array::ArrayLength<u8>,
{
    let sig = ecdsa::Signature::<C>::from_slice(rs)
        .map_err(|_| "the signer's signature has r or s out of range")?;
    let sig = sig.normalize_s().unwrap_or(sig);
    let want =
        ecdsa::VerifyingKey::<C>::from_sec1_bytes(public_key).map_err(|_| "bad public key")?;
    for y_odd in [false, true] {
        let id = ecdsa::RecoveryId::new(y_odd, false);
        if ecdsa::VerifyingKey::<C>::recover_from_prehash(digest, &sig, id)
            .is_ok_and(|recovered| recovered == want)
        {
            return Ok(split(&sig.to_bytes(), y_odd));
        }
    }
    Err("the signer's signature does not verify against the key's public point".to_owned())
}

fn split(bytes: &[u8], y_parity: bool) -> RawSignature {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&bytes[..32]);
    s.copy_from_slice(&bytes[32..64]);
    RawSignature::Ecdsa { r, s, y_parity }
}

/// Checks an external signer's Ed25519 signature against the key before it is returned.
pub(crate) fn check_ed25519(
    public_key: &[u8],
    message: &[u8],
    sig: &[u8],
) -> Result<RawSignature, String> {
    let bytes: [u8; 64] = sig.try_into().map_err(|_| {
        format!(
            "the signer returned a {}-byte Ed25519 signature; expected 64",
            sig.len()
        )
    })?;
    let key_bytes: [u8; 32] = public_key.try_into().map_err(|_| "bad public key")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).map_err(|_| "bad public key")?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .map_err(|_| "the signer's Ed25519 signature does not verify against the key")?;
    Ok(RawSignature::Ed25519(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn high_s_is_flipped_and_the_recovery_id_found() {
        use k256::ecdsa::Signature;
        let sk = k256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let pk = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        let mut seen_high = false;
        for i in 0u8..64 {
            let digest = [i; 32];
            let (sig, recid): (Signature, _) = sk.sign_prehash_recoverable(&digest).unwrap();
            // Make the high-s twin, as a token may return it.
            let high = Signature::from_scalars(sig.r(), -*sig.s()).unwrap();
            for (input, _) in [(sig, recid), (high, recid)] {
                let out =
                    normalize_ecdsa(Algorithm::Secp256k1, &pk, &digest, &input.to_bytes()).unwrap();
                let RawSignature::Ecdsa { r, s, y_parity } = out else {
                    panic!()
                };
                let mut rs = [0u8; 64];
                rs[..32].copy_from_slice(&r);
                rs[32..].copy_from_slice(&s);
                let got = Signature::from_slice(&rs).unwrap();
                assert!(got.normalize_s().is_none(), "s must be low");
                assert_eq!(got, sig);
                assert_eq!(y_parity, recid.is_y_odd());
                // Checked against an independent implementation.
                let msg = secp256k1::Message::from_digest(digest);
                let rec = secp256k1::ecdsa::RecoverableSignature::from_compact(
                    &rs,
                    secp256k1::ecdsa::RecoveryId::try_from(i32::from(y_parity)).unwrap(),
                )
                .unwrap();
                let key = secp256k1::Secp256k1::new()
                    .recover_ecdsa(&msg, &rec)
                    .unwrap();
                assert_eq!(key.serialize().to_vec(), pk);
            }
            seen_high |= (-*sig.s()).to_bytes() != sig.s().to_bytes();
        }
        assert!(seen_high);
    }

    #[test]
    fn a_signature_for_another_key_or_digest_is_refused() {
        use k256::ecdsa::{Signature, signature::hazmat::PrehashSigner};
        let sk = k256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let other = k256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap();
        let pk = other
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        let sig: Signature = sk.sign_prehash(&[1u8; 32]).unwrap();
        let e =
            normalize_ecdsa(Algorithm::Secp256k1, &pk, &[1u8; 32], &sig.to_bytes()).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        assert!(normalize_ecdsa(Algorithm::Secp256k1, &pk, &[1u8; 32], &[0u8; 63]).is_err());
    }

    #[test]
    fn p256_recovers() {
        use p256::ecdsa::{Signature, signature::hazmat::PrehashSigner};
        let sk = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let pk = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        for i in 0u8..32 {
            let digest = [i; 32];
            let sig: Signature = sk.sign_prehash(&digest).unwrap();
            let high = Signature::from_scalars(sig.r(), -*sig.s()).unwrap();
            for s in [sig, high] {
                let out = normalize_ecdsa(Algorithm::P256, &pk, &digest, &s.to_bytes()).unwrap();
                let RawSignature::Ecdsa { r, s, y_parity } = out else {
                    panic!()
                };
                let mut rs = [0u8; 64];
                rs[..32].copy_from_slice(&r);
                rs[32..].copy_from_slice(&s);
                let low = Signature::from_slice(&rs).unwrap();
                assert!(low.normalize_s().is_none(), "s must be low");
                // The parity is the one the library's own recovery agrees with.
                let id = k256::ecdsa::RecoveryId::new(y_parity, false);
                let key =
                    p256::ecdsa::VerifyingKey::recover_from_prehash(&digest, &low, id).unwrap();
                assert_eq!(key.to_encoded_point(true).as_bytes(), pk.as_slice());
            }
        }
    }
}
