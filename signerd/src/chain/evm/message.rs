//! [EIP-191](https://eips.ethereum.org/EIPS/eip-191) version `0x45` ("personal_sign")
//! messages: `keccak256("\x19Ethereum Signed Message:\n" || len || message)`.
//!
//! The prefix makes the hash impossible to confuse with a transaction's signing hash; this
//! module must never hash a message without it (that would be blind signing, which is the
//! separate, policy-gated raw-digest path).

use alloy_primitives::{B256, eip191_hash_message};
use signerd_policy::{Action, Kind};

use super::EvmError;

/// Largest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// EIP-191 (version 0x45) hash of `message` and its action.
///
/// Any bytes are accepted (wallets sign binary messages too), including an empty message;
/// only the size is bounded.
pub fn prepare_message(key_id: &str, message: &[u8]) -> Result<(B256, Action), EvmError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(EvmError::InvalidField {
            field: "message",
            reason: format!(
                "is {} bytes; at most {MAX_MESSAGE_BYTES} accepted",
                message.len()
            ),
        });
    }
    Ok((
        eip191_hash_message(message),
        Action::new(key_id, Kind::Eip191Message),
    ))
}
