//! Signing with a private key held in this process's memory: soft keys, and Vault-wrapped
//! keys once unwrapped. Results are low-s with their recovery id, like every backend's.

use super::{KeyError, RawSignature};

/// Signs a 32-byte digest with ECDSA, returning a low-s signature and its recovery id.
pub(crate) fn sign_prehash(
    id: &str,
    key: &k256::ecdsa::SigningKey,
    digest: &[u8; 32],
) -> Result<RawSignature, KeyError> {
    let (sig, recid) = key
        .sign_prehash_recoverable(digest)
        .map_err(|_| KeyError::Keystore(format!("key `{id}`: ECDSA signing failed")))?;
    let (sig, y_parity) = low_s(sig, recid.is_y_odd());
    if recid.is_x_reduced() {
        // Probability about 2^-128; such a signature has no Ethereum recovery id.
        return Err(KeyError::Keystore(format!(
            "key `{id}`: signature has an x-reduced recovery id that cannot be encoded; retry \
             with a different payload"
        )));
    }
    let bytes = sig.to_bytes();
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&bytes[..32]);
    s.copy_from_slice(&bytes[32..]);
    Ok(RawSignature::Ecdsa { r, s, y_parity })
}

/// Returns the low-s form of `sig` with its recovery parity.
///
/// k256 already returns low s; checking again costs nothing and keeps the guarantee
/// independent of the library. Negating s corresponds to negating R, so the parity flips.
pub(crate) fn low_s(sig: k256::ecdsa::Signature, y_odd: bool) -> (k256::ecdsa::Signature, bool) {
    match sig.normalize_s() {
        Some(low) => (low, !y_odd),
        None => (sig, y_odd),
    }
}
