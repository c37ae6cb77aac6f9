//! [EIP-191](https://eips.ethereum.org/EIPS/eip-191) version `0x45` ("personal_sign")
//! messages: `keccak256("\x19Ethereum Signed Message:\n" || len || message)`.
//!
//! The prefix makes the hash impossible to confuse with a transaction's signing hash; this
//! module must never hash a message without it (that would be blind signing, which is the
//! separate, policy-gated raw-digest path).
//!
//! The prefix does not stop a message from standing for something else: contracts that check
//! `toEthSignedMessageHash(hash)` (Safe's `eth_sign` owners, CoW Protocol's EthSign orders)
//! accept a signed 32-byte message as an authorization of that hash. So a message of exactly
//! 32 bytes, or one that is not UTF-8 text, is its own kind (`eip191_binary`), which only a
//! policy rule naming it allows.

use alloy_primitives::{B256, eip191_hash_message};
use signerd_policy::{Action, Kind, MESSAGE_HEAD_BYTES, MessageFacts};

use super::EvmError;

/// Largest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// EIP-191 (version 0x45) hash of `message` and its action.
///
/// Any bytes are accepted (wallets sign binary messages too), including an empty message;
/// only the size is bounded. The kind says whether the message is text.
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
    let text = std::str::from_utf8(message)
        .ok()
        .filter(|_| message.len() != 32);
    let mut action = Action::new(
        key_id,
        if text.is_some() {
            Kind::Eip191Message
        } else {
            Kind::Eip191Binary
        },
    );
    action.message = Some(MessageFacts {
        len: message.len() as u64,
        text_head: text.map(|t| {
            let mut end = t.len().min(MESSAGE_HEAD_BYTES);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_owned()
        }),
    });
    Ok((eip191_hash_message(message), action))
}
